"""Tests for samepage.ksm.rbtree (the kernel lib/rbtree.c model).

Three layers:

* exact-shape tests: expected shapes/colours hand-traced through the kernel's
  ``__rb_insert`` / ``__rb_erase_augmented`` / ``____rb_erase_color`` cases;
* a differential test against an independent textbook (CLRS-style,
  nil-sentinel) red-black tree, whose insert/delete case analysis yields the
  same shape as the kernel's for the same operation sequence;
* hypothesis-driven invariants (red-black properties, parent links, in-order
  equals sorted keys, rb_next/rb_prev consistency).

Shape notation: preorder ``key`` + ``R``/``B``; children in parentheses as
``(left,right)`` with ``-`` for a missing child; leaves have no parentheses.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samepage.ksm.rbtree import (
    RB_EMPTY,
    RbNode,
    RbRoot,
    rb_clear_node,
    rb_empty_node,
    rb_empty_root,
    rb_erase,
    rb_first,
    rb_inorder,
    rb_insert_color,
    rb_last,
    rb_link_node,
    rb_next,
    rb_prev,
    rb_replace_node,
    rb_validate,
)


class KNode(RbNode):
    __slots__ = ("key", "label")

    def __init__(self, key, label=None):
        super().__init__()
        self.key = key
        self.label = label

    def __repr__(self):
        return f"KNode({self.key!r})"


def insert(root: RbRoot, node: KNode) -> KNode:
    """Kernel-style insert: descend (ties go right), link, recolour."""
    parent = None
    is_left = False
    cur = root.rb_node
    k = node.key
    while cur is not None:
        parent = cur
        if k < cur.key:
            is_left = True
            cur = cur.rb_left
        else:
            is_left = False
            cur = cur.rb_right
    rb_link_node(node, parent, is_left, root)
    rb_insert_color(node, root)
    return node


def find(root: RbRoot, key) -> KNode:
    cur = root.rb_node
    while cur is not None:
        if key < cur.key:
            cur = cur.rb_left
        elif key > cur.key:
            cur = cur.rb_right
        else:
            return cur
    raise KeyError(key)


def build(keys) -> tuple[RbRoot, dict]:
    root = RbRoot()
    nodes = {}
    for k in keys:
        nodes[k] = insert(root, KNode(k))
        rb_validate(root, key=lambda n: n.key)
    return root, nodes


def erase(root: RbRoot, key) -> KNode:
    n = find(root, key)
    rb_erase(n, root)
    rb_validate(root, key=lambda n: n.key)
    return n


def shape(root: RbRoot) -> str:
    def rec(n):
        if n is None:
            return "-"
        name = n.label if getattr(n, "label", None) is not None else str(n.key)
        s = name + ("R" if n.rb_red else "B")
        if n.rb_left is None and n.rb_right is None:
            return s
        return f"{s}({rec(n.rb_left)},{rec(n.rb_right)})"

    return "" if root.rb_node is None else rec(root.rb_node)


# ---------------------------------------------------------------------------
# Basic API
# ---------------------------------------------------------------------------


def test_node_is_slot_only():
    n = KNode(1)
    assert not hasattr(n, "__dict__")
    assert (n.rb_parent, n.rb_left, n.rb_right, n.rb_red) == (None, None, None, False)
    n.rb_red = True
    n.rb_parent = n
    n.rb_init()
    assert (n.rb_parent, n.rb_left, n.rb_right, n.rb_red) == (None, None, None, False)
    assert not hasattr(RbRoot(), "__dict__")


def test_root_and_empty_helpers():
    root = RbRoot()
    assert rb_empty_root(root)
    assert rb_first(root) is None and rb_last(root) is None
    assert list(rb_inorder(root)) == []
    rb_validate(root)
    n = insert(root, KNode(5))
    assert not rb_empty_root(root)
    assert not rb_empty_node(n)
    assert shape(root) == "5B"
    root.clear()
    assert rb_empty_root(root)

    m = KNode(1)
    assert not rb_empty_node(m)  # a fresh node is not "cleared", as in C
    rb_clear_node(m)
    assert rb_empty_node(m)
    assert m.rb_parent is RB_EMPTY
    assert rb_next(m) is None and rb_prev(m) is None
    # linking makes it non-empty again
    rb_link_node(m, None, False, root)
    assert not rb_empty_node(m)


def test_link_node_sets_fields():
    root = RbRoot()
    a = insert(root, KNode(10))
    b = KNode(5)
    b.rb_left = b.rb_right = a  # garbage that must be overwritten
    rb_link_node(b, a, True, root)
    assert a.rb_left is b and a.rb_right is None
    assert b.rb_parent is a and b.rb_left is None and b.rb_right is None and b.rb_red
    c = KNode(20)
    rb_link_node(c, a, False, root)
    assert a.rb_right is c and c.rb_red
    rb_insert_color(b, root)
    rb_insert_color(c, root)
    assert shape(root) == "10B(5R,20R)"


def test_first_last_next_prev():
    root, nodes = build([4, 2, 6, 1, 3, 5, 7])
    assert rb_first(root).key == 1
    assert rb_last(root).key == 7
    fwd = []
    n = rb_first(root)
    while n is not None:
        fwd.append(n.key)
        n = rb_next(n)
    assert fwd == [1, 2, 3, 4, 5, 6, 7]
    back = []
    n = rb_last(root)
    while n is not None:
        back.append(n.key)
        n = rb_prev(n)
    assert back == [7, 6, 5, 4, 3, 2, 1]
    assert [n.key for n in rb_inorder(root)] == fwd


# ---------------------------------------------------------------------------
# Exact shapes: insertion (hand-traced through __rb_insert)
# ---------------------------------------------------------------------------

ASCENDING_STEPS = [
    "1B",
    "1B(-,2R)",
    "2B(1R,3R)",  # case 3 (left rotate at grandparent)
    "2B(1B,3B(-,4R))",  # case 1 (recolour), recursion reaches the root
    "2B(1B,4B(3R,5R))",  # case 3
    "2B(1B,4R(3B,5B(-,6R)))",  # case 1, stops at black parent 2
    "2B(1B,4R(3B,6B(5R,7R)))",  # case 3
]

T7 = ASCENDING_STEPS[-1]


def test_insert_ascending_exact_shapes():
    root = RbRoot()
    for k, expected in zip(range(1, 8), ASCENDING_STEPS):
        insert(root, KNode(k))
        rb_validate(root, key=lambda n: n.key)
        assert shape(root) == expected


def test_insert_descending_exact_shape():
    # mirror image of the ascending case
    root, _ = build(range(7, 0, -1))
    assert shape(root) == "6B(4R(2B(1R,3R),5B),7B)"


@pytest.mark.parametrize(
    "keys, expected",
    [
        ([3, 1, 2], "2B(1R,3R)"),  # case 2 (left rotate at parent) then case 3
        ([1, 3, 2], "2B(1R,3R)"),  # mirrored case 2 then case 3
        ([2, 1, 4, 3], "2B(1B,4B(3R,-))"),  # case 1 with uncle on the left
        ([3, 4, 1, 2], "3B(1B(-,2R),4B)"),  # case 1 with uncle on the right
        ([5, 5, 5], "5B(5R,5R)"),  # ties go right, then rotation
    ],
)
def test_insert_small_exact_shapes(keys, expected):
    root, _ = build(keys)
    assert shape(root) == expected


# ---------------------------------------------------------------------------
# Exact shapes: erase (hand-traced through __rb_erase_augmented and
# ____rb_erase_color)
# ---------------------------------------------------------------------------


def test_erase_red_leaf():
    root, _ = build(range(1, 8))
    erase(root, 7)  # no children, red: no rebalance
    assert shape(root) == "2B(1B,4R(3B,6B(5R,-)))"


def test_erase_only_left_child():
    root, _ = build(range(1, 8))
    erase(root, 7)
    erase(root, 6)  # left child 5 takes 6's place and black colour
    assert shape(root) == "2B(1B,4R(3B,5B))"


def test_erase_only_right_child():
    root, _ = build(range(1, 8))
    erase(root, 5)
    assert shape(root) == "2B(1B,4R(3B,6B(-,7R)))"
    erase(root, 6)  # right child 7 takes 6's place and black colour
    assert shape(root) == "2B(1B,4R(3B,7B))"


def test_erase_successor_is_right_child():
    root, _ = build(range(1, 8))
    erase(root, 6)  # successor 7 is 6's right child; 7 was red: no rebalance
    assert shape(root) == "2B(1B,4R(3B,7B(5R,-)))"


def test_erase_successor_deeper():
    root, _ = build(range(1, 8))
    erase(root, 4)  # successor 5 = leftmost of 6; 5 red, no right child
    assert shape(root) == "2B(1B,5R(3B,6B(-,7R)))"


def test_erase_successor_deeper_with_right_child():
    # successor 5 is leftmost below 7 and has a red right child 6, which
    # moves into 5's slot and turns black (no rebalance).
    root, _ = build([4, 2, 7, 1, 3, 5, 8, 6])
    assert shape(root) == "4B(2B(1R,3R),7R(5B(-,6R),8B))"
    erase(root, 4)
    assert shape(root) == "5B(2B(1R,3R),7R(6B,8B))"


def test_erase_successor_right_child_with_right_child():
    # 2's successor is its right child 3, whose red right child 4 moves up
    # below 3 and turns black.
    root, _ = build([2, 1, 3, 4])
    assert shape(root) == "2B(1B,3B(-,4R))"
    erase(root, 2)
    assert shape(root) == "3B(1B,4B)"


def test_erase_root_successor_deeper_then_case4():
    root, _ = build(range(1, 8))
    # successor 3 (black, leftmost below 4) leaves 4's left short;
    # ____rb_erase_color(4): sibling 6 black with red outer child 7 -> case 4
    erase(root, 2)
    assert shape(root) == "3B(1B,6R(4B(-,5R),7B))"


def test_erase_color_case2_parent_black_reaches_root():
    root, _ = build([1, 2, 3, 4])
    erase(root, 4)
    assert shape(root) == "2B(1B,3B)"
    erase(root, 1)  # sibling 3 black, no red children, parent black: recurse, stop at root
    assert shape(root) == "2B(-,3R)"


def test_erase_color_case2_parent_red():
    root, _ = build(range(1, 8))
    erase(root, 5)
    erase(root, 7)
    assert shape(root) == "2B(1B,4R(3B,6B))"
    erase(root, 3)  # sibling 6 turns red, red parent 4 turns black
    assert shape(root) == "2B(1B,4B(-,6R))"


def test_erase_color_case1_then_case2():
    root, _ = build(range(1, 8))
    # 1's sibling 4 is red: rotate left at 2, then 2's new sibling 3 is black
    # without red children -> 3 red, red parent 2 black.
    erase(root, 1)
    assert shape(root) == "4B(2B(-,3R),6B(5R,7R))"


def test_erase_color_case1_then_case2_mirror():
    root, _ = build(range(7, 0, -1))
    erase(root, 7)
    assert shape(root) == "4B(2B(1R,3R),6B(5R,-))"


def test_erase_color_case3_then_case4():
    root, _ = build([2, 1, 4, 3])
    erase(root, 1)  # sibling 4: outer child missing, inner 3 red -> case 3, 4
    assert shape(root) == "3B(2B,4B)"


def test_erase_color_case3_then_case4_mirror():
    root, _ = build([3, 4, 1, 2])
    erase(root, 4)
    assert shape(root) == "2B(1B,3B)"


def test_erase_last_and_root_nodes():
    root, _ = build([1])
    erase(root, 1)
    assert root.rb_node is None
    root, _ = build([1, 2])
    erase(root, 1)  # root with only a right child
    assert shape(root) == "2B"
    root, _ = build([2, 1])
    erase(root, 2)  # root with only a left child
    assert shape(root) == "1B"


def test_erase_leaves_victim_fields_stale():
    root, nodes = build(range(1, 8))
    victim = nodes[4]
    before = (victim.rb_parent, victim.rb_left, victim.rb_right, victim.rb_red)
    rb_erase(victim, root)
    assert (victim.rb_parent, victim.rb_left, victim.rb_right, victim.rb_red) == before
    rb_clear_node(victim)
    assert rb_empty_node(victim)


# ---------------------------------------------------------------------------
# rb_replace_node
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, expected",
    [
        (4, "2B(1B,XR(3B,6B(5R,7R)))"),  # inner red node with two children
        (2, "XB(1B,4R(3B,6B(5R,7R)))"),  # root
        (7, "2B(1B,4R(3B,6B(5R,XR)))"),  # leaf, right child
        (5, "2B(1B,4R(3B,6B(XR,7R)))"),  # leaf, left child
        (1, "2B(XB,4R(3B,6B(5R,7R)))"),  # black leaf
    ],
)
def test_replace_node(key, expected):
    root, nodes = build(range(1, 8))
    victim = nodes[key]
    new = KNode(key, label="X")
    new.rb_red = not victim.rb_red  # must be overwritten
    old = (victim.rb_parent, victim.rb_left, victim.rb_right, victim.rb_red)
    rb_replace_node(victim, new, root)
    assert shape(root) == expected
    rb_validate(root, key=lambda n: n.key)
    assert (new.rb_parent, new.rb_left, new.rb_right, new.rb_red) == old
    # victim untouched, as in the kernel
    assert (victim.rb_parent, victim.rb_left, victim.rb_right, victim.rb_red) == old
    assert find(root, key) is new
    # the tree keeps working with the new node in it
    rb_erase(new, root)
    rb_validate(root, key=lambda n: n.key)
    assert [n.key for n in rb_inorder(root)] == [k for k in range(1, 8) if k != key]


# ---------------------------------------------------------------------------
# rb_validate catches corruption
# ---------------------------------------------------------------------------


def test_validate_detects_violations():
    root, nodes = build(range(1, 8))
    rb_validate(root)

    nodes[1].rb_red = True  # black-height mismatch
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[1].rb_red = False

    nodes[3].rb_red = True  # red 4 with red child 3 (and height mismatch)
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[3].rb_red = False

    nodes[5].rb_parent = nodes[4]  # bad parent link
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[5].rb_parent = nodes[6]

    nodes[2].rb_red = True  # red root
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[2].rb_red = False

    nodes[5].key, nodes[7].key = 7, 5  # order (only with key=)
    rb_validate(root)
    with pytest.raises(AssertionError):
        rb_validate(root, key=lambda n: n.key)
    nodes[5].key, nodes[7].key = 5, 7

    nodes[7].rb_right = nodes[1]  # shared subtree
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[7].rb_right = None
    rb_validate(root, key=lambda n: n.key)

    nodes[2].rb_parent = nodes[4]  # root with a parent
    with pytest.raises(AssertionError):
        rb_validate(root)
    nodes[2].rb_parent = None
    rb_validate(root, key=lambda n: n.key)


# ---------------------------------------------------------------------------
# Independent textbook red-black tree used as a differential oracle
# ---------------------------------------------------------------------------


class _TNode:
    __slots__ = ("key", "left", "right", "p", "red", "ident")

    def __init__(self, key, nil, ident):
        self.key = key
        self.left = nil
        self.right = nil
        self.p = nil
        self.red = True
        self.ident = ident


class TextbookRB:
    """CLRS-style red-black tree with a shared NIL sentinel."""

    def __init__(self):
        nil = _TNode(None, None, None)
        nil.left = nil.right = nil.p = nil
        nil.red = False
        self.nil = nil
        self.root = nil

    def _rotate_left(self, x):
        y = x.right
        x.right = y.left
        if y.left is not self.nil:
            y.left.p = x
        y.p = x.p
        if x.p is self.nil:
            self.root = y
        elif x is x.p.left:
            x.p.left = y
        else:
            x.p.right = y
        y.left = x
        x.p = y

    def _rotate_right(self, x):
        y = x.left
        x.left = y.right
        if y.right is not self.nil:
            y.right.p = x
        y.p = x.p
        if x.p is self.nil:
            self.root = y
        elif x is x.p.right:
            x.p.right = y
        else:
            x.p.left = y
        y.right = x
        x.p = y

    def insert(self, key, ident):
        z = new = _TNode(key, self.nil, ident)
        y = self.nil
        x = self.root
        while x is not self.nil:
            y = x
            x = x.left if key < x.key else x.right
        z.p = y
        if y is self.nil:
            self.root = z
        elif key < y.key:
            y.left = z
        else:
            y.right = z
        while z.p.red:
            if z.p is z.p.p.left:
                y = z.p.p.right
                if y.red:
                    z.p.red = False
                    y.red = False
                    z.p.p.red = True
                    z = z.p.p
                else:
                    if z is z.p.right:
                        z = z.p
                        self._rotate_left(z)
                    z.p.red = False
                    z.p.p.red = True
                    self._rotate_right(z.p.p)
            else:
                y = z.p.p.left
                if y.red:
                    z.p.red = False
                    y.red = False
                    z.p.p.red = True
                    z = z.p.p
                else:
                    if z is z.p.left:
                        z = z.p
                        self._rotate_right(z)
                    z.p.red = False
                    z.p.p.red = True
                    self._rotate_left(z.p.p)
        self.root.red = False
        return new

    def _transplant(self, u, v):
        if u.p is self.nil:
            self.root = v
        elif u is u.p.left:
            u.p.left = v
        else:
            u.p.right = v
        v.p = u.p

    def delete(self, z):
        nil = self.nil
        y = z
        y_red = y.red
        if z.left is nil:
            x = z.right
            self._transplant(z, z.right)
        elif z.right is nil:
            x = z.left
            self._transplant(z, z.left)
        else:
            y = z.right
            while y.left is not nil:
                y = y.left
            y_red = y.red
            x = y.right
            if y.p is z:
                x.p = y
            else:
                self._transplant(y, y.right)
                y.right = z.right
                y.right.p = y
            self._transplant(z, y)
            y.left = z.left
            y.left.p = y
            y.red = z.red
        if not y_red:
            self._delete_fixup(x)
        nil.p = nil

    def _delete_fixup(self, x):
        while x is not self.root and not x.red:
            if x is x.p.left:
                w = x.p.right
                if w.red:
                    w.red = False
                    x.p.red = True
                    self._rotate_left(x.p)
                    w = x.p.right
                if not w.left.red and not w.right.red:
                    w.red = True
                    x = x.p
                else:
                    if not w.right.red:
                        w.left.red = False
                        w.red = True
                        self._rotate_right(w)
                        w = x.p.right
                    w.red = x.p.red
                    x.p.red = False
                    w.right.red = False
                    self._rotate_left(x.p)
                    x = self.root
            else:
                w = x.p.left
                if w.red:
                    w.red = False
                    x.p.red = True
                    self._rotate_right(x.p)
                    w = x.p.left
                if not w.right.red and not w.left.red:
                    w.red = True
                    x = x.p
                else:
                    if not w.left.red:
                        w.right.red = False
                        w.red = True
                        self._rotate_left(w)
                        w = x.p.left
                    w.red = x.p.red
                    x.p.red = False
                    w.left.red = False
                    self._rotate_right(x.p)
                    x = self.root
        x.red = False

    def shape(self):
        nil = self.nil

        def rec(n):
            if n is nil:
                return "-"
            s = f"{n.ident}{'R' if n.red else 'B'}"
            if n.left is nil and n.right is nil:
                return s
            return f"{s}({rec(n.left)},{rec(n.right)})"

        return "" if self.root is nil else rec(self.root)


def ident_shape(root: RbRoot) -> str:
    def rec(n):
        if n is None:
            return "-"
        s = f"{n.label}{'R' if n.rb_red else 'B'}"
        if n.rb_left is None and n.rb_right is None:
            return s
        return f"{s}({rec(n.rb_left)},{rec(n.rb_right)})"

    return "" if root.rb_node is None else rec(root.rb_node)


def test_oracle_agrees_with_hand_traces():
    t = TextbookRB()
    for k in range(1, 8):
        t.insert(k, str(k))
    assert t.shape() == T7


# Operations: ("ins", key) or ("del", selector) where selector picks one of
# the live nodes by index modulo their count, or ("rep", selector).
_ops = st.lists(
    st.one_of(
        st.tuples(st.just("ins"), st.integers(0, 40)),
        st.tuples(st.just("del"), st.integers(0, 10_000)),
        st.tuples(st.just("rep"), st.integers(0, 10_000)),
    ),
    max_size=120,
)


@settings(max_examples=400, deadline=None)
@given(_ops)
def test_random_ops_match_textbook_and_keep_invariants(ops):
    root = RbRoot()
    oracle = TextbookRB()
    live: list[tuple[KNode, _TNode]] = []
    counter = 0
    for op, arg in ops:
        if op == "ins":
            counter += 1
            label = f"n{counter}."
            kn = insert(root, KNode(arg, label=label))
            tn = oracle.insert(arg, label)
            live.append((kn, tn))
        elif not live:
            continue
        elif op == "del":
            kn, tn = live.pop(arg % len(live))
            rb_erase(kn, root)
            oracle.delete(tn)
        else:
            i = arg % len(live)
            kn, tn = live[i]
            counter += 1
            label = f"n{counter}."
            new = KNode(kn.key, label=label)
            rb_replace_node(kn, new, root)
            tn.ident = label
            live[i] = (new, tn)
        rb_validate(root, key=lambda n: n.key)
        assert ident_shape(root) == oracle.shape()
        keys = [n.key for n in rb_inorder(root)]
        assert keys == sorted(kn.key for kn, _ in live)
    # backwards iteration agrees with forwards iteration
    back = []
    n = rb_last(root)
    while n is not None:
        back.append(n)
        n = rb_prev(n)
    assert back[::-1] == list(rb_inorder(root))


@settings(max_examples=200, deadline=None)
@given(st.permutations(list(range(64))), st.permutations(list(range(64))))
def test_insert_all_erase_all(insert_order, erase_order):
    root, nodes = build(insert_order)
    assert [n.key for n in rb_inorder(root)] == list(range(64))
    remaining = set(range(64))
    for k in erase_order:
        rb_erase(nodes[k], root)
        remaining.discard(k)
        rb_validate(root, key=lambda n: n.key)
        assert [n.key for n in rb_inorder(root)] == sorted(remaining)
    assert root.rb_node is None


def test_large_sequential_tree_is_balanced():
    root, nodes = build(range(5000))
    depth = 0

    def height(n):
        h = 0
        stack = [(n, 1)]
        while stack:
            x, d = stack.pop()
            if x is None:
                continue
            h = max(h, d)
            stack.append((x.rb_left, d + 1))
            stack.append((x.rb_right, d + 1))
        return h

    depth = height(root.rb_node)
    assert depth <= 2 * 13  # 2*log2(5001) bound
    for k in range(0, 5000, 2):
        rb_erase(nodes[k], root)
    rb_validate(root, key=lambda n: n.key)
    assert [n.key for n in rb_inorder(root)] == list(range(1, 5000, 2))
