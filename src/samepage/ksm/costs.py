"""Simulated CPU cost of ksmd's work: a cost profile, nanoseconds per operation.

ksmd's simulated CPU time (``cpu_ms`` per batch, ``t_ms`` in traces, the scan-time
advisor's CPU percentage) is the operation counts of samepage.ksm.opcounts priced by a
:class:`CostModel`: ``cpu_ns = sum(count[op] * cost[op])``.  The costs are fitted per
operation (non-negative least squares) to the per-batch CPU time of the real ksmd
(``/proc/<ksmd>/schedstat``) over a calibration suite: ``samepage kernel calibrate`` does
it on one's own machine (samepage.kernel.calibrate) and writes a profile; the shipped
default, ``samepage/data/costs-default.toml``, was fitted on the reference machine
(Linux 6.18, x86-64).  docs/cpu-model.md describes the model and its fit.

A profile file is TOML::

    [costs]                  # ns per operation, every name of opcounts.OP_NAMES (>= 0)
    batch = 4200.0
    visit = 180.0
    ...
    [meta]                   # where and when it was fitted (informative)
    kernel_release = "6.18.44"
    cpu_model = "AMD EPYC"
    date = "2025-..."
    hz = 250                 # CONFIG_HZ: ksmd's sleeps are whole jiffies
    fitted_on = ["...", ...]
    [meta.residuals]         # per phase: relative error of the fit
    ...

Only this module reads profiles (tomllib); a malformed one raises :class:`CostProfileError`
whose text is the single line ``FILE: KEY: message``.
"""

from __future__ import annotations

import math
import os
try:
    import tomllib
except ImportError:  # Python < 3.11 (PyPy 3.9)
    import tomli as tomllib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from .opcounts import N_OPS, OP_NAMES, priced

#: the name of the shipped profile in the samepage.data package
DEFAULT_PROFILE = "costs-default.toml"

# Before any fit: rough costs of the reference machine (only used if the shipped profile is
# missing, e.g. in a source tree without package data).
_FALLBACK_NS = {
    "batch": 5000.0, "visit": 180.0, "checksum": 400.0, "memcmp_stable": 120.0,
    "memcmp_unstable": 250.0, "memcmp_equal": 150.0, "chain_dup": 50.0,
    "memcmp_merge": 150.0, "merge_one": 1000.0, "merge_ksm": 300.0, "merge_pair": 600.0,
    "merge_zero": 300.0, "rmap_alloc": 80.0, "rmap_free": 80.0, "stable_node_new": 200.0,
    "stable_node_free": 100.0, "skip": 60.0, "split": 20000.0, "cow_break": 2000.0,
    "scan_start": 20000.0, "unstable_insert": 100.0, "no_page": 30.0, "visit_pmd": 180.0,
    "checksum_large": 400.0,
}


#: operations added after the first profiles: a profile without one prices it like the
#: operation it refines (what that profile's fit assumed)
_OPTIONAL_AS = {"checksum_large": "checksum"}


class CostProfileError(ValueError):
    """A malformed cost profile; ``str(e)`` is ``"{file}: {key}: {msg}"``."""

    def __init__(self, file: str, key: str, msg: str) -> None:
        self.file, self.key, self.msg = str(file), str(key), " ".join(str(msg).split())
        super().__init__(f"{self.file}: {self.key}: {self.msg}")

    def __reduce__(self):
        return (type(self), (self.file, self.key, self.msg))


