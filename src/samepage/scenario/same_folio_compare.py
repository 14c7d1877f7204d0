"""Run one scenario under each same-folio merge strategy and summarise the differences
(``samepage run SCENARIO --same-folio all``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from samepage.ksm.same_folio import STRATEGIES
from samepage.mm.folio import MemoryError_

from .model_runner import iter_model_trace
from .schema import Scenario

# the counters that stop moving once KSM has converged (full_scans, pages_scanned,
# pages_skipped, t_ms, ksmd_cpu_us and the per-batch ops keep moving)
_SETTLING = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
             "stable_node_chains", "stable_node_dups", "ksm_zero_pages", "general_profit")


@dataclass
class StrategyResult:
    strategy: str
    records: list[dict]
    final: dict | None
    settled_batch: int | None        # first batch after which the counters stay as at the end
    settled_full_scans: int | None   # full_scans at that batch
    pages_merged: int                # pages_shared + pages_sharing at the end
    ksm_zero_pages: int
    splits: int                      # successful split_huge_page calls
    splits_failed: int
    merge_failures: dict[str, int] = field(default_factory=dict)
    error: str | None = None         # a broken reference/lock rule stopped the run

    @property
    def splits_attempted(self) -> int:
        return self.splits + self.splits_failed


def settled_at(records: list[dict]) -> int | None:
    """Index of the first record from which every settling counter equals the last one."""
    if not records:
        return None

    def key(rec):
        return tuple(rec.get(k) for k in _SETTLING)

    last = key(records[-1])
    idx = len(records) - 1
    while idx > 0 and key(records[idx - 1]) == last:
        idx -= 1
    return idx


def run_strategy(scenario: Scenario, strategy: str, batches: int | None = None) -> StrategyResult:
    holder: list = []
    records: list[dict] = []
    final = None
    error = None
    try:
        for rec in iter_model_trace(scenario, batches, holder, same_folio=strategy):
            if rec.get("final"):
                final = rec
            else:
                records.append(rec)
    except MemoryError_ as e:
        error = str(e)
    m = holder[0] if holder else None
    idx = settled_at(records)
    last = records[-1] if records else {}
    vm = m.mem.vmstat if m else {}
    return StrategyResult(
        strategy=strategy, records=records, final=final,
        settled_batch=records[idx]["batch"] if idx is not None else None,
        settled_full_scans=records[idx]["full_scans"] if idx is not None else None,
        pages_merged=last.get("pages_shared", 0) + last.get("pages_sharing", 0),
        ksm_zero_pages=last.get("ksm_zero_pages", 0),
        splits=sum(v for k, v in vm.items() if k.startswith("mthp_") and k.endswith("_split")),
        splits_failed=sum(v for k, v in vm.items()
                          if k.startswith("mthp_") and k.endswith("_split_failed")),
        merge_failures=dict(Counter(m.ksm.merge_failures)) if m else {},
        error=error)


def compare_same_folio(scenario: Scenario, strategies: list[str] | None = None,
                       batches: int | None = None) -> list[StrategyResult]:
    """The scenario once per strategy (all of them by default)."""
    return [run_strategy(scenario, s, batches) for s in (strategies or list(STRATEGIES))]
