"""The sanitizer: a KASAN/VM_BUG_ON for the model (``Machine(sanitize=True)``,
``samepage run --sanitize``).

It checks the memory manager and KSM together, so it sits above both: the core never imports
this module, it only calls the optional hook object on ``Memory.sanitizer`` (the interface
is ``samepage.mm.hooks.SanitizerHooks``).  With the sanitizer off (the default) the model
runs its plain code; with it on, the folio operations and KSM's content reads are replaced
on the instance by checked variants and the Machine runs ``check_all`` after every ksmd
batch and every API operation.

Reported, each as a ``SanitizerReport`` naming the folio, the operation, the model function
that did it, where the folio was freed (if it was) and the last steps that led there:

* ``use-after-free``: a freed folio (or a page whose folio was freed) is locked, got, read
  (``memcmp_pages``, ``calc_checksum``), mapped or unlocked;
* ``put-on-zero-refcount``: ``folio_put`` on a folio whose refcount is already 0;
* ``refcount-below-mapcount``: a put, or the state after a step, leaves a folio with fewer
  references than mappings plus GUP pins;
* ``unlock-unlocked``: ``folio_unlock`` of a folio that is not locked;
* ``mapcount-mismatch``: a folio's mapcount differs from the number of page-table entries
  mapping it (a PMD mapping counts once);
* ``ksm-page-writable``: a KSM page mapped by a writable PTE;
* ``counters-inconsistent``: the KSM counters disagree with the trees and rmap_lists
  (spec §8.1), globally and per mm (``/proc/PID/ksm_stat``: rmap_items, merging_pages,
  zero_pages against the PTEs marked as KSM zero pages);
* ``mm-use-after-free``: ksmd uses an mm whose struct was freed (``mm_count`` 0), or an
  ``mmgrab``/``mmdrop`` on it;
* ``mm-refcount-mismatch``: an mm's ``mm_count`` differs from its references (one while it
  has users, one per mm_slot: ``__ksm_enter``'s ``mmgrab``, dropped when the slot is freed);
* ``vma-use-after-free``: ksmd reads or changes the page table of a VMA that was unmapped
  or torn down with its mm (``exit``);
* ``mmap-lock-not-held``: ksmd changes a VMA's PTEs without that mm's mmap lock;
* ``null-dereference``: engine code dereferenced None (a None VMA, a missing folio):
  the AttributeError becomes a report naming the innermost model function;
* ``ksm-page-after-unmerge``: ``run = 2`` finished (``unmerge_and_remove_all_rmap_items``
  returned 0) yet a KSM page is still mapped where it walks: a VM_MERGEABLE VMA with an
  anon_vma of a live mm on KSM's list.  Elsewhere a KSM page may legitimately survive (a
  forked child that cleared PR_SET_MEMORY_MERGE before ksmd turned a folio it still shares
  with its parent into a KSM page in place): 6.18's remove_stable_node then keeps the node
  (-EBUSY, without the WARN it had until 2019), as the model does.

Freed frames go into a quarantine (``QUARANTINE`` frames, FIFO, as KASAN's) before the
allocator may reuse them, so that a late access to a freed pfn is still reported against
the right folio.
"""

from __future__ import annotations

import os
import sys
from collections import Counter, deque

from samepage.ksm.ksm import KSM_RUN_UNMERGE
from samepage.ksm.rbtree import rb_inorder
from samepage.ksm.structs import STABLE_FLAG, STABLE_NODE_CHAIN, UNSTABLE_FLAG
from samepage.mm.folio import PG_FREED, PG_KSM, PG_ZERO, SECTION_SHIFT, ZERO_PFN, Folio
from samepage.mm.hooks import SanitizerHooks
from samepage.mm.huge import HPAGE_PMD_NR
from samepage.mm.mm import PTE_DIRTY, PTE_PMD, PTE_SPECIAL, PTE_WRITE, VM_MERGEABLE

KINDS = ("use-after-free", "put-on-zero-refcount", "refcount-below-mapcount",
         "unlock-unlocked", "mapcount-mismatch", "ksm-page-writable", "counters-inconsistent",
         "mm-use-after-free", "mm-refcount-mismatch", "vma-use-after-free",
         "mmap-lock-not-held", "null-dereference", "ksm-page-after-unmerge")

