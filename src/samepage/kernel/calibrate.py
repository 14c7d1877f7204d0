"""Calibrating the CPU cost model on this machine's kernel (``samepage kernel calibrate``).

Each scenario of the calibration suite (``samepage/data/calibration/*.toml``) runs on the
model, which gives the operation counts of every batch (samepage.ksm.opcounts), and on the
live kernel through the harness (samepage.kernel.runner: KSM lock, settings saved and
restored, refusal while other processes have mergeable memory), which gives ksmd's CPU time
per batch (``ksmd_cpu_us``, from /proc/<ksmd>/schedstat).  A batch whose counters differ
from the model's is left out of the fit: its operation counts are not the kernel's.

The fit is a weighted non-negative least-squares fit (Lawson-Hanson, numpy only) of the
per-operation costs to the median, over the repeated runs, of each batch's CPU time.
Rows are weighted by 1/sqrt(measured + 100 us), between an absolute and a relative fit, so
that small scenarios and small batches count too.  The result is a
samepage.ksm.costs.CostModel with [meta] kernel release, CPU model, date, the scenarios it
was fitted on and the residuals per phase.

Phases (docs/cpu-model.md): a batch belongs to the *first* full scan while full_scans was 0
before it (the batch that completes the first scan included), to the *merging* scan while it
was 1, and to the *steady* scans after that.
"""

from __future__ import annotations

import datetime
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from samepage.ksm.costs import CostModel
from samepage.ksm.opcounts import N_OPS, OP_NAMES, priced
from samepage.scenario import Scenario, load_scenario
from samepage.scenario.trace import COUNTER_NAMES

PHASES = ("first", "merging", "steady")
PHASE_TITLES = {"first": "first full scan", "merging": "merging scan", "steady": "steady scans"}
#: the row weight's offset: 1/sqrt(cpu_us + WEIGHT_US)
WEIGHT_US = 100.0


# ---------------------------------------------------------------------------------- NNLS


def nnls(a: np.ndarray, b: np.ndarray, max_iter: int | None = None) -> np.ndarray:
    """argmin ||a x - b||_2 subject to x >= 0 (Lawson & Hanson, 1974)."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    m, n = a.shape
    x = np.zeros(n)
    passive = np.zeros(n, dtype=bool)
    w = a.T @ (b - a @ x)
    tol = 10 * max(m, n) * np.finfo(float).eps * max(1.0, np.abs(a).max(initial=0.0)) \
        * max(1.0, np.abs(b).max(initial=0.0))
    max_iter = max_iter or 3 * n + 30
    it = 0
    while (~passive).any() and (w[~passive] > tol).any() and it < max_iter:
        it += 1
        j = int(np.argmax(np.where(passive, -np.inf, w)))
        passive[j] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > tol
            x[~passive] = 0.0
        w = a.T @ (b - a @ x)
    return x


# ---------------------------------------------------------------------------------- data


def phase_of(prev_full_scans: int) -> str:
    return PHASES[min(prev_full_scans, 2)]


@dataclass
class BatchSample:
    """One batch of one scenario: the model's operation counts and the kernel's CPU time."""

    batch: int
    phase: str
    ops: list[int]
    measured_us: list[float]        # one per kernel run (runs whose counters matched)

    @property
    def median_us(self) -> float:
        return float(statistics.median(self.measured_us))


@dataclass
class ScenarioData:
    name: str
    samples: list[BatchSample] = field(default_factory=list)
    runs: int = 0
    mismatched_batches: int = 0     # batches left out: the kernel's counters differed

    def phase_sums(self, costs: CostModel | None = None) -> dict[str, tuple[float, float]]:
        """phase -> (predicted ms or nan, measured ms: sum of the batch medians)."""
        out: dict[str, tuple[float, float]] = {}
        for ph in PHASES:
            ss = [s for s in self.samples if s.phase == ph]
            if not ss:
                continue
            meas = sum(s.median_us for s in ss) / 1000
            pred = sum(costs.cpu_ns(s.ops) for s in ss) / 1e6 if costs is not None else float("nan")
            out[ph] = (pred, meas)
        return out

    def run_spread(self) -> dict[str, float]:
        """phase -> (max - min) / median of the per-run phase totals (kernel vs kernel)."""
        out: dict[str, float] = {}
        for ph in PHASES:
            ss = [s for s in self.samples if s.phase == ph and len(s.measured_us) == self.runs]
            if not ss or self.runs < 2:
                continue
            totals = [sum(s.measured_us[r] for s in ss) for r in range(self.runs)]
            med = statistics.median(totals)
            if med > 0:
                out[ph] = (max(totals) - min(totals)) / med
        return out


def model_records(scenario: Scenario) -> list[dict]:
    """The model's batch records with their operation counts (``ops``)."""
    from samepage.scenario.model_runner import run_scenario_on_model
    return run_scenario_on_model(scenario).records


