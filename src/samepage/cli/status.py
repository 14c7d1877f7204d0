"""``samepage kernel status`` and ``samepage kernel top``: KSM on this machine, for an operator.

Both only read (samepage.kernel.status): no root, no lock. ``status`` takes two snapshots
``--interval`` seconds apart (for the rates) and prints every tunable and counter with its
meaning, what they mean in plain terms, and the processes using KSM sorted by profit. ``top``
shows the same, refreshed every interval, until Ctrl-C (or ``--iterations N``).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Annotated, Any

import typer
from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from samepage.kernel import status as st

from .common import error_exit, markup_safe, printable, stdout_console
from .kernel import kernel_app

IntervalOpt = Annotated[float, typer.Option(
    "--interval", "-i", min=0, metavar="SECONDS",
    help="Measure rates (pages scanned per second, full-scan period, ksmd CPU, THP splits) "
         "over this many seconds.")]


def human(n: float) -> str:
    """Bytes as B / KiB / MiB / GiB (sign kept)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{sign}{n / size:.2f} {unit}"
    return f"{sign}{int(n)} B"


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "0%"


def _run_state(a: st.Analysis) -> str:
    k = a.snap.ksm
    run = k.get("run")
    if run == 1:
        if k.get("advisor_mode") == "scan-time":
            how = (f"the scan-time advisor sets pages_to_scan (now {k.get('pages_to_scan')}) "
                   f"to finish a full scan in {k.get('advisor_target_scan_time')} s")
        else:
            how = (f"ksmd looks at {k.get('pages_to_scan')} pages, then sleeps "
                   f"{k.get('sleep_millisecs')} ms")
        return f"[bold green]running[/] (run = 1): {how}"
    if run == 0:
        return ("[bold yellow]stopped[/] (run = 0): ksmd does nothing; pages merged earlier "
                "stay merged")
    if run == 2:
        return "[bold yellow]stopped and unmerged[/] (run = 2): every KSM page was unmerged"
    return f"run = {run!r}"


def plain_lines(a: st.Analysis) -> list[tuple[str, str]]:
    """What the numbers mean: (label, rich-markup text) pairs."""
    s = a.snap
    g = s.get
    lines = [("State", _run_state(a))]
    pages = f"{g('pages_shared')} KSM page{'s' if g('pages_shared') != 1 else ''}"
    ratio = (f", {g('pages_sharing') / g('pages_shared'):.1f} extra mappings each"
             if g("pages_shared") else "")
    lines.append(("Memory saved", f"[bold green]{human(a.saved_bytes)}[/] = (pages_sharing "
                 f"{g('pages_sharing')} + ksm_zero_pages {g('ksm_zero_pages')}) x "
                 f"{st.PAGE_SIZE // 1024} KiB; the merged pages live in {pages}{ratio}"))
    colour = "green" if a.profit_bytes >= 0 else "red"
    lines.append(("Net profit", f"[bold {colour}]{human(a.profit_bytes)}[/] "
                 f"(general_profit), after {human(a.metadata_bytes)} of metadata: "
                 f"{a.rmap_items} rmap_items x {st.RMAP_ITEM_SIZE} B, one per page KSM tracks"))
    total = a.rmap_items or sum(a.tracked.values())
    t = a.tracked
    if total:
        lines.append(("Tracked",
            f"{total} pages: {_pct(t['shared'] + t['sharing'], total)} merged "
            f"(shared {t['shared']} + sharing {t['sharing']}), {_pct(t['unshared'], total)} "
            f"unique and stable (unshared {t['unshared']}), {_pct(t['volatile'], total)} "
            f"volatile (changing too fast to merge: {t['volatile']})"
            + (f", {g('ksm_zero_pages')} on the zero page" if g("ksm_zero_pages") else "")))
    else:
        lines.append(("Tracked", "no page: no mergeable memory has been scanned "
                                 "(or run = 2 dropped it)"))
    if a.interval_s is None:
        lines.append(("Scanning", "(no interval measured: use --interval SECONDS)"))
    else:
        cpu = f", ksmd used {a.ksmd_cpu_pct:.1f}% of one CPU" if a.ksmd_cpu_pct is not None else ""
        rate = (f"{a.scanned_per_s:,.0f} pages/s scanned, {a.skipped_per_s:,.0f}/s skipped "
                f"over the last {a.interval_s:.1f} s{cpu}")
        if a.full_scan_period_s is not None:
            est = "about " if a.full_scan_period_estimated else ""
            how = (f" (estimated: {a.rmap_items} tracked pages at this rate)"
                   if a.full_scan_period_estimated else
                   f" ({a.full_scans_done} full scan{'s' if a.full_scans_done != 1 else ''} "
                   "completed)")
            period = f"; one full scan every {est}{a.full_scan_period_s:.2f} s{how}"
        elif a.full_scans_done:
            period = f"; {a.full_scans_done} full scan completed"
        elif not a.scanned_per_s and not a.skipped_per_s:
            period = "; ksmd is not scanning"
        else:
            period = "; no full scan completed"
        lines.append(("Scanning", f"{rate}{period}"))
    if a.thp_fight:
        lines.append(("THP vs KSM", "[bold red]THP is working against KSM[/]: "
                      + "; ".join(a.thp_fight)))
    else:
        why = "; ".join(a.thp_notes) or "no THP settings readable"
        lines.append(("THP vs KSM", f"no sign of THP working against KSM ({why})"))
    for adv in a.advice:
        lines.append(("Note", adv))
    return lines


