"""``/sys/kernel/mm/ksm``: the ``*_show`` and ``*_store`` functions of mm/ksm.c.

``sysfs_write`` parses the value the way the kernel's ``kstrto*`` helpers do and raises
``OSError`` with the kernel's errno (``EINVAL``, ``EBUSY``, ``ERANGE``) when a store fails.
``sysfs_read`` returns what ``cat`` would print, as a string.
"""

from __future__ import annotations

import errno
import os

from .ksm import KSM_RUN_MERGE, KSM_RUN_UNMERGE, Ksm, RbRoot

U32_MAX = (1 << 32) - 1
U64_MAX = (1 << 64) - 1
INT_MAX = (1 << 31) - 1

READ_ONLY = ("pages_scanned", "pages_shared", "pages_sharing", "pages_unshared",
             "pages_volatile", "pages_skipped", "full_scans", "stable_node_chains",
             "stable_node_dups", "ksm_zero_pages", "general_profit")
WRITABLE = ("run", "pages_to_scan", "sleep_millisecs", "max_page_sharing",
            "merge_across_nodes", "use_zero_pages", "smart_scan",
            "stable_node_chains_prune_millisecs", "advisor_mode", "advisor_max_cpu",
            "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
            "advisor_target_scan_time")
ALL_FILES = WRITABLE + READ_ONLY


def _err(code: int, name: str, value) -> OSError:
    return OSError(code, f"write {value!r} to {name}: {os.strerror(code)}")


def _kstrtoull(s: str, limit: int, name: str, value, *, signed: bool = False) -> int:
    """Base-10 parse like kstrto*: optional sign, digits, one trailing newline."""
    t = s[:-1] if s.endswith("\n") else s
    neg = False
    if t.startswith("+"):
        t = t[1:]
    elif t.startswith("-") and signed:
        neg = True
        t = t[1:]
    if not t or not t.isdigit() or not t.isascii():
        raise _err(errno.EINVAL, name, value)
    v = int(t)
    if neg:
        v = -v
        if v < -(limit + 1):
            raise _err(errno.ERANGE, name, value)
    elif v > limit:
        raise _err(errno.ERANGE, name, value)
    return v


def _kstrtobool(s: str, name: str, value) -> bool:
    t = s.strip("\n")
    if not t:
        raise _err(errno.EINVAL, name, value)
    c = t[0]
    if c in "yY1":
        return True
    if c in "nN0":
        return False
    if c in "oO" and len(t) > 1:
        if t[1] in "nN":
            return True
        if t[1] in "fF":
            return False
    raise _err(errno.EINVAL, name, value)


