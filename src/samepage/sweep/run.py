"""Building a sweep's cells (every input x every grid combination, each validated on the
client first), running them serially or on a Dask cluster, the fleet estimate, the results
table (Parquet or CSV) and the Pareto plot.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11 (PyPy 3.9)
    import tomli as tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from samepage.scenario import ScenarioError
from samepage.scenario.errors import open_input

from .cell import (
    MIB,
    RESULT_COLUMNS,
    SNAPSHOT_KEYS,
    Cell,
    empty_row,
    one_line_error,
    run_cell,
    scenario_from_data,
)
from .grid import GridError, apply, combinations, label, show

ZIP_MAGIC = b"PK\x03\x04"


class SweepError(ValueError):
    """A sweep that cannot start (one line for the CLI)."""


@dataclass
class Input:
    name: str                       # as given on the command line
    kind: str                       # "scenario" | "snapshot"
    host: str
    data: dict[str, Any] | None = None     # scenario TOML data
    base_dir: str = "."                    # for [model] costs relative paths
    raw: bytes | None = None               # snapshot bytes
    sha: str | None = None


def load_input(path: str) -> Input:
    """A scenario (TOML, ``-`` for standard input) or a snapshot (.npz), validated; a bad
    file raises ScenarioError (one line)."""
    from samepage.scenario import load_scenario_text
    from samepage.scenario.loader import STDIN_NAME

    if path == "-":
        text = sys.stdin.read()
        sc = load_scenario_text(text, STDIN_NAME)
        return Input(STDIN_NAME, "scenario", sc.name or "stdin", tomllib.loads(text))
    with open_input(path) as f:
        head = f.read(4)
    if head == ZIP_MAGIC:
        from samepage.capture import load_snapshot

        snap = load_snapshot(path)
        with open(path, "rb") as f:
            raw = f.read()
        return Input(path, "snapshot", snap.meta.host or os.path.basename(path), raw=raw,
                     sha=hashlib.sha256(raw).hexdigest())
    from samepage.scenario import load_scenario

    sc = load_scenario(path)               # every check, one-line errors
    with open(path, "rb") as f:
        data = tomllib.loads(f.read().decode("utf-8"))
    return Input(path, "scenario", sc.name or os.path.splitext(os.path.basename(path))[0],
                 data, base_dir=os.path.dirname(os.path.abspath(path)))


def _costs_text(path: str, base_dir: str, cache: dict[str, str], where: str) -> str:
    from samepage.ksm.costs import CostProfileError, parse_profile

    full = path if os.path.isabs(path) else os.path.join(base_dir, path)
    if full not in cache:
        try:
            with open(full) as f:
                text = f.read()
            parse_profile(text, path)
        except OSError as e:
            raise ScenarioError(where, "model.costs", f"{path}: {e.strerror or e}") from None
        except CostProfileError as e:
            raise ScenarioError(e.file, e.key, e.msg) from None
        cache[full] = text
    return cache[full]


def build_cells(inputs: list[Input], grid_values: list[dict[str, Any]],
                until: str = "converged") -> list[Cell]:
    """Every input x every combination, validated here (before anything runs): a bad key
    or value raises SweepError naming the cell's grid values."""
    from samepage.forecast import ForecastError, parse_until
    from samepage.scenario.tunables import TunableError, check_tunable

    cells: list[Cell] = []
    costs_cache: dict[str, str] = {}
    for ii, inp in enumerate(inputs):
        for values in grid_values:
            where = f"--grid {label(values)}: " if values else ""
            cell = Cell(len(cells), ii, inp.name, inp.host, inp.kind, values)
            try:
                if inp.kind == "scenario":
                    assert inp.data is not None
                    data = apply(inp.data, values)
                    sc = scenario_from_data(data, inp.name)
                    pol = getattr(sc, "policy", None)
                    if pol is not None and ":" in pol.name:
                        # workers do not share the client's files
                        raise ScenarioError(inp.name, "policy.name", "a sweep runs the "
                                            "built-in policies only, not a FILE.py:Class")
                    cell.data = data
                    if sc.model.costs is not None:
                        cell.costs_text = _costs_text(sc.model.costs, inp.base_dir,
                                                      costs_cache, inp.name)
                else:
                    tun: dict[str, Any] = {}
                    opts: dict[str, Any] = {"forecast.until": until}
                    for k, v in values.items():
                        if k.startswith("ksm.") and k.count(".") == 1:
                            name = k[4:]
                            if name == "run":
                                raise GridError(f"--grid {k}: a forecast sets run itself")
                            try:
                                tun[name] = check_tunable(name, v, in_ksm_table=True)
                            except TunableError as e:
                                raise GridError(f"--grid {k}={show(v)}: {e.msg}") from None
                        elif k in SNAPSHOT_KEYS:
                            if not isinstance(v, SNAPSHOT_KEYS[k]):
                                kind = "true or false" if SNAPSHOT_KEYS[k] is bool else "a string"
                                raise GridError(f"--grid {k}={show(v)}: must be {kind}")
                            opts[k] = v
                        else:
                            raise GridError(
                                f"--grid {k}: {inp.name} is a snapshot: its cells take "
                                "ksm.TUNABLE, " + ", ".join(SNAPSHOT_KEYS))
                    parse_until(str(opts["forecast.until"]))
                    opts["tunables"] = tun
                    cell.options = opts
                    cell.snapshot_sha = inp.sha
            except GridError as e:
                raise SweepError(str(e)) from None
            except ScenarioError as e:
                raise SweepError(f"{where}{e}") from None
            except ForecastError as e:
                raise SweepError(f"{where}{inp.name}: forecast.until: {e}") from None
            cells.append(cell)
    return cells


