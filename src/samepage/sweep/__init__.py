"""Sweeps: a scenario or snapshot run over a grid of settings (``samepage sweep``), one
deterministic model run per cell, serially or as Dask tasks (a LocalCluster, or an existing
cluster by its scheduler address).

    from samepage.sweep import load_input, parse_grid, combinations, build_cells, run_dask

    grid = parse_grid(["ksm.pages_to_scan=100,1000", "model.same_folio=v6.18,split-retry"])
    cells = build_cells([load_input("two.toml")], combinations(grid))
    rows = run_dask(cells, inputs, workers=2)       # == run_serial(cells, inputs)

A cell's row holds its grid values, the final 11 counters, the memory saved, when
pages_sharing converged (within 1% of its final value from then on), ksmd's CPU in the model
and the error of a cell that failed (the others complete).
"""

from .cell import RESULT_COLUMNS, Cell, run_cell
from .grid import GridError, GridKey, apply, combinations, parse_grid
from .run import (
    FleetPoint,
    Input,
    SweepError,
    build_cells,
    fleet,
    load_input,
    pareto_front,
    plot_pareto,
    run_dask,
    run_serial,
    write_table,
)

__all__ = ["Cell", "FleetPoint", "GridError", "GridKey", "Input", "RESULT_COLUMNS",
           "SweepError", "apply", "build_cells", "combinations", "fleet", "load_input",
           "parse_grid", "pareto_front", "plot_pareto", "run_cell", "run_dask", "run_serial",
           "write_table"]