def settings_table(a: st.Analysis) -> Table:
    t = Table(title="tunables (/sys/kernel/mm/ksm)", box=box.SIMPLE_HEAD, title_justify="left",
              padding=(0, 1), pad_edge=False)
    t.add_column("tunable", style="cyan")
    t.add_column("value", justify="right")
    t.add_column("meaning")
    for name, meaning in st.TUNABLE_MEANINGS.items():
        if name in a.snap.ksm:
            t.add_row(name, str(a.snap.ksm[name]), meaning)
    for name in sorted(set(a.snap.ksm) - set(st.TUNABLE_MEANINGS) - set(st.COUNTER_MEANINGS)):
        t.add_row(name, str(a.snap.ksm[name]), "(not described: newer than this tool)")
    return t


def counters_table(a: st.Analysis) -> Table:
    t = Table(title="counters (/sys/kernel/mm/ksm)", box=box.SIMPLE_HEAD, title_justify="left",
              padding=(0, 1), pad_edge=False)
    t.add_column("counter", style="cyan")
    t.add_column("value", justify="right")
    t.add_column("per s", justify="right")
    t.add_column("meaning")
    before = {}
    if a.interval_s:
        per_s = {"pages_scanned": a.scanned_per_s, "pages_skipped": a.skipped_per_s}
        before = {k: f"{v:,.0f}" for k, v in per_s.items() if v is not None}
        if a.full_scans_done is not None:
            before["full_scans"] = f"{a.full_scans_done / a.interval_s:.2f}"
    for name, meaning in st.COUNTER_MEANINGS.items():
        if name not in a.snap.ksm:
            continue
        v = a.snap.ksm[name]
        shown = f"{v} ({human(v)})" if name == "general_profit" else str(v)
        t.add_row(name, shown, before.get(name, ""), meaning)
    return t


def process_table(a: st.Analysis, limit: int | None = None) -> Table:
    procs = a.snap.processes
    shown = procs if limit is None else procs[:limit]
    title = "processes using KSM (/proc/PID/ksm_stat), by profit"
    if limit is not None and len(procs) > limit:
        title += f" (top {limit} of {len(procs)})"
    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1),
              pad_edge=False)
    for name, just in (("pid", "right"), ("process", "left"), ("rmap_items", "right"),
                       ("merging_pages", "right"), ("zero_pages", "right"),
                       ("profit", "right"), ("merge_any", "right"), ("mergeable", "right"),
                       ("AnonHugePages", "right")):
        t.add_column(name, justify=just, style="cyan" if name == "process" else None)
    yn = lambda v: "yes" if v else "no"  # noqa: E731
    for p in shown:
        s = p.stat
        t.add_row(str(p.pid), Text(printable(p.comm)), str(s.get("ksm_rmap_items", "")),
                  str(s.get("ksm_merging_pages", "")), str(s.get("ksm_zero_pages", "")),
                  human(p.profit), yn(s.get("ksm_merge_any")), yn(s.get("ksm_mergeable")),
                  "?" if p.anon_huge_kb is None else human(p.anon_huge_kb * 1024))
    if not shown:
        t.add_row("", Text("(none)", style="dim"), *[""] * 7)
    return t


def header(a: st.Analysis) -> str:
    s = a.snap
    ksmd = f", ksmd pid {s.ksmd_pid}" if s.ksmd_pid is not None else ""
    return (f"[bold]KSM on {markup_safe(socket.gethostname())}[/]: Linux {markup_safe(s.release)}, "
            f"page size {st.PAGE_SIZE // 1024} KiB{ksmd}")


def unreadable_lines(a: st.Analysis) -> list[str]:
    return [f"[yellow]could not read[/] {markup_safe(u)}" for u in a.snap.unreadable]


