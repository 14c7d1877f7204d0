"""--recommend: the cheapest pages_to_scan / sleep_millisecs that converges within a time
under a CPU cap, found by forecasting each candidate (cheapest scan rate first)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .build import Built
from .run import Result, Until, simulate

PAGES_TO_SCAN = (100, 200, 500, 1000, 2000, 5000, 10000, 20000)
SLEEP_MS = (20, 50, 100, 200, 500, 1000)


@dataclass
class Candidate:
    pages_to_scan: int
    sleep_millisecs: int
    result: Result | None = None
    ok: bool = False
    why: str = ""


def candidates() -> list[tuple[int, int]]:
    """Every pair, slowest nominal scan rate (pages per second of sleep) first."""
    pairs = [(p, s) for p in PAGES_TO_SCAN for s in SLEEP_MS]
    return sorted(pairs, key=lambda ps: (ps[0] / ps[1], ps[1]))


def recommend(build: Callable[[dict], Built], within_ms: float, max_cpu: float,
              base: dict | None = None, on_try: Callable[[Candidate], None] | None = None
              ) -> tuple[Candidate | None, list[Candidate]]:
    """The first candidate (slowest scan rate) whose forecast converges within ``within_ms``
    with ksmd's CPU at most ``max_cpu`` percent, and every candidate tried."""
    tried: list[Candidate] = []
    for pts, sleep in candidates():
        tun = dict(base or {})
        tun.update({"pages_to_scan": pts, "sleep_millisecs": sleep})
        c = Candidate(pts, sleep)
        r = simulate(build(tun), Until("converged"), time_limit_ms=within_ms)
        c.result = r
        if not r.converged or r.converged_ms > within_ms:
            c.why = f"not converged within {within_ms / 1000:g} s"
        elif r.cpu_percent > max_cpu:
            c.why = f"ksmd CPU {r.cpu_percent:.1f}% > {max_cpu:g}%"
        else:
            c.ok = True
        tried.append(c)
        if on_try is not None:
            on_try(c)
        if c.ok:
            return c, tried
    return None, tried
