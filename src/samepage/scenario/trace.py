"""Trace records (JSON Lines): one per ksmd batch, then one final per-process record.

A trace read back (``samepage compare --against``) is untrusted: every line goes through
samepage.scenario.jsonfile (depth cap, finite numbers of at most 64 bits, no duplicate keys)
and the record checks below (types and ranges); the file is capped at MAX_TRACE_BYTES.
"""

from __future__ import annotations

import json
import os
from typing import IO, Any, Iterable

from .errors import ScenarioError
from .jsonfile import parse_json, read_text_file

#: A trace file larger than this is refused (a million batches is ~300 MiB).
MAX_TRACE_BYTES = 512 * 1024 * 1024
#: t_ms beyond this (about 31 years) is not a time a trace can hold.
MAX_T_MS = 1e12
#: Longest kernel release and process name accepted.
MAX_NAME = 256

#: The /sys/kernel/mm/ksm counters of a batch record, in trace order.
COUNTER_NAMES: tuple[str, ...] = (
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "pages_scanned",
    "pages_skipped",
    "stable_node_chains",
    "stable_node_dups",
    "ksm_zero_pages",
    "general_profit",
)

#: Per-process keys of the final record, in trace order (the last two are booleans).
PROCESS_KEYS: tuple[str, ...] = (
    "ksm_rmap_items",
    "ksm_zero_pages",
    "ksm_merging_pages",
    "ksm_process_profit",
    "ksm_merge_any",
    "ksm_mergeable",
)
_PROCESS_BOOL_KEYS = ("ksm_merge_any", "ksm_mergeable")


def format_batch_record(batch: int, t_ms: float, counters: dict[str, Any]) -> dict[str, Any]:
    """The record after batch ``batch``: batch, t_ms (rounded to 3 decimals), then the 11
    counters in COUNTER_NAMES order. Extra entries of ``counters`` are ignored."""
    rec: dict[str, Any] = {"batch": int(batch), "t_ms": round(float(t_ms), 3)}
    for name in COUNTER_NAMES:
        if name not in counters:
            raise ValueError(f"missing counter {name!r}")
        rec[name] = int(counters[name])
    return rec


def format_final_record(kernel: str, processes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The last record: kernel release and, per process name, the PROCESS_KEYS values."""
    procs: dict[str, dict[str, Any]] = {}
    for name, stats in processes.items():
        out: dict[str, Any] = {}
        for key in PROCESS_KEYS:
            if key not in stats:
                raise ValueError(f"process {name!r}: missing {key!r}")
            out[key] = bool(stats[key]) if key in _PROCESS_BOOL_KEYS else int(stats[key])
        procs[str(name)] = out
    return {"final": True, "kernel": str(kernel), "processes": procs}


def write_trace_jsonl(records: Iterable[dict[str, Any]], fileobj: IO[str]) -> None:
    """Write each record as one compact JSON object per line."""
    for rec in records:
        fileobj.write(json.dumps(rec) + "\n")


def _show(v: Any) -> str:
    """A value for an error message: short, whatever the file held."""
    s = json.dumps(v) if isinstance(v, (str, int, float, bool)) or v is None else \
        ("an object" if isinstance(v, dict) else "an array" if isinstance(v, list) else repr(v))
    return s if len(s) <= 40 else s[:37] + "..."


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_batch(rec: dict[str, Any], prev: int | None) -> str | None:
    b = rec["batch"]
    if not _is_int(b) or b < 1:
        return f"batch must be an integer >= 1 (got {_show(b)})"
    if prev is not None and b <= prev:
        return f"batch {b} does not follow batch {prev}"
    t = rec.get("t_ms")
    if not (_is_int(t) or isinstance(t, float)) or not 0 <= t <= MAX_T_MS:
        return f"t_ms must be a number from 0 to {MAX_T_MS:g} (got {_show(t)})"
    for name in COUNTER_NAMES:
        if name not in rec:
            return f"missing counter {name!r}"
        if not _is_int(rec[name]):
            return f"counter {name!r} must be an integer (got {_show(rec[name])})"
    return None


def _check_final(rec: dict[str, Any]) -> str | None:
    if rec["final"] is not True:
        return f"final must be true (got {rec['final']!r})"
    if not isinstance(rec.get("kernel"), str) or len(rec["kernel"]) > MAX_NAME:
        return f"kernel must be a string of at most {MAX_NAME} characters"
    procs = rec.get("processes")
    if not isinstance(procs, dict):
        return "processes must be an object"
    for name, stats in procs.items():
        if len(name) > MAX_NAME:
            return f"a process name is longer than {MAX_NAME} characters"
        if not isinstance(stats, dict):
            return f"process {name!r} must be an object"
        for key in PROCESS_KEYS:
            if key not in stats:
                return f"process {name!r}: missing {key!r}"
            want_bool = key in _PROCESS_BOOL_KEYS
            if (isinstance(stats[key], bool) if want_bool else _is_int(stats[key])) is False:
                kind = "a boolean" if want_bool else "an integer"
                return f"process {name!r}: {key} must be {kind} (got {_show(stats[key])})"
    return None


def read_trace(path_or_file: str | os.PathLike[str] | IO[str]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Read a trace: (batch records in order, the final record or None). Blank lines are
    skipped; a malformed line raises ScenarioError with key ``line N`` (1-based)."""
    if isinstance(path_or_file, (str, os.PathLike)):
        filename = os.fspath(path_or_file)
        lines = read_text_file(filename, max_bytes=MAX_TRACE_BYTES).splitlines()
    else:
        filename = str(getattr(path_or_file, "name", "<trace>"))
        lines = path_or_file.read().splitlines()

    batches: list[dict[str, Any]] = []
    final: dict[str, Any] | None = None
    prev: int | None = None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        key = f"line {n}"
        rec = parse_json(line, filename, key=key, max_depth=4)
        if not isinstance(rec, dict):
            raise ScenarioError(filename, key, "not a JSON object")
        if final is not None:
            raise ScenarioError(filename, key, "record after the final record")
        if "batch" in rec:
            problem = _check_batch(rec, prev)
            if problem:
                raise ScenarioError(filename, key, problem)
            prev = rec["batch"]
            batches.append(rec)
        elif "final" in rec:
            problem = _check_final(rec)
            if problem:
                raise ScenarioError(filename, key, problem)
            final = rec
        else:
            raise ScenarioError(filename, key, "neither a batch record nor the final record")
    return batches, final
