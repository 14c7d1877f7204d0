"""Simulated time against the kernel: ksmd's period is sleep_millisecs rounded up to whole
jiffies plus one tick (HZ=250 on the reference kernel), so the model's t_ms should follow the
recorded traces closely even though t_ms is not part of the batch-by-batch comparison."""

from __future__ import annotations

from pathlib import Path

import pytest

from samepage.scenario import load_scenario, read_trace
from samepage.scenario.model_runner import run_scenario_on_model

SCENARIOS = Path(__file__).parent / "conformance" / "scenarios"
CASES = sorted(p for p in SCENARIOS.glob("*.toml") if p.with_suffix(".jsonl").exists())


def test_there_are_traces_to_time():
    assert len(CASES) >= 40


@pytest.mark.parametrize("toml", CASES[::4], ids=lambda p: p.stem)
def test_model_time_follows_the_kernel(toml: Path):
    kernel, _ = read_trace(toml.with_suffix(".jsonl"))
    model = run_scenario_on_model(load_scenario(toml), batches=len(kernel)).records
    k_end, m_end = kernel[-1]["t_ms"], model[-1]["t_ms"]
    if k_end < 500:
        pytest.skip("too short to compare")
    assert abs(m_end - k_end) <= 0.03 * k_end, (m_end, k_end)
