"""``samepage run SCENARIO --same-folio all``: the same-folio strategies side by side."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from samepage.scenario.same_folio_compare import compare_same_folio

from .text import markup_safe


DESCRIPTIONS = {
    "v6.18": "Linux 6.18: merge attempt first, then split the folio; the pair merges a scan later",
    "early-put": "LKML 2023-11-16 proposal: drop tree_page's reference before merging (unsafe)",
    "split-retry": "D. Hildenbrand's fix: put, trylock, split, search the unstable tree again",
}


def print_same_folio_comparison(con: Console, scenario, title: str,
                                batches: int | None = None) -> None:
    results = compare_same_folio(scenario, batches=batches)
    t = Table(title=f"{markup_safe(title)}: same-folio strategies", title_justify="left")
    t.add_column("", style="bold")
    for r in results:
        t.add_column(r.strategy, justify="right")

    def row(name, f):
        t.add_row(name, *(f(r) for r in results))

    row("counters settle at batch", lambda r: str(r.settled_batch))
    row("  ... full scans by then", lambda r: str(r.settled_full_scans))
    row("pages merged (shared+sharing)", lambda r: str(r.pages_merged))
    row("ksm_zero_pages", lambda r: str(r.ksm_zero_pages))
    row("splits attempted", lambda r: str(r.splits_attempted))
    row("splits failed", lambda r: str(r.splits_failed))
    row("errors found", lambda r: "0" if r.error is None else "1")
    con.print(t)
    for r in results:
        if r.error:
            con.print(f"[red]{markup_safe(r.strategy)}[/]: {markup_safe(r.error)}", soft_wrap=True)
    con.print("[bold]why merge attempts failed[/] (check, function: count)")
    for r in results:
        reasons = ", ".join(f"{markup_safe(k)}: {v}" for k, v in
                            sorted(r.merge_failures.items(), key=lambda kv: -kv[1])) or "none"
        con.print(f"  {r.strategy:12s} {reasons}", soft_wrap=True)
    for name, text in DESCRIPTIONS.items():
        con.print(f"[dim]{name:12s} {escape(text)}[/]", soft_wrap=True)
    con.print("[dim]'errors found' counts broken reference or lock rules that stopped a run "
              "(ksmd alone; a use-after-free needs another thread to free the page).[/]",
              soft_wrap=True)
