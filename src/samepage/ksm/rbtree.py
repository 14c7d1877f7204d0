"""Intrusive red-black tree reproducing the Linux kernel's ``lib/rbtree.c``.

KSM keeps its stable and unstable trees in kernel rbtrees.  The unstable tree
is searched with keys (page contents) that may have changed since the nodes
were linked, so which node a search visits depends on the *exact* shape of
the tree, not just on the set of keys in it.  This module therefore follows
the kernel's rebalancing algorithms step for step, so that every operation
leaves the same colours and the same links as the kernel would:

==========================  ==================================================
Python                      Kernel counterpart
==========================  ==================================================
``rb_link_node``            ``rb_link_node()`` (include/linux/rbtree.h)
``rb_insert_color``         ``rb_insert_color()`` -> ``__rb_insert()``
``rb_erase``                ``rb_erase()`` -> ``__rb_erase_augmented()``
                            (include/linux/rbtree_augmented.h, with no-op
                            augment callbacks) followed by
                            ``____rb_erase_color()``
``rb_replace_node``         ``rb_replace_node()``
``rb_first`` / ``rb_last``  ``rb_first()`` / ``rb_last()``
``rb_next`` / ``rb_prev``   ``rb_next()`` / ``rb_prev()``
``rb_clear_node``           ``RB_CLEAR_NODE()``
``rb_empty_node``           ``RB_EMPTY_NODE()``
``rb_empty_root``           ``RB_EMPTY_ROOT()``
==========================  ==================================================

``rb_validate`` and ``rb_inorder`` are additions for tests and sanitizers.

Representation
--------------
The kernel packs the parent pointer and the colour into one word
(``__rb_parent_color``); here they are two attributes, ``rb_parent`` and
``rb_red`` (``True`` means red, ``False`` black).  Every kernel store of the
packed word is mirrored by the corresponding store(s) of the two attributes,
including the "redundant" ones, so intermediate states match too.

Nodes are caller objects (the KSM engine's rmap items and stable nodes) that
subclass :class:`RbNode` or, like the engine's rmap_items, are handles whose
link attributes read and write rows of a table (samepage.ksm.structs); the
tree never allocates.  Two handles of one node are equal but not identical,
so nodes are compared with ``==`` / ``!=`` (``is`` only against None and
:data:`RB_EMPTY`).  Like the kernel,
``rb_erase`` and ``rb_replace_node`` leave the removed node's own link
fields untouched (stale); callers that need to know whether a node is linked
must use :func:`rb_clear_node` / :func:`rb_empty_node`, exactly as in C.
``RB_CLEAR_NODE`` points a node's parent at itself; to avoid creating a
reference cycle per node we instead store the module-level marker
:data:`RB_EMPTY` in ``rb_parent``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "RB_EMPTY",
    "RbNode",
    "RbRoot",
    "rb_clear_node",
    "rb_empty_node",
    "rb_empty_root",
    "rb_erase",
    "rb_first",
    "rb_inorder",
    "rb_insert_color",
    "rb_last",
    "rb_link_node",
    "rb_next",
    "rb_prev",
    "rb_replace_node",
    "rb_validate",
]


class _RbEmptyMarker:
    """Type of :data:`RB_EMPTY`: the 'not in any tree' parent marker."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "RB_EMPTY"


#: Stored in ``rb_parent`` by :func:`rb_clear_node` (the kernel's
#: ``RB_CLEAR_NODE`` makes the node its own parent instead).
RB_EMPTY: Any = _RbEmptyMarker()


class RbNode:
    """Slot-only base for tree nodes (the kernel's ``struct rb_node``).

    Subclasses must declare their own ``__slots__`` to stay ``__dict__``-free.
    A fresh node has no parent, no children and is black; like a zeroed
    kernel ``rb_node`` it is *not* marked empty (call :func:`rb_clear_node`
    for that).
    """

    __slots__ = ("rb_parent", "rb_left", "rb_right", "rb_red")

    def __init__(self) -> None:
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False

    def rb_init(self) -> None:
        """Reset the link fields to the freshly constructed state."""
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False


