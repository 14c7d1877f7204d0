"""``samepage kernel calibrate [-o costs.toml]``: fit the CPU cost model on this machine.

Runs the calibration suite (samepage/data/calibration/*.toml, or ``--suite DIR``) ``--runs``
times on the live kernel through the harness (lock, saved and restored settings, refusal
while other processes have mergeable memory unless ``--force``) and once on the model, fits
the per-operation costs (samepage.kernel.calibrate), prints predicted and measured CPU per
scenario and phase, and writes the profile (``-o``) for ``samepage run --costs FILE``,
``[model] costs = "FILE"`` or ``Machine(costs=FILE)``.  ``--from-traces DIR`` refits from the
kernel traces a previous ``--save-traces DIR`` kept, without touching the kernel.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich import box
from rich.table import Table

from .common import error_exit, markup_safe, stdout_console
from .kernel import ForceOpt, WaitOpt, kernel_app, kernel_errors, require_live_ksm


def _ratio_style(r: float) -> str:
    if not math.isfinite(r):
        return "dim"
    return "green" if 0.85 <= r <= 1.15 else "yellow" if 0.7 <= r <= 1.3 else "red"


def print_fit(con, fit) -> None:
    from samepage.kernel.calibrate import PHASE_TITLES
    t = Table(title="ksmd CPU time per scenario and phase: the fitted model and the kernel "
                    "(median of the runs)", box=box.SIMPLE_HEAD, title_justify="left")
    for col, just in (("scenario", "left"), ("phase", "left"), ("model ms", "right"),
                      ("kernel ms", "right"), ("model/kernel", "right"),
                      ("kernel spread", "right")):
        t.add_column(col, justify=just)
    for d in fit.data:
        spread = d.run_spread()
        for ph, (pred, meas) in d.phase_sums(fit.costs).items():
            r = pred / meas if meas > 0 else float("nan")
            sp = f"{100 * spread[ph]:.0f}%" if ph in spread else "-"
            t.add_row(markup_safe(d.name), PHASE_TITLES[ph], f"{pred:.2f}", f"{meas:.2f}",
                      f"[{_ratio_style(r)}]{r:.2f}[/]", sp)
    con.print(t)
    c = Table(title="fitted cost per operation", box=box.SIMPLE_HEAD, title_justify="left")
    c.add_column("operation")
    c.add_column("ns", justify="right")
    for name, v in fit.costs.ns.items():
        c.add_row(name, f"{v:.1f}")
    con.print(c)
    res = fit.residuals()
    for ph, v in res.items():
        parts = ", ".join(f"{k.replace('_', ' ')} {100 * x:.1f}%" for k, x in v.items())
        con.print(f"residuals, {PHASE_TITLES.get(ph, 'single batches')}: {parts}",
                  soft_wrap=True, markup=False)
    left = sum(d.mismatched_batches for d in fit.data)
    if left:
        con.print(f"{left} batches left out: the kernel's counters differed from the model's",
                  soft_wrap=True, markup=False)


@kernel_app.command("calibrate")
def kernel_calibrate(
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="COSTS.toml", dir_okay=False,
        help="Write the fitted cost profile here (for samepage run --costs).")] = None,
    runs: Annotated[int, typer.Option(
        "--runs", min=1, max=20, metavar="N",
        help="Kernel runs per scenario; the fit uses each batch's median.")] = 3,
    suite: Annotated[Optional[Path], typer.Option(
        "--suite", metavar="DIR", file_okay=False,
        help="Scenario files (*.toml) to calibrate on instead of the built-in suite.")] = None,
    save_traces: Annotated[Optional[Path], typer.Option(
        "--save-traces", metavar="DIR", file_okay=False,
        help="Keep the kernel traces (with ksmd_cpu_us) in DIR.")] = None,
    from_traces: Annotated[Optional[Path], typer.Option(
        "--from-traces", metavar="DIR", file_okay=False,
        help="Fit on traces saved by --save-traces instead of running the kernel.")] = None,
    wait: WaitOpt = 0.0,
    force: ForceOpt = False,
) -> None:
    """Fit ksmd's CPU cost per operation to this machine's kernel (root): runs the
    calibration suite on the live KSM and on the model, prints predicted and measured CPU per
    scenario and phase, and writes a cost profile."""
    from samepage.kernel import calibrate as cal
    from samepage.ksm.costs import write_profile

    if suite is not None and not suite.is_dir():
        error_exit(f"{suite}: no such directory")
    paths = cal.suite_paths(suite)
    if not paths:
        error_exit(f"{suite}: no scenario files (*.toml)")
    for d in (save_traces, from_traces):
        if d is not None and not d.is_dir():
            error_exit(f"{d}: no such directory")
    if output is not None and not os.path.isdir(os.path.dirname(os.path.abspath(output))):
        error_exit(f"{output}: no such directory: {os.path.dirname(os.path.abspath(output))}")
    con = stdout_console()
    info: dict = {}
    with kernel_errors(None, info):
        if from_traces is not None:
            data = cal.data_from_saved(paths, from_traces)
            if not data:
                error_exit(f"{from_traces}: no saved kernel traces of the suite's scenarios")
            costs = cal.fit_costs(data)
            fit = cal.Fit(costs, data)
            costs.meta = cal.profile_meta(fit, costs.hz)
            costs.meta["kernel_release"] = next(
                (t for t in [_trace_release(from_traces)] if t), costs.meta["kernel_release"])
        else:
            require_live_ksm("samepage kernel calibrate")
            fit = cal.calibrate(paths, runs=runs, wait=wait, force=force, save_traces=save_traces,
                                progress=lambda m: print(m, file=sys.stderr, flush=True))
    print_fit(con, fit)
    if output is not None:
        try:
            write_profile(fit.costs, output, comment=(
                "ksmd CPU cost profile written by samepage kernel calibrate\n"
                "use it with: samepage run --costs FILE, [model] costs = \"FILE\", "
                "Machine(costs=FILE)"))
        except OSError as e:
            error_exit(f"{output}: cannot write the profile: {e.strerror or e}")
        con.print(f"profile written to {output}", soft_wrap=True, markup=False)
    else:
        con.print("(not saved: use -o COSTS.toml to write the profile)", soft_wrap=True,
                  markup=False)


def _trace_release(directory: Path) -> str | None:
    import json
    for f in sorted(directory.glob("*.kernel*.jsonl")):
        try:
            lines = f.read_text().splitlines()
            last = json.loads(lines[-1]) if lines else {}
        except (OSError, ValueError):
            continue
        if isinstance(last, dict) and isinstance(last.get("kernel"), str):
            return last["kernel"]
    return None
