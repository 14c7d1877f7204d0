"""The Python API: a simulated machine with processes, memory and ksmd.

It mirrors the system calls and files a program or an administrator would use::

    from samepage import Machine
    m = Machine()
    vm = m.spawn("vm1")
    ram = vm.mmap(100, name="ram")
    vm.write(ram, range(100), 7)          # every page holds token 7
    vm.madvise(ram, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(2)
    m.sysfs_read("pages_sharing")         # -> 99

ksmd runs only when asked (``run_batches``/``run_full_scans``): each batch is
``ksm_do_scan(pages_to_scan)`` followed by a sleep of ``sleep_millisecs`` of simulated time.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass

from samepage import KERNEL_RELEASE_MODELLED
from samepage.ksm import fastforward
from samepage.ksm.costs import CostModel
from samepage.ksm.ksm import Ksm
from samepage.ksm.sysfs import sysfs_read, sysfs_read_int, sysfs_write
from samepage.mm.content import PAGE_SHIFT, Content
from samepage.mm.folio import Memory
from samepage.mm.mm import (MADV_DONTNEED, MADV_HUGEPAGE, MADV_MERGEABLE, MADV_NOHUGEPAGE,
                            MADV_UNMERGEABLE, MM, PR_GET_MEMORY_MERGE, PR_SET_MEMORY_MERGE,
                            Vma)

ADVICE = {"mergeable": MADV_MERGEABLE, "unmergeable": MADV_UNMERGEABLE,
          "dontneed": MADV_DONTNEED, "hugepage": MADV_HUGEPAGE,
          "nohugepage": MADV_NOHUGEPAGE}


class SyscallError(OSError):
    """A simulated system call failed; ``errno`` is the kernel's."""


def _fmt(a) -> str:
    if isinstance(a, Vma):
        return a.name or hex(a.start)
    if isinstance(a, str):
        return a
    if isinstance(a, (bytes, bytearray)):
        return f"<{len(a)} bytes>"
    r = repr(a)
    return r if len(r) <= 40 else r[:37] + "..."