def samples_from_traces(model: Sequence[dict], kernel_runs: Sequence[Sequence[dict]],
                        name: str = "") -> ScenarioData:
    """Pair the model's records (with ``ops``) with kernel traces (with ``ksmd_cpu_us``)."""
    data = ScenarioData(name, runs=len(kernel_runs))
    by_run = [{r["batch"]: r for r in run} for run in kernel_runs]
    prev_fs = 0
    for rec in model:
        b = rec["batch"]
        ops = [int(rec["ops"].get(n, 0)) for n in OP_NAMES]
        meas: list[float] = []
        for run in by_run:
            k = run.get(b)
            if k is None or "ksmd_cpu_us" not in k:
                continue
            if any(k[c] != rec[c] for c in COUNTER_NAMES):
                continue
            meas.append(float(k["ksmd_cpu_us"]))
        if meas:
            data.samples.append(BatchSample(b, phase_of(prev_fs), ops, meas))
        else:
            data.mismatched_batches += 1
        prev_fs = rec["full_scans"]
    return data


# ---------------------------------------------------------------------------------- fit


@dataclass
class Fit:
    costs: CostModel
    data: list[ScenarioData]

    def table(self) -> list[dict]:
        """Rows of scenario, phase, predicted ms, measured ms, ratio (model / kernel)."""
        rows = []
        for d in self.data:
            for ph, (pred, meas) in d.phase_sums(self.costs).items():
                rows.append({"scenario": d.name, "phase": ph, "model_ms": pred,
                             "kernel_ms": meas, "ratio": pred / meas if meas > 0 else float("nan")})
        return rows

    def residuals(self) -> dict[str, dict[str, float]]:
        """Per phase over all scenarios: the total's relative error, and the median and
        largest |relative error| of a scenario's phase total."""
        out: dict[str, dict[str, float]] = {}
        rows = self.table()
        for ph in PHASES:
            rr = [r for r in rows if r["phase"] == ph and r["kernel_ms"] > 0]
            if not rr:
                continue
            pred = sum(r["model_ms"] for r in rr)
            meas = sum(r["kernel_ms"] for r in rr)
            errs = sorted(abs(r["ratio"] - 1) for r in rr)
            out[ph] = {"total_error": round(pred / meas - 1, 4),
                       "median_abs_error": round(statistics.median(errs), 4),
                       "max_abs_error": round(errs[-1], 4)}
        # per batch: the relative error of a single batch's prediction
        errs = [abs(self.costs.cpu_ns(s.ops) / 1000 / s.median_us - 1)
                for d in self.data for s in d.samples if s.median_us > 50]
        if errs:
            out["batch"] = {"median_abs_error": round(float(np.median(errs)), 4),
                            "p90_abs_error": round(float(np.percentile(errs, 90)), 4)}
        return out


def fit_costs(data: Sequence[ScenarioData], base: CostModel | None = None,
              weight_us: float = WEIGHT_US) -> CostModel:
    """Fit ns per operation to the batches of ``data`` (weighted NNLS). Operations that never
    occur keep ``base``'s cost (the shipped profile's, by default)."""
    from samepage.ksm.costs import default_costs
    base = base or default_costs()
    rows = [s for d in data for s in d.samples]
    if not rows:
        raise ValueError("no batches to fit")
    a = np.array([priced(s.ops) for s in rows], dtype=float)
    y = np.array([s.median_us * 1000 for s in rows])           # ns
    w = 1 / np.sqrt(y / 1000 + weight_us)
    seen = a.sum(axis=0) > 0
    x = np.array(base.vector, dtype=float)
    # operations never seen keep their base cost: move them out of the system
    y_fit = y - a[:, ~seen] @ x[~seen]
    x_seen = nnls(a[:, seen] * w[:, None], y_fit * w)
    x[seen] = x_seen
    return CostModel(ns={n: round(float(v), 3) for n, v in zip(OP_NAMES, x)}, hz=base.hz)


