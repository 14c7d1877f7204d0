"""Bug: the first version of "[PATCH] ksm: delay the check of splitting compound pages"
(LKML, 14-16 Nov 2023): a large folio's reference dropped too early.

xu xin's proposal, as David Hildenbrand first rewrote it ("if both pages belong to the same
folio ... let's just drop one reference early"): when the scanned page and the unstable
tree's page are subpages of one large folio, put tree_page's reference before
try_to_merge_two_pages so that the split inside try_to_merge_one_page can succeed.  David's
own correction (16 Nov 2023): after the split ksmd holds no reference on tree_page, yet step
2 of try_to_merge_two_pages locks, write-protects and compares it; a zap of that page in the
window is a use-after-free.  (samepage.ksm.same_folio keeps it as the ``early-put``
strategy; here it replaces part D of cmp_and_merge_page whatever --same-folio says.)

  samepage explore examples/bugs/thp-early-put.toml --patch examples/bugs/thp-early-put.py
"""


def unstable_tree_merge(ksm, item, page):
    """early-put, as part D of cmp_and_merge_page."""
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
