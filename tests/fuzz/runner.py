"""The fuzzer's oracle: run the real ``samepage`` command on one case and classify the outcome.

The runner imports samepage once and ``os.fork()``s one child per case (no fresh interpreter):
the child redirects fd 0/1/2, caps its address space (RLIMIT_AS, a safety net), puts itself in
its own process group and calls the console-script entry point (found through
importlib.metadata, so a typer app or a ``main()`` wrapper both work) with the case's argv.  The
parent waits with a timeout (SIGKILL to the child's own process group past it) and reads the
peak RSS from ``os.wait4``'s rusage.

Outcomes (``Outcome.kind``):

* good: ``ok`` (exit 0); ``error`` (exit 2, exactly one stderr line ``samepage: error: ...``
  naming the case's file when it has one); ``found`` (exit 1 where the command documents it:
  compare differs, explore found a report, run --sanitize found a bug).
* bad: ``traceback``, ``internal-error`` (a bug reported as ``samepage: internal error``),
  ``multiline`` (exit 2 with more or other stderr lines), ``unnamed``
  (exit 2, one line that does not name the file), ``no-key`` (an input file's error without
  the ``FILE: KEY: message`` form), ``exit-N`` (any other exit status),
  ``hang`` (killed after the timeout), ``memory`` (peak RSS over the limit, or MemoryError),
  ``control-chars`` (terminal control characters in the output: escape sequences from the
  input reaching a terminal), ``broken-pipe`` (``| head -1``: a closed stdout is not a quiet
  exit), ``input-modified`` (an input file changed), ``wrote-beside`` (explore wrote a file
  into the scenario's folder it was not told to).
"""

from __future__ import annotations

import hashlib
import os
import re
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

TIMEOUT_S = 20.0
RSS_LIMIT = 4 << 30          # "no run above 4 GB"
# The child's address-space cap: the 4 GB. samepage checks its memory estimate
# against RLIMIT_AS before any work, so a scenario too big for it is refused in one line
# (e.g. 10**7 pages, ~4 GB in the model), rather than killed or run for minutes.
AS_LIMIT = 4 * 10**9
ERROR_PREFIX = "samepage: error: "
GOOD = ("ok", "error", "found")
_HEAD_FDS: set[int] = set()    # read ends of the `| head -1` pipes of running cases

# C0 controls except \t \n, DEL and the C1 controls: nothing the program should echo from input.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")


@dataclass
class Case:
    """One command to run.  ``names``: strings (file paths as given) one of which the error
    line must contain; ``inputs``: files that must be unchanged afterwards; ``allow_found``:
    exit 1 is a documented outcome; ``keyed``: the error line must read ``FILE: KEY: message``; ``head``: stdout is a pipe closed after its first line."""

    source: str
    label: str
    argv: list[str]
    names: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    allow_found: bool = False
    keyed: bool = False
    head: bool = False
    cwd: str | None = None
    timeout: float = TIMEOUT_S

    def reproducer(self) -> str:
        import shlex
        cmd = "samepage " + " ".join(shlex.quote(a) for a in self.argv)
        if self.cwd:
            cmd = f"cd {shlex.quote(self.cwd)} && {cmd}"
        return cmd + (" | head -1" if self.head else "")


@dataclass
class Outcome:
    kind: str
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float
    detail: str = ""

    @property
    def good(self) -> bool:
        return self.kind in GOOD


# ------------------------------------------------------------------------------ the entry point


def entry_point() -> Callable[[], object]:
    """The object behind the ``samepage`` console script (pyproject [project.scripts])."""
    from importlib.metadata import entry_points

    eps = entry_points(group="console_scripts", name="samepage")
    for ep in eps:
        return ep.load()
    raise RuntimeError("no samepage console script installed (pip install -e .)")


def _child(case: Case, out: str, err: str, stdout_fd: int | None, marker: str,
           entry: Callable[[], object]) -> None:
    """In the forked child: never returns."""
    code = 1
    try:
        os.setpgid(0, 0)
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)   # as CPython sets it at start-up
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        if stdout_fd is None:
            stdout_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(stdout_fd, 1)
        os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
        if case.cwd:
            os.chdir(case.cwd)
        # Fresh text streams on the redirected fds (pytest may have replaced sys.stdout).
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace",
                          closefd=False, buffering=1)
        sys.__stdout__, sys.__stderr__ = sys.stdout, sys.stderr
        sys.argv = ["samepage", *case.argv]
        code = 0
        try:
            rv = entry()
            if isinstance(rv, int):
                code = rv
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException as e:  # what the user would see: the installed excepthook's output
            with open(marker, "w") as f:
                f.write(type(e).__name__)
            try:
                sys.excepthook(*sys.exc_info())
            except BaseException:
                import traceback
                traceback.print_exc()
            code = 1
        # The interpreter's own exit: flush stdout; a failure is "Exception ignored", status 120.
        try:
            sys.stdout.flush()
        except BaseException as e:
            print(f"Exception ignored on flushing sys.stdout:\n{type(e).__name__}: {e}",
                  file=sys.stderr)
            code = 120
        try:
            sys.stderr.flush()
        except BaseException:
            pass
    finally:
        os._exit(code & 0xFF if isinstance(code, int) else 1)


