"""KSM's own objects: ``struct ksm_rmap_item``, ``struct ksm_stable_node``,
``struct ksm_mm_slot`` and ``struct ksm_scan`` (mm/ksm.c), and ``alloc_rmap_item`` /
``free_rmap_item``'s slab (``rmap_item_cache``) as :class:`RmapTable`.

rmap_items are ROWS of a per-Ksm :class:`RmapTable`, one array per field of
``struct ksm_rmap_item``, and an :class:`RmapItem` is a transient handle ``(table, row)``
whose attributes read and write that row: a host-scale model has one rmap_item per
mergeable page, and a Python object per page cost ~150 bytes where the kernel spends 64
(issue 10).  Handles are created on access and never stored per page; two handles of the
same row are equal (``==``, never ``is``).  An mm_slot's ``rmap_list`` and a stable node's
``hlist`` of rmap_items hold rows (:class:`RmapList`).  A freed row goes on the table's
free list and is reused by the next ``alloc_rmap_item``: a stale handle then names the new
item, as a dangling pointer into the kernel's slab would.

``RmapItem.address`` keeps the kernel's encoding: the page address with
``SEQNR_MASK | UNSTABLE_FLAG | STABLE_FLAG`` in the low bits.
"""

from __future__ import annotations

from array import array

from .rbtree import RB_EMPTY, RbNode

SEQNR_MASK = 0x0FF
UNSTABLE_FLAG = 0x100
STABLE_FLAG = 0x200
PAGE_MASK = ~0xFFF

STABLE_NODE_CHAIN = -1024
RMAP_ITEM_SIZE = 64          # sizeof(struct ksm_rmap_item) on 64-bit, used by the profit formulas

# codes of the row-valued link columns (rows are >= 0)
NO_ROW = -1                  # NULL
EMPTY_ROW = -2               # RB_EMPTY (RB_CLEAR_NODE)
HEAD_ROW = -3                # rb_parent's union holds ``head``: see the ``head`` column

# Object-valued columns are lists of CHUNK rows each: one list for all rows would be copied
# whenever it grows, and on PyPy the copies stay in the heap until a major collection.
CHUNK_SHIFT = 10
CHUNK = 1 << CHUNK_SHIFT
CHUNK_MASK = CHUNK - 1


class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


MIGRATE_NODES = _Marker("&migrate_nodes")          # stable_node->head of a migrated node
STABLE_NODE_DUP_HEAD = _Marker("STABLE_NODE_DUP_HEAD")


