"""Physical memory: frames (pfns), folios, references and the folio lock.

Models the parts of ``include/linux/mm.h``, ``mm/page_alloc.c``, ``mm/swap.c`` and
``mm/filemap.c`` that KSM relies on: ``folio_get``/``folio_try_get``/``folio_put``,
``folio_trylock``/``folio_lock``/``folio_unlock``, ``page_folio``, ``pfn_to_nid``,
the per-CPU LRU add batch (``folio_add_lru``/``lru_add_drain_all``, whose references
make ``write_protect_page`` fail on freshly faulted pages) and the shared zero page.

Per-frame state is kept in flat arrays indexed by pfn (struct-of-arrays), so a page costs a
few bytes and no Python object (issue 10: <= 128 bytes a page at 16 M pages):
``page_content[pfn]``, ``page_flags[pfn]`` (``PageAnonExclusive``) and ``page_index[pfn]``
(``folio->index`` of an anonymous folio: the linear page index it was faulted at).
``page_csum[pfn]`` memoises ``calc_checksum``: a checksum is a function of the content, so it
is kept while the content is (``PAGE_CSUM_VALID`` in ``page_flags``, cleared wherever a
frame's content is written: ``folio_alloc``, ``set_page_content``).
``page_content`` is an ``array('Q')`` of tokens (8 bytes a page instead of a list slot and
an int object) until a page is given real bytes (``set_page_content``); from then on it is a
list, which holds both.
A folio's NUMA node is that of its section (``pfn_to_nid``).

Folio state is struct-of-arrays too, written at the folio's head pfn: ``folio_refcount``,
``folio_mapcount``, ``folio_flags``, ``folio_mapping`` (anon_vma or stable node) and
``folio_gen``, a generation bumped whenever the frame is allocated or freed.
``folio_order[pfn]`` is the order of the folio a frame belongs to, ``FOLIO_TAIL`` set on the
frames after the head (large folios are naturally aligned, so the head is the pfn with the
order's low bits cleared), ``FOLIO_NONE`` on a free frame.  Large folios' per-page PTE
mapcounts and GUP pins, both rare, are dicts keyed by head pfn.

A ``Folio`` is a *handle* (memory, head pfn, generation) made on access, never stored per
page: ``mem.page_folio[pfn]`` (``page_folio``, like ``compound_head``) builds one, and its
attributes (``refcount``, ``mapcount``, ``flags``, ``mapping``...) read and write the arrays,
so the engine's code stays ``folio.refcount += 1`` as in C.  Two handles of one live folio
are equal (compare folios with ``==``, never ``is``).  A handle whose generation is no
longer the frame's is a freed folio: it reads PG_FREED, refcount 0, mapcount 0 and no
mapping, so use-after-free checks fire as they did when folios were objects; what is
written through it goes to a side table (``dead_folios``) and never reaches the frame's
next folio.
"""

from __future__ import annotations

from array import array

from .content import Content

# folio->flags (the subset KSM cares about)
PG_LOCKED = 1
PG_ANON = 2
PG_KSM = 4          # folio->mapping points at a stable node (FOLIO_MAPPING_KSM)
PG_SWAPCACHE = 8
PG_DIRTY = 16
PG_FREED = 32       # back in the allocator: any use is a use-after-free
PG_ZERO = 64        # the shared zero page
PG_LRU = 128        # on an LRU list (not in a per-CPU add batch)

# per-page flags
PAGE_ANON_EXCLUSIVE = 1
PAGE_CSUM_VALID = 2       # page_csum[pfn] is the checksum of the page's present content

# folio_order[pfn] besides the head's order
FOLIO_TAIL = 0x80         # a tail frame: 0x80 | order of its folio
FOLIO_NONE = 0xFF         # a free (or never allocated) frame

ZERO_PFN = 0
SECTION_SHIFT = 9           # 2 MiB sections: each belongs to one NUMA node
SECTION_MASK = (1 << SECTION_SHIFT) - 1
LRU_BATCH_SIZE = 31         # PAGEVEC_SIZE / folio_batch capacity


