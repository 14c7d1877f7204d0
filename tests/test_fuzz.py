"""The project's own fuzzer (issue 8): generated and mutated scenarios, schedules and traces run
through the real ``samepage`` command (forked children, tests/fuzz/runner.py), and one
regression test per failure class found (tests/fuzz/regressions.py).

Budget: the hypothesis profile "ci" (default, about a minute in all); ``make fuzz`` runs the
"fuzz" profile and then tools/fuzz_campaign.py.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given

# tests.fuzz is shared with tools/fuzz_campaign.py: importable whatever pytest's rootdir mode.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz import fuzz_settings  # noqa: E402
from tests.fuzz import strategies as S  # noqa: E402
from tests.fuzz.regressions import regression_cases, schedule_base, trace_pair  # noqa: E402
from tests.fuzz.runner import (Case, Outcome, classify, differential, run_args,  # noqa: E402
                               run_case, run_cases)


def _show(case: Case, o: Outcome) -> str:
    return (f"{o.kind} ({o.detail}) rc={o.rc} {o.seconds:.1f}s {o.rss_mb:.0f}MiB\n"
            f"reproducer: {case.reproducer()}\nstderr: {o.stderr[-1500:]}")


def check_scenario_file(path: str) -> None:
    """validate, then (if validate accepts it) run 3 batches: good outcomes, and run does not
    reject what validate accepted."""
    v_case = Case("scenario", "validate", ["validate", path], names=[path], inputs=[path],
                  keyed=True)
    v = run_case(v_case)
    assert v.good, _show(v_case, v)
    if v.rc != 0:
        assert v.kind == "error"
        return
    r_case = Case("scenario", "run", run_args(path), names=[path],
                  inputs=[path], keyed=True)
    r = run_case(r_case)
    assert r.good, _show(r_case, r)
    assert differential(v, r) is None, _show(r_case, r)


# ------------------------------------------------------------------------------ the oracle


def _outcome(rc, stderr="", stdout="", **kw) -> Outcome:
    o = Outcome("?", rc, stdout, stderr, kw.pop("seconds", 0.1), kw.pop("rss_mb", 40.0))
    return o


@pytest.mark.parametrize("rc,stderr,names,kind", [
    (0, "", [], "ok"),
    (2, "samepage: error: f.toml: run.batches: must be >= 1 (got 0)\n", ["f.toml"], "error"),
    (2, "samepage: error: run.batches: must be >= 1\n", ["f.toml"], "unnamed"),
    (2, "Usage: samepage run\nError: Missing argument\n", [], "multiline"),
    (1, "Traceback (most recent call last):\n  ...\nValueError: x\n", [], "traceback"),
    (3, "samepage: internal error: RecursionError: ...\n", [], "internal-error"),
    (1, "", [], "exit-1"),
    (2, "samepage: error: f.toml: name \x1b[2J\n", ["f.toml"], "control-chars"),
])
def test_oracle_classifies(rc, stderr, names, kind):
    case = Case("t", "t", ["run", "f.toml"], names=names)
    assert classify(case, _outcome(rc, stderr), "", False, {})[0] == kind


def test_oracle_catches_a_hang_memory_and_a_crash(tmp_path, monkeypatch):
    """The forking runner itself: a hang is killed at the timeout, a child that allocates
    past the limit is "memory", an exception escaping the entry point is "traceback"."""
    import time

    def entry():
        import sys
        what = sys.argv[1]
        if what == "hang":
            time.sleep(60)
        if what == "memory":
            b = bytearray(7 << 30)  # past AS_LIMIT: refused -> MemoryError
            return len(b)
        if what == "crash":
            raise KeyError("boom")
        print("samepage: error: x.toml: k: bad", file=sys.stderr)
        raise SystemExit(2)

    cases = [Case("t", w, [w], names=["x.toml"], timeout=2.0)
             for w in ("hang", "memory", "crash", "fine")]
    got = {c.label: o.kind for c, o in run_cases(cases, jobs=2, entry=entry)}
    assert got == {"hang": "hang", "memory": "memory", "crash": "traceback", "fine": "error"}


# ------------------------------------------------------------------------------ generated inputs


@fuzz_settings(1.0)
@given(S.scenario_texts)
def test_generated_scenarios(text):
    with tempfile.TemporaryDirectory() as d:
        p = S.Path(d) / "gen.toml"
        p.write_text(text, encoding="utf-8", errors="surrogatepass")
        check_scenario_file(str(p))


@fuzz_settings(1.0)
@given(S.scenario_byte_files)
def test_byte_mutated_scenarios(data):
    with tempfile.TemporaryDirectory() as d:
        p = S.Path(d) / "mut.toml"
        p.write_bytes(data)
        check_scenario_file(str(p))


@fuzz_settings(0.6)
@given(S.valid_scenario_texts)
def test_valid_generated_scenarios_run(text):
    with tempfile.TemporaryDirectory() as d:
        p = S.Path(d) / "valid.toml"
        p.write_text(text)
        check_scenario_file(str(p))


_SCHED_BASE = schedule_base(Path("."))


@fuzz_settings(1.0)
@given(S.schedule_texts(_SCHED_BASE))
def test_mutated_schedules(text):
    with tempfile.TemporaryDirectory() as d:
        seed = S.Path(d) / "seed.toml"
        seed.write_bytes(S.SEED_SCENARIO.read_bytes())
        p = S.Path(d) / "s.json"
        p.write_text(text, encoding="utf-8", errors="surrogateescape")
        case = Case("schedule", "replay", ["explore", str(seed), "--replay", str(p)],
                    names=[str(p)], inputs=[str(p), str(seed)], allow_found=True,
                    keyed=True)
        o = run_case(case)
        assert o.good, _show(case, o)


_SCEN, _TRACE_LINES = trace_pair()


@fuzz_settings(1.0)
@given(S.trace_texts(_TRACE_LINES))
def test_mutated_traces(text):
    with tempfile.TemporaryDirectory() as d:
        p = S.Path(d) / "t.jsonl"
        p.write_text(text, encoding="utf-8", errors="surrogateescape")
        case = Case("trace", "compare", ["compare", _SCEN, "--against", str(p)],
                    names=[str(p)], inputs=[str(p)], allow_found=True, keyed=True)
        o = run_case(case)
        assert o.good, _show(case, o)


def test_generators_are_reproducible_and_mutate():
    """Same seed, same file; and the mutators change what the generator made.  (No parsing
    here: a generated file may be one that makes tomllib itself run out of memory.)"""
    import random

    a = [S.scenario_text(random.Random(i)) for i in range(50)]
    assert a == [S.scenario_text(random.Random(i)) for i in range(50)]
    plain = [S.to_toml(S.gen_scenario(random.Random(i))) for i in range(50)]
    assert sum(x != y for x, y in zip(a, plain)) >= 25
    b = [S.scenario_bytes(random.Random(i)) for i in range(20)]
    assert b == [S.scenario_bytes(random.Random(i)) for i in range(20)]
    assert all(x not in S.corpus("scenario") for x in b)


def test_schedule_base_matches_what_explore_saves(tmp_path):
    """The schedule the mutators start from has the keys explore writes."""
    seed = tmp_path / "seed.toml"
    seed.write_bytes(S.SEED_SCENARIO.read_bytes())
    out = tmp_path / "saved.json"
    case = Case("schedule", "explore", ["explore", str(seed), "--same-folio", "early-put",
                                        "--save", str(out)], allow_found=True, cwd=str(tmp_path))
    o = run_case(case)
    assert o.kind == "found", _show(case, o)
    saved = json.loads(out.read_text())
    assert set(saved) >= set(_SCHED_BASE) - {"scenario"}
    assert [d["step"] for d in saved["decisions"]] == [d["step"] for d in _SCHED_BASE["decisions"]]


# ------------------------------------------------------------------------------ regressions

with tempfile.TemporaryDirectory() as _d:
    REGRESSION_IDS = [id_ for id_, _ in regression_cases(Path(_d))]


@pytest.fixture(scope="module")
def regressions(tmp_path_factory):
    return dict(regression_cases(tmp_path_factory.mktemp("regressions")))


@pytest.mark.parametrize("id_", REGRESSION_IDS)
def test_regression(id_, regressions):
    cases = regressions[id_]
    outs = [o for _, o in run_cases(cases, jobs=1)]
    for c, o in zip(cases, outs):
        assert o.good, _show(c, o)
    if len(outs) == 2:
        assert differential(*outs) is None, _show(cases[1], outs[1])
