"""The same sources on PyPy (``make pypy``: Debian's pypy3, Python 3.9, in .venv-pypy).

The recorded kernel traces must reproduce there too, and the benchmark workload must end
every phase with the counters CPython gives.  Skipped when .venv-pypy is missing, unless
SAMEPAGE_REQUIRE_PYPY=1 (set by .ci/run, which builds it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPY = Path(os.environ.get("SAMEPAGE_PYPY", ROOT / ".venv-pypy" / "bin" / "python"))

if not PYPY.exists():
    if os.environ.get("SAMEPAGE_REQUIRE_PYPY") == "1":
        raise RuntimeError(f"{PYPY} is missing: `make pypy` builds it")
    pytest.skip(f"no PyPy environment ({PYPY}; `make pypy`)", allow_module_level=True)


def _env() -> dict:
    return {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SAMEPAGE_PURE")},
            "SAMEPAGE_LIVE": "0"}


def test_pypy_imports_the_sources():
    r = subprocess.run([str(PYPY), "-c", "import samepage, json; print(json.dumps("
                        "[samepage.INTERPRETER, samepage.BUILD, samepage.__file__]))"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    interp, build, path = json.loads(r.stdout)
    assert interp.startswith("pypy ") and build == "pure"
    assert Path(path).resolve() == ROOT / "src" / "samepage" / "__init__.py"


def test_conformance_traces_on_pypy():
    """The 77 recorded kernel traces, reproduced by the same source on PyPy."""
    code = ("import sys, pytest\n"
            "sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', '-k', "
            "'reproduces_kernel_trace and not no-ff', 'tests/conformance/test_conformance.py']))")
    r = subprocess.run([str(PYPY), "-c", code], cwd=ROOT, capture_output=True, text=True,
                       env=_env(), timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    summary = r.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary, summary
    assert int(summary.split(" passed")[0].split()[-1]) >= 77, summary


def _scan_rate(python: str) -> dict:
    r = subprocess.run([python, str(ROOT / "benchmarks" / "scan_rate.py"), "--pages", "8192",
                        "--steady-scans", "3", "--json"],
                       cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def test_benchmark_counters_equal_on_cpython_and_pypy():
    cp, pp = _scan_rate(sys.executable), _scan_rate(str(PYPY))
    assert pp["interpreter"].startswith("pypy") and not cp["interpreter"].startswith("pypy")
    assert set(cp["counters"]) == {"scan1", "merge", "steady", "unique"}
    assert cp["counters"] == pp["counters"]
    assert cp["counters"]["unique"]["pages_unshared"] == 8192
