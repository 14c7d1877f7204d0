"""A whole-state invariant checker for the KSM model (spec §8.1 and more).

``check_invariants(machine)`` walks the model's state -- ``machine.ksm`` (counters, mm list,
rmap_lists, stable tree with chains/dups, migrate list, unstable tree), ``machine.mem``
(folios, LRU add batch) and every mm's page tables -- and raises ``AssertionError`` with a
description of the first broken invariant.  It must be called *between* ksmd batches (and
outside any system call): at those moments ksmd holds no reference and no lock.

Checked:

* counters: none negative; ``ksm_rmap_items == Σ mm.ksm_rmap_items == Σ len(rmap_list)``;
  ``pages_shared + pages_sharing == #STABLE items == Σ mm.ksm_merging_pages``;
  ``pages_unshared == #UNSTABLE items``; ``pages_shared == #non-empty nodes/dups``;
  ``pages_sharing == Σ (len - 1)``; ``stable_node_chains``/``stable_node_dups`` match the
  tree; ``ksm_zero_pages == Σ mm.ksm_zero_pages == #KSM zero PTEs`` of live mms;
  ``pages_volatile`` and ``general_profit`` formulas; ``full_scans == seqnr``.
* mm list: slots and hash agree, every listed mm is MMF_VM_MERGEABLE and every
  MMF_VM_MERGEABLE mm is listed; the cursor is a listed slot (or the head) and its
  rmap index is within the list; rmap_lists are sorted by address with unique addresses
  and belong to their mm; per-mm counters match the slot.
* rmap_items: STABLE xor UNSTABLE xor none; a STABLE item is on its head node's hlist
  exactly once and holds an anon_vma; an UNSTABLE item is of this or the previous scan
  (age <= 1); while a scan is in progress every UNSTABLE item of the current scan is in the
  unstable tree of its nid, exactly once, and the tree holds nothing else; between full
  scans every UNSTABLE item is of the previous scan and still linked in the old tree.
* stable tree: rb-tree validity (with content keys when no node is stale; otherwise the
  live nodes' contents must still be strictly increasing in order); regular nodes and dups
  are not chains/freed, ``rmap_hlist_len == len(hlist)``, dups point back to their chain,
  chains hold only dups with equal content; no live KSM folio has an unreachable node;
  every live node's folio points back to it (a KSM folio without a node may stay mapped
  where it was COW-shared, see below).
* memory: every mapped pfn belongs to a live folio; for every live folio
  ``mapcount == #mappings`` and ``refcount == mapcount + LRU-batch references + pins
  (+ swapcache) + references the caller says it holds`` (ksmd holds nothing between
  batches), no folio is locked unless the caller holds its lock; KSM folios are order 0 and
  mapped read-only; a KSM folio without a stable node is unmapped; per-mm anon RSS (in pages)
  matches the page tables.
* large folios: a PMD mapping is 512 aligned entries of one VMA, all with ``PTE_PMD`` and
  identical bits, mapping subpages 0..511 of an order-9 folio in order, in a 2 MiB block
  without a PTE table; it counts as ONE mapping (mapcount 1, one reference) but 512 pages of
  RSS.  A PTE-mapped large folio counts one mapping per PTE, and ``page_mapcount[k]`` is the
  number of PTEs mapping subpage k; ``mapcount == Σ page_mapcount + #PMD mappings``.
  ``page_folio`` of every frame of a live folio is that folio, and no frame points at a freed
  folio (a split large folio is PG_FREED and unreachable).  Every mapped anonymous non-KSM
  page is found by the rmap walk: its page index is the slot's linear index and its anon_vma
  reaches the VMA.
"""

from __future__ import annotations

from collections import Counter

from samepage.ksm.rbtree import rb_inorder, rb_validate
from samepage.ksm.structs import (MIGRATE_NODES, PAGE_MASK, RMAP_ITEM_SIZE, SEQNR_MASK,
                                  STABLE_FLAG, STABLE_NODE_CHAIN, STABLE_NODE_DUP_HEAD,
                                  UNSTABLE_FLAG, StableNode)