class RbRoot:
    """Tree root (the kernel's ``struct rb_root``); ``rb_node`` is None if empty."""

    __slots__ = ("rb_node",)

    def __init__(self) -> None:
        self.rb_node = None

    def clear(self) -> None:
        """Forget every node at once (``root = RB_ROOT``); nodes are not touched."""
        self.rb_node = None

    def __repr__(self) -> str:
        return f"RbRoot({self.rb_node!r})"


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def rb_clear_node(node) -> None:
    """Mark ``node`` as not linked into any tree (``RB_CLEAR_NODE``)."""
    node.rb_parent = RB_EMPTY


def rb_empty_node(node) -> bool:
    """True if ``node`` was marked by :func:`rb_clear_node` (``RB_EMPTY_NODE``)."""
    return node.rb_parent is RB_EMPTY


def rb_empty_root(root: RbRoot) -> bool:
    """True if the tree has no nodes (``RB_EMPTY_ROOT``)."""
    return root.rb_node is None


def rb_link_node(node, parent, is_left: bool, root: RbRoot) -> None:
    """Hang ``node`` as a red leaf below ``parent`` (``rb_link_node``).

    ``is_left`` selects ``parent.rb_left`` versus ``parent.rb_right``; with
    ``parent`` None the node becomes the root.  The caller must follow up
    with :func:`rb_insert_color` to restore the red-black properties.
    """
    node.rb_parent = parent
    node.rb_left = None
    node.rb_right = None
    node.rb_red = True
    if parent is None:
        root.rb_node = node
    elif is_left:
        parent.rb_left = node
    else:
        parent.rb_right = node


# ---------------------------------------------------------------------------
# Insertion rebalancing
# ---------------------------------------------------------------------------


def rb_insert_color(node, root: RbRoot) -> None:
    """Rebalance after :func:`rb_link_node` (kernel ``__rb_insert``).

    Walks upwards from the new red ``node``.  Each step looks at the parent
    ``p``, grandparent ``g`` and uncle ``u``:

    * no parent: ``node`` is the root, paint it black and stop;
    * black parent: nothing is violated, stop;
    * red uncle: push g's blackness down to p and u, make g red and continue
      from g;
    * otherwise, if node is the "inner" grandchild, first rotate it above p
      (so it becomes the outer one), then rotate p (or node) above g, which
      turns black while g turns red, and stop.
    """
    parent = node.rb_parent
    while True:
        if parent is None:
            node.rb_red = False
            return
        if not parent.rb_red:
            return
        # parent is red, hence not the root: the grandparent exists.
        gparent = parent.rb_parent
        tmp = gparent.rb_right
        if parent != tmp:
            # parent hangs on the left of gparent; tmp is the uncle.
            if tmp is not None and tmp.rb_red:
                tmp.rb_parent = gparent
                tmp.rb_red = False
                parent.rb_parent = gparent
                parent.rb_red = False
                node = gparent
                parent = node.rb_parent
                node.rb_red = True
                continue

            tmp = parent.rb_right
            if node == tmp:
                # inner grandchild: rotate left around parent first
                tmp = node.rb_left
                parent.rb_right = tmp
                node.rb_left = parent
                if tmp is not None:
                    tmp.rb_parent = parent
                    tmp.rb_red = False
                parent.rb_parent = node
                parent.rb_red = True
                parent = node
                tmp = node.rb_right

            # rotate right around gparent; parent takes its place
            gparent.rb_left = tmp
            parent.rb_right = gparent
            if tmp is not None:
                tmp.rb_parent = gparent
                tmp.rb_red = False
            top = gparent.rb_parent
            parent.rb_parent = top
            parent.rb_red = gparent.rb_red
            gparent.rb_parent = parent
            gparent.rb_red = True
            if top is None:
                root.rb_node = parent
            elif top.rb_left == gparent:
                top.rb_left = parent
            else:
                top.rb_right = parent
            return
        else:
            # mirror image: parent hangs on the right of gparent.
            tmp = gparent.rb_left
            if tmp is not None and tmp.rb_red:
                tmp.rb_parent = gparent
                tmp.rb_red = False
                parent.rb_parent = gparent
                parent.rb_red = False
                node = gparent
                parent = node.rb_parent
                node.rb_red = True
                continue

            tmp = parent.rb_left
            if node == tmp:
                tmp = node.rb_right
                parent.rb_left = tmp
                node.rb_right = parent
                if tmp is not None:
                    tmp.rb_parent = parent
                    tmp.rb_red = False
                parent.rb_parent = node
                parent.rb_red = True
                parent = node
                tmp = node.rb_left

            gparent.rb_right = tmp
            parent.rb_left = gparent
            if tmp is not None:
                tmp.rb_parent = gparent
                tmp.rb_red = False
            top = gparent.rb_parent
            parent.rb_parent = top
            parent.rb_red = gparent.rb_red
            gparent.rb_parent = parent
            gparent.rb_red = True
            if top is None:
                root.rb_node = parent
            elif top.rb_left == gparent:
                top.rb_left = parent
            else:
                top.rb_right = parent
            return