class RmapTable:
    """The rmap_items of one Ksm: one column per field of ``struct ksm_rmap_item``.

    Object-valued fields (``mm``, ``anon_vma``, ``head``) are lists of ``CHUNK``-row lists
    (``mm[row >> CHUNK_SHIFT][row & CHUNK_MASK]``), the others arrays.
    The kernel's unions are kept observable: ``head`` shares its word with ``rb_parent``
    (``rb_parent[row] == HEAD_ROW`` says the ``head`` column holds it), and writing ``nid``
    drops ``anon_vma``.  Freed rows form a list threaded through ``oldchecksum`` (the next
    row + 1; 0 ends it), not through a link: a freed item may still hang in the last scan's
    unstable tree, whose root is only reset when the next scan starts, as in the kernel.
    """

    __slots__ = ("mm", "address", "oldchecksum", "age", "remaining_skips", "anon_vma",
                 "nid", "head", "rb_parent", "rb_left", "rb_right", "rb_red", "free_row")

    def __init__(self) -> None:
        self.mm: list = []
        self.address = array("q")          # signed: PyPy reads it without a long check
        self.oldchecksum = array("I")
        self.age = array("B")
        self.remaining_skips = array("B")
        self.anon_vma: list = []            # STABLE: anon_vma reference
        self.nid = array("h")               # UNSTABLE: the unstable tree's node id
        self.head: list = []                # STABLE: the stable node (when rb_parent is HEAD_ROW)
        self.rb_parent = array("i")
        self.rb_left = array("i")
        self.rb_right = array("i")
        self.rb_red = array("B")
        self.free_row = NO_ROW

    def __len__(self) -> int:
        """Rows in the columns (live and free)."""
        return len(self.address)

    def alloc(self, mm, address: int) -> int:
        """A zeroed row for (mm, address): a freed one if any (``kmem_cache_zalloc``)."""
        row = self.free_row
        if row >= 0:
            self.free_row = self.oldchecksum[row] - 1
            c = row >> CHUNK_SHIFT
            i = row & CHUNK_MASK
            self.mm[c][i] = mm
            self.address[row] = address
            self.oldchecksum[row] = 0
            self.age[row] = 0
            self.remaining_skips[row] = 0
            self.anon_vma[c][i] = None
            self.nid[row] = 0
            self.head[c][i] = None
            self.rb_parent[row] = NO_ROW
            self.rb_left[row] = NO_ROW
            self.rb_right[row] = NO_ROW
            self.rb_red[row] = 0
            return row
        self.grow()
        return self.alloc(mm, address)

    def grow(self) -> None:
        """Add rows to every column at once, by doubling, and put them on the free list.
        Growing a column element by element (12.5% at a time) reallocates it ~100 times
        per million rows, and on PyPy the old buffers (copied, not realloc'd) stay as
        fragments of the C heap: +70% of peak RSS."""
        old = len(self.address)
        n = max(CHUNK, old)              # a multiple of CHUNK
        chunks = n >> CHUNK_SHIFT
        self.mm.extend([[None] * CHUNK for _ in range(chunks)])
        self.address.frombytes(bytes(8 * n))
        # the free list, through oldchecksum: row old -> old + 1 -> ... -> end
        self.oldchecksum.extend(range(old + 2, old + n + 1))
        self.oldchecksum.append(self.free_row + 1)
        self.age.frombytes(bytes(n))
        self.remaining_skips.frombytes(bytes(n))
        self.anon_vma.extend([[None] * CHUNK for _ in range(chunks)])
        self.nid.frombytes(bytes(2 * n))
        self.head.extend([[None] * CHUNK for _ in range(chunks)])
        self.rb_parent.extend(array("i", [NO_ROW]) * n)
        self.rb_left.extend(array("i", [NO_ROW]) * n)
        self.rb_right.extend(array("i", [NO_ROW]) * n)
        self.rb_red.frombytes(bytes(n))
        self.free_row = old

    def free(self, row: int) -> None:
        """Give ``row`` back (``kmem_cache_free``); its references are dropped."""
        c = row >> CHUNK_SHIFT
        i = row & CHUNK_MASK
        self.mm[c][i] = None
        self.anon_vma[c][i] = None
        self.head[c][i] = None
        if self.rb_parent[row] == HEAD_ROW:
            self.rb_parent[row] = NO_ROW
        self.oldchecksum[row] = self.free_row + 1
        self.free_row = row

    def live_rows(self) -> int:
        """Rows in use (allocated and not freed)."""
        n = 0
        row = self.free_row
        while row >= 0:
            n += 1
            row = self.oldchecksum[row] - 1
        return len(self.address) - n


