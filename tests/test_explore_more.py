"""More for user threads (sysfs writes, prctl, madvise, two-step exit, several ops at one
point, nested points in run = 2, folio-lock waits), coverage and --jobs."""

from __future__ import annotations

import pytest

from samepage import explore as E
from samepage.scenario import ScenarioError, load_scenario_text

BASE = '''
[ksm]
pages_to_scan = 16
smart_scan = 0
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = 8
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 2 }}
[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 8
  thp = "nohuge"
  fill = {{ kind = "pattern", distinct = 2 }}
{threads}
[run]
batches = {batches}
'''


def scen(threads: str, batches: int = 3):
    return load_scenario_text(BASE.format(threads=threads, batches=batches))


def test_new_ops_parse_and_describe():
    sc = scen('''[[thread]]
name = "admin"
process = "a"
ops = [{ op = "set", tunable = "run", value = 2 }, { op = "set", tunable = "run", value = 1 },
       { op = "merge_any", value = false }, { op = "mergeable", region = "ram" }]
''')
    ops = sc.threads[0].ops
    assert [o.describe() for o in ops][:2] == ["set run=2", "set run=1"]
    with pytest.raises(ScenarioError, match="value"):
        scen('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "set", tunable = "run", '
             'value = 7 }]\n')
    with pytest.raises(ScenarioError, match="value"):
        scen('[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "merge_any", value = 1 }]\n')


def test_run2_unmerges_and_the_mutex_waits_for_ksmd():
    sc = scen('''[[thread]]
name = "admin"
process = "a"
after_batch = 2
ops = [{ op = "set", tunable = "run", value = 2 }]
''')
    points = []

    def choose(step, point, enabled, pre):
        points.append(point)
        return enabled[0]
    ex = E.execute(sc, "v6.18", choose)
    assert ex.report is None
    # the run store takes ksm_thread_mutex: only while ksmd sleeps
    assert ex.decisions and ex.decisions[0].point == "ksmd:sleep"
    res = E.explore(sc, "v6.18", budget=30)
    assert res.found is None and res.complete and res.states > 0 and res.bound == 2


def test_nested_points_in_run2_let_other_threads_run():
    sc = scen('''[[thread]]
name = "admin"
process = "a"
after_batch = 2
ops = [{ op = "set", tunable = "run", value = 2 }]
[[thread]]
name = "forker"
process = "b"
after_batch = 2
ops = [{ op = "fork", child = "c" }]
''')
    seen = set()

    def choose(step, point, enabled, pre):
        seen.add(point)
        if point.startswith(("unmerge:", "break_ksm:")) and "forker" in enabled:
            return "forker"
        if point == "ksmd:sleep" and "admin" in enabled:
            return "admin"
        return None
    ex = E.execute(sc, "v6.18", choose)
    assert ex.report is None
    assert any(p.startswith("unmerge:") for p in seen)
    assert [d.thread for d in ex.decisions] == ["admin", "forker"]


def test_exit_is_two_steps_and_teardown_waits_for_the_lock():
    sc = scen('''[[thread]]
name = "exiter"
process = "b"
after_batch = 1
ops = [{ op = "exit" }]
''')
    log = []

    def choose(step, point, enabled, pre):
        if point == "merge_one:before-lock" and enabled:
            log.append((point, E._ThreadState and enabled))
            return enabled[0]
        return None
    ex = E.execute(sc, "v6.18", choose)
    assert ex.report is None
    texts = [d.op for d in ex.decisions]
    assert texts[:1] == ["exit"]
    assert "exit (exit_mmap)" in texts          # the teardown is a second step
    res = E.explore(sc, "v6.18", budget=30)
    assert res.found is None


def test_several_ops_at_one_point():
    sc = scen('''[[thread]]
name = "w"
process = "a"
after_batch = 1
ops = [{ op = "write", region = "ram", pages = [0], token = 9 }, { op = "zap", region = "ram", pages = [1] }]
''')
    ex = E.execute(sc, "v6.18", lambda step, point, enabled, pre: enabled[0])
    assert len(ex.decisions) == 2
    assert ex.decisions[0].point == ex.decisions[1].point
    assert ex.decisions[1].step == ex.decisions[0].step + 1


def test_oops_is_reported(monkeypatch):
    from samepage.ksm.ksm import Ksm
    sc = scen('[[thread]]\nname = "z"\nprocess = "a"\nops = [{ op = "zap", region = "ram", '
              'pages = [0] }]\n', batches=1)

    def boom(self, *a):
        raise IndexError("list index out of range")
    monkeypatch.setattr(Ksm, "cmp_and_merge_page", boom)
    ex = E.execute(sc, "v6.18", lambda *a: None)
    assert ex.report is not None and ex.report.kind == "oops"
    assert "IndexError" in ex.report.op


def test_jobs_finds_the_same_schedule_as_one_process():
    from samepage.scenario import load_scenario
    sc = load_scenario("examples/seed-same-folio-race.toml")
    one = E.explore(sc, "early-put", budget=60)
    two = E.explore(sc, "early-put", budget=60, jobs=2)
    assert one.found is not None and two.found is not None
    assert [d.to_json() for d in one.found.decisions] == \
        [d.to_json() for d in two.found.decisions]
    assert two.jobs == 2 and two.states > 0
