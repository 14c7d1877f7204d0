"""The schedule explorer (samepage.explore, ``samepage explore``): the seed scenario's
use-after-free under early-put is found and replayed exactly; v6.18 and split-retry survive
the search; ``[[thread]]`` tables are validated like the rest of the format."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage import Machine
from samepage.cli.main import app
from samepage.explore import explore, replay
from samepage.scenario import ScenarioError, load_scenario, load_scenario_text
from samepage.scenario.model_runner import run_scenario_on_model

ROOT = Path(__file__).parent.parent
SEED = ROOT / "examples" / "seed-same-folio-race.toml"


@pytest.fixture(scope="module")
def seed():
    return load_scenario(SEED)


def test_preempt_is_off_by_default():
    m = Machine()
    assert m.ksm.preempt is None and m.ksm.mmap_read_locked is None


def test_run_ignores_threads(seed):
    r = run_scenario_on_model(seed)
    assert len(r.records) == seed.run.batches
    assert seed.threads[0].name == "zapper"


def test_exhaustive_finds_the_early_put_use_after_free_and_replays_it(seed):
    res = explore(seed, "early-put", "exhaustive", budget=30)
    assert res.found is not None
    rep = res.found.report
    assert rep.kind == "use-after-free"
    assert "try_to_merge_one_page" in rep.function
    assert res.found.decisions and res.found.decisions[0].thread == "zapper"
    again = replay(seed, "early-put", res.found.decisions)
    assert again.report is not None
    assert again.report.summary() == rep.summary()
    assert again.report.steps == rep.steps


@pytest.mark.parametrize("strategy", ["v6.18", "split-retry"])
def test_the_other_strategies_survive(seed, strategy):
    res = explore(seed, strategy, "exhaustive", budget=60, schedules=150)
    assert res.found is None
    assert res.schedules == 150 and res.steps > res.schedules


@pytest.mark.parametrize("strategy", ["random", "pct"])
def test_random_and_pct_find_it_too(seed, strategy):
    res = explore(seed, "early-put", strategy, budget=30, seed=2)
    assert res.found is not None and res.found.report.kind == "use-after-free"


def test_cli_explore_save_and_replay(tmp_path):
    save = tmp_path / "s.json"
    runner = CliRunner()
    r = runner.invoke(app, ["explore", str(SEED), "--same-folio", "early-put",
                            "--save", str(save), "--budget", "30"])
    assert r.exit_code == 1, r.output
    assert "use-after-free" in r.output and "zapper" in r.output
    data = json.loads(save.read_text())
    assert data["same_folio"] == "early-put" and data["decisions"]
    assert data["report"]["kind"] == "use-after-free"
    r2 = runner.invoke(app, ["explore", str(SEED), "--replay", str(save)])
    assert r2.exit_code == 1, r2.output
    assert "the recorded report is reproduced" in r2.output
    report1 = r.output[r.output.index("sanitizer:"):r.output.index("schedule saved")]
    report2 = r2.output[r2.output.index("sanitizer:"):r2.output.index("the recorded")]
    assert report1.strip() == report2.strip()


def test_cli_explore_nothing_found(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(app, ["explore", str(SEED), "--same-folio", "v6.18",
                                 "--schedules", "50"])
    assert r.exit_code == 0, r.output
    assert "nothing found: 50 schedules" in r.output and "steps" in r.output
    # the search was cut short: the last line says so, and nothing was written
    assert r.output.rstrip().endswith("the limit of 50 schedules ran out: the space was NOT "
                                      "exhausted")
    assert list(tmp_path.iterdir()) == []


def test_cli_explore_needs_threads():
    r = CliRunner().invoke(app, ["explore", str(ROOT / "examples" / "two-vms.toml")])
    assert r.exit_code == 2


BASE = """
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 4
  fill = { kind = "zero" }
[run]
batches = 2
"""


def load_err(text: str) -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(BASE + text, "t.toml")
    return info.value


def test_thread_table_loads():
    sc = load_scenario_text(BASE + """
