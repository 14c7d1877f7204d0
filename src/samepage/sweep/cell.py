"""One cell of a sweep: its inputs (scenario data or snapshot bytes, grid values) and the
row of results it produces. ``run_cell`` is what a Dask worker calls: it needs nothing from
the client's file system and never raises (a failure is the row's ``error``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

from samepage.scenario.trace import COUNTER_NAMES

PAGE_SIZE = 4096
MIB = 1024 * 1024

#: Grid keys a snapshot cell takes besides ``ksm.TUNABLE`` (samepage forecast's options).
SNAPSHOT_KEYS = {"forecast.merge_any": bool, "forecast.thp": bool, "forecast.static": bool,
                 "forecast.until": str}

#: The result columns after the grid keys, in table order.
RESULT_COLUMNS = (*COUNTER_NAMES, "saved_mib", "converge_batch", "converge_full_scans",
                  "converge_ms", "t_ms", "ksmd_cpu_ms", "ksmd_cpu_percent", "error")


@dataclass
class Cell:
    index: int
    input_index: int
    input_name: str
    host: str
    kind: str                                  # "scenario" | "snapshot"
    values: dict[str, Any]                     # the grid values of this cell
    data: dict[str, Any] | None = None         # scenario: TOML data with the values applied
    costs_text: str | None = None              # scenario: the [model] costs profile's text
    snapshot_sha: str | None = None            # snapshot: sha256 of the bytes
    options: dict[str, Any] = field(default_factory=dict)   # snapshot: tunables, forecast.*


def empty_row(cell: Cell) -> dict[str, Any]:
    row: dict[str, Any] = {"cell": cell.index, "input": cell.input_name, "host": cell.host}
    row.update({k: v for k, v in cell.values.items()})
    row.update({c: None for c in RESULT_COLUMNS})
    row["error"] = ""
    return row


def run_cell(cell: Cell, snapshot_bytes: bytes | None = None) -> dict[str, Any]:
    """The cell's row; any failure is a one-line ``error`` (the other columns None)."""
    row = empty_row(cell)
    try:
        if cell.kind == "scenario":
            row.update(_run_scenario(cell))
        else:
            row.update(_run_snapshot(cell, snapshot_bytes))
    except Exception as e:  # noqa: BLE001 - a failed cell is a result, the sweep goes on
        row["error"] = one_line_error(e)
    return row


def one_line_error(e: BaseException) -> str:
    from samepage.forecast import ForecastError
    from samepage.scenario import ScenarioError
    from samepage.scenario.model_runner import ScenarioRunError

    msg = str(e) if isinstance(e, (ScenarioError, ScenarioRunError, ForecastError)) \
        else f"{type(e).__name__}: {e}"
    return " ".join(msg.split())[:2000] or type(e).__name__


def scenario_from_data(data: dict[str, Any], filename: str, costs_path: str | None = None):
    """Validate scenario TOML data as the loader does (one ScenarioError naming ``filename``);
    ``costs_path`` replaces ``[model] costs`` (a file the worker wrote)."""
    from pydantic import ValidationError

    from samepage.scenario import Scenario, ScenarioError
    from samepage.scenario.checks import check_runnable
    from samepage.scenario.limits import check_resources
    from samepage.scenario.loader import validation_to_scenario_error

    data = dict(data)
    if "path" in data:
        raise ScenarioError(filename, "path", "unknown key")
    data["path"] = None
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise validation_to_scenario_error(e, filename, data) from None
    check_runnable(sc, filename=filename)
    check_resources(sc, filename)
    if costs_path is not None and sc.model.costs is not None:
        sc.model.costs = costs_path
    return sc