# ------------------------------------------------------------------------------ running


class _Running:
    def __init__(self, case: Case, entry: Callable[[], object], tmp: str) -> None:
        self.case = case
        self.tmp = tmp
        self.out = os.path.join(tmp, "out")
        self.err = os.path.join(tmp, "err")
        self.marker = os.path.join(tmp, "exc")
        self.before = _snapshot(case)
        self.head_buf = b""
        self.head_fd: int | None = None
        rfd = wfd = None
        if case.head:
            rfd, wfd = os.pipe()
            os.set_blocking(rfd, False)
        sys.stdout.flush()
        sys.stderr.flush()
        self.t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            # A sibling's pipe must not stay open in this child (it would never see EPIPE).
            for fd in (*_HEAD_FDS, *([rfd] if rfd is not None else [])):
                os.close(fd)
            _child(case, self.out, self.err, wfd, self.marker, entry)
        self.pid = pid
        if rfd is not None:
            os.close(wfd)
            self.head_fd = rfd
            _HEAD_FDS.add(rfd)

    def _head(self) -> None:
        """``head -1``: read up to the first newline, then close the pipe."""
        if self.head_fd is None:
            return
        while True:
            try:
                chunk = os.read(self.head_fd, 65536)
            except BlockingIOError:
                return
            self.head_buf += chunk
            if not chunk or b"\n" in self.head_buf:
                _HEAD_FDS.discard(self.head_fd)
                os.close(self.head_fd)
                self.head_fd = None
                return

    def poll(self) -> Outcome | None:
        self._head()
        pid, status, ru = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            if time.monotonic() - self.t0 > self.case.timeout:
                self._kill()
                pid, status, ru = os.wait4(self.pid, 0)
                return self._outcome(None, ru, hung=True)
            return None
        return self._outcome(status, ru)

    def _kill(self) -> None:
        # Only our own child and what it started: the process group it made at fork.
        for target in (lambda: os.killpg(self.pid, signal.SIGKILL),
                       lambda: os.kill(self.pid, signal.SIGKILL)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass

    def kill(self) -> None:
        self._kill()
        try:
            os.wait4(self.pid, 0)
        except ChildProcessError:
            pass

    def _outcome(self, status: int | None, ru, hung: bool = False) -> Outcome:
        secs = time.monotonic() - self.t0
        self._head()
        if self.head_fd is not None:
            _HEAD_FDS.discard(self.head_fd)
            os.close(self.head_fd)
            self.head_fd = None
        rc = None if status is None else (os.waitstatus_to_exitcode(status))
        stdout = _read(self.out) if not self.case.head else \
            self.head_buf.split(b"\n", 1)[0].decode("utf-8", "backslashreplace")
        stderr = _read(self.err)
        exc = _read(self.marker) if os.path.exists(self.marker) else ""
        rss_mb = ru.ru_maxrss / 1024
        o = Outcome("?", rc, stdout, stderr, secs, rss_mb)
        o.kind, o.detail = classify(self.case, o, exc, hung, self.before)
        return o


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(1 << 20).decode("utf-8", "backslashreplace")
    except FileNotFoundError:
        return ""


def _digest(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def _snapshot(case: Case) -> dict[str, object]:
    snap: dict[str, object] = {p: _digest(p) for p in case.inputs}
    if case.argv[:1] == ["explore"] and len(case.argv) > 1:
        d = os.path.dirname(os.path.join(case.cwd or "", case.argv[1])) or "."
        try:
            snap[" dir"] = (d, set(os.listdir(d)))
        except OSError:
            pass
    return snap


def classify(case: Case, o: Outcome, exc: str, hung: bool,
             before: dict[str, object]) -> tuple[str, str]:
    """(kind, detail) of one finished case; see the module docstring."""
    err_lines = [ln for ln in o.stderr.splitlines() if ln.strip()]
    if hung:
        return "hang", f"killed after {case.timeout:.0f} s"
    if o.rss_mb * (1 << 20) > RSS_LIMIT or exc == "MemoryError":
        return "memory", f"peak RSS {o.rss_mb:.0f} MiB" + (" (MemoryError)" if exc else "")
    if exc or "Traceback (most recent call last)" in o.stderr:
        return "traceback", exc or "Traceback"
    if o.rc is not None and o.rc < 0:
        return f"signal-{-o.rc}", f"killed by signal {-o.rc}"
    for path, digest in before.items():
        if path == " dir":
            d, names = digest  # type: ignore[misc]
            try:
                new = set(os.listdir(d)) - names
            except OSError:
                new = set()
            allowed = set()
            if "--save" in case.argv:
                allowed.add(os.path.basename(case.argv[case.argv.index("--save") + 1]))
            new -= allowed
            if new:
                return "wrote-beside", f"new file(s) beside the scenario: {sorted(new)}"
        elif _digest(path) != digest:
            return "input-modified", f"{path} changed"
    if _CONTROL.search(o.stdout) or _CONTROL.search(o.stderr):
        m = _CONTROL.search(o.stdout) or _CONTROL.search(o.stderr)
        return "control-chars", f"control character {m.group()!r} in the output"
    if case.head and (o.rc == 120 or (o.rc == 1 and not case.allow_found)
                      or "BrokenPipe" in o.stderr or "Exception ignored" in o.stderr):
        return "broken-pipe", f"exit {o.rc} on a closed stdout: {' | '.join(err_lines)[:200]}"
    if o.rc == 0:
        return "ok", ""
    if "internal error" in o.stderr:
        return "internal-error", " | ".join(err_lines)[:200]
    if o.rc == 1 and case.allow_found:
        return "found", ""
    if o.rc == 2:
        if len(err_lines) != 1 or not err_lines[0].startswith(ERROR_PREFIX):
            return "multiline", f"{len(err_lines)} stderr lines: {' | '.join(err_lines)[:200]}"
        line = err_lines[0]
        if case.names:
            where = line
            if case.argv[:1] == ["validate"]:
                where += "\n" + o.stdout
            if not any(n in where for n in case.names):
                return "unnamed", line[:200]
            # an input file's error: FILE: KEY: message (KEY: a key path, (toml), line N, ...)
            if case.keyed and not any(re.search(re.escape(n) + r": [^ ].*?: \S", where)
                                      for n in case.names):
                return "no-key", line[:200]
        return "error", ""
    return f"exit-{o.rc}", " | ".join(err_lines)[:200]


def run_cases(cases: Iterable[Case], jobs: int = 2,
              entry: Callable[[], object] | None = None) -> Iterator[tuple[Case, Outcome]]:
    """Run the cases, ``jobs`` forked children at a time; yield (case, outcome) as each ends."""
    entry = entry or entry_point()
    pending = iter(cases)
    running: list[_Running] = []
    with tempfile.TemporaryDirectory(prefix="samepage-fuzz-") as root:
        slots = [os.path.join(root, str(i)) for i in range(jobs)]
        for s in slots:
            os.mkdir(s)
        free = list(slots)
        exhausted = False
        try:
            while running or not exhausted:
                while not exhausted and free:
                    case = next(pending, None)
                    if case is None:
                        exhausted = True
                        break
                    slot = free.pop()
                    for name in ("out", "err", "exc"):
                        try:
                            os.unlink(os.path.join(slot, name))
                        except FileNotFoundError:
                            pass
                    running.append(_Running(case, entry, slot))
                done = False
                for r in list(running):
                    o = r.poll()
                    if o is not None:
                        running.remove(r)
                        free.append(r.tmp)
                        done = True
                        yield r.case, o
                if not done and running:
                    time.sleep(0.003)
        finally:
            for r in running:
                r.kill()


def run_case(case: Case) -> Outcome:
    """Run one case (in a forked child) and classify it."""
    for _, o in run_cases([case], jobs=1):
        return o
    raise AssertionError("unreachable")


def write(path: Path | str, data: bytes | str) -> str:
    p = Path(path)
    p.write_bytes(data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data)
    return str(p)


def run_args(path: str, at_most: int = 3) -> list[str]:
    """``run PATH -q --batches N`` for a file validate accepted, N = min(at_most,
    run.batches): more batches than the file's own would take in events validate rightly
    did not check (``--batches`` past run.batches extends the scenario)."""
    from samepage.scenario import load_scenario

    n = min(at_most, load_scenario(path).run.batches)
    return ["run", path, "-q", "--batches", str(n)]


def differential(validate: Outcome, run: Outcome) -> str | None:
    """validate must reject what run rejects: validate ok and run exit 2 is a bad outcome."""
    if validate.rc == 0 and run.kind == "error":
        return "run-rejects-validated"
    return None