class Folio:
    """``struct folio``: one order-0 page or a large, naturally aligned group of pages.

    A handle (memory, head pfn, generation) onto the per-pfn arrays of ``Memory`` (see the
    module docstring).  ``mapping`` is, as in the kernel, the anon_vma of an anonymous folio
    or the stable node of a KSM folio (``PG_KSM``)."""

    __slots__ = ("mem", "pfn", "gen")

    order = 0                      # large folios carry their own
    page_mapcount = None           # per-page PTE mapcounts: large folios only

    def __init__(self, mem: "Memory", pfn: int, gen: int):
        self.mem = mem
        self.pfn = pfn
        self.gen = gen

    def __eq__(self, other) -> bool:
        return (isinstance(other, Folio) and self.pfn == other.pfn
                and self.gen == other.gen and self.mem is other.mem)

    def __hash__(self) -> int:
        return hash((self.pfn, self.gen))

    def _dead(self) -> list:
        """The state of a freed folio, written through a stale handle: kept aside so that
        it never reaches the frame's next folio (a use-after-free write of the model)."""
        key = (self.pfn, self.gen)
        dead = self.mem.dead_folios
        st = dead.get(key)
        if st is None:
            st = dead[key] = [0, 0, PG_FREED, None]
        return st

    def _stale_get(self, i: int):
        st = self.mem.dead_folios.get((self.pfn, self.gen))
        return (0, 0, PG_FREED, None)[i] if st is None else st[i]

    @property
    def refcount(self) -> int:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            return self._stale_get(0)
        return mem.folio_refcount[self.pfn]

    @refcount.setter
    def refcount(self, n: int) -> None:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            self._dead()[0] = n
        else:
            mem.folio_refcount[self.pfn] = n

    @property
    def mapcount(self) -> int:
        """``folio_mapcount()``: PTE mappings + PMD mappings."""
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            return self._stale_get(1)
        return mem.folio_mapcount[self.pfn]

    @mapcount.setter
    def mapcount(self, n: int) -> None:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            self._dead()[1] = n
        else:
            mem.folio_mapcount[self.pfn] = n

    @property
    def flags(self) -> int:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            return self._stale_get(2)
        return mem.folio_flags[self.pfn]

    @flags.setter
    def flags(self, f: int) -> None:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            self._dead()[2] = f
        else:
            mem.folio_flags[self.pfn] = f

    @property
    def mapping(self):
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            return self._stale_get(3)
        pfn = self.pfn
        return mem.folio_mapping[pfn >> SECTION_SHIFT][pfn & SECTION_MASK]

    @mapping.setter
    def mapping(self, m) -> None:
        mem = self.mem
        if mem.folio_gen[self.pfn] != self.gen:
            self._dead()[3] = m
        else:
            pfn = self.pfn
            mem.folio_mapping[pfn >> SECTION_SHIFT][pfn & SECTION_MASK] = m

    @property
    def live(self) -> bool:
        """This handle's folio has not been freed (its generation is the frame's)."""
        return self.mem.folio_gen[self.pfn] == self.gen

    @property
    def pincount(self) -> int:
        """GUP pins (each also holds a reference); rare, so kept off the arrays."""
        if not self.live:
            return 0
        return self.mem.folio_pins.get(self.pfn, 0)

    @pincount.setter
    def pincount(self, n: int) -> None:
        if not self.live:
            raise MemoryError_(f"pinning the freed {self!r}")
        if n:
            self.mem.folio_pins[self.pfn] = n
        else:
            self.mem.folio_pins.pop(self.pfn, None)

    @property
    def anon_vma(self):
        """``folio_anon_vma``: None for KSM folios."""
        return None if self.flags & PG_KSM else self.mapping

    @anon_vma.setter
    def anon_vma(self, av) -> None:
        self.mapping = av

    @property
    def nr_pages(self) -> int:
        return 1 << self.order

    def __repr__(self) -> str:
        flags = self.flags
        kind = "ksm" if flags & PG_KSM else ("anon" if flags & PG_ANON else "other")
        freed = " FREED" if flags & PG_FREED else ""
        return (f"<folio pfn={self.pfn} order={self.order} {kind} ref={self.refcount} "
                f"map={self.mapcount}{freed}>")


class LargeFolio(Folio):
    """A folio of order > 0, with a PTE mapcount per page (``Memory.folio_page_mapcount``)."""

    __slots__ = ("order",)

    def __init__(self, mem: "Memory", pfn: int, gen: int, order: int):
        self.mem = mem
        self.pfn = pfn
        self.gen = gen
        self.order = order

    @property
    def page_mapcount(self) -> list:
        if not self.live:
            return [0] * (1 << self.order)
        return self.mem.folio_page_mapcount[self.pfn]


