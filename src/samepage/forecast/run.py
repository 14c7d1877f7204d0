"""ksmd on a forecast machine in simulated time: one record per full scan, convergence.

A scan record holds ``full_scans``, ``t_ms``, the 11 counters and ``ksmd_cpu_ms``: the
counters at the end of the batch in which full_scans reached that number, as the kernel shows
them while ksmd sleeps after that batch; ``t_ms`` is that batch's end and ``ksmd_cpu_ms``
ksmd's CPU time so far, both counted from ``run = 1``. ``samepage kernel measure`` records the
same on the live kernel (samepage.kernel.measure), so the two compare key by key.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from samepage.scenario.dynamics import sim_ms
from samepage.scenario.trace import COUNTER_NAMES

from .build import Built, ForecastError

PAGE_SIZE = 4096
#: --until converged stops at the latest here.
MAX_SCANS_CONVERGED = 300
#: Convergence: 99% of the final pages_sharing, and stays there.
CONVERGED_FRACTION = 0.99


@dataclass(frozen=True)
class Until:
    """When a run stops: ``converged``, after ``scans`` full scans, or ``ms`` simulated ms."""

    kind: str                       # "converged" | "scans" | "ms"
    value: float = 0.0

    def describe(self) -> str:
        if self.kind == "converged":
            return "converged"
        if self.kind == "scans":
            return f"{int(self.value)} full scans"
        return f"{self.value / 1000:g} s"


_UNITS = {"ms": 1.0, "s": 1000.0, "sec": 1000.0, "m": 60_000.0, "min": 60_000.0,
          "minutes": 60_000.0, "h": 3_600_000.0}


def parse_until(text: str) -> Until:
    """``converged``, ``N`` or ``N scans`` (full scans), ``T ms|s|m|min|h`` (simulated time)."""
    s = text.strip().lower()
    if s == "converged":
        return Until("converged")
    mt = re.fullmatch(r"(\d+)\s*(scans?|full[ _-]?scans?)?", s)
    if mt:
        n = int(mt.group(1))
        if not 1 <= n <= 1_000_000:
            raise ForecastError(f"--until {text}: between 1 and 1000000 full scans")
        return Until("scans", n)
    mt = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|sec|m|min|minutes|h)", s)
    if mt:
        ms = float(mt.group(1)) * _UNITS[mt.group(2)]
        if not 0 < ms <= 1e10:
            raise ForecastError(f"--until {text}: a time above 0 and at most 115 days")
        return Until("ms", ms)
    raise ForecastError(f"--until {text!r}: expected converged, N (full scans) or a time "
                        "such as 90s, 10m, 1h")


def convergence(scans: list[dict[str, Any]], final_sharing: int | None = None
                ) -> tuple[int, float]:
    """(full scans, t_ms) from which pages_sharing stays at or above 99% of its final value
    (0, 0.0 when nothing merges)."""
    if not scans:
        return 0, 0.0
    final = scans[-1]["pages_sharing"] if final_sharing is None else final_sharing
    if final <= 0:
        return 0, 0.0
    k = len(scans)
    while k > 0 and scans[k - 1]["pages_sharing"] >= CONVERGED_FRACTION * final:
        k -= 1
    if k == len(scans):
        k -= 1
    return scans[k]["full_scans"], scans[k]["t_ms"]


def settled(scans: list[dict[str, Any]], static: bool) -> bool:
    """Has the run converged? Static contents: pages_shared and pages_sharing unchanged over
    the last two full scans. Volatile: pages_sharing within 1% over the last three."""
    if static:
        if len(scans) < 3:
            return False
        a, b = scans[-2], scans[-1]
        return all(a[n] == b[n] for n in ("pages_shared", "pages_sharing", "pages_unshared",
                                          "stable_node_chains", "stable_node_dups",
                                          "ksm_zero_pages"))
    if len(scans) < 4:
        return False
    last = [s["pages_sharing"] for s in scans[-3:]]
    hi = max(last)
    return hi == 0 or (hi - min(last)) <= 0.01 * hi


#: counters a curve keeps per batch
CURVE_KEYS = ("pages_sharing", "pages_shared", "pages_unshared", "pages_volatile",
              "ksm_zero_pages")


class Curve:
    """The counters after every batch, for plots: at most ``max_points`` points, thinned by
    keeping every other one whenever it fills (so the stride doubles and stays uniform)."""

    def __init__(self, max_points: int = 2000) -> None:
        self.max_points = max(2, max_points)
        self.stride = 1
        self.seen = 0
        self.last: tuple | None = None
        # column order = the order of a point's fields
        self.cols: dict[str, list] = {"t_ms": [], "ksmd_cpu_ms": [],
                                      **{k: [] for k in CURVE_KEYS}}

    def add(self, t_ms: float, cpu_ms: float, counters: dict[str, Any]) -> None:
        self.seen += 1
        point = (round(t_ms, 3), round(cpu_ms, 3), *(int(counters[k]) for k in CURVE_KEYS))
        if (self.seen - 1) % self.stride:
            self.last = point            # drawn at the end, if no later point is kept
            return
        self.last = None
        self._append(point)
        cols = self.cols
        if len(cols["t_ms"]) >= self.max_points:
            n = len(cols["t_ms"])
            if (n - 1) % 2:              # the newest point goes: keep it as the last
                self.last = point
            for v in cols.values():
                del v[1::2]
            self.stride *= 2

    def _append(self, point: tuple) -> None:
        for k, v in zip(self.cols, point):
            self.cols[k].append(v)

    def as_json(self) -> dict[str, Any]:
        """Columns of the kept points, and the last batch's (which ends the curve)."""
        cols = {k: list(v) for k, v in self.cols.items()}
        if self.last is not None:
            for k, v in zip(cols, self.last):
                cols[k].append(v)
        return {"stride_batches": self.stride, **cols}


