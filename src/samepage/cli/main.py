"""The ``samepage`` command: run scenarios on the model, a built-in demo, validation; the
live kernel (``samepage kernel ...``, samepage.cli.kernel) and model-vs-kernel comparison
(``samepage compare``, samepage.cli.compare).

Conventions (SamepageGroup.main, the entry point of the ``samepage`` console script):

* every expected failure (a bad scenario, schedule or trace file, a scenario that cannot be
  carried out, an unwritable plot) and every usage error (a missing argument, an unknown
  option) is one line ``samepage: error: ...`` on stderr, exit status 2;
* an unexpected exception (a bug) is one line ``samepage: internal error: TYPE: message (run
  with SAMEPAGE_DEBUG=1 for the traceback)``, exit status 3; with SAMEPAGE_DEBUG=1 the
  traceback is printed first;
* a closed standard output (``samepage ... | head -1``) is not an error: exit status 0, quietly;
* Ctrl-C: exit status 130;
* a SCENARIO argument of ``-`` reads the scenario from standard input.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from samepage import KERNEL_RELEASE_MODELLED, __version__
from samepage.scenario import Scenario, ScenarioError, load_scenario, load_scenario_text, \
    write_trace_jsonl
from samepage.scenario.model_runner import iter_model_trace

from . import report
from .patchopt import PatchOpt, apply_patch_option
from .common import (
    PROGRESS_WORK_NOW,
    EXIT_ERROR,
    LazyProgress,
    check_plot,
    error_exit,
    load,
    markup_safe,
    one_line,
    print_lines,
    print_run_report,
    printable,
    read_scenario,
    reported_errors,
    scenario_title,
    stdout_console,
    write_plot,
)

DEMO_RESOURCE = "data/demo.toml"
#: Exit status of an internal error (a bug in samepage, not in the input).
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
DEBUG_ENV = "SAMEPAGE_DEBUG"


def _quiet_stdout() -> None:
    """After a closed pipe: point stdout at /dev/null so that the interpreter's final flush
    does not fail again (the Python documentation's recipe for SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):   # not a real file (a test runner's)
        pass


def usage_error_line(e: Exception) -> str:
    """A click usage error as ``samepage: error: run: missing argument SCENARIO (see
    samepage run --help)``."""
    from samepage.cli.common import click

    ctx = getattr(e, "ctx", None)
    msg = e.format_message() if isinstance(e, click.ClickException) else str(e)
    msg = msg.strip().rstrip(".")
    # click quotes names ('SCENARIO', '--batchez'): drop the quotes of simple ones
    msg = " ".join(w.strip("'") if w.startswith("'") and w.rstrip("',.").count("'") <= 1
                   else w for w in msg.split())
    if msg[:1].isupper() and not msg[1:2].isupper():
        msg = msg[0].lower() + msg[1:]
    path = ctx.command_path if ctx is not None else "samepage"
    sub = path.split(" ", 1)[1] + ": " if " " in path else ""
    return f"samepage: error: {sub}{one_line(msg)} (see {printable(path)} --help)"


