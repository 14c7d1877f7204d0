"""Fault injection of allocations, as the kernel's failslab / fail_page_alloc
(``Documentation/fault-injection``): chosen allocations fail with -ENOMEM.

The sites are the allocations KSM's correctness depends on: ``rmap_item``
(``alloc_rmap_item``), ``stable_node`` (``alloc_stable_node``), ``stable_node_chain``
(``alloc_stable_node_chain``) and ``folio`` (``folio_alloc`` in the fault paths: a user fault
gets VM_FAULT_OOM, break_ksm's unshare fault -ENOMEM).  Set one on ``Memory.failslab``
(``Machine.set_failslab``); None, the default, costs one attribute test per allocation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

SITES = ("rmap_item", "stable_node", "stable_node_chain", "folio")


class FailSlab:
    """Decides which allocations fail.  ``sites``: the sites that may fail (others always
    succeed).  ``fail_nth``: (site, n) pairs, n counting that site's calls from 0, that fail;
    ``decide(site, n) -> bool``: asked instead when set (the explorer's choice point).
    ``calls`` counts every site's calls, ``failed`` lists the (site, n) that failed."""

    def __init__(self, sites: Iterable[str] = SITES,
                 fail_nth: Iterable[tuple[str, int]] = (),
                 decide: Callable[[str, int], bool] | None = None):
        sites = tuple(sites)
        for s in sites:
            if s not in SITES:
                raise ValueError(f"unknown allocation site {s!r} (one of {', '.join(SITES)})")
        self.sites = frozenset(sites)
        self.fail_nth = set(fail_nth)
        self.decide = decide
        self.calls: dict[str, int] = {s: 0 for s in SITES}
        self.failed: list[tuple[str, int]] = []

    def should_fail(self, site: str) -> bool:
        n = self.calls[site]
        self.calls[site] = n + 1
        if site not in self.sites:
            return False
        fail = self.decide(site, n) if self.decide is not None else (site, n) in self.fail_nth
        if fail:
            self.failed.append((site, n))
        return bool(fail)


def parse_sites(text: str) -> tuple[str, ...]:
    """``--fail-alloc`` value: ``all`` or a comma-separated list of sites."""
    text = text.strip()
    if text == "all":
        return SITES
    out = tuple(s.strip() for s in text.split(",") if s.strip())
    if not out:
        raise ValueError("no allocation site given")
    for s in out:
        if s not in SITES:
            raise ValueError(f"unknown allocation site {s!r} (one of {', '.join(SITES)}, "
                             "or all)")
    return out