from samepage.mm.content import PAGE_SHIFT, PAGE_SIZE, content_bytes
from samepage.mm.folio import (KSM_NO_NODE, PG_ANON, PG_FREED, PG_KSM, PG_LOCKED,
                               PG_SWAPCACHE, ZERO_PFN)
from samepage.mm.huge import HPAGE_PMD_NR, HPAGE_PMD_ORDER
from samepage.mm.mm import MMF_VM_MERGEABLE, PTE_DIRTY, PTE_PMD, PTE_SPECIAL, PTE_WRITE

COUNTER_ATTRS = ("ksm_pages_scanned", "ksm_pages_shared", "ksm_pages_sharing",
                 "ksm_pages_unshared", "ksm_rmap_items", "ksm_stable_node_chains",
                 "ksm_stable_node_dups", "ksm_pages_skipped", "ksm_zero_pages")


class InvariantError(AssertionError):
    pass


def _fail(msg: str) -> None:
    raise InvariantError(msg)


def _check(cond: bool, msg: str) -> None:
    if not cond:
        _fail(msg)


def _key(mem, node: StableNode) -> bytes:
    return content_bytes(mem.page_content[node.kpfn])


def _node_live(mem, node: StableNode) -> bool:
    """The node's keyhole reference is valid: its KSM page still points at it."""
    folio = mem.page_folio[node.kpfn] if 0 <= node.kpfn < len(mem.page_folio) else None
    return (folio is not None and not folio.flags & PG_FREED and folio.flags & PG_KSM
            and folio.mapping is node)


def all_mms(machine) -> list:
    """Every mm the checker can see: processes, registered slots, and owners of items."""
    seen: dict[int, object] = {}
    for p in machine.processes.values():
        seen.setdefault(id(p.mm), p.mm)
    for slot in machine.ksm.mm_list:
        seen.setdefault(id(slot.mm), slot.mm)
    return list(seen.values())


