"""Reports of a trace for the terminal (rich tables) and the numbers they are built from."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from samepage.scenario import COUNTER_NAMES, PROCESS_KEYS

from .text import markup_safe, printable

PAGE_SIZE = 4096
MIB = 1024 * 1024

#: Column header of each counter in the batch table (short enough for 120 columns).
COUNTER_HEADERS: dict[str, str] = {
    "pages_shared": "shared",
    "pages_sharing": "sharing",
    "pages_unshared": "unshared",
    "pages_volatile": "volatile",
    "full_scans": "scans",
    "pages_scanned": "scanned",
    "pages_skipped": "skipped",
    "stable_node_chains": "chains",
    "stable_node_dups": "dups",
    "ksm_zero_pages": "zero",
    "general_profit": "profit",
}
assert tuple(COUNTER_HEADERS) == COUNTER_NAMES

#: Column header of each /proc/PID/ksm_stat field in the process table.
PROCESS_HEADERS: dict[str, str] = {
    "ksm_rmap_items": "rmap_items",
    "ksm_zero_pages": "zero_pages",
    "ksm_merging_pages": "merging_pages",
    "ksm_process_profit": "process_profit",
    "ksm_merge_any": "merge_any",
    "ksm_mergeable": "mergeable",
}
assert tuple(PROCESS_HEADERS) == PROCESS_KEYS

LEGEND = ("shared, sharing, unshared, volatile, scanned, skipped: pages_*;  scans: full_scans;  "
          "chains, dups: stable_node_*;\nzero: ksm_zero_pages;  profit: general_profit (bytes);  "
          "bold rows: a full scan completed in that batch")


def mib(nbytes: float) -> str:
    return f"{nbytes / MIB:.2f} MiB"


def batch_rows(records: Sequence[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the batch table: batch, t_ms and the 11 counters."""
    headers = ["batch", "t_ms", *(COUNTER_HEADERS[n] for n in COUNTER_NAMES)]
    rows = [[str(r["batch"]), f"{r['t_ms']:.3f}", *(str(r[n]) for n in COUNTER_NAMES)]
            for r in records]
    return headers, rows


def print_batch_table(console: Console, records: Sequence[dict[str, Any]],
                      title: str | None = None) -> None:
    """One right-aligned row per batch record (batch, t_ms, the 11 counters); rows where a
    full scan completed are bold. Printed line by line (a rich Table of thousands of rows
    takes seconds to lay out), in the look of a rich table with a SIMPLE_HEAD box."""
    headers, rows = batch_rows(records)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    for gap in (3, 2, 1):  # the widest spacing that fits the console
        line_width = sum(widths) + gap * (len(widths) - 1)
        if line_width <= console.width:
            break
    sep = " " * gap

    def fmt(cells: Sequence[str]) -> str:
        return sep.join(c.rjust(w) for c, w in zip(cells, widths))

    if title:
        console.print(title.center(line_width).rstrip(),
                      style="italic", markup=False, highlight=False, soft_wrap=True)
    console.print(fmt(headers), style="bold", markup=False, highlight=False, soft_wrap=True)
    console.print("─" * line_width, markup=False, highlight=False, soft_wrap=True)
    prev_scans = 0
    for rec, cells in zip(records, rows):
        bold = rec["full_scans"] != prev_scans
        prev_scans = rec["full_scans"]
        console.print(fmt(cells), style="bold" if bold else None, markup=False,
                      highlight=False, soft_wrap=True)


def process_table(final: dict[str, Any] | None) -> Table:
    """The final record's per-process ksm_stat fields; the title names the kernel release
    (the live kernel's, or the one the model follows)."""
    kernel = (final or {}).get("kernel")
    title = "per process (/proc/PID/ksm_stat)" + (f", Linux {markup_safe(kernel)}"
                                                   if kernel else "")
    t = Table(title=title, box=box.SIMPLE_HEAD, padding=(0, 1),
              pad_edge=False, title_justify="left")
    t.add_column("process", style="cyan")
    for key in PROCESS_KEYS:
        t.add_column(PROCESS_HEADERS[key], justify="right")
    for name, stats in ((final or {}).get("processes") or {}).items():
        cells = []
        for key in PROCESS_KEYS:
            v = stats[key]
            cells.append(("yes" if v else "no") if isinstance(v, bool) else str(v))
        t.add_row(Text(printable(name)), *cells)
    return t


@dataclass
class Convergence:
    """The first batch after which pages_sharing stays within ``tolerance`` of its final
    value up to the end of the trace."""

    batch: int
    t_ms: float
    full_scans: int
    pages_sharing: int