class SamepageGroup(TyperGroup):
    """The root command: runs a command and turns every way it can end into the exit status
    and at most one line on stderr (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True,
             **extra):
        from typer import Abort, Exit

        from samepage.cli.common import click

        args = sys.argv[1:] if args is None else list(args)
        code = 0
        try:
            with self.make_context(prog_name or "samepage", args, **extra) as ctx:
                self.invoke(ctx)
        except Exit as e:
            code = e.exit_code
        except click.exceptions.NoArgsIsHelpError as e:
            # `samepage` or `samepage kernel` alone asks what there is: the help, on
            # stdout, as for --help (not an error)
            print(e.ctx.get_help())
            code = 0
        except click.ClickException as e:
            print(usage_error_line(e), file=sys.stderr, flush=True)
            code = EXIT_ERROR
        except (Abort, KeyboardInterrupt, EOFError):
            print("samepage: interrupted", file=sys.stderr, flush=True)
            code = EXIT_INTERRUPTED
        except BrokenPipeError:
            _quiet_stdout()
            code = 0
        except Exception as e:  # a bug: short, unless asked for the traceback
            if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
                traceback.print_exc()
            print(f"samepage: internal error: {type(e).__name__}: {one_line(e)} "
                  f"(run with {DEBUG_ENV}=1 for the traceback)", file=sys.stderr, flush=True)
            code = EXIT_INTERNAL
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _quiet_stdout()
        except (OSError, ValueError):
            pass
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    name="samepage",
    cls=SamepageGroup,
    help="An executable model of Linux 6.18 KSM (Kernel Samepage Merging).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,             # help text is plain: [[thread]] stays [[thread]]
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        import samepage
        print(f"samepage {__version__} (model of Linux {KERNEL_RELEASE_MODELLED} KSM; "
              f"{samepage.BUILD})")
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


class Run:
    """A scenario run on the model: its batch records, final record and machine."""

    def __init__(self, scenario: Scenario, batches: int | None = None,
                 same_folio: str | None = None, sanitize: bool = False,
                 setup_progress=None) -> None:
        self.scenario = scenario
        self.setup_progress = setup_progress
        self.same_folio = same_folio
        self.sanitize = sanitize
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
        for rec in iter_model_trace(self.scenario, self.total, self._machine,
                                    same_folio=self.same_folio, sanitize=self.sanitize,
                                    setup_progress=self.setup_progress):
            if "batch" in rec:
                self.records.append(rec)
            else:
                self.final = rec
            yield rec
        self.wall_s = time.perf_counter() - t0


class _SameFolioChoices:
    """The registered same-folio strategies (samepage.ksm.same_folio.STRATEGIES, which a
    patch under test may extend) plus "all"; read at use, not at import."""

    def _names(self) -> tuple[str, ...]:
        from samepage.ksm.same_folio import STRATEGIES
        return (*STRATEGIES, "all")

    def __contains__(self, name) -> bool:
        return name in self._names()

    def __iter__(self):
        return iter(self._names())


SAME_FOLIO_CHOICES = _SameFolioChoices()


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
    same_folio: Annotated[Optional[str], typer.Option(
        "--same-folio", metavar="STRATEGY",
        help="How a pair of pages in one large folio is merged: v6.18 (default), early-put, "
             "split-retry, or 'all' to compare them side by side.")] = None,
    sanitize: Annotated[bool, typer.Option(
        "--sanitize", help="Check every folio operation and the whole state after every "
                           "step (slower); a bug found is reported on stderr, exit status 1.")
    ] = False,
    costs: Annotated[Optional[Path], typer.Option(
        "--costs", metavar="COSTS.toml", dir_okay=False,
        help="ksmd's CPU cost profile (from samepage kernel calibrate) instead of the "
             "scenario's [model] costs or the shipped one.")] = None,
    fast_forward: Annotated[bool, typer.Option(
        "--fast-forward/--no-fast-forward",
        help="Replay full scans that provably repeat instead of redoing them (every "
             "counter identical; default on; SAMEPAGE_FAST_FORWARD=0 also turns it off).")
    ] = True,
    patch: PatchOpt = None,
    policy: Annotated[Optional[str], typer.Option(
        "--policy", metavar="NAME|FILE.py:Class|all",
        help="Run a KSM tuning daemon in simulated time (ksmtuned, proxmox, mom, kubevirt, "
             "harvester, kata, advisor, none, or your own class); 'all' compares them. "
             "Needs [machine] memory_mb.")] = None,
    duration: Annotated[Optional[float], typer.Option(
        "--duration", metavar="S", min=0.001,
        help="With --policy: simulated seconds to run (default [policy] duration_s, "
             "or 600).")] = None,
) -> None:
    """Run a scenario on the model and print the KSM counters after every ksmd batch."""
    apply_patch_option(patch)
    if not fast_forward:
        os.environ["SAMEPAGE_FAST_FORWARD"] = "0"    # read by every Machine made below
    sc = load(scenario)
    if costs is not None:
        from samepage.ksm.costs import CostProfileError, load_profile
        try:
            load_profile(costs)              # a malformed profile: one line, before running
        except CostProfileError as e:
            error_exit(str(e))
        sc = sc.model_copy(update={"model": sc.model.model_copy(
            update={"costs": os.path.abspath(costs)})})
    if sanitize and same_folio == "all":
        error_exit("--sanitize takes one strategy, not --same-folio all")
    if same_folio is not None and same_folio not in SAME_FOLIO_CHOICES:
        error_exit(f"--same-folio: unknown strategy {same_folio!r} "
                   f"(one of {', '.join(SAME_FOLIO_CHOICES)})")
    if same_folio == "all":
        if json_out or plot is not None:
            error_exit("--same-folio all prints a comparison table: it does not take "
                       "--json or --plot")
        with reported_errors():
            from .strategies import print_same_folio_comparison
            print_same_folio_comparison(stdout_console(), sc, scenario_title(sc, scenario),
                                        batches)
        return
    if policy is None and sc.policy is not None:
        policy = sc.policy.name
    if policy is not None or duration is not None:       # a tuning policy: simulated time
        if policy is None:
            error_exit("--duration goes with --policy (or a [policy] table)")
        check_plot(plot)
        with reported_errors():
            from . import policies as pol_cli
            title = scenario_title(sc, scenario)
            if policy == "all":
                if json_out:
                    error_exit("--policy all prints a comparison table: it does not take --json")
                pol_cli.print_policy_comparison(stdout_console(), sc, title, duration, plot)
            else:
                pol_cli.run_one(stdout_console(), sc, title, policy, duration, json_out, plot,
                                quiet)
        return
    check_plot(plot)
    title = scenario_title(sc, scenario)
    from samepage.scenario.limits import estimate_work, setup_pages
    total = batches if batches is not None else sc.run.batches
    # progress in simulated page visits: set-up (pages written), then ksmd's batches; shown
    # from the start when the run is big
    work = estimate_work(sc, total)
    progress = LazyProgress(work, enabled=not quiet, what="setting up the model",
                            start_now=work > PROGRESS_WORK_NOW)
    per_batch = max(1, (work - setup_pages(sc)) // total)
    r = Run(sc, batches, same_folio, sanitize, setup_progress=progress.advance)
    out = sys.stdout
    from samepage.sanitizer import SanitizerReport
    with reported_errors():
        try:
            with progress:
                for rec in r:
                    if json_out:
                        write_trace_jsonl([rec], out)
                    if "batch" in rec:
                        if rec["batch"] == 1:
                            progress.describe("ksmd batches")
                        progress.advance(per_batch)
        except SanitizerReport as rep:
            out.flush()
            print_lines(f"samepage: {rep}", file=sys.stderr)
            raise typer.Exit(1) from None
        if json_out:
            out.flush()
        if plot is not None:
            write_plot(plot, r.records, title)
    if json_out:
        return

    print_run_report(stdout_console(), title=title, records=r.records, final=r.final,
                     where=f"the model (Linux {KERNEL_RELEASE_MODELLED} KSM)", wall_s=r.wall_s,
                     cpu_ms=r.cpu_ms, time_label="simulated time", plot=plot, quiet=quiet)


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
    title = printable(sc.name or "demo")
    names = [p.name for p in sc.processes]
    pages = sum(rc.pages for p in sc.processes for rc in p.regions)
    say(f"[bold]samepage demo: {escape(title)}[/]")
    if sc.description:
        say(f"[dim]{markup_safe(sc.description)}[/]")
    say(f"{len(names)} processes ({markup_safe(', '.join(names))}) map {pages} mergeable pages "
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
        for name, n, cpu, pct in s.phases:
            say(f"  {name}: {cpu:.1f} ms over {n} batches, {pct:.1f}% of one CPU")
        say("[dim](CPU costs fitted to ksmd on the reference machine; docs/cpu-model.md says "
            "how to fit them to yours: samepage kernel calibrate)[/]")
    if plot is not None:
        say(f"[bold]Plot[/] written to {markup_safe(plot)}")


# ------------------------------------------------------------------------------ validate


@app.command()
def validate(
    scenarios: Annotated[list[str], typer.Argument(help="Scenario files (TOML); - reads one "
                                                        "from standard input.",
                                                   metavar="SCENARIO")],
) -> None:
    """Check scenario files: print "FILE: ok" or the file's one-line error for each."""
    failed = 0
    for path in scenarios:
        try:
            read_scenario(path)
        except ScenarioError as e:
            failed += 1
            print(one_line(e), flush=True)
        else:
            print(f"{printable(path)}: ok", flush=True)
    if failed:
        print(f"samepage: error: {failed} of {len(scenarios)} scenario files failed",
              file=sys.stderr)
        raise typer.Exit(EXIT_ERROR)


