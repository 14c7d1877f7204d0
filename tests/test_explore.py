"""The schedule explorer (samepage.explore, ``samepage explore``): the seed scenario's
use-after-free under early-put is found and replayed exactly; v6.18 and split-retry survive
the search; ``[[thread]]`` tables are validated like the rest of the format."""

from __future__ import annotations

import json
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


def test_cli_explore_nothing_found():
    r = CliRunner().invoke(app, ["explore", str(SEED), "--same-folio", "v6.18",
                                 "--schedules", "50"])
    assert r.exit_code == 0, r.output
    assert "nothing found: 50 schedules" in r.output and "steps" in r.output


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
    ('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "mergeable", region = "ram" }]\n',
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
