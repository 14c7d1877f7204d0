"""What every ``samepage`` command shares: one-line errors, consoles, the progress bar,
loading scenarios and writing plots, and the report printed after a run (model or kernel).

Every expected failure is reported as one line ``samepage: error: ...`` on stderr with exit
status 2, never a traceback. Every string that comes from a file, the command line or the
system (scenario, process and file names, kernel releases) goes through ``printable`` (control
characters shown as ``\\x1b``) before it reaches the terminal, and ``markup_safe`` (printable,
then rich markup escaped) before it reaches rich markup.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer

try:
    import typer._click as click      # typer's own click (typer >= 0.24 vendors it)
except ImportError:                   # older typer (PyPy 3.9's): the click it depends on
    import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from samepage.scenario import Scenario, ScenarioError, load_scenario
from samepage.scenario.model_runner import ScenarioRunError

from . import report
from .text import markup_safe, printable  # noqa: F401  (re-exported for the commands)

EXIT_ERROR = 2
#: Show a progress bar (stderr being a terminal) for runs of more than this many batches ...
PROGRESS_MIN_BATCHES = 200
#: ... or once a run has taken this long (seconds) ...
PROGRESS_AFTER_S = 1.0
#: ... or from the start when the run's work (simulated page visits, estimate_work) is
#: above this: about two seconds of the model.
PROGRESS_WORK_NOW = 1_000_000


class CliError(Exception):
    """An expected failure: reported as one line on stderr, exit status 2."""


#: Longest error message printed (a file can put a huge string into one).
MAX_MESSAGE = 2000

def print_lines(text: object, file: Any = None) -> None:
    """Print a multi-line text (plain, no rich), each line made printable."""
    for line in str(text).split("\n"):
        print(printable(line), file=file if file is not None else sys.stdout)


def one_line(msg: object) -> str:
    s = printable(" ".join(str(msg).split()))
    return s if len(s) <= MAX_MESSAGE else s[:MAX_MESSAGE] + "..."


def error_exit(msg: str, code: int = EXIT_ERROR) -> NoReturn:
    # Plain print, not rich: the message must stay on one line whatever the terminal width.
    print(f"samepage: error: {one_line(msg)}", file=sys.stderr, flush=True)
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


class SamepageConsole(Console):
    """A rich Console whose closed pipe ends the command quietly with exit status 0 (rich's
    own default is exit status 1): the BrokenPipeError reaches SamepageGroup.main."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError


def stdout_console() -> Console:
    """Rich output on stdout. When stdout is not a terminal (a pipe, a file), tables are laid
    out for COLUMNS (default 120) columns rather than rich's 80."""
    width = None
    if not sys.stdout.isatty():
        try:
            width = int(os.environ.get("COLUMNS", "")) or 120
        except ValueError:
            width = 120
    return SamepageConsole(highlight=False, width=width, soft_wrap=False)


def stderr_console() -> Console:
    return SamepageConsole(stderr=True, highlight=False)


class LazyProgress:
    """A progress bar on stderr, only when stderr is a terminal, and only for a run of more
    than PROGRESS_MIN_BATCHES batches or once it has taken PROGRESS_AFTER_S seconds."""

    def __init__(self, total: int, enabled: bool = True, what: str = "ksmd batches",
                 start_now: bool | None = None) -> None:
        self.total = total
        self.enabled = enabled and sys.stderr.isatty()
        self.what = what
        self.done = 0
        self.t0 = time.monotonic()
        self.progress: Progress | None = None
        self.task = None
        self.start_now = total > PROGRESS_MIN_BATCHES if start_now is None else start_now

    def __enter__(self) -> "LazyProgress":
        if self.enabled and self.start_now:
            self._start()
        return self

    def describe(self, what: str) -> None:
        """Change the label (e.g. from setting up to ksmd batches)."""
        self.what = what
        if self.progress is not None:
            self.progress.update(self.task, description=what)

    def _start(self) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), console=stderr_console(), transient=True)
        self.progress.start()
        self.task = self.progress.add_task(self.what, total=self.total, completed=self.done)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        if self.progress is None:
            if self.enabled and time.monotonic() - self.t0 > PROGRESS_AFTER_S:
                self._start()
            return
        self.progress.update(self.task, completed=self.done)

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()


def scenario_title(scenario: Scenario, fallback: str) -> str:
    """The scenario's name (or its file's stem), printable; still to be escaped for markup."""
    return printable(scenario.name or Path(fallback).stem)


def read_scenario(path: str) -> Scenario:
    """load_scenario(path); ``-`` reads the scenario from standard input (``<stdin>``)."""
    return load_scenario(path)


def load(path: str) -> Scenario:
    with reported_errors():
        return read_scenario(path)


def with_batches(scenario: Scenario, batches: int | None) -> Scenario:
    """The scenario recording ``batches`` batches instead of its run.batches (events after a
    later batch are left out)."""
    if batches is None or batches == scenario.run.batches:
        return scenario
    sc = scenario.model_copy(deep=True)
    sc.run = sc.run.model_copy(update={"batches": batches})
    sc.events = [ev for ev in sc.events if ev.after_batch is None or ev.after_batch <= batches]
    return sc


def check_plot(path: Path | None) -> None:
    """Fail early (before running anything) if the plot could not be written."""
    if path is not None:
        from .plot import check_plot_path

        problem = check_plot_path(path)
        if problem:
            error_exit(f"{path}: cannot write the plot: {problem}")


def write_plot(path: Path, records: Sequence[dict[str, Any]], title: str, **kwargs: Any) -> None:
    """plot_trace(records, path, title, **kwargs); failures become CliError."""
    from .plot import plot_trace

    try:
        plot_trace(records, path, title, **kwargs)
    except OSError as e:
        raise CliError(f"{path}: cannot write the plot: {e.strerror or e}") from None
    except ValueError as e:  # e.g. an unknown image format (file extension)
        raise CliError(f"{path}: cannot write the plot: {e}") from None


def print_run_report(con: Console, *, title: str, records: Sequence[dict[str, Any]],
                     final: dict[str, Any] | None, where: str, wall_s: float,
                     cpu_ms: float | None, time_label: str, plot: Path | None,
                     quiet: bool) -> None:
    """What ``samepage run`` and ``samepage kernel run`` print after a run: the batch table
    (unless ``quiet``), a summary headed "TITLE: N batches on WHERE, S s of wall time", and
    the per-process /proc/PID/ksm_stat table of the final record."""
    if not quiet:
        report.print_batch_table(con, records, title=f"{title}: ksmd batches")
        con.print(f"[dim]{report.LEGEND}[/]", soft_wrap=True)
        con.print()
    say = functools.partial(con.print, soft_wrap=True)
    say(f"[bold]{escape(title)}[/]: {len(records)} batches on {markup_safe(where)}, "
        f"{wall_s:.2f} s of wall time")
    for line in report.summary_lines(report.summarize(records, cpu_ms), time_label=time_label):
        say("  " + line)
    if plot is not None:
        say(f"  [bold]plot[/]            {markup_safe(plot)}")
    if not quiet:
        con.print()
        con.print(report.process_table(final))
