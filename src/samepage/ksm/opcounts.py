"""Operation counts of ksmd: what ``ksm_do_scan`` did, by kind, for the CPU cost model.

The engine (samepage.ksm.ksm) keeps one list of integers, ``Ksm.ops``, indexed by the OP_*
constants below, and only ever increments it: no allocation on the per-page path.  The
counts are cumulative; a batch's counts are the difference of two snapshots
(``Machine.run_batch`` returns them).  ksmd's simulated CPU time is the dot product of the
counts with the per-operation costs of a cost profile (samepage.ksm.costs).

Each count names the function of mm/ksm.c where the work happens.
"""

from __future__ import annotations

#: ``ksm_do_scan`` calls: one per batch (ksmd's wake-up, ksm_thread_mutex, the loop set-up)
OP_BATCH = 0
#: pages handed to ``cmp_and_merge_page`` (``scan_get_next_rmap_item``'s page walk included)
OP_VISIT = 1
#: ``calc_checksum`` (xxhash of 4 KiB)
OP_CHECKSUM = 2
#: ``memcmp_pages`` in a stable-tree walk (``stable_tree_search`` / ``stable_tree_insert``)
OP_MEMCMP_STABLE = 3
#: ``memcmp_pages`` in the unstable-tree walk (each after a ``get_mergeable_page``)
OP_MEMCMP_UNSTABLE = 4
#: tree-walk memcmps that found equal contents (a full 4 KiB compare; the others stop early)
OP_MEMCMP_EQUAL = 5
#: dups looked at in ``stable_node_dup`` (``ksm_get_folio`` on each)
OP_CHAIN_DUP = 6
#: ``pages_identical`` in ``try_to_merge_one_page`` (full 4 KiB compare)
OP_MEMCMP_MERGE = 7
#: ``try_to_merge_one_page`` calls (lock, write_protect_page, replace_page), failed or not
OP_MERGE_ONE = 8
#: pages merged into an existing KSM page (``stable_tree_append`` from cmp_and_merge_page)
OP_MERGE_KSM = 9
#: pairs merged from the unstable tree (``stable_tree_insert_pair``)
OP_MERGE_PAIR = 10
#: pages merged with the zero page (``use_zero_pages`` = 1)
OP_MERGE_ZERO = 11
#: ``alloc_rmap_item``
OP_RMAP_ALLOC = 12
#: ``free_rmap_item`` by ksmd (stale or trailing rmap_items)
OP_RMAP_FREE = 13
#: stable nodes created (``stable_tree_insert``)
OP_STABLE_NODE_NEW = 14
#: stable nodes and chains freed (``free_stable_node``)
OP_STABLE_NODE_FREE = 15
#: smart-scan skips (``should_skip_rmap_item`` returned true)
OP_SKIP = 16
#: ``split_huge_page`` calls
OP_SPLIT = 17
#: ``break_cow`` (undoing half of a failed pair merge)
OP_COW_BREAK = 18
#: full-scan starts (``lru_add_drain_all``, unstable tree reset)
OP_SCAN_START = 19
#: rmap_items inserted into the unstable tree
OP_UNSTABLE_INSERT = 20
#: addresses of a mergeable VMA walked without a page to visit (none mapped, or the zero
#: page): ``scan_get_next_rmap_item`` still walks the page table for each
OP_NO_PAGE = 21
#: visits of a page mapped by a PMD (a whole THP); they are counted in ``visit`` too, but
#: priced apart (``priced``): the kernel's page walk stops a level higher
OP_VISIT_PMD = 22
#: ``calc_checksum`` of a page of a large folio; counted in ``checksum`` too, priced apart
#: (measured cheaper: physically contiguous, presumably streamed across the 4 KiB boundary)
OP_CHECKSUM_LARGE = 23

OP_NAMES: tuple[str, ...] = (
    "batch", "visit", "checksum", "memcmp_stable", "memcmp_unstable", "memcmp_equal",
    "chain_dup", "memcmp_merge", "merge_one", "merge_ksm", "merge_pair", "merge_zero",
    "rmap_alloc", "rmap_free", "stable_node_new", "stable_node_free", "skip", "split",
    "cow_break", "scan_start", "unstable_insert", "no_page", "visit_pmd",
    "checksum_large",
)
N_OPS = len(OP_NAMES)
assert N_OPS == OP_CHECKSUM_LARGE + 1


def new_counts() -> list[int]:
    return [0] * N_OPS


def diff(after: list[int], before: list[int]) -> list[int]:
    return [a - b for a, b in zip(after, before)]


def priced(counts) -> list[int]:
    """The counts a cost profile prices: ``visit`` without the PMD-mapped visits, which
    ``visit_pmd`` prices, and ``checksum`` without those of large folios, which
    ``checksum_large`` prices (so every cost stays a non-negative cost of its own)."""
    out = list(counts)
    out[OP_VISIT] -= out[OP_VISIT_PMD]
    out[OP_CHECKSUM] -= out[OP_CHECKSUM_LARGE]
    return out


def as_dict(counts: list[int]) -> dict[str, int]:
    """The counts by name (all of them, zeros included, in OP_NAMES order)."""
    return dict(zip(OP_NAMES, counts))