ProgressFn = Callable[[dict[str, Any]], None]


def run_serial(cells: list[Cell], inputs: list[Input],
               progress: ProgressFn | None = None) -> list[dict[str, Any]]:
    """Each cell in this process, in order: the reference a cluster's results must equal."""
    rows = []
    for c in cells:
        raw = inputs[c.input_index].raw if c.kind == "snapshot" else None
        row = run_cell(c, raw)
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def run_dask(cells: list[Cell], inputs: list[Input], *, scheduler: str | None = None,
             workers: int = 2, progress: ProgressFn | None = None,
             connect_timeout: float = 15.0) -> list[dict[str, Any]]:
    """Each cell as one Dask task, on a LocalCluster of ``workers`` single-threaded worker
    processes or on the cluster at ``scheduler``; rows sorted by cell index."""
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    try:
        if scheduler:
            try:
                client = Client(scheduler, timeout=f"{connect_timeout}s")
            except (OSError, TimeoutError) as e:
                raise SweepError(f"--scheduler {scheduler}: cannot connect: "
                                 f"{one_line_error(e)}") from None
        else:
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
        try:
            snaps = {}
            for inp in inputs:
                if inp.kind == "snapshot" and inp.sha not in snaps:
                    snaps[inp.sha] = client.scatter(inp.raw, hash=False, broadcast=False)
            futures = {}
            for c in cells:
                f = client.submit(run_cell, c, snaps.get(c.snapshot_sha), pure=False,
                                  key=f"samepage-cell-{c.index}-{os.getpid()}-{id(cells)}")
                futures[f] = c
            rows: dict[int, dict[str, Any]] = {}
            for f in as_completed(list(futures)):
                c = futures[f]
                try:
                    row = f.result()
                except Exception as e:  # noqa: BLE001 - a worker died: this cell failed
                    row = empty_row(c)
                    row["error"] = f"on the cluster: {one_line_error(e)}"
                rows[c.index] = row
                if progress is not None:
                    progress(row)
            return [rows[i] for i in sorted(rows)]
        finally:
            client.close()
    finally:
        if cluster is not None:
            cluster.close()


# ---------------------------------------------------------------------------- results


@dataclass
class FleetPoint:
    values: dict[str, Any]
    per_host: list[dict[str, Any]] = field(default_factory=list)
    saved_mib: float = 0.0
    ksmd_cpu_percent: float = 0.0      # summed over hosts (each % of one of its CPUs)
    failed: int = 0

    def as_json(self) -> dict[str, Any]:
        return {"grid": self.values, "label": label(self.values),
                "saved_mib": round(self.saved_mib, 6),
                "ksmd_cpu_percent": round(self.ksmd_cpu_percent, 3), "failed": self.failed,
                "per_host": self.per_host}


