"""The grid of a sweep: ``--grid KEY=V1,V2,...`` parsed, and one cell's values applied to a
scenario's TOML data by dotted key (``ksm.pages_to_scan``, ``model.same_folio``,
``process[1].region[0].pages``, ``policy.name``: any key of the scenario format).

A value is read as a TOML value (``100``, ``true``, ``1.5``, ``"x"``, ``[16, 64]``); anything
that is not one is a bare string (``v6.18``, ``split-retry``, ``always``). Commas inside
brackets or quotes do not split values.
"""

from __future__ import annotations

import copy
import itertools
import re
try:
    import tomllib
except ImportError:  # Python < 3.11 (PyPy 3.9)
    import tomli as tomllib
from dataclasses import dataclass
from typing import Any


class GridError(ValueError):
    """A malformed ``--grid`` (one line for the CLI)."""


#: Most cells in one sweep (a guard against a typo multiplying the grid).
MAX_CELLS = 100_000

_PART = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")


@dataclass(frozen=True)
class GridKey:
    key: str                     # as written: "ksm.pages_to_scan"
    values: tuple[Any, ...]


def split_values(text: str) -> list[str]:
    """``a,b,[1,2],"c,d"`` -> ``['a', 'b', '[1,2]', '"c,d"']``."""
    out, cur, depth, quote = [], "", 0, ""
    for ch in text:
        if quote:
            cur += ch
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    out.append(cur.strip())
    return out


def parse_value(text: str) -> Any:
    """A TOML value, or the text itself as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, ValueError, RecursionError):
        return text


def parse_path(key: str) -> list[str | int]:
    """``process[1].region[0].pages`` -> ``['process', 1, 'region', 0, 'pages']``."""
    out: list[str | int] = []
    for part in key.split("."):
        m = _PART.fullmatch(part)
        if not m:
            raise GridError(f"--grid {key}: not a dotted key (e.g. ksm.pages_to_scan, "
                            "process[0].region[0].pages)")
        out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return out


def parse_grid(specs: list[str]) -> list[GridKey]:
    keys: list[GridKey] = []
    seen: set[str] = set()
    for spec in specs:
        key, eq, vals = spec.partition("=")
        key = key.strip()
        if not eq or not key or not vals.strip():
            raise GridError(f"--grid {spec!r}: expected KEY=V1,V2,... "
                            "(e.g. ksm.pages_to_scan=100,1000)")
        parse_path(key)
        if key in seen:
            raise GridError(f"--grid {key}: given twice")
        seen.add(key)
        values = split_values(vals)
        if any(v == "" for v in values):
            raise GridError(f"--grid {spec!r}: an empty value")
        keys.append(GridKey(key, tuple(parse_value(v) for v in values)))
    n = 1
    for k in keys:
        n *= len(k.values)
    if n > MAX_CELLS:
        raise GridError(f"--grid: {n} combinations, more than {MAX_CELLS}")
    return keys


def combinations(keys: list[GridKey]) -> list[dict[str, Any]]:
    """Every combination, the last key varying fastest (one empty dict without keys)."""
    return [dict(zip((k.key for k in keys), vals))
            for vals in itertools.product(*(k.values for k in keys))]


def apply(data: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of ``data`` with each dotted key set (missing tables are created; a list
    index must exist). Raises GridError naming the key."""
    out = copy.deepcopy(data)
    for key, value in values.items():
        path = parse_path(key)
        node: Any = out
        for i, part in enumerate(path[:-1]):
            nxt = path[i + 1]
            if isinstance(part, int):
                if not isinstance(node, list) or part >= len(node):
                    raise GridError(f"--grid {key}: no entry [{part}] in the scenario")
                node = node[part]
                continue
            if not isinstance(node, dict):
                raise GridError(f"--grid {key}: {part!r} is not inside a table")
            if part not in node:
                if isinstance(nxt, int):
                    raise GridError(f"--grid {key}: the scenario has no {part!r} entries")
                node[part] = {}
            node = node[part]
        last = path[-1]
        if isinstance(last, int):
            if not isinstance(node, list) or last >= len(node):
                raise GridError(f"--grid {key}: no entry [{last}] in the scenario")
            node[last] = copy.deepcopy(value)
        else:
            if not isinstance(node, dict):
                raise GridError(f"--grid {key}: {last!r} is not inside a table")
            node[last] = copy.deepcopy(value)
    return out


def label(values: dict[str, Any]) -> str:
    """``ksm.pages_to_scan=100 model.same_folio=v6.18``."""
    return " ".join(f"{k}={show(v)}" for k, v in values.items()) or "(base)"


def show(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ",".join(show(x) for x in v) + "]"
    return str(v)
