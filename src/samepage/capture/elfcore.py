"""Capturing an ELF core file: a process core (gdb's ``gcore``, a kernel core dump) or a
guest-memory dump (QEMU's ``dump-guest-memory``), read with pyelftools.

* A process core (it has an NT_PRPSINFO or NT_FILE note): one process, pid and comm from
  NT_PRPSINFO. Its private anonymous VMAs are the writable PT_LOAD segments that no NT_FILE
  entry (the file-backed mappings) overlaps. Pages past p_filesz are holes.
* A guest dump (no such notes): one "process" (pid 0) with one VMA per PT_LOAD segment, at
  its guest-physical address (p_paddr).

All-zero pages (``core_zeros``): a core cannot tell a never-touched page from a present zero
page. gdb's gcore (13.1: p_filesz = p_memsz, not sparse) reads every page of a mapping
through /proc/PID/mem, faulting never-touched ones in as the shared zero page; the kernel's
own core dump (get_dump_page) leaves them as sparse holes, read back as zeros. ksmd skips
both never-touched and zero-page-mapped addresses but merges a written zero page. With
``"absent"`` (the default) an all-zero page of a core is recorded as a hole, as a live
capture records a never-touched page; with ``"present"`` as a present token-0 page
(docs/snapshot-format.md, "Core dumps").

VmFlags are not in a core: VMAs carry their r/w/x and VMA_FLAGS_UNKNOWN.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from samepage.scenario.errors import ScenarioError, open_input

from .procfs import CHUNK, VMA_EXEC, VMA_FLAGS_UNKNOWN, VMA_READ, VMA_WRITE
from .snapshot import CapturedProcess, CapturedVma
from .tokens import PAGE_SIZE, Digests, digest_pages

PF_X, PF_W, PF_R = 1, 2, 4


def read_file_digests(fd: int, offset: int, length: int, buf: bytearray,
                      on_bytes: Callable[[int], None] | None = None) -> Digests:
    """Digest ``length`` bytes (whole pages) of the file ``fd`` from ``offset``."""
    mv = memoryview(buf)
    parts = []
    pos = 0
    while pos < length:
        n = min(len(buf), length - pos)
        got = 0
        while got < n:
            r = os.preadv(fd, [mv[got:n]], offset + pos + got)
            if r <= 0:
                break
            got += r
        if got < n:             # checked by the caller against the file size: a race
            mv[got:n] = bytes(n - got)
        parts.append(digest_pages(mv[:n]))
        if on_bytes is not None:
            on_bytes(n)
        pos += n
    return Digests.concat(parts)


def _flags(p_flags: int) -> int:
    return (VMA_FLAGS_UNKNOWN | (VMA_READ if p_flags & PF_R else 0)
            | (VMA_WRITE if p_flags & PF_W else 0) | (VMA_EXEC if p_flags & PF_X else 0))


def _overlaps(a0: int, a1: int, ranges: list[tuple[int, int]]) -> bool:
    return any(s < a1 and a0 < e for s, e in ranges)


def open_core(path: str):
    """(file object, ELFFile) of an ELF core file, or one ScenarioError."""
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    f = open_input(path)
    try:
        if f.read(4) != b"\x7fELF":
            raise ScenarioError(path, "(file)", "not an ELF core file (no ELF header)")
        f.seek(0)
        try:
            elf = ELFFile(f)
            etype = elf["e_type"]
        except (ELFError, Exception) as e:   # pyelftools raises construct errors too
            raise ScenarioError(path, "(file)", f"corrupt ELF file: {e}") from None
        if etype != "ET_CORE":
            raise ScenarioError(path, "e_type", f"an ELF file of type {etype}, not a core "
                                                "dump (ET_CORE)")
        return f, elf
    except BaseException:
        f.close()
        raise


CORE_ZEROS = ("absent", "present")


def capture_core(path: str, *, core_zeros: str = "absent",
                 on_total: Callable[[int], None] | None = None,
                 on_bytes: Callable[[int], None] | None = None,
                 chunk: int = CHUNK) -> tuple[CapturedProcess, int]:
    """The process (or guest) of the core file ``path`` and the bytes read; all-zero pages
    are holes with ``core_zeros="absent"``, present token-0 pages with ``"present"``."""
    from elftools.common.exceptions import ELFError

    if core_zeros not in CORE_ZEROS:
        raise ValueError(f"core_zeros must be one of {CORE_ZEROS}, not {core_zeros!r}")

    f, elf = open_core(path)
    with f:
        size = os.fstat(f.fileno()).st_size
        try:
            segs, notes = [], []
            for i, seg in enumerate(elf.iter_segments()):
                segs.append((i, seg.header))
                if seg.header["p_type"] == "PT_NOTE":
                    notes.extend(seg.iter_notes())
        except (ELFError, Exception) as e:
            raise ScenarioError(path, "(file)", f"corrupt ELF core file: {e}") from None
        pid, comm, files, process_core = 0, os.path.basename(path), [], False
        for n in notes:
            if n["n_type"] == "NT_PRPSINFO":
                process_core = True
                d = n["n_desc"]
                pid = int(d["pr_pid"]) & 0xFFFFFFFF
                comm = bytes(d["pr_fname"]).split(b"\0", 1)[0].decode("utf-8", "replace")
            elif n["n_type"] == "NT_FILE":
                process_core = True
                files = [(int(e["vm_start"]), int(e["vm_end"]))
                         for e in n["n_desc"]["Elf_Nt_File_Entry"]]
        chosen = []
        for i, h in segs:
            if h["p_type"] != "PT_LOAD":
                continue
            start = int(h["p_vaddr"] if process_core else h["p_paddr"])
            memsz, filesz, off = int(h["p_memsz"]), int(h["p_filesz"]), int(h["p_offset"])
            if process_core and (not h["p_flags"] & PF_W
                                 or _overlaps(start, start + memsz, files)):
                continue
            if not process_core and filesz == 0:
                continue
            key = f"program header {i}"
            if start % PAGE_SIZE or memsz % PAGE_SIZE or filesz % PAGE_SIZE or memsz == 0:
                raise ScenarioError(path, key, "a PT_LOAD segment not made of whole pages "
                                               f"(address {start:#x}, memsz {memsz:#x}, "
                                               f"filesz {filesz:#x})")
            if filesz > memsz or off + filesz > size:
                raise ScenarioError(path, key, f"segment data beyond the end of the file "
                                               f"(offset {off:#x} + {filesz:#x} > {size:#x}); "
                                               "a truncated core?")
            if start + memsz > 2 ** 64:
                raise ScenarioError(path, key, "segment beyond the 64-bit address space")
            chosen.append((i, start, memsz, filesz, off, int(h["p_flags"])))
        chosen.sort(key=lambda c: c[1])
        for (ia, a, am, *_), (ib, b, *_r) in zip(chosen, chosen[1:]):
            if b < a + am:
                raise ScenarioError(path, f"program header {ib}",
                                    f"segment overlaps program header {ia}")
        if on_total is not None:
            on_total(sum(c[3] for c in chosen))
        buf = bytearray(chunk)
        vmas = []
        nbytes = 0
        for i, start, memsz, filesz, off, pf in chosen:
            d = read_file_digests(f.fileno(), off, filesz, buf, on_bytes)
            nbytes += filesz
            offsets = np.arange(filesz // PAGE_SIZE, dtype=np.uint64)
            if core_zeros == "absent":
                keep = np.flatnonzero(~d.zero)
                offsets, d = offsets[keep], d.take(keep)
            n = offsets.size
            vmas.append(CapturedVma("" if process_core else f"segment {i}", start,
                                    memsz // PAGE_SIZE, _flags(pf), 0, offsets, d,
                                    np.zeros(n, np.uint8), np.zeros(0, np.uint64),
                                    np.zeros(n, np.uint16)))
    kind = "core" if process_core else "guest"
    return CapturedProcess(pid, comm, f"{kind}:{path}", None, None, vmas), nbytes
