"""Time-based dynamics on the model: page sets rewritten at a rate or with a period, in
simulated time (the ``[[rewrite]]`` tables of a scenario, and a forecast's volatile pages).

ksmd's batches are atomic in the model, so writes fall due in simulated time and are applied
while ksmd sleeps, just before the next batch starts (``Dynamics.advance(t_ms)``): a write due
during a batch lands after it, as a user thread preempted by ksmd would. Several rounds due in
one sleep collapse: a page rewritten twice with fresh content between two batches looks to
ksmd exactly as one rewritten once (only the last content is ever seen).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from samepage.machine import Machine, Process
from samepage.mm.mm import Vma

#: Fresh contents written by rewrites are tokens from here upwards (2**63 + n for the n-th
#: write of the run): above every token a capture assigns and the scenario fills use.
FRESH_TOKEN_BASE = 2 ** 63


@dataclass
class RewriteSet:
    """``process`` rewrites ``pages`` (indices into ``vma``) every ``every_ms`` (all at
    once) or at ``rate_per_s`` page writes per second (round robin), from ``start_ms``;
    ``token`` None writes fresh contents."""

    process: Process
    vma: Vma
    pages: list[int]
    every_ms: float | None = None
    rate_per_s: float | None = None
    start_ms: float = 0.0
    token: int | None = None
    done: int = 0                 # rounds (every_ms) or page writes (rate_per_s) applied
    writes: int = 0               # page writes actually made

    def due(self, t_ms: float) -> int:
        """Rounds or writes due by ``t_ms``."""
        if t_ms < self.start_ms:
            return 0
        if self.every_ms is not None:
            return int(math.floor((t_ms - self.start_ms) / self.every_ms + 1e-9))
        return int(math.floor((t_ms - self.start_ms) * self.rate_per_s / 1000 + 1e-9))


@dataclass
class Dynamics:
    """All the rewrite sets of a run; ``advance(t_ms)`` applies what fell due."""

    machine: Machine
    sets: list[RewriteSet] = field(default_factory=list)
    fresh: int = 0

    def add(self, rs: RewriteSet) -> None:
        if rs.pages:
            self.sets.append(rs)

    def next_token(self) -> int:
        self.fresh += 1
        return FRESH_TOKEN_BASE + self.fresh

    @property
    def page_writes(self) -> int:
        return sum(rs.writes for rs in self.sets)

    def advance(self, t_ms: float) -> int:
        """Apply every write due by simulated time ``t_ms``; returns the page writes made."""
        made = 0
        for rs in self.sets:
            n = rs.due(t_ms)
            if n <= rs.done:
                continue
            p = rs.process
            if not p.alive or p.mm.find_vma(rs.vma.start) is not rs.vma:
                rs.done = n                 # exited or unmapped: the set stops
                continue
            if rs.every_ms is not None:
                idx = rs.pages              # every page once (later rounds collapse)
            else:
                k = len(rs.pages)
                first = max(rs.done, n - k)  # the last k writes cover every page
                idx = [rs.pages[j % k] for j in range(first, n)]
            rs.done = n
            for i in idx:
                tok = rs.token if rs.token is not None else self.next_token()
                p.write(rs.vma, i, tok)
            rs.writes += len(idx)
            made += len(idx)
        return made


def sim_ms(m: Machine) -> float:
    """Simulated ms since ``run = 1`` at which ksmd's next batch starts (read without
    materialising a fast-forward replay)."""
    return (m._ksm.clock_ns - m.t0_ns) / 1e6


def scenario_dynamics(scenario, m: Machine) -> Dynamics:
    """The ``[[rewrite]]`` sets of ``scenario`` on the machine set up from it."""
    dyn = Dynamics(m)
    for rw in scenario.rewrites:
        p = m.processes[rw.process]
        vma = p.region(rw.region)
        dyn.add(RewriteSet(p, vma, rw.page_indices(vma.nr_pages), every_ms=rw.every_ms,
                           rate_per_s=rw.rate_per_s, start_ms=rw.start_ms, token=rw.token))
    return dyn
