"""``samepage kernel ...``: the live kernel's KSM.

* ``samepage kernel run SCENARIO``: run a scenario on this machine's real KSM and print the
  same report (or ``--json`` trace) as ``samepage run``;
* ``samepage kernel record SCENARIO -o TRACE.jsonl``: the same, saving the trace;
* ``samepage kernel status`` / ``samepage kernel top``: what KSM is doing on this machine
  (samepage.cli.status).

Running a scenario needs root and a writable /sys/kernel/mm/ksm. It takes the machine-wide KSM
lock (``--wait SECONDS`` to wait for another run), refuses to start while other processes
have mergeable memory (``--force``), saves every KSM and THP setting and restores them on
success, error, Ctrl-C, SIGTERM or SIGHUP, and ends every process it started
(samepage.kernel.runner). Every failure is one line on stderr and exit status 2; an
interrupted run exits with 130 (Ctrl-C) or 128 + the signal number.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from samepage.scenario import Scenario, ScenarioError, write_trace_jsonl
from samepage.scenario.model_runner import ScenarioRunError

from .common import (
    CliError,
    LazyProgress,
    check_plot,
    error_exit,
    load,
    one_line,
    print_run_report,
    printable,
    scenario_title,
    stdout_console,
    with_batches,
    write_plot,
)

kernel_app = typer.Typer(
    name="kernel",
    help="The live kernel's KSM: run or record a scenario on it (root), or watch it "
         "(status, top).",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,             # plain help text, as the root command's
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

KSM_DIR = "/sys/kernel/mm/ksm"


# ------------------------------------------------------------------------------ checks


def require_live_ksm(what: str) -> None:
    """Exit 2 with one line unless this process may drive the live KSM."""
    from samepage.kernel import ksm_writable

    if not os.path.exists(os.path.join(KSM_DIR, "run")):
        error_exit(f"{what} needs the live kernel's KSM, and {KSM_DIR} does not exist "
                   "(a kernel built without CONFIG_KSM?)")
    if os.geteuid() != 0:
        error_exit(f"{what} needs root: it writes {KSM_DIR} and watches ksmd (run it as root, "
                   "e.g. with sudo)")
    if not ksm_writable():
        error_exit(f"{what} needs a writable {KSM_DIR}, and {KSM_DIR}/run cannot be opened for "
                   "writing (read-only sysfs, e.g. in a container?)")


@contextmanager
def kernel_errors(scenario_path: str | None = None, info: dict | None = None) -> Iterator[None]:
    """The harness's failures as one line on stderr: exit 2, or 130 / 128+N when a signal
    stopped the run (the settings are restored and the processes ended by then)."""
    from samepage.kernel import KsmdError, KsmLockTimeout, Terminated, UnreliableTrace
    from samepage.kernel.runner import ForeignKsmUsers
    from samepage.kernel.worker import WorkerBuildError, WorkerError

    def restored() -> str:
        errs = (info or {}).get("restore_errors")
        if errs:
            return "KSM settings NOT fully restored: " + "; ".join(errs)
        return "KSM settings restored and every process the run started ended"

    try:
        yield
    except (typer.Exit, typer.Abort, BrokenPipeError):
        raise
    except (ScenarioError, ScenarioRunError, CliError) as e:
        error_exit(str(e))
    except KeyboardInterrupt:
        print(f"samepage: interrupted; {restored()}", file=sys.stderr, flush=True)
        raise typer.Exit(130)
    except Terminated as e:
        print(f"samepage: terminated by signal {e.signum}; {restored()}", file=sys.stderr,
              flush=True)
        raise typer.Exit(128 + e.signum)
    except KsmLockTimeout as e:
        error_exit(f"{e}; another samepage run is using KSM: wait for it with --wait SECONDS")
    except ForeignKsmUsers as e:
        error_exit(str(e))
    except UnreliableTrace as e:
        error_exit(f"unreliable run, the trace was dropped: {e} (a busy machine: run again, "
                   "or use --retries N)")
    except (KsmdError, WorkerError, WorkerBuildError) as e:
        error_exit(str(e))
    except ValueError as e:  # check_scenario: something the harness cannot run
        where = f"{scenario_path}: " if scenario_path else ""
        error_exit(f"{where}cannot run on the live kernel: {e}")
    except OSError as e:  # PermissionError, a sysfs write the kernel refused, ...
        where = f"{e.filename}: " if getattr(e, "filename", None) and \
            str(e.filename) not in str(e) else ""
        error_exit(f"{where}{e.strerror or e}" if not isinstance(e, PermissionError) else
                   f"{where}{e}")
    except RuntimeError as e:
        error_exit(one_line(e))


# ------------------------------------------------------------------------------ running


@dataclass
class KernelRun:
    """A scenario run on the live kernel: its trace, timing and the harness's diagnostics."""

    records: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def release(self) -> str:
        return (self.final or {}).get("kernel") or os.uname().release

    @property
    def cpu_ms(self) -> float | None:
        """ksmd's CPU time over the batches, measured (/proc/<ksmd>/schedstat)."""
        b = self.info.get("batches")
        if not b:
            return None
        return sum(x.get("ksmd_cpu_us", 0.0) for x in b) / 1000


