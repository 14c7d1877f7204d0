"""The machine-wide lock that serialises every use of the live KSM.

KSM is global state (one ksmd, one set of tunables, one set of counters), so two harness runs at
the same time would corrupt each other's traces and settings. Everything that writes
/sys/kernel/mm/ksm holds this lock: an exclusive ``flock`` on ``/run/lock/samepage-ksm.lock``.
The lock is released by the kernel when the holder dies, whatever the way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from contextlib import contextmanager
from typing import Iterator

LOCK_PATH = "/run/lock/samepage-ksm.lock"

# Re-entrancy within one process: flock is per open file description, so a second
# open()+flock() in the same process would wait for the first forever.
_held_fd: int | None = None
_depth = 0
_guard = threading.RLock()


class KsmLockTimeout(TimeoutError):
    """The lock could not be taken within the timeout (another harness run holds it)."""


@contextmanager
def ksm_lock(timeout: float | None = None, *, path: str = LOCK_PATH) -> Iterator[int]:
    """Hold the exclusive KSM lock for the duration of the ``with`` block.

    ``timeout``: None waits forever, 0 tries once, a positive number waits up to that many
    seconds. Raises KsmLockTimeout when the lock stays busy. Yields the lock file descriptor.
    Re-entrant within a process (nested ``ksm_lock`` blocks share the one flock); threads of
    one process are serialised by an RLock.
    """
    global _held_fd, _depth
    if not _guard.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
        raise KsmLockTimeout(f"{path}: another thread of this process holds the KSM lock")
    try:
        if _depth > 0 and _held_fd is not None:
            _depth += 1
            try:
                yield _held_fd
            finally:
                _depth -= 1
            return
        with _flock(path, timeout) as fd:
            _held_fd, _depth = fd, 1
            try:
                yield fd
            finally:
                _held_fd, _depth = None, 0
    finally:
        _guard.release()


def _holder(fd: int) -> str:
    """" (pid N, COMM)" for the pid the lock holder wrote into the lock file, if readable."""
    try:
        pid = int(os.pread(fd, 32, 0).split()[0])
    except (OSError, ValueError, IndexError):
        return ""
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f" (pid {pid}, {f.read().strip()})"
    except OSError:
        return f" (pid {pid})"


def lock_holder(path: str = LOCK_PATH) -> int | None:
    """The pid written into the lock file by its last holder (it may have finished), or None."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextmanager
def _flock(path: str, timeout: float | None) -> Iterator[int]:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            deadline = time.monotonic() + max(0.0, timeout)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() >= deadline:
                        raise KsmLockTimeout(
                            f"{path} is held by another process{_holder(fd)} (another "
                            f"samepage kernel run?); gave up after {timeout:g} s") from None
                    time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass
        try:
            yield fd
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
