"""The KSM engine: Linux 6.18 ``mm/ksm.c`` over the model's memory manager.

Functions keep the kernel's names and order of operations so the model can be read beside
the C: ``ksm_do_scan``, ``scan_get_next_rmap_item``, ``get_next_rmap_item``,
``should_skip_rmap_item``, ``cmp_and_merge_page``, ``try_to_merge_with_zero_page``,
``stable_tree_search``, ``stable_tree_insert``, ``stable_tree_append``,
``stable_node_dup``/``__stable_node_chain``, ``ksm_get_folio``,
``remove_node_from_stable_tree``, ``remove_rmap_item_from_tree``,
``remove_trailing_rmap_items``, ``unstable_tree_search_insert``, ``get_mergeable_page``,
``find_mergeable_vma``, ``try_to_merge_two_pages``, ``try_to_merge_with_ksm_page``,
``try_to_merge_one_page``, ``write_protect_page``, ``replace_page``, ``break_cow``,
``break_ksm``, ``__ksm_enter``, ``__ksm_exit``, ``ksm_fork``, ``ksm_madvise``,
``ksm_enable_merge_any``/``ksm_disable_merge_any``, ``unmerge_and_remove_all_rmap_items``,
``remove_all_stable_nodes`` and the sysfs stores (in ``samepage.ksm.sysfs``).

rmap_items are rows of ``Ksm.rmap_table`` (``alloc_rmap_item`` / ``free_rmap_item``) and an
``RmapItem`` is a transient handle on one, compared with ``==`` (samepage.ksm.structs: one
rmap_item per mergeable page must cost bytes, not a Python object; issue 10).

A page is named by its pfn; ``mem.page_folio[pfn]`` is ``page_folio(page)``.  Locks that
only serialise concurrent kernel threads are not modelled (the model is sequential), but the
folio lock, references and every check that depends on them are.
"""

from __future__ import annotations

import errno

from samepage.mm.content import PAGE_SHIFT, PAGE_SIZE
from samepage.mm.folio import (PAGE_ANON_EXCLUSIVE, PAGE_CSUM_VALID, PG_ANON, PG_DIRTY, PG_FREED,
                               PG_KSM, PG_SWAPCACHE, ZERO_PFN, KSM_NO_NODE, Memory)
from samepage.mm.hooks import KsmHooks
from samepage.mm.mm import (FAULT_FLAG_UNSHARE, MADV_MERGEABLE, MADV_UNMERGEABLE,
                            MMF_VM_MERGE_ANY, MMF_VM_MERGEABLE, PTE_DIRTY, PTE_PMD,
                            PTE_SPECIAL, PTE_WRITE, VM_DROPPABLE, VM_HUGETLB, VM_MAYSHARE,
                            VM_MERGEABLE, VM_SHARED, VM_SPECIAL, MM, FaultOOM, Vma, mmdrop,
                            mmgrab)

from .checksum import ZERO_CHECKSUM, calc_checksum_content
from .costs import CostModel, resolve_costs
from .opcounts import (OP_BATCH, OP_CHAIN_DUP, OP_CHECKSUM, OP_CHECKSUM_LARGE, OP_COW_BREAK,
                       OP_MEMCMP_EQUAL, OP_MEMCMP_MERGE, OP_MEMCMP_STABLE, OP_MEMCMP_UNSTABLE,
                       OP_MERGE_KSM, OP_MERGE_ONE, OP_MERGE_PAIR, OP_MERGE_ZERO, OP_NO_PAGE,
                       OP_RMAP_ALLOC, OP_RMAP_FREE, OP_SCAN_START, OP_SKIP, OP_SPLIT,
                       OP_STABLE_NODE_FREE, OP_STABLE_NODE_NEW, OP_UNSTABLE_INSERT, OP_VISIT,
                       OP_VISIT_PMD, new_counts)
from .rbtree import (RbRoot, rb_erase, rb_insert_color, rb_link_node, rb_replace_node)
from .structs import (MIGRATE_NODES, PAGE_MASK, RMAP_ITEM_SIZE, SEQNR_MASK, STABLE_FLAG,
                      STABLE_NODE_CHAIN, STABLE_NODE_DUP_HEAD, UNSTABLE_FLAG, KsmScan,
                      MmSlot, RmapItem, RmapList, RmapTable, StableNode)

KSM_RUN_STOP = 0
KSM_RUN_MERGE = 1
KSM_RUN_UNMERGE = 2

KSM_GET_FOLIO_NOLOCK = 0
KSM_GET_FOLIO_LOCK = 1
KSM_GET_FOLIO_TRYLOCK = 2


class _ErrBusy:
    __slots__ = ()

    def __repr__(self) -> str:
        return "ERR_PTR(-EBUSY)"


ERR_BUSY = _ErrBusy()
EFAULT = -errno.EFAULT


def _anon_root(av):
    while av is not None and av.parent is not None:
        av = av.parent
    return av