def _api(fn):
    """An API operation: with the sanitizer on, one step, checked afterwards."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self, *args, **kw):
        machine = self.machine if isinstance(self, Process) else self
        machine.ksm.ff_invalidate()          # an event (materialised first): no profile holds
        san = machine.sanitizer
        if san is None:
            return fn(self, *args, **kw)
        actor = self.name if isinstance(self, Process) else "machine"
        shown = [_fmt(a) for a in args] + [f"{k}={_fmt(v)}" for k, v in kw.items()]
        text = f"{name}({', '.join(shown)})"
        return san.api(machine, actor, text, fn, self, *args, **kw)
    return wrapper


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise SyscallError(-ret, f"{what}: {errno.errorcode.get(-ret, -ret)}")
    return ret


@dataclass
class BatchResult:
    batch: int
    t_ms: float
    pages: int          # pages processed (pages_scanned delta)
    cpu_ms: float
    ops: list[int] | None = None    # the batch's operation counts (samepage.ksm.opcounts)


class Process:
    """A user process: an mm plus convenience methods named after system calls."""

    def __init__(self, machine: "Machine", mm: MM):
        self.machine = machine
        self._mm = mm

    @property
    def mm(self) -> MM:
        """The process's mm: whoever takes it may change memory behind the API, so no
        fast-forward profile survives it (samepage.ksm.fastforward)."""
        self.machine.ksm.ff_invalidate()
        return self._mm

    @property
    def name(self) -> str:
        return self._mm.name

    @property
    def pid(self) -> int:
        return self._mm.pid

    @property
    def alive(self) -> bool:
        return self._mm.mm_users > 0

    def region(self, name: str) -> Vma:
        return self._mm.vma_by_name(name)

    def _vma(self, region: Vma | str) -> Vma:
        return self.region(region) if isinstance(region, str) else region

    # -- system calls -----------------------------------------------------------------
    @_api
    def mmap(self, pages: int, name: str | None = None, thp: str = "default") -> Vma:
        """``mmap(MAP_PRIVATE|MAP_ANONYMOUS)`` of ``pages`` pages as its own VMA;
        ``thp`` = "huge" / "nohuge" applies MADV_HUGEPAGE / MADV_NOHUGEPAGE."""
        vma = self._mm.mmap(pages, name=name)
        if thp == "huge":
            self.madvise(vma, "hugepage")
        elif thp == "nohuge":
            self.madvise(vma, "nohugepage")
        return vma

    @_api
    def munmap(self, region: Vma | str) -> None:
        vma = self._vma(region)
        self._mm.munmap(vma.start, vma.end - vma.start)

    @_api
    def madvise(self, region: Vma | str, advice: str | int,
                pages: Iterable[int] | None = None) -> None:
        vma = self._vma(region)
        adv = ADVICE[advice] if isinstance(advice, str) else advice
        if pages is None:
            _check(self._mm.madvise(vma.start, vma.end - vma.start, adv), "madvise")
            return
        for lo, hi in _runs(sorted(set(pages))):
            start = vma.start + (lo << PAGE_SHIFT)
            _check(self._mm.madvise(start, (hi - lo) << PAGE_SHIFT, adv), "madvise")

    @_api
    def write(self, region: Vma | str, pages: Iterable[int] | int, content: Content) -> None:
        """Store ``content`` (a token or 4096 bytes) into the given pages of a region."""
        vma = self._vma(region)
        if isinstance(pages, int):
            pages = (pages,)
        for i in pages:
            if not 0 <= i < vma.nr_pages:
                raise IndexError(f"page {i} outside region {vma.name} of {vma.nr_pages} pages")
            self._mm.write_page(vma.start + (i << PAGE_SHIFT), content)

    @_api
    def fill(self, region: Vma | str, tokens: Iterable[Content]) -> None:
        vma = self._vma(region)
        for i, t in enumerate(tokens):
            self._mm.write_page(vma.start + (i << PAGE_SHIFT), t)

    def read(self, region: Vma | str, page: int) -> Content | None:
        vma = self._vma(region)
        return self._mm.read_page(vma.start + (page << PAGE_SHIFT))

    @_api
    def zap(self, region: Vma | str, pages: Iterable[int]) -> None:
        """``madvise(MADV_DONTNEED)`` on the given pages."""
        self.madvise(region, "dontneed", pages)

    @_api
    def fork(self, child: str) -> "Process":
        return self.machine._adopt(self._mm.fork(child))

    @_api
    def exit(self) -> None:
        self._mm.exit()

    @_api
    def prctl_set_memory_merge(self, value: bool) -> None:
        _check(self._mm.prctl(PR_SET_MEMORY_MERGE, 1 if value else 0), "prctl")

    def prctl_get_memory_merge(self) -> bool:
        return bool(_check(self._mm.prctl(PR_GET_MEMORY_MERGE), "prctl"))

    # -- /proc/PID ------------------------------------------------------------------------
    def ksm_stat(self) -> dict:
        return self.machine._ksm.ksm_stat(self._mm)     # counters: exact without materialising

    @property
    def ksm_merging_pages(self) -> int:
        return self._mm.ksm_merging_pages

    def __repr__(self) -> str:
        return f"<Process {self.name} pid={self.pid}{'' if self.alive else ' exited'}>"


def _runs(idx: list[int]):
    if not idx:
        return
    lo = prev = idx[0]
    for i in idx[1:]:
        if i != prev + 1:
            yield lo, prev + 1
            lo = i
        prev = i
    yield lo, prev + 1


class Machine:
    """One simulated machine: physical memory, processes and KSM."""

    kernel_release = KERNEL_RELEASE_MODELLED

    def __init__(self, numa_nodes: int = 1, costs: CostModel | str | None = None, *,
                 thp: str = "madvise", mthp_kb=(), split_zero_remap: bool = True,
                 same_folio: str = "v6.18", sanitize: bool = False,
                 fast_forward: bool | None = None):
        """``thp``: transparent_hugepage/enabled; ``mthp_kb``: extra large-folio sizes set to
        ``inherit``; ``split_zero_remap``: remap zero-filled subpages on a split (6.18);
        ``same_folio``: the merge strategy for a same-folio pair (``v6.18``, ``early-put``,
        ``split-retry``; see samepage.ksm.same_folio); ``sanitize``: check every folio
        operation and the whole state after every step (samepage.sanitizer; slower);
        ``costs``: ksmd's CPU cost profile, a CostModel or a profile file (samepage.ksm.costs;
        default: the shipped profile); ``fast_forward``: replay quiescent full scans in bulk
        (samepage.ksm.fastforward; every counter as if they ran; default on unless the
        environment variable SAMEPAGE_FAST_FORWARD is 0)."""
        self._ff_pending = None       # (profile, next batch, state at the scan's start)
        self._mem = Memory(numa_nodes)
        self._mem.thp.enabled = thp
        self._mem.thp.enable_mthp_kb(mthp_kb)
        self._mem.thp.split_zero_remap = split_zero_remap
        self._ksm = Ksm(self._mem, costs)
        self._ksm.set_same_folio_strategy(same_folio)
        self.processes: dict[str, Process] = {}
        self.batches = 0
        self.t0_ns = 0
        if fast_forward is None:
            fast_forward = os.environ.get("SAMEPAGE_FAST_FORWARD", "1").strip() != "0"
        self.fast_forward = fast_forward
        self.sanitizer = None
        if sanitize or os.environ.get("SAMEPAGE_SANITIZE", "").strip() == "1":   # tests: all
            from samepage.sanitizer import Sanitizer
            self.sanitizer = Sanitizer().attach(self)

    @property
    def ksm(self) -> Ksm:
        """KSM's state (a fast-forward stopped inside a scan is materialised first)."""
        if self._ff_pending is not None:
            self._ff_sync()
        return self._ksm

    @property
    def mem(self) -> Memory:
        """Physical memory (as ``ksm``: the real state; whoever takes it may change it behind
        the API, so no fast-forward profile survives it)."""
        if self._ff_pending is not None:
            self._ff_sync()
        self._ksm.ff_invalidate()
        return self._mem

    # -- processes --------------------------------------------------------------------------
    @_api
    def spawn(self, name: str, merge_any: bool = False, numa_node: int = 0) -> Process:
        if name in self.processes:
            raise ValueError(f"process {name!r} exists")
        p = self._adopt(MM(self._mem, name, numa_node))
        if merge_any:
            p.prctl_set_memory_merge(True)
        return p

    def _adopt(self, mm: MM) -> Process:
        p = Process(self, mm)
        self.processes[mm.name] = p
        return p

    def process(self, name: str) -> Process:
        return self.processes[name]

    # -- sysfs ------------------------------------------------------------------------------
    @_api
    def sysfs_write(self, name: str, value) -> None:
        was_running = self._ksm.ksmd_should_run()
        sysfs_write(self._ksm, name, value)
        if name == "run" and int(str(value)) == 1 and not was_running and not self.batches:
            self.t0_ns = self._ksm.clock_ns        # t_ms counts from the first run = 1

    def sysfs_read(self, name: str) -> int | str:
        if name == "advisor_mode":
            return sysfs_read(self._ksm, name)
        return sysfs_read_int(self._ksm, name)        # counters are exact while fast-forwarding

    def counters(self) -> dict:
        return self._ksm.counters()

    @property
    def vmstat(self) -> dict:
        return dict(self._mem.vmstat)

    # -- ksmd -------------------------------------------------------------------------------
    def set_failslab(self, failslab) -> None:
        """Install (None: remove) fault injection of allocations (samepage.mm.failslab)."""
        self._mem.failslab = failslab

    def run_batch(self) -> BatchResult | None:
        """One iteration of ksmd: a batch of ``pages_to_scan`` pages, then a sleep.
        Returns None (and advances no time) when ksmd would not run."""
        if self.sanitizer is not None:
            return self.sanitizer.api(self, "ksmd", f"batch {self.batches + 1}",
                                      self._run_batch)
        if self.fast_forward:
            r = self._ff_batch()
            if r is not None:
                return r
        return self._run_batch()

    # fast-forward (samepage.ksm.fastforward): a clean full scan's profile is replayed batch
    # by batch; a replay stopped inside a scan leaves the real state at the scan's start
    # until something looks at it (``ksm``, ``mem``, an API call, a real batch)
    def _ff_emitter(self, out: list):
        def emit(start_ns: int, pages: int, cpu: float, ops: list[int]) -> None:
            self.batches += 1
            out.append(BatchResult(self.batches, (start_ns - self.t0_ns) / 1e6, pages,
                                   cpu / 1e6, ops))
        return emit

    def _ff_snapshot(self) -> tuple:
        k = self._ksm
        return (k.ksm_pages_scanned, list(k.ops), k.clock_ns, k._cpu_ns_base,
                getattr(k, "_batch_cpu_start", None), dict(k.advisor_ctx),
                k.ksm_thread_pages_to_scan, k.ksm_scan.seqnr, k.ksm_pages_unshared,
                k.current_item, self.batches)

    def _ff_restore(self, snap: tuple) -> None:
        k = self._ksm
        (k.ksm_pages_scanned, ops, k.clock_ns, k._cpu_ns_base, bcs, advisor_ctx,
         k.ksm_thread_pages_to_scan, k.ksm_scan.seqnr, k.ksm_pages_unshared,
         k.current_item, self.batches) = snap
        k.ops[:] = ops
        k.advisor_ctx = dict(advisor_ctx)
        if bcs is not None:
            k._batch_cpu_start = bcs

    def _ff_batch(self) -> BatchResult | None:
        """The next batch replayed from a scan profile, or None if it must run for real."""
        ksm = self._ksm
        out: list[BatchResult] = []
        pend = self._ff_pending
        if pend is not None:
            prof, j, snap = pend
            fastforward.replay_batch(ksm, prof, j, self._ff_emitter(out))
            if j + 1 < len(prof.batches):
                self._ff_pending = (prof, j + 1, snap)
            else:
                self._ff_pending = None
                fastforward.materialise(ksm, prof)
            return out[0]
        prof = ksm.ff_profile
        if prof is None or not fastforward.can_replay(ksm, prof) \
                or not fastforward.scan_may_start(ksm, prof):
            return None
        if len(prof.batches) > 1:
            self._ff_pending = (prof, 1, self._ff_snapshot())
        fastforward.replay_batch(ksm, prof, 0, self._ff_emitter(out))
        if len(prof.batches) == 1:
            fastforward.materialise(ksm, prof)
        return out[0]

    def _ff_sync(self) -> None:
        """Materialise a replay stopped inside a scan: back to the scan's start, then its
        first batches for real (deterministic: they end where the replay did)."""
        prof, j, snap = self._ff_pending
        self._ff_pending = None
        virtual = self._ff_snapshot()
        self._ff_restore(snap)
        self._ksm.ff_profile = None
        for _ in range(j):
            self._run_batch()
        real = self._ff_snapshot()
        if real[:-2] != virtual[:-2] or real[-1] != virtual[-1]:
            raise AssertionError(f"fast-forward diverged from the real scan: {virtual} != {real}")

    def _run_batch(self) -> BatchResult | None:
        if self._ff_pending is not None:
            self._ff_sync()
        ksm = self._ksm
        if not ksm.ksmd_should_run():
            return None
        ksm.ff_profile = None
        rec = None
        if self.fast_forward and self.sanitizer is None and ksm.preempt is None:
            if ksm.ksm_scan.mm_slot is None:           # a full scan starts: watch it
                ksm.ff_recorder = fastforward.ScanRecorder(ksm)
            rec = ksm.ff_recorder
        seqnr = ksm.ksm_scan.seqnr
        before = ksm.ksm_pages_scanned
        start_ns = ksm.clock_ns
        cpu0 = ksm.cpu_ns
        ops0 = list(ksm.ops)
        ksm._batch_cpu_start = cpu0
        ksm.ksm_do_scan(ksm.ksm_thread_pages_to_scan)
        cpu = ksm.cpu_ns - cpu0
        ops = [a - b for a, b in zip(ksm.ops, ops0)]
        ksm._batch_cpu_start = ksm.cpu_ns
        ksm.clock_ns += int(cpu)
        if rec is not None and ksm.ff_recorder is rec:
            rec.add_batch(ops, ksm.ksm_pages_scanned - before, int(cpu), ksm.ksm_pages_unshared)
            if ksm.ksm_scan.seqnr != seqnr:
                ksm.ff_recorder = None
                ksm.ff_profile = rec.finish(ksm)
        self.batches += 1
        # t_ms is the batch's start, as the kernel harness measures it
        res = BatchResult(self.batches, (start_ns - self.t0_ns) / 1e6,
                          ksm.ksm_pages_scanned - before, cpu / 1e6, ops)
        ksm.clock_ns += ksm.costs.ksmd_sleep_ns(ksm.ksm_thread_sleep_millisecs)
        return res

    def run_batches(self, n: int) -> list[BatchResult]:
        out = []
        for _ in range(n):
            r = self.run_batch()
            if r is None:
                break
            out.append(r)
        return out

    def run_full_scans(self, n: int = 1, max_batches: int = 10_000_000) -> int:
        """Run batches until ``full_scans`` has advanced by ``n``; returns batches run."""
        ksm = self._ksm
        target = ksm.ksm_scan.seqnr + n
        count = 0
        while ksm.ksm_scan.seqnr < target and count < max_batches:
            prof = ksm.ff_profile
            if self.fast_forward and self._ff_pending is None and prof is not None \
                    and self.sanitizer is None:
                k = fastforward.replay_scans(ksm, prof, target - ksm.ksm_scan.seqnr,
                                             max_batches - count)
                if k:                              # whole scans at once, no records
                    self.batches += k
                    count += k
                    continue
            if self.run_batch() is None:
                break
            count += 1
        return count

    # -- reports ----------------------------------------------------------------------------
    def ksm_stats(self) -> dict[str, dict]:
        """``/proc/PID/ksm_stat`` of every live process."""
        return {n: p.ksm_stat() for n, p in self.processes.items() if p.alive}