class PageFolio:
    """``mem.page_folio``: ``page_folio[pfn]`` is the handle of the folio holding frame
    ``pfn`` (``page_folio()``/``compound_head``), None for a free frame."""

    __slots__ = ("mem",)

    def __init__(self, mem: "Memory"):
        self.mem = mem

    def __getitem__(self, pfn: int):
        mem = self.mem
        o = mem.folio_order[pfn]
        if o == 0:
            return Folio(mem, pfn, mem.folio_gen[pfn])
        if o == FOLIO_NONE:
            return None
        if o & FOLIO_TAIL:
            o &= ~FOLIO_TAIL
            pfn &= ~((1 << o) - 1)
        return LargeFolio(mem, pfn, mem.folio_gen[pfn], o)

    def __len__(self) -> int:
        return len(self.mem.folio_order)

    def __iter__(self):
        for pfn in range(len(self.mem.folio_order)):
            yield self[pfn]


class KsmNoNode:
    """folio->mapping of a KSM folio whose stable node is not set yet (folio_set_stable_node(NULL))."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "KSM_NO_NODE"


KSM_NO_NODE = KsmNoNode()


class MemoryError_(Exception):
    """A refcount or lock rule was broken (a model bug or a bug in a strategy under test)."""


class Memory:
    """Physical memory of one machine: allocator, per-frame arrays, the zero page, LRU batch."""

    def __init__(self, numa_nodes: int = 1):
        self.nr_node_ids = numa_nodes
        self.page_folio = PageFolio(self)
        self.page_content = array("Q")          # tokens; a list once bytes are stored
        self.page_flags = array("B")
        self.page_index = array("q")
        self.page_csum = array("I")             # memo of calc_checksum, see PAGE_CSUM_VALID
        # folio state, at the head pfn (see the module docstring)
        self.folio_refcount = array("i")
        self.folio_mapcount = array("i")
        self.folio_flags = array("B")
        # a list per section: an object column in one list would be copied as it grows
        # (on PyPy the copies stay in the heap until a major collection: 25 bytes a page)
        self.folio_mapping: list = []
        self.folio_gen = array("I")
        self.folio_order = array("B")
        self.folio_page_mapcount: dict = {}     # head pfn -> PTE mapcount per page (large)
        self.folio_pins: dict = {}              # head pfn -> GUP pins
        self.dead_folios: dict = {}             # (pfn, gen) -> state written to a freed folio
        self.section_nid = array("b")
        self._next_pfn = [0] * numa_nodes      # next unused pfn of the node's current section
        self._section_end = [0] * numa_nodes
        # freed frames, reused LIFO; 4 bytes a frame (every merged duplicate's is here)
        self._free = [array("i") for _ in range(numa_nodes)]
        self.nr_free_frames = 0
        self.next_pid = 1000                   # the last pid given (pids count per machine)
        self.lru_batch: list = []              # this CPU's folio_batch of LRU additions
        self.lru_batching = True
        self.vmstat = {"cow_ksm": 0, "ksm_swpin_copy": 0, "thp_split_page": 0,
                       "thp_split_page_failed": 0, "thp_fault_alloc": 0, "nr_anon_pages": 0}
        self.ksm = None                        # the KSM hooks (samepage.mm.hooks.KsmHooks)
        from .huge import ThpPolicy
        self.thp = ThpPolicy()                 # /sys/kernel/mm/transparent_hugepage
        self.sanitizer = None                  # optional: see samepage.mm.hooks.SanitizerHooks
        self.freed: dict = {}                  # sanitizer only: pfn -> the last folio freed there
        self.failslab = None                   # optional fault injection (samepage.mm.failslab)
        # the shared zero page lives in pfn 0 of node 0
        zero_pfn = self._alloc_frames(0, 0)
        assert zero_pfn == ZERO_PFN
        zf = self._folio_init(ZERO_PFN, 0)
        zf.flags = PG_ZERO
        zf.refcount = 1 << 30
        self.page_content[ZERO_PFN] = 0
        self.zero_folio = zf

    # -- frames ---------------------------------------------------------------------------
    def _new_section(self, nid: int) -> None:
        base = len(self.folio_order)
        size = 1 << SECTION_SHIFT
        pc = self.page_content
        if pc.__class__ is list:
            pc.extend([0] * size)
        else:
            pc.frombytes(bytes(8 * size))
        self.page_flags.frombytes(bytes(size))
        self.page_index.frombytes(bytes(8 * size))
        self.page_csum.frombytes(bytes(4 * size))
        self.folio_refcount.frombytes(bytes(4 * size))
        self.folio_mapcount.frombytes(bytes(4 * size))
        self.folio_flags.frombytes(bytes(size))
        self.folio_mapping.append([None] * size)
        self.folio_gen.frombytes(bytes(4 * size))
        self.folio_order.frombytes(b"\xff" * size)        # FOLIO_NONE
        self.section_nid.append(nid)
        self._next_pfn[nid] = base
        self._section_end[nid] = base + size

    def _alloc_frames(self, order: int, nid: int) -> int:
        n = 1 << order
        if order == 0 and self._free[nid]:
            self.nr_free_frames -= 1
            return self._free[nid].pop()
        pfn = self._next_pfn[nid]
        pfn = (pfn + n - 1) & ~(n - 1)
        if pfn + n > self._section_end[nid] or self._section_end[nid] == 0:
            # large orders above a section are not modelled; a section holds a PMD folio
            self._new_section(nid)
            pfn = self._next_pfn[nid]
        self._next_pfn[nid] = pfn + n
        return pfn

    def pfn_to_nid(self, pfn: int) -> int:
        return self.section_nid[pfn >> SECTION_SHIFT]

    def _folio_init(self, pfn: int, order: int) -> Folio:
        """A new folio on frames [pfn, pfn + 2**order): refcount 1 (the allocation's
        reference, which becomes the mapping's), nothing else; a new generation on each
        frame so that no older handle reaches it."""
        gen = self.folio_gen
        for p in range(pfn, pfn + (1 << order)):
            gen[p] += 1
        self.folio_refcount[pfn] = 1
        self.folio_mapcount[pfn] = 0
        self.folio_flags[pfn] = 0
        self.folio_mapping[pfn >> SECTION_SHIFT][pfn & SECTION_MASK] = None
        fo = self.folio_order
        fo[pfn] = order
        if order:
            tail = FOLIO_TAIL | order
            for p in range(pfn + 1, pfn + (1 << order)):
                fo[p] = tail
            self.folio_page_mapcount[pfn] = [0] * (1 << order)
            return LargeFolio(self, pfn, gen[pfn], order)
        return Folio(self, pfn, gen[pfn])

    def folio_alloc(self, order: int = 0, nid: int = 0, content: Content = 0) -> Folio:
        """Allocate a folio whose pages hold ``content`` (a zeroed page by default); None
        when the fault injection (``failslab``) makes it fail."""
        if self.failslab is not None and self.failslab.should_fail("folio"):
            return None
        pfn = self._alloc_frames(order, nid)
        pc = self.page_content
        if content.__class__ is not int and pc.__class__ is not list:
            pc = self.page_content_objects()
        flags = self.page_flags
        folio = self._folio_init(pfn, order)
        for p in range(pfn, pfn + (1 << order)):
            pc[p] = content
            flags[p] = 0
        return folio

    def _free_frames(self, pfn: int, order: int) -> None:
        """The frames of a folio that ceased to exist: a new generation on each (every
        handle to it is now stale) and no folio."""
        gen = self.folio_gen
        fo = self.folio_order
        for p in range(pfn, pfn + (1 << order)):
            gen[p] += 1
            fo[p] = FOLIO_NONE
        self.folio_mapping[pfn >> SECTION_SHIFT][pfn & SECTION_MASK] = None
        if order:
            del self.folio_page_mapcount[pfn]
        if self.folio_pins:
            self.folio_pins.pop(pfn, None)

    def _free_folio(self, folio: Folio) -> None:
        if folio.mapcount:
            raise MemoryError_(f"freeing {folio!r} while it is still mapped")
        pfn = folio.pfn
        order = folio.order
        self._free_frames(pfn, order)
        free = self._free[self.section_nid[pfn >> SECTION_SHIFT]]
        if order:
            free.extend(range(pfn, pfn + (1 << order)))
        else:
            free.append(pfn)
        self.nr_free_frames += 1 << order
        if self.sanitizer is not None:
            self.sanitizer.folio_freed(folio)

    def iter_folios(self):
        """Every allocated folio (the zero page's included), by head pfn."""
        fo = self.folio_order
        pf = self.page_folio
        for pfn in range(len(fo)):
            if fo[pfn] < FOLIO_TAIL:
                yield pf[pfn]

    # -- references ---------------------------------------------------------------------
    # These read the arrays directly when the handle is live (its generation is the
    # frame's; a live folio never has PG_FREED): the properties cost a call each on CPython.
    # A stale handle takes the property path, which reads it as the freed folio it is.
    def folio_get(self, folio: Folio) -> None:
        pfn = folio.pfn
        ref = self.folio_refcount
        if self.folio_gen[pfn] == folio.gen and ref[pfn] > 0:
            ref[pfn] += 1
            return
        if self.sanitizer is not None:
            self.sanitizer.folio_misuse("use-after-free", folio, "folio_get")
        raise MemoryError_(f"folio_get on a freed folio {folio!r}")

    def folio_try_get(self, folio: Folio) -> bool:
        """Take a reference unless the folio is being freed (refcount already 0)."""
        pfn = folio.pfn
        ref = self.folio_refcount
        if self.folio_gen[pfn] != folio.gen or ref[pfn] <= 0:
            return False
        ref[pfn] += 1
        return True

    def folio_put(self, folio: Folio) -> None:
        pfn = folio.pfn
        ref = self.folio_refcount
        if self.folio_gen[pfn] != folio.gen or ref[pfn] <= 0:
            if self.sanitizer is not None:
                self.sanitizer.folio_misuse("put-on-zero-refcount", folio, "folio_put")
            raise MemoryError_(f"folio_put on a freed folio {folio!r}")
        n = ref[pfn] - 1
        ref[pfn] = n
        if n == 0:
            self._free_folio(folio)

    def folio_put_refs(self, folio: Folio, n: int) -> None:
        for _ in range(n):
            self.folio_put(folio)

    # -- the folio lock -----------------------------------------------------------------
    def folio_trylock(self, folio: Folio) -> bool:
        pfn = folio.pfn
        if self.folio_gen[pfn] == folio.gen:
            flags = self.folio_flags
            if flags[pfn] & PG_LOCKED:
                return False
            flags[pfn] |= PG_LOCKED
            return True
        if folio.flags & PG_LOCKED:
            return False
        folio.flags |= PG_LOCKED
        return True

    def folio_lock(self, folio: Folio) -> None:
        if folio.flags & PG_LOCKED:
            # a sequential model cannot sleep on a lock held by nobody running
            raise MemoryError_(f"folio_lock would wait forever on {folio!r}")
        folio.flags |= PG_LOCKED

    def folio_unlock(self, folio: Folio) -> None:
        pfn = folio.pfn
        if self.folio_gen[pfn] == folio.gen:
            flags = self.folio_flags
            if flags[pfn] & PG_LOCKED:
                flags[pfn] &= ~PG_LOCKED
                return
        if not folio.flags & PG_LOCKED:
            if self.sanitizer is not None:
                self.sanitizer.folio_misuse(
                    "use-after-free" if folio.flags & PG_FREED else "unlock-unlocked",
                    folio, "folio_unlock")
            raise MemoryError_(f"folio_unlock of an unlocked folio {folio!r}")
        folio.flags &= ~PG_LOCKED

    # -- the sanitizer (samepage.sanitizer): checked variants, bound on the instance -------
    def set_sanitizer(self, sanitizer) -> None:
        """Install (or with None remove) a sanitizer.  The checked variants of the folio
        operations below replace the plain ones on this instance only, so that an
        unsanitized Memory runs exactly the plain code."""
        self.sanitizer = sanitizer
        for name in ("folio_get", "folio_try_get", "folio_put", "folio_trylock", "folio_lock",
                     "folio_unlock"):
            if sanitizer is None:
                self.__dict__.pop(name, None)
            else:
                setattr(self, name, getattr(self, "_sanitized_" + name))

    def page_folio_used(self, pfn: int, op: str):
        """``page_folio(page)`` at a site that uses a page it may not hold a reference on:
        with the sanitizer on, a freed page is reported (``op`` names the use)."""
        folio = self.page_folio[pfn]
        if folio is None and self.sanitizer is not None:
            self.sanitizer.freed_page_used(pfn, op)
        return folio

    def _sanitized_folio_get(self, folio: Folio) -> None:
        if folio.flags & PG_FREED:
            self.sanitizer.folio_misuse("use-after-free", folio, "folio_get")
        self.sanitizer.folio_op("folio_get", folio)
        Memory.folio_get(self, folio)

    def _sanitized_folio_try_get(self, folio: Folio) -> bool:
        ok = Memory.folio_try_get(self, folio)
        if ok:
            self.sanitizer.folio_op("folio_try_get", folio)
        return ok

    def _sanitized_folio_put(self, folio: Folio) -> None:
        s = self.sanitizer
        if folio.refcount <= 0 or folio.flags & PG_FREED:
            s.folio_misuse("put-on-zero-refcount", folio, "folio_put")
        if folio.refcount - 1 < folio.mapcount + folio.pincount and not folio.flags & PG_ZERO:
            s.folio_misuse("refcount-below-mapcount", folio, "folio_put",
                           f"refcount would drop to {folio.refcount - 1} < mapcount "
                           f"{folio.mapcount} + pins {folio.pincount}")
        s.folio_op("folio_put", folio)
        Memory.folio_put(self, folio)

    def _sanitized_folio_trylock(self, folio: Folio) -> bool:
        if folio.flags & PG_FREED:
            self.sanitizer.folio_misuse("use-after-free", folio, "folio_trylock")
        ok = Memory.folio_trylock(self, folio)
        if ok:
            self.sanitizer.folio_op("folio_trylock", folio)
        return ok

    def _sanitized_folio_lock(self, folio: Folio) -> None:
        if folio.flags & PG_FREED:
            self.sanitizer.folio_misuse("use-after-free", folio, "folio_lock")
        self.sanitizer.folio_op("folio_lock", folio)
        Memory.folio_lock(self, folio)

    def _sanitized_folio_unlock(self, folio: Folio) -> None:
        if folio.flags & PG_FREED:
            self.sanitizer.folio_misuse("use-after-free", folio, "folio_unlock")
        self.sanitizer.folio_op("folio_unlock", folio)
        Memory.folio_unlock(self, folio)

    # -- the per-CPU LRU add batch (mm/swap.c) --------------------------------------------
    def folio_add_lru(self, folio: Folio) -> None:
        """A new folio waits in the CPU's batch, holding a reference, until the batch drains."""
        if not self.lru_batching or folio.order:
            folio.flags |= PG_LRU      # large folios are never held back in the batch
            return
        folio.refcount += 1
        self.lru_batch.append(folio)
        if len(self.lru_batch) >= LRU_BATCH_SIZE:
            self.lru_add_drain()

    def lru_add_drain(self) -> None:
        batch = self.lru_batch
        if not batch:
            return
        self.lru_batch = []
        for folio in batch:
            folio.flags |= PG_LRU
            self.folio_put(folio)

    lru_add_drain_all = lru_add_drain   # one CPU's batch is modelled

    def split_huge_page(self, page: int) -> int:
        from .huge import split_huge_page
        return split_huge_page(self, page)

    # -- contents -----------------------------------------------------------------------
    def set_page_content(self, pfn: int, content: Content) -> None:
        """Store ``content`` (a normalised token or bytes, see ``make_content``) in a frame."""
        pc = self.page_content
        if content.__class__ is not int and pc.__class__ is not list:
            pc = self.page_content_objects()
        pc[pfn] = content
        self.page_flags[pfn] &= ~PAGE_CSUM_VALID

    def page_content_objects(self) -> list:
        """Turn ``page_content`` into a list (which can hold bytes); once, at the first
        page given real bytes.  Code holding the old array in a local must not run across
        that store (none does: the explorer's scenarios write tokens only)."""
        if self.page_content.__class__ is not list:
            self.page_content = self.page_content.tolist()
        return self.page_content

    def page_folio_of(self, pfn: int) -> Folio:
        folio = self.page_folio[pfn]
        if folio is None:
            raise MemoryError_(f"pfn {pfn} is not allocated")
        return folio
