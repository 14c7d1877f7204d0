"""Run a scenario on the model and produce its trace (the contract's set-up order).

``iter_model_trace`` yields one batch record after each ksmd batch (events scheduled after
that batch are applied before the next one) and finally the ``final`` record. Time-based
dynamics (``at_ms`` events, ``[[rewrite]]``, samepage.scenario.dynamics) are applied while
ksmd sleeps, before the first batch starting at or after their simulated time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from samepage.machine import Machine, SyscallError

from .checks import check_runnable
from .limits import check_resources
from .dynamics import scenario_dynamics, sim_ms
from .errors import ScenarioError
from .schema import EventCfg, Scenario
from .trace import format_batch_record, format_final_record


class ScenarioRunError(RuntimeError):
    """The scenario could not be carried out (e.g. a tunable write failed, or ksmd stopped
    with batches still to record)."""


@dataclass
class ModelRun:
    """A finished model run: the trace plus the machine for inspection."""

    records: list[dict]
    final: dict
    machine: Machine
    extra: dict = field(default_factory=dict)


def _counted(tokens, progress: Callable[[int], None], every: int = 65536):
    """``tokens``, calling ``progress(n)`` after every ``every`` pages (set-up of a big
    region takes seconds: the progress bar moves from the start)."""
    n = 0
    for t in tokens:
        yield t
        n += 1
        if n == every:
            progress(n)
            n = 0
    if n:
        progress(n)


def setup_machine(scenario: Scenario, same_folio: str | None = None,
                  sanitize: bool = False,
                  progress: Callable[[int], None] | None = None) -> Machine:
    """Steps 1-4 of the set-up order: settings, processes and contents, MADV_MERGEABLE,
    then ``run = 1`` (``sanitize``: on a Machine(sanitize=True); ``progress(n)`` is told of
    every n pages written)."""
    m = Machine(numa_nodes=scenario.machine.numa_nodes,
                thp=scenario.machine.thp or "madvise",
                mthp_kb=scenario.machine.mthp_kb,
                costs=scenario_costs(scenario),
                split_zero_remap=scenario.model.split_zero_remap,
                same_folio=same_folio or scenario.model.same_folio,
                sanitize=sanitize)
    for name, value in scenario.ksm.items():
        _sysfs(m, name, value, f"ksm.{name}")
    _sysfs(m, "run", 2, "set-up run=2")
    _sysfs(m, "run", 0, "set-up run=0")
    mapped = []
    for pc in scenario.processes:
        p = m.spawn(pc.name, merge_any=pc.merge_any, numa_node=pc.numa_node)
        for rc in pc.regions:
            vma = p.mmap(rc.pages, name=rc.name, thp=rc.thp)
            p.fill(vma, rc.tokens() if progress is None else _counted(rc.tokens(), progress))
            mapped.append((p, rc, vma))
    for p, rc, vma in mapped:  # the Vma itself: no lookup by name per region
        if rc.mergeable:
            p.madvise(vma, "mergeable")
    _sysfs(m, "run", 1, "set-up run=1")
    return m


def scenario_costs(scenario: Scenario):
    """The CPU cost profile of ``[model] costs`` (a path relative to the scenario file), or
    None for the shipped default; a malformed profile raises ScenarioError about that file."""
    import os

    from samepage.ksm.costs import CostProfileError, load_profile

    path = scenario.model.costs
    if path is None:
        return None
    if not os.path.isabs(path) and scenario.path:
        path = os.path.join(os.path.dirname(os.path.abspath(scenario.path)), path)
    try:
        return load_profile(path)
    except CostProfileError as e:
        raise ScenarioError(e.file, e.key, e.msg) from None


def _sysfs(m: Machine, name: str, value, where: str) -> None:
    try:
        m.sysfs_write(name, value)
    except OSError as e:
        raise ScenarioRunError(f"{where}: writing {value!r} to {name} failed: "
                               f"{e.strerror or e}") from None


def event_origins(scenario: Scenario) -> dict[int, str]:
    """``id(event) -> "FILE: event[k]"``, so that an event that fails names its file and
    key like every other scenario error."""
    fname = scenario.path or "<string>"
    return {id(ev): f"{fname}: event[{k}]" for k, ev in enumerate(scenario.events)}


def apply_event(m: Machine, ev: EventCfg, index: int | None = None,
                origin: str | None = None) -> None:
    """Carry out one event; ``origin`` ("FILE: event[k]", see event_origins) prefixes an
    error."""
    if ev.op == "set":  # a sysfs write: no process
        _sysfs(m, ev.tunable, ev.value,
               f"{origin} (set {ev.when})" if origin else f"event {ev.when} (set)")
        return
    where = (f"{origin} ({ev.op} on {ev.process} {ev.when})" if origin else
             f"event {ev.when} ({ev.op} on {ev.process})")
    p = m.processes.get(ev.process)
    if p is None or not p.alive:
        raise ScenarioRunError(f"{where}: process {ev.process!r} is not running")
    try:
        if ev.op in ("write", "zap", "mergeable", "unmergeable", "munmap"):
            vma = p.region(ev.region)
            if ev.op == "write":
                p.write(vma, ev.page_indices(vma.nr_pages), ev.token)
            elif ev.op == "zap":
                p.zap(vma, ev.page_indices(vma.nr_pages))
            elif ev.op == "munmap":
                p.munmap(vma)
            else:
                p.madvise(vma, ev.op)
        elif ev.op == "fork":
            p.fork(ev.child)
        elif ev.op == "exit":
            p.exit()
        elif ev.op == "merge_any":
            p.prctl_set_memory_merge(bool(ev.value))
    except KeyError:
        raise ScenarioRunError(f"{where}: process {ev.process!r} has no region "
                               f"{ev.region!r}") from None
    except (SyscallError, OSError) as e:
        raise ScenarioRunError(f"{where}: {e.strerror or e}") from None


def batch_record_with_costs(b: int, r, m: Machine) -> dict:
    """The trace record of batch ``b`` plus extra keys (ignored by the comparison): ksmd's
    CPU time in the model, pages_to_scan after the batch and the operation counts."""
    from samepage.ksm.opcounts import as_dict
    rec = format_batch_record(b, r.t_ms, m.counters())
    rec["ksmd_cpu_us"] = round(r.cpu_ms * 1000, 1)
    rec["pages_to_scan"] = m.sysfs_read("pages_to_scan")    # not m.ksm: no materialising
    rec["ops"] = as_dict(r.ops)
    return rec


def iter_model_trace(scenario: Scenario, batches: int | None = None,
                     machine_out: list | None = None,
                     same_folio: str | None = None, sanitize: bool = False,
                     setup_progress: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Yield the model's trace of ``scenario`` record by record (``same_folio`` overrides
    the scenario's ``[model] same_folio``; ``sanitize`` runs it with the sanitizer, which
    raises samepage.sanitizer.SanitizerReport on the first bug). A scenario in which ksmd
    cannot run some batch is refused first (checks.check_runnable, a ScenarioError)."""
    check_runnable(scenario, batches)
    if batches is not None and batches != scenario.run.batches:
        check_resources(scenario, scenario.path or "<string>", batches)
    m = setup_machine(scenario, same_folio, sanitize, setup_progress)
    if machine_out is not None:
        machine_out.append(m)
    n = batches if batches is not None else scenario.run.batches
    events = scenario.sorted_events()
    origins = event_origins(scenario)
    ei = 0
    dyn = scenario_dynamics(scenario, m) if scenario.timed else None
    for b in range(1, n + 1):
        if dyn is not None:
            # time-based dynamics: what fell due while ksmd slept, before batch b starts
            t = sim_ms(m)
            while ei < len(events) and events[ei].at_ms is not None and events[ei].at_ms <= t:
                apply_event(m, events[ei], origin=origins[id(events[ei])])
                ei += 1
            dyn.advance(t)
        r = m.run_batch()
        if r is None:
            raise ScenarioRunError(
                f"ksmd cannot run before batch {b} (run is not 1, or no mm is registered); "
                "a scenario that stops ksmd must restart it in the same after_batch")
        yield batch_record_with_costs(b, r, m)
        while ei < len(events) and events[ei].at_ms is None and events[ei].after_batch <= b:
            apply_event(m, events[ei], origin=origins[id(events[ei])])
            ei += 1
    yield format_final_record(m.kernel_release, m.ksm_stats())


def run_scenario_on_model(scenario: Scenario, batches: int | None = None,
                          progress: Callable[[int], None] | None = None,
                          same_folio: str | None = None, sanitize: bool = False) -> ModelRun:
    holder: list = []
    records: list[dict] = []
    final: dict = {}
    for rec in iter_model_trace(scenario, batches, holder, same_folio, sanitize):
        if rec.get("final"):
            final = rec
        else:
            records.append(rec)
            if progress is not None:
                progress(rec["batch"])
    return ModelRun(records, final, holder[0])