[[thread]]
name = "t"
process = "a"
after_batch = 1
ops = [
  { op = "zap", region = "ram", pages = [1] },
  { op = "write", region = "ram", range = [0, 2], token = 3 },
  { op = "fork", child = "c" },
  { op = "exit" },
]
""")
    (t,) = sc.threads
    assert t.after_batch == 1 and [o.op for o in t.ops] == ["zap", "write", "fork", "exit"]


@pytest.mark.parametrize("text,key,msg", [
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "zap", region = "ram", '
     'pages = [1] }]\nbogus = 1\n', "thread[0].bogus", ""),
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "zap", region = "ram", '
     'pages = [1], color = 1 }]\n', "thread[0].ops[0].color", ""),
    ('[[thread]]\nname = "t"\nprocess = "zz"\nops = [{ op = "exit" }]\n',
     "thread[0].process", "unknown process"),
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "zap", region = "ram" }]\n',
     "thread[0].ops[0].pages", "required"),
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "zap", region = "ram", '
     'pages = [9] }]\n', "thread[0].ops[0].pages", "outside"),
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "mremap", region = "ram" }]\n',
     "thread[0].ops[0].op", ""),
    ('[[thread]]\nname = "t"\nprocess = "a"\nafter_batch = 3\nops = [{ op = "exit" }]\n',
     "thread[0].after_batch", "run.batches"),
])
def test_malformed_thread_tables(text, key, msg):
    e = load_err(text)
    assert e.key == key, str(e)
    assert msg in e.msg


def test_thread_unmergeable_op_runs_the_unmerge_path():
    """A [[thread]] can take the unmerge path (MADV_UNMERGEABLE, break_ksm) between batches."""
    from samepage.explore import explore
    from samepage.scenario import load_scenario_text

    sc = load_scenario_text('''
[ksm]
pages_to_scan = 100
[[process]]
name = "p"
  [[process.region]]
  name = "ram"
  pages = 8
  thp = "nohuge"
  fill = { kind = "pattern", distinct = 1 }
[[thread]]
name = "t"
process = "p"
after_batch = 3
ops = [{ op = "unmergeable", region = "ram" }]
[run]
batches = 5
''')
    result = explore(sc, same_folio="v6.18", strategy="exhaustive", budget=20)
    assert result.found is None
    assert result.schedules >= 1 and result.steps > 0


# ------------------------------------------------------------------------------ CLI hardening


def one_error_line(r) -> str:
    assert r.exit_code == 2, (r.exit_code, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("samepage: error: ")
    return lines[0]


SMALL_RACE = """
name = "small race"
[ksm]
pages_to_scan = 100
[machine]
thp = "never"
[[process]]
name = "p"
  [[process.region]]
  name = "ram"
  pages = 4
  fill = { kind = "pattern", distinct = 1 }
