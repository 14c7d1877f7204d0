"""Build step: the hot modules of the model compiled by Cython in pure-Python mode.

The .py files stay the one source of semantics: Cython compiles them as they are (regular
Python classes, so methods can still be replaced by assignment), with C types only from the
augmenting .pxd files beside them.  SAMEPAGE_PURE=1 runs the .py sources instead (see
samepage/__init__.py); SAMEPAGE_NO_COMPILE=1 builds without extensions.
"""

import hashlib
import json
import os
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

# The modules compiled, by dotted name (their .py and .pxd live under src/).
COMPILED = [
    "samepage.mm.content",
    "samepage.ksm.structs",
    "samepage.ksm.rbtree",
    "samepage.ksm.checksum",
]
# Left as Python: compiled functions have no Python frames, and the sanitizer names the model
# function behind each folio operation from the frame stack (sys._getframe), so compiling
# these would make its reports name the wrong function.  SAMEPAGE_COMPILE_ALL=1 compiles
# them too (for measurement; tests/test_sanitizer.py then fails).
FRAME_ATTRIBUTED = [
    "samepage.mm.folio",
    "samepage.mm.mm",
    "samepage.mm.huge",
    "samepage.ksm.ksm",
    "samepage.ksm.same_folio",
]
if os.environ.get("SAMEPAGE_COMPILE_ALL"):
    COMPILED += FRAME_ATTRIBUTED

DIRECTIVES = {
    "language_level": 3,
    "binding": True,              # methods are ordinary descriptors: replaceable, introspectable
    "annotation_typing": False,   # annotations stay documentation; C types come from .pxd only
    "embedsignature": True,
    "always_allow_keywords": True,
}

HERE = Path(__file__).parent
MANIFEST = HERE / "src" / "samepage" / "_compiled.json"


def source_digest(mod: str) -> str:
    """sha256 of a module's .py and .pxd: the import check compares it with the source."""
    base = HERE / "src" / Path(*mod.split("."))
    h = hashlib.sha256()
    for suffix in (".py", ".pxd"):
        p = base.with_suffix(suffix)
        h.update(p.read_bytes() if p.exists() else b"")
    return h.hexdigest()


class BuildExtWithManifest(build_ext):
    """build_ext that also records the digest of each compiled source (samepage._compiled.json)
    so that an edited .py is never shadowed by a stale extension."""

    def run(self):
        before = DIGESTS
        super().run()
        # a source edited while the build ran is not recorded: its extension is stale
        manifest = {m: d for m, d in before.items() if source_digest(m) == d}
        text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
        # in place: `setup.py build_ext --inplace`, or pip's editable install (PEP 660)
        targets = [MANIFEST] if self.inplace or getattr(self, "editable_mode", False) else []
        if not self.inplace and self.build_lib:
            targets.append(Path(self.build_lib) / "samepage" / "_compiled.json")
        for t in targets:
            t.parent.mkdir(parents=True, exist_ok=True)
            t.write_text(text)


# taken before cythonize reads the sources
DIGESTS = {m: source_digest(m) for m in COMPILED}


def extensions():
    if os.environ.get("SAMEPAGE_NO_COMPILE"):
        return []
    from Cython.Build import cythonize
    from setuptools import Extension
    exts = [Extension(m, [str(Path("src", *m.split(".")).with_suffix(".py"))]) for m in COMPILED]
    return cythonize(exts, compiler_directives=DIRECTIVES, build_dir="build/cython",
                     quiet=True, nthreads=os.cpu_count() or 1)


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtWithManifest})
