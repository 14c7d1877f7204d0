"""Scenario processes as real OS processes: one small C worker per scenario process.

A :class:`Worker` drives one worker process over a Unix stream socket (protocol in
``worker_src``). :class:`WorkerSet` owns every worker of a run -- the ones it spawned and the
children they forked -- and kills and reaps all of them on every exit path.

Address layout (identical in every process, so a forked child sees its parent's regions at the
same addresses): region j of a process (file order) starts at ``WINDOW_LO + offset_j``, where
the offsets grow in file order, every region starts on a 2 MiB boundary and consecutive regions
are separated by at least a 2 MiB hole. So every region is its own VMA, regions are scanned in
file order (ksmd walks an mm by increasing address), and ``thp = "huge"`` regions are 2 MiB
aligned without over-allocating.
"""

from __future__ import annotations

import array
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .worker_src import WORKER_C

PAGE_SIZE = 4096
HUGE_SIZE = 2 << 20
WINDOW_LO = 0x100000000000          # 16 TiB: far from the worker's own mappings
WINDOW_HI = 0x200000000000

MADV_DONTNEED = 4
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13

THP_ADVICE = {"default": 0, "huge": 1, "nohuge": 2}

#: Tokens per ``write`` request (keeps requests around 100 KiB).
_WRITE_CHUNK = 4096
_REPLY_TIMEOUT = 60.0


class WorkerError(RuntimeError):
    """A worker request failed (``errno`` holds the kernel's error number, or None)."""

    def __init__(self, msg: str, errno_: int | None = None) -> None:
        super().__init__(msg)
        self.errno = errno_


class WorkerBuildError(RuntimeError):
    """The C worker could not be built (no C compiler, or a compile error)."""


# --------------------------------------------------------------------------- build


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "samepage"