STEPS_KEPT = 200
STEPS_SHOWN = 25
FREED_KEPT = 100_000          # folios whose place of freeing is remembered
QUARANTINE = 4096             # freed frames held back from the allocator

_PKG = os.path.dirname(os.path.abspath(__file__))
# frames that are the machinery of an operation, not the model function that did it
_SKIP_FILES = {os.path.join(_PKG, "sanitizer.py"), os.path.join(_PKG, "mm", "folio.py"),
               os.path.join(_PKG, "mm", "hooks.py")}
_SKIP_NAMES = {"memcmp_pages", "pages_identical", "calc_checksum", "_sanitized_page",
               "mmgrab", "mmdrop"}
_MODEL_DIRS = (os.path.join(_PKG, "ksm") + os.sep, os.path.join(_PKG, "mm") + os.sep)


def model_function(depth: int = 1) -> str:
    """The innermost model function on the stack outside the folio operations and the
    sanitizer, as ``name (file.py:line)``."""
    f = sys._getframe(depth)
    while f is not None:
        co = f.f_code
        if (co.co_filename not in _SKIP_FILES and co.co_name not in _SKIP_NAMES
                and not co.co_name.startswith("_sanitized")):
            return f"{co.co_name} ({os.path.basename(co.co_filename)}:{f.f_lineno})"
        f = f.f_back
    return "?"


class SanitizerReport(Exception):
    """A bug found by the sanitizer.  ``kind`` is one of ``KINDS``; ``folio`` the folio's
    repr (or the page, when only its pfn was used); ``op`` the operation; ``function`` the
    model function that did it; ``freed_at`` where the folio was freed (``"fn (step N)"``,
    or None); ``steps`` the last steps, oldest first."""

    def __init__(self, kind: str, folio: str | None, op: str, function: str,
                 freed_at: str | None = None, steps: list[str] | None = None,
                 detail: str = "", what: str = "folio"):
        self.kind = kind
        self.folio = folio            # the object's repr (a folio, an mm, a VMA)
        self.what = what
        self.op = op
        self.function = function
        self.freed_at = freed_at
        self.steps = list(steps or ())
        self.detail = detail
        super().__init__(self.summary())

    def summary(self) -> str:
        what = f"{self.op} on {self.folio}" if self.folio else self.op
        return f"{self.kind}: {what} in {self.function}"

    def __str__(self) -> str:
        lines = [f"sanitizer: {self.kind}",
                 f"  operation: {self.op}",
                 f"  {self.what + ':':<10} {self.folio if self.folio else '-'}",
                 f"  by:        {self.function}"]
        if self.freed_at:
            lines.append(f"  freed at:  {self.freed_at}")
        if self.detail:
            lines.append(f"  detail:    {self.detail}")
        if self.steps:
            shown = self.steps[-STEPS_SHOWN:]
            more = len(self.steps) - len(shown)
            lines.append(f"  last {len(shown)} steps" + (f" (of {len(self.steps)} kept)"
                                                          if more else "") + ":")
            lines.extend(f"    {s}" for s in shown)
        return "\n".join(lines)


