"""Simulated CPU cost of ksmd's work, in nanoseconds per operation.

ksmd's simulated time (``t_ms`` in traces, the advisor's CPU percentage, predicted
convergence times) is the sum of these costs.  The defaults are derived from ksmd on the
reference machine (Linux 6.18, x86-64) scanning 262,144 pages with the workload of
``benchmarks/scan_rate.py``: 1.43 M pages/s for a first scan (checksums only), 331 k pages/s
while merging, 3.4 M pages/s in steady state (all merged) and 159 k pages/s over an
unstable tree of 262,144 unique pages.  They are kept in this one place so that calibration
can replace them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class CostModel:
    visit_ns: float = 294.0         # get the next page and rmap_item, cmp_and_merge_page entry
    checksum_ns: float = 405.0      # calc_checksum: xxhash over 4 KiB
    memcmp_ns: float = 300.0        # one memcmp_pages in a tree walk (incl. get/put of the page)
    skip_ns: float = 60.0           # a smart-scan skip
    rmap_alloc_ns: float = 80.0     # alloc_rmap_item / free_rmap_item
    merge_one_ns: float = 1500.0    # try_to_merge_one_page: lock, write-protect, replace
    split_ns: float = 20000.0       # split_huge_page of a PMD-sized folio
    stable_node_ns: float = 300.0   # stable_tree_insert / append bookkeeping
    scan_start_ns: float = 2000.0   # lru_add_drain_all and tree reset at a full-scan start
    hz: int = 250                   # CONFIG_HZ of the reference kernel (4 ms jiffies)

    def ksmd_sleep_ns(self, sleep_millisecs: int) -> int:
        """The real length of ksmd's sleep: msecs_to_jiffies rounds up to whole jiffies, and
        the timer fires on the tick after (measured: 150 ms sleeps last 156 ms)."""
        if sleep_millisecs <= 0:
            return 0
        jiffy_ns = 1_000_000_000 // self.hz
        jiffies = -(-sleep_millisecs * 1_000_000 // jiffy_ns)
        return (jiffies + 1) * jiffy_ns

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


DEFAULT_COSTS = CostModel()