# ------------------------------------------------------------------------------ the live kernel
# (registered last: these modules import the helpers above)

from .compare import compare as _compare_command  # noqa: E402
from .kernel import kernel_app  # noqa: E402

app.add_typer(kernel_app, name="kernel")


# ------------------------------------------------------------------------------ explore


def default_schedule_path(scenario: str) -> str:
    """Where a failing schedule is saved without --save: in the current directory, the
    scenario file's name with .schedule.json for .toml (``-``: stdin.schedule.json)."""
    base = "stdin" if scenario == "-" else os.path.basename(scenario)
    stem, ext = os.path.splitext(base)
    return (stem if ext == ".toml" and stem else base) + ".schedule.json"


def check_schedule_path(path: str, scenario: str, force: bool) -> None:
    """Refuse (one line, exit 2) before the search a --save path that could not be written
    or would replace a file without --force (and the scenario itself, even with --force)."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        error_exit(f"{path}: cannot save the schedule: no such directory: {parent}")
    if os.path.isdir(path):
        error_exit(f"{path}: cannot save the schedule: is a directory")
    if not os.path.lexists(path):
        return
    if scenario != "-" and os.path.exists(path) and os.path.exists(scenario) and \
            os.path.samefile(path, scenario):
        error_exit(f"{path}: is the scenario file: save the schedule elsewhere (--save FILE)")
    if not force:
        error_exit(f"{path}: already exists: a failing schedule would not be saved over it "
                   "(--save FILE to choose another file, --force to replace it)")


class ExploreProgress:
    """A one-line status on stderr while exploring, when stderr is a terminal: schedules,
    steps and the time used of the budget (after PROGRESS_AFTER_S seconds)."""

    def __init__(self, budget: float, schedules: int | None) -> None:
        self.budget = budget
        self.schedules = schedules
        self.enabled = sys.stderr.isatty()
        self.live = None

    def __call__(self, n: int, steps: int, elapsed: float) -> None:
        if not self.enabled:
            return
        from .common import PROGRESS_AFTER_S, stderr_console

        if self.live is None:
            if elapsed < PROGRESS_AFTER_S:
                return
            from rich.live import Live

            self.live = Live(console=stderr_console(), transient=True, auto_refresh=False)
            self.live.start()
        limit = f" of {self.schedules}" if self.schedules is not None else ""
        self.live.update(f"exploring: {n} schedules{limit}, {steps} steps, "
                         f"{elapsed:.0f} s of the {self.budget:g} s budget", refresh=True)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
            self.live = None


@app.command()
def explore(
    scenario: Annotated[str, typer.Argument(
        help="Scenario file (TOML) with [[thread]] tables; - reads it from standard input.",
        metavar="SCENARIO")],
    same_folio: Annotated[Optional[str], typer.Option(
        "--same-folio", metavar="STRATEGY",
        help="The same-folio strategy to check (default: the scenario's [model] same_folio; "
             "with --replay: the one recorded in the schedule file).")] = None,
    strategy: Annotated[str, typer.Option(
        "--strategy", metavar="random|pct|exhaustive",
        help="How schedules are chosen.")] = "exhaustive",
    budget: Annotated[float, typer.Option(
        "--budget", min=0, max=10 ** 9, metavar="SECONDS",
        help="Stop searching after this long.")] = 60.0,
    schedules: Annotated[Optional[int], typer.Option(
        "--schedules", min=1, metavar="N", help="Stop after N schedules.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of random and pct.")] = 0,
    bound: Annotated[int, typer.Option(
        "--bound", min=0, max=1000, metavar="K",
        help="exhaustive: at most K preemptions of ksmd; pct: K change points.")] = 2,
    jobs: Annotated[int, typer.Option(
        "--jobs", "-j", min=1, max=256, metavar="N",
        help="Explore in N processes (exhaustive: the same schedule as one process finds "
             "first; random/pct: one seed per chunk of schedules).")] = 1,
    save: Annotated[Optional[str], typer.Option(
        "--save", metavar="FILE",
        help="Where to save a failing schedule (default: SCENARIO's name with .schedule.json, "
             "in the current directory). An existing file is never replaced without "
             "--force.")] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace an existing --save FILE.")] = False,
    replay_file: Annotated[Optional[str], typer.Option(
        "--replay", metavar="FILE", help="Replay the schedule saved in FILE.")] = None,
    fail_alloc: Annotated[Optional[str], typer.Option(
        "--fail-alloc", metavar="SITES",
        help="Also explore allocation failures (-ENOMEM) at these sites: rmap_item, "
             "stable_node, stable_node_chain, folio (comma-separated) or all; each failure "
             "counts as a preemption. Give it again with --replay.")] = None,
    patch: PatchOpt = None,
) -> None:
    """Explore interleavings of ksmd with the scenario's [[thread]]s under the sanitizer.

    Stops at the first sanitizer report: prints it with the schedule that produced it, saves
    the schedule as JSON and exits 1.  With nothing found, says how many schedules and steps
    (preemption points visited) were explored and whether the whole space within the bound
    was explored or the budget ran out first, and exits 0.  On a terminal, the progress is
    shown on stderr."""
    from samepage import explore as ex_mod
    from samepage.ksm.same_folio import STRATEGIES

    apply_patch_option(patch)
    if fail_alloc is not None:
        from samepage import failinject
        from samepage.mm.failslab import parse_sites
        try:
            failinject.FAIL_ALLOC = parse_sites(fail_alloc)
        except ValueError as e:
            error_exit(f"--fail-alloc: {e}")
        from samepage.cli.common import click
        click.globals.get_current_context().call_on_close(
            lambda: setattr(failinject, "FAIL_ALLOC", ()))
    sc = load(scenario)
    if sc.timed:
        error_exit(f"{scenario}: explore runs events between batches only; at_ms events and "
                   "[[rewrite]] (time-based dynamics) run with samepage run")
    if strategy not in ex_mod.STRATEGY_NAMES:
        error_exit(f"--strategy: unknown strategy {strategy!r} "
                   f"(one of {', '.join(ex_mod.STRATEGY_NAMES)})")
    decisions = None
    recorded_report = None
    if replay_file is not None:
        with reported_errors():
            sched = ex_mod.read_schedule(replay_file)
        recorded, decisions = ex_mod.load_schedule(sched)
        recorded_report = sched.report.summary if sched.report is not None else None
        if same_folio is None and recorded is not None:
            same_folio = recorded
            if recorded not in STRATEGIES:   # a strategy this build (or patch) lacks
                error_exit(f"{replay_file}: same_folio: unknown strategy {recorded!r} "
                           f"(one of {', '.join(STRATEGIES)})")
    same_folio = same_folio or sc.model.same_folio
    if same_folio not in STRATEGIES:
        error_exit(f"--same-folio: unknown strategy {same_folio!r} "
                   f"(one of {', '.join(STRATEGIES)})")
    if not sc.threads:
        error_exit(f"{scenario}: no [[thread]] table: nothing to interleave with ksmd")
    if decisions is not None:
        with reported_errors():
            try:
                run = ex_mod.replay(sc, same_folio, decisions)
            except ex_mod.ReplayDiverged as e:
                error_exit(f"{replay_file}: replay diverged: {e}")
        print_lines(f"replay of {replay_file} ({same_folio}): {run.steps} steps")
        print("schedule:")
        print_lines("\n".join(ex_mod.format_schedule(run)))
        if run.report is None:
            print_lines("no sanitizer report" + (" (the schedule file recorded one: "
                                                 f"{recorded_report})" if recorded_report
                                                 else ""))
            return
        print_lines(run.report)
        if recorded_report is not None:
            same = run.report.summary() == recorded_report
            print_lines("the recorded report is reproduced" if same else
                        f"a different report than the recorded one: {recorded_report}")
        raise typer.Exit(1)

    path = save or default_schedule_path(scenario)
    check_schedule_path(path, scenario, force)
    progress = ExploreProgress(budget, schedules)
    with reported_errors():
        try:
            res = ex_mod.explore(sc, same_folio, strategy, budget=budget, schedules=schedules,
                                 seed=seed, bound=bound, progress=progress, jobs=jobs)
        finally:
            progress.close()
    what = (f"{res.schedules} schedules, {res.steps} steps (preemption points visited) "
            f"in {res.elapsed:.1f} s")
    if strategy == "exhaustive":
        what += f", {res.states} distinct states, preemption bound {bound}"
    if jobs > 1:
        what += f", {jobs} jobs"
    head = f"explore {scenario} ({same_folio}, {strategy})"
    if res.found is None:
        if res.stopped == "complete":
            verdict = f"the whole space within bound {bound} was explored"
        elif res.stopped == "schedules":
            verdict = (f"the limit of {schedules} schedules ran out: the space was NOT "
                       "exhausted")
        else:
            verdict = f"the budget of {budget:g} s ran out: the space was NOT exhausted"
        if strategy != "exhaustive" and res.stopped != "complete":
            verdict += f" ({strategy} search samples schedules; exhaustive covers the space)"
        print_lines(f"{head}: nothing found: {what}; {verdict}")
        return
    run = res.found
    data = ex_mod.schedule_json(None if scenario == "-" else scenario, same_folio, strategy,
                                seed, run)
    try:
        ex_mod.save_schedule(path, data, force=force)
        saved = f"schedule saved to {path} (samepage explore {scenario} --replay {path})"
    except FileExistsError:      # created during the search
        saved = f"schedule NOT saved: {path} appeared during the search (use --force)"
    except OSError as e:
        saved = f"schedule NOT saved: {path}: {e.strerror or e}"
    print_lines(f"{head}: {run.report.kind} found after {what}")
    print("schedule:")
    print_lines("\n".join(ex_mod.format_schedule(run)))
    print_lines(run.report)
    print_lines(saved)
    raise typer.Exit(1)


app.command("compare")(_compare_command)

from .capture import register as _register_capture  # noqa: E402
_register_capture(app)

from .forecast import register as _register_forecast  # noqa: E402
from .kernel import kernel_app as _kernel_app  # noqa: E402
_register_forecast(app, _kernel_app)   # samepage forecast, samepage kernel measure

from .sweep import register as _register_sweep  # noqa: E402
_register_sweep(app)                   # samepage sweep
