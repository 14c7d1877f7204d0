"""``samepage sweep INPUT... --grid KEY=V1,V2,...``: scenarios or snapshots run on the model
over a grid of settings, one cell per input and combination, on Dask (a LocalCluster of
``--workers`` processes, or the cluster at ``--scheduler``) or ``--serial``ly.

Prints one row per cell (and, for several inputs, the fleet estimate per combination), writes
``-o FILE.parquet|FILE.csv`` and ``--plot FILE.png`` (saved memory against ksmd CPU, with the
Pareto front). A bad input, grid key or value is one line and exit status 2 before anything
runs; a cell that fails is reported with its error, the others complete, exit status 1.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .common import (
    check_plot,
    error_exit,
    markup_safe,
    printable,
    reported_errors,
    stderr_console,
    stdout_console,
)

TABLE_SUFFIXES = (".parquet", ".csv")


def _check_output(path: Path | None) -> None:
    if path is None:
        return
    if not str(path).lower().endswith(TABLE_SUFFIXES):
        error_exit(f"{path}: the results table must be FILE.parquet or FILE.csv")
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        error_exit(f"{path}: cannot write the table: is a directory")
    if not parent.is_dir():
        error_exit(f"{path}: cannot write the table: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        error_exit(f"{path}: cannot write the table: directory {parent} is not writable")


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _too_short(r: dict[str, Any]) -> bool:
    """A cell that ended before ksmd's second full scan: nothing could merge yet, so its
    saving and convergence say nothing about the settings."""
    return not r.get("error") and r.get("full_scans") is not None and r["full_scans"] < 2


TOO_SHORT_NOTE = ("too short: the cell ended before ksmd's second full scan, so nothing could "
                  "merge yet; run it longer (run.batches=N for a scenario, policy.duration_s, "
                  "--until for a snapshot)")


def results_table(rows: list[dict[str, Any]], grid_keys: list[str], several: bool) -> Table:
    from samepage.sweep.grid import show

    t = Table(title="sweep: one row per cell", title_justify="left")
    t.add_column("cell", justify="right")
    if several:
        t.add_column("input")
    for k in grid_keys:
        t.add_column(k)
    for h in ("sharing", "shared", "saved MiB", "converged (s)", "ksmd CPU ms", "CPU %",
              "error"):
        t.add_column(h, justify="right" if h != "error" else "left")
    for r in rows:
        conv = None if r["converge_ms"] is None else r["converge_ms"] / 1000
        cells = [str(r["cell"])]
        if several:
            cells.append(markup_safe(os.path.basename(r["input"])))
        cells += [markup_safe(show(r[k])) for k in grid_keys]
        cells += [_fmt(r["pages_sharing"]), _fmt(r["pages_shared"]), _fmt(r["saved_mib"]),
                  "too short" if _too_short(r) else _fmt(conv, 3), _fmt(r["ksmd_cpu_ms"], 1),
                  _fmt(r["ksmd_cpu_percent"]),
                  markup_safe(r["error"][:80])]
        t.add_row(*cells)
    return t


def fleet_table(points, inputs) -> Table:
    from samepage.sweep.grid import label

    t = Table(title="fleet estimate: saved MiB per host and in total (CPU: % of one CPU, "
                    "summed over hosts)", title_justify="left")
    t.add_column("grid")
    names = [os.path.basename(i.name) for i in inputs]
    for n, inp in zip(names, inputs):
        t.add_column(markup_safe(f"{inp.host} ({n})"), justify="right")
    t.add_column("total MiB", justify="right")
    t.add_column("total CPU %", justify="right")
    for p in points:
        per = [("failed" if h["error"] else _fmt(h["saved_mib"])) for h in p.per_host]
        t.add_row(markup_safe(label(p.values)), *per,
                  _fmt(p.saved_mib) + (" (incomplete)" if p.failed else ""),
                  _fmt(p.ksmd_cpu_percent))
    return t


def sweep(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT...", help="Scenario files (TOML, - for standard input) or snapshots (samepage capture -o FILE.npz); several snapshots give a fleet estimate.")],
    grid: Annotated[Optional[list[str]], typer.Option("--grid", metavar="KEY=V1,V2,...", help="A scenario key by dotted path and its values (repeatable): ksm.pages_to_scan=100,1000, model.same_folio=v6.18,split-retry, machine.thp=always,never, policy.name=...; snapshots take ksm.TUNABLE, forecast.merge_any, forecast.thp, forecast.static, forecast.until.")] = None,
    workers: Annotated[int, typer.Option("--workers", metavar="N", min=0, max=256, help="Worker processes of the LocalCluster (default 0: one per CPU of this machine).")] = 0,
    scheduler: Annotated[Optional[str], typer.Option("--scheduler", metavar="tcp://HOST:PORT", help="Run on this existing Dask cluster instead (its workers need samepage installed).")] = None,
    connect_timeout: Annotated[float, typer.Option("--connect-timeout", metavar="SECONDS", min=0.1, max=3600.0, help="With --scheduler: how long to try to connect.")] = 15.0,
    serial: Annotated[bool, typer.Option("--serial", help="Run every cell in this process, one after the other (no Dask).")] = False,
    output: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE.parquet|FILE.csv", help="Write the results table: one row per cell.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Pareto plot of saved memory against ksmd CPU.")] = None,
    until: Annotated[str, typer.Option("--until", metavar="converged|N|T", help="Snapshot cells: stop when converged (default), after N full scans or a simulated time T.")] = "converged",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object: the rows and the fleet estimate.")] = False,
) -> None:
    """Run scenarios or snapshots on the model over a grid of settings, on Dask."""
    from samepage.sweep import SweepError, build_cells, combinations, fleet, load_input, \
        parse_grid, plot_pareto, run_dask, run_serial, write_table
    from samepage.sweep.grid import GridError

    if serial and scheduler:
        error_exit("--serial and --scheduler: choose one")
    if scheduler is not None and not scheduler.strip():
        error_exit("--scheduler: expected an address such as tcp://HOST:PORT")
    if inputs.count("-") > 1:
        error_exit("standard input (-) can be given once")
    _check_output(output)
    check_plot(plot)
    try:
        keys = parse_grid(grid or [])
    except GridError as e:
        error_exit(str(e))
    with reported_errors():
        loaded = [load_input(p) for p in inputs]
    try:
        cells = build_cells(loaded, combinations(keys), until)
    except SweepError as e:
        error_exit(str(e))
    grid_keys = [k.key for k in keys]

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn
    progress = None
    if sys.stderr.isatty():
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            console=stderr_console(), transient=True)
    where = "serially" if serial else (f"on {scheduler}" if scheduler else
                                       f"on a LocalCluster of {workers or os.cpu_count() or 1} workers")
    failed: list[dict[str, Any]] = []

    def done(row: dict[str, Any]) -> None:
        if row["error"]:
            failed.append(row)
        if progress is not None:
            progress.update(task, advance=1,
                            description=f"sweep cells ({len(failed)} failed)" if failed
                            else "sweep cells")

    t0 = time.monotonic()
    task = None
    if progress is not None:
        progress.start()
        task = progress.add_task("sweep cells", total=len(cells))
    try:
        if serial:
            rows = run_serial(cells, loaded, done)
        else:
            rows = run_dask(cells, loaded, scheduler=scheduler,
                            workers=workers or os.cpu_count() or 1, progress=done,
                            connect_timeout=connect_timeout)
    except SweepError as e:
        error_exit(str(e))
    finally:
        if progress is not None:
            progress.stop()
    wall = time.monotonic() - t0
    points = fleet(rows, grid_keys) if len(loaded) > 1 else []
    if output is not None:
        try:
            write_table(str(output), rows, grid_keys)
        except OSError as e:
            error_exit(f"{output}: cannot write the table: {e.strerror or e}")
    if plot is not None:
        try:
            plot_pareto(str(plot), rows, grid_keys, points,
                        title=printable(", ".join(os.path.basename(i.name) for i in loaded))[:80])
        except (OSError, ValueError) as e:
            error_exit(f"{plot}: cannot write the plot: {getattr(e, 'strerror', None) or e}")
    for r in sorted(failed, key=lambda r: r["cell"]):
        from samepage.sweep.grid import label
        print(printable(f"samepage: cell {r['cell']} ({os.path.basename(r['input'])}, "
                        f"{label({k: r[k] for k in grid_keys})}) failed: {r['error']}"),
              file=sys.stderr)
    if json_out:
        print(json.dumps({"cells": rows, "fleet": [p.as_json() for p in points]}))
    else:
        con = stdout_console()
        con.print(results_table(rows, grid_keys, len(loaded) > 1))
        if any(_too_short(r) for r in rows):
            con.print(markup_safe(TOO_SHORT_NOTE), soft_wrap=True)
        if points:
            con.print(fleet_table(points, loaded))
        tail = [f"{len(cells)} cells {where} in {wall:.1f} s"]
        if failed:
            tail.append(f"{len(failed)} failed")
        if output is not None:
            tail.append(f"table: {output}")
        if plot is not None:
            tail.append(f"plot: {plot}")
        con.print(markup_safe("; ".join(tail)), soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("sweep")(sweep)
