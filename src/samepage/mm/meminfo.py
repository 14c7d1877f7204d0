"""Host memory as a tuning daemon reads it: ``/proc/meminfo`` (fs/proc/meminfo.c,
``si_mem_available`` in mm/show_mem.c) and per-process RSS, VSZ and PSS as ``ps`` and
``/proc/PID/smaps_rollup`` show them (fs/proc/task_mmu.c), derived from the model's frames.

The model holds only the scenario's processes; the rest of the host is a fixed budget
(``HostMemory``): ``memory_kb`` of RAM, ``baseline_kb`` used outside the scenario (kernel,
slab, page tables, other processes: neither free nor reclaimable, and not in AnonPages,
which counts the scenario's frames only), ``cached_kb``/``buffers_kb`` of page cache.
Every frame the scenario's processes hold (anonymous pages, KSM pages, large folios) is
taken from MemFree, so a merge gives a page back to MemFree as it does on the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .folio import FOLIO_NONE, ZERO_PFN, LargeFolio, Memory
from .mm import MM

PAGE_KB = 4


@dataclass(frozen=True)
class HostMemory:
    """The host around the scenario (all in kB, as /proc/meminfo counts)."""

    memory_kb: int
    baseline_kb: int = 0
    cached_kb: int = 0
    buffers_kb: int = 0


def used_frames(mem: Memory) -> int:
    """Frames the scenario's processes hold (every allocated frame but the zero page)."""
    fo = mem.folio_order
    return len(fo) - fo.count(FOLIO_NONE) - (1 if fo and fo[ZERO_PFN] != FOLIO_NONE else 0)


def watermarks_kb(total_kb: int) -> tuple[int, int, int]:
    """(min, low, high) of the zone watermarks summed: ``min_free_kbytes`` as
    ``calculate_min_free_kbytes`` sets it (sqrt(lowmem * 16), 128 kB to 256 MiB), low = min
    * 5/4 and high = min * 3/2 (``__setup_per_zone_wmarks`` without watermark_scale_factor)."""
    min_kb = min(max(int(math.isqrt(total_kb * 16)), 128), 262144)
    return min_kb, min_kb * 5 // 4, min_kb * 3 // 2


def meminfo(mem: Memory, host: HostMemory) -> dict[str, int]:
    """The /proc/meminfo lines a policy reads, in kB: MemTotal, MemFree, MemAvailable,
    Buffers, Cached, AnonPages.

    MemAvailable follows ``si_mem_available``: free pages minus the reserve (taken as the
    high watermark), plus the page cache less the part the kernel keeps (half of it, at
    most the low watermark); no reclaimable slab in the model."""
    total = host.memory_kb
    used = used_frames(mem) * PAGE_KB
    free = max(0, total - host.baseline_kb - host.cached_kb - host.buffers_kb - used)
    _, low, high = watermarks_kb(total)
    cache = host.cached_kb + host.buffers_kb
    avail = max(0, free - high + cache - min(cache // 2, low))
    return {"MemTotal": total, "MemFree": free, "MemAvailable": avail,
            "Buffers": host.buffers_kb, "Cached": host.cached_kb,
            "AnonPages": used}


def rss_kb(mm: MM) -> int:
    """``ps -o rss`` (kB): the mm's MM_ANONPAGES counter. A KSM page counts once in every
    mm mapping it (merging does not shrink RSS); the zero page never counts."""
    return mm.anon_rss * PAGE_KB


def vsz_kb(mm: MM) -> int:
    """``ps -o vsz`` (kB): the size of every VMA of the mm."""
    return sum(v.nr_pages for v in mm.vmas) * PAGE_KB


def pss_kb(mm: MM) -> int:
    """``ps -o pss`` (kB, from smaps_rollup): each mapped page divided by its mapcount (the
    page's own mapcount in a large folio), the zero page excluded; whole kB, rounded down."""
    mem = mm.mem
    pf = mem.page_folio
    total = 0.0
    for v in mm.vmas:
        for pfn in v.pte:
            if pfn < 0 or pfn == ZERO_PFN:
                continue
            folio = pf[pfn]
            if folio is None:
                continue
            if isinstance(folio, LargeFolio):
                n = folio.page_mapcount[pfn - folio.pfn] or folio.mapcount
            else:
                n = folio.mapcount
            total += PAGE_KB / max(1, n)
    return int(total)
