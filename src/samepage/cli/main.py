"""The ``samepage`` command: run scenarios on the model, a built-in demo, validation.

Every expected failure (a bad scenario file, a scenario that cannot be carried out, an unwritable
plot) is reported as one line ``samepage: error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from samepage import KERNEL_RELEASE_MODELLED, __version__
from samepage.scenario import Scenario, ScenarioError, load_scenario, load_scenario_text, \
    write_trace_jsonl
from samepage.scenario.model_runner import ScenarioRunError, iter_model_trace

from . import report

EXIT_ERROR = 2
#: Show a progress bar (stderr being a terminal) for runs of more than this many batches ...
PROGRESS_MIN_BATCHES = 200
#: ... or once a run has taken this long (seconds).
PROGRESS_AFTER_S = 1.0
DEMO_RESOURCE = "data/demo.toml"

app = typer.Typer(
    name="samepage",
    help="An executable model of Linux 6.18 KSM (Kernel Samepage Merging).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class CliError(Exception):
    """An expected failure: reported as one line on stderr, exit status 2."""


def error_exit(msg: str, code: int = EXIT_ERROR) -> NoReturn:
    # Plain print, not rich: the message must stay on one line whatever the terminal width.
    print(f"samepage: error: {' '.join(str(msg).split())}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn the expected exceptions into ``samepage: error: ...`` and exit status 2."""
    try:
        yield
    except (ScenarioError, ScenarioRunError, CliError) as e:
        error_exit(str(e))
    except BrokenPipeError:  # stdout closed early (| head): click exits quietly
        raise
    except OSError as e:  # e.g. a sysfs write refused by the model, an unwritable file
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        error_exit(f"{where}{e.strerror or e}")


def stdout_console() -> Console:
    """Rich output on stdout. When stdout is not a terminal (a pipe, a file), tables are laid
    out for COLUMNS (default 120) columns rather than rich's 80."""
    import os

    width = None
    if not sys.stdout.isatty():
        try:
            width = int(os.environ.get("COLUMNS", "")) or 120
        except ValueError:
            width = 120
    return Console(highlight=False, width=width, soft_wrap=False)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        print(f"samepage {__version__} (model of Linux {KERNEL_RELEASE_MODELLED} KSM)")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", "-V", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """An executable model of Linux 6.18 KSM (Kernel Samepage Merging).

    Scenario files (TOML) describe processes, their pages and the KSM settings; a run prints
    the /sys/kernel/mm/ksm counters after every ksmd batch.
    """


# ------------------------------------------------------------------------------ running


class LazyProgress:
    """A progress bar on stderr, only when stderr is a terminal, and only for a run of more
    than PROGRESS_MIN_BATCHES batches or once it has taken PROGRESS_AFTER_S seconds."""

    def __init__(self, total: int, enabled: bool = True, what: str = "ksmd batches") -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.what = what
        self.done = 0
        self.t0 = time.monotonic()
        self.progress: Progress | None = None
        self.task = None

    def __enter__(self) -> "LazyProgress":
        if self.enabled and self.total > PROGRESS_MIN_BATCHES:
            self._start()
        return self

    def _start(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr_console(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.what, total=self.total, completed=self.done)

    def advance(self) -> None:
        self.done += 1
        if self.progress is None:
            if self.enabled and time.monotonic() - self.t0 > PROGRESS_AFTER_S:
                self._start()
            return
        self.progress.update(self.task, completed=self.done)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


class Run:
    """A scenario run on the model: its batch records, final record and machine."""

    def __init__(self, scenario: Scenario, batches: int | None = None) -> None:
        self.scenario = scenario
        self.total = batches if batches is not None else scenario.run.batches
        self.records: list[dict[str, Any]] = []
        self.final: dict[str, Any] | None = None
        self._machine: list = []
        self.wall_s = 0.0

    @property
    def machine(self):
        return self._machine[0] if self._machine else None

    @property
    def cpu_ms(self) -> float | None:
        m = self.machine
        return m.ksm.cpu_ns / 1e6 if m is not None else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Run, yielding every record as it is produced (batch records, then the final one)."""
        t0 = time.perf_counter()
        for rec in iter_model_trace(self.scenario, self.total, self._machine):
            if "batch" in rec:
                self.records.append(rec)
            else:
                self.final = rec
            yield rec
        self.wall_s = time.perf_counter() - t0


def scenario_title(scenario: Scenario, fallback: str) -> str:
    return scenario.name or Path(fallback).stem


def load(path: str) -> Scenario:
    with reported_errors():
        return load_scenario(path)