def convergence(records: Sequence[dict[str, Any]], tolerance: float = 0.01) -> Convergence | None:
    """Where ``pages_sharing`` converged (see Convergence); None for an empty trace. With a
    final value of 0 the trace has converged once pages_sharing is 0 for good."""
    if not records:
        return None
    final = records[-1]["pages_sharing"]
    limit = abs(final) * tolerance
    at = records[-1]
    for r in reversed(records):
        if abs(r["pages_sharing"] - final) > limit:
            break
        at = r
    return Convergence(at["batch"], at["t_ms"], at["full_scans"], final)


@dataclass
class Summary:
    batches: int
    t_ms: float
    full_scans: int
    saved_bytes: int           # (pages_sharing + ksm_zero_pages) * 4096
    general_profit: int
    cpu_ms: float | None       # ksmd's CPU time in the model, if known
    #: (phase, batches, ksmd CPU ms, % of one CPU) from the records' ksmd_cpu_us
    phases: list[tuple[str, int, float, float]] = field(default_factory=list)


CPU_PHASES = ("first full scan", "merging scan", "steady scans")


def cpu_by_phase(records: Sequence[dict[str, Any]]) -> list[tuple[str, int, float, float]]:
    """ksmd's CPU per phase (docs/cpu-model.md): a batch is in the first full scan while
    full_scans was 0 before it, in the merging scan while it was 1, steady after that.
    % of one CPU: the phase's CPU over its batches' periods (t_ms to the next batch; the last
    batch's period is the median of the others)."""
    if not records or any("ksmd_cpu_us" not in r for r in records):
        return []
    periods = [b["t_ms"] - a["t_ms"] for a, b in zip(records, records[1:])]
    periods.append(sorted(periods)[len(periods) // 2] if periods else 0.0)
    acc: dict[int, list[float]] = {}
    prev = 0
    for r, p in zip(records, periods):
        a = acc.setdefault(min(prev, 2), [0, 0.0, 0.0])
        a[0] += 1
        a[1] += r["ksmd_cpu_us"] / 1000
        a[2] += p
        prev = r["full_scans"]
    return [(CPU_PHASES[k], int(n), cpu, 100 * cpu / t if t > 0 else 0.0)
            for k, (n, cpu, t) in sorted(acc.items())]


def summarize(records: Sequence[dict[str, Any]], cpu_ms: float | None = None) -> Summary:
    last = records[-1] if records else {n: 0 for n in COUNTER_NAMES} | {"batch": 0, "t_ms": 0.0}
    return Summary(
        batches=len(records),
        t_ms=float(last["t_ms"]),
        full_scans=int(last["full_scans"]),
        saved_bytes=(last["pages_sharing"] + last["ksm_zero_pages"]) * PAGE_SIZE,
        general_profit=int(last["general_profit"]),
        cpu_ms=cpu_ms,
        phases=cpu_by_phase(records),
    )


def summary_lines(s: Summary, time_label: str = "simulated time") -> list[str]:
    """The summary as rich-markup lines (``time_label``: "simulated time" on the model,
    "measured time" on the kernel)."""
    lines = [
        f"[bold]pages saved[/]     {mib(s.saved_bytes)}  "
        f"[dim](pages_sharing + ksm_zero_pages) x 4 KiB[/]",
        f"[bold]general_profit[/]  {s.general_profit} bytes ({mib(s.general_profit)})",
        f"[bold]full scans[/]      {s.full_scans}",
        f"[bold]{time_label:<15}[/] {s.t_ms / 1000:.3f} s over {s.batches} batches",
    ]
    if s.cpu_ms is not None:
        share = f" ({100 * s.cpu_ms / s.t_ms:.1f}% of one CPU)" if s.t_ms > 0 else ""
        lines.append(f"[bold]ksmd CPU time[/]   {s.cpu_ms:.1f} ms{share}")
    for name, n, cpu, pct in s.phases:
        lines.append(f"  {name:<15} {cpu:8.1f} ms over {n:>4} batches, {pct:.1f}% of one CPU")
    return lines


@dataclass
class Dedup:
    """Pages mapped by the live processes and the physical pages behind them."""

    mapped: int      # present PTEs (the shared zero page included)
    physical: int    # distinct page frames they map, the shared zero page not counted

    @property
    def ratio(self) -> float:
        return self.mapped / self.physical if self.physical else float("inf")


def dedup(machine) -> Dedup:
    """Count the present pages of every live process of a samepage Machine and the distinct
    page frames behind them."""
    from samepage.mm.folio import ZERO_PFN

    mapped = 0
    frames: set[int] = set()
    for p in machine.processes.values():
        if not p.alive:
            continue
        for _addr, pfn, _bits in p.mm.iter_present():
            mapped += 1
            if pfn != ZERO_PFN:
                frames.add(pfn)
    return Dedup(mapped, len(frames))