def _kstrto_einval(s: str, name: str, value, limit: int = U64_MAX) -> int:
    """For the stores that turn every parse error (including overflow) into EINVAL."""
    try:
        return _kstrtoull(s, limit, name, value)
    except OSError:
        raise _err(errno.EINVAL, name, value) from None


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def sysfs_write(ksm: Ksm, name: str, value) -> None:
    """``echo VALUE > /sys/kernel/mm/ksm/NAME``."""
    ksm.ff_invalidate()                      # a tunable write ends any fast-forward
    s = _as_text(value)
    if name in READ_ONLY:
        raise OSError(errno.EACCES, f"{name} is read-only")
    if name == "run":
        flags = _kstrto_einval(s, name, value, U32_MAX)
        if flags > KSM_RUN_UNMERGE:
            raise _err(errno.EINVAL, name, value)
        if ksm.ksm_run != flags:
            ksm.ksm_run = flags
            if flags & KSM_RUN_UNMERGE:
                err = ksm.unmerge_and_remove_all_rmap_items()
                if err:
                    ksm.ksm_run = 0
                    raise _err(-err, name, value)
        if flags & KSM_RUN_MERGE:
            ksm.ksmd_woken = True
        return
    if name == "pages_to_scan":
        if ksm.ksm_advisor != "none":
            raise _err(errno.EINVAL, name, value)
        ksm.ksm_thread_pages_to_scan = _kstrto_einval(s, name, value, U32_MAX)
        return
    if name == "sleep_millisecs":
        ksm.ksm_thread_sleep_millisecs = _kstrto_einval(s, name, value, U32_MAX)
        return
    if name == "max_page_sharing":
        knob = _kstrtoull(s, INT_MAX, name, value, signed=True)
        if knob < 2:
            raise _err(errno.EINVAL, name, value)
        if ksm.ksm_max_page_sharing == knob:
            return
        if ksm.ksm_pages_shared or ksm.remove_all_stable_nodes():
            raise _err(errno.EBUSY, name, value)
        ksm.ksm_max_page_sharing = knob
        return
    if name == "merge_across_nodes":
        knob = _kstrtoull(s, U64_MAX, name, value)
        if knob > 1:
            raise _err(errno.EINVAL, name, value)
        if ksm.ksm_merge_across_nodes != knob:
            if ksm.ksm_pages_shared or ksm.remove_all_stable_nodes():
                raise _err(errno.EBUSY, name, value)
            nr = ksm.mem.nr_node_ids
            if len(ksm.root_stable_tree) == 1 and nr > 1:
                # first switch away from 1: per-node roots; the live unstable tree stays root 0
                ksm.root_stable_tree = [RbRoot() for _ in range(nr)]
                ksm.root_unstable_tree = [ksm.root_unstable_tree[0]] + \
                    [RbRoot() for _ in range(nr - 1)]
            ksm.ksm_merge_across_nodes = knob
            ksm.ksm_nr_node_ids = 1 if knob else nr
        return
    if name == "use_zero_pages":
        ksm.ksm_use_zero_pages = _kstrtobool(s, name, value)
        return
    if name == "smart_scan":
        ksm.ksm_smart_scan = _kstrtobool(s, name, value)
        return
    if name == "stable_node_chains_prune_millisecs":
        ksm.ksm_stable_node_chains_prune_millisecs = _kstrto_einval(s, name, value, U32_MAX)
        return
    if name == "advisor_mode":
        t = s.strip("\n")
        if t not in ("none", "scan-time"):
            raise _err(errno.EINVAL, name, value)
        if ksm.ksm_advisor != t:
            ksm.ksm_advisor = t
            # set_advisor_defaults
            if t == "none":
                ksm.ksm_thread_pages_to_scan = 100
            else:
                ksm.advisor_ctx = {"start_scan": 0, "scan_time": 0, "change": 0,
                                   "cpu_time": 0}
                ksm.ksm_thread_pages_to_scan = ksm.ksm_advisor_min_pages_to_scan
        return
    if name == "advisor_max_cpu":
        ksm.ksm_advisor_max_cpu = _kstrto_einval(s, name, value) & U32_MAX
        return
    if name == "advisor_min_pages_to_scan":
        ksm.ksm_advisor_min_pages_to_scan = _kstrto_einval(s, name, value)
        return
    if name == "advisor_max_pages_to_scan":
        ksm.ksm_advisor_max_pages_to_scan = _kstrto_einval(s, name, value)
        return
    if name == "advisor_target_scan_time":
        v = _kstrto_einval(s, name, value)
        if v < 1:
            raise _err(errno.EINVAL, name, value)
        ksm.ksm_advisor_target_scan_time = v
        return
    raise OSError(errno.ENOENT, f"/sys/kernel/mm/ksm/{name}: no such file")


def sysfs_read_int(ksm: Ksm, name: str) -> int:
    """A sysfs file's value as an int (advisor_mode excluded)."""
    c = ksm.counters()
    if name in c:
        return c[name]
    return {
        "run": ksm.ksm_run,
        "pages_to_scan": ksm.ksm_thread_pages_to_scan,
        "sleep_millisecs": ksm.ksm_thread_sleep_millisecs,
        "max_page_sharing": ksm.ksm_max_page_sharing,
        "merge_across_nodes": ksm.ksm_merge_across_nodes,
        "use_zero_pages": int(ksm.ksm_use_zero_pages),
        "smart_scan": int(ksm.ksm_smart_scan),
        "stable_node_chains_prune_millisecs": ksm.ksm_stable_node_chains_prune_millisecs,
        "advisor_max_cpu": ksm.ksm_advisor_max_cpu,
        "advisor_min_pages_to_scan": ksm.ksm_advisor_min_pages_to_scan,
        "advisor_max_pages_to_scan": ksm.ksm_advisor_max_pages_to_scan,
        "advisor_target_scan_time": ksm.ksm_advisor_target_scan_time,
    }[name]


def sysfs_read(ksm: Ksm, name: str) -> str:
    """``cat /sys/kernel/mm/ksm/NAME`` (without the trailing newline)."""
    if name == "advisor_mode":
        return "[none] scan-time" if ksm.ksm_advisor == "none" else "none [scan-time]"
    if name not in ALL_FILES:
        raise OSError(errno.ENOENT, f"/sys/kernel/mm/ksm/{name}: no such file")
    return str(sysfs_read_int(ksm, name))
