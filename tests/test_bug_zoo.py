"""The zoo of real KSM bugs (examples/bugs/): each patch reintroduces a bug of the kernel's
history; the explorer finds it (exit 1, a replayable schedule), and the same scenario
explores clean unpatched."""

from __future__ import annotations

import glob
import importlib.util
import os
import subprocess
import sys

import pytest

from samepage import explore as E
from samepage import failinject
from samepage.mm.failslab import parse_sites
from samepage.patch import load_patch
from samepage.scenario import load_scenario

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUGS = os.path.join(ROOT, "examples", "bugs")
ZOO = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(BUGS, "*.py"))
             if os.path.exists(p[:-3] + ".toml"))
KIND = {"scan-exit-null-deref": "oops", "zero-pages-lost-update": "counters-inconsistent",
        "thp-early-put": "use-after-free", "unmerge-exit-vma": "vma-use-after-free",
        "mm-slot-early-mmdrop": "mm-use-after-free",
        "unmerge-fork-behind-cursor": "ksm-page-after-unmerge",
        "unmerge-oom-ignored": "ksm-page-after-unmerge",
        "fork-inherits-ksm-counters": "counters-inconsistent"}
_spec = importlib.util.spec_from_file_location("run_zoo", os.path.join(BUGS, "run_zoo.py"))
run_zoo = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(run_zoo)


@pytest.fixture
def fail_alloc(monkeypatch):
    """Sets failinject.FAIL_ALLOC as ``--fail-alloc`` would for a bug that needs it."""
    def set_for(bug):
        extra = run_zoo.EXTRA.get(bug, [])
        sites = extra[extra.index("--fail-alloc") + 1] if "--fail-alloc" in extra else None
        monkeypatch.setattr(failinject, "FAIL_ALLOC", parse_sites(sites) if sites else ())
    return set_for


def test_the_zoo_is_there():
    assert set(KIND) <= set(ZOO)


@pytest.mark.parametrize("bug", ZOO)
def test_patched_found_and_replayed(bug, fail_alloc):
    fail_alloc(bug)
    sc = load_scenario(os.path.join(BUGS, bug + ".toml"))
    with load_patch(os.path.join(BUGS, bug + ".py")).applied():
        res = E.explore(sc, "v6.18", budget=30)
        assert res.found is not None, res.stopped
        if bug in KIND:
            assert res.found.report.kind == KIND[bug]
        again = E.replay(sc, "v6.18", res.found.decisions)
        assert again.report is not None
        assert again.report.summary() == res.found.report.summary()


@pytest.mark.parametrize("bug", ZOO)
def test_unpatched_clean(bug, fail_alloc):
    fail_alloc(bug)
    sc = load_scenario(os.path.join(BUGS, bug + ".toml"))
    res = E.explore(sc, "v6.18", budget=20, schedules=150)
    assert res.found is None, res.found and res.found.report.summary()


def test_oom_bug_needs_its_allocation_failure():
    """unmerge-oom-ignored is only an -ENOMEM path: without --fail-alloc the patched
    scenario explores clean, so the failure injection is what finds it."""
    bug = "unmerge-oom-ignored"
    assert failinject.FAIL_ALLOC == ()
    sc = load_scenario(os.path.join(BUGS, bug + ".toml"))
    with load_patch(os.path.join(BUGS, bug + ".py")).applied():
        res = E.explore(sc, "v6.18", budget=20, schedules=150)
    assert res.found is None


def test_cli_exit_status_and_schedule(tmp_path):
    bug = "zero-pages-lost-update"
    save = tmp_path / "s.json"
    cmd = [sys.executable, "-m", "samepage.cli.main"] if False else \
        [os.path.join(os.path.dirname(sys.executable), "samepage")]
    r = subprocess.run(cmd + ["explore", os.path.join(BUGS, bug + ".toml"), "--patch",
                              os.path.join(BUGS, bug + ".py"), "--save", str(save)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "counters-inconsistent" in r.stdout
    r = subprocess.run(cmd + ["explore", os.path.join(BUGS, bug + ".toml"), "--patch",
                              os.path.join(BUGS, bug + ".py"), "--replay", str(save)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "reproduced" in r.stdout
    r = subprocess.run(cmd + ["explore", os.path.join(BUGS, bug + ".toml")],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "nothing found" in r.stdout


def test_run_zoo_script_table(tmp_path):
    """examples/bugs/run_zoo.py (make zoo) with a small budget: every bug found, every
    unpatched scenario clean, exit 0, one table row per bug."""
    r = subprocess.run([sys.executable, os.path.join(BUGS, "run_zoo.py"), "--budget", "20"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for bug in ZOO:
        assert bug in r.stdout
    for kind in KIND.values():
        assert kind in r.stdout
    assert not list(tmp_path.iterdir())          # nothing written