class RmapItem:
    """A handle on one rmap_item (a row of an :class:`RmapTable`): one per (mm, virtual
    page) at which ksmd has seen a candidate page.  Made on access, never stored per page;
    equal handles name the same row.  ``alloc_rmap_item`` is ``Ksm.alloc_rmap_item``."""

    __slots__ = ("table", "row")

    def __init__(self, table: RmapTable, row: int):
        self.table = table
        self.row = row

    def __eq__(self, other) -> bool:
        return (other.__class__ is RmapItem and other.row == self.row
                and other.table is self.table)

    def __ne__(self, other) -> bool:
        return not (other.__class__ is RmapItem and other.row == self.row
                    and other.table is self.table)

    def __hash__(self) -> int:
        return self.row

    # the fields of struct ksm_rmap_item
    @property
    def mm(self):
        r = self.row
        return self.table.mm[r >> CHUNK_SHIFT][r & CHUNK_MASK]

    @mm.setter
    def mm(self, mm) -> None:
        r = self.row
        self.table.mm[r >> CHUNK_SHIFT][r & CHUNK_MASK] = mm

    @property
    def address(self) -> int:
        return self.table.address[self.row]

    @address.setter
    def address(self, address: int) -> None:
        self.table.address[self.row] = address

    @property
    def oldchecksum(self) -> int:
        return self.table.oldchecksum[self.row]

    @oldchecksum.setter
    def oldchecksum(self, checksum: int) -> None:
        self.table.oldchecksum[self.row] = checksum

    @property
    def age(self) -> int:
        return self.table.age[self.row]

    @age.setter
    def age(self, age: int) -> None:
        self.table.age[self.row] = age

    @property
    def remaining_skips(self) -> int:
        return self.table.remaining_skips[self.row]

    @remaining_skips.setter
    def remaining_skips(self, n: int) -> None:
        self.table.remaining_skips[self.row] = n

    @property
    def anon_vma(self):
        """anon_vma reference (STABLE); a union with ``nid`` (UNSTABLE)."""
        r = self.row
        return self.table.anon_vma[r >> CHUNK_SHIFT][r & CHUNK_MASK]

    @anon_vma.setter
    def anon_vma(self, av) -> None:
        r = self.row
        self.table.anon_vma[r >> CHUNK_SHIFT][r & CHUNK_MASK] = av

    @property
    def nid(self) -> int:
        return self.table.nid[self.row]

    @nid.setter
    def nid(self, nid: int) -> None:
        t = self.table
        r = self.row
        t.nid[r] = nid
        t.anon_vma[r >> CHUNK_SHIFT][r & CHUNK_MASK] = None   # the union's anon_vma goes

    # the rb node; ``head`` (STABLE) shares its word with rb_parent (UNSTABLE)
    @property
    def rb_parent(self):
        t = self.table
        r = t.rb_parent[self.row]
        if r >= 0:
            return RmapItem(t, r)
        if r == NO_ROW:
            return None
        if r == HEAD_ROW:
            r = self.row
            return t.head[r >> CHUNK_SHIFT][r & CHUNK_MASK]
        return RB_EMPTY

    @rb_parent.setter
    def rb_parent(self, node) -> None:
        t = self.table
        if node is None:
            t.rb_parent[self.row] = NO_ROW
        elif node.__class__ is RmapItem:
            t.rb_parent[self.row] = node.row
        elif node is RB_EMPTY:
            t.rb_parent[self.row] = EMPTY_ROW
        else:
            r = self.row
            t.head[r >> CHUNK_SHIFT][r & CHUNK_MASK] = node
            t.rb_parent[r] = HEAD_ROW

    head = rb_parent

    @property
    def rb_left(self):
        r = self.table.rb_left[self.row]
        return None if r < 0 else RmapItem(self.table, r)

    @rb_left.setter
    def rb_left(self, node) -> None:
        self.table.rb_left[self.row] = NO_ROW if node is None else node.row

    @property
    def rb_right(self):
        r = self.table.rb_right[self.row]
        return None if r < 0 else RmapItem(self.table, r)

    @rb_right.setter
    def rb_right(self, node) -> None:
        self.table.rb_right[self.row] = NO_ROW if node is None else node.row

    @property
    def rb_red(self) -> bool:
        return self.table.rb_red[self.row] != 0

    @rb_red.setter
    def rb_red(self, red: bool) -> None:
        self.table.rb_red[self.row] = red

    rb_init = RbNode.rb_init           # the same four stores, through the properties

    def __repr__(self) -> str:
        t = self.table
        if t is None:
            return f"<rmap_item row {self.row}>"
        a = t.address[self.row]
        st = ("STABLE" if a & STABLE_FLAG else
              "UNSTABLE" if a & UNSTABLE_FLAG else "NONE")
        mm = t.mm[self.row >> CHUNK_SHIFT][self.row & CHUNK_MASK]
        name = mm.name if mm is not None else "?"
        return f"<rmap_item {name}@{a & PAGE_MASK:#x} {st}>"


class RmapList:
    """A list of rmap_items stored as rows (array 'i') of one table: an mm_slot's
    ``rmap_list`` or a stable node's ``hlist``.  Indexing and iteration yield handles."""

    __slots__ = ("table", "rows")

    def __init__(self, table: RmapTable, rows=()):
        self.table = table
        self.rows = array("i", rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i):
        if i.__class__ is slice:
            t = self.table
            return [RmapItem(t, r) for r in self.rows[i]]
        return RmapItem(self.table, self.rows[i])

    def __delitem__(self, i) -> None:
        del self.rows[i]

    def __iter__(self):
        t = self.table
        for r in self.rows:
            yield RmapItem(t, r)

    def __contains__(self, item) -> bool:
        return item.__class__ is RmapItem and item.table is self.table \
            and item.row in self.rows

    def append(self, item: RmapItem) -> None:
        self.rows.append(item.row)

    def insert(self, i: int, item: RmapItem) -> None:
        self.rows.insert(i, item.row)

    def remove(self, item: RmapItem) -> None:
        self.rows.remove(item.row)

    def index(self, item: RmapItem) -> int:
        return self.rows.index(item.row)

    def pop(self, i: int = -1) -> RmapItem:
        return RmapItem(self.table, self.rows.pop(i))

    def __repr__(self) -> str:
        return f"RmapList({list(self)!r})"


class StableNode(RbNode):
    """A KSM page (regular node or dup) or a chain of dups with equal content."""

    __slots__ = ("hlist", "kpfn", "chain_prune_time", "rmap_hlist_len", "nid", "head",
                 "chain", "freed")

    def __init__(self, kpfn: int, nid: int, hlist=None):
        self.rb_parent = None
        self.rb_left = None
        self.rb_right = None
        self.rb_red = False
        # rmap_items (node, dup: an RmapList) or dups (chain: a list)
        self.hlist = [] if hlist is None else hlist
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

    def __init__(self, mm, table: RmapTable | None = None):
        self.mm = mm
        # rows of the Ksm's table (``MmSlot(mm)``, as a patch may write it, finds it)
        self.rmap_list = RmapList(mm.mem.ksm.rmap_table if table is None else table)

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
