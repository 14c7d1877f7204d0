#!/usr/bin/env python3
"""ksmd's CPU time: the model's prediction against the live kernel, on workloads the fit
never saw (issue 9).

Runs every workload of ``benchmarks/cpu_workloads/*.toml`` and the demo scenario (with
sleep_millisecs = 150, as the harness needs) once on the model and ``--runs`` times on this
machine's kernel through the harness (root; KSM lock, settings restored), and prints per
workload and phase (first full scan, merging scan, steady scans; docs/cpu-model.md) the
model's CPU, the kernel's (median of the runs' phase totals), their ratio and the spread
of the kernel runs ((max - min) / median).  Batches whose counters differ from the model's
are left out on both sides.

    python benchmarks/cpu_fidelity.py [--runs 3] [--costs COSTS.toml | --calibrate]
                                      [--wait S] [--save DIR | --from DIR] [--json]

``--from DIR`` reuses the kernel traces a previous ``--save DIR`` kept (no root needed).
``--calibrate`` also runs the calibration suite, interleaved with the workloads so that both
see the same machine conditions, fits the costs on the suite alone (the workloads stay
unseen) and predicts the workloads with that profile (``--write-profile FILE`` keeps it).
Exit status 0 when every ratio lies within 0.85-1.15, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from importlib import resources
from pathlib import Path

from samepage.kernel.calibrate import PHASE_TITLES, PHASES, samples_from_traces
from samepage.ksm.costs import resolve_costs
from samepage.scenario import load_scenario, read_trace
from samepage.scenario.loader import load_scenario_text
from samepage.scenario.model_runner import run_scenario_on_model

HERE = Path(__file__).parent
LOW, HIGH = 0.85, 1.15


def workloads() -> list[tuple[str, object]]:
    out = []
    for p in sorted((HERE / "cpu_workloads").glob("*.toml")):
        out.append((p.stem, load_scenario(p)))
    demo = resources.files("samepage.data").joinpath("demo.toml").read_text()
    demo = demo.replace("sleep_millisecs = 20\n", "sleep_millisecs = 150\n")
    out.append(("demo", load_scenario_text(demo, "demo.toml")))
    return out


def phase_totals(data, costs) -> dict[str, tuple[float, list[float]]]:
    """phase -> (model ms, kernel ms of each run), over the batches whose counters matched
    the model's in every run."""
    out = {}
    for ph in PHASES:
        ss = [s for s in data.samples if s.phase == ph and len(s.measured_us) == data.runs]
        if not ss:
            continue
        out[ph] = (sum(costs.cpu_ns(s.ops) for s in ss) / 1e6,
                   [sum(s.measured_us[r] for s in ss) / 1000 for r in range(data.runs)])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--costs", help="cost profile (default: the shipped one)")
    ap.add_argument("--wait", type=float, default=600.0)
    ap.add_argument("--save", type=Path, help="keep the kernel traces in DIR")
    ap.add_argument("--from", dest="from_dir", type=Path, help="reuse traces saved in DIR")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--calibrate", action="store_true",
                    help="also run the calibration suite, interleaved with the workloads "
                         "(same machine conditions), fit on it alone and use that profile")
    ap.add_argument("--write-profile", type=Path, help="with --calibrate: save the profile")
    a = ap.parse_args(argv)
    costs = resolve_costs(a.costs)
    rows = []
    wl = workloads()
    calib = []
    if a.calibrate:
        from samepage.kernel.calibrate import suite_paths
        calib = [(p.stem, load_scenario(p)) for p in suite_paths()]
    if a.costs is not None:
        wl = [(name, sc.model_copy(update={"model": sc.model.model_copy(
            update={"costs": str(Path(a.costs).resolve())})})) for name, sc in wl]
    if a.from_dir is not None:
        all_runs = {name: [read_trace(f)[0] for f in sorted(a.from_dir.glob(f"{name}.kernel*.jsonl"))]
                    for name, _ in [*calib, *wl]}
    else:
        # round-robin over the workloads (and the calibration suite): a change of the
        # machine's load affects all alike
        from samepage.kernel.calibrate import run_round_robin
        if a.save is not None:
            a.save.mkdir(parents=True, exist_ok=True)
        all_runs = run_round_robin([*calib, *wl], a.runs, wait=a.wait, force=False,
                                   save_traces=a.save,
                                   progress=lambda m: print(m, file=sys.stderr, flush=True))
    if calib:
        from samepage.kernel.calibrate import Fit, fit_costs, model_records, profile_meta
        data = [samples_from_traces(model_records(sc), all_runs[name], name)
                for name, sc in calib if all_runs[name]]
        costs = fit_costs(data)
        costs.meta = profile_meta(Fit(costs, data), costs.hz)
        costs.source = "fitted in this run on the calibration suite"
        if a.write_profile is not None:
            from samepage.ksm.costs import write_profile
            write_profile(costs, a.write_profile)
    for name, sc in wl:
        model = run_scenario_on_model(sc).records    # its ops, priced below by ``costs``
        kruns = all_runs[name]
        if not kruns:
            print(f"{name}: no kernel traces", file=sys.stderr)
            continue
        data = samples_from_traces(model, kruns, name)
        for ph, (pred, runs) in phase_totals(data, costs).items():
            kmed = statistics.median(runs)
            spread = (max(runs) - min(runs)) / kmed if kmed > 0 else 0.0
            rows.append({"workload": name, "phase": ph, "model_ms": round(pred, 2),
                         "kernel_ms": round(kmed, 2), "ratio": round(pred / kmed, 3),
                         "kernel_runs_ms": [round(x, 2) for x in runs],
                         "kernel_spread": round(spread, 3),
                         "inside_kernel_range": min(runs) <= pred <= max(runs),
                         "batches_left_out": sum(1 for s in data.samples
                                                 if len(s.measured_us) < data.runs)
                         + data.mismatched_batches})
    if a.json:
        print(json.dumps({"costs": costs.source, "rows": rows}, indent=1))
    else:
        print(f"cost profile: {costs.source or 'built-in'}; kernel: median of the runs "
              f"(up to {a.runs}; runs the harness dropped are left out)")
        print(f"{'workload':28} {'phase':16} {'model ms':>9} {'kernel ms':>9} {'ratio':>6} "
              f"{'kernel runs (ms)':>28} {'spread':>6}")
        for r in rows:
            ok = "" if LOW <= r["ratio"] <= HIGH else "  <-- outside 0.85-1.15" + (
                " (inside the kernel runs' range)" if r["inside_kernel_range"] else "")
            kr = " / ".join(f"{x:.1f}" for x in r["kernel_runs_ms"])
            print(f"{r['workload']:28} {PHASE_TITLES[r['phase']]:16} {r['model_ms']:9.2f} "
                  f"{r['kernel_ms']:9.2f} {r['ratio']:6.2f} {kr:>28} "
                  f"{100 * r['kernel_spread']:5.0f}%{ok}")
        inside = sum(LOW <= r["ratio"] <= HIGH for r in rows)
        in_range = sum(r["inside_kernel_range"] for r in rows)
        print(f"{inside} of {len(rows)} ratios within {LOW}-{HIGH}; the model inside the range "
              f"of the kernel's own runs in {in_range} of {len(rows)}")
    return 0 if rows and all(LOW <= r["ratio"] <= HIGH for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