def render(a: st.Analysis, *, full: bool = True, limit: int | None = None) -> RenderableType:
    parts: list[RenderableType] = [Text.from_markup(header(a))]
    grid = Table.grid(padding=(0, 1))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(ratio=1)
    for label, text in plain_lines(a):
        grid.add_row(label, Text.from_markup(text))
    parts.append(grid)
    parts.append(Text(""))
    if full:
        parts.append(settings_table(a))
        parts.append(Text(""))
    parts.append(counters_table(a))
    parts.append(Text(""))
    parts.append(process_table(a, limit))
    if a.snap.unreadable:
        parts.append(Text(""))
        parts += [Text.from_markup(line) for line in unreadable_lines(a)]
    return Group(*parts)


def as_json(a: st.Analysis) -> dict[str, Any]:
    s = a.snap
    return {
        "kernel": s.release,
        "page_size": st.PAGE_SIZE,
        "ksm": s.ksm,
        "saved_bytes": a.saved_bytes,
        "general_profit": a.profit_bytes,
        "rmap_items": a.rmap_items,
        "interval_s": a.interval_s,
        "pages_scanned_per_s": a.scanned_per_s,
        "pages_skipped_per_s": a.skipped_per_s,
        "full_scans_in_interval": a.full_scans_done,
        "full_scan_period_s": a.full_scan_period_s,
        "full_scan_period_estimated": a.full_scan_period_estimated,
        "ksmd_cpu_percent": a.ksmd_cpu_pct,
        "thp_enabled": s.thp_enabled,
        "thp_fighting_ksm": a.thp_fight,
        "vmstat_delta": a.vmstat_delta,
        "processes": [{"pid": p.pid, "comm": p.comm, **p.stat,
                       "anon_huge_kb": p.anon_huge_kb} for p in s.processes],
        "unreadable": s.unreadable,
    }


def _check_ksm_present() -> None:
    import os

    if not os.path.isdir(st.KSM_DIR):
        error_exit(f"{st.KSM_DIR} does not exist: this kernel has no KSM (CONFIG_KSM)")


@kernel_app.command("status")
def kernel_status(
    interval: IntervalOpt = 2.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print it all as one JSON object.")] = False,
) -> None:
    """What KSM is doing on this machine: every tunable and counter with its meaning, memory
    saved, net profit, scan rate, full-scan period, THP, and the processes using KSM. Needs
    no root (says what it could not read)."""
    _check_ksm_present()
    before = st.take_snapshot() if interval > 0 else None
    if before is not None:
        time.sleep(interval)
    snap = st.take_snapshot(before.ksmd_pid if before else None)
    a = st.analyse(snap, before)
    if json_out:
        print(json.dumps(as_json(a)))
        return
    stdout_console().print(render(a, full=True))


@kernel_app.command("top")
def kernel_top(
    interval: IntervalOpt = 2.0,
    iterations: Annotated[int, typer.Option(
        "--iterations", "-n", min=0, metavar="N",
        help="Stop after N refreshes (default: run until Ctrl-C).")] = 0,
    limit: Annotated[int, typer.Option(
        "--limit", min=1, metavar="N", help="Show at most N processes.")] = 20,
) -> None:
    """KSM on this machine, refreshed every --interval seconds until Ctrl-C."""
    from rich.live import Live

    _check_ksm_present()
    if interval <= 0:
        error_exit("--interval must be > 0 for top")
    con = stdout_console()
    prev = st.take_snapshot()
    done = 0
    if not con.is_terminal:
        # batch mode (as top -b): each refresh printed after the last, so a pipe or a log
        # sees them as they come, not only the last frame at the end
        try:
            con.print(render(st.analyse(prev), full=False, limit=limit))
            while not iterations or done < iterations:
                time.sleep(interval)
                snap = st.take_snapshot(prev.ksmd_pid)
                con.print(f"--- {time.strftime('%H:%M:%S')}")
                con.print(render(st.analyse(snap, prev), full=False, limit=limit))
                con.file.flush()
                prev = snap
                done += 1
        except KeyboardInterrupt:
            pass
        return
    try:
        with Live(render(st.analyse(prev), full=False, limit=limit), console=con,
                  auto_refresh=False, screen=False) as live:
            while not iterations or done < iterations:
                time.sleep(interval)
                snap = st.take_snapshot(prev.ksmd_pid)
                live.update(render(st.analyse(snap, prev), full=False, limit=limit),
                            refresh=True)
                prev = snap
                done += 1
    except KeyboardInterrupt:
        pass
