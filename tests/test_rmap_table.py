"""rmap_items as rows of a table (issue 10): samepage.ksm.structs.RmapTable / RmapItem /
RmapList.

* memory: after one full scan of 65,536 mergeable pages the rmap_items cost less than 64
  bytes a page (their columns and lists; the scan's whole growth under tracemalloc stays
  below 72, CPython) and no RmapItem object lives per page (it was ~170 B/page as objects);
  the columns grow by doubling, so at most half their rows are spare;
* handle semantics: equality and hash by (table, row), alloc_rmap_item / free_rmap_item
  reuse rows, a stale handle names the row (a dangling pointer), the kernel's unions;
* the rbtree on handle nodes: random insert / erase / replace sequences give the same
  shapes and colours as on plain RbNode objects (hypothesis).
"""

from __future__ import annotations

import gc
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samepage import Machine
from samepage.ksm.rbtree import (RB_EMPTY, RbNode, RbRoot, rb_clear_node, rb_empty_node,
                                 rb_erase, rb_inorder, rb_insert_color, rb_link_node,
                                 rb_next, rb_prev, rb_replace_node, rb_validate)
from samepage.ksm.structs import (HEAD_ROW, STABLE_FLAG, RmapItem, RmapList, RmapTable,
                                  StableNode)

PAGES = 65_536          # a power of two: the table grows by doubling


def _machine(n: int) -> tuple:
    m = Machine()
    p = m.spawn("p")
    ram = p.mmap(n, name="ram", thp="nohuge")
    p.fill(ram, ((i % 1024) + 1 for i in range(n)))
    p.madvise(ram, "mergeable")
    for k, v in (("pages_to_scan", n), ("sleep_millisecs", 0), ("smart_scan", 0)):
        m.sysfs_write(k, v)
    m.sysfs_write("run", 1)
    return m, p


def _live_rmap_items() -> int:
    return sum(1 for o in gc.get_objects() if o.__class__ is RmapItem)


# ------------------------------------------------------------------------------ memory
@pytest.mark.skipif(sys.implementation.name != "cpython", reason="tracemalloc: CPython")
def test_a_scan_costs_less_than_64_bytes_a_page_of_rmap_items():
    import tracemalloc                   # not on PyPy
    m, _ = _machine(PAGES)
    ksm = m.ksm
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        m.run_full_scans(1)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    t = ksm.rmap_table
    assert ksm.ksm_rmap_items == PAGES == t.live_rows() and len(t) == PAGES
    # the rmap_items: an array element or a list slot per field and a row in the mm_slot's
    # list (~61 B/page with the containers' overallocation), no object per row
    def size(col):      # an object column is a list of CHUNK-row lists
        return sys.getsizeof(col) + (sum(map(sys.getsizeof, col)) if isinstance(col, list)
                                     else 0)

    cols = sum(size(getattr(t, c)) for c in RmapTable.__slots__ if c != "free_row")
    lists = sum(sys.getsizeof(s.rmap_list.rows) for s in ksm.mm_list)
    assert (cols + lists) / PAGES < 64, f"rmap_items take {(cols + lists) / PAGES:.1f} B/page"
    # one more row doubles the columns, the new rows on the free list in order
    extra = ksm.alloc_rmap_item(None, 0)
    assert extra.row == PAGES and len(t) == 2 * PAGES and t.live_rows() == PAGES + 1
    assert ksm.alloc_rmap_item(None, 0).row == PAGES + 1
    # everything the scan allocated: those, plus a little (checksums of the 1024 contents)
    per_page = grown / PAGES
    assert per_page < 72, f"the first scan grew Python memory by {per_page:.1f} B/page"
    # the handles made during the scan are gone: none lives per page
    assert _live_rmap_items() < 100


def test_merged_pages_keep_no_rmap_item_objects():
    m, _ = _machine(4096)
    m.run_full_scans(2)
    ksm = m.ksm
    assert ksm.ksm_pages_shared + ksm.ksm_pages_sharing == 4096
    gc.collect()
    assert _live_rmap_items() < 100
    node = next(iter(n for r in ksm.root_stable_tree for n in rb_inorder(r)))
    assert isinstance(node.hlist, RmapList) and len(node.hlist) == 4
    assert all(it.head is node and it.address & STABLE_FLAG for it in node.hlist)


# ------------------------------------------------------------------------------ handles
def test_handles_compare_and_hash_by_row():
    m, p = _machine(8)
    m.run_full_scans(1)
    items = m.ksm.mm_list[0].rmap_list
    a, b = items[3], items[3]
    assert a == b and not (a != b) and a is not b and hash(a) == hash(b)
    assert items[2] != a and a != None and a != items[3].row  # noqa: E711
    assert len({items[i] for i in range(len(items))} | {items[0]}) == 8
    assert items.index(a) == 3 and a in items and items[-1] == list(items)[-1]
    other = RmapTable()
    assert RmapItem(other, a.row) != a                       # another Ksm's row
    assert a.mm is p.mm and a.table is m.ksm.rmap_table