@dataclass
class CostModel:
    """ns per operation (``ns[name]`` for every name of ``OP_NAMES``) plus CONFIG_HZ."""

    ns: dict[str, float] = field(default_factory=lambda: dict(_FALLBACK_NS))
    hz: int = 250                   # CONFIG_HZ of the reference kernel (4 ms jiffies)
    meta: dict[str, Any] = field(default_factory=dict)
    source: str | None = None       # the file it was read from

    def __post_init__(self) -> None:
        missing = [n for n in OP_NAMES if n not in self.ns]
        if missing:
            raise ValueError(f"no cost for {', '.join(missing)}")
        self.vector = [float(self.ns[n]) for n in OP_NAMES]

    def cpu_ns(self, counts) -> float:
        """The CPU time of ``counts`` (a list indexed by the OP_* constants)."""
        v = self.vector
        return math.fsum(c * v[i] for i, c in enumerate(priced(counts)) if c)

    def breakdown(self, counts) -> dict[str, float]:
        """ns spent per operation kind (non-zero ones only)."""
        return {n: c * self.vector[i]
                for i, (n, c) in enumerate(zip(OP_NAMES, priced(counts))) if c}

    def ksmd_sleep_ns(self, sleep_millisecs: int) -> int:
        """The real length of ksmd's sleep: msecs_to_jiffies rounds up to whole jiffies, and
        the timer fires on the tick after (measured: 150 ms sleeps last 156 ms)."""
        if sleep_millisecs <= 0:
            return 0
        jiffy_ns = 1_000_000_000 // self.hz
        jiffies = -(-sleep_millisecs * 1_000_000 // jiffy_ns)
        return (jiffies + 1) * jiffy_ns

    def as_dict(self) -> dict:
        return {"costs": dict(self.ns), "hz": self.hz, "meta": dict(self.meta)}


# ---------------------------------------------------------------------------------- files


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(round(v, 3)) if math.isfinite(v) else "0.0"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ") + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else _toml_value(str(k))


def _write_table(lines: list[str], name: str, table: dict) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    subs = {k: v for k, v in table.items() if isinstance(v, dict)}
    lines.append(f"[{name}]")
    for k, v in scalars.items():
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
    lines.append("")
    for k, v in subs.items():
        _write_table(lines, f"{name}.{_toml_key(k)}", v)


def profile_text(model: CostModel, comment: str = "") -> str:
    """The TOML text of a profile (``comment``: lines put at the top, as # comments)."""
    lines = [f"# {c}" if c else "#" for c in comment.splitlines()]
    if lines:
        lines.append("")
    lines.append("# ns of ksmd CPU time per operation (samepage.ksm.opcounts)")
    _write_table(lines, "costs", {n: float(model.ns[n]) for n in OP_NAMES})
    meta = {"hz": model.hz, **{k: v for k, v in model.meta.items() if k != "hz"}}
    _write_table(lines, "meta", meta)
    return "\n".join(lines).rstrip("\n") + "\n"


def write_profile(model: CostModel, path: str | os.PathLike[str], comment: str = "") -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(profile_text(model, comment))


#: Bounds of a cost profile's text (a real one is under 2 KiB).
MAX_PROFILE_CHARS = 256 * 1024
MAX_PROFILE_LINE = 4096
#: Largest cost of one operation (1 s): anything above is a typo, not a measurement.
MAX_OP_NS = 1e9


def parse_profile(text: str, filename: str = "<profile>") -> CostModel:
    """A CostModel from a profile's TOML text; CostProfileError if it is malformed."""
    # A profile is a few short lines: bound it before tomllib, which can take gigabytes on a
    # long dotted key and raises ValueError/RecursionError on huge integers or deep nesting.
    if len(text) > MAX_PROFILE_CHARS:
        raise CostProfileError(filename, "(file)", f"too large ({len(text)} characters; a "
                               f"profile has at most {MAX_PROFILE_CHARS})")
    for no, line in enumerate(text.splitlines(), 1):
        if len(line) > MAX_PROFILE_LINE:
            raise CostProfileError(filename, "(toml)", f"line {no} is longer than "
                                   f"{MAX_PROFILE_LINE} characters")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise CostProfileError(filename, "(toml)", str(e)) from None
    except (ValueError, RecursionError, MemoryError) as e:
        what = ("nested too deeply" if isinstance(e, RecursionError) else
                "too large" if isinstance(e, MemoryError) else
                "an integer has too many digits" if "digits" in str(e) else str(e))
        raise CostProfileError(filename, "(toml)", what) from None
    unknown = sorted(set(data) - {"costs", "meta"})
    if unknown:
        raise CostProfileError(filename, unknown[0], "unknown table (a profile has [costs] "
                               "and [meta])")
    costs = data.get("costs")
    if not isinstance(costs, dict):
        raise CostProfileError(filename, "costs", "missing [costs] table")
    ns: dict[str, float] = {}
    for name in costs:
        if name not in OP_NAMES:
            raise CostProfileError(filename, f"costs.{name}",
                                   f"unknown operation (one of {', '.join(OP_NAMES)})")
    for name in OP_NAMES:
        if name not in costs:
            if name in _OPTIONAL_AS:     # a profile older than the operation
                continue
            raise CostProfileError(filename, f"costs.{name}", "missing")
        v = costs[name]
        shown = repr(v) if len(repr(v)) <= 40 else repr(v)[:37] + "..."
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise CostProfileError(filename, f"costs.{name}", f"must be a number (got {shown})")
        # compare before float(): a huge integer does not fit a float
        if not (0 <= v <= MAX_OP_NS) or (isinstance(v, float) and not math.isfinite(v)):
            raise CostProfileError(filename, f"costs.{name}",
                                   f"must be in 0..{MAX_OP_NS:g} ns (got {shown})")
        ns[name] = float(v)
    for name, like in _OPTIONAL_AS.items():
        ns.setdefault(name, ns[like])
    meta = data.get("meta", {})
    if not isinstance(meta, dict):
        raise CostProfileError(filename, "meta", "must be a table")
    hz = meta.get("hz", 250)
    if isinstance(hz, bool) or not isinstance(hz, int) or not 1 <= hz <= 10000:
        raise CostProfileError(filename, "meta.hz", f"must be an integer in 1..10000 (got {hz!r})")
    for key in ("kernel_release", "cpu_model", "date"):
        if key in meta and not isinstance(meta[key], str):
            raise CostProfileError(filename, f"meta.{key}", "must be a string")
    return CostModel(ns=ns, hz=hz, meta={k: v for k, v in meta.items() if k != "hz"},
                     source=filename)


def load_profile(path: str | os.PathLike[str]) -> CostModel:
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise CostProfileError(filename, "(file)", "file not found") from None
    except OSError as e:
        raise CostProfileError(filename, "(file)", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CostProfileError(filename, "(file)", f"not UTF-8 text: {e.reason}") from None
    return parse_profile(text, filename)


def load_default_costs() -> CostModel:
    """The shipped profile (fitted on the reference machine)."""
    try:
        ref = resources.files("samepage.data").joinpath(DEFAULT_PROFILE)
        return parse_profile(ref.read_text(encoding="utf-8"), DEFAULT_PROFILE)
    except (FileNotFoundError, ModuleNotFoundError):
        return CostModel(meta={"note": "fallback costs: the shipped profile is missing"})


_default: CostModel | None = None


def default_costs() -> CostModel:
    global _default
    if _default is None:
        _default = load_default_costs()
    return _default


def resolve_costs(costs: "CostModel | str | os.PathLike[str] | None") -> CostModel:
    """A CostModel from a CostModel, a profile path, or None (the shipped default)."""
    if costs is None:
        return default_costs()
    if isinstance(costs, CostModel):
        return costs
    return load_profile(costs)


assert len(_FALLBACK_NS) == N_OPS
