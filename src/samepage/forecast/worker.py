"""A forecast's model run on another interpreter (``samepage forecast --engine pypy``).

The command line runs on CPython; the model itself is plain Python and runs unchanged, and
several times faster on a large host, under PyPy (``make pypy``: README, "PyPy").  The
command validates its arguments and the snapshot, then starts this module on the PyPy
interpreter with the same sources on its path and a JSON request on stdin; it answers one
JSON object on stdout: the forecast (``Result.as_json``) and the few facts the report prints
about the built machine, or ``{"error": ...}``.

    python -m samepage.forecast.worker < request.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

ENV_PYPY = "SAMEPAGE_PYPY"
SRC = Path(__file__).resolve().parents[2]      # src/ of these sources, the worker's path


class EngineError(Exception):
    """The other interpreter is missing or failed: one line for the user."""


def find_pypy() -> Path:
    """$SAMEPAGE_PYPY, else the checkout's .venv-pypy (``make pypy``)."""
    env = os.environ.get(ENV_PYPY)
    if env:
        p = Path(env)
        if not p.exists():
            raise EngineError(f"--engine pypy: ${ENV_PYPY} = {env}: no such file")
        return p
    p = SRC.parent / ".venv-pypy" / "bin" / "python"
    if not p.exists():
        raise EngineError(f"--engine pypy: no PyPy environment ({p}): run `make pypy` in the "
                          f"checkout, or set ${ENV_PYPY} to a PyPy interpreter")
    return p


def run_forecast(request: dict[str, Any], python: Optional[Path] = None) -> dict[str, Any]:
    """Run ``request`` (see ``serve``) on ``python`` (default: ``find_pypy()``); its answer.
    The worker's stderr (progress, warnings) passes through to ours."""
    python = python or find_pypy()
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYPY_GC_NURSERY", "64MB")    # PyPy's default makes big fills quadratic
    try:
        sys.stderr.fileno()
        err = None                   # inherited: the worker's lines appear as they come
    except (OSError, ValueError, AttributeError):
        err = subprocess.PIPE        # a stderr without a file (captured): relayed after
    r = subprocess.run([str(python), "-m", "samepage.forecast.worker"], input=json.dumps(request),
                       stdout=subprocess.PIPE, stderr=err, text=True, env=env)
    if r.stderr:
        sys.stderr.write(r.stderr)
    if r.returncode != 0:
        raise EngineError(f"--engine pypy: the model run on {python} failed (exit status "
                          f"{r.returncode})")
    try:
        answer = json.loads(r.stdout)
    except ValueError:
        raise EngineError(f"--engine pypy: {python} did not answer with JSON") from None
    if "error" in answer:
        raise EngineError(answer["error"])
    return answer


def serve(request: dict[str, Any]) -> dict[str, Any]:
    """Build the snapshot's machine and simulate it, as ``samepage forecast`` does in-process.
    ``request``: snapshot (path), tunables (dict), merge_any, thp, volatile (bools), costs
    (a profile's path or null), until (``converged``, N or a time), progress (a progress
    line on stderr, which the caller's terminal shows), and for --recommend
    ``recommend``: {within_ms, max_cpu} (the answer is then ``recommend``: best, tried)."""
    from samepage import INTERPRETER
    from samepage.capture import load_snapshot
    from samepage.ksm.costs import CostProfileError, load_profile
    from samepage.scenario.errors import ScenarioError

    from .build import ForecastError, build_machine
    from .recommend import recommend
    from .run import StderrProgress, parse_until, simulate

    try:
        snap = load_snapshot(request["snapshot"])
        costs = load_profile(Path(request["costs"])) if request.get("costs") else None

        def build(tunables: dict):
            return build_machine(snap, tunables=tunables,
                                 merge_any_all=bool(request.get("merge_any")),
                                 thp_always=bool(request.get("thp")), costs=costs,
                                 volatile=bool(request.get("volatile", True)))

        tunables = request.get("tunables") or {}
        prog = StderrProgress() if request.get("progress") else None
        if request.get("recommend"):
            rec = request["recommend"]
            best, tried = recommend(build, rec["within_ms"], rec["max_cpu"], base=tunables,
                                    on_try=prog.candidate if prog else None)
            if prog:
                prog.done()
            return {"recommend": {"best": tried.index(best) if best is not None else None,
                                  "tried": [_candidate_row(c) for c in tried]},
                    "interpreter": INTERPRETER}
        built = build(tunables)
        res = simulate(built, parse_until(request.get("until") or "converged"),
                       progress=prog.scan if prog else None)
        if prog:
            prog.done()
    except ForecastError as e:
        return {"error": f"{request['snapshot']}: {e}"}
    except (ScenarioError, CostProfileError) as e:
        return {"error": str(e)}
    return {"doc": res.as_json(), "processes": len(built.processes),
            "mergeable_pages": built.mergeable_pages, "thp_pages": built.thp_pages,
            "rewrites": res.extra.get("rewrites", 0), "interpreter": INTERPRETER}


def _candidate_row(c) -> dict[str, Any]:
    """A --recommend candidate with the result fields its report reads (unrounded)."""
    r = c.result
    return {"pages_to_scan": c.pages_to_scan, "sleep_millisecs": c.sleep_millisecs, "ok": c.ok,
            "why": c.why, "result": {"converged": bool(r.converged),
                                     "converged_ms": r.converged_ms,
                                     "converged_full_scans": r.converged_full_scans,
                                     "cpu_percent": r.cpu_percent,
                                     "saved_bytes": r.saved_bytes}}


def candidates_from(answer: dict[str, Any]) -> tuple[Any, list[Any]]:
    """``(best, tried)`` of a --recommend answer, as objects with the fields of
    ``recommend.Candidate`` and its ``Result`` that the report reads."""
    from types import SimpleNamespace

    tried = [SimpleNamespace(**{**row, "result": SimpleNamespace(**row["result"])})
             for row in answer["tried"]]
    best = tried[answer["best"]] if answer["best"] is not None else None
    return best, tried


def main() -> int:
    try:
        request = json.load(sys.stdin)
    except ValueError as e:
        print(json.dumps({"error": f"worker: bad request: {e}"}))
        return 0
    print(json.dumps(serve(request)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
