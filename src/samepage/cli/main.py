"""The ``samepage`` command: run scenarios on the model, a built-in demo, validation; the
live kernel (``samepage kernel ...``, samepage.cli.kernel) and model-vs-kernel comparison
(``samepage compare``, samepage.cli.compare).

Every expected failure (a bad scenario file, a scenario that cannot be carried out, an unwritable
plot) is reported as one line ``samepage: error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from samepage import KERNEL_RELEASE_MODELLED, __version__
from samepage.scenario import Scenario, ScenarioError, load_scenario, load_scenario_text, \
    write_trace_jsonl
from samepage.scenario.model_runner import iter_model_trace

from . import report
from .common import (
    EXIT_ERROR,
    LazyProgress,
    check_plot,
    error_exit,
    load,
    print_run_report,
    reported_errors,
    scenario_title,
    stdout_console,
    write_plot,
)

DEMO_RESOURCE = "data/demo.toml"

app = typer.Typer(
    name="samepage",
    help="An executable model of Linux 6.18 KSM (Kernel Samepage Merging).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


class Run:
    """A scenario run on the model: its batch records, final record and machine."""

    def __init__(self, scenario: Scenario, batches: int | None = None,
                 same_folio: str | None = None, sanitize: bool = False) -> None:
        self.scenario = scenario
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
                                    same_folio=self.same_folio, sanitize=self.sanitize):
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
) -> None:
    """Run a scenario on the model and print the KSM counters after every ksmd batch."""
    sc = load(scenario)
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
    check_plot(plot)
    title = scenario_title(sc, scenario)
    r = Run(sc, batches, same_folio, sanitize)
    out = sys.stdout
    from samepage.sanitizer import SanitizerReport
    with reported_errors():
        try:
            with LazyProgress(r.total, enabled=not quiet) as progress:
                for rec in r:
                    if json_out:
                        write_trace_jsonl([rec], out)
                    if "batch" in rec:
                        progress.advance()
        except SanitizerReport as rep:
            out.flush()
            print(f"samepage: {rep}", file=sys.stderr, flush=True)
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


# ------------------------------------------------------------------------------ the live kernel
# (registered last: these modules import the helpers above)

from .compare import compare as _compare_command  # noqa: E402
from .kernel import kernel_app  # noqa: E402

app.add_typer(kernel_app, name="kernel")


# ------------------------------------------------------------------------------ explore


@app.command()
def explore(
    scenario: Annotated[str, typer.Argument(help="Scenario file (TOML) with [[thread]] tables.",
                                            metavar="SCENARIO")],
    same_folio: Annotated[Optional[str], typer.Option(
        "--same-folio", metavar="STRATEGY",
        help="The same-folio strategy to check (default: the scenario's [model] same_folio; "
             "with --replay: the one recorded in the schedule file).")] = None,
    strategy: Annotated[str, typer.Option(
        "--strategy", metavar="random|pct|exhaustive",
        help="How schedules are chosen.")] = "exhaustive",
    budget: Annotated[float, typer.Option(
        "--budget", min=0, metavar="SECONDS", help="Stop searching after this long.")] = 60.0,
    schedules: Annotated[Optional[int], typer.Option(
        "--schedules", min=1, metavar="N", help="Stop after N schedules.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of random and pct.")] = 0,
    bound: Annotated[int, typer.Option(
        "--bound", min=0, metavar="K",
        help="exhaustive: at most K preemptions of ksmd; pct: K change points.")] = 2,
    save: Annotated[Optional[str], typer.Option(
        "--save", metavar="FILE",
        help="Where to save a failing schedule (default SCENARIO.schedule.json).")] = None,
    replay_file: Annotated[Optional[str], typer.Option(
        "--replay", metavar="FILE", help="Replay the schedule saved in FILE.")] = None,
) -> None:
    """Explore interleavings of ksmd with the scenario's [[thread]]s under the sanitizer.

    Stops at the first sanitizer report: prints it with the schedule that produced it, saves
    the schedule as JSON and exits 1.  With nothing found, prints how many schedules and
    steps (preemption points visited) were explored and exits 0."""
    import json

    from samepage import explore as ex_mod
    from samepage.ksm.same_folio import STRATEGIES

    sc = load(scenario)
    if strategy not in ex_mod.STRATEGY_NAMES:
        error_exit(f"--strategy: unknown strategy {strategy!r} "
                   f"(one of {', '.join(ex_mod.STRATEGY_NAMES)})")
    decisions = None
    recorded_report = None
    if replay_file is not None:
        try:
            with open(replay_file) as f:
                data = json.load(f)
            recorded, decisions = ex_mod.load_schedule(data)
            recorded_report = (data.get("report") or {}).get("summary")
        except OSError as e:
            error_exit(f"{replay_file}: {e.strerror or e}")
        except (ValueError, KeyError, TypeError) as e:
            error_exit(f"{replay_file}: not a schedule file ({e})")
        same_folio = same_folio or recorded
    same_folio = same_folio or sc.model.same_folio
    if same_folio not in STRATEGIES:
        error_exit(f"--same-folio: unknown strategy {same_folio!r} "
                   f"(one of {', '.join(STRATEGIES)})")
    if not sc.threads:
        error_exit(f"{scenario}: no [[thread]] table: nothing to interleave with ksmd")
    with reported_errors():
        if decisions is not None:
            try:
                run = ex_mod.replay(sc, same_folio, decisions)
            except ex_mod.ReplayDiverged as e:
                error_exit(f"replay diverged: {e}")
            print(f"replay of {replay_file} ({same_folio}): {run.steps} steps")
            print("schedule:")
            print("\n".join(ex_mod.format_schedule(run)))
            if run.report is None:
                print("no sanitizer report" + (" (the schedule file recorded one: "
                                               f"{recorded_report})" if recorded_report
                                               else ""))
                return
            print(str(run.report))
            if recorded_report is not None:
                same = run.report.summary() == recorded_report
                print("the recorded report is reproduced" if same else
                      f"a different report than the recorded one: {recorded_report}")
            raise typer.Exit(1)
        res = ex_mod.explore(sc, same_folio, strategy, budget=budget, schedules=schedules,
                             seed=seed, bound=bound)
    what = (f"{res.schedules} schedules, {res.steps} steps (preemption points visited) "
            f"in {res.elapsed:.1f} s")
    if res.found is None:
        extra = ("; the whole space within the bound was explored" if res.complete else "")
        print(f"explore {scenario} ({same_folio}, {strategy}): nothing found: {what}{extra}")
        return
    run = res.found
    path = save or f"{scenario}.schedule.json"
    data = ex_mod.schedule_json(scenario, same_folio, strategy, seed, run)
    try:
        ex_mod.save_schedule(path, data)
    except OSError as e:
        error_exit(f"{path}: {e.strerror or e}")
    print(f"explore {scenario} ({same_folio}, {strategy}): {run.report.kind} found "
          f"after {what}")
    print("schedule:")
    print("\n".join(ex_mod.format_schedule(run)))
    print(str(run.report))
    print(f"schedule saved to {path} (samepage explore {scenario} --replay {path})")
    raise typer.Exit(1)
app.command("compare")(_compare_command)
