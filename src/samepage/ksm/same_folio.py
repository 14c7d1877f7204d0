"""Part D of ``cmp_and_merge_page`` (the unstable tree) and the three ways of handling a
pair of pages that belong to one large folio.

The LKML thread "[PATCH] ksm: delay the check of splitting compound pages" (14-16 Nov 2023;
``docs/ksm-spec.md`` §5, seed in ``../shared/seed/``) is about this code.  When the page being
scanned and the page found in the unstable tree are subpages of the same large folio, ksmd
holds two references on that folio (the scan's and ``get_mergeable_page``'s), so the split
inside ``try_to_merge_one_page`` fails: ``split_huge_page`` wants exactly one.

Each strategy is a function ``(ksm, rmap_item, page) -> None`` called after the stable tree
missed.  Select one with ``Machine(same_folio=...)``, ``[model] same_folio`` in a scenario or
``--same-folio`` on the command line.
"""

from __future__ import annotations

from collections.abc import Callable


def unstable_merge_v618(ksm, item, page: int) -> None:
    """``v6.18`` (the default): what Linux 6.18 does.

    Try to merge first; only afterwards compute ``split`` (both pages in one large folio),
    drop the tree page's reference, and if the merge failed for that reason, trylock the
    folio and split it now.  No merge happens in this pass; the pair merges a full scan
    later (spec §4.1 D3, §4.11.3)."""
    mem = ksm.mem
    found = ksm.unstable_tree_search_insert(item, page)
    if found is None:
        return
    tree_item, tree_page = found
    kfolio = ksm.try_to_merge_two_pages(item, page, tree_item, tree_page)
    folio = mem.page_folio[page]
    tree_folio = mem.page_folio[tree_page]
    split = folio.order > 0 and folio == tree_folio
    mem.folio_put(tree_folio)
    if ksm.preempt is not None:
        ksm.preempt("v6.18:after-put")
    if kfolio is not None:
        ksm.stable_tree_insert_pair(kfolio, tree_item, item)
    elif split:
        if not mem.folio_trylock(folio):
            ksm._fail("cmp_and_merge_page: same-folio split skipped, folio locked")
            return
        ksm.split_huge_page(page)
        mem.folio_unlock(mem.page_folio[page])


def unstable_merge_early_put(ksm, item, page: int) -> None:
    """``early-put``: xu xin's proposal of 16 Nov 2023, as David Hildenbrand first rewrote it
    ("if both pages belong to the same folio ... let's just drop one reference early").

    Detect the same folio before merging and drop the reference on ``tree_page`` right away,
    so the split inside ``try_to_merge_one_page`` can succeed; that reference being gone,
    it is not put again afterwards, and the old post-failure split is removed.

    The flaw (David's correction, 16 Nov 19:06): once ``try_to_merge_one_page`` has split the
    folio, ksmd's only reference moved to ``page``'s new folio and it holds none on
    ``tree_page``, yet step 2 of ``try_to_merge_two_pages`` still locks, write-protects and
    compares it.  Run alone, the refcount check in ``write_protect_page`` happens to fail
    that merge; if another thread frees ``tree_page`` in that window it is a use-after-free.
    The model keeps the flaw on purpose."""
    mem = ksm.mem
    found = ksm.unstable_tree_search_insert(item, page)
    if found is None:
        return
    tree_item, tree_page = found
    folio = mem.page_folio[page]
    tree_folio = mem.page_folio[tree_page]
    same_folio = folio == tree_folio
    if same_folio:
        mem.folio_put(tree_folio)            # drop "one of both" references early
        if ksm.preempt is not None:
            ksm.preempt("early-put:after-put")
    kfolio = ksm.try_to_merge_two_pages(item, page, tree_item, tree_page)
    if not same_folio:
        mem.folio_put(mem.page_folio_used(tree_page, "folio_put tree_page"))
    if kfolio is not None:
        ksm.stable_tree_insert_pair(kfolio, tree_item, item)


def unstable_merge_split_retry(ksm, item, page: int) -> None:
    """``split-retry``: David Hildenbrand's version at the end of the thread (16 Nov 19:06,
    "untested"): on a same-folio hit, put ``tree_page``, trylock, split, unlock and search
    the unstable tree again, so that the next lookup takes a fresh reference on the now
    independent ``tree_page`` and the pair can merge in this very scan.

    As posted it ignored ``split_huge_page``'s result and could loop forever when the split
    keeps failing (e.g. a pinned folio); this version returns on a failed split."""
    mem = ksm.mem
    while True:                              # retry:
        found = ksm.unstable_tree_search_insert(item, page)
        if found is None:
            return
        tree_item, tree_page = found
        folio = mem.page_folio[page]
        tree_folio = mem.page_folio[tree_page]
        if folio != tree_folio:
            break
        mem.folio_put(tree_folio)
        if ksm.preempt is not None:
            ksm.preempt("split-retry:after-put")
        if not mem.folio_trylock(folio):
            ksm._fail("cmp_and_merge_page: same-folio split skipped, folio locked")
            return
        err = ksm.split_huge_page(page)
        mem.folio_unlock(mem.page_folio[page])
        if err:
            ksm._fail("cmp_and_merge_page: same-folio split_huge_page failed")
            return
    kfolio = ksm.try_to_merge_two_pages(item, page, tree_item, tree_page)
    mem.folio_put(mem.page_folio_used(tree_page, "folio_put tree_page"))
    if kfolio is not None:
        ksm.stable_tree_insert_pair(kfolio, tree_item, item)


STRATEGIES: dict[str, Callable] = {
    "v6.18": unstable_merge_v618,
    "early-put": unstable_merge_early_put,
    "split-retry": unstable_merge_split_retry,
}
