"""The model against traces recorded on the live Linux 6.18 kernel.

Each ``tests/fixtures/kernel/NAME.toml`` has a ``NAME.jsonl`` recorded with
``python -m samepage.kernel.record``.  The model must reproduce every batch record (all 11
counters; ``t_ms`` is not compared) and the final per-process ``ksm_stat``.  A fixture the
model cannot reproduce yet is listed in ``KNOWN_DIVERGENCES`` with the reason; its test is an
``xfail`` that must keep failing (strict), so a fix shows up.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from samepage.scenario import COUNTER_NAMES, load_scenario, read_trace
from samepage.scenario.model_runner import run_scenario_on_model

FIXTURES = Path(__file__).parent / "fixtures" / "kernel"

# name -> reason (spec section and what differs)
KNOWN_DIVERGENCES: dict[str, str] = {}


def _cases():
    for toml in sorted(FIXTURES.glob("*.toml")):
        trace = toml.with_suffix(".jsonl")
        if trace.exists():
            marks = ()
            if toml.stem in KNOWN_DIVERGENCES:
                marks = (pytest.mark.xfail(reason=KNOWN_DIVERGENCES[toml.stem], strict=True),)
            yield pytest.param(toml, trace, id=toml.stem, marks=marks)


CASES = list(_cases())


def first_difference(model: list[dict], kernel: list[dict]) -> str | None:
    for m, k in zip(model, kernel):
        diffs = [f"{c}: model {m[c]} kernel {k[c]}" for c in COUNTER_NAMES if m[c] != k[c]]
        if diffs:
            return f"batch {k['batch']}: " + "; ".join(diffs)
    if len(model) != len(kernel):
        return f"model has {len(model)} batches, kernel {len(kernel)}"
    return None


def test_there_are_enough_fixtures():
    assert len(CASES) >= 10, [c.id for c in CASES]


@pytest.mark.parametrize("toml,trace", CASES)
def test_model_matches_kernel_trace(toml: Path, trace: Path):
    scenario = load_scenario(toml)
    kernel_batches, kernel_final = read_trace(trace)
    assert kernel_final is not None and kernel_final["kernel"].startswith("6.18")
    run = run_scenario_on_model(scenario, batches=len(kernel_batches))
    diff = first_difference(run.records, kernel_batches)
    assert diff is None, diff
    assert run.final["processes"] == kernel_final["processes"]
