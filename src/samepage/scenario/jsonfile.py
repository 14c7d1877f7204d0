"""Reading untrusted JSON files (schedules, traces, and the snapshots, cost profiles and
patches of later commands) without trusting them.

``read_json_file(path)`` / ``parse_json(text, filename)`` return the parsed document or raise
one ScenarioError ``FILE: KEY: message``:

* a size cap (``max_bytes``) checked before parsing;
* a nesting-depth cap (``max_depth``) checked on the raw text before ``json.loads`` runs, so
  a document nested 100,000 deep never reaches the recursive parser;
* finite numbers only: ``NaN``, ``Infinity``, ``1e400`` (overflows to inf) and integers of
  more than 64 bits (``10**400``) are rejected with the key path where they occur;
* no duplicate keys in an object (json.loads would silently keep the last one).

``validate(model, data, filename)`` then checks the shape with a pydantic model; its first
error becomes the ScenarioError (key path and message as for scenario files).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ScenarioError, open_input

#: Default caps: far above any file samepage writes, far below what hurts.
MAX_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
#: Integers must fit in 64 bits (signed or unsigned): every kernel value does.
INT_MIN = -(2 ** 63)
INT_MAX = 2 ** 64 - 1

# A JSON string (no raw newline inside); removed before counting brackets.
_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_BRACKET = re.compile(r"[\[\]{}]")

M = TypeVar("M", bound=BaseModel)


class _Bad:
    """A number that json.loads parsed but samepage refuses (reported with its key path)."""

    __slots__ = ("text", "why")

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why


class _DupKey:
    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


def _parse_float(s: str) -> Any:
    v = float(s)
    return v if math.isfinite(v) else _Bad(s, "number out of range (not a finite double)")


def _parse_int(s: str) -> Any:
    if len(s) > 21:          # cheaper than int() on a huge digit string
        return _Bad(s, "integer out of range (more than 64 bits)")
    v = int(s)
    return v if INT_MIN <= v <= INT_MAX else _Bad(s, "integer out of range (more than 64 bits)")


def _parse_constant(s: str) -> Any:
    return _Bad(s, f"{s} is not a number samepage accepts (finite numbers only)")


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d: dict[str, Any] = {}
    for k, v in pairs:
        if k in d:
            d[k] = _DupKey(k)
        else:
            d[k] = v
    return d


def json_depth(text: str) -> int:
    """The deepest nesting of arrays/objects in ``text`` (strings ignored), without parsing."""
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub("", text)):
        if m.group() in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def key_path(parts: list[Any]) -> str:
    """``['report', 'decisions', 3, 'step']`` -> ``report.decisions[3].step``."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else ("." if out else "") + str(p)
    return out or "(top)"


def _find_bad(doc: Any) -> tuple[list[Any], str] | None:
    """The first refused value (key path, message), walking without recursion."""
    stack: list[tuple[list[Any], Any]] = [([], doc)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, _Bad):
            return path, f"{v.why} (got {v.text[:40]}{'...' if len(v.text) > 40 else ''})"
        if isinstance(v, _DupKey):
            return path, "duplicate key"
        if isinstance(v, dict):
            stack.extend((path + [k], x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((path + [i], x) for i, x in reversed(list(enumerate(v))))
    return None


def parse_json(text: str, filename: str, *, key: str | None = None,
               max_depth: int = MAX_DEPTH) -> Any:
    """Parse one JSON document (``text``) of ``filename``; ``key`` prefixes every error's key
    path (e.g. ``line 3`` for a line of a JSON Lines file)."""
    def err(where: list[Any] | str, msg: str) -> ScenarioError:
        k = where if isinstance(where, str) else key_path(where)
        if key is not None:
            k = key if k == "(top)" else f"{key}: {k}"
        return ScenarioError(filename, k, msg)

    depth = json_depth(text)
    if depth > max_depth:
        raise err("(top)", f"nested too deeply ({depth} levels of arrays/objects, at most "
                           f"{max_depth})")
    try:
        doc = json.loads(text, parse_float=_parse_float, parse_int=_parse_int,
                         parse_constant=_parse_constant, object_pairs_hook=_pairs)
    except json.JSONDecodeError as e:
        raise err("(top)", f"invalid JSON: {e.msg} (line {e.lineno} column {e.colno})") from None
    except (RecursionError, ValueError) as e:    # belt and braces: the depth cap prevents it
        raise err("(top)", f"invalid JSON: {e}") from None
    bad = _find_bad(doc)
    if bad is not None:
        raise err(bad[0], bad[1])
    return doc


def read_text_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES) -> str:
    """The UTF-8 text of ``path``, at most ``max_bytes`` bytes; failures as ScenarioError."""
    filename = os.fspath(path)
    with open_input(filename) as f:
        try:
            raw = f.read(max_bytes + 1)
        except OSError as e:
            raise ScenarioError(filename, "(file)", f"cannot read: {e.strerror or e}") from None
    if len(raw) > max_bytes:
        raise ScenarioError(filename, "(file)", f"file too large (more than {max_bytes} bytes)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(filename, "(file)", f"not valid UTF-8 (byte {e.start})") from None


def read_json_file(path: str | os.PathLike[str], *, max_bytes: int = MAX_BYTES,
                   max_depth: int = MAX_DEPTH) -> Any:
    """Read and parse the JSON file at ``path`` with the caps above."""
    filename = os.fspath(path)
    return parse_json(read_text_file(filename, max_bytes=max_bytes), filename,
                      max_depth=max_depth)


def validate(model: type[M], data: Any, filename: str, *, key: str | None = None) -> M:
    """``model.model_validate(data)``; the first error as a ScenarioError."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        from .loader import validation_to_scenario_error

        se = validation_to_scenario_error(e, filename)
        se = ScenarioError(filename, se.key, se.msg.replace("a table", "an object"))
        if key is not None:
            raise ScenarioError(filename, key if se.key == "(top)" else f"{key}: {se.key}",
                                se.msg) from None
        raise se from None