# ---------------------------------------------------------------------------
# Erase
# ---------------------------------------------------------------------------


def _rb_erase_color(parent, root: RbRoot) -> None:
    """Repair a missing black below ``parent`` (kernel ``____rb_erase_color``).

    ``node`` (None at first, later a black node) is the child of ``parent``
    whose subtree is one black short.  With ``s`` the sibling of ``node``:

    1. red ``s``: rotate it above ``parent`` (s black, parent red); node's
       new sibling is s's former inner child, which is black;
    2. black ``s`` with no red child: paint ``s`` red; a red ``parent`` is then
       painted black and we are done, a black one becomes the new ``node``;
    3. black ``s`` whose outer child is black but inner child red: rotate the
       inner child above ``s``, which makes it the sibling (fixed up in 4);
    4. black ``s`` with red outer child: rotate ``s`` above ``parent``; ``s``
       inherits parent's colour, parent and the outer child become black.
    """
    node = None
    while True:
        sibling = parent.rb_right
        if node != sibling:
            # node is the left child (None on the first pass only if the
            # removed leaf was on the left; the sibling is then non-None).
            if sibling.rb_red:
                tmp1 = sibling.rb_left
                parent.rb_right = tmp1
                sibling.rb_left = parent
                tmp1.rb_parent = parent
                tmp1.rb_red = False
                top = parent.rb_parent
                sibling.rb_parent = top
                sibling.rb_red = parent.rb_red
                parent.rb_parent = sibling
                parent.rb_red = True
                if top is None:
                    root.rb_node = sibling
                elif top.rb_left == parent:
                    top.rb_left = sibling
                else:
                    top.rb_right = sibling
                sibling = tmp1
            tmp1 = sibling.rb_right
            if tmp1 is None or not tmp1.rb_red:
                tmp2 = sibling.rb_left
                if tmp2 is None or not tmp2.rb_red:
                    sibling.rb_parent = parent
                    sibling.rb_red = True
                    if parent.rb_red:
                        parent.rb_red = False
                    else:
                        node = parent
                        parent = node.rb_parent
                        if parent is not None:
                            continue
                    return
                # inner nephew red, outer black: rotate right at sibling
                tmp1 = tmp2.rb_right
                sibling.rb_left = tmp1
                tmp2.rb_right = sibling
                parent.rb_right = tmp2
                if tmp1 is not None:
                    tmp1.rb_parent = sibling
                    tmp1.rb_red = False
                tmp1 = sibling
                sibling = tmp2
            # outer nephew (tmp1) red: rotate left at parent
            tmp2 = sibling.rb_left
            parent.rb_right = tmp2
            sibling.rb_left = parent
            tmp1.rb_parent = sibling
            tmp1.rb_red = False
            if tmp2 is not None:
                tmp2.rb_parent = parent
            top = parent.rb_parent
            sibling.rb_parent = top
            sibling.rb_red = parent.rb_red
            parent.rb_parent = sibling
            parent.rb_red = False
            if top is None:
                root.rb_node = sibling
            elif top.rb_left == parent:
                top.rb_left = sibling
            else:
                top.rb_right = sibling
            return
        else:
            # mirror image: node is the right child.
            sibling = parent.rb_left
            if sibling.rb_red:
                tmp1 = sibling.rb_right
                parent.rb_left = tmp1
                sibling.rb_right = parent
                tmp1.rb_parent = parent
                tmp1.rb_red = False
                top = parent.rb_parent
                sibling.rb_parent = top
                sibling.rb_red = parent.rb_red
                parent.rb_parent = sibling
                parent.rb_red = True
                if top is None:
                    root.rb_node = sibling
                elif top.rb_left == parent:
                    top.rb_left = sibling
                else:
                    top.rb_right = sibling
                sibling = tmp1
            tmp1 = sibling.rb_left
            if tmp1 is None or not tmp1.rb_red:
                tmp2 = sibling.rb_right
                if tmp2 is None or not tmp2.rb_red:
                    sibling.rb_parent = parent
                    sibling.rb_red = True
                    if parent.rb_red:
                        parent.rb_red = False
                    else:
                        node = parent
                        parent = node.rb_parent
                        if parent is not None:
                            continue
                    return
                tmp1 = tmp2.rb_left
                sibling.rb_right = tmp1
                tmp2.rb_left = sibling
                parent.rb_left = tmp2
                if tmp1 is not None:
                    tmp1.rb_parent = sibling
                    tmp1.rb_red = False
                tmp1 = sibling
                sibling = tmp2
            tmp2 = sibling.rb_right
            parent.rb_left = tmp2
            sibling.rb_right = parent
            tmp1.rb_parent = sibling
            tmp1.rb_red = False
            if tmp2 is not None:
                tmp2.rb_parent = parent
            top = parent.rb_parent
            sibling.rb_parent = top
            sibling.rb_red = parent.rb_red
            parent.rb_parent = sibling
            parent.rb_red = False
            if top is None:
                root.rb_node = sibling
            elif top.rb_left == parent:
                top.rb_left = sibling
            else:
                top.rb_right = sibling
            return