def check_invariants(machine, *, held_refs: dict | None = None, held_locks=()) -> None:
    """Raise InvariantError on the first broken invariant.  ``held_refs`` maps folios to
    references the caller itself holds (transient references, e.g. a test simulating
    another thread); ``held_locks`` lists folios whose lock the caller holds."""
    ksm = machine.ksm
    mem = machine.mem
    scan = ksm.ksm_scan
    mms = all_mms(machine)

    # ---------------------------------------------------------------- counters >= 0
    for name in COUNTER_ATTRS:
        _check(getattr(ksm, name) >= 0, f"counter {name} = {getattr(ksm, name)} < 0")
    _check(scan.seqnr >= 0, f"seqnr {scan.seqnr} < 0")
    for mm in mms:
        for name in ("ksm_merging_pages", "ksm_rmap_items", "ksm_zero_pages", "anon_rss"):
            _check(getattr(mm, name) >= 0, f"{mm!r}.{name} = {getattr(mm, name)} < 0")

    # ---------------------------------------------------------------- mm list
    _check(len(ksm.mm_slots_hash) == len(ksm.mm_list),
           f"mm_slots_hash has {len(ksm.mm_slots_hash)} slots, mm_list {len(ksm.mm_list)}")
    listed = set()
    for slot in ksm.mm_list:
        _check(id(slot.mm) not in listed, f"{slot.mm!r} listed twice")
        listed.add(id(slot.mm))
        _check(ksm.mm_slots_hash.get(id(slot.mm)) is slot, f"{slot!r} not hashed")
        _check(bool(slot.mm.flags & MMF_VM_MERGEABLE),
               f"listed {slot.mm!r} lacks MMF_VM_MERGEABLE")
    for mm in mms:
        if mm.flags & MMF_VM_MERGEABLE:
            _check(id(mm) in listed, f"{mm!r} is MMF_VM_MERGEABLE but has no mm slot")
    if scan.mm_slot is not None:
        _check(any(s is scan.mm_slot for s in ksm.mm_list),
               f"cursor slot {scan.mm_slot!r} is not on the mm list")
        _check(0 <= scan.rmap_index <= len(scan.mm_slot.rmap_list),
               f"cursor rmap_index {scan.rmap_index} outside {scan.mm_slot!r}")

    # ---------------------------------------------------------------- rmap_items
    all_items = []
    n_stable = n_unstable = 0
    per_mm_items: Counter = Counter()
    per_mm_stable: Counter = Counter()
    for slot in ksm.mm_list:
        prev = -1
        for it in slot.rmap_list:
            _check(it.mm is slot.mm, f"{it!r} (mm {it.mm!r}) on the list of {slot!r}")
            a = it.address & PAGE_MASK
            _check(a > prev, f"rmap_list of {slot!r} not sorted/unique at {a:#x}")
            prev = a
            st = bool(it.address & STABLE_FLAG)
            un = bool(it.address & UNSTABLE_FLAG)
            _check(not (st and un), f"{it!r} is both STABLE and UNSTABLE")
            if not un:
                _check((it.address & SEQNR_MASK) == 0,
                       f"{it!r} has seqnr bits {it.address & SEQNR_MASK:#x} without UNSTABLE")
            if st:
                n_stable += 1
                per_mm_stable[id(slot.mm)] += 1
                _check(isinstance(it.head, StableNode), f"STABLE {it!r} has head {it.head!r}")
                _check(it.anon_vma is not None, f"STABLE {it!r} holds no anon_vma")
                _check(not it.head.freed, f"STABLE {it!r} points at a freed node")
                _check(sum(1 for x in it.head.hlist if x == it) == 1,
                       f"STABLE {it!r} is not on its node's hlist exactly once")
            # (a non-STABLE item's head is meaningless: in the kernel it shares a union with
            # the rb node, and remove_node_from_stable_tree() leaves it dangling)
            if un:
                n_unstable += 1
                age = (scan.seqnr - it.address) & 0xFF
                _check(age <= 1, f"UNSTABLE {it!r} has age {age} > 1")
                _check(isinstance(it.nid, int) and 0 <= it.nid < len(ksm.root_unstable_tree),
                       f"UNSTABLE {it!r} has nid {it.nid!r}")
            all_items.append(it)
            per_mm_items[id(slot.mm)] += 1

    _check(ksm.ksm_rmap_items == len(all_items),
           f"ksm_rmap_items {ksm.ksm_rmap_items} != {len(all_items)} items on rmap_lists")
    s = sum(mm.ksm_rmap_items for mm in mms)
    _check(ksm.ksm_rmap_items == s, f"ksm_rmap_items {ksm.ksm_rmap_items} != Σ mm {s}")
    s = sum(mm.ksm_merging_pages for mm in mms)
    _check(ksm.ksm_pages_shared + ksm.ksm_pages_sharing == n_stable,
           f"pages_shared {ksm.ksm_pages_shared} + pages_sharing {ksm.ksm_pages_sharing}"
           f" != {n_stable} STABLE items")
    _check(n_stable == s, f"{n_stable} STABLE items != Σ mm.ksm_merging_pages {s}")
    _check(ksm.ksm_pages_unshared == n_unstable,
           f"pages_unshared {ksm.ksm_pages_unshared} != {n_unstable} UNSTABLE items")
    for mm in mms:
        _check(mm.ksm_rmap_items == per_mm_items[id(mm)],
               f"{mm!r}.ksm_rmap_items {mm.ksm_rmap_items} != {per_mm_items[id(mm)]} items")
        _check(mm.ksm_merging_pages == per_mm_stable[id(mm)],
               f"{mm!r}.ksm_merging_pages {mm.ksm_merging_pages} != "
               f"{per_mm_stable[id(mm)]} STABLE items")

    # ---------------------------------------------------------------- stable tree
    reachable: dict[int, StableNode] = {}      # id -> regular node or dup
    n_chains = n_dups = n_nonempty = sharing = 0
    for nid, root in enumerate(ksm.root_stable_tree):
        nodes = list(rb_inorder(root))
        any_stale = False
        for node in nodes:
            _check(not node.freed, f"freed {node!r} in stable tree {nid}")
            if node.rmap_hlist_len == STABLE_NODE_CHAIN:
                n_chains += 1
                _check(node.head is None, f"chain {node!r} has head {node.head!r}")
                contents = set()
                for dup in node.hlist:
                    n_dups += 1
                    _check(isinstance(dup, StableNode) and dup.head is STABLE_NODE_DUP_HEAD
                           and dup.chain is node, f"{dup!r} on {node!r} is not its dup")
                    _check(dup.rmap_hlist_len != STABLE_NODE_CHAIN, f"chain {dup!r} as a dup")
                    _check(id(dup) not in reachable, f"{dup!r} reachable twice")
                    reachable[id(dup)] = dup
                    if _node_live(mem, dup):
                        contents.add(_key(mem, dup))
                    else:
                        any_stale = True
                _check(len(contents) <= 1, f"dups of {node!r} have different contents")
            else:
                _check(node.head is None, f"tree node {node!r} has head {node.head!r}")
                _check(id(node) not in reachable, f"{node!r} reachable twice")
                reachable[id(node)] = node
                if not _node_live(mem, node):
                    any_stale = True
        if not any_stale:
            def key(n, mem=mem):
                if n.rmap_hlist_len == STABLE_NODE_CHAIN:
                    return _key(mem, n.hlist[0]) if n.hlist else b""
                return _key(mem, n)
            if all(n.rmap_hlist_len != STABLE_NODE_CHAIN or n.hlist for n in nodes):
                rb_validate(root, key=key)
            else:
                rb_validate(root)
        else:
            rb_validate(root)
        # live contents strictly increasing in order (no two rb-nodes with equal content)
        prev = None
        for node in nodes:
            cands = node.hlist if node.rmap_hlist_len == STABLE_NODE_CHAIN else [node]
            live = [d for d in cands if _node_live(mem, d)]
            if not live:
                continue
            k = _key(mem, live[0])
            _check(prev is None or prev < k,
                   f"stable tree {nid}: live contents not strictly increasing at {node!r}")
            prev = k
    for node in ksm.migrate_nodes:
        _check(node.head is MIGRATE_NODES and not node.freed, f"bad migrate node {node!r}")
        _check(id(node) not in reachable, f"{node!r} reachable twice")
        reachable[id(node)] = node
    _check(ksm.ksm_stable_node_chains == n_chains,
           f"stable_node_chains {ksm.ksm_stable_node_chains} != {n_chains} chains")
    _check(ksm.ksm_stable_node_dups == n_dups,
           f"stable_node_dups {ksm.ksm_stable_node_dups} != {n_dups} dups")
    for node in reachable.values():
        _check(node.rmap_hlist_len == len(node.hlist),
               f"{node!r}: rmap_hlist_len {node.rmap_hlist_len} != hlist {len(node.hlist)}")
        for it in node.hlist:
            _check(it.mm is not None, f"freed rmap_item on {node!r}")
            _check(bool(it.address & STABLE_FLAG) and it.head is node,
                   f"{it!r} on {node!r} is not STABLE with that head")
        if node.hlist:
            n_nonempty += 1
            sharing += len(node.hlist) - 1
    for it in all_items:
        if it.address & STABLE_FLAG:
            _check(id(it.head) in reachable, f"{it!r}: its node {it.head!r} is unreachable")
    _check(ksm.ksm_pages_shared == n_nonempty,
           f"pages_shared {ksm.ksm_pages_shared} != {n_nonempty} non-empty nodes/dups")
    _check(ksm.ksm_pages_sharing == sharing,
           f"pages_sharing {ksm.ksm_pages_sharing} != Σ(len-1) = {sharing}")

    # ---------------------------------------------------------------- unstable tree
    between_scans = scan.mm_slot is None
    live_ids = set(all_items)
    in_tree: dict = {}
    for nid, root in enumerate(ksm.root_unstable_tree):
        rb_validate(root)
        for it in rb_inorder(root):
            _check(it not in in_tree, f"{it!r} in the unstable trees twice")
            in_tree[it] = nid
            if it in live_ids:
                _check(bool(it.address & UNSTABLE_FLAG),
                       f"{it!r} in unstable tree {nid} without UNSTABLE_FLAG")
                _check(it.nid == nid, f"{it!r} in unstable tree {nid}, nid says {it.nid}")
            elif not between_scans:
                _fail(f"freed rmap_item {it!r} in the live unstable tree {nid}")
    for it in all_items:
        if not it.address & UNSTABLE_FLAG:
            continue
        age = (scan.seqnr - it.address) & 0xFF
        if between_scans:
            # seqnr was incremented at the end of the scan that built the (old) tree
            _check(age == 1, f"between scans: UNSTABLE {it!r} has age {age}")
            _check(it in in_tree, f"between scans: UNSTABLE {it!r} not in the old tree")
        elif age == 0:
            _check(in_tree.get(it) == it.nid,
                   f"UNSTABLE {it!r} of the current scan is not in unstable tree {it.nid}")
        else:
            _check(it not in in_tree, f"previous-scan {it!r} in the live unstable tree")
    if not between_scans:
        for it_id in in_tree:
            _check(it_id in live_ids, "the live unstable tree holds a freed item")

    # ---------------------------------------------------------------- page tables, folios
    held = {f: n for f, n in (held_refs or {}).items()}
    locked_ok = {f for f in (held_locks or ())}
    ptes: Counter = Counter()           # folio -> number of mappings (a PMD counts once)
    pmds: Counter = Counter()           # folio -> number of PMD mappings
    page_ptes: Counter = Counter()      # (folio, subpage) -> PTE (not PMD) mappings
    folios: dict = {}                   # folio handle -> itself
    ksm_zero_total = 0
    for mm in mms:
        zero = 0
        anon = 0
        if mm.mm_users == 0:
            _check(not mm.vmas, f"exited {mm!r} still has VMAs")
        for vma in mm.vmas:
            pte, ptef = vma.pte, vma.ptef
            n = len(pte)
            _check(len(pte) == len(ptef) == vma.nr_pages, f"{vma!r}: page table size")
            vpn0 = vma.start >> PAGE_SHIFT
            for i in range(n):
                pfn = pte[i]
                if pfn < 0:
                    _check(ptef[i] == 0, f"{vma!r}[{i}]: PTE bits {ptef[i]} on a none PTE")
                    continue
                f = ptef[i]
                if f & PTE_SPECIAL:
                    _check(pfn == ZERO_PFN, f"{vma!r}[{i}]: special PTE to pfn {pfn}")
                    _check(not f & PTE_WRITE, f"{vma!r}[{i}]: writable zero-page PTE")
                    _check(not f & PTE_PMD, f"{vma!r}[{i}]: zero-page PTE marked PMD")
                    _check((vpn0 + i) >> HPAGE_PMD_ORDER in mm.pte_tables,
                           f"{mm!r} {vma!r}[{i}]: zero-page PTE in a block without a PTE table")
                    if f & PTE_DIRTY:
                        zero += 1
                    continue
                _check(pfn < len(mem.page_folio), f"{vma!r}[{i}]: pfn {pfn} out of range")
                folio = mem.page_folio[pfn]
                _check(folio is not None, f"{mm!r} {vma!r}[{i}] maps free pfn {pfn}")
                _check(not folio.flags & PG_FREED, f"{vma!r}[{i}] maps freed {folio!r}")
                _check(folio.pfn <= pfn < folio.pfn + folio.nr_pages,
                       f"{vma!r}[{i}]: pfn {pfn} outside its {folio!r}")
                folios[folio] = folio
                if folio.flags & PG_ANON:
                    anon += 1                       # RSS counts pages, PMD-mapped or not
                    if not folio.flags & PG_KSM:
                        # the rmap walk (split_huge_page, write_protect_page) finds this PTE:
                        # linear_page_index and the anon_vma chain must agree with the VMA
                        idx = mem.page_index[folio.pfn] + (pfn - folio.pfn)
                        _check(idx == vma.pgoff + i,
                               f"{mm!r} {vma!r}[{i}]: {folio!r} page index {idx} != "
                               f"{vma.pgoff + i}")
                        av = folio.anon_vma
                        _check(av is not None and any(v is vma for v in av.vmas),
                               f"{mm!r} {vma!r}[{i}]: rmap of {folio!r} cannot reach the VMA")
                if f & PTE_PMD:
                    sub = (vpn0 + i) & (HPAGE_PMD_NR - 1)
                    base = i - sub
                    _check(folio.order == HPAGE_PMD_ORDER,
                           f"{mm!r} {vma!r}[{i}]: PMD entry maps {folio!r}")
                    _check(pfn == folio.pfn + sub,
                           f"{mm!r} {vma!r}[{i}]: PMD entry maps pfn {pfn}, not subpage "
                           f"{sub} of {folio!r}")
                    _check(base >= 0 and base + HPAGE_PMD_NR <= n,
                           f"{mm!r} {vma!r}[{i}]: PMD mapping crosses the VMA boundary")
                    if sub == 0:
                        _check(all(ptef[base + k] == f for k in range(HPAGE_PMD_NR)),
                               f"{mm!r} {vma!r}[{i}]: the 512 entries of a PMD mapping differ")
                        _check((vpn0 + i) >> HPAGE_PMD_ORDER not in mm.pte_tables,
                               f"{mm!r} {vma!r}[{i}]: PMD mapping where a PTE table exists")
                        ptes[folio] += 1
                        pmds[folio] += 1
                else:
                    ptes[folio] += 1
                    if folio.order:
                        page_ptes[(folio, pfn - folio.pfn)] += 1
                    _check((vpn0 + i) >> HPAGE_PMD_ORDER in mm.pte_tables,
                           f"{mm!r} {vma!r}[{i}]: PTE in a block without a PTE table")
                if folio.flags & PG_KSM:
                    _check(not f & PTE_WRITE,
                           f"{mm!r} {vma!r}[{i}]: KSM {folio!r} mapped writable")
        _check(mm.ksm_zero_pages == zero,
               f"{mm!r}.ksm_zero_pages {mm.ksm_zero_pages} != {zero} KSM zero PTEs")
        _check(mm.anon_rss == anon, f"{mm!r}.anon_rss {mm.anon_rss} != {anon} anon pages")
        ksm_zero_total += zero
    _check(ksm.ksm_zero_pages == ksm_zero_total,
           f"ksm_zero_pages {ksm.ksm_zero_pages} != {ksm_zero_total} KSM zero PTEs")
    s = sum(mm.ksm_zero_pages for mm in mms)
    _check(ksm.ksm_zero_pages == s, f"ksm_zero_pages {ksm.ksm_zero_pages} != Σ mm {s}")

    lru = Counter(mem.lru_batch)
    for f in mem.lru_batch:
        folios[f] = f
    for pfn, folio in enumerate(mem.page_folio):
        if folio is None or pfn == ZERO_PFN:
            continue
        # page_folio(): every frame of a live folio points at it; a split large folio
        # (PG_FREED) is no longer reachable from any of its former frames
        _check(not folio.flags & PG_FREED, f"pfn {pfn}: page_folio is the freed {folio!r}")
        _check(folio.pfn <= pfn < folio.pfn + folio.nr_pages,
               f"pfn {pfn}: page_folio is {folio!r}, which does not contain it")
        if folio.pfn == pfn:
            folios[folio] = folio
    for fid, folio in folios.items():
        _check(not folio.flags & PG_FREED, f"{folio!r} is freed but still referenced")
        _check(all(mem.page_folio[p] == folio
                   for p in range(folio.pfn, folio.pfn + folio.nr_pages)),
               f"{folio!r}: page_folio disagrees")
        _check(folio.mapcount == ptes[fid],
               f"{folio!r}: mapcount {folio.mapcount} != {ptes[fid]} mappings "
               f"({pmds[fid]} PMD)")
        if folio.order:
            _check(folio.page_mapcount is not None
                   and len(folio.page_mapcount) == folio.nr_pages,
                   f"{folio!r}: no per-page mapcounts")
            for k, c in enumerate(folio.page_mapcount):
                _check(c == page_ptes[(fid, k)],
                       f"{folio!r}: page_mapcount[{k}] = {c} != {page_ptes[(fid, k)]} PTEs")
            _check(folio.mapcount == sum(folio.page_mapcount) + pmds[fid],
                   f"{folio!r}: mapcount {folio.mapcount} != Σ page_mapcount "
                   f"{sum(folio.page_mapcount)} + {pmds[fid]} PMD mappings")
            _check(folio.pfn & (folio.nr_pages - 1) == 0, f"{folio!r} is not naturally aligned")
        _check(folio.refcount > 0,
               f"{folio!r} has no reference but was never freed (leaked frames)")
        _check(folio.refcount >= folio.mapcount,
               f"{folio!r}: refcount {folio.refcount} < mapcount {folio.mapcount}")
        expected = folio.mapcount + lru[fid] + folio.pincount + held.get(fid, 0) + (
            folio.nr_pages if folio.flags & PG_SWAPCACHE else 0)
        _check(folio.refcount == expected,
               f"{folio!r}: refcount {folio.refcount} != mapcount + lru {lru[fid]} + pins "
               f"{folio.pincount} + held {held.get(fid, 0)} (reference leaked or missing)")
        if fid in locked_ok:
            _check(bool(folio.flags & PG_LOCKED), f"{folio!r}: the caller's lock was dropped")
        else:
            _check(not folio.flags & PG_LOCKED, f"{folio!r} is locked between batches")
        if folio.flags & PG_KSM:
            node = folio.mapping
            if node is KSM_NO_NODE:
                # step 1 of try_to_merge_two_pages() marks the scanned folio KSM with a NULL
                # stable node; if step 2 fails, break_cow() unshares only the scanned
                # address.  A folio that was also mapped elsewhere (COW-shared after fork)
                # stays a node-less KSM folio there -- as in the kernel.  It must never be
                # reachable from a stable node, and (checked above) is mapped read-only.
                pass
            else:
                _check(isinstance(node, StableNode) and id(node) in reachable,
                       f"KSM {folio!r}: node {node!r} unreachable")
                _check(node.kpfn == folio.pfn, f"KSM {folio!r}: node kpfn {node.kpfn}")
            _check(folio.order == 0, f"KSM {folio!r} is large")

    # ---------------------------------------------------------------- derived sysfs values
    c = ksm.counters()
    vol = ksm.ksm_rmap_items - ksm.ksm_pages_shared - ksm.ksm_pages_sharing \
        - ksm.ksm_pages_unshared
    _check(c["pages_volatile"] == max(0, vol), f"pages_volatile {c['pages_volatile']}")
    _check(c["general_profit"] == (ksm.ksm_pages_sharing + ksm.ksm_zero_pages) * PAGE_SIZE
           - ksm.ksm_rmap_items * RMAP_ITEM_SIZE, f"general_profit {c['general_profit']}")
    _check(c["full_scans"] == scan.seqnr, "full_scans != seqnr")


# ---------------------------------------------------------------------------------------
# small lookups shared by the behaviour tests


def rmap_item_at(m, mm, address: int):
    """The rmap_item of ``mm`` for the page at ``address`` (None if ksmd has none)."""
    slot = m.ksm.mm_slots_hash.get(id(mm))
    if slot is None:
        return None
    for it in slot.rmap_list:
        if it.address & PAGE_MASK == address:
            return it
    return None


def item_state(it) -> str:
    """"S" (STABLE), "U" (UNSTABLE), "N" (in no tree) or "-" (no rmap_item)."""
    if it is None:
        return "-"
    if it.address & STABLE_FLAG:
        return "S"
    if it.address & UNSTABLE_FLAG:
        return "U"
    return "N"