class Ksm(KsmHooks):
    """All of KSM's global state (the statics of mm/ksm.c) and its functions."""

    # the explorer sets it per instance; a class default so that a patch (samepage.patch)
    # can make it a no-op callable for its own ``ksm.preempt("name")`` calls
    preempt = None

    def __init__(self, mem: Memory, costs: CostModel | str | None = None):
        self.mem = mem
        mem.ksm = self
        self.costs = resolve_costs(costs)     # a CostModel, a profile file, or the default
        # tunables (sysfs), with the kernel's defaults
        self.ksm_run = KSM_RUN_STOP
        self.ksm_thread_pages_to_scan = 100
        self.ksm_thread_sleep_millisecs = 20
        self.ksm_max_page_sharing = 256
        self.ksm_stable_node_chains_prune_millisecs = 2000
        self.ksm_merge_across_nodes = 1
        self.ksm_nr_node_ids = 1
        self.ksm_use_zero_pages = False
        self.ksm_smart_scan = True
        self.ksm_advisor = "none"
        self.ksm_advisor_max_cpu = 70
        self.ksm_advisor_target_scan_time = 200
        self.ksm_advisor_min_pages_to_scan = 500
        self.ksm_advisor_max_pages_to_scan = 30000
        # statistics
        self.ksm_pages_scanned = 0
        self.ksm_pages_shared = 0
        self.ksm_pages_sharing = 0
        self.ksm_pages_unshared = 0
        self.ksm_rmap_items = 0
        self.ksm_stable_node_chains = 0
        self.ksm_stable_node_dups = 0
        self.ksm_pages_skipped = 0
        self.ksm_zero_pages = 0
        # rmap_items are rows of this table, an RmapItem a handle on one (memory per page)
        self.rmap_table = RmapTable()
        # trees, lists, cursor
        self.root_stable_tree = [RbRoot()]
        self.root_unstable_tree = [RbRoot()]
        self.migrate_nodes: list[StableNode] = []
        self.mm_list: list[MmSlot] = []          # ksm_mm_head's list, in scan order
        self.mm_slots_hash: dict[int, MmSlot] = {}
        self.ksm_scan = KsmScan()
        # simulated time
        self.clock_ns = 0                        # jiffies source
        self.ops = new_counts()                  # operation counts (samepage.ksm.opcounts)
        self._cpu_ns_base = 0.0                  # see cpu_ns
        self.advisor_ctx = {"start_scan": 0, "scan_time": 0, "change": 0, "cpu_time": 0}
        # instrumentation
        self.merge_failures: dict[str, int] = {}
        self.record_failures = True
        self.failure_log = None            # a deque of (full_scans, mm, address, reason)
        self.current_item = None
        # schedule exploration (samepage.explore): called at the preemption points with the
        # point's name when set; ``mmap_read_locked`` is the mm whose mmap_lock ksmd holds
        # for reading in try_to_merge_with_ksm_page / try_to_merge_with_zero_page
        # (``preempt`` is a class attribute, None)
        self.mmap_read_locked = None
        self.set_same_folio_strategy("v6.18")
        # fast-forward of quiescent scans (samepage.ksm.fastforward): ``ff_dirty`` is set by
        # any change a scan makes that is not clock-like; an unstable item removed at its
        # visit must be re-inserted (``ff_removed`` == ``ff_reinserted`` at the wrap)
        self.ff_dirty = False
        self.ff_removed = 0
        self.ff_reinserted = 0
        self.ff_reinsert = None
        self.ff_prune_deadline = 1 << 62
        self.ff_recorder = None
        self.ff_profile = None

    # ------------------------------------------------------------------------------------
    # helpers
    def jiffies_ms(self) -> int:
        return self.clock_ns // 1_000_000

    @property
    def cpu_ns(self) -> float:
        """ksmd's accumulated CPU time: the operation counts priced by the cost profile."""
        return self._cpu_ns_base + self.costs.cpu_ns(self.ops)

    @cpu_ns.setter
    def cpu_ns(self, value: float) -> None:
        self._cpu_ns_base = value - self.costs.cpu_ns(self.ops)

    def get_kpfn_nid(self, kpfn: int) -> int:
        return 0 if self.ksm_merge_across_nodes else self.mem.pfn_to_nid(kpfn)

    def _fail(self, where: str) -> None:
        """Record why a merge attempt failed: which check, in which function."""
        self.ff_dirty = True
        if self.record_failures:
            self.merge_failures[where] = self.merge_failures.get(where, 0) + 1
            if self.failure_log is not None:
                it = self.current_item
                self.failure_log.append((self.ksm_scan.seqnr,
                                         it.mm.name if it is not None and it.mm else None,
                                         it.address & PAGE_MASK if it is not None else None,
                                         where))

    def folio_stable_node(self, folio):
        """The stable node of a KSM folio, None otherwise (also for a NULL-node KSM folio)."""
        if folio.flags & PG_KSM:
            node = folio.mapping
            return None if node is KSM_NO_NODE else node
        return None

    def folio_set_stable_node(self, folio, node) -> None:
        folio.flags |= PG_KSM | PG_ANON
        folio.mapping = KSM_NO_NODE if node is None else node

    def memcmp_pages(self, a: int, b: int) -> int:
        self.ops[OP_MEMCMP_MERGE] += 1
        pc = self.mem.page_content
        x = pc[a]
        y = pc[b]
        if x.__class__ is int and y.__class__ is int:
            return (x > y) - (x < y)
        from samepage.mm.content import memcmp_contents
        return memcmp_contents(x, y)

    def pages_identical(self, a: int, b: int) -> bool:
        return self.memcmp_pages(a, b) == 0

    def calc_checksum(self, pfn: int) -> int:
        ops = self.ops
        ops[OP_CHECKSUM] += 1
        mem = self.mem
        if mem.page_folio[pfn].order:
            ops[OP_CHECKSUM_LARGE] += 1
        # the same content, the same xxhash: kept per frame until its content is written
        flags = mem.page_flags
        if flags[pfn] & PAGE_CSUM_VALID:
            return mem.page_csum[pfn]
        checksum = calc_checksum_content(mem.page_content[pfn])
        mem.page_csum[pfn] = checksum
        flags[pfn] |= PAGE_CSUM_VALID
        return checksum

    def set_sanitizer_checks(self, on: bool) -> None:
        """With ``mem.sanitizer`` set: check every content read of the helpers below
        (bound on this instance only: an unsanitized Ksm runs the plain code)."""
        for name in ("memcmp_pages", "calc_checksum"):
            if on:
                setattr(self, name, getattr(self, "_sanitized_" + name))
            else:
                self.__dict__.pop(name, None)

    def _sanitized_page(self, pfn: int, op: str) -> None:
        mem = self.mem
        folio = mem.page_folio[pfn]
        if folio is None:
            mem.sanitizer.freed_page_used(pfn, op)
        elif folio.flags & PG_FREED:
            mem.sanitizer.folio_misuse("use-after-free", folio, op)

    def _sanitized_memcmp_pages(self, a: int, b: int) -> int:
        self._sanitized_page(a, "memcmp_pages")
        self._sanitized_page(b, "memcmp_pages")
        return Ksm.memcmp_pages(self, a, b)

    def _sanitized_calc_checksum(self, pfn: int) -> int:
        self._sanitized_page(pfn, "calc_checksum")
        return Ksm.calc_checksum(self, pfn)

    # ------------------------------------------------------------------------------------
    # mm slots
    def __ksm_enter(self, mm: MM) -> int:
        slot = MmSlot(mm, self.rmap_table)
        was_empty = not self.mm_list
        self.mm_slots_hash[id(mm)] = slot
        if self.ksm_run & KSM_RUN_UNMERGE or self.ksm_scan.mm_slot is None:
            self.mm_list.append(slot)
        else:
            # behind the cursor: first visited by the next full scan
            self.mm_list.insert(self.mm_list.index(self.ksm_scan.mm_slot), slot)
        mm.flags |= MMF_VM_MERGEABLE
        mmgrab(mm)                             # the mm_slot pins the struct
        del was_empty  # ksmd is woken; the model's ksmd polls ksmd_should_run()
        return 0

    ksm_enter = __ksm_enter

    def _slot_next(self, slot: MmSlot):
        i = self.mm_list.index(slot) + 1
        return self.mm_list[i] if i < len(self.mm_list) else None

    def _slot_del(self, slot: MmSlot) -> None:
        self.mm_slots_hash.pop(id(slot.mm), None)
        self.mm_list.remove(slot)
        mmdrop(slot.mm)                        # mm_slot_free: the slot's pin goes

    def __ksm_exit(self, mm: MM) -> None:
        slot = self.mm_slots_hash.get(id(mm))
        easy_to_free = False
        if slot is not None and self.ksm_scan.mm_slot is not slot:
            if not slot.rmap_list:
                self._slot_del(slot)
                easy_to_free = True
            else:
                # move right after the cursor so ksmd frees its items soon
                self.mm_list.remove(slot)
                cur = self.ksm_scan.mm_slot
                pos = 0 if cur is None else self.mm_list.index(cur) + 1
                self.mm_list.insert(pos, slot)
        if easy_to_free:
            mm.flags &= ~(MMF_VM_MERGE_ANY | MMF_VM_MERGEABLE)

    def ff_invalidate(self) -> None:
        """Something outside ksmd changed the state: no scan profile holds any more."""
        self.ff_profile = None
        self.ff_recorder = None

    # --- hooks called by the memory manager -------------------------------------------------
    def ksm_exit(self, mm: MM) -> None:
        self.ff_invalidate()
        if mm.flags & MMF_VM_MERGEABLE:
            self.__ksm_exit(mm)

    def ksm_fork(self, mm: MM, oldmm: MM) -> None:
        self.ff_invalidate()
        if oldmm.flags & MMF_VM_MERGEABLE:
            mm.ksm_merging_pages = 0
            mm.ksm_rmap_items = 0
            self.ksm_zero_pages += mm.ksm_zero_pages
            self.__ksm_enter(mm)

    def ksm_execve(self, mm: MM) -> None:
        self.ff_invalidate()
        if mm.flags & MMF_VM_MERGE_ANY:
            self.__ksm_enter(mm)

    def ksm_might_unmap_zero_page(self, mm: MM, ptef: int) -> None:
        self.ff_invalidate()
        if ptef & PTE_SPECIAL and ptef & PTE_DIRTY:       # is_ksm_zero_pte
            self.ksm_zero_pages -= 1
            mm.ksm_zero_pages -= 1

    @staticmethod
    def ksm_compatible(vma: Vma) -> bool:
        if vma.flags & (VM_SHARED | VM_MAYSHARE | VM_SPECIAL | VM_HUGETLB | VM_DROPPABLE):
            return False
        if vma.file is not None and getattr(vma.file, "dax", False):
            return False
        return True

    def ksm_vma_flags(self, mm: MM, vma: Vma) -> None:
        self.ff_invalidate()
        if mm.flags & MMF_VM_MERGE_ANY and self.ksm_compatible(vma):
            vma.flags |= VM_MERGEABLE
            if not mm.flags & MMF_VM_MERGEABLE:
                self.__ksm_enter(mm)

    def ksm_madvise(self, vma: Vma, start: int, end: int, advice: int) -> int:
        self.ff_invalidate()
        mm = vma.mm
        if advice == MADV_MERGEABLE:
            if vma.flags & VM_MERGEABLE:
                return 0
            if not self.ksm_compatible(vma):
                return 0
            if not mm.flags & MMF_VM_MERGEABLE:
                err = self.__ksm_enter(mm)
                if err:
                    return err
            vma.flags |= VM_MERGEABLE
            return 0
        if advice == MADV_UNMERGEABLE:
            if not vma.flags & VM_MERGEABLE:
                return 0
            if vma.anon_vma is not None:
                err = self.break_ksm(vma, start, end)
                if err:
                    return err
            vma.flags &= ~VM_MERGEABLE
            return 0
        return -errno.EINVAL

    def __ksm_add_vma(self, vma: Vma) -> None:
        if not vma.flags & VM_MERGEABLE and self.ksm_compatible(vma):
            vma.flags |= VM_MERGEABLE

    def __ksm_del_vma(self, vma: Vma) -> int:
        if not vma.flags & VM_MERGEABLE:
            return 0
        if vma.anon_vma is not None:
            err = self.break_ksm(vma, vma.start, vma.end)
            if err:
                return err
        vma.flags &= ~VM_MERGEABLE
        return 0

    def ksm_enable_merge_any(self, mm: MM) -> int:
        self.ff_invalidate()
        if mm.flags & MMF_VM_MERGE_ANY:
            return 0
        if not mm.flags & MMF_VM_MERGEABLE:
            err = self.__ksm_enter(mm)
            if err:
                return err
        mm.flags |= MMF_VM_MERGE_ANY
        for vma in mm.vmas:
            self.__ksm_add_vma(vma)
        return 0

    def ksm_disable_merge_any(self, mm: MM) -> int:
        self.ff_invalidate()
        if not mm.flags & MMF_VM_MERGE_ANY:
            return 0
        for vma in mm.vmas:
            err = self.__ksm_del_vma(vma)
            if err:
                for v in mm.vmas:
                    self.__ksm_add_vma(v)
                return err
        mm.flags &= ~MMF_VM_MERGE_ANY
        return 0

    # ------------------------------------------------------------------------------------
    # unmerging
    def break_ksm(self, vma: Vma, start: int, end: int) -> int:
        """Unshare every KSM page and KSM zero page mapped in [start, end) of ``vma``
        (-ENOMEM when the unsharing fault cannot allocate)."""
        mm = vma.mm
        mem = self.mem
        if mem.sanitizer is not None:
            mem.sanitizer.vma_access(self, vma, "break_ksm", need_lock=False)
        pf = mem.page_folio
        lo = max(0, (start - vma.start) >> PAGE_SHIFT)
        hi = min(vma.nr_pages, (end - vma.start) >> PAGE_SHIFT)
        pte, ptef = vma.pte, vma.ptef
        for i in range(lo, hi):
            if self.preempt is not None:
                self.preempt("break_ksm:page")        # cond_resched(), mmap_lock held
            if mm.mm_users == 0:
                return 0
            pfn = pte[i]
            if pfn < 0:
                continue
            f = ptef[i]
            if f & PTE_SPECIAL:
                if not f & PTE_DIRTY:
                    continue
            elif not pf[pfn].flags & PG_KSM:
                continue
            try:
                mm.handle_mm_fault(vma, vma.start + (i << PAGE_SHIFT), FAULT_FLAG_UNSHARE)
            except FaultOOM:
                return -errno.ENOMEM           # VM_FAULT_OOM
        return 0

    def break_cow(self, item: RmapItem) -> None:
        self.ops[OP_COW_BREAK] += 1
        item.anon_vma = None                       # put_anon_vma
        vma = self.find_mergeable_vma(item.mm, item.address)
        if vma is not None:
            addr = item.address & PAGE_MASK
            held = self.mmap_read_locked
            self.mmap_read_locked = item.mm
            try:
                self.break_ksm(vma, addr, addr + PAGE_SIZE)
            finally:
                self.mmap_read_locked = held

    # ------------------------------------------------------------------------------------
    # stable nodes
    def free_stable_node(self, node: StableNode) -> None:
        self.ops[OP_STABLE_NODE_FREE] += 1
        node.freed = True

    def __stable_node_dup_del(self, dup: StableNode) -> None:
        dup.chain.hlist.remove(dup)
        dup.chain = None
        self.ksm_stable_node_dups -= 1

    def stable_node_dup_del(self, dup: StableNode) -> None:
        if dup.head is STABLE_NODE_DUP_HEAD:
            self.__stable_node_dup_del(dup)
        else:
            rb_erase(dup, self.root_stable_tree[dup.nid if not self.ksm_merge_across_nodes else 0])

    def stable_node_chain_add_dup(self, dup: StableNode, chain: StableNode) -> None:
        dup.head = STABLE_NODE_DUP_HEAD
        dup.chain = chain
        chain.hlist.insert(0, dup)
        self.ksm_stable_node_dups += 1

    def alloc_stable_node_chain(self, dup: StableNode, root: RbRoot) -> StableNode | None:
        fs = self.mem.failslab
        if fs is not None and fs.should_fail("stable_node_chain"):
            return None
        chain = StableNode(0, dup.nid)
        chain.chain_prune_time = self.jiffies_ms()
        chain.rmap_hlist_len = STABLE_NODE_CHAIN
        self.ksm_stable_node_chains += 1
        rb_replace_node(dup, chain, root)
        self.stable_node_chain_add_dup(dup, chain)
        return chain

    def free_stable_node_chain(self, chain: StableNode, root: RbRoot) -> None:
        rb_erase(chain, root)
        self.free_stable_node(chain)
        self.ksm_stable_node_chains -= 1

    def remove_node_from_stable_tree(self, node: StableNode) -> None:
        n = len(node.hlist)
        for item in node.hlist:
            item.mm.ksm_merging_pages -= 1
            item.anon_vma = None
            item.address &= PAGE_MASK
        if n:
            self.ksm_pages_sharing -= n - 1
            self.ksm_pages_shared -= 1
        node.rmap_hlist_len -= n
        del node.hlist[:]
        if node.head is MIGRATE_NODES:
            self.migrate_nodes.remove(node)
        else:
            self.stable_node_dup_del(node)
        self.free_stable_node(node)

    def ksm_get_folio(self, node: StableNode, flags: int):
        """Validate the keyhole reference of ``node``: its KSM folio with a reference (and
        lock), None after removing a stale node, or ERR_BUSY for a failed trylock."""
        mem = self.mem
        folio = mem.page_folio[node.kpfn]
        if folio is None or folio.mapping is not node:
            self.remove_node_from_stable_tree(node)
            return None
        if not mem.folio_try_get(folio):
            self.remove_node_from_stable_tree(node)
            return None
        if flags == KSM_GET_FOLIO_TRYLOCK:
            if not mem.folio_trylock(folio):
                mem.folio_put(folio)
                return ERR_BUSY
        elif flags == KSM_GET_FOLIO_LOCK:
            mem.folio_lock(folio)
        return folio

    def is_page_sharing_candidate(self, node: StableNode, offset: int = 0) -> bool:
        n = node.rmap_hlist_len
        return n != 0 and n + offset < self.ksm_max_page_sharing

    def stable_node_dup(self, chain: StableNode, root: RbRoot, prune: bool):
        """Pick a dup of ``chain``: returns (dup, folio, node) where ``node`` is the chain or,
        if the chain collapsed, the dup that replaced it."""
        mem = self.mem
        now = self.jiffies_ms()
        due = chain.chain_prune_time + self.ksm_stable_node_chains_prune_millisecs
        if not prune or now < due:
            if prune and due < self.ff_prune_deadline:
                self.ff_prune_deadline = due         # a replayed scan must end before it
            prune = False
        else:
            chain.chain_prune_time = now
            self.ff_dirty = True
        found = None
        found_len = 0
        tree_folio = None
        maxps = self.ksm_max_page_sharing
        ops = self.ops
        for dup in list(chain.hlist):
            ops[OP_CHAIN_DUP] += 1
            folio = self.ksm_get_folio(dup, KSM_GET_FOLIO_NOLOCK)
            if folio is None:
                continue
            dl = dup.rmap_hlist_len
            if found is None or (dl != 0 and dl < maxps and (
                    not (found.rmap_hlist_len != 0 and found.rmap_hlist_len < maxps)
                    or dl > found_len)):
                if found is not None:
                    mem.folio_put(tree_folio)
                found = dup
                found_len = dl
                tree_folio = folio
                if not prune and self.is_page_sharing_candidate(found):
                    break
                continue
            mem.folio_put(folio)
        node = chain
        if found is not None:
            if len(chain.hlist) == 1:
                # only one dup left: the chain collapses back into a regular node
                rb_replace_node(chain, found, root)
                found.head = None
                found.chain = None
                chain.hlist = []
                self.free_stable_node(chain)
                self.ksm_stable_node_chains -= 1
                self.ksm_stable_node_dups -= 1
                node = found
            elif chain.hlist[0] is not found and self.is_page_sharing_candidate(found, 1):
                self.ff_dirty = True
                chain.hlist.remove(found)
                chain.hlist.insert(0, found)
        else:
            self.free_stable_node_chain(chain, root)
        return found, tree_folio, node

    def __stable_node_chain(self, node: StableNode, root: RbRoot, prune: bool):
        """Returns (dup, folio, node) like ``__stable_node_chain(&dup, &node, root, prune)``."""
        if node.rmap_hlist_len != STABLE_NODE_CHAIN:
            return node, self.ksm_get_folio(node, KSM_GET_FOLIO_NOLOCK), node
        return self.stable_node_dup(node, root, prune)

    def stable_tree_search(self, page: int):
        """Find a KSM page with the content of ``page``: folio (with a reference), None,
        or ERR_BUSY."""
        mem = self.mem
        folio = mem.page_folio[page]
        page_node = self.folio_stable_node(folio)
        if page_node is not None and page_node.head is not MIGRATE_NODES:
            mem.folio_get(folio)             # KSM page forked
            return folio
        nid = self.get_kpfn_nid(folio.pfn)
        root = self.root_stable_tree[nid]
        pc = mem.page_content
        content = pc[page]
        ops = self.ops
        while True:                          # again:
            cur = root.rb_node
            restart = False
            while cur is not None:
                dup, tree_folio, node = self.__stable_node_chain(cur, root, True)
                if tree_folio is None:
                    restart = True
                    break
                ops[OP_MEMCMP_STABLE] += 1
                other = pc[dup.kpfn]
                if content.__class__ is int and other.__class__ is int:
                    ret = (content > other) - (content < other)
                else:
                    from samepage.mm.content import memcmp_contents
                    ret = memcmp_contents(content, other)
                mem.folio_put(tree_folio)
                if ret < 0:
                    cur = node.rb_left
                elif ret > 0:
                    cur = node.rb_right
                else:
                    ops[OP_MEMCMP_EQUAL] += 1
                    if page_node is not None:
                        raise NotImplementedError("migrated KSM pages are not modelled")
                    if not self.is_page_sharing_candidate(dup):
                        return None          # every dup is full: go to the unstable tree
                    tree_folio = self.ksm_get_folio(dup, KSM_GET_FOLIO_TRYLOCK)
                    if tree_folio is ERR_BUSY:
                        return ERR_BUSY
                    if tree_folio is None:
                        restart = True
                        break
                    mem.folio_unlock(tree_folio)
                    return tree_folio
            if not restart:
                break
        if page_node is None:
            return None
        raise NotImplementedError("migrated KSM pages are not modelled")

    def stable_tree_insert(self, kfolio):
        mem = self.mem
        kpfn = kfolio.pfn
        nid = self.get_kpfn_nid(kpfn)
        root = self.root_stable_tree[nid]
        content = mem.page_content[kpfn]
        while True:
            parent = None
            is_left = False
            cur = root.rb_node
            need_chain = False
            restart = False
            node = None
            while cur is not None:
                dup, tree_folio, node = self.__stable_node_chain(cur, root, False)
                if tree_folio is None:
                    restart = True
                    break
                self.ops[OP_MEMCMP_STABLE] += 1
                from samepage.mm.content import memcmp_contents
                ret = memcmp_contents(content, mem.page_content[dup.kpfn])
                mem.folio_put(tree_folio)
                parent = node
                if ret < 0:
                    cur = node.rb_left
                    is_left = True
                elif ret > 0:
                    cur = node.rb_right
                    is_left = False
                else:
                    self.ops[OP_MEMCMP_EQUAL] += 1
                    need_chain = True
                    break
            if not restart:
                break
        fs = self.mem.failslab
        if fs is not None and fs.should_fail("stable_node"):
            self.ff_dirty = True
            return None                                  # alloc_stable_node failed
        self.ops[OP_STABLE_NODE_NEW] += 1
        new = StableNode(kpfn, nid, RmapList(self.rmap_table))
        if not need_chain:
            rb_link_node(new, parent, is_left, root)
            rb_insert_color(new, root)
        else:
            if node.rmap_hlist_len != STABLE_NODE_CHAIN:
                node = self.alloc_stable_node_chain(node, root)
                if node is None:
                    self.free_stable_node(new)
                    self.ff_dirty = True
                    return None
            self.stable_node_chain_add_dup(new, node)
        self.folio_set_stable_node(kfolio, new)
        return new

    def stable_tree_append(self, item: RmapItem, node: StableNode, bypass: bool) -> None:
        assert node.rmap_hlist_len >= 0
        node.rmap_hlist_len += 1
        item.head = node
        item.address |= STABLE_FLAG
        had = bool(node.hlist)
        node.hlist.append(item)
        if had:
            self.ksm_pages_sharing += 1
        else:
            self.ksm_pages_shared += 1
        item.mm.ksm_merging_pages += 1

    # ------------------------------------------------------------------------------------
    # rmap_items
    def remove_rmap_item_from_tree(self, item: RmapItem) -> None:
        address = item.address
        if address & STABLE_FLAG:
            node = item.head
            folio = self.ksm_get_folio(node, KSM_GET_FOLIO_LOCK)
            if folio is None:
                return                       # stale node: its removal cleaned this item
            node.hlist.remove(item)
            self.mem.folio_unlock(folio)
            self.mem.folio_put(folio)
            if node.hlist:
                self.ksm_pages_sharing -= 1
            else:
                self.ksm_pages_shared -= 1
            item.mm.ksm_merging_pages -= 1
            node.rmap_hlist_len -= 1
            item.anon_vma = None
            item.head = None
            item.address = address & PAGE_MASK
        elif address & UNSTABLE_FLAG:
            age = (self.ksm_scan.seqnr - address) & 0xFF
            if age > 1:
                raise AssertionError(f"BUG: unstable {item!r} of age {age}")
            if age == 0:
                rb_erase(item, self.root_unstable_tree[item.nid])
            self.ksm_pages_unshared -= 1
            item.address = address & PAGE_MASK

    def alloc_rmap_item(self, mm: MM, address: int) -> RmapItem:
        """A zeroed rmap_item for (mm, address): a row of ``rmap_table``."""
        return RmapItem(self.rmap_table, self.rmap_table.alloc(mm, address))

    def free_rmap_item(self, item: RmapItem) -> None:
        self.ops[OP_RMAP_FREE] += 1
        self.ksm_rmap_items -= 1
        item.mm.ksm_rmap_items -= 1
        item.mm = None
        if item == self.ff_reinsert:         # its row may be reused: forget the handle
            self.ff_reinsert = None
        self.rmap_table.free(item.row)

    def remove_trailing_rmap_items(self, slot: MmSlot, index: int) -> None:
        items = slot.rmap_list
        if index >= len(items):
            return
        tail = items[index:]
        del items[index:]
        for item in tail:
            self.remove_rmap_item_from_tree(item)
            self.free_rmap_item(item)

    # ------------------------------------------------------------------------------------
    # the scan
    @staticmethod
    def skip_age(age: int) -> int:
        if age <= 3:
            return 1
        if age <= 5:
            return 2
        if age <= 8:
            return 4
        return 8

    def should_skip_rmap_item(self, folio, item: RmapItem) -> bool:
        if not self.ksm_smart_scan:
            return False
        if folio.flags & PG_KSM:
            return False
        self.ff_dirty = True                 # age or remaining_skips moves
        age = item.age
        if age != 255:
            item.age = age + 1
        if age < 3:
            return False
        if not item.remaining_skips:
            item.remaining_skips = self.skip_age(age)
            return False
        self.ksm_pages_skipped += 1
        item.remaining_skips -= 1
        self.remove_rmap_item_from_tree(item)
        return True

    def scan_get_next_rmap_item(self):
        """Returns (rmap_item, page) with a reference on the page's folio, or None."""
        if not self.mm_list:
            return None
        scan = self.ksm_scan
        mem = self.mem
        slot = scan.mm_slot
        if slot is None:
            self.ops[OP_SCAN_START] += 1
            self.advisor_start_scan()
            mem.lru_add_drain_all()
            if self.preempt is not None:
                self.preempt("scan:start")        # lru_add_drain_all sleeps; mm_list re-checked
            if not self.ksm_merge_across_nodes:
                for node in list(self.migrate_nodes):
                    f = self.ksm_get_folio(node, KSM_GET_FOLIO_NOLOCK)
                    if f is not None:
                        mem.folio_put(f)
            for nid in range(self.ksm_nr_node_ids):
                self.root_unstable_tree[nid].rb_node = None
            if not self.mm_list:
                return None
            slot = scan.mm_slot = self.mm_list[0]
            scan.address = 0
            scan.rmap_index = 0
        pf = mem.page_folio
        ops = self.ops
        while True:                                   # next_mm:
            mm = slot.mm
            if mem.sanitizer is not None:
                mem.sanitizer.mm_access(mm, "scan_get_next_rmap_item")
            if self.preempt is not None and not scan.address:
                self.preempt("scan:next-mm")          # a new mm, before mmap_read_lock(mm)
            exiting = mm.mm_users == 0
            if not exiting:
                vmas = mm.vmas
                vi = mm.vma_index(scan.address)       # vma_iter_init(&vmi, mm, address)
                while vi < len(vmas):
                    vma = vmas[vi]
                    vi += 1
                    if not vma.flags & VM_MERGEABLE:
                        continue
                    if scan.address < vma.start:
                        scan.address = vma.start
                    if vma.anon_vma is None:
                        scan.address = vma.end
                        continue
                    vstart = vma.start
                    pte = vma.pte
                    ptef = vma.ptef
                    n = len(pte)
                    i = (scan.address - vstart) >> PAGE_SHIFT
                    while i < n:
                        pfn = pte[i]
                        if pfn >= 0 and not ptef[i] & PTE_SPECIAL:
                            folio = pf[pfn]
                            if folio.flags & PG_ANON:
                                addr = vstart + (i << PAGE_SHIFT)
                                folio.refcount += 1          # folio_get
                                item = self.get_next_rmap_item(slot, addr)
                                if item is None:     # alloc_rmap_item failed
                                    mem.folio_put(folio)
                                    scan.address = addr
                                    return None
                                if self.ksm_smart_scan and self.should_skip_rmap_item(folio, item):
                                    ops[OP_SKIP] += 1
                                    mem.folio_put(folio)
                                    i += 1
                                    continue
                                scan.address = addr + PAGE_SIZE
                                if ptef[i] & PTE_PMD:
                                    ops[OP_VISIT_PMD] += 1   # a PMD mapping: a shorter walk
                                return item, pfn
                        else:
                            ops[OP_NO_PAGE] += 1             # folio_walk_start found none
                        i += 1
                    scan.address = vma.end
            if exiting:
                scan.address = 0
                scan.rmap_index = 0
            self.remove_trailing_rmap_items(slot, scan.rmap_index)
            nxt = self._slot_next(slot)
            scan.mm_slot = nxt
            if scan.address == 0:
                # no VM_MERGEABLE VMA (or the mm is exiting): forget this mm
                self.ff_dirty = True
                self._slot_del(slot)
                mm.flags &= ~MMF_VM_MERGEABLE        # 6.18 keeps MMF_VM_MERGE_ANY
            if nxt is not None:
                slot = nxt
                scan.address = 0
                scan.rmap_index = 0
                continue
            self.advisor_stop_scan()
            scan.seqnr += 1
            return None

    def get_next_rmap_item(self, slot: MmSlot, addr: int) -> RmapItem:
        scan = self.ksm_scan
        items = slot.rmap_list
        idx = scan.rmap_index
        n = len(items)
        # the common case, the next item is this page's, skips the search for stale items
        if idx < n and items[idx].address & PAGE_MASK != addr:
            j = idx
            while j < n:
                a = items[j].address
                if a & PAGE_MASK == addr or a > addr:
                    break
                j += 1
            if j > idx:
                # items whose pages are gone: free them
                stale = items[idx:j]
                del items[idx:j]
                for it in stale:
                    self.remove_rmap_item_from_tree(it)
                    self.free_rmap_item(it)
        if idx < len(items) and items[idx].address & PAGE_MASK == addr:
            scan.rmap_index = idx + 1
            return items[idx]
        fs = self.mem.failslab
        if fs is not None and fs.should_fail("rmap_item"):
            self.ff_dirty = True
            return None                          # alloc_rmap_item: -ENOMEM
        item = self.alloc_rmap_item(slot.mm, addr)
        slot.mm.ksm_rmap_items += 1
        self.ksm_rmap_items += 1
        self.ops[OP_RMAP_ALLOC] += 1
        if idx == len(items):
            items.append(item)
        else:
            items.insert(idx, item)
        scan.rmap_index = idx + 1
        return item

    def ksm_do_scan(self, scan_npages: int) -> int:
        """One batch.  Returns the number of pages processed."""
        done = 0
        ops = self.ops
        ops[OP_BATCH] += 1
        mem = self.mem
        next_item = self.scan_get_next_rmap_item
        cmp_and_merge_page = self.cmp_and_merge_page
        while scan_npages > 0:
            scan_npages -= 1
            got = next_item()
            if got is None:
                break
            item, page = got
            ops[OP_VISIT] += 1
            cmp_and_merge_page(page, item)
            mem.folio_put(mem.page_folio[page])
            self.ksm_pages_scanned += 1
            done += 1
        return done

    def ksmd_should_run(self) -> bool:
        return bool(self.ksm_run & KSM_RUN_MERGE) and bool(self.mm_list)

    # ------------------------------------------------------------------------------------
    # merging
    def find_mergeable_vma(self, mm: MM, addr: int) -> Vma | None:
        if mm.mm_users == 0:
            return None
        vma = mm.find_vma(addr)      # vma_lookup; the rmap_item flag bits are below the page
        if vma is None or not vma.flags & VM_MERGEABLE or vma.anon_vma is None:
            return None
        return vma

    def get_mergeable_page(self, item: RmapItem) -> int | None:
        """The page mapped at ``item``'s address, with a reference, or None."""
        addr = item.address
        vma = self.find_mergeable_vma(item.mm, addr)
        if vma is None:
            return None
        i = (addr - vma.start) >> PAGE_SHIFT     # the flag bits shift out
        pfn = vma.pte[i]
        if pfn < 0 or vma.ptef[i] & PTE_SPECIAL:
            return None
        folio = self.mem.page_folio[pfn]
        if not folio.flags & PG_ANON:
            return None
        folio.refcount += 1
        return pfn

    def write_protect_page(self, vma: Vma, folio):
        """Make the PTE mapping ``folio`` in ``vma`` clean and read-only; returns the
        resulting PTE bits, or None on failure."""
        mem = self.mem
        if mem.sanitizer is not None:
            mem.sanitizer.vma_access(self, vma, "write_protect_page")
        if folio.order:
            self._fail("write_protect_page: large folio")
            return None
        # page_address_in_vma: the folio's index places it in this VMA
        if folio.anon_vma is None or vma.anon_vma is None or \
                _anon_root(folio.anon_vma) is not _anon_root(vma.anon_vma):
            self._fail("write_protect_page: page not in this vma")
            return None
        i = mem.page_index[folio.pfn] - vma.pgoff
        if not 0 <= i < vma.nr_pages or vma.pte[i] != folio.pfn:
            self._fail("write_protect_page: page not mapped at its address")
            return None
        f = vma.ptef[i]
        if f & PTE_PMD:
            self._fail("write_protect_page: PMD mapping")
            return None
        anon_exclusive = mem.page_flags[folio.pfn] & PAGE_ANON_EXCLUSIVE
        if f & (PTE_WRITE | PTE_DIRTY) or anon_exclusive:
            swapped = 1 if folio.flags & PG_SWAPCACHE else 0
            if folio.mapcount + 1 + swapped != folio.refcount:
                self._fail("write_protect_page: refcount != mapcount + 1")
                return None
            if anon_exclusive:
                if folio.pincount:
                    self._fail("write_protect_page: pinned anon-exclusive page")
                    return None
                mem.page_flags[folio.pfn] &= ~PAGE_ANON_EXCLUSIVE
            if f & PTE_DIRTY:
                folio.flags |= PG_DIRTY
            f &= ~(PTE_DIRTY | PTE_WRITE)
            vma.ptef[i] = f
        return f

    def replace_page(self, vma: Vma, page: int, kpage: int, orig_pte: int) -> int:
        mem = self.mem
        if mem.sanitizer is not None:
            mem.sanitizer.vma_access(self, vma, "replace_page")
        mm = vma.mm
        folio = mem.page_folio[page]
        if folio is None and mem.sanitizer is not None:
            mem.sanitizer.freed_page_used(page, "replace_page")
        i = mem.page_index[folio.pfn] - vma.pgoff
        if vma.ptef[i] & PTE_PMD:
            self._fail("replace_page: PMD mapping")
            return EFAULT
        if vma.pte[i] != page or vma.ptef[i] != orig_pte:
            self._fail("replace_page: PTE changed")
            return EFAULT
        if kpage != ZERO_PFN:
            kfolio = mem.page_folio[kpage]
            if mem.sanitizer is not None:
                mem.sanitizer.check_map(kpage, kfolio, "replace_page: map kpage")
            mem.folio_get(kfolio)
            kfolio.mapcount += 1               # folio_add_anon_rmap_pte
            vma.pte[i] = kpage
            vma.ptef[i] = 0                    # mk_pte(kpage, vm_page_prot): read-only
        else:
            vma.pte[i] = ZERO_PFN
            vma.ptef[i] = PTE_SPECIAL | PTE_DIRTY
            self.ksm_zero_pages += 1           # ksm_map_zero_page
            mm.ksm_zero_pages += 1
            mm.anon_rss -= 1
        folio.mapcount -= 1                    # folio_remove_rmap_pte
        if folio.page_mapcount is not None:
            folio.page_mapcount[page - folio.pfn] -= 1
        if kpage != ZERO_PFN:
            pass                               # anon rss unchanged: one anon page for another
        mem.folio_put(folio)
        return 0

    def try_to_merge_one_page(self, vma: Vma, page: int, kpage: int | None) -> int:
        mem = self.mem
        self.ops[OP_MERGE_ONE] += 1
        folio = mem.page_folio[page]
        if folio is None and mem.sanitizer is not None:
            mem.sanitizer.freed_page_used(page, "try_to_merge_one_page")
        if page == kpage:                      # KSM page forked
            return 0
        if not folio.flags & PG_ANON:
            self._fail("try_to_merge_one_page: not anonymous")
            return EFAULT
        if self.preempt is not None:
            self.preempt("merge_one:before-lock")      # reference taken, not yet locked
        if not mem.folio_trylock(folio):
            self._fail("try_to_merge_one_page: folio locked")
            return EFAULT
        err = EFAULT
        if folio.order:
            if self.split_huge_page(page):
                self._fail("try_to_merge_one_page: split_huge_page failed")
                mem.folio_unlock(folio)
                return EFAULT
            folio = mem.page_folio[page]
            if self.preempt is not None:
                self.preempt("merge_one:after-split")
        orig_pte = self.write_protect_page(vma, folio)
        if orig_pte is not None:
            if self.preempt is not None:
                self.preempt("merge_one:after-write-protect")   # before replace_page
            if kpage is None:
                self.folio_set_stable_node(folio, None)
                folio.flags |= PG_DIRTY
                err = 0
            elif self.pages_identical(page, kpage):
                err = self.replace_page(vma, page, kpage, orig_pte)
            else:
                self._fail("try_to_merge_one_page: contents differ")
        mem.folio_unlock(folio)
        return err

    def split_huge_page(self, page: int) -> int:
        """Split the large folio of ``page`` (mm/huge_memory.c); see samepage.mm.huge."""
        self.ops[OP_SPLIT] += 1
        split = getattr(self.mem, "split_huge_page", None)
        if split is None:
            return -errno.EAGAIN
        return split(page)

    def try_to_merge_with_zero_page(self, item: RmapItem, page: int) -> int:
        if self.ksm_use_zero_pages and item.oldchecksum == ZERO_CHECKSUM:
            if self.preempt is not None:
                self.preempt("zero_merge:before-lock")
            vma = self.find_mergeable_vma(item.mm, item.address)
            if vma is None:
                return 0
            self.mmap_read_locked = item.mm
            try:
                err = self.try_to_merge_one_page(vma, page, ZERO_PFN)
            finally:
                self.mmap_read_locked = None
            if not err:
                self.ops[OP_MERGE_ZERO] += 1
            return err
        return EFAULT

    def try_to_merge_with_ksm_page(self, item: RmapItem, page: int, kpage: int | None) -> int:
        scanned = self.current_item
        self.current_item = item            # failures below are about this item's page
        vma = self.find_mergeable_vma(item.mm, item.address)
        if vma is None:
            self._fail("try_to_merge_with_ksm_page: no mergeable vma")
            self.current_item = scanned
            return EFAULT
        self.mmap_read_locked = item.mm
        try:
            err = self.try_to_merge_one_page(vma, page, kpage)
        finally:
            self.mmap_read_locked = None
        self.current_item = scanned
        if err:
            return err
        self.remove_rmap_item_from_tree(item)
        item.anon_vma = vma.anon_vma
        return 0

    def try_to_merge_two_pages(self, item: RmapItem, page: int, tree_item: RmapItem,
                               tree_page: int):
        err = self.try_to_merge_with_ksm_page(item, page, None)
        if not err:
            if self.preempt is not None:
                self.preempt("merge_two:between-steps")
            err = self.try_to_merge_with_ksm_page(tree_item, tree_page, page)
            if err:
                self.break_cow(item)
        return None if err else self.mem.page_folio[page]

    def unstable_tree_search_insert(self, item: RmapItem, page: int):
        """Returns (tree_item, tree_page) with a reference on tree_page, or None after
        inserting ``item`` (or giving up)."""
        mem = self.mem
        nid = self.get_kpfn_nid(page)
        root = self.root_unstable_tree[nid]
        pc = mem.page_content
        content = pc[page]
        ops = self.ops
        parent = None
        is_left = False
        if self.preempt is not None:
            self.preempt("unstable_search:before")
        # bound once per search, not per tree level (a --patch replaces the class's
        # method before the search starts, so it is still the one called)
        get_mergeable_page = self.get_mergeable_page
        folio_put = mem.folio_put
        pf = mem.page_folio
        token = content.__class__ is int
        cur = root.rb_node
        while cur is not None:
            tree_page = get_mergeable_page(cur)
            if tree_page is None:
                return None                  # stale node on the path: nothing inserted
            if tree_page == page:
                folio_put(pf[tree_page])
                return None
            ops[OP_MEMCMP_UNSTABLE] += 1
            other = pc[tree_page]
            if token and other.__class__ is int:
                ret = (content > other) - (content < other)
            else:
                from samepage.mm.content import memcmp_contents
                ret = memcmp_contents(content, other)
            parent = cur
            if ret < 0:
                folio_put(pf[tree_page])
                cur = cur.rb_left
                is_left = True
            elif ret > 0:
                folio_put(pf[tree_page])
                cur = cur.rb_right
                is_left = False
            elif not self.ksm_merge_across_nodes and mem.pfn_to_nid(tree_page) != nid:
                mem.folio_put(mem.page_folio[tree_page])
                return None
            else:
                ops[OP_MEMCMP_EQUAL] += 1
                if self.preempt is not None:
                    self.preempt("unstable_search:after-found")
                return cur, tree_page
        if item == self.ff_reinsert:         # back where it was in the last scan's tree
            self.ff_reinserted += 1
            self.ff_reinsert = None
        else:
            self.ff_dirty = True
        item.address |= UNSTABLE_FLAG | (self.ksm_scan.seqnr & SEQNR_MASK)
        item.nid = nid
        rb_link_node(item, parent, is_left, root)
        rb_insert_color(item, root)
        ops[OP_UNSTABLE_INSERT] += 1
        self.ksm_pages_unshared += 1
        return None

    def cmp_and_merge_page(self, page: int, item: RmapItem) -> None:
        mem = self.mem
        self.current_item = item
        folio = mem.page_folio[page]
        bypass = False
        stable_node = self.folio_stable_node(folio)
        if stable_node is not None:
            # item.head (read through the rb-node union it shares, for speed)
            if stable_node.head is not MIGRATE_NODES and item.rb_parent is stable_node:
                return                                   # steady state
            if not self.is_page_sharing_candidate(stable_node):
                bypass = True
        else:
            a = item.address
            if a & (STABLE_FLAG | UNSTABLE_FLAG):
                self.remove_rmap_item_from_tree(item)
                if a & UNSTABLE_FLAG:
                    self.ff_removed += 1
                    self.ff_reinsert = item
            checksum = self.calc_checksum(page)
            if item.oldchecksum != checksum:
                item.oldchecksum = checksum
                self.ff_dirty = True
                return                                   # volatile
            if not self.try_to_merge_with_zero_page(item, page):
                return
        kfolio = self.stable_tree_search(page)
        if kfolio is not None and kfolio is not ERR_BUSY and kfolio.pfn == page \
                and item.head is stable_node:
            mem.folio_put(kfolio)
            return
        self.remove_rmap_item_from_tree(item)
        if kfolio is not None:
            if kfolio is ERR_BUSY:
                self._fail("stable_tree_search: KSM page busy")
                return
            err = self.try_to_merge_with_ksm_page(item, page, kfolio.pfn)
            if not err:
                self.ops[OP_MERGE_KSM] += 1
                mem.folio_lock(kfolio)
                self.stable_tree_append(item, self.folio_stable_node(kfolio), bypass)
                mem.folio_unlock(kfolio)
            mem.folio_put(kfolio)
            return
        self.unstable_tree_merge(item, page)

    def unstable_tree_merge(self, item: RmapItem, page: int) -> None:
        """Part D of cmp_and_merge_page: the unstable tree, with the configured same-folio
        strategy (samepage.ksm.same_folio)."""
        self.same_folio_strategy(self, item, page)

    def set_same_folio_strategy(self, name: str) -> None:
        from .same_folio import STRATEGIES
        if name not in STRATEGIES:
            raise ValueError(f"unknown same-folio strategy {name!r} "
                             f"(one of {', '.join(STRATEGIES)})")
        self.same_folio = name
        self.same_folio_strategy = STRATEGIES[name]

    def stable_tree_insert_pair(self, kfolio, tree_item: RmapItem, item: RmapItem) -> None:
        """D2: the two pages now share ``kfolio``: give it a stable node and hang both
        rmap_items on it (undo both merges if no node could be made)."""
        mem = self.mem
        mem.folio_lock(kfolio)
        snode = self.stable_tree_insert(kfolio)
        if snode is not None:
            self.ops[OP_MERGE_PAIR] += 1
            self.stable_tree_append(tree_item, snode, False)
            self.stable_tree_append(item, snode, False)
        mem.folio_unlock(kfolio)
        if snode is None:
            self.break_cow(tree_item)
            self.break_cow(item)

    # ------------------------------------------------------------------------------------
    # run = 2 and the sysfs-driven removal of stable nodes
    def remove_stable_node(self, node: StableNode) -> int:
        mem = self.mem
        folio = self.ksm_get_folio(node, KSM_GET_FOLIO_LOCK)
        if folio is None:
            return 0
        err = -errno.EBUSY
        if folio.mapcount == 0:
            self.folio_set_stable_node(folio, None)
            self.remove_node_from_stable_tree(node)
            err = 0
        mem.folio_unlock(folio)
        mem.folio_put(folio)
        return err

    def remove_stable_node_chain(self, node: StableNode, root: RbRoot) -> bool:
        if node.rmap_hlist_len != STABLE_NODE_CHAIN:
            return bool(self.remove_stable_node(node))
        for dup in list(node.hlist):
            if self.remove_stable_node(dup):
                return True
        self.free_stable_node_chain(node, root)
        return False

    def remove_all_stable_nodes(self) -> int:
        err = 0
        for nid in range(self.ksm_nr_node_ids):
            root = self.root_stable_tree[nid]
            while root.rb_node is not None:
                if self.remove_stable_node_chain(root.rb_node, root):
                    err = -errno.EBUSY
                    break
        for node in list(self.migrate_nodes):
            if self.remove_stable_node(node):
                err = -errno.EBUSY
        return err

    def unmerge_and_remove_all_rmap_items(self) -> int:
        scan = self.ksm_scan
        scan.mm_slot = self.mm_list[0] if self.mm_list else None
        while scan.mm_slot is not None:
            slot = scan.mm_slot
            mm = slot.mm
            if self.preempt is not None:
                self.preempt("unmerge:next-mm")       # before mmap_read_lock(mm)
            held = self.mmap_read_locked
            self.mmap_read_locked = mm
            try:
                if mm.mm_users != 0:
                    for vma in list(mm.vmas):
                        if not vma.flags & VM_MERGEABLE or vma.anon_vma is None:
                            continue
                        err = self.break_ksm(vma, vma.start, vma.end)
                        if err:
                            scan.mm_slot = None
                            return err
                self.remove_trailing_rmap_items(slot, 0)
            finally:
                self.mmap_read_locked = held
            scan.mm_slot = self._slot_next(slot)
            if mm.mm_users == 0:
                self._slot_del(slot)
                mm.flags &= ~(MMF_VM_MERGEABLE | MMF_VM_MERGE_ANY)
        self.remove_all_stable_nodes()
        scan.seqnr = 0
        scan.address = 0
        scan.rmap_index = 0
        return 0

    # ------------------------------------------------------------------------------------
    # the scan-time advisor (advisor_start_scan / advisor_stop_scan / scan_time_advisor)
    def advisor_start_scan(self) -> None:
        if self.ff_recorder is not None:
            self.ff_recorder.start_ops = list(self.ops)
        if self.ksm_advisor == "scan-time":
            self.advisor_ctx["start_scan"] = self.clock_ns + int(self.cpu_ns_in_batch())

    def cpu_ns_in_batch(self) -> float:
        return self.cpu_ns - getattr(self, "_batch_cpu_start", self.cpu_ns)

    def advisor_stop_scan(self) -> None:
        if self.ksm_advisor == "scan-time":
            self.scan_time_advisor()

    def scan_time_advisor(self) -> None:
        ctx = self.advisor_ctx
        now = self.clock_ns + int(self.cpu_ns_in_batch())
        scan_time = max(1, (now - ctx["start_scan"]) // 1_000_000_000)
        cpu_time = int(self.cpu_ns)
        cpu_ms = (cpu_time - ctx["cpu_time"]) // 1_000_000
        cpu_percent = max(1, (cpu_ms * 100) // (scan_time * 1000))
        last = ctx["scan_time"] or scan_time
        factor = max(1, self.ksm_advisor_target_scan_time * 100 // scan_time)
        change = max(1, scan_time * 100 // last)
        change = ((100 - 30) * ctx["change"] + 30 * change) // 100
        pages = self.ksm_thread_pages_to_scan * 100 // factor
        pages = pages * change // 100
        per_page_cost = max(1, self.ksm_thread_pages_to_scan // cpu_percent)
        pages = min(pages, per_page_cost * self.ksm_advisor_max_cpu)
        pages = max(pages, per_page_cost * 10)
        pages = min(pages, self.ksm_advisor_max_pages_to_scan)
        ctx["change"] = change
        ctx["scan_time"] = scan_time
        ctx["cpu_time"] = cpu_time
        self.ksm_thread_pages_to_scan = pages

    # ------------------------------------------------------------------------------------
    # statistics
    @property
    def pages_volatile(self) -> int:
        v = self.ksm_rmap_items - self.ksm_pages_shared - self.ksm_pages_sharing \
            - self.ksm_pages_unshared
        return v if v > 0 else 0

    @property
    def general_profit(self) -> int:
        return (self.ksm_pages_sharing + self.ksm_zero_pages) * PAGE_SIZE \
            - self.ksm_rmap_items * RMAP_ITEM_SIZE

    def counters(self) -> dict:
        """The 11 counters of a trace record, by their sysfs names."""
        return {
            "pages_shared": self.ksm_pages_shared,
            "pages_sharing": self.ksm_pages_sharing,
            "pages_unshared": self.ksm_pages_unshared,
            "pages_volatile": self.pages_volatile,
            "full_scans": self.ksm_scan.seqnr,
            "pages_scanned": self.ksm_pages_scanned,
            "pages_skipped": self.ksm_pages_skipped,
            "stable_node_chains": self.ksm_stable_node_chains,
            "stable_node_dups": self.ksm_stable_node_dups,
            "ksm_zero_pages": self.ksm_zero_pages,
            "general_profit": self.general_profit,
        }

    @staticmethod
    def ksm_process_profit(mm: MM) -> int:
        return (mm.ksm_merging_pages + mm.ksm_zero_pages) * PAGE_SIZE \
            - mm.ksm_rmap_items * RMAP_ITEM_SIZE

    @staticmethod
    def ksm_process_mergeable(mm: MM) -> bool:
        return any(v.flags & VM_MERGEABLE for v in mm.vmas)

    def ksm_stat(self, mm: MM) -> dict:
        """``/proc/PID/ksm_stat`` as a dict (booleans for the yes/no lines)."""
        return {
            "ksm_rmap_items": mm.ksm_rmap_items,
            "ksm_zero_pages": mm.ksm_zero_pages,
            "ksm_merging_pages": mm.ksm_merging_pages,
            "ksm_process_profit": self.ksm_process_profit(mm),
            "ksm_merge_any": bool(mm.flags & MMF_VM_MERGE_ANY),
            "ksm_mergeable": self.ksm_process_mergeable(mm),
        }