def rb_erase(node, root: RbRoot) -> None:
    """Unlink ``node`` and rebalance (kernel ``rb_erase``).

    Structural part (``__rb_erase_augmented``):

    * at most one child: the child (if any; it is then a red leaf below a
      black node) takes node's place and colour; removing a black leaf
      leaves its parent's side one black short;
    * two children: node's in-order successor ``s`` (leftmost node of the
      right subtree) takes node's place and colour.  If ``s`` is node's right
      child it keeps its right subtree; otherwise ``s``'s right child moves up
      into ``s``'s old slot under its parent ``p`` and ``s`` adopts node's
      right subtree.  A red right child of ``s`` that moved is painted black;
      if ``s`` had no right child and was black, the old slot is one black
      short.

    The shortage, if any, is then repaired by :func:`_rb_erase_color`.
    ``node``'s own fields are left untouched, as in the kernel.
    """
    child = node.rb_right
    tmp = node.rb_left
    if tmp is None:
        parent = node.rb_parent
        if parent is None:
            root.rb_node = child
        elif parent.rb_left == node:
            parent.rb_left = child
        else:
            parent.rb_right = child
        if child is not None:
            child.rb_parent = parent
            child.rb_red = node.rb_red
            return
        if node.rb_red or parent is None:
            return
        rebalance = parent
    elif child is None:
        parent = node.rb_parent
        tmp.rb_parent = parent
        tmp.rb_red = node.rb_red
        if parent is None:
            root.rb_node = tmp
        elif parent.rb_left == node:
            parent.rb_left = tmp
        else:
            parent.rb_right = tmp
        return
    else:
        successor = child
        tmp = child.rb_left
        if tmp is None:
            # the successor is node's right child
            parent = successor
            child2 = successor.rb_right
        else:
            # the successor is the leftmost node below node's right child
            while True:
                parent = successor
                successor = tmp
                tmp = tmp.rb_left
                if tmp is None:
                    break
            child2 = successor.rb_right
            parent.rb_left = child2
            successor.rb_right = child
            child.rb_parent = successor

        tmp = node.rb_left
        successor.rb_left = tmp
        tmp.rb_parent = successor

        top = node.rb_parent
        if top is None:
            root.rb_node = successor
        elif top.rb_left == node:
            top.rb_left = successor
        else:
            top.rb_right = successor

        if child2 is not None:
            child2.rb_parent = parent
            child2.rb_red = False
            rebalance = None
        else:
            rebalance = None if successor.rb_red else parent
        successor.rb_parent = top
        successor.rb_red = node.rb_red
        if rebalance is None:
            return
    _rb_erase_color(rebalance, root)


def rb_replace_node(victim, new, root: RbRoot) -> None:
    """Put ``new`` exactly where ``victim`` is (kernel ``rb_replace_node``).

    ``new`` takes over victim's parent, children and colour; no rebalancing
    is done, so the caller must make sure ``new`` sorts like ``victim``.
    ``victim``'s own fields are left as they were.
    """
    parent = victim.rb_parent
    if parent is None:
        root.rb_node = new
    elif parent.rb_left == victim:
        parent.rb_left = new
    else:
        parent.rb_right = new
    left = victim.rb_left
    right = victim.rb_right
    if left is not None:
        left.rb_parent = new
    if right is not None:
        right.rb_parent = new
    new.rb_parent = parent
    new.rb_left = left
    new.rb_right = right
    new.rb_red = victim.rb_red


