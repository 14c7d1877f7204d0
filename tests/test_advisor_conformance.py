"""The scan-time advisor against the recorded kernel: pages_to_scan after each full scan.

The advisor's choice is a function of ksmd's measured CPU time over a scan, so the model
follows the kernel only if its CPU cost model (samepage.ksm.costs, the shipped profile)
does. The traces keep pages_to_scan per batch as an extra key on both sides.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from samepage.ksm.costs import CostModel, default_costs
from samepage.scenario import load_scenario, read_trace
from samepage.scenario.model_runner import apply_event, setup_machine

HERE = Path(__file__).parent / "conformance" / "advisor"
CASES = sorted(p for p in HERE.glob("*.toml") if p.with_suffix(".jsonl").exists())
TOLERANCE = 0.15
MIN_SCANS = 6


def after_each_scan(records: list[dict]) -> dict[int, int]:
    """full scan number -> pages_to_scan right after the batch that completed it."""
    out: dict[int, int] = {}
    prev = 0
    for r in records:
        if r["full_scans"] != prev:
            out[r["full_scans"]] = r["pages_to_scan"]
        prev = r["full_scans"]
    return out


def model_records(toml: Path, kernel: list[dict], costs: CostModel | None = None) -> list[dict]:
    """The model's batches (full_scans, pages_to_scan), its ksmd starting with the CPU time
    the kernel's had at batch 1 (the advisor's first reading counts it all)."""
    sc = load_scenario(toml)
    m = setup_machine(sc)
    if costs is not None:
        m.ksm.costs = costs
    m.ksm.cpu_ns = kernel[0]["ksmd_runtime_before_us"] * 1000
    events = sc.sorted_events()
    out, ei = [], 0
    for b in range(1, len(kernel) + 1):
        m.run_batch()
        out.append({"batch": b, "full_scans": m.ksm.ksm_scan.seqnr,
                    "pages_to_scan": m.ksm.ksm_thread_pages_to_scan})
        while ei < len(events) and events[ei].after_batch <= b:
            apply_event(m, events[ei])
            ei += 1
    return out


def test_there_is_a_recorded_advisor_trace():
    assert CASES, "tests/conformance/advisor has no recorded scenario"
    for toml in CASES:
        kernel, final = read_trace(toml.with_suffix(".jsonl"))
        assert final is not None
        assert load_scenario(toml).ksm["advisor_mode"] == "scan-time"
        assert all("pages_to_scan" in r and "ksmd_cpu_us" in r for r in kernel)
        assert kernel[0]["ksmd_runtime_before_us"] > 0


@pytest.mark.parametrize("toml", CASES, ids=lambda p: p.stem)
def test_model_advisor_follows_the_kernel(toml: Path):
    kernel, _ = read_trace(toml.with_suffix(".jsonl"))
    model = model_records(toml, kernel)
    k, m = after_each_scan(kernel), after_each_scan(model)
    scans = sorted(set(k) & set(m))
    assert len(scans) >= MIN_SCANS, (k, m)
    for s in scans:
        assert abs(m[s] - k[s]) <= TOLERANCE * k[s], f"full scan {s}: model {m[s]} kernel {k[s]}"
    # the advisor really moved pages_to_scan: the test is not about a constant
    assert len(set(k.values())) >= 3


@pytest.mark.parametrize("toml", CASES, ids=lambda p: p.stem)
def test_a_wrong_cost_model_misses_the_kernel(toml: Path):
    """The comparison can fail: ksmd three times as expensive picks other values."""
    kernel, _ = read_trace(toml.with_suffix(".jsonl"))
    d = default_costs()
    slow = CostModel(ns={n: 3 * v for n, v in d.ns.items()}, hz=d.hz)
    k = after_each_scan(kernel)
    m = after_each_scan(model_records(toml, kernel, slow))
    assert any(abs(m[s] - k[s]) > TOLERANCE * k[s] for s in set(k) & set(m))
