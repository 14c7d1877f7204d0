"""The calls the memory manager makes into KSM (``include/linux/ksm.h``).

The memory manager must not import the KSM engine; the engine registers an object with
these methods on ``Memory.ksm``.  ``NoKsm`` is the ``CONFIG_KSM=n`` behaviour.
"""

from __future__ import annotations

import errno


class KsmHooks:
    """Interface; every method mirrors a kernel entry point of the same name."""

    def ksm_madvise(self, vma, start: int, end: int, advice: int) -> int:  # returns -errno or 0
        return -errno.EINVAL

    def ksm_enable_merge_any(self, mm) -> int:
        return -errno.EINVAL

    def ksm_disable_merge_any(self, mm) -> int:
        return -errno.EINVAL

    def ksm_vma_flags(self, mm, vma) -> None:
        """A new VMA is being created: a merge-any mm makes it mergeable."""

    def ksm_fork(self, mm, oldmm) -> None:
        pass

    def ksm_exit(self, mm) -> None:
        pass

    def ksm_execve(self, mm) -> None:
        pass

    def ksm_might_unmap_zero_page(self, mm, ptef: int) -> None:
        """A PTE mapping the zero page is going away (KSM zero pages carry the dirty bit)."""


NoKsm = KsmHooks


class SanitizerHooks:
    """The calls the memory manager and KSM make into an optional sanitizer
    (``Memory.sanitizer``; None, the default, means no checks and no cost).

    The core never imports the sanitizer (``samepage.sanitizer`` implements this interface);
    every method that detects a bug raises the sanitizer's report instead of returning."""

    def folio_freed(self, folio, pfn_reusable: bool = True) -> None:
        """``folio`` went back to the allocator (or, for a split, ceased to exist)."""

    def folio_misuse(self, kind: str, folio, op: str, detail: str = "") -> None:
        """A folio operation broke a rule (``kind``: use-after-free, put-on-zero-refcount,
        refcount-below-mapcount, unlock-unlocked)."""

    def freed_page_used(self, pfn: int, op: str) -> None:
        """A page (pfn) whose folio has been freed was used by ``op``."""

    def check_map(self, pfn: int, folio, op: str) -> None:
        """``folio`` (``page_folio(pfn)``, None if freed) is about to be mapped by ``op``."""

    def folio_op(self, op: str, folio) -> None:
        """A folio operation that went well (recorded as a step)."""

    def mm_op(self, op: str, mm) -> None:
        """``mmgrab``/``mmdrop`` of ``mm`` is about to happen (``mm_count`` not yet changed)."""

    def mm_freed(self, mm) -> None:
        """``mm``'s ``mm_count`` reached 0: the struct is freed (``__mmdrop``)."""

    def mm_access(self, mm, op: str) -> None:
        """ksmd is about to use ``mm`` (through its mm_slot)."""

    def vma_freed(self, vma) -> None:
        """``vma`` was unmapped (``munmap``) or torn down with its mm (``exit``)."""

    def vma_access(self, ksm, vma, op: str, need_lock: bool = True) -> None:
        """``op`` is about to read or change ``vma``'s page table (by ksmd, which must hold
        the mm's mmap lock when ``need_lock``)."""