@dataclass
class Result:
    scans: list[dict[str, Any]]
    final: dict[str, Any]
    converged_full_scans: int
    converged_ms: float
    converged: bool                 # the stop rule was met (with --until converged)
    per_process: list[dict[str, Any]]
    t_ms: float
    cpu_ms: float
    settings: dict[str, Any] = field(default_factory=dict)
    source: str = "model"
    extra: dict[str, Any] = field(default_factory=dict)
    curve: Curve | None = None

    @property
    def saved_bytes(self) -> int:
        return (self.final["pages_sharing"] + self.final["ksm_zero_pages"]) * PAGE_SIZE

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.cpu_ms / self.t_ms if self.t_ms > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "settings": self.settings, "scans": self.scans,
                "final": self.final, "converged_full_scans": self.converged_full_scans,
                "converged_ms": round(self.converged_ms, 3), "converged": self.converged,
                "saved_bytes": self.saved_bytes, "t_ms": round(self.t_ms, 3),
                "ksmd_cpu_ms": round(self.cpu_ms, 3),
                "ksmd_cpu_percent": round(self.cpu_percent, 3),
                "per_process": self.per_process, **self.extra,
                **({"curve": self.curve.as_json()} if self.curve is not None else {})}


def scan_record(full_scans: int, t_ms: float, counters: dict[str, Any], cpu_ms: float
                ) -> dict[str, Any]:
    rec: dict[str, Any] = {"full_scans": int(full_scans), "t_ms": round(t_ms, 3)}
    for n in COUNTER_NAMES:
        rec[n] = int(counters[n])
    rec["ksmd_cpu_ms"] = round(cpu_ms, 3)
    return rec


