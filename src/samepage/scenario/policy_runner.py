"""Run a scenario on the model with a KSM tuning policy acting in simulated time.

ksmd runs batch after batch as in samepage.scenario.model_runner; the policy acts at its
own instants (``Policy.first``, ``Policy.next_ms``) between batches, seeing the host only
through a MachineView (meminfo and ps from the model's frames, ``[machine] memory_mb``,
``baseline_mb``, ``cached_mb``) and writing sysfs through Machine.sysfs_write.

ksmd's waits follow ``ksm_scan_thread`` (mm/ksm.c, 6.18): stopped (run = 0), it sleeps
until a write of run = 1 wakes it; between batches it sleeps sleep_millisecs, cut short
when sleep_millisecs is written with a new value. Time-based events (``at_ms``) and
``[[rewrite]]``s apply at their time even while ksmd is stopped; a fork event counts as a
guest starting (Kata's throttler is kicked).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from samepage.machine import Machine
from samepage.mm.meminfo import HostMemory
from samepage.policy import Policy, PolicyError, PolicyFileError, load_policy
from samepage.policy.view import MachineView

from .dynamics import scenario_dynamics, sim_ms
from .errors import ScenarioError
from .model_runner import apply_event, setup_machine
from .schema import Scenario

#: Default length of a policy run when the scenario has no [policy] duration_s (s).
DEFAULT_DURATION_S = 600.0


@dataclass
class PolicyRun:
    """A finished policy run: samples over time, the sysfs writes, ksmd's CPU."""

    policy: str
    duration_ms: float
    samples: list[dict] = field(default_factory=list)
    writes: list[tuple[float, str, int | str]] = field(default_factory=list)
    failed_writes: list[tuple[float, str, int | str, str]] = field(default_factory=list)
    batches: int = 0
    ksmd_cpu_ms: float = 0.0
    machine: Machine | None = None

    @property
    def cpu_percent(self) -> float:
        return 100.0 * self.ksmd_cpu_ms / self.duration_ms if self.duration_ms else 0.0

    def saved_mib_at(self, t_s: float) -> float:
        """Saved MiB in the last sample at or before ``t_s``."""
        best = 0.0
        for s in self.samples:
            if s["t_s"] <= t_s + 1e-9:
                best = s["saved_mib"]
        return best

    def converged_s(self, tolerance: float = 0.01) -> float | None:
        """First sample time from which saved MiB stays within ``tolerance`` of its final
        value (None if nothing was ever saved)."""
        if not self.samples or self.samples[-1]["saved_mib"] <= 0:
            return None
        final = self.samples[-1]["saved_mib"]
        t = self.samples[-1]["t_s"]
        for s in reversed(self.samples):
            if abs(s["saved_mib"] - final) > tolerance * final:
                break
            t = s["t_s"]
        return t


def host_memory(scenario: Scenario) -> HostMemory:
    mc = scenario.machine
    if mc.memory_mb is None:
        raise ScenarioError(scenario.path or "-", "machine.memory_mb",
                            "a policy run needs the host's memory (memory_mb, and optionally "
                            "baseline_mb and cached_mb)")
    return HostMemory(mc.memory_mb * 1024, mc.baseline_mb * 1024, mc.cached_mb * 1024)


def scenario_policy(scenario: Scenario, name: str | None = None) -> Policy | None:
    """The policy to run: ``name`` (the command line; options from [policy] only if it
    names the same policy) or the scenario's [policy]."""
    pc = scenario.policy
    opts = {}
    if name is None:
        if pc is None:
            return None
        name = pc.name
    if pc is not None and pc.name == name:
        opts = pc.options
    if ":" in name and scenario.path and name == getattr(pc, "name", None):
        path, _, cls = name.rpartition(":")
        if not os.path.isabs(path):
            name = os.path.join(os.path.dirname(os.path.abspath(scenario.path)), path) + ":" + cls
    try:
        return load_policy(name, opts)
    except PolicyError as e:
        raise ScenarioError(scenario.path or "-", f"policy.{e.key}", e.msg) from None
    except PolicyFileError as e:
        raise ScenarioError(e.file, "(policy)", e.msg) from None


def _wake_ns(m: Machine, t_ms: float) -> int:
    return m.t0_ns + int(round(t_ms * 1e6))