def find_compiler() -> str | None:
    """The C compiler to use (``$CC``, else gcc, else cc), or None."""
    for cand in (os.environ.get("CC"), "gcc", "cc"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def worker_executable(cache_dir: str | os.PathLike | None = None) -> str:
    """Path of the compiled worker, building it into the cache directory if needed.

    Tries a static build first (smallest, fixed footprint), then a dynamic one. Raises
    WorkerBuildError if there is no C compiler or the build fails.
    """
    cc = find_compiler()
    digest = hashlib.sha256(WORKER_C.encode()).hexdigest()[:16]
    cdir = Path(cache_dir) if cache_dir is not None else _cache_dir()
    exe = cdir / f"ksm-worker-{digest}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return str(exe)
    if cc is None:
        raise WorkerBuildError(
            "the kernel harness needs a C compiler (gcc or cc, or $CC) to build its worker "
            "process; none was found in PATH")
    cdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cdir) as tmp:
        src = Path(tmp) / "worker.c"
        src.write_text(WORKER_C)
        out = Path(tmp) / "worker"
        errors = []
        for extra in (["-static"], []):
            r = subprocess.run([cc, "-O2", "-Wall", *extra, "-o", str(out), str(src)],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            errors.append(r.stderr.strip())
        else:
            raise WorkerBuildError("building the KSM worker failed:\n" + "\n".join(errors))
        os.chmod(out, 0o755)
        os.replace(out, exe)
    return str(exe)


# --------------------------------------------------------------------------- process identity


def proc_starttime(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(b")") + 2:].split()
    return int(rest[19])


def proc_state(pid: int) -> str | None:
    """The state letter of /proc/PID/stat, or None if there is no such pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].split()[0].decode()


def pid_alive(pid: int, starttime: int | None = None) -> bool:
    """True if ``pid`` exists, is not a zombie, and (if given) has that start time."""
    st = proc_starttime(pid)
    if st is None or (starttime is not None and st != starttime):
        return False
    return proc_state(pid) not in (None, "Z", "X")


# --------------------------------------------------------------------------- one worker


@dataclass
class Worker:
    """One scenario process. Created by :meth:`WorkerSet.spawn` or :meth:`Worker.fork`."""

    name: str
    pid: int
    sock: socket.socket
    starttime: int | None
    popen: subprocess.Popen | None = None     # None for forked children (not our child)
    regions: dict[str, tuple[int, int]] = field(default_factory=dict)   # name -> (addr, pages)
    alive: bool = True
    _buf: bytes = b""

    # -- transport

    def _readline(self) -> str:
        deadline = time.monotonic() + _REPLY_TIMEOUT
        while b"\n" not in self._buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                raise WorkerError(f"worker {self.name!r} (pid {self.pid}) did not answer "
                                  f"within {_REPLY_TIMEOUT:g} s") from None
            if not chunk:
                raise WorkerError(f"worker {self.name!r} (pid {self.pid}) closed its channel "
                                  "(it died?)")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def request(self, line: str, fds: list[int] | None = None) -> str:
        """Send one request line; return the reply's value text ('' for a bare ``ok``).
        Raises WorkerError (with errno) on an ``err`` reply."""
        if not self.alive:
            raise WorkerError(f"process {self.name!r} has exited")
        data = (line + "\n").encode()
        self.sock.settimeout(_REPLY_TIMEOUT)
        if fds:
            self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
        else:
            self.sock.sendall(data)
        reply = self._readline()
        word, _, rest = reply.partition(" ")
        if word == "ok":
            return rest
        if word == "err":
            num, _, text = rest.partition(" ")
            e = int(num)
            raise WorkerError(f"process {self.name!r}: {line.split()[0]}: {os.strerror(e)}"
                              + (f" ({text})" if text else ""), e)
        raise WorkerError(f"process {self.name!r}: unexpected reply {reply!r} to {line.split()[0]!r}")

    # -- operations

    def map_region(self, name: str, addr: int, pages: int, thp: str = "default") -> None:
        self.request(f"map {addr:#x} {pages} {THP_ADVICE[thp]}")
        self.regions[name] = (addr, pages)

    def region(self, name: str) -> tuple[int, int]:
        try:
            return self.regions[name]
        except KeyError:
            raise WorkerError(f"process {self.name!r} has no mapped region {name!r}") from None

    def write_pages(self, region: str, indices: list[int], tokens: list[int]) -> None:
        """Store ``tokens[k]`` into page ``indices[k]`` of the region (runs of consecutive
        indices become one request each)."""
        addr, pages = self.region(region)
        if len(indices) != len(tokens):
            raise ValueError("indices and tokens differ in length")
        k = 0
        while k < len(indices):
            j = k + 1
            while j < len(indices) and j - k < _WRITE_CHUNK and indices[j] == indices[j - 1] + 1:
                j += 1
            start = indices[k]
            if start < 0 or indices[j - 1] >= pages:
                raise ValueError(f"page {indices[j - 1]} outside region {region!r}")
            toks = " ".join(str(t) for t in tokens[k:j])
            self.request(f"write {addr + start * PAGE_SIZE:#x} {j - k} {toks}")
            k = j

    def madvise(self, region: str, indices: list[int] | None, advice: int) -> None:
        """madvise on whole-region (indices None) or on runs of the given pages."""
        addr, pages = self.region(region)
        for start, n in _runs(indices if indices is not None else range(pages)):
            self.request(f"madv {addr + start * PAGE_SIZE:#x} {n} {advice}")

    def munmap(self, region: str) -> None:
        addr, pages = self.region(region)
        self.request(f"unmap {addr:#x} {pages}")
        del self.regions[region]

    def set_merge_any(self, value: bool) -> None:
        self.request(f"merge_any {1 if value else 0}")

    def fork(self, child_name: str, workers: "WorkerSet") -> "Worker":
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            value = self.request("fork", fds=[child_end.fileno()])
        finally:
            child_end.close()
        pid = int(value)
        child = Worker(name=child_name, pid=pid, sock=parent_end, starttime=proc_starttime(pid),
                       regions=dict(self.regions))
        workers._add(child)
        hello = child._readline()
        if hello != f"hello {pid}":
            raise WorkerError(f"forked child {child_name!r}: unexpected greeting {hello!r}")
        return child

    def exit(self, timeout: float = 10.0) -> None:
        """Ask the process to exit and wait until it is gone (its mm torn down)."""
        self.request("exit")
        self.alive = False
        self.sock.close()
        deadline = time.monotonic() + timeout
        if self.popen is not None:
            self.popen.wait(timeout=timeout)
            return
        while pid_alive(self.pid, self.starttime):
            if time.monotonic() > deadline:
                raise WorkerError(f"process {self.name!r} (pid {self.pid}) did not exit")
            time.sleep(0.0005)

    def kill(self) -> None:
        """SIGKILL the process if it still is the one we started (pid reuse is checked)."""
        self.alive = False
        try:
            self.sock.close()
        except OSError:
            pass
        if self.popen is not None:
            if self.popen.poll() is None:
                try:
                    self.popen.kill()
                except ProcessLookupError:
                    pass
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            return
        if pid_alive(self.pid, self.starttime):
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _runs(indices) -> list[tuple[int, int]]:
    """Consecutive runs of page indices as (start, length), in the given order."""
    out: list[tuple[int, int]] = []
    for i in indices:
        if out and out[-1][0] + out[-1][1] == i:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((i, 1))
    return out


# --------------------------------------------------------------------------- all workers


class WorkerSet:
    """Every worker of one run, by scenario process name. Use as a context manager: on exit
    (normal or not) every process still alive is killed and reaped."""

    def __init__(self, executable: str | None = None, on_spawn=None,
                 home_cpu: int = -1, scratch_cpu: int = -1) -> None:
        self.executable = executable or worker_executable()
        self.home_cpu = home_cpu          # where scenario pages are faulted (-1: anywhere)
        self.scratch_cpu = scratch_cpu    # where the workers' own pages are faulted
        self.workers: dict[str, Worker] = {}
        self.order: list[Worker] = []           # creation order (children after parents)
        self.on_spawn = on_spawn                # callback(name, pid) for every new process

    def _add(self, w: Worker) -> None:
        self.workers[w.name] = w
        self.order.append(w)
        if self.on_spawn is not None:
            self.on_spawn(w.name, w.pid)

    def spawn(self, name: str) -> Worker:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            popen = subprocess.Popen(
                [self.executable, str(theirs.fileno()), hex(WINDOW_LO), hex(WINDOW_HI),
                 str(self.home_cpu), str(self.scratch_cpu)],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True,
                start_new_session=True)   # a terminal ^C reaches the harness only
        finally:
            theirs.close()
        w = Worker(name=name, pid=popen.pid, sock=ours, starttime=proc_starttime(popen.pid),
                   popen=popen)
        self._add(w)
        pid = int(w.request("pid"))
        if pid != popen.pid:
            raise WorkerError(f"worker {name!r}: pid mismatch ({pid} != {popen.pid})")
        return w

    def __getitem__(self, name: str) -> Worker:
        return self.workers[name]

    def live(self) -> list[Worker]:
        return [w for w in self.order if w.alive]

    def pids(self) -> list[int]:
        return [w.pid for w in self.order]

    def kill_all(self) -> None:
        """Kill every process still alive, newest first (a forked child is then reaped by its
        still-living parent, which ignores SIGCHLD), and wait until all are gone."""
        for w in reversed(self.order):
            w.kill()
        deadline = time.monotonic() + 10
        for w in self.order:
            while pid_alive(w.pid, w.starttime) and time.monotonic() < deadline:
                time.sleep(0.002)

    def __enter__(self) -> "WorkerSet":
        return self

    def __exit__(self, *exc) -> None:
        self.kill_all()


def region_layout(regions: list[tuple[str, int]]) -> dict[str, int]:
    """Start address of every region (name, pages) of one process, in file order."""
    out: dict[str, int] = {}
    addr = WINDOW_LO
    for name, pages in regions:
        out[name] = addr
        size = pages * PAGE_SIZE
        addr += (size + HUGE_SIZE - 1) // HUGE_SIZE * HUGE_SIZE + HUGE_SIZE
    if addr > WINDOW_HI:
        raise ValueError("the regions of one process do not fit in the worker's address window")
    return out