class StderrProgress:
    """A progress line on stderr, rewritten in place (a terminal only: ``on_tty``); the
    forecast's full scans and --recommend's candidates, on either interpreter."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.shown = False

    @classmethod
    def on_tty(cls) -> "StderrProgress | None":
        try:
            return cls() if sys.stderr.isatty() else None
        except (AttributeError, ValueError):
            return None

    def show(self, line: str) -> None:
        self.stream.write("\r\x1b[K" + line)
        self.stream.flush()
        self.shown = True

    def scan(self, rec: dict[str, Any]) -> None:
        """``simulate``'s progress callback: one line per full scan."""
        self.show(f"forecast: full scan {rec['full_scans']}, {rec['t_ms'] / 1000:.1f} s "
                  f"simulated, pages_sharing {rec['pages_sharing']:,}, ksmd "
                  f"{rec['ksmd_cpu_ms']:.0f} ms CPU")

    def candidate(self, c) -> None:
        """``recommend``'s ``on_try``: one line per candidate."""
        r = c.result
        verdict = "fits" if c.ok else c.why
        self.show(f"forecast --recommend: pages_to_scan {c.pages_to_scan}, sleep_millisecs "
                  f"{c.sleep_millisecs}: {verdict} ({r.converged_full_scans} full scans)")

    def done(self) -> None:
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def simulate(built: Built, until: Until, *, max_scans: int = MAX_SCANS_CONVERGED,
             progress: Callable[[dict], None] | None = None,
             time_limit_ms: float | None = None) -> Result:
    """Run ksmd on ``built`` until ``until`` (and at most ``time_limit_ms`` simulated ms);
    the volatile pages are rewritten as ksmd sleeps."""
    m, dyn = built.machine, built.dynamics
    static = not dyn.sets
    scans: list[dict[str, Any]] = []
    cpu_ms = 0.0
    t_end = 0.0
    seqnr = m.sysfs_read("full_scans")
    base_scans = seqnr
    converged = False
    curve = Curve()
    limit = int(until.value) if until.kind == "scans" else max_scans
    while True:
        if until.kind == "ms" and sim_ms(m) >= until.value:
            break
        if time_limit_ms is not None and sim_ms(m) >= time_limit_ms:
            break
        dyn.advance(sim_ms(m))
        r = m.run_batch()
        if r is None:
            raise ForecastError("ksmd stopped: no mm is registered with KSM any more")
        cpu_ms += r.cpu_ms
        t_end = r.t_ms + r.cpu_ms
        counters = m.counters()
        curve.add(t_end, cpu_ms, counters)
        fs = counters["full_scans"]
        if fs == seqnr:
            continue
        seqnr = fs
        rec = scan_record(fs - base_scans, t_end, counters, cpu_ms)
        scans.append(rec)
        if progress is not None:
            progress(rec)
        if until.kind == "converged" and settled(scans, static):
            converged = True
            break
        if until.kind != "ms" and len(scans) >= limit:
            break
        if until.kind == "ms" and len(scans) >= 10_000_000:
            break
    counters = m.counters()
    final = {n: int(counters[n]) for n in COUNTER_NAMES}
    final["full_scans"] = int(final["full_scans"]) - base_scans
    cf, cms = convergence(scans, final["pages_sharing"])
    per = []
    for bp in built.processes:
        st = bp.process.ksm_stat() if bp.process.alive else {}
        per.append({"pid": bp.pid, "comm": bp.comm, "name": bp.name,
                    "present_pages": bp.present_pages, "mergeable_pages": bp.mergeable_pages,
                    "volatile_pages": bp.volatile_pages,
                    **{k: (bool(v) if isinstance(v, bool) else int(v)) for k, v in st.items()
                       if k in ("ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages",
                                "ksm_process_profit", "ksm_merge_any", "ksm_mergeable")}})
    settings = {k: m.sysfs_read(k) for k in ("pages_to_scan", "sleep_millisecs",
                                              "max_page_sharing", "merge_across_nodes",
                                              "use_zero_pages", "smart_scan")}
    adv = str(m.sysfs_read("advisor_mode"))
    settings["advisor_mode"] = adv[adv.find("[") + 1:adv.find("]")] if "[" in adv else adv
    return Result(scans, final, cf, cms, converged, per, t_end, cpu_ms, settings,
                  extra={"rewrites": dyn.page_writes, "thp_pages": built.thp_pages,
                         "mergeable_pages": built.mergeable_pages}, curve=curve)
