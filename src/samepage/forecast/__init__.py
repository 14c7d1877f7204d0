"""Forecasting KSM on a captured host: a model machine built from a snapshot, ksmd run in
simulated time with the volatile pages rewritten at their measured rates (samepage forecast).

    from samepage.capture import load_snapshot
    from samepage.forecast import build_machine, simulate, parse_until

    built = build_machine(load_snapshot("host.npz"), tunables={"pages_to_scan": 1000})
    result = simulate(built, parse_until("converged"))
    result.as_json()          # scans, final, converged_full_scans, converged_ms, ...
"""

from .build import Built, ForecastError, build_machine
from .recommend import recommend
from .run import Result, Until, convergence, parse_until, simulate

__all__ = ["Built", "ForecastError", "Result", "Until", "build_machine", "convergence",
           "parse_until", "recommend", "simulate"]
