"""Comparing two traces of one scenario batch by batch (the model's and the kernel's).

Two traces are *identical* when they have the same batches, all 11 counters of every batch
are equal, and the final records have the same processes with the same /proc/PID/ksm_stat
values. ``t_ms`` (simulated on the model, measured on the kernel) and the kernel release are
not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from .trace import COUNTER_NAMES, PROCESS_KEYS


@dataclass
class TraceComparison:
    """The result of :func:`compare_traces`. ``a`` is the model's side, ``b`` the kernel's
    (the names ``a_label``/``b_label`` say which)."""

    a: list[dict[str, Any]]
    b: list[dict[str, Any]]
    a_final: dict[str, Any] | None
    b_final: dict[str, Any] | None
    a_label: str = "model"
    b_label: str = "kernel"
    #: batch -> names of the counters that differ (batches present in both traces)
    batch_diffs: dict[int, list[str]] = field(default_factory=dict)
    #: batches present in only one of the traces
    only_a: list[int] = field(default_factory=list)
    only_b: list[int] = field(default_factory=list)
    #: process -> keys of ksm_stat that differ; "(missing)" if one side has no such process
    final_diffs: dict[str, list[str]] = field(default_factory=dict)

    @property
    def identical(self) -> bool:
        return not (self.batch_diffs or self.only_a or self.only_b or self.final_diffs)

    @property
    def first_batch(self) -> int | None:
        """The first batch where the traces part (a differing counter, or a batch only one
        trace has), or None."""
        cands = [*self.batch_diffs, *self.only_a[:1], *self.only_b[:1]]
        return min(cands) if cands else None

    def by_batch(self) -> list[tuple[int, dict | None, dict | None]]:
        """(batch, a's record or None, b's record or None), in batch order."""
        a = {r["batch"]: r for r in self.a}
        b = {r["batch"]: r for r in self.b}
        return [(n, a.get(n), b.get(n)) for n in sorted(set(a) | set(b))]

    def describe_batch(self, batch: int) -> str:
        """"batch 7: pages_sharing model 40 kernel 31; ..." for one differing batch."""
        a = next((r for r in self.a if r["batch"] == batch), None)
        b = next((r for r in self.b if r["batch"] == batch), None)
        if a is None or b is None:
            missing = self.a_label if a is None else self.b_label
            return f"batch {batch}: the {missing} trace has no such batch"
        parts = [f"{c} {self.a_label} {a[c]} {self.b_label} {b[c]}"
                 for c in self.batch_diffs.get(batch, [])]
        return f"batch {batch}: " + "; ".join(parts)

    def describe_final(self) -> str:
        parts = []
        pa = (self.a_final or {}).get("processes") or {}
        pb = (self.b_final or {}).get("processes") or {}
        for name, keys in self.final_diffs.items():
            if name == "(final record)":
                where = self.a_label if self.a_final is None else self.b_label
                parts.append(f"the {where} trace has no final record")
            elif keys == ["(missing)"]:
                where = self.a_label if name not in pa else self.b_label
                parts.append(f"process {name}: not in the {where}'s final record")
            else:
                parts.append(f"process {name}: " + ", ".join(
                    f"{k} {self.a_label} {pa[name][k]} {self.b_label} {pb[name][k]}"
                    for k in keys))
        return "; ".join(parts)

    def summary(self) -> str:
        """One line: identical, or where the traces first part and how much differs."""
        if self.identical:
            n = len(self.a)
            procs = len(((self.a_final or {}).get("processes") or {}))
            return (f"identical: all {len(COUNTER_NAMES)} counters of all {n} batches and the "
                    f"final ksm_stat of {procs} process{'es' if procs != 1 else ''} agree "
                    "(t_ms is not compared)")
        out = []
        first = self.first_batch
        if first is not None:
            out.append(f"first difference at {self.describe_batch(first)}")
            nd = len(self.batch_diffs) + len(self.only_a) + len(self.only_b)
            total = len(self.by_batch())
            out.append(f"{nd} of {total} batches differ")
        if self.only_a or self.only_b:
            out.append(f"{self.a_label} has {len(self.a)} batches, {self.b_label} {len(self.b)}")
        if self.final_diffs:
            out.append("final ksm_stat differs: " + self.describe_final())
        return "differ: " + "; ".join(out)


def _final_procs(final: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return dict((final or {}).get("processes") or {})


def compare_traces(a: Sequence[dict[str, Any]], a_final: dict[str, Any] | None,
                   b: Sequence[dict[str, Any]], b_final: dict[str, Any] | None, *,
                   a_label: str = "model", b_label: str = "kernel") -> TraceComparison:
    """Compare two traces (batch records, final record) counter by counter."""
    ra = [r for r in a if "batch" in r]
    rb = [r for r in b if "batch" in r]
    cmp = TraceComparison(ra, rb, a_final, b_final, a_label, b_label)
    ia = {r["batch"]: r for r in ra}
    ib = {r["batch"]: r for r in rb}
    for n in sorted(set(ia) | set(ib)):
        if n not in ib:
            cmp.only_a.append(n)
        elif n not in ia:
            cmp.only_b.append(n)
        else:
            diff = [c for c in COUNTER_NAMES if ia[n].get(c) != ib[n].get(c)]
            if diff:
                cmp.batch_diffs[n] = diff
    pa, pb = _final_procs(a_final), _final_procs(b_final)
    for name in list(pa) + [n for n in pb if n not in pa]:
        if name not in pa or name not in pb:
            cmp.final_diffs[name] = ["(missing)"]
            continue
        keys = [k for k in PROCESS_KEYS if pa[name].get(k) != pb[name].get(k)]
        if keys:
            cmp.final_diffs[name] = keys
    if (a_final is None) != (b_final is None):
        cmp.final_diffs.setdefault("(final record)", ["(missing)"])
    return cmp
