"""KSM's own objects: ``struct ksm_rmap_item``, ``struct ksm_stable_node``,
``struct ksm_mm_slot`` and ``struct ksm_scan`` (mm/ksm.c).

``RmapItem.address`` keeps the kernel's encoding: the page address with
``SEQNR_MASK | UNSTABLE_FLAG | STABLE_FLAG`` in the low bits.
"""

from __future__ import annotations

from .rbtree import RbNode

SEQNR_MASK = 0x0FF
UNSTABLE_FLAG = 0x100
STABLE_FLAG = 0x200
PAGE_MASK = ~0xFFF

STABLE_NODE_CHAIN = -1024
RMAP_ITEM_SIZE = 64          # sizeof(struct ksm_rmap_item) on 64-bit, used by the profit formulas


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


MIGRATE_NODES = _Marker("&migrate_nodes")          # stable_node->head of a migrated node
STABLE_NODE_DUP_HEAD = _Marker("STABLE_NODE_DUP_HEAD")


class RmapItem(RbNode):
    """One per (mm, virtual page) at which ksmd has seen a candidate page."""

    # As in the kernel's unions: anon_vma (STABLE) shares a slot with nid (UNSTABLE), and
    # head (STABLE) shares one with the rb node's parent link (UNSTABLE).
    __slots__ = ("mm", "address", "oldchecksum", "age", "remaining_skips", "anon_vma")

    def __init__(self, mm, address: int):
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False
        self.mm = mm
        self.address = address
        self.oldchecksum = 0
        self.age = 0
        self.remaining_skips = 0
        self.anon_vma = None       # anon_vma reference (STABLE) / unstable tree nid (UNSTABLE)

    @property
    def head(self):
        """The stable node of a STABLE item (union with the rb node)."""
        return self.rb_parent

    @head.setter
    def head(self, node) -> None:
        self.rb_parent = node

    @property
    def nid(self) -> int:
        return self.anon_vma

    @nid.setter
    def nid(self, nid: int) -> None:
        self.anon_vma = nid

    def __repr__(self) -> str:
        st = ("STABLE" if self.address & STABLE_FLAG else
              "UNSTABLE" if self.address & UNSTABLE_FLAG else "NONE")
        name = self.mm.name if self.mm is not None else "?"
        return f"<rmap_item {name}@{self.address & PAGE_MASK:#x} {st}>"


class StableNode(RbNode):
    """A KSM page (regular node or dup) or a chain of dups with equal content."""

    __slots__ = ("hlist", "kpfn", "chain_prune_time", "rmap_hlist_len", "nid", "head",
                 "chain", "freed")

    def __init__(self, kpfn: int, nid: int):
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False
        self.hlist: list = []      # rmap_items (node, dup) or dups (chain)
        self.kpfn = kpfn
        self.chain_prune_time = 0
        self.rmap_hlist_len = 0
        self.nid = nid
        self.head = None           # None: in the rb-tree; MIGRATE_NODES; STABLE_NODE_DUP_HEAD
        self.chain = None          # the chain a dup hangs on (hlist_dup link)
        self.freed = False

    def is_chain(self) -> bool:
        return self.rmap_hlist_len == STABLE_NODE_CHAIN

    def is_dup(self) -> bool:
        return self.head is STABLE_NODE_DUP_HEAD

    def __repr__(self) -> str:
        if self.rmap_hlist_len == STABLE_NODE_CHAIN:
            return f"<stable_node chain dups={len(self.hlist)}>"
        kind = "dup" if self.head is STABLE_NODE_DUP_HEAD else "node"
        return f"<stable_node {kind} kpfn={self.kpfn} items={self.rmap_hlist_len}>"


class MmSlot:
    """``struct ksm_mm_slot``: a registered mm and its address-sorted rmap_items."""

    __slots__ = ("mm", "rmap_list")

    def __init__(self, mm):
        self.mm = mm
        self.rmap_list: list[RmapItem] = []

    def __repr__(self) -> str:
        return f"<mm_slot {self.mm.name} items={len(self.rmap_list)}>"


class KsmScan:
    """``struct ksm_scan``: the single cursor.  ``mm_slot is None`` means the list head.
    ``rmap_index`` is the position in ``mm_slot.rmap_list`` (the kernel's ``rmap_list``
    pointer-to-link)."""

    __slots__ = ("mm_slot", "address", "rmap_index", "seqnr")

    def __init__(self):
        self.mm_slot = None
        self.address = 0
        self.rmap_index = 0
        self.seqnr = 0