def check_plot(path: Path | None) -> None:
    """Fail early (before running anything) if the plot could not be written."""
    if path is not None:
        from .plot import check_plot_path

        problem = check_plot_path(path)
        if problem:
            error_exit(f"{path}: cannot write the plot: {problem}")


def write_plot(path: Path, records: list[dict[str, Any]], title: str) -> None:
    from .plot import plot_trace

    try:
        plot_trace(records, path, title)
    except OSError as e:
        raise CliError(f"{path}: cannot write the plot: {e.strerror or e}") from None
    except ValueError as e:  # e.g. an unknown image format (file extension)
        raise CliError(f"{path}: cannot write the plot: {e}") from None


@app.command()
def run(
    scenario: Annotated[str, typer.Argument(help="Scenario file (TOML).", metavar="SCENARIO")],
    batches: Annotated[Optional[int], typer.Option(
        "--batches", "-n", min=1, metavar="N",
        help="Record N batches instead of the scenario's run.batches.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print only the trace, as JSON Lines, on stdout.")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE.png", dir_okay=False,
        help="Also draw the counters over the batches into FILE.png.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="No batch or process table and no progress bar: only the "
                              "summary (with --json: nothing but the trace).")] = False,
) -> None:
    """Run a scenario on the model and print the KSM counters after every ksmd batch."""
    sc = load(scenario)
    check_plot(plot)
    title = scenario_title(sc, scenario)
    r = Run(sc, batches)
    out = sys.stdout
    with reported_errors():
        with LazyProgress(r.total, enabled=not quiet) as progress:
            for rec in r:
                if json_out:
                    write_trace_jsonl([rec], out)
                if "batch" in rec:
                    progress.advance()
        if json_out:
            out.flush()
        if plot is not None:
            write_plot(plot, r.records, title)
    if json_out:
        return

    con = stdout_console()
    if not quiet:
        report.print_batch_table(con, r.records, title=f"{title}: ksmd batches")
        con.print(f"[dim]{report.LEGEND}[/]", soft_wrap=True)
        con.print()
    say = functools.partial(con.print, soft_wrap=True)
    say(f"[bold]{escape(title)}[/]: {len(r.records)} batches on the model "
        f"(Linux {KERNEL_RELEASE_MODELLED} KSM), {r.wall_s:.2f} s of wall time")
    for line in report.summary_lines(report.summarize(r.records, r.cpu_ms)):
        say("  " + line)
    if plot is not None:
        say(f"  [bold]plot[/]            {escape(str(plot))}")
    if not quiet:
        con.print()
        con.print(report.process_table(r.final))


# ------------------------------------------------------------------------------ demo


def demo_scenario_text() -> str:
    from importlib.resources import files

    return (files("samepage") / DEMO_RESOURCE).read_text(encoding="utf-8")


def demo_row_every(total: int) -> int:
    """Show about 20 rows of the demo's progress view."""
    return max(1, round(total / 20))


def demo_table(rows: list[dict[str, Any]]) -> Table:
    from rich import box

    t = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    for name in ("batch", "t (s)", "scans", "shared", "sharing", "unshared", "volatile",
                 "saved MiB", "profit MiB"):
        t.add_column(name, justify="right", style="cyan" if name == "batch" else None)
    for r in rows:
        saved = (r["pages_sharing"] + r["ksm_zero_pages"]) * report.PAGE_SIZE
        t.add_row(str(r["batch"]), f"{r['t_ms'] / 1000:.2f}", str(r["full_scans"]),
                  str(r["pages_shared"]), str(r["pages_sharing"]), str(r["pages_unshared"]),
                  str(r["pages_volatile"]), f"{saved / report.MIB:.2f}",
                  f"{r['general_profit'] / report.MIB:.2f}")
    return t


