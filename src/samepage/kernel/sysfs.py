"""Reading and writing /sys/kernel/mm/ksm, /proc/PID/ksm_stat and the THP switches.

Everything that writes here must hold :func:`samepage.kernel.lock.ksm_lock`.
"""

from __future__ import annotations

import errno as _errno
import os
import time

KSM_DIR = "/sys/kernel/mm/ksm"
THP_DIR = "/sys/kernel/mm/transparent_hugepage"

#: The counters of one trace record, in the trace's order.
TRACE_COUNTERS = (
    "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
    "pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups",
    "ksm_zero_pages", "general_profit",
)

#: Writable files of /sys/kernel/mm/ksm (Linux 6.18), in the kernel's attribute order.
TUNABLES = (
    "run", "pages_to_scan", "sleep_millisecs", "max_page_sharing", "merge_across_nodes",
    "use_zero_pages", "smart_scan", "stable_node_chains_prune_millisecs", "advisor_mode",
    "advisor_max_cpu", "advisor_min_pages_to_scan", "advisor_max_pages_to_scan",
    "advisor_target_scan_time",
)

#: Boot-time values (Linux 6.18).
DEFAULTS: dict[str, int | str] = {
    "run": 0, "pages_to_scan": 100, "sleep_millisecs": 20, "max_page_sharing": 256,
    "merge_across_nodes": 1, "use_zero_pages": 0, "smart_scan": 1,
    "stable_node_chains_prune_millisecs": 2000, "advisor_mode": "none", "advisor_max_cpu": 70,
    "advisor_min_pages_to_scan": 500, "advisor_max_pages_to_scan": 30000,
    "advisor_target_scan_time": 200,
}

#: Tunables that can only change while no page is shared (EBUSY otherwise).
NEED_UNMERGED = ("max_page_sharing", "merge_across_nodes")


def _path(name: str) -> str:
    if "/" in name or name.startswith("."):
        raise ValueError(f"bad KSM file name {name!r}")
    return os.path.join(KSM_DIR, name)


def read_raw(name: str) -> str:
    """The text of /sys/kernel/mm/ksm/NAME, stripped."""
    with open(_path(name)) as f:
        return f.read().strip()


def parse_value(name: str, text: str) -> int | str:
    """A tunable's or counter's value: ints, or the selected word for advisor_mode
    (``[none] scan-time`` -> ``none``)."""
    if name == "advisor_mode":
        for w in text.split():
            if w.startswith("[") and w.endswith("]"):
                return w[1:-1]
        return text
    return int(text)


def read_value(name: str) -> int | str:
    return parse_value(name, read_raw(name))


def exists(name: str) -> bool:
    return os.path.exists(_path(name))


def read_counters() -> dict[str, int]:
    """The 11 trace counters (raw kernel values: pages_scanned/pages_skipped are cumulative
    since boot), in the trace's order."""
    out: dict[str, int] = {}
    for name in TRACE_COUNTERS:
        with open(os.path.join(KSM_DIR, name), "rb") as f:
            out[name] = int(f.read())
    return out


def write_tunable(name: str, value: int | str | bool, *, retries: int = 20) -> None:
    """Write one file of /sys/kernel/mm/ksm. Booleans are written as 0/1.

    Raises OSError carrying the kernel's errno (EINVAL, EBUSY, ...) and the file name. A
    ``run = 2`` interrupted by a signal (EINTR/ERESTARTSYS) is retried.
    """
    if isinstance(value, bool):
        value = int(value)
    data = f"{value}\n".encode()
    path = _path(name)
    for attempt in range(retries + 1):
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as e:
            raise OSError(e.errno, f"cannot open {path}: {os.strerror(e.errno)}", path) from None
        try:
            os.write(fd, data)
            return
        except InterruptedError:
            if attempt == retries:
                raise
        except OSError as e:
            if e.errno == _errno.EINTR and attempt < retries:
                continue
            raise OSError(e.errno, f"writing {value!r} to {path}: {os.strerror(e.errno)}",
                          path) from None
        finally:
            os.close(fd)


def ksm_writable() -> bool:
    """True if this process may drive KSM: root (or CAP_SYS_ADMIN-like write access) and
    /sys/kernel/mm/ksm/run writable."""
    path = os.path.join(KSM_DIR, "run")
    if not os.path.exists(path):
        return False
    if not os.access(path, os.W_OK):
        return False
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError:
        return False
    os.close(fd)
    return True


# --------------------------------------------------------------------------- save / restore


def save_settings() -> dict[str, int | str]:
    """Every writable KSM file that exists on this kernel, with ``run``."""
    return {name: read_value(name) for name in TUNABLES if exists(name)}


def tunable_write_order(names, advisor_mode: str | int | None) -> list[str]:
    """A safe order to write the given tunables (``run`` excluded by the caller).

    Kernel attribute order, except: with the advisor off (``none``), advisor_mode comes first
    (turning it off resets pages_to_scan to 100, and pages_to_scan is EINVAL while it is on);
    with ``scan-time``, advisor_mode comes last (turning it on sets pages_to_scan to
    advisor_min_pages_to_scan, so that one must already be in place) and pages_to_scan is
    dropped (the advisor owns it).
    """
    order = [n for n in TUNABLES if n in names and n != "run"]
    order += [n for n in names if n not in order and n != "run"]
    if "advisor_mode" in order:
        order.remove("advisor_mode")
        if advisor_mode == "scan-time":
            order = [n for n in order if n != "pages_to_scan"] + ["advisor_mode"]
        else:
            order.insert(0, "advisor_mode")
    return order