def run_on_kernel(sc: Scenario, *, wait: float = 0.0, force: bool = False, retries: int = 0,
                  drain_lru: bool = False, check_lru: bool = True, stream=None,
                  progress: LazyProgress | None = None, info: dict | None = None) -> KernelRun:
    """Run ``sc`` on the live KSM (samepage.kernel.record.run_with_retries). ``stream``: a
    text file that gets every record as JSON Lines as soon as it is read (only when
    ``retries`` is 0: a retried run would repeat lines). ``info`` is filled with the harness's
    diagnostics (also on failure)."""
    from samepage.kernel.record import run_with_retries

    kr = KernelRun(info=info if info is not None else {})
    streaming = stream is not None and retries == 0

    def on_progress(kind: str, data: dict) -> None:
        if kind != "batch":
            return
        if streaming:
            write_trace_jsonl([data], stream)
            stream.flush()
        if progress is not None:
            progress.advance()

    t0 = time.perf_counter()
    kr.records, kr.final = run_with_retries(
        sc, retries=retries, info=kr.info, progress=on_progress, lock_timeout=wait,
        drain_lru=drain_lru, check_lru=check_lru, force=force)
    # the time spent waiting for another run's lock is not this run's
    kr.wall_s = time.perf_counter() - t0 - float(kr.info.get("lock_wait_s") or 0.0)
    if stream is not None:
        write_trace_jsonl(kr.records if not streaming else [], stream)
        write_trace_jsonl([kr.final], stream)
        stream.flush()
    return kr


WaitOpt = Annotated[float, typer.Option(
    "--wait", min=0, metavar="SECONDS",
    help="If another samepage run holds the KSM lock, wait up to SECONDS for it (default: "
         "fail at once).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Run even if other processes on the machine have mergeable memory: "
                    "run = 2 unmerges their pages and ksmd scans them with the scenario's, "
                    "so the trace is not the scenario's alone.")]
RetriesOpt = Annotated[int, typer.Option(
    "--retries", min=0, metavar="N",
    help="Run again, up to N times, when a run is unreliable (a busy machine). With --json "
         "the trace is then printed at the end rather than batch by batch.")]
DrainOpt = Annotated[bool, typer.Option(
    "--drain-lru", help="Empty every CPU's LRU add batch after each group of events (not what "
                        "the model does; see docs/kernel-findings.md).")]
NoLruCheckOpt = Annotated[bool, typer.Option(
    "--no-lru-check", help="Do not watch the workers' CPU's LRU add batch for other "
                           "processes' pages.")]


