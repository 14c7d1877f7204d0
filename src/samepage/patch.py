"""Patch files (``samepage run|explore|compare --patch FILE.py``): a change to mm/ksm.c or
the memory manager, written in Python, applied for one run.

A patch file's top-level functions replace the methods of the same name of the KSM engine
(``samepage.ksm.ksm.Ksm``) or the memory manager (``samepage.mm.mm.MM``,
``samepage.mm.folio.Memory``), e.g. ``def try_to_merge_with_zero_page(ksm, rmap_item, page)``
replaces ``Ksm.try_to_merge_with_zero_page``.  The object comes first; then the same number
and kind of parameters (the names may differ, as the kernel's ``rmap_item`` for the model's
``item``, except parameters with a default value, which callers may pass by name).  The kernel
names of the private functions work: ``__ksm_enter`` replaces ``Ksm._Ksm__ksm_enter``.  A
name that two classes have (``split_huge_page``: Ksm and Memory) is resolved by the first
parameter's name (``ksm``; ``mem``/``memory``; ``mm``).  Names starting with ``_`` that no
class has are the patch's own helpers.

The file may also register same-folio strategies (``samepage.ksm.same_folio``): a
``STRATEGIES = {"name": function}`` dict, or the ``same_folio_strategy("name")`` decorator
of this module.  Patched code declares preemption points for the explorer by calling
``ksm.preempt("name")``: while a patch is applied, ``Ksm.preempt`` is a no-op callable when
not exploring (the engine's own points keep their ``is not None`` test).

Errors are ``PatchError``, one line ``FILE: KEY: message`` (``line N`` for a syntax error or
an exception while the file is executed).
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import hashlib
import importlib.util
import inspect
import os
import sys
import traceback
from collections.abc import Callable, Iterator

from samepage.ksm.ksm import Ksm
from samepage.mm.folio import Memory
from samepage.mm.mm import MM

#: the classes a patch may change, with the first-parameter names that select each
TARGETS: tuple[tuple[type, tuple[str, ...]], ...] = (
    (Ksm, ("ksm", "self")),
    (MM, ("mm",)),
    (Memory, ("mem", "memory")),
)
MAX_PATCH_BYTES = 1 << 20

_active: list[str] = []          # paths of the applied patches (for subprocesses)


class PatchError(ValueError):
    """A patch file that cannot be applied: ``str(e)`` is ``FILE: KEY: message``."""

    def __init__(self, file: str, key: str, msg: str):
        self.file, self.key, self.msg = str(file), key, msg
        super().__init__(f"{self.file}: {key}: {msg}")


def same_folio_strategy(name: str) -> Callable:
    """Decorator: register the function as the same-folio strategy ``name`` for the run."""
    def mark(fn):
        fn.__samepage_strategy__ = name
        return fn
    return mark


class _NoPreempt:
    """``Ksm.preempt`` during a patched run that is not being explored: a no-op."""

    __slots__ = ()

    def __call__(self, name: str) -> None:
        return None

    def __repr__(self) -> str:
        return "<no preemption: not exploring>"


NO_PREEMPT = _NoPreempt()


def _class_attr_name(cls: type, name: str) -> str:
    """The attribute a kernel name is stored under (``__ksm_enter`` -> ``_Ksm__ksm_enter``)."""
    if name.startswith("__") and not name.endswith("__"):
        return f"_{cls.__name__.lstrip('_')}{name}"
    return name


def _fmt_params(params) -> str:
    def one(p):
        star = "*" if p.kind is p.VAR_POSITIONAL else "**" if p.kind is p.VAR_KEYWORD else ""
        return star + p.name + ("" if p.default is p.empty else f"={p.default!r}")
    return "(" + ", ".join(one(p) for p in params) + ")"


class Patch:
    """A loaded, checked patch file: ``replacements`` [(class, attribute, new value)] and
    ``strategies`` {name: function}.  ``applied()`` installs them for a ``with`` block."""

    def __init__(self, path: str):
        self.path = str(path)
        self.replacements: list[tuple[type, str, object]] = []
        self.strategies: dict[str, Callable] = {}
        self.module = None
        self._load()

    # -- loading ----------------------------------------------------------------------------
    def _error(self, key: str, msg: str) -> PatchError:
        return PatchError(self.path, key, msg)

    def _load(self) -> None:
        path = self.path
        try:
            with open(path, "rb") as f:
                source = f.read(MAX_PATCH_BYTES + 1)
        except OSError as e:
            raise self._error("(file)", e.strerror or str(e)) from None
        if len(source) > MAX_PATCH_BYTES:
            raise self._error("(file)", f"larger than {MAX_PATCH_BYTES} bytes")
        try:
            code = compile(source, path, "exec", dont_inherit=True)
        except SyntaxError as e:
            raise self._error(f"line {e.lineno or 0}", f"SyntaxError: {e.msg}") from None
        except ValueError as e:                      # e.g. null bytes
            raise self._error("(file)", str(e)) from None
        self._check_identity(source)
        name = "samepage_patch_" + hashlib.sha256(
            os.path.abspath(path).encode() + source).hexdigest()[:16]
        spec = importlib.util.spec_from_loader(name, loader=None, origin=path)
        mod = importlib.util.module_from_spec(spec)
        mod.__file__ = path
        try:
            exec(code, mod.__dict__)
        except Exception as e:
            line = 0
            for fr in traceback.extract_tb(e.__traceback__):
                if fr.filename == path:
                    line = fr.lineno or 0
            raise self._error(f"line {line}", f"{type(e).__name__}: {e}") from None
        sys.modules.setdefault(name, mod)            # pickling and tracebacks find it
        self.module = mod
        self._collect(mod)

    def _check_identity(self, source: bytes) -> None:
        """Folios and rmap_items are handles made on access (README, "Memory per page"):
        ``folio is tree_folio`` is never true between two lookups of one folio, so a patch
        that compares them with ``is`` would silently take the other branch.  Refused."""
        for node in ast.walk(ast.parse(source)):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for k, op in enumerate(node.ops):
                if not isinstance(op, (ast.Is, ast.IsNot)):
                    continue
                pair = operands[k:k + 2]
                if any(isinstance(o, ast.Constant) for o in pair):
                    continue                          # x is None: fine
                if any(_handle_name(o) for o in pair):
                    word = "is" if isinstance(op, ast.Is) else "is not"
                    raise self._error(
                        f"line {node.lineno}",
                        f"'{ast.unparse(pair[0])} {word} {ast.unparse(pair[1])}': folios and "
                        f"rmap_items are handles, compare them with "
                        f"{'==' if word == 'is' else '!='}")

    def _collect(self, mod) -> None:
        strategies = getattr(mod, "STRATEGIES", None)
        if strategies is not None:
            if not isinstance(strategies, dict) or not all(
                    isinstance(k, str) and k and callable(v) for k, v in strategies.items()):
                raise self._error("STRATEGIES", "must be a dict of name -> function")
            self.strategies.update(strategies)
        for attr, fn in vars(mod).items():
            if not inspect.isfunction(fn) or fn.__module__ != mod.__name__:
                continue                              # imported, not the patch's own
            tag = getattr(fn, "__samepage_strategy__", None)
            if tag is not None:
                self.strategies[tag] = fn
                continue
            if fn in self.strategies.values():
                continue
            self._add_method(attr, fn)
        for name, fn in self.strategies.items():
            self._check_strategy(name, fn)

    def _check_strategy(self, name: str, fn) -> None:
        try:
            sig = inspect.signature(fn)
            sig.bind(None, None, 0)
        except (TypeError, ValueError):
            raise self._error(f"STRATEGIES.{name}",
                              f"a strategy is (ksm, rmap_item, page), not "
                              f"{getattr(fn, '__name__', fn)}{_sig_text(fn)}") from None

    def _add_method(self, name: str, fn) -> None:
        found = []
        for cls, selectors in TARGETS:
            attr = _class_attr_name(cls, name)
            if attr in _all_attrs(cls):
                found.append((cls, attr, selectors))
        if not found:
            if name.startswith("_"):
                return                                # the patch's own helper
            raise self._error(name, "no such method of the engine or the memory manager"
                              + _did_you_mean(name))
        params = list(inspect.signature(fn).parameters.values())
        if len(found) > 1:
            first = params[0].name if params else ""
            pick = [f for f in found if first in f[2]]
            if len(pick) != 1:
                names = " and ".join(f"{c.__name__}.{name}" for c, _, _ in found)
                hint = ", ".join(f"{sel[0]} for {c.__name__}" for c, _, sel in found)
                raise self._error(name, f"ambiguous: {names}; name the first parameter "
                                        f"{hint}")
            found = pick
        cls, attr, _ = found[0]
        orig = inspect.getattr_static(cls, attr)
        if isinstance(orig, property):
            raise self._error(name, f"{cls.__name__}.{name} is a property, not a method")
        static = isinstance(orig, staticmethod)
        if isinstance(orig, (staticmethod, classmethod)):
            orig_fn = orig.__func__
        else:
            orig_fn = orig
        if not callable(orig_fn):
            raise self._error(name, f"{cls.__name__}.{name} is not a method")
        try:
            oparams = list(inspect.signature(orig_fn).parameters.values())
        except (TypeError, ValueError):
            raise self._error(name, f"{cls.__name__}.{name} cannot be replaced") from None
        if not _compatible(params, oparams, static):
            raise self._error(name, f"signature {_fmt_params(params)} differs from "
                                    f"{cls.__name__}.{name}{_fmt_params(oparams)}")
        new = staticmethod(fn) if static else fn
        self.replacements.append((cls, attr, new))
        # aliases of the same function (ksm_enter = __ksm_enter) follow it
        for other, value in list(vars(cls).items()):
            if other != attr and value is orig:
                self.replacements.append((cls, other, new))

    # -- applying ---------------------------------------------------------------------------
    @contextlib.contextmanager
    def applied(self) -> Iterator["Patch"]:
        """Install the replacements and strategies; restore everything on exit."""
        from samepage.ksm import same_folio
        saved: list[tuple[type, str, object, bool]] = []
        strat_saved = dict(same_folio.STRATEGIES)
        preempt_saved = ("preempt" in vars(Ksm), vars(Ksm).get("preempt"))
        try:
            for cls, attr, new in self.replacements:
                had = attr in vars(cls)
                saved.append((cls, attr, vars(cls).get(attr), had))
                setattr(cls, attr, new)
            same_folio.STRATEGIES.update(self.strategies)
            Ksm.preempt = NO_PREEMPT        # the class default: callable, explored or not
            _active.append(os.path.abspath(self.path))
            yield self
        finally:
            for cls, attr, old, had in reversed(saved):
                if had:
                    setattr(cls, attr, old)
                else:
                    with contextlib.suppress(AttributeError):
                        delattr(cls, attr)
            same_folio.STRATEGIES.clear()
            same_folio.STRATEGIES.update(strat_saved)
            if preempt_saved[0]:
                Ksm.preempt = preempt_saved[1]
            else:
                with contextlib.suppress(AttributeError):
                    del Ksm.preempt
            with contextlib.suppress(ValueError):
                _active.remove(os.path.abspath(self.path))

    def describe(self) -> list[str]:
        out = [f"{cls.__name__}.{attr}" for cls, attr, _ in self.replacements]
        out += [f"same-folio strategy {n}" for n in self.strategies]
        return out


def _handle_name(node) -> bool:
    """An operand named like a folio or an rmap_item (``folio``, ``tree_folio``,
    ``rmap_item``, ``item``, ``ksm.ff_reinsert`` is not)."""
    name = node.attr if isinstance(node, ast.Attribute) else \
        node.id if isinstance(node, ast.Name) else ""
    name = name.lower()
    return name.endswith("folio") or name == "item" or name.endswith("_item")


def load_patch(path: str) -> Patch:
    """Load and check a patch file (PatchError if it cannot be applied)."""
    return Patch(path)


def active_patches() -> list[str]:
    """Absolute paths of the patches applied now, outermost first: what a subprocess must
    load (``load_patch(p).applied()``) to run the same code."""
    return list(_active)


# ------------------------------------------------------------------------------ helpers


def _all_attrs(cls: type) -> set[str]:
    out: set[str] = set()
    for c in cls.__mro__:
        if c is object:
            continue
        out.update(vars(c))
    return out


def _method_names() -> list[str]:
    names = []
    for cls, _ in TARGETS:
        prefix = f"_{cls.__name__}__"
        for a in _all_attrs(cls):
            if a.startswith("__") and a.endswith("__"):
                continue
            names.append("__" + a[len(prefix):] if a.startswith(prefix) else a)
    return names


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, sorted(set(_method_names())), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def _sig_text(fn) -> str:
    try:
        return str(inspect.signature(fn))
    except (TypeError, ValueError):
        return "(...)"


def _compatible(params, oparams, static: bool) -> bool:
    """Same count and kinds after the object; a parameter with a default keeps its name."""
    if not static:
        if not params or not oparams:
            return False
        if params[0].kind not in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD):
            return False
        params, oparams = params[1:], oparams[1:]
    if len(params) != len(oparams):
        return False
    for p, o in zip(params, oparams):
        if p.kind != o.kind:
            return False
        if (o.default is not o.empty or o.kind is o.KEYWORD_ONLY) and p.name != o.name:
            return False
        if o.default is not o.empty and p.default is p.empty:
            return False
    return True
