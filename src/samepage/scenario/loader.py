"""Load a scenario TOML file into a Scenario; every failure becomes one ScenarioError.

Order of the checks (each cheap before the next): the file's size (limits.MAX_FILE_BYTES),
UTF-8, a pre-scan of the text (limits.prescan_toml), TOML, the schema (schema.py), whether
ksmd can run every batch (checks.check_runnable) and whether the model fits this machine
(limits.check_resources). ``-`` reads standard input, named ``<stdin>`` in errors.
"""

from __future__ import annotations

import difflib
import os
import re
import sys
try:
    import tomllib
except ImportError:  # Python < 3.11 (PyPy 3.9)
    import tomli as tomllib
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from .checks import check_runnable
from .errors import ScenarioError
from .limits import MAX_FILE_BYTES, check_resources, prescan_toml
from .schema import FILL_KINDS, Scenario
from .tunables import _show

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
STDIN_NAME = "<stdin>"


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate the scenario file at ``path`` (``-``: standard input);
    ``Scenario.path`` is set to it (None for standard input)."""
    filename = os.fspath(path)
    if filename == "-":
        filename = STDIN_NAME
        try:
            stream = getattr(sys.stdin, "buffer", None)
            raw = stream.read(MAX_FILE_BYTES + 1) if stream is not None else \
                sys.stdin.read(MAX_FILE_BYTES + 1)
        except (OSError, ValueError, AttributeError) as e:
            raise ScenarioError(filename, "(file)", f"cannot read: {e}") from None
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
    else:
        try:
            with open(filename, "rb") as f:
                raw = f.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise ScenarioError(filename, "(file)", "file not found") from None
        except OSError as e:
            raise ScenarioError(filename, "(file)", f"cannot read: {e.strerror or e}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ScenarioError(filename, "(file)", f"larger than {MAX_FILE_BYTES // 2**20} MiB, "
                            "the limit of a scenario file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ScenarioError(filename, "(toml)", f"not valid UTF-8 (byte {e.start})") from None
    return _load(text, filename, path=None if filename == STDIN_NAME else filename)


def load_scenario_text(text: str, filename: str = "<string>") -> Scenario:
    """Validate scenario TOML given as a string; ``filename`` only names it in errors."""
    if len(text) > MAX_FILE_BYTES:
        raise ScenarioError(filename, "(file)", f"larger than {MAX_FILE_BYTES // 2**20} MiB, "
                            "the limit of a scenario file")
    return _load(text, filename, path=None)


def _load(text: str, filename: str, path: str | None) -> Scenario:
    prescan_toml(text, filename)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(filename, "(toml)", str(e)) from None
    except RecursionError:
        raise ScenarioError(filename, "(toml)", "nested too deeply") from None
    except MemoryError:
        raise ScenarioError(filename, "(toml)", "out of memory while parsing") from None
    except ValueError as e:  # e.g. CPython's limit on the digits of an int
        raise ScenarioError(filename, "(toml)", str(e).split(";")[0]) from None
    if "path" in data:  # a Scenario field, but set by the loader, not by the file
        raise ScenarioError(filename, "path", "unknown key")
    data["path"] = path
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as e:
        raise validation_to_scenario_error(e, filename, data) from None
    except (RecursionError, MemoryError) as e:
        raise ScenarioError(filename, "(top)", f"too large to check ({type(e).__name__})") from None
    check_runnable(sc, filename=filename)
    check_resources(sc, filename)
    return sc


def validation_to_scenario_error(e: ValidationError, filename: str,
                                 data: Any = None) -> ScenarioError:
    """The first error of a pydantic ValidationError, as a ScenarioError."""
    errs = e.errors(include_url=False)
    err = errs[0]
    if err["type"] == "missing":  # a misspelt key: report it, with a suggestion, not the gap
        table = tuple(err["loc"])[:-1]
        err = next((x for x in errs if x["type"] == "extra_forbidden"
                    and tuple(x["loc"])[:-1] == table), err)
    loc = _strip_union_tags(err)
    ctx = err.get("ctx") or {}
    if err["type"] == "scenario":
        loc = loc + tuple(ctx.get("sub", ()))
    elif err["type"] == "union_tag_not_found":
        loc = loc + ("kind",)
    msg = _message(err, loc)
    if err["type"] == "extra_forbidden" and loc:
        known = known_keys(tuple(err["loc"])[:-1])
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        if near:
            msg += f' (did you mean "{near[0]}"?)'
    return ScenarioError(filename, key_path(loc), msg)


def known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The keys a scenario file may have in the table at ``loc`` (a pydantic location, with
    list indices and the fill kind's tag), by the schema's fields (their TOML spelling)."""
    models: list[type[BaseModel]] = [Scenario]
    for part in loc:
        if isinstance(part, int):
            continue
        if len(models) > 1:  # a tagged union (fill): the part is the tag
            models = [m for m in models if "kind" in m.model_fields
                      and m.model_fields["kind"].default == part]
            continue
        if not models:
            return []
        fields = models[0].model_fields
        name = next((n for n, f in fields.items() if (f.alias or n) == part), None)
        if name is None:
            return []
        models = _models_in(fields[name].annotation)
    if len(models) != 1:
        return []
    return [f.alias or n for n, f in models[0].model_fields.items()
            if not (models[0] is Scenario and n == "path")]


def _models_in(tp: Any) -> list[type[BaseModel]]:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [tp]
    out: list[type[BaseModel]] = []
    for a in get_args(tp):
        out += _models_in(a)
    return out


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