[[thread]]
name = "t"
process = "p"
ops = [{ op = "write", region = "ram", range = [0, 1], token = 7 }]
[run]
batches = 3
"""


def test_cli_explore_saves_in_the_current_directory(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    scen_dir = tmp_path / "scen"
    scen_dir.mkdir()
    scen = scen_dir / "race.toml"
    scen.write_text(SEED.read_text())
    monkeypatch.chdir(work)
    r = CliRunner().invoke(app, ["explore", str(scen), "--same-folio", "early-put",
                                 "--budget", "30"])
    assert r.exit_code == 1, r.output
    assert (work / "race.schedule.json").is_file()
    assert sorted(p.name for p in scen_dir.iterdir()) == ["race.toml"]   # not beside it
    assert "schedule saved to race.schedule.json" in r.stdout


def test_cli_explore_never_overwrites_without_force(tmp_path):
    save = tmp_path / "s.json"
    save.write_text("precious\n")
    t0 = time.monotonic()
    r = CliRunner().invoke(app, ["explore", str(SEED), "--same-folio", "early-put",
                                 "--save", str(save), "--budget", "30"])
    line = one_error_line(r)
    assert "already exists" in line and "--force" in line
    assert save.read_text() == "precious\n"
    assert r.stdout == "" and time.monotonic() - t0 < 10    # refused before the search
    r = CliRunner().invoke(app, ["explore", str(SEED), "--same-folio", "early-put",
                                 "--save", str(save), "--budget", "30", "--force"])
    assert r.exit_code == 1, r.output
    assert json.loads(save.read_text())["report"]["kind"] == "use-after-free"


def test_cli_explore_never_overwrites_the_scenario(tmp_path):
    scen = tmp_path / "race.toml"
    scen.write_text(SEED.read_text())
    for extra in ([], ["--force"]):
        r = CliRunner().invoke(app, ["explore", str(scen), "--same-folio", "early-put",
                                     "--save", str(scen), *extra])
        assert "scenario file" in one_error_line(r)
        assert scen.read_text() == SEED.read_text()


def test_save_schedule_is_exclusive(tmp_path):
    from samepage.explore import save_schedule

    p = tmp_path / "s.json"
    save_schedule(str(p), {"decisions": []})
    with pytest.raises(FileExistsError):
        save_schedule(str(p), {"decisions": [1]})
    save_schedule(str(p), {"decisions": [2]}, force=True)
    assert json.loads(p.read_text()) == {"decisions": [2]}
    assert [q.name for q in tmp_path.iterdir()] == ["s.json"]     # no temporary file left


def test_cli_explore_says_the_space_was_exhausted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scen = tmp_path / "small.toml"
    scen.write_text(SMALL_RACE)
    r = CliRunner().invoke(app, ["explore", str(scen), "--bound", "1"])
    assert r.exit_code == 0, r.output
    assert r.stdout.rstrip().endswith("the whole space within bound 1 was explored")
    r = CliRunner().invoke(app, ["explore", str(scen), "--budget", "0"])
    assert r.exit_code == 0, r.output
    assert "the budget of 0 s ran out: the space was NOT exhausted" in r.stdout
    r = CliRunner().invoke(app, ["explore", str(scen), "--strategy", "random",
                                 "--schedules", "3"])
    assert "NOT exhausted" in r.stdout and "random search samples" in r.stdout


def test_explore_reports_progress(seed):
    calls = []
    res = explore(seed, "v6.18", "exhaustive", budget=60, schedules=5,
                  progress=lambda n, steps, el: calls.append((n, steps, el)))
    assert res.stopped == "schedules"
    assert calls and calls[-1][0] == 5 and calls[-1][1] == res.steps
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)


def test_schedule_json_round_trip(seed):
    from samepage.explore import load_schedule, parse_schedule, schedule_json

    res = explore(seed, "early-put", "exhaustive", budget=30)
    data = json.loads(json.dumps(schedule_json("x.toml", "early-put", "exhaustive", 0,
                                               res.found)))
    sf = parse_schedule(data, "s.json")
    assert sf.report is not None and sf.report.kind == "use-after-free"
    folio, decisions = load_schedule(data)
    assert folio == "early-put" and decisions == res.found.decisions


GOOD_DECISION = {"step": 4, "point": "unstable_search:after-found", "thread": "zapper",
                 "op": "zap ram pages=[0]"}


@pytest.mark.parametrize(("text", "where"), [
    (json.dumps({"decisions": [GOOD_DECISION], "report": "boom"}), "report: must be an object"),
    (json.dumps({"decisions": [GOOD_DECISION], "same_folio": ["v6.18"]}), "same_folio: must be a string"),
    (json.dumps({"decisions": "all"}), "decisions: must be an array"),
    (json.dumps({"decisions": [GOOD_DECISION | {"step": "4"}]}), "decisions[0].step: must be an integer"),
    (json.dumps({"decisions": [GOOD_DECISION | {"step": -1}]}), "decisions[0].step: must be >= 0"),
    (json.dumps({"decisions": [GOOD_DECISION, GOOD_DECISION]}), "decisions[1].step: 4 does not follow step 4"),
    (json.dumps({"decisions": [GOOD_DECISION | {"colour": 1}]}), "decisions[0].colour: unknown key"),
    (json.dumps({"decisions": [GOOD_DECISION]}).replace('"step": 4', '"step": 1e400'), "decisions[0].step: number out of range"),
    (json.dumps({"decisions": [GOOD_DECISION]}).replace('"step": 4', f'"step": {10 ** 400}'), "decisions[0].step: integer out of range"),
    (json.dumps({"decisions": [GOOD_DECISION]}).replace('"step": 4', '"step": NaN'), "decisions[0].step: NaN is not a number"),
    ('{"decisions": [], "seed": 1, "seed": 2}', "seed: duplicate key"),
    ("[" * 100_000 + "]" * 100_000, "(top): nested too deeply"),
    ('{"decisions": [' + "[" * 50_000, "(top): nested too deeply"),
    ('{"decisions": [}', "(top): invalid JSON"),
    ("[]", "(top): must be an object"),
    ('"decisions"', "(top): must be an object"),
])
def test_cli_malformed_schedule_is_one_line(tmp_path, text, where):
    f = tmp_path / "bad.json"
    f.write_text(text)
    line = one_error_line(CliRunner().invoke(app, ["explore", str(SEED), "--replay", str(f)]))
    assert line.startswith(f"samepage: error: {f}: {where}"), line


def test_cli_schedule_file_problems(tmp_path):
    for f, msg in ((tmp_path / "missing.json", "(file): file not found"),
                   (tmp_path, "(file): is a directory")):
        line = one_error_line(CliRunner().invoke(app, ["explore", str(SEED), "--replay",
                                                       str(f)]))
        assert line == f"samepage: error: {f}: {msg}"
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"scenario": "caf\xe9"}')
    assert "not valid UTF-8" in one_error_line(
        CliRunner().invoke(app, ["explore", str(SEED), "--replay", str(bad)]))


def test_cli_schedule_file_too_large(tmp_path, monkeypatch):
    import samepage.explore as ex

    monkeypatch.setattr(ex, "MAX_SCHEDULE_BYTES", 100)
    f = tmp_path / "big.json"
    f.write_text(json.dumps({"decisions": [], "scenario": "x" * 200}))
    assert "file too large" in one_error_line(
        CliRunner().invoke(app, ["explore", str(SEED), "--replay", str(f)]))


def test_cli_explore_escapes_thread_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = SEED.read_text().replace('name = "zapper"', 'name = "zap\\u001b[2Jper"')
    assert evil != SEED.read_text()
    scen = tmp_path / "evil.toml"
    scen.write_text(evil)
    r = CliRunner().invoke(app, ["explore", str(scen), "--same-folio", "early-put",
                                 "--budget", "30"])
    assert r.exit_code == 1, r.output
    assert "\x1b" not in r.stdout and "thread zap\\x1b[2Jper runs" in r.stdout
