"""Capturing live processes: their private anonymous VMAs and the anonymous (COW'd) pages of
their private file-backed VMAs, present pages and tokens, and,
with samples, how often each page changed (samepage.capture.procfs does the reading).

A process that exits during the capture, that may not be read (ptrace access mode) or that is
a kernel thread is reported through ``warn`` (one line) and left out; the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .procfs import (CHUNK, PAGE_EXCLUSIVE, PAGE_ZERO_PFN, NotCapturable, ProcessGone,
                     ProcessInfo, ProcessMemory, SmapsVma, capturable_vmas, iter_present,
                     process_info, zero_pfn)
from .snapshot import CapturedProcess, CapturedVma
from .tokens import PAGE_SIZE, Digests

#: The per-page state of a page absent in a later sample (never a hash of a read page).
_ABSENT = np.uint64(2 ** 64 - 1)


@dataclass
class _Plan:
    vma: SmapsVma
    read: np.ndarray          # offsets of present pages to read
    zero: np.ndarray          # offsets mapping the zero page
    swapped: np.ndarray
    exclusive: np.ndarray     # mask over all pages


@dataclass
class _Target:
    pid: int
    info: ProcessInfo
    mem: ProcessMemory
    plans: list[_Plan]
    vmas: list[CapturedVma] | None = None
    prev: list[np.ndarray] | None = None      # per VMA: (n, 2) state of the last sample
    alive: bool = True


class Progress:
    """Callbacks of a capture: ``total(bytes)`` when a sample's size is known, ``advance(bytes)``
    as pages are read, ``warn(line)`` for a process left out."""

    def total(self, nbytes: int) -> None: ...

    def advance(self, nbytes: int) -> None: ...

    def warn(self, line: str) -> None: ...


def _plan(mem: ProcessMemory, vmas: list[SmapsVma], zpfn: int | None) -> list[_Plan]:
    plans = []
    for v in vmas:
        entries = mem.pagemap(v.start, v.pages)
        c = dict(iter_present(entries, zpfn))
        plans.append(_Plan(v, c["present"], c["zero"], c["swapped"], c["exclusive"]))
    return plans


def _open(pid: int, proc_root: str, zpfn: int | None) -> _Target:
    info = process_info(pid, proc_root)
    if info.kthread:
        raise NotCapturable(f"pid {pid} ({info.comm}): a kernel thread (no user memory)")
    vmas = capturable_vmas(pid, proc_root)
    mem = ProcessMemory(pid, proc_root)
    try:
        return _Target(pid, info, mem, _plan(mem, vmas, zpfn))
    except BaseException:
        mem.close()
        raise


def _read_vma(t: _Target, p: _Plan, buf: bytearray, progress: Progress) -> CapturedVma:
    d_read, ok = t.mem.read_digests(p.vma.start, p.read, buf, progress.advance)
    got = p.read[ok]
    offsets = np.concatenate([got, p.zero]).astype(np.uint64)
    digests = Digests.concat([d_read, Digests.zeros(p.zero.size)])
    flags = np.concatenate([np.zeros(got.size, np.uint8),
                            np.full(p.zero.size, PAGE_ZERO_PFN, np.uint8)])
    order = np.argsort(offsets, kind="stable")
    offsets, digests, flags = offsets[order], digests.take(order), flags[order]
    flags |= np.where(p.exclusive[offsets.astype(np.int64)], PAGE_EXCLUSIVE, 0).astype(np.uint8)
    return CapturedVma(p.vma.path, p.vma.start, p.vma.pages, p.vma.flags, p.vma.anon_huge_kb,
                       offsets, digests, flags, p.swapped.astype(np.uint64),
                       np.zeros(offsets.size, np.uint16))


def _resample(t: _Target, zpfn: int | None, buf: bytearray, progress: Progress) -> None:
    """Read the pages of the first sample again; count a change where the state differs."""
    assert t.vmas is not None and t.prev is not None
    for i, cv in enumerate(t.vmas):
        entries = t.mem.pagemap(cv.start, cv.pages)
        c = dict(iter_present(entries, zpfn))
        off = cv.offsets.astype(np.int64)
        state = np.full((off.size, 2), _ABSENT, np.uint64)
        is_read = np.isin(off, c["present"], assume_unique=True)
        is_zero = np.isin(off, c["zero"], assume_unique=True)
        state[is_zero] = 0
        idx = np.flatnonzero(is_read)
        d, ok = t.mem.read_digests(cv.start, off[idx], buf, progress.advance)
        state[idx[ok]] = d.hash
        changed = np.any(state != t.prev[i], axis=1)
        assert cv.changes is not None
        cv.changes += changed.astype(np.uint16)
        t.prev[i] = state


def capture_live(pids: list[int], *, samples: int = 1, interval: float = 0.0,
                 progress: Progress | None = None, proc_root: str = "/proc",
                 chunk: int = CHUNK) -> tuple[list[CapturedProcess], int, bool]:
    """Capture ``pids``; returns the processes captured, the bytes read (all samples) and
    whether zero-page mappings could be recognised (pagemap shows PFNs)."""
    progress = progress or Progress()
    zpfn = zero_pfn() if proc_root == "/proc" else None
    targets: list[_Target] = []
    for pid in pids:
        try:
            targets.append(_open(pid, proc_root, zpfn))
        except (ProcessGone, NotCapturable) as e:
            progress.warn(f"{e}; left out")
    buf = bytearray(chunk)
    nbytes = 0
    outer = progress

    class _Counting(Progress):
        def total(self, n: int) -> None:
            outer.total(n)

        def advance(self, n: int) -> None:
            nonlocal nbytes
            nbytes += n
            outer.advance(n)

        def warn(self, line: str) -> None:
            outer.warn(line)

    progress = _Counting()
    try:
        progress.total(sum(p.read.size for t in targets for p in t.plans) * PAGE_SIZE)
        for t in targets:
            try:
                t.vmas = [_read_vma(t, p, buf, progress) for p in t.plans]
            except ProcessGone as e:
                progress.warn(f"{e} during the capture; left out")
                t.alive = False
                continue
            t.prev = [np.where(v.digests.zero[:, None], np.uint64(0), v.digests.hash)
                      for v in t.vmas]
        for k in range(1, samples):
            time.sleep(interval)
            live = [t for t in targets if t.alive]
            progress.total(sum(v.offsets.size for t in live for v in t.vmas or []) * PAGE_SIZE)
            for t in live:
                try:
                    _resample(t, zpfn, buf, progress)
                except ProcessGone as e:
                    progress.warn(f"{e} during sample {k + 1}; its earlier samples are kept")
                    t.alive = False
                    t.prev = None
    finally:
        for t in targets:
            t.mem.close()
    out = []
    for t in targets:
        if t.vmas is None:
            continue
        out.append(CapturedProcess(t.pid, t.info.comm, f"pid:{t.pid}", t.info.merge_any,
                                   t.info.mergeable, t.vmas))
    return out, nbytes, zpfn is not None