# ---------------------------------------------------------------------------------- suite


def suite_paths(directory: str | os.PathLike[str] | None = None) -> list[Path]:
    """The calibration suite's scenario files (sorted by name)."""
    if directory is not None:
        return sorted(Path(directory).glob("*.toml"))
    root = resources.files("samepage.data").joinpath("calibration")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith(".toml"))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def profile_meta(fit: Fit, hz: int) -> dict:
    return {
        "kernel_release": os.uname().release,
        "cpu_model": cpu_model(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fitted_on": [d.name for d in fit.data],
        "runs_per_scenario": max((d.runs for d in fit.data), default=0),
        "residuals": fit.residuals(),
    }


def run_kernel(scenario: Scenario, *, wait: float, force: bool,
               retries: int = 5) -> tuple[list[dict], dict]:
    """One harness run of ``scenario`` (KSM lock, saved and restored settings); the LRU watch
    is off: it costs ksmd nothing but slows the events, and a batch whose counters differ
    from the model's is left out of the fit anyway."""
    from samepage.kernel.record import run_with_retries
    return run_with_retries(scenario, retries=retries, lock_timeout=wait, check_lru=False,
                            force=force)


def run_round_robin(scenarios: Sequence[tuple[str, Scenario]], runs: int, *, wait: float,
                    force: bool, progress: Callable[[str], None] | None = None,
                    save_traces: Path | None = None) -> dict[str, list[list[dict]]]:
    """Kernel runs of every scenario, ``runs`` rounds of the whole list (round-robin, so
    that a change of the machine's load during the calibration affects every scenario alike
    rather than all runs of one). Returns name -> the batch records of each run; a run still
    unreliable after the retries (a busy machine) is dropped."""
    import json

    from samepage.kernel import KsmdError, UnreliableTrace
    from samepage.kernel.runner import ForeignKsmUsers
    out: dict[str, list[list[dict]]] = {name: [] for name, _ in scenarios}
    for r in range(runs):
        for name, sc in scenarios:
            if progress is not None:
                progress(f"round {r + 1}/{runs}: {name}")
            try:
                recs, final = run_kernel(sc, wait=wait, force=force)
            except (UnreliableTrace, KsmdError, ForeignKsmUsers) as e:
                # a busy machine, or another program using KSM right now: drop this run
                if progress is not None:
                    progress(f"{name}: kernel run {r + 1} dropped ({e})")
                continue
            out[name].append(recs)
            if save_traces is not None:
                with open(Path(save_traces) / f"{name}.kernel{r + 1}.jsonl", "w") as f:
                    f.writelines(json.dumps(x) + "\n" for x in [*recs, final])
    return out


def calibrate(paths: Sequence[Path], *, runs: int = 3, wait: float = 0.0, force: bool = False,
              progress: Callable[[str], None] | None = None,
              save_traces: Path | None = None) -> Fit:
    """Run every scenario ``runs`` times on the kernel (round-robin), once on the model, and
    fit."""
    scenarios = [(Path(p).stem, load_scenario(p)) for p in paths]
    models = {name: model_records(sc) for name, sc in scenarios}
    kruns = run_round_robin(scenarios, runs, wait=wait, force=force, progress=progress,
                            save_traces=save_traces)
    data = [samples_from_traces(models[name], kruns[name], name)
            for name, _ in scenarios if kruns[name]]
    costs = fit_costs(data)
    fit = Fit(costs, data)
    costs.meta = profile_meta(fit, costs.hz)
    return fit


def data_from_saved(paths: Sequence[Path], traces: Path) -> list[ScenarioData]:
    """ScenarioData from kernel traces saved by ``calibrate(save_traces=...)``."""
    from samepage.scenario import read_trace
    out = []
    for path in paths:
        name = Path(path).stem
        files = sorted(Path(traces).glob(f"{name}.kernel*.jsonl"))
        if not files:
            continue
        kruns = [read_trace(f)[0] for f in files]
        out.append(samples_from_traces(model_records(load_scenario(path)), kruns, name))
    return out


assert N_OPS == len(OP_NAMES)
