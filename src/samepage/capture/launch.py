"""``samepage launch``: start a program with PR_SET_MEMORY_MERGE set before exec, as systemd's
MemoryKSM=yes does, so that KSM considers all of its anonymous memory.

prctl(PR_SET_MEMORY_MERGE, 1) sets MMF_VM_MERGE_ANY on the mm; on 6.18 the flag survives
exec (the new mm inherits it in bprm_mm_init -> ksm_execve), so every VMA the program maps is
VM_MERGEABLE and /proc/PID/ksm_stat says ``ksm_merge_any: yes``. It needs CAP_SYS_RESOURCE and
a kernel with KSM; it touches no global KSM setting (ksmd merges only when run=1).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
from collections.abc import Sequence

PR_SET_MEMORY_MERGE = 67
PR_GET_MEMORY_MERGE = 68


class LaunchError(Exception):
    """The program could not be started (one line for the CLI)."""


def _set_merge_any() -> None:
    """In the child, between fork and exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start(argv: Sequence[str], merge_any: bool = True,
          detach: bool = False) -> subprocess.Popen:
    """Start ``argv`` (merge_any set before exec when ``merge_any``). ``detach``: in its own
    session with standard input and output on /dev/null, so that it does not hold the
    caller's terminal or pipe open (``pid=$(samepage launch --detach -- CMD)`` returns)."""
    if not argv:
        raise LaunchError("no command given (samepage launch -- CMD ...)")
    quiet = subprocess.DEVNULL if detach else None
    try:
        return subprocess.Popen(list(argv), preexec_fn=_set_merge_any if merge_any else None,
                                close_fds=True, stdin=quiet, stdout=quiet, stderr=quiet,
                                start_new_session=detach)
    except subprocess.SubprocessError as e:       # the prctl in the child failed
        msg = str(e)
        if "Operation not permitted" in msg:
            msg = ("prctl(PR_SET_MEMORY_MERGE) refused: Operation not permitted (needs "
                   "CAP_SYS_RESOURCE)")
        elif "Invalid argument" in msg:
            msg = ("prctl(PR_SET_MEMORY_MERGE) refused: Invalid argument (a kernel without "
                   "KSM, or older than 6.4)")
        raise LaunchError(msg) from None
    except FileNotFoundError:
        raise LaunchError(f"{argv[0]}: command not found") from None
    except PermissionError:
        raise LaunchError(f"{argv[0]}: permission denied") from None
    except OSError as e:
        raise LaunchError(f"{argv[0]}: {e.strerror or e}") from None


def run(argv: Sequence[str], merge_any: bool = True, on_start=None) -> int:
    """Start ``argv``, forward SIGINT/SIGTERM/SIGHUP to it, wait; its exit status (128+N
    for a signal N, as a shell reports it)."""
    proc = start(argv, merge_any)
    if on_start is not None:
        on_start(proc.pid)
    forwarded = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def forward(signum, _frame):
        try:
            proc.send_signal(signum)
        except ProcessLookupError:
            pass

    old = {s: signal.signal(s, forward) for s in forwarded}
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except InterruptedError:
                continue
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return 128 - rc if rc < 0 else rc
