"""``samepage compare SCENARIO``: the model and the live kernel on the same scenario, side by side.

The model runs the scenario; the kernel either runs it live (root, as ``samepage kernel run``)
or is read from a saved trace (``--against TRACE.jsonl``, from ``samepage kernel record``: no
root and no KSM needed). Each batch is printed as one row whose cells read ``model/kernel``;
a counter that differs is red and marked ``!``, and the first batch where the traces part is
named. Exit status: 0 when the traces are identical (all 11 counters of every batch and the
final per-process ksm_stat; ``t_ms`` is shown, not compared), 1 when they differ, 2 on an error.

``--json`` prints both traces on stdout as JSON Lines, every record tagged with its source:
``{"source": "model", "batch": 1, ...}`` ... then ``{"source": "kernel", ...}`` ... and last
one ``{"source": "compare", "identical": ..., "first_difference": ..., ...}`` line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.text import Text

from samepage import KERNEL_RELEASE_MODELLED
from samepage.scenario import COUNTER_NAMES, PROCESS_KEYS, read_trace
from samepage.scenario.model_runner import run_scenario_on_model
from samepage.scenario.trace_compare import TraceComparison, compare_traces

from . import report
from .patchopt import PatchOpt, apply_patch_option
from .common import (
    check_plot,
    error_exit,
    load,
    markup_safe,
    printable,
    reported_errors,
    scenario_title,
    stdout_console,
    with_batches,
    write_plot,
)
from .kernel import DrainOpt, ForceOpt, NoLruCheckOpt, RetriesOpt, WaitOpt, kernel_errors, \
    require_live_ksm, run_on_kernel

DIFF_STYLE = "bold red"
MARK = "!"


def _cell(a: Any, b: Any, compact: bool) -> tuple[str, bool]:
    """(text, differs) of one model/kernel cell; a side without the batch shows "-"."""
    sa = "-" if a is None else str(a)
    sb = "-" if b is None else str(b)
    differs = a != b
    if compact and not differs:
        return sa, False
    return f"{sa}/{sb}" + (MARK if differs else ""), differs


def comparison_rows(cmp: TraceComparison, compact: bool = False
                    ) -> tuple[list[str], list[tuple[list[tuple[str, bool]], str]]]:
    """Headers and rows of the side-by-side table: per row the cells as (text, differs) and
    a note ("" or "<- first difference")."""
    # ksmd's CPU per batch (extra key ksmd_cpu_us), when both traces have it: shown with the
    # model/kernel ratio, never compared
    cpu = any("ksmd_cpu_us" in r for r in cmp.a) and any("ksmd_cpu_us" in r for r in cmp.b)
    headers = ["", "batch", "t_ms", *(["cpu_us", "cpu ratio"] if cpu else []),
               *(report.COUNTER_HEADERS[c] for c in COUNTER_NAMES)]
    first = cmp.first_batch
    rows = []
    for n, a, b in cmp.by_batch():
        cells: list[tuple[str, bool]] = []
        diff_row = n in cmp.batch_diffs or a is None or b is None
        cells.append((MARK if diff_row else "", diff_row))
        cells.append((str(n), False))
        ta = None if a is None else f"{a['t_ms']:.1f}"
        tb = None if b is None else f"{b['t_ms']:.1f}"
        cells.append((f"{ta or '-'}/{tb or '-'}", False))    # shown, never compared
        if cpu:
            ca = None if a is None else a.get("ksmd_cpu_us")
            cb = None if b is None else b.get("ksmd_cpu_us")
            cells.append((f"{'-' if ca is None else f'{ca:.0f}'}/"
                          f"{'-' if cb is None else f'{cb:.0f}'}", False))
            cells.append((f"{ca / cb:.2f}" if ca is not None and cb else "-", False))
        for c in COUNTER_NAMES:
            cells.append(_cell(None if a is None else a[c], None if b is None else b[c],
                               compact))
        rows.append((cells, "<- first difference" if n == first else ""))
    return headers, rows


def print_comparison(con: Console, cmp: TraceComparison, title: str,
                     compact: bool = False) -> None:
    headers, rows = comparison_rows(cmp, compact)
    widths = [max(len(h), *(len(r[0][i][0]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    gap = 2
    for gap in (2, 1):
        if sum(widths) + gap * (len(widths) - 1) <= con.width:
            break
    sep = " " * gap
    line_width = sum(widths) + gap * (len(widths) - 1)
    con.print(printable(title).center(line_width).rstrip(), style="italic", markup=False,
              highlight=False, soft_wrap=True)
    con.print(sep.join(h.rjust(w) for h, w in zip(headers, widths)), style="bold",
              markup=False, highlight=False, soft_wrap=True)
    con.print("─" * line_width, markup=False, highlight=False, soft_wrap=True)
    for cells, note in rows:
        t = Text()
        for i, ((text, differs), w) in enumerate(zip(cells, widths)):
            if i:
                t.append(sep)
            t.append(text.rjust(w), style=DIFF_STYLE if differs else None)
        if note:
            t.append("  " + note, style=DIFF_STYLE)
        con.print(t, soft_wrap=True, highlight=False)
    con.print(f"[dim]each cell: {escape(cmp.a_label)}/{escape(cmp.b_label)}"
              + ("; one number where they agree" if compact else "")
              + f"; red and {MARK}: the counter differs (t_ms is shown, not compared)\n"
              + escape(report.LEGEND.replace("\nbold rows: a full scan completed in that batch",
                                             "").replace(";  bold rows: a full scan completed "
                                                         "in that batch", "")) + "[/]",
              soft_wrap=True)


def print_final_comparison(con: Console, cmp: TraceComparison, compact: bool = False) -> None:
    from rich import box
    from rich.table import Table

    pa = (cmp.a_final or {}).get("processes") or {}
    pb = (cmp.b_final or {}).get("processes") or {}
    ka = (cmp.a_final or {}).get("kernel", "?")
    kb = (cmp.b_final or {}).get("kernel", "?")
    t = Table(title=f"per process (/proc/PID/ksm_stat): {markup_safe(cmp.a_label)} (Linux "
                    f"{markup_safe(ka)}) / {markup_safe(cmp.b_label)} (Linux {markup_safe(kb)})",
              box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, title_justify="left")
    t.add_column("process", style="cyan")
    for key in PROCESS_KEYS:
        t.add_column(report.PROCESS_HEADERS[key], justify="right")
    show = lambda v: "-" if v is None else ("yes" if v else "no") if isinstance(v, bool) else str(v)  # noqa: E731
    for name in list(pa) + [n for n in pb if n not in pa]:
        cells = []
        for key in PROCESS_KEYS:
            va = pa.get(name, {}).get(key)
            vb = pb.get(name, {}).get(key)
            differs = name not in pa or name not in pb or va != vb
            text = (show(va) if compact and not differs else
                    f"{show(va)}/{show(vb)}" + (MARK if differs else ""))
            cells.append(Text(text, style=DIFF_STYLE if differs else ""))
        t.add_row(Text(printable(name)), *cells)
    con.print(t)


def _tagged(source: str, rec: dict[str, Any]) -> dict[str, Any]:
    return {"source": source, **rec}


def compare(
    scenario: Annotated[str, typer.Argument(help="Scenario file (TOML).", metavar="SCENARIO")],
    against: Annotated[Optional[Path], typer.Option(
        "--against", metavar="TRACE.jsonl", dir_okay=False,
        help="Compare the model with this saved kernel trace (samepage kernel record) instead "
             "of running the live kernel: no root or KSM needed.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print both traces as JSON Lines tagged {\"source\": \"model\"|"
                       "\"kernel\"}, then one {\"source\": \"compare\"} line.")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE.png", dir_okay=False,
        help="Draw both traces into FILE.png (model solid, kernel dashed).")] = None,
    compact: Annotated[bool, typer.Option(
        "--compact", help="Show one number where model and kernel agree.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the verdict line.")] = False,
    wait: WaitOpt = 0.0,
    force: ForceOpt = False,
    retries: RetriesOpt = 0,
    drain_lru: DrainOpt = False,
    no_lru_check: NoLruCheckOpt = False,
    patch: PatchOpt = None,
) -> None:
    """Run a scenario on the model and on the live kernel (or read the kernel's saved trace
    with --against) and show the two traces side by side. Exit status 0 if identical, 1 if
    they differ."""
    apply_patch_option(patch)
    sc = load(scenario)
    check_plot(plot)
    title = scenario_title(sc, scenario)
    if against is not None:
        with reported_errors():
            k_records, k_final = read_trace(against)
        if not k_records:
            error_exit(f"{against}: (file): the trace has no batch record")
        source = f"the kernel trace {against}"
        n = len(k_records)
    else:
        from samepage.kernel import check_scenario

        with kernel_errors(scenario):
            check_scenario(sc)
        require_live_ksm("samepage compare (without --against TRACE.jsonl)")
        n = sc.run.batches
        source = "the live kernel"
    # the model first: a scenario the model cannot run fails before KSM is touched
    with reported_errors():
        model = run_scenario_on_model(with_batches(sc, n) if against is None else sc, batches=n)
    if against is None:
        info: dict = {}
        with kernel_errors(scenario, info):
            kr = run_on_kernel(sc, wait=wait, force=force, retries=retries,
                               drain_lru=drain_lru, check_lru=not no_lru_check, info=info)
        k_records, k_final = kr.records, kr.final
        source = f"the live kernel (Linux {printable(kr.release)})"
    cmp = compare_traces(model.records, model.final, k_records, k_final)
    if plot is not None:
        with reported_errors():
            write_plot(plot, model.records, f"{title}: model vs kernel", other=k_records,
                       label="model", other_label="kernel")

    if json_out:
        out = sys.stdout
        for rec in [*model.records, model.final]:
            out.write(json.dumps(_tagged("model", rec)) + "\n")
        for rec in [*k_records, *([k_final] if k_final else [])]:
            out.write(json.dumps(_tagged("kernel", rec)) + "\n")
        first = cmp.first_batch
        out.write(json.dumps({
            "source": "compare", "identical": cmp.identical,
            "first_difference": None if first is None else {
                "batch": first, "counters": cmp.batch_diffs.get(first, [])},
            "differing_batches": sorted([*cmp.batch_diffs, *cmp.only_a, *cmp.only_b]),
            "final_differs": sorted(cmp.final_diffs),
            "summary": cmp.summary()}) + "\n")
        out.flush()
        raise typer.Exit(0 if cmp.identical else 1)

    con = stdout_console()
    if not quiet:
        print_comparison(con, cmp, f"{title}: model (Linux {KERNEL_RELEASE_MODELLED} model) / "
                                   f"{source}", compact)
        con.print()
        print_final_comparison(con, cmp, compact)
        con.print()
        pm = {ph: cpu for ph, _, cpu, _ in report.cpu_by_phase(model.records)}
        for ph, n, kcpu, _ in report.cpu_by_phase(k_records):
            if ph in pm and kcpu > 0:       # informative only: not part of the exit status
                con.print(f"ksmd CPU, {ph}: model {pm[ph]:.1f} ms / kernel {kcpu:.1f} ms "
                          f"= {pm[ph] / kcpu:.2f}", soft_wrap=True, markup=False)
    colour = "green" if cmp.identical else "red"
    con.print(f"[bold {colour}]{markup_safe(cmp.summary())}[/]", soft_wrap=True)
    if plot is not None:
        con.print(f"plot written to {markup_safe(os.fspath(plot))}", soft_wrap=True)
    raise typer.Exit(0 if cmp.identical else 1)
