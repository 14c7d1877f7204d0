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
