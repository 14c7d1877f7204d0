"""The build step (setup.py: Cython in pure-Python mode) and the pure/compiled switch
(samepage/__init__.py: SAMEPAGE_PURE=1, stale extensions never imported).

The rest of the suite runs whatever the default import gives (compiled after `make test`'s
build step); the conformance traces are run here a second time on the pure source."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import samepage

ROOT = Path(__file__).resolve().parents[1]
PKG = Path(samepage.__file__).resolve().parent
EXT = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _setup_compiled() -> list[str]:
    """setup.py's COMPILED list, read without running setup()."""
    src = (ROOT / "setup.py").read_text()
    start = src.index("COMPILED = [")
    return [line.strip().strip('",') for line in src[start:src.index("]", start)].splitlines()[1:]
            if line.strip().startswith('"')]


def _built() -> bool:
    return (PKG / "_compiled.json").exists() and any(PKG.rglob("*" + EXT[0]))


def _py(code: str, env: dict | None = None, cwd: Path | None = None) -> str:
    e = {k: v for k, v in os.environ.items() if k != "SAMEPAGE_PURE"}
    e.update(env or {})
    r = subprocess.run([sys.executable, "-c", code], env=e, cwd=cwd or ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


REPORT = ("import json, importlib, samepage\n"
          "mods = {m: importlib.import_module(m).__file__ for m in %r}\n"
          "print(json.dumps({'build': samepage.BUILD, 'files': mods}))")


def _report(mods: list[str], env: dict | None = None, pythonpath: Path | None = None) -> dict:
    env = dict(env or {})
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return json.loads(_py(REPORT % (mods,), env))


def test_setup_lists_real_modules_and_the_frame_attributed_ones_stay_python():
    mods = _setup_compiled()
    assert mods, "setup.py compiles nothing"
    for m in mods:
        assert (ROOT / "src" / Path(*m.split("."))).with_suffix(".py").exists(), m
    # the sanitizer names model functions from Python frames (see setup.py)
    for m in ("samepage.ksm.ksm", "samepage.mm.mm", "samepage.mm.folio"):
        assert m not in mods


@pytest.mark.skipif(os.environ.get("SAMEPAGE_NO_COMPILE") == "1", reason="built without extensions")
def test_default_import_is_compiled_after_the_build():
    if not _built():
        pytest.fail("no extensions built: run `make build` (or pip install -e .)")
    mods = _setup_compiled()
    rep = _report(mods)
    assert rep["build"] == "compiled", rep["build"] + " -- rebuild with `make build`"
    for m, f in rep["files"].items():
        assert f.endswith(EXT), (m, f)
    # compiled functions, but classes stay ordinary Python classes: methods can be replaced
    out = _py("import samepage.ksm.rbtree as r, samepage.ksm.structs as s\n"
              "print(type(r.rb_insert_color).__name__)\n"
              "s.RmapItem.__repr__ = lambda self: 'patched'\n"
              "print(repr(s.RmapItem(None, 0)), type(s.RmapItem) is type)")
    assert out.split() == ["cython_function_or_method", "patched", "True"]


def test_pure_switch_imports_the_sources():
    mods = _setup_compiled()
    rep = _report(mods, {"SAMEPAGE_PURE": "1"})
    assert rep["build"] == "pure"
    for m, f in rep["files"].items():
        assert f.endswith(".py"), (m, f)
    r = subprocess.run([sys.executable, "-c", "from samepage.cli.main import app; app()",
                        "--version"],
                       env={**os.environ, "SAMEPAGE_PURE": "1"}, capture_output=True, text=True)
    assert r.returncode == 0 and "pure" in r.stdout, (r.stdout, r.stderr)


def test_an_extension_older_than_its_source_is_not_imported(tmp_path):
    if not _built():
        pytest.skip("no extensions built")
    mods = _setup_compiled()
    copy = tmp_path / "samepage"
    shutil.copytree(PKG, copy, ignore=shutil.ignore_patterns("__pycache__"))
    edited = mods[0]
    py = (tmp_path / Path(*edited.split("."))).with_suffix(".py")
    py.write_text(py.read_text() + "\nEDITED_AFTER_THE_BUILD = True\n")
    rep = _report(mods, pythonpath=tmp_path)
    assert rep["build"].startswith("partly compiled") and edited in rep["build"]
    assert rep["files"][edited] == str(py)
    for m in mods[1:]:
        assert rep["files"][m].endswith(EXT), m
    assert _py(f"import {edited} as m; print(m.EDITED_AFTER_THE_BUILD)",
               {"PYTHONPATH": str(tmp_path)}).strip() == "True"
    # and with no record of what was built, no extension is trusted
    (copy / "_compiled.json").unlink()
    rep = _report(mods, pythonpath=tmp_path)
    assert all(f.endswith(".py") for f in rep["files"].values()), rep


def test_conformance_traces_on_the_pure_source():
    """The 77 recorded kernel traces, reproduced by the uncompiled source."""
    code = ("import sys, pytest, samepage\n"
            "assert samepage.BUILD == 'pure', samepage.BUILD\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', "
            "'reproduces_kernel_trace', 'tests/conformance/test_conformance.py']))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "SAMEPAGE_PURE": "1", "SAMEPAGE_LIVE": "0"},
                       timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 77, summary
