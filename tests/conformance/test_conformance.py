"""The conformance suite: the model held to the live Linux 6.18 kernel.

Every ``scenarios/NAME.toml`` has a ``scenarios/NAME.jsonl`` recorded on this machine's KSM
(``samepage kernel record``; the kernel release is in the trace's final record). They cover
every behaviour of spec section 12 that a scenario can express (``SPEC12_COVERAGE``) and the
peer suites of /work/shared/spec/peer-tests.md scaled down (``kst_*``: kselftest ksm_tests
-M/-U/-Z; ``kft_*``: ksm_functional_tests; ``ltp_*``: LTP ksm01 and ksm07), whose own
assertions are checked on the recorded traces too (``PEER_ORACLES``).

Three kinds of test:

* **model** (always): the model must reproduce every recorded trace exactly -- all 11 counters
  of every batch and the final per-process ksm_stat (t_ms is not compared). A known, explained
  divergence is listed in ``KNOWN_DIVERGENCES`` and is an ``xfail(strict=True)``;
* **peer oracles** (always): the recorded kernel traces satisfy the peer suites' assertions;
* **live** (``kernel`` marker; root and a writable /sys/kernel/mm/ksm, else skipped): each
  scenario runs again on the live kernel (taking the KSM lock) and must repeat its recorded
  trace. All of them run by default (about 3 minutes on the development machine; the whole
  `make test` took 6.6 minutes);
  ``SAMEPAGE_LIVE=subset`` runs only ``LIVE_SUBSET``, ``SAMEPAGE_LIVE=0`` none.
  ``SAMEPAGE_LIVE_ALL=1`` forces all of them whatever SAMEPAGE_LIVE says.

Not possible on this machine (one NUMA node): LTP ksm02/04/06 and ksm_tests -N (they need
two memory nodes and merge_across_nodes = 0 to matter).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from samepage.kernel import sysfs
from samepage.kernel.runner import check_scenario
from samepage.scenario import COUNTER_NAMES, load_scenario, read_trace
from samepage.scenario.model_runner import run_scenario_on_model
from samepage.scenario.trace_compare import compare_traces

SCENARIOS = Path(__file__).parent / "scenarios"
NAMES = sorted(p.stem for p in SCENARIOS.glob("*.toml"))

#: name -> why the model does not reproduce the kernel (spec section and what differs). Each
#: is an xfail(strict=True): a fix makes the test fail until the entry is removed.
KNOWN_DIVERGENCES: dict[str, str] = {}

#: A representative subset for SAMEPAGE_LIVE=subset: one scenario per mechanism (plain
#: merging, chains, zero pages both ways, COW, the LRU batch, fork, late registration,
#: smart scan, unmerge paths, prctl, THP split, ksmd timing, a peer suite).
LIVE_SUBSET = (
    "identical", "zero_pages_on", "kst_Z0_10", "write_merged", "lru_batch_31",
    "fork_after_merge", "late_register", "unique_smart_scan", "kft_unmerge_zero_pages",
    "kft_prctl_unmerge", "thp_zero_split", "sleep_change", "ltp_ksm01",
)

# --------------------------------------------------------------------------- spec §12

#: spec section 12 item -> the scenarios that show it, or a string: why no scenario can.
SPEC12_COVERAGE: dict[int, tuple[str, ...] | str] = {
    1: ("identical", "two_processes", "kst_M_10"),
    2: ("volatile",),
    3: ("s12_03_join_existing",),
    4: ("pattern5", "kst_M_10", "kst_M_256"),
    5: ("max_sharing_2", "s12_05_chain_ceil", "kst_M_257", "kst_M_300", "kst_M_512",
        "identical"),
    6: ("write_merged", "kst_U_2", "kst_U_512", "rewrite_same_content"),
    7: ("unmergeable", "kft_unmerge", "kft_unmerge_discarded"),
    8: ("run2_midrun", "s12_09_run2_twice", "ltp_ksm01"),
    9: ("s12_09_run2_twice",),
    10: ("s12_10_max_sharing_after_run2",),   # the EBUSY/EINVAL writes themselves: see below
    11: ("zero_pages_on", "kst_Z1_512", "kft_unmerge_zero_pages", "s12_11_use_zero_pages_toggle"),
    12: ("zero_pages_off", "kst_Z0_10", "kst_Z0_512"),
    13: ("zero_pages_on", "kft_unmerge_zero_pages", "kft_fork_zero_pages"),
    14: ("fork_after_merge", "s12_14_fork_beyond_max_sharing", "kft_fork_merging_page_count",
         "s12_14_fork_zero_pages"),
    15: ("late_register",),
    16: ("identical", "s12_16_pages_to_scan_change", "kst_M_300"),
    17: ("unique_smart_scan", "smart_scan_phase", "s12_17_smart_scan_run2", "ltp_ksm07"),
    18: ("rewrite_same_content", "lru_batch_31"),
    19: ("thp_same_folio", "thp_same_folio_three", "thp_two_identical_d1"),
    20: ("s12_20_thp_two_folios", "thp_two_identical"),
    21: ("thp_zero_split", "thp_two_zero", "thp_two_zero_uzp", "mthp_64k_zero"),
    22: "every trace: the model computes pages_volatile and general_profit from its own "
        "rmap_items and matches the kernel's in all of them",
    23: ("unmergeable", "munmap", "kft_prctl", "kft_unmerge"),
    24: "not expressible: scenario regions are private anonymous mappings (no MAP_SHARED, "
        "hugetlb, PFN or DAX mappings); covered by tests/test_behaviours.py",
    25: ("munmap", "s12_25_exit_stale", "s12_06_zap_merged"),
}
#: Parts of items that no scenario can express (what the scenario format lacks).
SPEC12_NOT_EXPRESSIBLE = {
    10: "a refused write (EBUSY while pages are shared, EINVAL for max_page_sharing < 2) makes "
        "the scenario fail on both sides; tests/test_sysfs.py checks the errnos, and "
        "docs/kernel-findings.md lists the ones probed on the kernel",
    18: "the only extra references a scenario can create are the per-CPU LRU add batch's "
        "(GUP pins, mlock, swap cache are not in the format)",
    19: "'not at all while the folio lock cannot be taken' needs a concurrent lock holder",
    23: "'re-added by the next mmap' for prctl mms needs an mmap event",
}

# --------------------------------------------------------------------------- peer oracles


def _ksm_tests_count(d: int, m: int = 256) -> dict[str, int]:
    """kselftest ksm_tests' assert_ksm_pages_count(d) with max_page_sharing m."""
    if d % m in (0, 1):
        return {"pages_shared": d // m, "pages_sharing": (d // m) * (m - 1)}
    shared = d // m + 1
    return {"pages_shared": shared, "pages_sharing": d - shared}


def _bps(n: int) -> int:
    """Batches per full scan of n pages with pages_to_scan 100."""
    return n // 100 + 1


def _peer_oracles() -> dict[str, list[tuple[int | str, dict, str]]]:
    """name -> [(batch or "final:PROCESS" or "last", expected values, what the peer asserts)]."""
    o: dict[str, list[tuple[int | str, dict, str]]] = {}
    for n in (10, 256, 257, 300, 512):
        o[f"kst_M_{n}"] = [("last", _ksm_tests_count(n), f"ksm_tests -M -p {n}")]
        o[f"kst_Z0_{n}"] = [("last", {**_ksm_tests_count(n), "ksm_zero_pages": 0},
                             f"ksm_tests -Z -p {n} -z 0")]
        o[f"kst_Z1_{n}"] = [("last", {"pages_shared": 0, "pages_sharing": 0,
                                      "ksm_zero_pages": n}, f"ksm_tests -Z -p {n} -z 1")]
    o["kst_U_2"] = [(3, {"pages_shared": 0, "pages_sharing": 0},
                     "ksm_tests -U: assert_ksm_pages_count(0) one full scan after the writes")]
    for n in (10, 256, 257, 300, 512):
        o[f"kst_U_{n}"] = [(3 * _bps(n), {}, ""),   # placeholder: batch exists
                           ("final:p", {"ksm_merging_pages": n - 2},
                            "pages 0 and 1 no longer map a KSM page, the others still do")]
    o["kst_M_10_prctl"] = [("last", _ksm_tests_count(10), "ksm_tests -M -p 10 -t 1")]
    for name, n in (("ltp_ksm01", 96), ("ltp_ksm01_u", 96)):
        o[name] = [
            (3, {"pages_shared": 2, "pages_sharing": n - 2, "pages_volatile": 0,
                 "pages_unshared": 0}, "LTP ksm01 phase 1"),
            (6, {"pages_shared": 3, "pages_sharing": n - 3, "pages_volatile": 0,
                 "pages_unshared": 0}, "LTP ksm01 phase 2"),
            (9, {"pages_shared": 1, "pages_sharing": n - 1, "pages_volatile": 0,
                 "pages_unshared": 0}, "LTP ksm01 phase 3"),
            (12, {"pages_shared": 1, "pages_sharing": n - 2, "pages_volatile": 0,
                  "pages_unshared": 1}, "LTP ksm01 phase 4"),
            (13, {"pages_shared": 0, "pages_sharing": 0},
             "after LTP's run = 2 (here run = 1 again: one batch later nothing is shared)"),
        ] + [(f"final:child{i}", {"ksm_rmap_items": 0, "ksm_merging_pages": 0},
              "after run = 2 and run = 0 every rmap_item is gone")
             for i in range(3 if name == "ltp_ksm01" else 4)]
    o["kft_unmerge"] = [("final:p", {"ksm_merging_pages": 0}, "test_unmerge: no duplicates")]
    o["kft_unmerge_discarded"] = [("final:p", {"ksm_merging_pages": 0},
                                   "test_unmerge_discarded: no duplicates")]
    o["kft_unmerge_zero_pages"] = [
        (5, {"ksm_zero_pages": 128}, "test_unmerge_zero_pages (a): all pages are KSM zero pages"),
        (6, {"ksm_zero_pages": 64}, "(b): MADV_UNMERGEABLE on the first half"),
        (7, {"ksm_zero_pages": 0}, "(c): every page of the second half written"),
    ]
    o["kft_prctl"] = [("final:p", {"ksm_merge_any": False}, "test_prctl: cleared again")]
    o["kft_prctl_unmerge"] = [("final:p", {"ksm_merging_pages": 0, "ksm_merge_any": False},
                               "test_prctl_unmerge: no duplicates")]
    o["kft_prctl_fork"] = [("final:child", {"ksm_merge_any": True},
                            "test_prctl_fork: PR_SET_MEMORY_MERGE is inherited")]
    o["kft_fork_merging_page_count"] = [
        ("final:child", {"ksm_merging_pages": 0},
         "test_fork_ksm_merging_page_count: not inherited")]
    o["kft_fork_zero_pages"] = [(8, {"ksm_zero_pages": 0},
                                 "proposed fork test: global ksm_zero_pages back to 0, no "
                                 "underflow")]
    return o


PEER_ORACLES = _peer_oracles()


def _ltp_ksm07_ok(batches: list[dict]) -> str | None:
    """LTP ksm07: pages_skipped grows by at least half as much as full_scans (integer
    arithmetic, from the start of the run) once enough full scans have passed."""
    last = batches[-1]
    f, k = last["full_scans"], last["pages_skipped"]
    if k < f * 50 // 100:
        return f"pages_skipped {k} < full_scans {f} * 50 / 100"
    return None


# --------------------------------------------------------------------------- helpers


def _paths(name: str) -> tuple[Path, Path]:
    return SCENARIOS / f"{name}.toml", SCENARIOS / f"{name}.jsonl"


def _params(names):
    for name in names:
        marks = ()
        if name in KNOWN_DIVERGENCES:
            marks = (pytest.mark.xfail(reason=KNOWN_DIVERGENCES[name], strict=True),)
        yield pytest.param(name, id=name, marks=marks)


def _live_names() -> list[str]:
    if os.environ.get("SAMEPAGE_LIVE_ALL", "") not in ("", "0"):
        return NAMES
    mode = os.environ.get("SAMEPAGE_LIVE", "all").lower()
    if mode in ("0", "no", "none", "off"):
        return []
    if mode == "subset":
        return [n for n in NAMES if n in LIVE_SUBSET]
    return NAMES


def _live_usable() -> str | None:
    if not os.path.exists("/sys/kernel/mm/ksm/run"):
        return "no /sys/kernel/mm/ksm (a kernel without KSM)"
    if os.geteuid() != 0:
        return "needs root to drive the live KSM"
    if not sysfs.ksm_writable():
        return "/sys/kernel/mm/ksm/run is not writable"
    return None


# --------------------------------------------------------------------------- the suite


def test_suite_size():
    assert len(NAMES) >= 40, NAMES
    groups = {n.split("_")[0] for n in NAMES}
    assert {"kst", "kft", "ltp", "s12"} <= groups


@pytest.mark.parametrize("name", NAMES)
def test_scenario_and_trace_are_well_formed(name):
    toml, trace = _paths(name)
    sc = load_scenario(toml)
    check_scenario(sc)                       # the live harness accepts it
    assert sc.description, f"{toml.name}: say what the scenario shows"
    assert int(sc.ksm.get("sleep_millisecs", 20)) == 150 and sc.run.batches <= 50
    for p in sc.processes:
        for r in p.regions:
            if r.thp != "huge":
                assert r.thp == "nohuge", f"{toml.name}: use thp = 'nohuge' unless testing THP"
    assert trace.exists(), f"{trace.name} has not been recorded (samepage kernel record)"
    batches, final = read_trace(trace)
    assert [r["batch"] for r in batches] == list(range(1, sc.run.batches + 1))
    assert final is not None and final["kernel"].startswith("6.18"), final and final["kernel"]
    assert set(final["processes"]) <= set(sc.process_names())


def test_spec12_coverage_is_complete():
    assert sorted(SPEC12_COVERAGE) == list(range(1, 26))
    for item, how in SPEC12_COVERAGE.items():
        if isinstance(how, str):
            assert how
            continue
        for name in how:
            assert name in NAMES, f"spec 12.{item}: no scenario {name!r}"


@pytest.mark.parametrize("fast_forward", ["1", "0"], ids=["ff", "no-ff"])
@pytest.mark.parametrize("name", list(_params(NAMES)))
def test_model_reproduces_kernel_trace(name, fast_forward, monkeypatch):
    monkeypatch.setenv("SAMEPAGE_FAST_FORWARD", fast_forward)   # samepage.ksm.fastforward
    toml, trace = _paths(name)
    kernel_batches, kernel_final = read_trace(trace)
    model = run_scenario_on_model(load_scenario(toml), batches=len(kernel_batches))
    cmp = compare_traces(model.records, model.final, kernel_batches, kernel_final)
    assert cmp.identical, f"{name}: {cmp.summary()}"


@pytest.mark.parametrize("name", sorted(PEER_ORACLES) + ["ltp_ksm07"])
def test_kernel_trace_meets_peer_oracle(name):
    batches, final = read_trace(_paths(name)[1])
    if name == "ltp_ksm07":
        assert _ltp_ksm07_ok(batches) is None, _ltp_ksm07_ok(batches)
        return
    by_batch = {r["batch"]: r for r in batches}
    for where, want, what in PEER_ORACLES[name]:
        if where == "last":
            got = batches[-1]
        elif isinstance(where, int):
            got = by_batch[where]
        else:
            got = final["processes"][where.split(":", 1)[1]]
        diff = {k: (got[k], v) for k, v in want.items() if got[k] != v}
        assert not diff, f"{name} at {where} ({what}): got/expected {diff}"


def test_live_subset_exists():
    assert set(LIVE_SUBSET) <= set(NAMES)


@pytest.mark.kernel
@pytest.mark.parametrize("name", _live_names())
def test_live_kernel_repeats_recorded_trace(name):
    why = _live_usable()
    if why:
        pytest.skip(why)
    from samepage.kernel.record import run_with_retries
    from samepage.kernel.runner import ForeignKsmUsers, UnreliableTrace

    toml, trace = _paths(name)
    recorded, recorded_final = read_trace(trace)
    here = os.uname().release
    if recorded_final["kernel"].split(".")[:2] != here.split(".")[:2]:
        pytest.skip(f"recorded on Linux {recorded_final['kernel']}, this is {here}: re-record "
                    "with samepage kernel record")
    info: dict = {}
    try:
        records, final = run_with_retries(load_scenario(toml), retries=2, lock_timeout=900,
                                          info=info)
    except ForeignKsmUsers as e:
        pytest.skip(str(e))
    except UnreliableTrace as e:
        pytest.skip(f"machine too busy for a repeatable run: {e}")
    assert info.get("restore_errors") == []
    cmp = compare_traces(records, final, recorded, recorded_final, a_label="live",
                         b_label="recorded")
    assert cmp.identical, f"{name}: {cmp.summary()}"
    assert [c for c in COUNTER_NAMES]      # (the 11 counters and the final ksm_stat compared)