# ---------------------------------------------------------------------------
# Traversal
# ---------------------------------------------------------------------------


def rb_first(root: RbRoot):
    """Leftmost (smallest) node, or None for an empty tree."""
    n = root.rb_node
    if n is None:
        return None
    while n.rb_left is not None:
        n = n.rb_left
    return n


def rb_last(root: RbRoot):
    """Rightmost (largest) node, or None for an empty tree."""
    n = root.rb_node
    if n is None:
        return None
    while n.rb_right is not None:
        n = n.rb_right
    return n


def rb_next(node):
    """In-order successor of ``node`` (None at the end or for a cleared node)."""
    if node.rb_parent is RB_EMPTY:
        return None
    n = node.rb_right
    if n is not None:
        while n.rb_left is not None:
            n = n.rb_left
        return n
    parent = node.rb_parent
    while parent is not None and node == parent.rb_right:
        node = parent
        parent = node.rb_parent
    return parent


def rb_prev(node):
    """In-order predecessor of ``node`` (None at the start or for a cleared node)."""
    if node.rb_parent is RB_EMPTY:
        return None
    n = node.rb_left
    if n is not None:
        while n.rb_right is not None:
            n = n.rb_right
        return n
    parent = node.rb_parent
    while parent is not None and node == parent.rb_left:
        node = parent
        parent = node.rb_parent
    return parent


def rb_inorder(root: RbRoot) -> Iterator[Any]:
    """Yield the nodes in order.  Do not modify the tree while iterating."""
    n = rb_first(root)
    while n is not None:
        yield n
        n = rb_next(n)


# ---------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------


def rb_validate(root: RbRoot, key: Callable[[Any], Any] | None = None) -> None:
    """Raise AssertionError unless ``root`` is a well-formed red-black tree.

    Checks: the root has no parent and is black; every child points back to
    its parent; no node appears twice (no cycles or shared subtrees); no red
    node has a red child; every root-to-leaf path has the same number of
    black nodes.  With ``key`` given, also checks the in-order keys are
    non-decreasing (leave it out for trees whose keys may have changed, such
    as KSM's unstable tree).
    """
    top = root.rb_node
    if top is None:
        return
    if top.rb_parent is not None:
        raise AssertionError(f"root {top!r} has parent {top.rb_parent!r}")
    if top.rb_red:
        raise AssertionError(f"root {top!r} is red")

    seen: set = set()   # nodes (handles hash and compare by row)
    black_height = -1
    # Iterative pre-order walk; each entry is (node, blacks above and including it).
    stack = [(top, 1)]
    while stack:
        n, blacks = stack.pop()
        if n in seen:
            raise AssertionError(f"node {n!r} reached twice (cycle or shared subtree)")
        seen.add(n)
        red = n.rb_red
        if red is not True and red is not False:
            raise AssertionError(f"node {n!r} has non-bool colour {red!r}")
        for c in (n.rb_left, n.rb_right):
            if c is None:
                if black_height < 0:
                    black_height = blacks
                elif blacks != black_height:
                    raise AssertionError(
                        f"black height {blacks} below {n!r} differs from {black_height}"
                    )
                continue
            if c.rb_parent != n:
                raise AssertionError(f"child {c!r} of {n!r} has parent {c.rb_parent!r}")
            if red and c.rb_red:
                raise AssertionError(f"red node {n!r} has red child {c!r}")
            stack.append((c, blacks + (0 if c.rb_red else 1)))

    if key is not None:
        count = 0
        prev = None
        n = rb_first(root)
        while n is not None:
            k = key(n)
            if count and k < prev:
                raise AssertionError(f"in-order keys out of order: {prev!r} then {k!r}")
            prev = k
            count += 1
            if count > len(seen):
                raise AssertionError("in-order walk visits more nodes than the tree holds")
            n = rb_next(n)
        if count != len(seen):
            raise AssertionError(f"in-order walk saw {count} of {len(seen)} nodes")