def test_free_row_is_reused_and_a_stale_handle_names_it():
    m, p = _machine(4)
    ksm = m.ksm
    live = ksm.rmap_table.live_rows()
    it = ksm.alloc_rmap_item(p.mm, 0x1000)
    row = it.row
    assert ksm.rmap_table.live_rows() == live + 1
    it.oldchecksum = 7
    it.age = 5
    it.remaining_skips = 2
    it.address |= STABLE_FLAG
    it.head = StableNode(1, 0, RmapList(ksm.rmap_table))
    it.anon_vma = object()
    p.mm.ksm_rmap_items += 1
    ksm.ksm_rmap_items += 1
    ksm.free_rmap_item(it)
    assert it.mm is None and it.head is None and it.anon_vma is None   # references dropped
    assert ksm.rmap_table.live_rows() == live
    new = ksm.alloc_rmap_item(p.mm, 0x2000)
    assert new.row == row and ksm.rmap_table.live_rows() == live + 1
    # kmem_cache_zalloc: a zeroed item
    assert (new.address, new.oldchecksum, new.age, new.remaining_skips, new.anon_vma,
            new.rb_parent, new.rb_left, new.rb_right, new.rb_red) == \
        (0x2000, 0, 0, 0, None, None, None, None, False)
    # the stale handle is a dangling pointer: it now reads the new item
    assert it == new and it.address == 0x2000 and it.mm is p.mm


def test_the_kernels_unions():
    t = RmapTable()
    it = RmapItem(t, t.alloc(None, 0))
    node = StableNode(1, 0)
    it.head = node                                      # head shares rb_parent's word
    assert it.rb_parent is node and t.rb_parent[it.row] == HEAD_ROW
    it.rb_parent = None
    assert it.head is None
    other = RmapItem(t, t.alloc(None, 0x1000))
    it.rb_parent = other
    assert it.head == other                            # read through the union
    rb_clear_node(it)
    assert it.rb_parent is RB_EMPTY and rb_empty_node(it)
    it.anon_vma = av = object()
    assert it.anon_vma is av
    it.nid = 1                                          # nid overwrites the anon_vma pointer
    assert it.nid == 1 and it.anon_vma is None


def test_rmap_list_operations():
    t = RmapTable()
    rows = [RmapItem(t, t.alloc(None, a << 12)) for a in range(6)]
    lst = RmapList(t)
    for it in rows[:3]:
        lst.append(it)
    lst.insert(0, rows[5])
    assert [i.row for i in lst] == [5, 0, 1, 2] and len(lst) == 4 and lst
    assert lst[1:3] == [rows[0], rows[1]]
    del lst[1:3]
    assert list(lst) == [rows[5], rows[2]]
    lst.remove(rows[5])
    assert lst.pop() == rows[2] and not lst and len(lst) == 0
    assert rows[4] not in lst


# ------------------------------------------------------------------------------ rbtree
class KNode(RbNode):
    __slots__ = ("key", "label")

    def __init__(self, key, label):
        super().__init__()
        self.key = key
        self.label = label


def _insert(root: RbRoot, node, key_of) -> None:
    parent = None
    is_left = False
    cur = root.rb_node
    k = key_of(node)
    while cur is not None:
        parent = cur
        is_left = k < key_of(cur)
        cur = cur.rb_left if is_left else cur.rb_right
    rb_link_node(node, parent, is_left, root)
    rb_insert_color(node, root)


def _shape(root: RbRoot, label_of):
    def walk(n):
        if n is None:
            return "-"
        return (label_of(n), n.rb_red, walk(n.rb_left), walk(n.rb_right))
    return walk(root.rb_node)


_ops = st.lists(st.tuples(st.sampled_from(["ins", "ins", "del", "rep"]),
                          st.integers(0, 40)), max_size=100)


@settings(max_examples=300, deadline=None)
@given(_ops)
def test_rbtree_on_handles_matches_rbtree_on_objects(ops):
    t = RmapTable()
    hroot, oroot = RbRoot(), RbRoot()
    live: list = []                      # (handle, KNode)
    label = 0
    for op, arg in ops:
        if op == "ins":
            label += 1
            h = RmapItem(t, t.alloc(None, arg))        # key: the address column
            t.oldchecksum[h.row] = label               # label: the checksum column
            k = KNode(arg, label)
            _insert(hroot, h, lambda n: n.address)
            _insert(oroot, k, lambda n: n.key)
            live.append((h, k))
        elif not live:
            continue
        elif op == "del":
            h, k = live.pop(arg % len(live))
            rb_erase(h, hroot)
            rb_erase(k, oroot)
            t.free(h.row)                              # rows are reused by later inserts
        else:
            i = arg % len(live)
            h, k = live[i]
            label += 1
            nh = RmapItem(t, t.alloc(None, h.address))
            t.oldchecksum[nh.row] = label
            nk = KNode(k.key, label)
            rb_replace_node(h, nh, hroot)
            rb_replace_node(k, nk, oroot)
            t.free(h.row)
            live[i] = (nh, nk)
        assert _shape(hroot, lambda n: n.oldchecksum) == _shape(oroot, lambda n: n.label)
        rb_validate(hroot, key=lambda n: n.address)
    order = list(rb_inorder(hroot))
    assert [n.oldchecksum for n in order] == [n.label for n in rb_inorder(oroot)]
    for a, b in zip(order, order[1:]):
        assert rb_next(a) == b and rb_prev(b) == a