class Sanitizer(SanitizerHooks):
    """The hook object set on ``Memory.sanitizer``; see the module docstring."""

    def __init__(self, steps_kept: int = STEPS_KEPT, record_folio_ops: bool = True):
        self.mem = None
        self.steps: deque = deque(maxlen=steps_kept)   # (step, actor, function, text)
        self.step_no = 0
        self.actor = "-"
        self.record_folio_ops = record_folio_ops
        # a folio handle (or id() of an mm or a VMA) -> (it, function, step)
        self._freed: dict = {}
        self._depth = 0
        self.quarantine: deque = deque()               # (node, [pfn]) held back, oldest first
        self.quarantined = 0
        self.quarantine_max = QUARANTINE

    def attach(self, machine) -> "Sanitizer":
        self.mem = machine.mem
        machine.mem.set_sanitizer(self)
        machine.ksm.set_sanitizer_checks(True)
        return self

    # -- steps ------------------------------------------------------------------------------
    def step(self, text: str, function: str = "") -> None:
        self.step_no += 1
        self.steps.append((self.step_no, self.actor, function, text))

    def formatted_steps(self) -> list[str]:
        out = []
        for n, actor, fn, text in self.steps:
            out.append(f"step {n} {actor} {fn}: {text}" if fn else f"step {n} {actor}: {text}")
        return out

    def api(self, machine, actor: str, text: str, fn, *args, **kw):
        """Run an API operation as one step; check the whole state after the outermost."""
        outer = self._depth == 0
        if outer:
            self.actor = actor
            self.step(text)
        self._depth += 1
        try:
            ret = fn(*args, **kw)
        except AttributeError as e:
            if outer and "'NoneType' object has no attribute" in str(e):
                raise self.null_dereference(e) from e
            raise
        finally:
            self._depth -= 1
            if outer:
                self.actor = "-"
        if outer:
            self.check_all(machine, f"after {actor}: {text}")
        return ret

    # -- hooks (samepage.mm.hooks.SanitizerHooks) ---------------------------------------------
    def folio_op(self, op: str, folio) -> None:
        if self.record_folio_ops:
            self.step_no += 1
            self.steps.append((self.step_no, self.actor, sys._getframe(2).f_code.co_name,
                               f"{op} pfn {folio.pfn}"))

    def folio_freed(self, folio, pfn_reusable: bool = True) -> None:
        fn = model_function(2)
        self.step(f"{'free' if pfn_reusable else 'split (folio gone)'} pfn {folio.pfn}"
                  f"{'' if not folio.order else f' order {folio.order}'}",
                  fn.split(" ")[0])
        freed = self._freed
        if len(freed) >= FREED_KEPT:
            del freed[next(iter(freed))]
        freed[folio] = (folio, fn, self.step_no)
        if pfn_reusable:
            mf = self.mem.freed
            for p in range(folio.pfn, folio.pfn + folio.nr_pages):
                mf[p] = folio
        if pfn_reusable and self.quarantine_max:
            self._quarantine(folio)

    def _quarantine(self, folio) -> None:
        """Take the folio's frames back from the allocator's free list (``_free_folio``
        appended them last) and release the oldest quarantined ones beyond the limit."""
        mem = self.mem
        n = folio.nr_pages
        nid = mem.section_nid[folio.pfn >> SECTION_SHIFT]
        free = mem._free[nid]
        pfns = list(free[-n:])
        del free[-n:]
        mem.nr_free_frames -= n
        self.quarantine.append((nid, pfns))
        self.quarantined += n
        while self.quarantined > self.quarantine_max:
            onid, old = self.quarantine.popleft()
            mem._free[onid].extend(old)
            mem.nr_free_frames += len(old)
            self.quarantined -= len(old)

    def freed_at(self, obj) -> str | None:
        if isinstance(obj, Folio):
            rec = self._freed.get(obj)          # a handle: equal for the same folio
        else:
            rec = self._freed.get(id(obj))
            if rec is not None and rec[0] is not obj:
                rec = None
        if rec is None:
            return None
        return f"{rec[1]}, step {rec[2]}"

    def report(self, kind: str, folio, op: str, detail: str = "", function: str | None = None,
               depth: int = 2):
        fn = function or model_function(depth + 1)
        freed = self.freed_at(folio) if folio is not None and not isinstance(folio, str) \
            else None
        return SanitizerReport(kind, folio if isinstance(folio, str) or folio is None
                               else repr(folio), op, fn, freed, self.formatted_steps(), detail)

    def folio_misuse(self, kind: str, folio, op: str, detail: str = "") -> None:
        if not detail:
            if kind == "use-after-free":
                detail = f"{op} on a folio that was freed"
            elif kind == "put-on-zero-refcount":
                detail = "folio_put with the refcount already 0 (one put too many)"
            elif kind == "unlock-unlocked":
                detail = "folio_unlock of a folio that is not locked"
        raise self.report(kind, folio, op, detail, depth=2)

    def freed_page_used(self, pfn: int, op: str) -> None:
        folio = self.mem.freed.get(pfn) if self.mem is not None else None
        rep = self.report("use-after-free", folio if folio is not None else f"pfn {pfn}",
                          op, f"{op} uses pfn {pfn}, whose folio has been freed", depth=2)
        raise rep

    def check_map(self, pfn: int, folio, op: str) -> None:
        if folio is None:
            self.freed_page_used(pfn, op)
        if folio.flags & PG_FREED:
            raise self.report("use-after-free", folio, op,
                              f"{op}: mapping pfn {pfn} of a freed folio", depth=2)

    # -- mm and VMA lifetime, the mmap lock ----------------------------------------------------
    def _record_freed(self, obj, text: str) -> None:
        fn = model_function(3)
        self.step(text, fn.split(" ")[0])
        freed = self._freed
        if len(freed) >= FREED_KEPT:
            del freed[next(iter(freed))]
        freed[id(obj)] = (obj, fn, self.step_no)

    def _obj_report(self, kind, obj, what, op, detail, depth=3):
        return SanitizerReport(kind, repr(obj), op, model_function(depth), self.freed_at(obj),
                               self.formatted_steps(), detail, what)

    def mm_op(self, op: str, mm) -> None:
        if mm.mm_count <= 0:
            raise self._obj_report("mm-use-after-free", mm, "mm", op,
                                   f"{op} on {mm.name}'s mm_struct, already freed "
                                   "(mm_count 0)")

    def mm_freed(self, mm) -> None:
        self._record_freed(mm, f"mm_struct of {mm.name} freed (mm_count 0)")

    def mm_access(self, mm, op: str) -> None:
        if mm.mm_count <= 0:
            raise self._obj_report("mm-use-after-free", mm, "mm", op,
                                   f"{op} uses {mm.name}'s mm_struct through its mm_slot, "
                                   "but it was freed (a missing mmgrab, or one mmdrop too "
                                   "many)")

    def vma_freed(self, vma) -> None:
        self._record_freed(vma, f"vma {vma.name or hex(vma.start)} freed ({vma.dead})")

    def vma_access(self, ksm, vma, op: str, need_lock: bool = True) -> None:
        if vma.dead is not None:
            how = ("unmapped (munmap)" if vma.dead == "munmap" else
                   "torn down with its mm (exit): its page tables are gone")
            raise self._obj_report("vma-use-after-free", vma, "vma", op,
                                   f"{op} uses vma {vma.name or hex(vma.start)} of "
                                   f"{vma.mm.name}, {how}")
        if need_lock and ksm.mmap_read_locked is not vma.mm:
            raise self._obj_report("mmap-lock-not-held", vma, "vma", op,
                                   f"{op} changes the PTEs of {vma.mm.name} without its "
                                   f"mmap lock (held: {ksm.mmap_read_locked!r})")

    def null_dereference(self, e: AttributeError) -> SanitizerReport:
        """An AttributeError on None in model code, as a report naming the innermost model
        (or patch) function of its traceback."""
        where = "?"
        tb = e.__traceback__
        while tb is not None:
            co = tb.tb_frame.f_code
            fn = co.co_filename
            if (fn.startswith(_MODEL_DIRS) or "samepage_patch_" in
                    tb.tb_frame.f_globals.get("__name__", "")):
                where = f"{co.co_name} ({os.path.basename(fn)}:{tb.tb_lineno})"
            tb = tb.tb_next
        attr = getattr(e, "name", None) or str(e).rsplit("'", 2)[-2]
        vma_attrs = {"pte", "ptef", "start", "end", "flags", "anon_vma", "mm", "pgoff",
                     "nr_pages", "dead"}
        what = "a None VMA" if attr in vma_attrs else "None"
        return SanitizerReport("null-dereference", None, f"read of .{attr}", where, None,
                               self.formatted_steps(),
                               f"{what} dereferenced (.{attr}) in {where}", "object")

    # -- whole-state checks -------------------------------------------------------------------
    def check_all(self, machine, where: str = "check_all") -> None:
        """The global checks, run between steps: mapcount against the page tables (a PMD
        mapping counts once), refcount >= mapcount + pins, no writable KSM PTE, the KSM
        counters against the trees (spec §8.1).  Raises a SanitizerReport."""
        mem = machine.mem
        pf = mem.page_folio
        mms = _all_mms(machine)

        def fail(kind, folio, detail):
            raise SanitizerReport(kind, None if folio is None else repr(folio), "check_all",
                                  where, self.freed_at(folio) if folio is not None else None,
                                  self.formatted_steps(), detail)

        maps: Counter = Counter()       # head pfn -> PTE mappings + PMD mappings
        pmd_entries: Counter = Counter()
        seen: dict[int, object] = {}
        zero_ptes = 0
        ksm = machine.ksm
        # run = 2 done (its cursor is back to NULL): every mm on KSM's list was unmerged
        unmerged = ksm.ksm_run == KSM_RUN_UNMERGE and ksm.ksm_scan.mm_slot is None
        on_list = {id(slot.mm) for slot in ksm.mm_list}
        for mm in mms:
            mm_zero = 0
            walked = unmerged and mm.mm_users > 0 and id(mm) in on_list
            for vma in mm.vmas:
                pte, ptef = vma.pte, vma.ptef
                # what unmerge_and_remove_all_rmap_items walked (the others keep KSM pages)
                check_unmerged = (walked and vma.flags & VM_MERGEABLE
                                  and vma.anon_vma is not None)
                for i in range(len(pte)):
                    pfn = pte[i]
                    if pfn < 0:
                        continue
                    f = ptef[i]
                    if f & PTE_SPECIAL:
                        if f & PTE_DIRTY and pfn == ZERO_PFN:
                            mm_zero += 1
                        continue
                    folio = pf[pfn]
                    if folio is None or folio.flags & PG_FREED:
                        gone = folio if folio is not None else mem.freed.get(pfn)
                        fail("use-after-free", gone if gone is not None else f"pfn {pfn}",
                             f"{mm.name} {vma.name or hex(vma.start)}[{i}] maps pfn {pfn}, "
                             "which has been freed")
                    fid = folio.pfn             # a live folio: its head pfn is unique
                    seen[fid] = folio
                    if f & PTE_PMD:
                        pmd_entries[fid] += 1
                    else:
                        maps[fid] += 1
                    if f & PTE_WRITE and folio.flags & PG_KSM:
                        fail("ksm-page-writable", folio,
                             f"{mm.name} {vma.name or hex(vma.start)}[{i}] maps KSM pfn "
                             f"{pfn} writable")
                    if check_unmerged and folio.flags & PG_KSM:
                        fail("ksm-page-after-unmerge", folio,
                             f"run = 2 finished but {mm.name} "
                             f"{vma.name or hex(vma.start)}[{i}] still maps KSM pfn {pfn}")
            if mm.ksm_zero_pages != mm_zero:
                fail("counters-inconsistent", None,
                     f"{mm.name}.ksm_zero_pages {mm.ksm_zero_pages} != {mm_zero} KSM zero PTEs")
            zero_ptes += mm_zero
        for fid, n in pmd_entries.items():
            maps[fid] += n // HPAGE_PMD_NR
        for folio in mem.iter_folios():
            if not folio.flags & PG_ZERO:
                seen[folio.pfn] = folio
        for fid, folio in seen.items():
            if folio.mapcount != maps[fid]:
                fail("mapcount-mismatch", folio,
                     f"mapcount {folio.mapcount} but {maps[fid]} page-table mappings "
                     f"({pmd_entries[fid] // HPAGE_PMD_NR} PMD)")
            if folio.refcount < folio.mapcount + folio.pincount:
                fail("refcount-below-mapcount", folio,
                     f"refcount {folio.refcount} < mapcount {folio.mapcount} + pins "
                     f"{folio.pincount}")
        self._check_counters(machine, mms, zero_ptes, fail)
        self._check_mms(machine, mms, fail)

    def _check_mms(self, machine, mms, fail) -> None:
        """mm_count against its references; every mm_slot's mm alive; the per-mm counters
        of ksm_stat against that mm's rmap_list."""
        ksm = machine.ksm
        slots = {}
        for slot in ksm.mm_list:
            slots[id(slot.mm)] = slot
        for mm in mms:
            want = (1 if mm.mm_users > 0 else 0) + (1 if id(mm) in slots else 0)
            if mm.mm_users == 0 and mm.mm_count == want + 1:
                want += 1                  # exit_mmap not done yet: mm_users' reference
            if mm.mm_count <= 0 and id(mm) in slots:
                raise SanitizerReport("mm-use-after-free", repr(mm), "check_all", "check_all",
                                      self.freed_at(mm), self.formatted_steps(),
                                      f"an mm_slot still points at {mm.name}'s freed "
                                      "mm_struct", "mm")
            if mm.mm_count != want:
                raise SanitizerReport("mm-refcount-mismatch", repr(mm), "check_all",
                                      "check_all", self.freed_at(mm), self.formatted_steps(),
                                      f"{mm.name}.mm_count {mm.mm_count} != {want} "
                                      f"(mm_users {mm.mm_users}, "
                                      f"{'an' if id(mm) in slots else 'no'} mm_slot)", "mm")
            slot = slots.get(id(mm))
            items = slot.rmap_list if slot is not None else ()
            n = sum(1 for it in items)
            stable = sum(1 for it in items if it.address & STABLE_FLAG)
            if mm.ksm_rmap_items != n:
                fail("counters-inconsistent", None,
                     f"{mm.name}.ksm_rmap_items {mm.ksm_rmap_items} != {n} rmap_items on "
                     "its mm_slot")
            if mm.ksm_merging_pages != stable:
                fail("counters-inconsistent", None,
                     f"{mm.name}.ksm_merging_pages {mm.ksm_merging_pages} != {stable} "
                     "STABLE rmap_items on its mm_slot")

    @staticmethod
    def _check_counters(machine, mms, zero_ptes, fail) -> None:
        ksm = machine.ksm

        def bad(msg):
            fail("counters-inconsistent", None, msg)

        for name in ("ksm_pages_shared", "ksm_pages_sharing", "ksm_pages_unshared",
                     "ksm_rmap_items", "ksm_stable_node_chains", "ksm_stable_node_dups",
                     "ksm_zero_pages"):
            if getattr(ksm, name) < 0:
                bad(f"{name} = {getattr(ksm, name)} < 0")
        n_items = n_stable = n_unstable = 0
        for slot in ksm.mm_list:
            for it in slot.rmap_list:
                n_items += 1
                if it.address & STABLE_FLAG:
                    n_stable += 1
                elif it.address & UNSTABLE_FLAG:
                    n_unstable += 1
        s_items = sum(mm.ksm_rmap_items for mm in mms)
        s_merging = sum(mm.ksm_merging_pages for mm in mms)
        if not ksm.ksm_rmap_items == s_items == n_items:
            bad(f"ksm_rmap_items {ksm.ksm_rmap_items}, Σ mm.ksm_rmap_items {s_items}, "
                f"{n_items} rmap_items on the lists")
        if not ksm.ksm_pages_shared + ksm.ksm_pages_sharing == n_stable == s_merging:
            bad(f"pages_shared {ksm.ksm_pages_shared} + pages_sharing "
                f"{ksm.ksm_pages_sharing} vs {n_stable} STABLE rmap_items vs "
                f"Σ mm.ksm_merging_pages {s_merging}")
        if ksm.ksm_pages_unshared != n_unstable:
            bad(f"pages_unshared {ksm.ksm_pages_unshared} != {n_unstable} UNSTABLE rmap_items")
        chains = dups = shared = sharing = 0
        nodes = list(ksm.migrate_nodes)
        for root in ksm.root_stable_tree:
            for node in rb_inorder(root):
                if node.rmap_hlist_len == STABLE_NODE_CHAIN:
                    chains += 1
                    dups += len(node.hlist)
                    nodes.extend(node.hlist)
                else:
                    nodes.append(node)
        for node in nodes:
            if node.rmap_hlist_len != len(node.hlist):
                bad(f"{node!r}: rmap_hlist_len {node.rmap_hlist_len} != {len(node.hlist)} "
                    "rmap_items on it")
            if node.hlist:
                shared += 1
                sharing += len(node.hlist) - 1
        if ksm.ksm_pages_shared != shared:
            bad(f"pages_shared {ksm.ksm_pages_shared} != {shared} non-empty stable nodes")
        if ksm.ksm_pages_sharing != sharing:
            bad(f"pages_sharing {ksm.ksm_pages_sharing} != Σ (rmap_items - 1) = {sharing}")
        if ksm.ksm_stable_node_chains != chains:
            bad(f"stable_node_chains {ksm.ksm_stable_node_chains} != {chains} chains")
        if ksm.ksm_stable_node_dups != dups:
            bad(f"stable_node_dups {ksm.ksm_stable_node_dups} != {dups} dups")
        s_zero = sum(mm.ksm_zero_pages for mm in mms)
        if not ksm.ksm_zero_pages == s_zero == zero_ptes:
            bad(f"ksm_zero_pages {ksm.ksm_zero_pages}, Σ mm.ksm_zero_pages {s_zero}, "
                f"{zero_ptes} KSM zero PTEs")


def _all_mms(machine) -> list:
    seen: dict[int, object] = {}
    for p in machine.processes.values():
        seen.setdefault(id(p.mm), p.mm)
    for slot in machine.ksm.mm_list:
        seen.setdefault(id(slot.mm), slot.mm)
    return list(seen.values())
