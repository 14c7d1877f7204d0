"""``samepage run SCENARIO --policy NAME|FILE.py:Class|all``: a KSM tuning policy acting on
the model in simulated time (samepage.scenario.policy_runner), or all of them compared."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from samepage.policy import BUILTIN, COMPARED, PRESETS
from samepage.scenario.errors import ScenarioError
from samepage.scenario.policy_runner import PolicyRun, run_with_policy, scenario_policy

from .text import markup_safe


def _policy_or_none(sc, name: str):
    return None if name == "none" else scenario_policy(sc, name)


def _source(name: str) -> str:
    if name == "none":
        return "the scenario's [ksm] settings, run = 1 (nobody tunes)"
    if name == "proxmox":
        return ("proxmox/ksm-control-daemon @2349336: ksmtuned with KSM_SLEEP_MSEC=100, "
                "ps -C kvm -o pss")
    base = PRESETS.get(name, (name, {}))[0]
    cls = BUILTIN.get(base)
    return cls.source if cls else name


def _fmt_s(t: float | None) -> str:
    return "never" if t is None else f"{t:g} s"


def run_one(con: Console, sc, title: str, name: str, duration: float | None,
            json_out: bool, plot: Path | None, quiet: bool) -> None:
    r = run_with_policy(sc, _policy_or_none(sc, name), duration)
    if json_out:
        for s in r.samples:
            sys.stdout.write(json.dumps({"policy": r.policy, **s}) + "\n")
        return
    if plot is not None:
        plot_saved(plot, [r], title)
    if not quiet:
        t = Table(title=f"{markup_safe(title)}: policy {markup_safe(r.policy)}",
                  title_justify="left")
        for c in ("t (s)", "saved MiB", "run", "pages_to_scan", "sleep_ms", "MemFree MiB",
                  "MemAvailable MiB", "ksmd CPU ms", "sysfs writes"):
            t.add_column(c, justify="right")
        step = max(1, len(r.samples) // 30)
        for s in r.samples[::step]:
            t.add_row(f"{s['t_s']:g}", f"{s['saved_mib']:.1f}", str(s["run"]),
                      str(s["pages_to_scan"]), str(s["sleep_millisecs"]),
                      f"{s['MemFree'] / 1024:.0f}", f"{s['MemAvailable'] / 1024:.0f}",
                      f"{s['ksmd_cpu_ms']:.0f}", str(s["sysfs_writes"]))
        con.print(t)
    print_summary(con, r)


def print_summary(con: Console, r: PolicyRun) -> None:
    final = r.samples[-1]["saved_mib"] if r.samples else 0.0
    con.print(f"{markup_safe(r.policy)}: saved {final:.1f} MiB after {r.duration_ms / 1000:g} s "
              f"(settled at {_fmt_s(r.converged_s())}); ksmd CPU {r.ksmd_cpu_ms:.0f} ms, "
              f"{r.cpu_percent:.2f}% of one CPU over {r.batches} batches; "
              f"{len(r.writes)} sysfs writes"
              + (f", {len(r.failed_writes)} refused" if r.failed_writes else "") + ".",
              soft_wrap=True)


def compare_policies(sc, duration: float | None, progress=None) -> list[PolicyRun]:
    """Every policy on the scenario; ``progress(i, n, name)`` is called before each."""
    names = ("none", *COMPARED)
    runs = []
    for i, n in enumerate(names):
        if progress is not None:
            progress(i, len(names), n)
        runs.append(run_with_policy(sc, _policy_or_none(sc, n), duration, label=n))
    return runs


def _stderr_progress():
    """A one-line progress report on stderr when it is a terminal (each policy takes seconds
    to tens of seconds), else None."""
    if not sys.stderr.isatty():
        return None

    def show(i: int, n: int, name: str) -> None:
        sys.stderr.write(f"\r\x1b[Krunning policy {i + 1} of {n}: {name} ...")
        sys.stderr.flush()
    return show


def print_policy_comparison(con: Console, sc, title: str, duration: float | None,
                            plot: Path | None) -> None:
    show = _stderr_progress()
    try:
        runs = compare_policies(sc, duration, progress=show)
    finally:
        if show is not None:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
    dur = runs[0].duration_ms / 1000
    times = [dur * f for f in (0.1, 0.25, 0.5, 0.75, 1.0)]
    t = Table(title=f"{markup_safe(title)}: tuning policies over {dur:g} s (simulated)",
              title_justify="left")
    t.add_column("policy", style="bold")
    for x in times:
        t.add_column(f"saved MiB at {x:g} s", justify="right")
    for c in ("settled at", "ksmd CPU %", "sysfs writes"):
        t.add_column(c, justify="right")
    for r in runs:
        t.add_row(r.policy, *(f"{r.saved_mib_at(x):.1f}" for x in times),
                  _fmt_s(r.converged_s()), f"{r.cpu_percent:.2f}", str(len(r.writes)))
    con.print(t)
    con.print("[dim]saved MiB = pages_sharing x 4 KiB as ksmd last counted it; settled at = "
              "from then on within 1% of the final saving; ksmd CPU from the model's cost "
              "profile.[/]", soft_wrap=True)
    for r in runs:
        con.print(f"[dim]{r.policy:10s} {markup_safe(_source(r.policy))}[/]", soft_wrap=True)
    if plot is not None:
        plot_saved(plot, runs, title)
        con.print(f"Plot written to {markup_safe(str(plot))}.", soft_wrap=True)


def plot_saved(path: Path, runs: list[PolicyRun], title: str) -> None:
    """Saved MiB over simulated time, one line per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for r in runs:
        ax.step([s["t_s"] for s in r.samples], [s["saved_mib"] for s in r.samples],
                where="post", label=r.policy)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("saved MiB (pages_sharing)")
    ax.set_title(title)
    ax.legend()
    try:
        fig.savefig(path)
    except (OSError, ValueError) as e:
        raise ScenarioError(str(path), "(plot)", f"cannot write the plot: {e}") from None
    finally:
        plt.close(fig)
