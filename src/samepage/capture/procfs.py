"""Reading a live process's anonymous memory through procfs, without side effects on it.

What it models: what KSM would see of a process. KSM scans only anonymous pages of VMAs with
VM_MERGEABLE (``mg`` in ``/proc/PID/smaps`` VmFlags); samepage reads every private anonymous
VMA (no backing file: unnamed, ``[heap]``, ``[stack]``, ``[anon:NAME]``; ``p`` in the perms)
and records its flags, so that a forecast can also ask "what if it were mergeable".

It also reads the **private file-backed VMAs** that hold anonymous pages (smaps
``Anonymous:`` or ``Swap:`` above 0): a library's ``.data``/RELRO, the JVM's CDS archive.
vma_ksm_compatible() accepts a non-shared file VMA, so a merge_any process has them
VM_MERGEABLE, and ksmd (scan_get_next_rmap_item) scans every anonymous folio of such a VMA:
its copied-on-write pages. Of those VMAs only pages that pagemap shows present and not
``PM_FILE`` (bit 61: a page-cache page) are read; page-cache pages, which ksmd skips, are
holes. A file VMA vma_ksm_compatible() would refuse (``sh``/``ms`` shared, ``io`` VM_IO,
``pf`` VM_PFNMAP, ``de`` VM_DONTEXPAND, ``mm`` VM_MIXEDMAP, ``ht`` VM_HUGETLB) is left out:
ksmd never scans it, merge_any or not.

* Present pages come from ``/proc/PID/pagemap`` (8 bytes a page: bit 63 present, bit 62
  swapped, bit 56 exclusively mapped, bits 0-54 the PFN, visible to root). One pread a VMA.
* Only present pages are read, over runs of present pages in chunks of 64 MiB, with
  process_vm_readv (one copy; /proc/PID/mem, which copies through a bounce page, is the
  fallback). Reading a never-touched page would fault the shared zero page into the target (a
  read fault through get_user_pages): a side effect a capture must not have. (A page that the
  target unmaps between the pagemap read and the memory read is the one race left: the read
  then faults it back as a zero page; documented in docs/snapshot-format.md.)
* A present page whose PFN is the shared zero page's (a read fault of the target, or a KSM
  zero page with use_zero_pages=1) is recorded as token 0 with the ZERO_PFN flag, not read.
  The zero page's PFN is found by read-faulting a page of samepage's own.
* Swapped-out pages are holes with the swapped mark; they are not read (that would swap them
  in).

Everything takes a ``proc_root`` (default ``/proc``) so that process selection can be tested
on a fake tree.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .tokens import PAGE_SIZE, Digests, digest_pages

PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_FILE = 1 << 61            # a page-cache (or shared-anon) page: not an anonymous folio
PM_MMAP_EXCLUSIVE = 1 << 56
PM_PFN_MASK = (1 << 55) - 1
PF_KTHREAD = 0x00200000
#: Read chunk (bytes) of process memory and files.
CHUNK = 64 * 1024 * 1024

# VMA flag bits of a snapshot (docs/snapshot-format.md).
VMA_READ = 1
VMA_WRITE = 2
VMA_EXEC = 4
VMA_MERGEABLE = 8        # VmFlags mg (VM_MERGEABLE)
VMA_HUGEPAGE = 16        # hg (MADV_HUGEPAGE)
VMA_NOHUGEPAGE = 32      # nh (MADV_NOHUGEPAGE)
VMA_FLAGS_UNKNOWN = 64   # from a core dump or raw file: VmFlags not known
VMA_FILE = 128           # a private file-backed VMA: only its anonymous (COW'd) pages recorded

#: VmFlags mnemonics of the VM_* bits vma_ksm_compatible() refuses (VM_SHARED, VM_MAYSHARE,
#: VM_IO, VM_PFNMAP, VM_DONTEXPAND, VM_MIXEDMAP, VM_HUGETLB).
KSM_INCOMPATIBLE = frozenset({"sh", "ms", "io", "pf", "de", "mm", "ht"})

# Page flag bits.
PAGE_ZERO_PFN = 1        # mapped the shared zero page (not read)
PAGE_EXCLUSIVE = 2       # pagemap PM_MMAP_EXCLUSIVE


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


def _load_pvr():
    try:
        f = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    f.restype = ctypes.c_ssize_t
    f.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                  ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    return f


_pvr = _load_pvr()


class ProcessGone(Exception):
    """The process exited (or became a zombie) during the capture."""


class NotCapturable(Exception):
    """A process that has no user memory to capture (a kernel thread) or may not be read."""


_SMAPS_HEAD = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) ([rwxsp-]{4}) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)\s*(.*)$")


@dataclass
class SmapsVma:
    """One VMA of /proc/PID/smaps."""

    start: int
    end: int
    perms: str
    inode: int
    path: str
    vmflags: set[str] = field(default_factory=set)
    anon_huge_kb: int = 0
    rss_kb: int = 0
    swap_kb: int = 0
    anonymous_kb: int = 0

    @property
    def pages(self) -> int:
        return (self.end - self.start) // PAGE_SIZE

    @property
    def private_anonymous(self) -> bool:
        if self.perms[3] != "p" or self.inode != 0:
            return False
        return (self.path == "" or self.path in ("[heap]", "[stack]")
                or self.path.startswith("[anon:") or self.path.startswith("[stack:"))

    @property
    def private_file(self) -> bool:
        """A private file-backed VMA (not a special mapping such as [vdso] or [vvar])."""
        if self.perms[3] != "p" or "sh" in self.vmflags or "ms" in self.vmflags:
            return False
        return self.inode != 0 and not self.path.startswith("[")

    @property
    def ksm_compatible(self) -> bool:
        return not (self.vmflags & KSM_INCOMPATIBLE)

    @property
    def file_with_anon(self) -> bool:
        """A private file VMA ksmd may scan that holds anonymous (COW'd) pages."""
        return (self.private_file and self.ksm_compatible
                and (self.anonymous_kb > 0 or self.swap_kb > 0))

    @property
    def flags(self) -> int:
        f = 0
        f |= VMA_READ if self.perms[0] == "r" else 0
        f |= VMA_WRITE if self.perms[1] == "w" else 0
        f |= VMA_EXEC if self.perms[2] == "x" else 0
        f |= VMA_MERGEABLE if "mg" in self.vmflags else 0
        f |= VMA_HUGEPAGE if "hg" in self.vmflags else 0
        f |= VMA_NOHUGEPAGE if "nh" in self.vmflags else 0
        f |= VMA_FILE if self.private_file else 0
        return f


def parse_smaps(text: str) -> list[SmapsVma]:
    vmas: list[SmapsVma] = []
    for line in text.splitlines():
        m = _SMAPS_HEAD.match(line)
        if m:
            vmas.append(SmapsVma(int(m.group(1), 16), int(m.group(2), 16), m.group(3),
                                 int(m.group(6)), m.group(7)))
            continue
        if not vmas:
            continue
        key, _, val = line.partition(":")
        if key == "VmFlags":
            vmas[-1].vmflags = set(val.split())
        elif key in ("AnonHugePages", "Rss", "Swap", "Anonymous"):
            try:
                kb = int(val.split()[0])
            except (ValueError, IndexError):
                continue
            if key == "AnonHugePages":
                vmas[-1].anon_huge_kb = kb
            elif key == "Rss":
                vmas[-1].rss_kb = kb
            elif key == "Anonymous":
                vmas[-1].anonymous_kb = kb
            else:
                vmas[-1].swap_kb = kb
    return vmas


def _read(path: str, pid: int) -> str:
    """A small procfs file of ``pid``; ProcessGone / NotCapturable on failure."""
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessGone(f"pid {pid}: exited") from None
    except PermissionError:
        raise NotCapturable(f"pid {pid}: permission denied reading {os.path.basename(path)} "
                            "(ptrace access mode)") from None


@dataclass
class ProcessInfo:
    pid: int
    comm: str
    cmdline: str
    kthread: bool
    merge_any: bool | None      # None: no /proc/PID/ksm_stat (KSM not built in)
    mergeable: bool | None


def process_info(pid: int, proc_root: str = "/proc") -> ProcessInfo:
    d = f"{proc_root}/{pid}"
    comm = _read(f"{d}/comm", pid).rstrip("\n")
    cmdline = _read(f"{d}/cmdline", pid).replace("\0", " ").strip()
    stat = _read(f"{d}/stat", pid)
    try:
        fields = stat[stat.rindex(")") + 2:].split()
        kthread = bool(int(fields[6]) & PF_KTHREAD)       # field 9: flags
    except (ValueError, IndexError):
        kthread = False
    merge_any = mergeable = None
    try:
        ks = _read(f"{d}/ksm_stat", pid)
    except (ProcessGone, NotCapturable):
        ks = ""
    for line in ks.splitlines():
        k, _, v = line.partition(":")
        if k.strip() == "ksm_merge_any":
            merge_any = v.strip() == "yes"
        elif k.strip() == "ksm_mergeable":
            mergeable = v.strip() == "yes"
    return ProcessInfo(pid, comm, cmdline, kthread, merge_any, mergeable)


def list_pids(proc_root: str = "/proc") -> list[int]:
    try:
        return sorted(int(n) for n in os.listdir(proc_root) if n.isdigit())
    except OSError:
        return []


def pids_by_name(pattern: str, proc_root: str = "/proc", exclude: set[int] | None = None
                 ) -> list[int]:
    """Processes whose comm or command line matches the regular expression ``pattern``."""
    rx = re.compile(pattern)
    out = []
    for pid in list_pids(proc_root):
        if exclude and pid in exclude:
            continue
        try:
            info = process_info(pid, proc_root)
        except (ProcessGone, NotCapturable):
            continue
        if not info.kthread and (rx.search(info.comm) or rx.search(info.cmdline)):
            out.append(pid)
    return out


def pids_in_cgroup(path: str) -> list[int]:
    """The processes of a cgroup directory (its cgroup.procs; v2 or a v1 hierarchy)."""
    with open(os.path.join(path, "cgroup.procs")) as f:
        return sorted({int(x) for x in f.read().split()})


def mergeable_pids(proc_root: str = "/proc", exclude: set[int] | None = None) -> list[int]:
    """Processes with mergeable memory: ksm_stat says ksm_mergeable yes (6.18), or, without
    ksm_stat, a VMA with ``mg`` in smaps."""
    out = []
    for pid in list_pids(proc_root):
        if exclude and pid in exclude:
            continue
        try:
            info = process_info(pid, proc_root)
            if info.kthread:
                continue
            if info.mergeable or info.merge_any:
                out.append(pid)
            elif info.mergeable is None and any(
                    "mg" in v.vmflags for v in parse_smaps(_read(f"{proc_root}/{pid}/smaps", pid))):
                out.append(pid)
        except (ProcessGone, NotCapturable):
            continue
    return out


_zero_pfn: int | None = None
_zero_pfn_done = False


def zero_pfn() -> int | None:
    """The PFN of the shared zero page, found by read-faulting a page of our own (None when
    pagemap hides PFNs, i.e. without CAP_SYS_ADMIN)."""
    global _zero_pfn, _zero_pfn_done
    if _zero_pfn_done:
        return _zero_pfn
    _zero_pfn_done = True
    try:
        m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return None
    try:
        buf = (ctypes.c_char * PAGE_SIZE).from_buffer(m)
        addr = ctypes.addressof(buf)
        _ = m[0]                                    # read fault: maps the zero page
        with open("/proc/self/pagemap", "rb") as f:
            (e,) = struct.unpack("<Q", os.pread(f.fileno(), 8, addr // PAGE_SIZE * 8))
        del buf
        pfn = e & PM_PFN_MASK
        _zero_pfn = pfn if (e & PM_PRESENT) and pfn else None
    except (OSError, struct.error):
        _zero_pfn = None
    finally:
        try:
            m.close()
        except BufferError:
            pass
    return _zero_pfn


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """The [start, end) index runs where ``mask`` is true."""
    if mask.size == 0:
        return []
    d = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return list(zip(starts.tolist(), ends.tolist()))


class ProcessMemory:
    """Open handles on a process's pagemap and mem (PTRACE_MODE_ATTACH, checked at open)."""

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        self.pid = pid
        self.proc_root = proc_root
        self.pagemap_fd = self.mem_fd = -1
        self.use_pvr = True
        try:
            self.pagemap_fd = os.open(f"{proc_root}/{pid}/pagemap", os.O_RDONLY)
            self.mem_fd = os.open(f"{proc_root}/{pid}/mem", os.O_RDONLY)
        except (FileNotFoundError, ProcessLookupError):
            self.close()
            raise ProcessGone(f"pid {pid}: exited") from None
        except PermissionError:
            self.close()
            raise NotCapturable(f"pid {pid}: permission denied (reading another process's "
                                "memory needs ptrace access: root or CAP_SYS_PTRACE)") from None

    def close(self) -> None:
        for fd in (self.pagemap_fd, self.mem_fd):
            if fd >= 0:
                os.close(fd)
        self.pagemap_fd = self.mem_fd = -1

    def __enter__(self) -> "ProcessMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pvr_read(self, mv: memoryview, addr: int) -> int:
        """Bytes read by process_vm_readv, or -1 if the call is not available."""
        buf = (ctypes.c_char * len(mv)).from_buffer(mv)
        base = ctypes.addressof(buf)
        got = 0
        try:
            while got < len(mv):
                local = _IoVec(base + got, len(mv) - got)
                remote = _IoVec(addr + got, len(mv) - got)
                n = _pvr(self.pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
                if n > 0:
                    got += n
                    continue
                err = ctypes.get_errno() if n < 0 else 0
                if err == errno.ESRCH:
                    raise ProcessGone(f"pid {self.pid}: exited")
                if err in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    return -1 if got == 0 else got
                if not self.alive():
                    raise ProcessGone(f"pid {self.pid}: exited")
                break                        # EFAULT: unmapped meanwhile
            return got
        finally:
            del buf

    def alive(self) -> bool:
        try:
            st = _read(f"{self.proc_root}/{self.pid}/stat", self.pid)
        except (ProcessGone, NotCapturable):
            return False
        return st[st.rindex(")") + 2:][:1] not in ("Z", "X")

    def pagemap(self, start: int, pages: int) -> np.ndarray:
        """The pagemap entries of ``pages`` pages from ``start`` (uint64)."""
        want = pages * 8
        out = bytearray(want)
        # a short read leaves the rest zero: not present
        self._preadv_all(self.pagemap_fd, memoryview(out), start // PAGE_SIZE * 8)
        return np.frombuffer(out, dtype="<u8").astype(np.uint64)

    def _preadv_all(self, fd: int, mv: memoryview, off: int, got: int = 0) -> int:
        """Fill ``mv[got:]`` from ``fd`` at ``off + got``; bytes read in all. Stops short at
        an unreadable place; ProcessGone once the process has exited."""
        while got < len(mv):
            try:
                n = os.preadv(fd, [mv[got:]], off + got)
            except ProcessLookupError:
                raise ProcessGone(f"pid {self.pid}: exited") from None
            except OSError:
                n = 0
            if n <= 0:
                if not self.alive():
                    raise ProcessGone(f"pid {self.pid}: exited")
                break
            got += n
        return got

    def read_digests(self, start: int, idx: np.ndarray, buf: bytearray,
                     on_bytes: Callable[[int], None] | None = None
                     ) -> tuple[Digests, np.ndarray]:
        """Read and digest the pages at page offsets ``idx`` (sorted) from ``start``, in
        runs of consecutive offsets and chunks of len(buf). Returns the digests of the pages
        read and a mask over ``idx`` of those read (a page that vanished reads short)."""
        parts: list[Digests] = []
        ok = np.ones(idx.size, bool)
        mv = memoryview(buf)
        cap = len(buf) // PAGE_SIZE
        if idx.size == 0:
            return Digests.empty(), ok
        brk = np.flatnonzero(np.diff(idx) != 1) + 1
        bounds = np.concatenate(([0], brk, [idx.size])).tolist()
        for a, b in zip(bounds[:-1], bounds[1:]):
            pos = a
            while pos < b:
                n = min(cap, b - pos)
                addr = start + int(idx[pos]) * PAGE_SIZE
                got = self._pread(mv[:n * PAGE_SIZE], addr)
                full = got // PAGE_SIZE
                if full:
                    parts.append(digest_pages(mv[:full * PAGE_SIZE]))
                    if on_bytes is not None:
                        on_bytes(full * PAGE_SIZE)
                if full < n:                          # unmapped meanwhile: holes
                    ok[pos + full:pos + n] = False
                pos += n
        return Digests.concat(parts), ok

    def _pread(self, mv: memoryview, addr: int) -> int:
        """Read len(mv) bytes at ``addr``: process_vm_readv (one copy), else /proc/PID/mem
        (which copies through a bounce page: half the speed). Short at an unmapped page."""
        got = 0
        if _pvr is not None and self.use_pvr:
            got = self._pvr_read(mv, addr)
            if got < 0:                  # not usable here: /proc/PID/mem from now on
                self.use_pvr = False
                got = 0
            elif got == len(mv):
                return got
        return self._preadv_all(self.mem_fd, mv, addr, got)


def private_anonymous_vmas(pid: int, proc_root: str = "/proc") -> list[SmapsVma]:
    """The private anonymous VMAs of ``pid`` in address order (NotCapturable for a kernel
    thread, which has no mm and an empty smaps)."""
    return [v for v in _smaps(pid, proc_root) if v.private_anonymous]


def capturable_vmas(pid: int, proc_root: str = "/proc") -> list[SmapsVma]:
    """What ksmd may scan of ``pid``, in address order: the private anonymous VMAs and the
    private file-backed VMAs holding anonymous pages (``file_with_anon``)."""
    return [v for v in _smaps(pid, proc_root) if v.private_anonymous or v.file_with_anon]


def _smaps(pid: int, proc_root: str) -> list[SmapsVma]:
    vmas = parse_smaps(_read(f"{proc_root}/{pid}/smaps", pid))
    if not vmas:
        raise NotCapturable(f"pid {pid}: a kernel thread or a process without user memory "
                            "(empty smaps)")
    return vmas


def iter_present(entries: np.ndarray, zpfn: int | None) -> Iterator[tuple[str, np.ndarray]]:
    """Classify pagemap entries: ('present', offsets to read), ('zero', offsets mapping the
    zero page), ('swapped', offsets), ('exclusive', mask over all entries). A PM_FILE page
    (page cache in a private file VMA) is none of them: ksmd skips it, it is a hole."""
    anon = (entries & np.uint64(PM_FILE)) == 0
    present = anon & ((entries & np.uint64(PM_PRESENT)) != 0)
    swapped = anon & ((entries & np.uint64(PM_PRESENT)) == 0) & (
        (entries & np.uint64(PM_SWAP)) != 0)
    zero = np.zeros(entries.size, bool)
    if zpfn is not None:
        zero = present & ((entries & np.uint64(PM_PFN_MASK)) == np.uint64(zpfn))
    yield "present", np.flatnonzero(present & ~zero)
    yield "zero", np.flatnonzero(zero)
    yield "swapped", np.flatnonzero(swapped)
    yield "exclusive", (entries & np.uint64(PM_MMAP_EXCLUSIVE)) != 0
