"""A Prometheus exporter of the live kernel's KSM (``samepage kernel exporter``): only reads,
needs no root, never writes to /sys/kernel/mm/ksm.

Names shared with node_exporter's ksmd collector (prometheus/node_exporter,
collector/ksmd_linux.go; enabled there with ``--collector.ksmd``) are exported exactly as it
does, so that existing dashboards work: ``node_ksmd_<file>`` gauges for merge_across_nodes,
pages_shared, pages_sharing, pages_to_scan, pages_unshared, pages_volatile and run, the
counter ``node_ksmd_full_scans_total`` and ``node_ksmd_sleep_seconds`` (sleep_millisecs /
1000), each with HELP ``ksmd '<file>' file.`` and no labels.

What node_exporter lacks is under ``samepage_``: the other counters of Linux 6.18
(general_profit, ksm_zero_pages, pages_scanned, pages_skipped, stable_node_chains/dups), the
other tunables and the scan-time advisor's settings, ksmd's CPU time (schedstat) and share
of one CPU, and /proc/PID/ksm_stat per process with labels ``pid`` and ``comm``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .sysfs import parse_ksm_stat, parse_value

#: node_exporter's ksmd collector files, in its order.
NODE_KSMD_FILES = ("full_scans", "merge_across_nodes", "pages_shared", "pages_sharing",
                   "pages_to_scan", "pages_unshared", "pages_volatile", "run",
                   "sleep_millisecs")

#: samepage_ksm_* (name, sysfs file, kind, scale, help) for what node_exporter lacks.
EXTRA_KSM = (
    ("samepage_ksm_general_profit_bytes", "general_profit", "gauge", 1,
     "KSM's net saving: pages saved minus its rmap_item metadata (general_profit), bytes."),
    ("samepage_ksm_zero_pages", "ksm_zero_pages", "gauge", 1,
     "Pages KSM mapped to the shared zero page (ksm_zero_pages; use_zero_pages=1)."),
    ("samepage_ksm_pages_scanned_total", "pages_scanned", "counter", 1,
     "Pages ksmd has scanned since boot (pages_scanned)."),
    ("samepage_ksm_pages_skipped_total", "pages_skipped", "counter", 1,
     "Pages smart scan skipped since boot (pages_skipped)."),
    ("samepage_ksm_stable_node_chains", "stable_node_chains", "gauge", 1,
     "Stable node chains: contents with more than max_page_sharing mappings."),
    ("samepage_ksm_stable_node_dups", "stable_node_dups", "gauge", 1,
     "KSM pages in stable node chains (stable_node_dups)."),
    ("samepage_ksm_max_page_sharing", "max_page_sharing", "gauge", 1,
     "Most mappings of one KSM page (max_page_sharing)."),
    ("samepage_ksm_use_zero_pages", "use_zero_pages", "gauge", 1,
     "1: zero pages are merged with the kernel's zero page (use_zero_pages)."),
    ("samepage_ksm_smart_scan", "smart_scan", "gauge", 1,
     "1: smart scan skips pages that keep failing to merge (smart_scan)."),
    ("samepage_ksm_stable_node_chains_prune_seconds", "stable_node_chains_prune_millisecs",
     "gauge", 1000, "How often ksmd prunes stale stable node dups, seconds."),
    ("samepage_ksm_advisor_max_cpu_ratio", "advisor_max_cpu", "gauge", 100,
     "Scan-time advisor: most of one CPU ksmd may use (advisor_max_cpu / 100)."),
    ("samepage_ksm_advisor_min_pages_to_scan", "advisor_min_pages_to_scan", "gauge", 1,
     "Scan-time advisor: lower bound of pages_to_scan."),
    ("samepage_ksm_advisor_max_pages_to_scan", "advisor_max_pages_to_scan", "gauge", 1,
     "Scan-time advisor: upper bound of pages_to_scan."),
    ("samepage_ksm_advisor_target_scan_time_seconds", "advisor_target_scan_time", "gauge", 1,
     "Scan-time advisor: target time of one full scan, seconds."),
)

ADVISOR_MODES = ("none", "scan-time")

#: /proc/PID/ksm_stat fields: (metric, field, help).
PROCESS_FIELDS = (
    ("samepage_process_ksm_rmap_items", "ksm_rmap_items",
     "rmap_items of the process (pages KSM tracks), /proc/PID/ksm_stat."),
    ("samepage_process_ksm_zero_pages", "ksm_zero_pages",
     "Pages of the process KSM mapped to the zero page, /proc/PID/ksm_stat."),
    ("samepage_process_ksm_merging_pages", "ksm_merging_pages",
     "Pages of the process that map a KSM page, /proc/PID/ksm_stat."),
    ("samepage_process_ksm_profit_bytes", "ksm_process_profit",
     "KSM's net saving in the process (ksm_process_profit), bytes."),
    ("samepage_process_ksm_merge_any", "ksm_merge_any",
     "1: the process set prctl(PR_SET_MEMORY_MERGE), /proc/PID/ksm_stat."),
    ("samepage_process_ksm_mergeable", "ksm_mergeable",
     "1: the process has a VM_MERGEABLE region, /proc/PID/ksm_stat."),
)

#: A CPU share needs at least this much time between two looks at ksmd's runtime.
MIN_CPU_INTERVAL_S = 0.2


@dataclass
class Reading:
    """Everything read at one moment."""

    t: float
    ksm: dict[str, int | str] = field(default_factory=dict)
    ksmd_pid: int | None = None
    ksmd_runtime_ns: int | None = None
    processes: list[tuple[int, str, dict]] = field(default_factory=list)
    unreadable_processes: int = 0


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


class KsmReader:
    """Reads /sys/kernel/mm/ksm, ksmd's schedstat and /proc/PID/ksm_stat under the given
    roots (``sysfs``, ``procfs``: as node_exporter's --path.sysfs / --path.procfs);
    ``pids``: only these processes (default: every process with a ksm_stat that uses KSM)."""

    def __init__(self, sysfs: str = "/sys", procfs: str = "/proc",
                 pids: Iterable[int] | None = None) -> None:
        self.ksm_dir = os.path.join(sysfs, "kernel/mm/ksm")
        self.procfs = procfs
        self.pids = sorted(set(pids)) if pids else None
        self._ksmd_pid: int | None = None

    def find_ksmd(self) -> int | None:
        """ksmd: comm "ksmd" and parent kthreadd (pid 2); cached while it lives."""
        if self._ksmd_pid is not None and os.path.exists(
                os.path.join(self.procfs, str(self._ksmd_pid), "schedstat")):
            return self._ksmd_pid
        self._ksmd_pid = None
        try:
            names = os.listdir(self.procfs)
        except OSError:
            return None
        for name in names:
            if not name.isdigit():
                continue
            try:
                if _read(os.path.join(self.procfs, name, "comm")).strip() != "ksmd":
                    continue
                st = _read(os.path.join(self.procfs, name, "stat"))
                ppid = int(st[st.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == 2:
                self._ksmd_pid = int(name)
                return self._ksmd_pid
        return None

    def read(self) -> Reading:
        r = Reading(t=time.monotonic())
        try:
            names = sorted(os.listdir(self.ksm_dir))
        except OSError:
            names = []
        for name in names:
            try:
                r.ksm[name] = parse_value(name, _read(os.path.join(self.ksm_dir, name)).strip())
            except (OSError, ValueError):
                continue
        r.ksmd_pid = self.find_ksmd()
        if r.ksmd_pid is not None:
            try:
                r.ksmd_runtime_ns = int(_read(os.path.join(
                    self.procfs, str(r.ksmd_pid), "schedstat")).split()[0])
            except (OSError, ValueError, IndexError):
                pass
        self._read_processes(r)
        return r

    def _read_processes(self, r: Reading) -> None:
        if self.pids is not None:
            pids = self.pids
        else:
            try:
                pids = sorted(int(n) for n in os.listdir(self.procfs) if n.isdigit())
            except OSError:
                return
        for pid in pids:
            base = os.path.join(self.procfs, str(pid))
            try:
                stat = parse_ksm_stat(_read(os.path.join(base, "ksm_stat")))
            except FileNotFoundError:
                continue                 # gone, or a kernel without ksm_stat
            except OSError:
                r.unreadable_processes += 1
                continue
            if self.pids is None and not _uses_ksm(stat):
                continue
            try:
                comm = _read(os.path.join(base, "comm")).strip()
            except OSError:
                comm = ""
            r.processes.append((pid, comm, stat))


def _uses_ksm(s: dict) -> bool:
    return bool(s.get("ksm_mergeable") or s.get("ksm_merge_any") or s.get("ksm_rmap_items")
                or s.get("ksm_merging_pages") or s.get("ksm_zero_pages"))


def _num(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int):
        return float(v)
    return None


class KsmCollector(Collector):
    """A prometheus_client collector: every scrape reads the files afresh. ksmd's CPU share
    is over the time since the previous look (at least MIN_CPU_INTERVAL_S; the first look is
    taken when the collector is made)."""

    def __init__(self, reader: KsmReader, node_names: bool = True) -> None:
        self.reader = reader
        self.node_names = node_names
        self._prev: tuple[float, int] | None = None
        self._ratio: float | None = None
        first = reader.read()
        if first.ksmd_runtime_ns is not None:
            self._prev = (first.t, first.ksmd_runtime_ns)

    def _cpu_ratio(self, r: Reading) -> float | None:
        if r.ksmd_runtime_ns is None:
            return None
        if self._prev is None or r.ksmd_runtime_ns < self._prev[1]:
            self._prev = (r.t, r.ksmd_runtime_ns)      # first look, or a new ksmd
            return self._ratio
        dt = r.t - self._prev[0]
        if dt >= MIN_CPU_INTERVAL_S:
            self._ratio = (r.ksmd_runtime_ns - self._prev[1]) / 1e9 / dt
            self._prev = (r.t, r.ksmd_runtime_ns)
        return self._ratio

    def collect(self) -> Iterator[Metric]:
        r = self.reader.read()
        ksm = r.ksm
        yield GaugeMetricFamily("samepage_ksm_up", "1: /sys/kernel/mm/ksm could be read.",
                                value=1.0 if ksm else 0.0)
        if self.node_names:
            for n in NODE_KSMD_FILES:
                v = _num(ksm.get(n))
                if v is None:
                    continue
                help_ = f"ksmd '{n}' file."
                if n == "full_scans":
                    yield CounterMetricFamily("node_ksmd_full_scans", help_, value=v)
                elif n == "sleep_millisecs":
                    yield GaugeMetricFamily("node_ksmd_sleep_seconds", help_, value=v / 1000)
                else:
                    yield GaugeMetricFamily(f"node_ksmd_{n}", help_, value=v)
        for name, f, kind, scale, help_ in EXTRA_KSM:
            v = _num(ksm.get(f))
            if v is None:
                continue
            if kind == "counter":
                yield CounterMetricFamily(name.removesuffix("_total"), help_, value=v)
            else:
                yield GaugeMetricFamily(name, help_, value=v / scale)
        mode = ksm.get("advisor_mode")
        if isinstance(mode, str):
            g = GaugeMetricFamily("samepage_ksm_advisor_mode",
                                  "1 for the scan-time advisor's current mode (advisor_mode).",
                                  labels=["mode"])
            for m in ADVISOR_MODES if mode in ADVISOR_MODES else (*ADVISOR_MODES, mode):
                g.add_metric([m], 1.0 if m == mode else 0.0)
            yield g
        if r.ksmd_runtime_ns is not None:
            yield CounterMetricFamily("samepage_ksmd_cpu_seconds",
                                      "CPU time ksmd has used since boot "
                                      "(/proc/PID/schedstat), seconds.",
                                      value=r.ksmd_runtime_ns / 1e9)
            ratio = self._cpu_ratio(r)
            if ratio is not None:
                yield GaugeMetricFamily("samepage_ksmd_cpu_ratio",
                                        "ksmd's share of one CPU since the previous look "
                                        "(1 = one whole CPU; x100 for %).", value=ratio)
        fams = {f: GaugeMetricFamily(name, help_, labels=["pid", "comm"])
                for name, f, help_ in PROCESS_FIELDS}
        for pid, comm, stat in r.processes:
            for f, fam in fams.items():
                v = _num(stat.get(f))
                if v is not None:
                    fam.add_metric([str(pid), comm], v)
        yield from fams.values()
        yield GaugeMetricFamily("samepage_exporter_unreadable_processes",
                                "Processes whose /proc/PID/ksm_stat could not be read "
                                "(other users' without root).",
                                value=float(r.unreadable_processes))


def make_registry(reader: KsmReader, node_names: bool = True) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(KsmCollector(reader, node_names))
    return reg


TEXTFILE_NAME = "samepage_ksm.prom"


def write_textfile(directory: str, registry: CollectorRegistry) -> str:
    """DIR/samepage_ksm.prom for node_exporter's textfile collector, atomically (a temporary
    file in DIR renamed over it)."""
    from prometheus_client import write_to_textfile

    path = os.path.join(directory, TEXTFILE_NAME)
    write_to_textfile(path, registry)
    return path


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Start the HTTP endpoint (/metrics) in a thread; returns (server, thread); the port
    actually bound is ``server.server_port`` (``port`` 0: a free one)."""
    from prometheus_client import start_http_server

    return start_http_server(port, addr=addr, registry=registry)