def run_with_policy(scenario: Scenario, policy: Policy | None, duration_s: float | None = None,
                    sample_s: float | None = None, same_folio: str | None = None,
                    label: str | None = None) -> PolicyRun:
    """Run ``scenario`` for ``duration_s`` simulated seconds under ``policy`` (None: the
    scenario's own settings, nobody tunes), sampling the counters every ``sample_s``."""
    host = host_memory(scenario)
    pc = scenario.policy
    if duration_s is None:
        duration_s = pc.duration_s if pc is not None else DEFAULT_DURATION_S
    if sample_s is None:
        sample_s = pc.sample_s if pc is not None and pc.sample_s else None
    if sample_s is None:
        sample_s = max(1.0, duration_s / 120)
    duration_ms = duration_s * 1000.0
    sample_ms = sample_s * 1000.0
    name = label or (getattr(policy, "label", None) or policy.name if policy else "none")
    m = setup_machine(scenario, same_folio)
    view = MachineView(m, host)
    run = PolicyRun(name, duration_ms, machine=m)
    events = scenario.sorted_events()
    ei = 0
    dyn = scenario_dynamics(scenario, m) if scenario.rewrites else None
    t_pol = None
    if policy is not None:
        # the kernel boots with run = 0: the daemon (or the advisor policy) starts ksmd
        m.sysfs_write("run", 0)
        view.now_ms = 0.0
        policy.start(view)
        t_pol = policy.first()
    next_sample = 0.0

    def apply_due(t: float) -> None:
        nonlocal ei
        while ei < len(events) and events[ei].at_ms is not None and events[ei].at_ms <= t:
            ev = events[ei]
            apply_event(m, ev)
            ei += 1
            if ev.op == "fork" and policy is not None:
                view.now_ms = t
                policy.on_process_start(view)
        if dyn is not None:
            dyn.advance(t)

    def sample(t: float) -> None:
        c = m.counters()
        mi = view.meminfo()
        run.samples.append({
            "t_s": round(t / 1000, 3), "saved_mib": c["pages_sharing"] * 4 / 1024,
            "pages_shared": c["pages_shared"], "pages_sharing": c["pages_sharing"],
            "general_profit": c["general_profit"], "full_scans": c["full_scans"],
            "run": m.sysfs_read("run"), "pages_to_scan": m.sysfs_read("pages_to_scan"),
            "sleep_millisecs": m.sysfs_read("sleep_millisecs"),
            "ksmd_cpu_ms": round(run.ksmd_cpu_ms, 3), "MemFree": mi["MemFree"],
            "MemAvailable": mi["MemAvailable"], "sysfs_writes": len(view.writes)})

    while True:
        running = m._ksm.ksmd_should_run()
        t_batch = sim_ms(m) if running else math.inf
        t_ev = events[ei].at_ms if ei < len(events) and events[ei].at_ms is not None \
            else math.inf
        t_p = t_pol if t_pol is not None else math.inf
        t_next = min(t_batch, t_p, t_ev)
        while next_sample <= min(t_next, duration_ms):
            sample(next_sample)
            next_sample += sample_ms
        if t_next >= duration_ms:
            break
        if t_ev <= t_next and t_ev < t_batch and t_ev <= t_p:
            apply_due(t_ev)
            continue
        if t_p <= t_batch:
            apply_due(t_p)
            view.now_ms = t_p
            sleep_before = m.sysfs_read("sleep_millisecs")
            policy.step(view)
            now_running = m._ksm.ksmd_should_run()
            if now_running and not running:
                # ksm_thread_wait woken by run = 1: the next batch starts now (or when
                # the sleep begun before the stop would have ended)
                m.ksm.clock_ns = max(m.ksm.clock_ns, _wake_ns(m, t_p))
            elif now_running and m.sysfs_read("sleep_millisecs") != sleep_before \
                    and sim_ms(m) > t_p:
                m.ksm.clock_ns = _wake_ns(m, t_p)    # ksm_iter_wait: sleep value changed
            t_pol = policy.next_ms(t_p)
            continue
        apply_due(t_batch)
        r = m.run_batch()
        if r is None:           # an event stopped ksmd
            continue
        run.batches += 1
        run.ksmd_cpu_ms += r.cpu_ms
        while ei < len(events) and events[ei].at_ms is None and \
                events[ei].after_batch <= run.batches:
            apply_event(m, events[ei])
            ei += 1
    run.writes = list(view.writes)
    run.failed_writes = list(view.failed)
    return run
