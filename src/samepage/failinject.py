"""``samepage explore --fail-alloc SITES``: allocation failures (samepage.mm.failslab) as an
explorer dimension, as the kernel's failslab / fail_page_alloc inject them.

With sites chosen, every allocation at one of them is a choice point named ``alloc:SITE``
where the pseudo-thread ``failslab`` may run: "running" it makes that allocation fail
(-ENOMEM).  The explorer's strategies treat it as any thread (exhaustive: each failure is a
preemption within ``--bound``), schedules record and replay it (replay with the same
``--fail-alloc``).  ``FAIL_ALLOC`` is module state so that ``--jobs`` workers (fork) inherit
it.
"""

from __future__ import annotations

from collections.abc import Callable

from samepage.mm.failslab import FailSlab

FAILSLAB = "failslab"
#: the sites the explorer may make fail (set by the explore command; () = none)
FAIL_ALLOC: tuple[str, ...] = ()


def install(machine, ask: Callable[[str], bool]) -> None:
    """Give ``machine`` a FailSlab that asks ``ask("alloc:SITE")`` at every allocation of
    the chosen sites (nothing when none is chosen)."""
    if FAIL_ALLOC:
        machine.set_failslab(FailSlab(FAIL_ALLOC, decide=lambda site, n: ask("alloc:" + site)))