def fleet(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[FleetPoint]:
    """Per grid combination: each input's (host's) saving and ksmd CPU, and their totals."""
    points: dict[tuple, FleetPoint] = {}
    for r in rows:
        vals = {k: r[k] for k in grid_keys}
        key = tuple(show(v) for v in vals.values())
        p = points.setdefault(key, FleetPoint(vals))
        p.per_host.append({"input": r["input"], "host": r["host"],
                           "saved_mib": r["saved_mib"],
                           "ksmd_cpu_percent": r["ksmd_cpu_percent"], "error": r["error"]})
        if r["error"]:
            p.failed += 1
        else:
            p.saved_mib += r["saved_mib"]
            p.ksmd_cpu_percent += r["ksmd_cpu_percent"]
    return list(points.values())


def columns(rows: list[dict[str, Any]], grid_keys: list[str]) -> list[str]:
    return ["cell", "input", "host", *grid_keys, *RESULT_COLUMNS]


def _grid_column(values: list[Any]) -> list[Any]:
    """One type per column (Parquet): native if every value has the same type, else text."""
    types = {type(v) for v in values}
    if len(types) == 1 and types <= {int, float, bool, str}:
        return values
    return [show(v) for v in values]


def write_table(path: str, rows: list[dict[str, Any]], grid_keys: list[str]) -> None:
    """One row per cell to FILE.parquet or FILE.csv (OSError if it cannot be written)."""
    cols = columns(rows, grid_keys)
    data = {c: [r.get(c) for r in rows] for c in cols}
    for k in grid_keys:
        data[k] = _grid_column(data[k])
    if path.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = path + ".tmp"
        pq.write_table(pa.table(data), tmp)
        os.replace(tmp, path)
        return
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for i in range(len(rows)):
            w.writerow(["" if data[c][i] is None else data[c][i] for c in cols])


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats (less CPU and at least as much saved, or
    as little CPU and more saved), by CPU ascending."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], float("-inf")
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(path: str, rows: list[dict[str, Any]], grid_keys: list[str],
                fleet_points: list[FleetPoint] | None = None, title: str = "sweep") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    ok = [r for r in rows if not r["error"]]
    by_input: dict[str, list[dict[str, Any]]] = {}
    for r in ok:
        by_input.setdefault(r["input"], []).append(r)
    series: list[tuple[str, list[tuple[float, float]], list[str]]] = [
        (os.path.basename(name), [(r["ksmd_cpu_percent"], r["saved_mib"]) for r in rs],
         [label({k: r[k] for k in grid_keys}) for r in rs]) for name, rs in by_input.items()]
    if fleet_points and len(by_input) > 1:
        fp = [p for p in fleet_points if not p.failed]
        series.append(("fleet total", [(p.ksmd_cpu_percent, p.saved_mib) for p in fp],
                       [label(p.values) for p in fp]))
    for name, pts, labels in series:
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        sc = ax.scatter(xs, ys, s=18, alpha=0.6, label=name)
        front = pareto_front(pts)
        ax.plot([xs[i] for i in front], [ys[i] for i in front], "-",
                color=sc.get_facecolor()[0], alpha=0.9)
        if len(front) <= 12:
            for i in front:
                ax.annotate(labels[i], (xs[i], ys[i]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    ax.set_xlabel("ksmd CPU (% of one CPU)")
    ax.set_ylabel("memory saved (MiB)")
    ax.set_title(f"{title}: saved memory against ksmd CPU (line: Pareto front)")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=7)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)


def total_mib(rows: list[dict[str, Any]]) -> float:
    return sum(r["saved_mib"] for r in rows if not r["error"]) if rows else 0.0


__all__ = ["Input", "MIB", "SweepError", "build_cells", "columns", "combinations", "fleet",
           "load_input", "pareto_front", "plot_pareto", "run_dask", "run_serial",
           "write_table"]
