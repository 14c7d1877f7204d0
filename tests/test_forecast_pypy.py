"""``samepage forecast --engine pypy``: the model run on PyPy (samepage.forecast.worker) gives
the same forecast as on CPython; a missing PyPy is one line and exit status 2."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage.cli.main import app
from test_forecast import _workers

ROOT = Path(__file__).resolve().parent.parent
PYPY = Path(os.environ.get("SAMEPAGE_PYPY", ROOT / ".venv-pypy" / "bin" / "python"))
needs_pypy = pytest.mark.skipif(
    not PYPY.exists() and os.environ.get("SAMEPAGE_REQUIRE_PYPY") != "1",
    reason=f"no PyPy environment ({PYPY}; `make pypy`)")


def _forecast(runner, *args):
    return runner.invoke(app, ["forecast", *map(str, args)])


@needs_pypy
def test_pypy_engine_gives_the_cpython_forecast(tmp_path):
    runner = CliRunner()
    snap = _workers(tmp_path, n=3, pages=400, distinct=60, volatile=20, samples=3)
    args = [snap, "--set", "pages_to_scan=300", "--until", "6", "--json"]
    cp = _forecast(runner, *args)
    pp = _forecast(runner, *args, "--engine", "pypy")
    assert cp.exit_code == 0, cp.output
    assert pp.exit_code == 0, pp.output
    a, b = json.loads(cp.stdout), json.loads(pp.stdout)
    assert a == b
    assert a["final"]["pages_sharing"] > 0 and len(a["scans"]) == 6


@needs_pypy
def test_pypy_engine_report_names_the_interpreter(tmp_path):
    snap = _workers(tmp_path, n=2, pages=200, distinct=30)
    r = _forecast(CliRunner(), snap, "--until", "3", "--engine", "pypy")
    assert r.exit_code == 0, r.output
    assert "on pypy 3." in r.stdout
    assert "mergeable pages" in r.stdout


def test_missing_pypy_is_one_line_exit_2(tmp_path, monkeypatch):
    snap = _workers(tmp_path, n=1, pages=50, distinct=10)
    monkeypatch.setenv("SAMEPAGE_PYPY", str(tmp_path / "no-such-pypy"))
    r = _forecast(CliRunner(), snap, "--engine", "pypy")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and "SAMEPAGE_PYPY" in r.stderr, r.stderr


def test_engine_name_is_checked(tmp_path):
    snap = _workers(tmp_path, n=1, pages=50, distinct=10)
    r = _forecast(CliRunner(), snap, "--engine", "jython")
    assert r.exit_code == 2 and "cpython or pypy" in r.stderr


@needs_pypy
@pytest.mark.parametrize("max_cpu", ["5", "0.001"])
def test_pypy_engine_recommends_what_cpython_does(tmp_path, max_cpu):
    runner = CliRunner()
    snap = _workers(tmp_path, n=2, pages=300, distinct=40)
    args = [snap, "--recommend", "--within", "20s", "--max-cpu", max_cpu]
    cp = _forecast(runner, *args, "--json")
    pp = _forecast(runner, *args, "--json", "--engine", "pypy")
    assert cp.exit_code == pp.exit_code, (cp.output, pp.output)
    assert json.loads(cp.stdout) == json.loads(pp.stdout)
    assert len(json.loads(cp.stdout)["tried"]) >= 1
    text_cp, text_pp = _forecast(runner, *args), _forecast(runner, *args, "--engine", "pypy")
    assert text_cp.stdout == text_pp.stdout and text_cp.exit_code == text_pp.exit_code


def test_progress_line_per_full_scan_and_cleared(tmp_path):
    import io

    from samepage.capture import load_snapshot
    from samepage.forecast import build_machine, parse_until, simulate
    from samepage.forecast.run import StderrProgress

    buf = io.StringIO()
    prog = StderrProgress(buf)
    built = build_machine(load_snapshot(_workers(tmp_path, n=2, pages=100, distinct=20)))
    simulate(built, parse_until("3"), progress=prog.scan)
    prog.done()
    text = buf.getvalue()
    assert text.count("\r\x1b[K") == 4                 # 3 full scans, then cleared
    assert "forecast: full scan 3," in text and "pages_sharing" in text
    assert text.endswith("\r\x1b[K")


@needs_pypy
def test_pypy_worker_shows_progress_when_asked(tmp_path):
    from samepage.forecast.worker import run_forecast

    snap = _workers(tmp_path, n=2, pages=100, distinct=20)
    import contextlib
    import io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ans = run_forecast({"snapshot": str(snap), "tunables": {}, "until": "2",
                            "progress": True}, python=PYPY)
    assert ans["doc"]["scans"][-1]["full_scans"] == 2
    assert "forecast: full scan 2," in err.getvalue()


def test_a_slow_cpython_forecast_suggests_pypy(tmp_path, monkeypatch):
    import samepage.cli.forecast as cli_forecast

    snap = _workers(tmp_path, n=1, pages=50, distinct=10)
    r = _forecast(CliRunner(), snap, "--until", "2")
    assert r.exit_code == 0 and "--engine pypy" not in r.stdout
    monkeypatch.setattr(cli_forecast, "SLOW_FORECAST_S", 0.0)
    r = _forecast(CliRunner(), snap, "--until", "2")
    assert r.exit_code == 0 and "--engine pypy runs the same model" in r.stdout
    r = _forecast(CliRunner(), snap, "--until", "2", "--json")
    assert "--engine pypy" not in r.stdout            # the JSON stays one object


@needs_pypy
def test_auto_engine_takes_pypy_for_large_snapshots_only(tmp_path, monkeypatch):
    """--engine auto (the default): CPython below AUTO_PYPY_PAGES present pages, PyPy from
    there when it is set up (the same JSON), CPython when it is not."""
    import samepage.cli.forecast as cli_forecast
    import samepage.forecast.worker as worker

    snap = _workers(tmp_path, n=2, pages=100, distinct=20)
    calls = []
    real = worker.run_forecast

    def spy(req, python=None):
        calls.append(req)
        return real(req, python)

    monkeypatch.setattr(worker, "run_forecast", spy)
    args = [snap, "--until", "3", "--json"]
    small = _forecast(CliRunner(), *args)
    assert small.exit_code == 0, small.output
    assert calls == []                                # 200 pages: CPython
    monkeypatch.setattr(cli_forecast, "AUTO_PYPY_PAGES", 150)
    large = _forecast(CliRunner(), *args)
    assert large.exit_code == 0, large.output
    assert len(calls) == 1                            # PyPy, and the same forecast
    assert json.loads(large.stdout) == json.loads(small.stdout)
    monkeypatch.setenv("SAMEPAGE_PYPY", str(tmp_path / "no-such-pypy"))
    missing = _forecast(CliRunner(), *args)
    assert missing.exit_code == 0 and len(calls) == 1  # no PyPy: CPython, no error
    assert json.loads(missing.stdout) == json.loads(small.stdout)
    bad = _forecast(CliRunner(), snap, "--engine", "jython")
    assert bad.exit_code == 2 and "auto, cpython or pypy" in bad.stderr