@app.command()
def demo(
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE.png", dir_okay=False,
        help="Also draw the counters over the batches into FILE.png.")] = None,
    show_scenario: Annotated[bool, typer.Option(
        "--show-scenario", help="Print the demo's scenario file (TOML) and exit.")] = False,
    fast: Annotated[bool, typer.Option(
        "--fast", help="On a terminal, do not play the run back at the pace of simulated "
                       "time (at most ~4 s); just run it.")] = False,
) -> None:
    """Four VMs started from one guest image: watch KSM merge them, then see what it saved."""
    from rich.live import Live

    text = demo_scenario_text()
    if show_scenario:
        sys.stdout.write(text)
        return
    check_plot(plot)
    with reported_errors():
        sc = load_scenario_text(text, filename=f"samepage/{DEMO_RESOURCE}")
    con = stdout_console()
    say = functools.partial(con.print, soft_wrap=True)
    title = sc.name or "demo"
    names = [p.name for p in sc.processes]
    pages = sum(rc.pages for p in sc.processes for rc in p.regions)
    say(f"[bold]samepage demo: {escape(title)}[/]")
    if sc.description:
        say(f"[dim]{escape(sc.description)}[/]")
    say(f"{len(names)} processes ({', '.join(names)}) map {pages} mergeable pages "
        f"({report.mib(pages * report.PAGE_SIZE)}); pages_to_scan = "
        f"{sc.ksm.get('pages_to_scan')}, sleep_millisecs = {sc.ksm.get('sleep_millisecs')}; "
        f"{sc.run.batches} ksmd batches on the model of Linux {KERNEL_RELEASE_MODELLED}.")
    say("[dim](samepage demo --show-scenario prints the scenario file)[/]")

    r = Run(sc)
    every = demo_row_every(r.total)
    rows: list[dict[str, Any]] = []
    # On a terminal, show the rows at the pace of simulated time (squeezed into ~4 s).
    pace = 0.0
    if con.is_terminal and not fast:
        estimate_s = r.total * int(sc.ksm.get("sleep_millisecs", 20)) / 1000
        pace = min(1.0, 4.0 / estimate_s) if estimate_s > 0 else 0.0
    t0 = time.monotonic()
    slept = 0.0
    with reported_errors():
        with Live(demo_table(rows), console=con, auto_refresh=False) as live:
            for rec in r:
                if "batch" in rec and (rec["batch"] % every == 0 or rec["batch"] in (1, r.total)):
                    if pace:
                        nap = max(0.0, rec["t_ms"] / 1000 * pace - (time.monotonic() - t0))
                        time.sleep(nap)
                        slept += nap
                    rows.append(rec)
                    live.update(demo_table(rows), refresh=True)
        if plot is not None:
            write_plot(plot, r.records, title)

    s = report.summarize(r.records, r.cpu_ms)
    last = r.records[-1]
    d = report.dedup(r.machine)
    conv = report.convergence(r.records)
    say()
    zero = f" and {last['ksm_zero_pages']} map the zero page" if last["ksm_zero_pages"] else ""
    say(f"[bold green]Saved {report.mib(s.saved_bytes)}[/] of "
        f"{report.mib(d.mapped * report.PAGE_SIZE)}: {last['pages_sharing']} pages now share "
        f"{last['pages_shared']} KSM pages{zero}; general_profit (after the cost of the "
        f"rmap_items) is {report.mib(s.general_profit)}.")
    say(f"[bold]Dedup ratio {d.ratio:.2f}x[/]: the {d.mapped} pages mapped by the "
        f"{len(names)} VMs use {d.physical} physical pages.")
    if conv is not None:
        say(f"[bold]Converged after batch {conv.batch}[/]: {conv.t_ms / 1000:.2f} s simulated, "
            f"{conv.full_scans} full scan{'s' if conv.full_scans != 1 else ''} completed "
            f"(from then on pages_sharing stays within 1% of its final {conv.pages_sharing}); "
            f"{s.full_scans} full scans in {s.t_ms / 1000:.2f} s in all.")
    if s.cpu_ms is not None:
        share = f", {100 * s.cpu_ms / s.t_ms:.1f}% of one CPU" if s.t_ms > 0 else ""
        say(f"[bold]ksmd CPU time[/] in the model: {s.cpu_ms:.1f} ms over "
            f"{s.t_ms / 1000:.2f} s{share}. [dim](The simulation took {r.wall_s - slept:.2f} s.)[/]")
    if plot is not None:
        say(f"[bold]Plot[/] written to {escape(str(plot))}")


# ------------------------------------------------------------------------------ validate


@app.command()
def validate(
    scenarios: Annotated[list[str], typer.Argument(help="Scenario files (TOML).",
                                                   metavar="SCENARIO")],
) -> None:
    """Check scenario files: print "FILE: ok" or the file's one-line error for each."""
    failed = 0
    for path in scenarios:
        try:
            load_scenario(path)
        except ScenarioError as e:
            failed += 1
            print(str(e), flush=True)
        else:
            print(f"{path}: ok", flush=True)
    if failed:
        print(f"samepage: error: {failed} of {len(scenarios)} scenario files failed",
              file=sys.stderr)
        raise typer.Exit(EXIT_ERROR)