def summarize_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The result columns of a scenario run from its batch records."""
    from samepage.cli.report import convergence

    last = records[-1]
    out: dict[str, Any] = {n: int(last[n]) for n in COUNTER_NAMES}
    out["saved_mib"] = (last["pages_sharing"] + last["ksm_zero_pages"]) * PAGE_SIZE / MIB
    conv = convergence(records)
    out["converge_batch"] = conv.batch
    out["converge_full_scans"] = conv.full_scans
    out["converge_ms"] = round(float(conv.t_ms), 3)
    t_ms = float(last["t_ms"])
    cpu_ms = sum(r.get("ksmd_cpu_us", 0.0) for r in records) / 1000
    out["t_ms"] = round(t_ms, 3)
    out["ksmd_cpu_ms"] = round(cpu_ms, 3)
    out["ksmd_cpu_percent"] = round(100 * cpu_ms / t_ms, 3) if t_ms > 0 else 0.0
    return out


def _run_scenario(cell: Cell) -> dict[str, Any]:
    from samepage.scenario.model_runner import run_scenario_on_model

    assert cell.data is not None
    with tempfile.TemporaryDirectory(prefix="samepage-sweep-") as tmp:
        costs_path = None
        if cell.costs_text is not None:
            costs_path = os.path.join(tmp, "costs.toml")
            with open(costs_path, "w") as f:
                f.write(cell.costs_text)
        sc = scenario_from_data(cell.data, cell.input_name, costs_path)
        if sc.policy is not None:
            # a [policy] table (or a policy.name grid key): a run in simulated time for its
            # duration_s, as `samepage run --policy` does; "none" = nobody tunes
            from samepage.scenario.policy_runner import run_with_policy, scenario_policy

            pol = scenario_policy(sc) if sc.policy.name != "none" else None
            return summarize_policy_run(run_with_policy(sc, pol))
        run = run_scenario_on_model(sc)
    return summarize_records(run.records)


def summarize_policy_run(run) -> dict[str, Any]:
    """The result columns of a run under a tuning policy (samepage.scenario.policy_runner):
    the counters at the end of its simulated duration, saved MiB, when saved memory settled
    (no batch or full-scan index: a policy may stop and restart ksmd) and ksmd's CPU."""
    m = run.machine
    c = m.counters()
    out: dict[str, Any] = {n: int(c[n]) for n in COUNTER_NAMES}
    out["saved_mib"] = (c["pages_sharing"] + c["ksm_zero_pages"]) * PAGE_SIZE / MIB
    conv = run.converged_s()
    out["converge_batch"] = None
    out["converge_full_scans"] = None
    out["converge_ms"] = round(conv * 1000, 3) if conv is not None else None
    out["t_ms"] = round(run.duration_ms, 3)
    out["ksmd_cpu_ms"] = round(run.ksmd_cpu_ms, 3)
    out["ksmd_cpu_percent"] = round(run.cpu_percent, 3)
    return out


#: Snapshots already loaded by this worker process, by sha256 (a sweep sends each once).
_SNAPSHOTS: dict[str, Any] = {}


def load_snapshot_bytes(raw: bytes, name: str = "snapshot"):
    from samepage.capture import load_snapshot

    sha = hashlib.sha256(raw).hexdigest()
    snap = _SNAPSHOTS.get(sha)
    if snap is None:
        with tempfile.TemporaryDirectory(prefix="samepage-sweep-") as tmp:
            path = os.path.join(tmp, os.path.basename(name) or "snapshot.npz")
            with open(path, "wb") as f:
                f.write(raw)
            snap = load_snapshot(path)
        if len(_SNAPSHOTS) >= 4:
            _SNAPSHOTS.pop(next(iter(_SNAPSHOTS)))
        _SNAPSHOTS[sha] = snap
    return snap


def _run_snapshot(cell: Cell, raw: bytes | None) -> dict[str, Any]:
    from samepage.forecast import build_machine, parse_until, simulate

    if raw is None:
        raise RuntimeError("the snapshot's bytes did not reach the worker")
    snap = load_snapshot_bytes(raw, cell.input_name)
    opts = cell.options
    costs = None
    if cell.costs_text is not None:
        from samepage.ksm.costs import parse_profile
        costs = parse_profile(cell.costs_text, "costs")
    built = build_machine(snap, tunables=dict(opts.get("tunables", {})),
                          merge_any_all=bool(opts.get("forecast.merge_any", False)),
                          thp_always=bool(opts.get("forecast.thp", False)), costs=costs,
                          volatile=not opts.get("forecast.static", False))
    res = simulate(built, parse_until(str(opts.get("forecast.until", "converged"))))
    out: dict[str, Any] = {n: int(res.final[n]) for n in COUNTER_NAMES}
    out["saved_mib"] = res.saved_bytes / MIB
    out["converge_batch"] = None
    out["converge_full_scans"] = int(res.converged_full_scans)
    out["converge_ms"] = round(float(res.converged_ms), 3)
    out["t_ms"] = round(float(res.t_ms), 3)
    out["ksmd_cpu_ms"] = round(float(res.cpu_ms), 3)
    out["ksmd_cpu_percent"] = round(res.cpu_percent, 3)
    return out
