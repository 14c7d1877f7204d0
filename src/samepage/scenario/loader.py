"""Load a scenario TOML file into a Scenario; every failure becomes one ScenarioError."""

from __future__ import annotations

import os
import re
import tomllib
from typing import Any

from pydantic import ValidationError

from .errors import ScenarioError
from .schema import FILL_KINDS, Scenario
from .tunables import _show

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate the scenario file at ``path``; ``Scenario.path`` is set to it."""
    filename = os.fspath(path)
    try:
        with open(filename, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ScenarioError(filename, "(file)", "file not found") from None
    except OSError as e:
        raise ScenarioError(filename, "(file)", f"cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(filename, "(toml)", f"not valid UTF-8 (byte {e.start})") from None
    return _load(text, filename, path=filename)


def load_scenario_text(text: str, filename: str = "<string>") -> Scenario:
    """Validate scenario TOML given as a string; ``filename`` only names it in errors."""
    return _load(text, filename, path=None)


def _load(text: str, filename: str, path: str | None) -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(filename, "(toml)", str(e)) from None
    if "path" in data:  # a Scenario field, but set by the loader, not by the file
        raise ScenarioError(filename, "path", "unknown key")
    data["path"] = path
    try:
        return Scenario.model_validate(data)
    except ValidationError as e:
        raise validation_to_scenario_error(e, filename) from None


def validation_to_scenario_error(e: ValidationError, filename: str) -> ScenarioError:
    """The first error of a pydantic ValidationError, as a ScenarioError."""
    err = e.errors(include_url=False)[0]
    loc = _strip_union_tags(err)
    ctx = err.get("ctx") or {}
    if err["type"] == "scenario":
        loc = loc + tuple(ctx.get("sub", ()))
    elif err["type"] == "union_tag_not_found":
        loc = loc + ("kind",)
    return ScenarioError(filename, key_path(loc), _message(err, loc))


def key_path(loc: tuple[Any, ...] | list[Any]) -> str:
    """``('process', 1, 'region', 0, 'pages')`` -> ``process[1].region[0].pages``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            s = str(part)
            if not _BARE_KEY.fullmatch(s):
                s = '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += ("." if out else "") + s
    return out or "(top)"


def _strip_union_tags(err: dict[str, Any]) -> tuple[Any, ...]:
    """Drop the tag pydantic inserts after ``fill`` for errors inside a fill kind."""
    loc = tuple(err["loc"])
    if err["type"].startswith("union_tag"):
        return loc
    for i, part in enumerate(loc[:-1]):
        if part == "fill" and loc[i + 1] in FILL_KINDS:
            return loc[: i + 1] + loc[i + 2 :]
    return loc


_TYPE_NAMES = {
    "int_type": "an integer",
    "bool_type": "a boolean (true or false)",
    "string_type": "a string",
    "list_type": "an array",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
}


def _dq(s: object) -> str:
    """pydantic lists choices as 'a', 'b'; show them as TOML strings "a", "b"."""
    return str(s).replace("'", '"')


def _message(err: dict[str, Any], loc: tuple[Any, ...]) -> str:
    t = err["type"]
    ctx = err.get("ctx") or {}
    inp = err.get("input")
    if t == "scenario":
        return str(ctx["msg"])
    if t == "extra_forbidden":
        return "unknown key"
    if t == "missing":
        return "missing required key"
    if t in _TYPE_NAMES:
        return f"must be {_TYPE_NAMES[t]} (got {_show(inp)})"
    if t == "greater_than_equal":
        return f"must be >= {ctx['ge']} (got {inp})"
    if t == "greater_than":
        return f"must be > {ctx['gt']} (got {inp})"
    if t == "less_than_equal":
        return f"must be <= {ctx['le']} (got {inp})"
    if t == "less_than":
        return f"must be < {ctx['lt']} (got {inp})"
    if t == "literal_error":
        return f"must be one of {_dq(ctx['expected'])} (got {_show(inp)})"
    if t == "union_tag_invalid":
        return f"unknown fill kind {_show(ctx.get('tag'))} (expected one of {_dq(ctx.get('expected_tags'))})"
    if t == "union_tag_not_found":
        return "missing required key (the fill kind: " + ", ".join(f'"{k}"' for k in FILL_KINDS) + ")"
    if t in ("too_short", "too_long"):
        lo, hi = ctx.get("min_length"), ctx.get("max_length")
        n = ctx.get("actual_length")
        if loc and loc[-1] == "range":
            return f"must be two integers [start, stop) (got {n} entries)"
        if t == "too_short" and lo == 1:
            return "must not be empty"
        if lo is not None and lo == hi:
            return f"must have exactly {lo} entries (got {n})"
        return f"must have at least {lo} entries (got {n})" if t == "too_short" else f"must have at most {hi} entries (got {n})"
    if t == "string_too_short":
        return "must not be empty"
    if t == "value_error":
        return str(ctx.get("error", err["msg"]))
    return str(err["msg"])