def _kernel_run_command(scenario: str, batches: int | None, json_out: bool, plot: Path | None,
                        quiet: bool, wait: float, force: bool, retries: int, drain_lru: bool,
                        no_lru_check: bool, output: Path | None, what: str) -> None:
    sc = with_batches(load(scenario), batches)
    from samepage.kernel import check_scenario

    with kernel_errors(scenario):
        check_scenario(sc)               # a scenario the harness refuses: before the root check
    check_plot(plot)
    if output is not None and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        error_exit(f"{output}: no such directory: {os.path.dirname(os.path.abspath(output))}")
    require_live_ksm(what)
    title = scenario_title(sc, scenario)
    info: dict = {}
    with kernel_errors(scenario, info):
        with LazyProgress(sc.run.batches, enabled=not quiet and not json_out) as progress:
            kr = run_on_kernel(sc, wait=wait, force=force, retries=retries, drain_lru=drain_lru,
                               check_lru=not no_lru_check, stream=sys.stdout if json_out else None,
                               progress=progress, info=info)
        if output is not None:
            try:
                with open(output, "w") as f:
                    write_trace_jsonl([*kr.records, kr.final], f)
            except OSError as e:
                raise CliError(f"{output}: cannot write the trace: {e.strerror or e}") from None
        if plot is not None:
            write_plot(plot, kr.records, f"{title} (Linux {printable(kr.release)})")
    if json_out:
        return
    con = stdout_console()
    print_run_report(con, title=title, records=kr.records, final=kr.final,
                     where=f"the live kernel (Linux {printable(kr.release)})", wall_s=kr.wall_s,
                     cpu_ms=kr.cpu_ms, time_label="measured time", plot=plot, quiet=quiet)
    if output is not None:
        con.print(f"trace written to {printable(output)}", soft_wrap=True, markup=False)


@kernel_app.command("run")
def kernel_run(
    scenario: Annotated[str, typer.Argument(help="Scenario file (TOML).", metavar="SCENARIO")],
    batches: Annotated[Optional[int], typer.Option(
        "--batches", "-n", min=1, metavar="N",
        help="Record N batches instead of the scenario's run.batches.")] = None,
    json_out: Annotated[bool, typer.Option(
        "--json", help="Print only the trace, as JSON Lines, on stdout (batch by batch).")] = False,
    plot: Annotated[Optional[Path], typer.Option(
        "--plot", metavar="FILE.png", dir_okay=False,
        help="Also draw the counters over the batches into FILE.png.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the summary (with --json: nothing but the trace).")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="TRACE.jsonl", dir_okay=False,
        help="Also save the trace (JSON Lines) into this file.")] = None,
    wait: WaitOpt = 0.0,
    force: ForceOpt = False,
    retries: RetriesOpt = 0,
    drain_lru: DrainOpt = False,
    no_lru_check: NoLruCheckOpt = False,
) -> None:
    """Run a scenario on this machine's real KSM (root) and print the counters after every
    ksmd batch, like samepage run."""
    _kernel_run_command(scenario, batches, json_out, plot, quiet, wait, force, retries,
                        drain_lru, no_lru_check, output, "samepage kernel run")


@kernel_app.command("record")
def kernel_record(
    scenario: Annotated[str, typer.Argument(help="Scenario file (TOML).", metavar="SCENARIO")],
    output: Annotated[Path, typer.Option(
        "--output", "-o", metavar="TRACE.jsonl", dir_okay=False,
        help="The trace file to write (JSON Lines).")],
    batches: Annotated[Optional[int], typer.Option(
        "--batches", "-n", min=1, metavar="N",
        help="Record N batches instead of the scenario's run.batches.")] = None,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Only the summary.")] = False,
    wait: WaitOpt = 0.0,
    force: ForceOpt = False,
    retries: RetriesOpt = 0,
    drain_lru: DrainOpt = False,
    no_lru_check: NoLruCheckOpt = False,
) -> None:
    """Record a scenario's trace on this machine's real KSM (root) into TRACE.jsonl, for
    samepage compare SCENARIO --against TRACE.jsonl on any machine."""
    _kernel_run_command(scenario, batches, False, None, quiet, wait, force, retries,
                        drain_lru, no_lru_check, output, "samepage kernel record")


from . import status as _status  # noqa: E402,F401  (registers kernel status / kernel top)
from . import calibrate as _calibrate  # noqa: E402,F401  (registers kernel calibrate)
from .exporter import register as _register_exporter  # noqa: E402
_register_exporter(kernel_app)         # samepage kernel exporter
