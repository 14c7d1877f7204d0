"""samepage: an executable model of Linux 6.18 KSM (mm/ksm.c) and tools around it.

Layers (imports only go downwards):
  samepage.mm        -- the memory manager: folios, address spaces, page tables, faults
  samepage.ksm       -- the KSM engine (depends only on samepage.mm)
  samepage.machine   -- the Python API: a machine with processes and ksmd
  samepage.scenario  -- scenario files, the model runner, traces
  samepage.kernel    -- the live-kernel harness
  samepage.cli       -- the command line and reports
"""

KERNEL_RELEASE_MODELLED = "6.18"
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Machine", "Process", "SyscallError"):
        from samepage import machine
        return getattr(machine, name)
    raise AttributeError(name)


# -- compiled or pure ---------------------------------------------------------------------
# The build step (setup.py) compiles the hot modules of samepage.mm and samepage.ksm with
# Cython from the same .py files.  SAMEPAGE_PURE=1 imports the .py sources even where
# extensions exist (debugging, tracing, coverage).  An extension whose source (.py/.pxd)
# changed since it was built is never used: the edited source runs instead.
import hashlib as _hashlib
import importlib.machinery as _machinery
import importlib.util as _util
import json as _json
import os as _os
import sys as _sys

_HERE = _os.path.dirname(_os.path.abspath(__file__))


def _source_digest(base: str) -> str:
    h = _hashlib.sha256()
    for suffix in (".py", ".pxd"):
        try:
            with open(base + suffix, "rb") as f:
                h.update(f.read())
        except FileNotFoundError:
            pass
    return h.hexdigest()


def _load_manifest() -> dict:
    try:
        with open(_os.path.join(_HERE, "_compiled.json")) as f:
            m = _json.load(f)
        return m if isinstance(m, dict) else {}
    except (OSError, ValueError):
        return {}


def _extension_path(base: str) -> "str | None":
    for suffix in _machinery.EXTENSION_SUFFIXES:
        if _os.path.exists(base + suffix):
            return base + suffix
    return None


_PURE = _os.environ.get("SAMEPAGE_PURE", "") not in ("", "0")
_MANIFEST = _load_manifest()
_COMPILED: dict = {}          # module -> path of the extension that is used
_STALE: list = []             # modules whose extension is older than their source


def _decide(fullname: str) -> None:
    base = _os.path.join(_HERE, *fullname.split(".")[1:])
    so = _extension_path(base)
    if so is None or _PURE:
        return
    if _MANIFEST.get(fullname) == _source_digest(base):
        _COMPILED[fullname] = so
    else:
        _STALE.append(fullname)


for _name in sorted(_MANIFEST):
    if _name.startswith("samepage."):
        _decide(_name)
# any extension not in the manifest (or a manifest entry without one) counts as stale
for _dirpath, _dirs, _files in _os.walk(_HERE):
    for _f in _files:
        for _sfx in _machinery.EXTENSION_SUFFIXES:
            if _f.endswith(_sfx):
                _mod = "samepage." + ".".join(
                    _os.path.relpath(_os.path.join(_dirpath, _f[:-len(_sfx)]), _HERE).split(_os.sep))
                if _mod not in _COMPILED and _mod not in _STALE and not _PURE:
                    _STALE.append(_mod)
                break

BUILD = ("pure" if _PURE or not _COMPILED else "compiled" if not _STALE
         else "partly compiled (source newer than the build: " + ", ".join(sorted(_STALE)) + ")")
"""``"compiled"`` when the Cython extensions run, ``"pure"`` for the .py sources."""
INTERPRETER = (f"{_sys.implementation.name} "
               f"{'.'.join(map(str, _sys.version_info[:3]))}")
"""``"cpython 3.11.7"``, ``"pypy 3.9.16"``: the same sources run on both (see README,
"PyPy"); the extensions are CPython's only, so PyPy always runs the .py sources."""


class _SourceOrExtensionFinder:
    """For samepage's own modules that have an extension: the extension if it was built from
    the current source and SAMEPAGE_PURE is not set, the .py source otherwise."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        if not fullname.startswith("samepage.") or fullname in _COMPILED:
            return None                       # the default finders take the extension
        base = _os.path.join(_HERE, *fullname.split(".")[1:])
        if _extension_path(base) is None or not _os.path.exists(base + ".py"):
            return None
        return _util.spec_from_file_location(fullname, base + ".py")

    @staticmethod
    def invalidate_caches():
        pass


if _PURE or _STALE:
    _sys.meta_path.insert(0, _SourceOrExtensionFinder)