def restore_settings(saved: dict[str, int | str]) -> list[str]:
    """Put back what :func:`save_settings` returned.

    Order: ``run = 2`` first (unmerges everything, so max_page_sharing and merge_across_nodes
    may change), then advisor_mode (changing it resets pages_to_scan, and pages_to_scan is
    EINVAL while the advisor is on), then the other tunables, then ``run`` to its saved value.
    Only files whose value differs are written. Every write is attempted; returns the list of
    error messages (empty on full success).
    """
    errors: list[str] = []

    def put(name: str, value: int | str) -> None:
        try:
            if read_value(name) != value:
                write_tunable(name, value)
        except OSError as e:
            errors.append(f"{name}: {e}")

    if "run" in saved:
        put("run", 2)
    order = tunable_write_order([n for n in saved if n != "run"], saved.get("advisor_mode"))
    for name in order:
        put(name, saved[name])
    if "run" in saved:
        put("run", saved["run"])
    return errors


# --------------------------------------------------------------------------- THP


def thp_enabled() -> str | None:
    """The selected mode of transparent_hugepage/enabled (always|madvise|never), or None."""
    try:
        with open(os.path.join(THP_DIR, "enabled")) as f:
            return parse_value("advisor_mode", f.read().strip())
    except OSError:
        return None


def mthp_sizes() -> list[int]:
    """The large-folio sizes (KiB) with a hugepages-<size>kB/enabled switch."""
    out = []
    try:
        names = os.listdir(THP_DIR)
    except OSError:
        return out
    for n in names:
        if n.startswith("hugepages-") and n.endswith("kB") and \
                os.path.exists(os.path.join(THP_DIR, n, "enabled")):
            out.append(int(n[len("hugepages-"):-2]))
    return sorted(out)


def _mthp_path(kb: int) -> str:
    return os.path.join(THP_DIR, f"hugepages-{kb}kB", "enabled")


def read_mthp(kb: int) -> str:
    with open(_mthp_path(kb)) as f:
        return parse_value("advisor_mode", f.read().strip())


def write_thp_file(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError as e:
        raise OSError(e.errno, f"writing {value!r} to {path}: {os.strerror(e.errno)}", path) from None


KHUGEPAGED_SLEEP = os.path.join(THP_DIR, "khugepaged", "scan_sleep_millisecs")
KHUGEPAGED_QUIET_MS = "86400000"   # a day: no khugepaged pass during a recording


def save_thp() -> dict[str, str]:
    """transparent_hugepage/enabled, every hugepages-*/enabled and khugepaged's scan
    interval, by path."""
    out = {}
    mode = thp_enabled()
    if mode is not None:
        out[os.path.join(THP_DIR, "enabled")] = mode
    for kb in mthp_sizes():
        out[_mthp_path(kb)] = read_mthp(kb)
    try:
        with open(KHUGEPAGED_SLEEP) as f:
            out[KHUGEPAGED_SLEEP] = f.read().strip()
    except OSError:
        pass
    return out


def quiet_khugepaged() -> None:
    """khugepaged may collapse pages KSM split back into a THP mid-run, taking page
    references at unpredictable times (docs/thp-findings.md).  Writing the interval wakes
    it for one pass, so this is done before any scenario page is mapped."""
    try:
        with open(KHUGEPAGED_SLEEP) as f:
            if f.read().strip() == KHUGEPAGED_QUIET_MS:
                return
        write_thp_file(KHUGEPAGED_SLEEP, KHUGEPAGED_QUIET_MS)
    except OSError:
        pass


def restore_thp(saved: dict[str, str]) -> list[str]:
    errors = []
    for path, value in saved.items():
        try:
            with open(path) as f:
                cur = parse_value("advisor_mode", f.read().strip())
            if cur != value:
                write_thp_file(path, value)
        except OSError as e:
            errors.append(f"{path}: {e}")
    return errors


def pmd_size_kb() -> int:
    try:
        with open(os.path.join(THP_DIR, "hpage_pmd_size")) as f:
            return int(f.read()) // 1024
    except OSError:
        return 2048


# --------------------------------------------------------------------------- /proc


KSM_STAT_INTS = ("ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages", "ksm_process_profit")
KSM_STAT_BOOLS = ("ksm_merge_any", "ksm_mergeable")


def parse_ksm_stat(text: str) -> dict[str, int | bool]:
    """Parse the text of /proc/PID/ksm_stat."""
    out: dict[str, int | bool] = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) != 2:
            continue
        key, val = parts
        if key in KSM_STAT_BOOLS:
            out[key] = val == "yes"
        else:
            try:
                out[key] = int(val)
            except ValueError:
                out[key] = val  # an unknown field: keep its text
    return out


def read_ksm_stat(pid: int) -> dict[str, int | bool]:
    """/proc/PID/ksm_stat as a dict: the four counters as ints, ksm_merge_any and
    ksm_mergeable as bools (in the kernel's line order)."""
    with open(f"/proc/{pid}/ksm_stat") as f:
        return parse_ksm_stat(f.read())


def wait_value(name: str, value: int | str, timeout: float = 5.0) -> bool:
    """Poll a KSM file until it reads ``value``; False on timeout."""
    deadline = time.monotonic() + timeout
    while read_value(name) != value:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
