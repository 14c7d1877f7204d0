"""Patch files (samepage.patch, ``--patch FILE.py`` on run, explore and compare)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage import Machine
from samepage.cli.main import app
from samepage.ksm import same_folio
from samepage.ksm.ksm import Ksm
from samepage.mm.folio import Memory
from samepage.patch import PatchError, active_patches, load_patch

ROOT = Path(__file__).resolve().parent.parent
ZERO = str(ROOT / "examples" / "zero-pages.toml")
RACE = str(ROOT / "examples" / "seed-same-folio-race.toml")


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return str(p)


NOZERO = """
    from samepage.ksm.ksm import EFAULT

    def try_to_merge_with_zero_page(ksm, rmap_item, page):
        ksm.preempt("nozero:entry")
        return EFAULT
"""


def zero_machine() -> Machine:
    m = Machine()
    p = m.spawn("p")
    r = p.mmap(8, name="ram")
    p.write(r, range(8), 0)
    p.madvise(r, "mergeable")
    m.sysfs_write("use_zero_pages", 1)
    m.sysfs_write("run", 1)
    m.run_full_scans(3)
    return m


def test_patch_replaces_a_method_for_the_block_only(tmp_path):
    orig = Ksm.try_to_merge_with_zero_page
    assert zero_machine().counters()["ksm_zero_pages"] == 8
    patch = load_patch(write(tmp_path, "nozero.py", NOZERO))
    with patch.applied():
        assert Ksm.try_to_merge_with_zero_page is not orig
        assert active_patches() == [str((tmp_path / "nozero.py").resolve())]
        c = zero_machine().counters()
        assert c["ksm_zero_pages"] == 0 and c["pages_sharing"] == 7
    assert Ksm.try_to_merge_with_zero_page is orig
    assert Ksm.preempt is None and active_patches() == []
    assert zero_machine().counters()["ksm_zero_pages"] == 8


def test_kernel_name_of_a_private_function_and_its_alias(tmp_path):
    path = write(tmp_path, "enter.py", """
        from samepage.ksm.ksm import Ksm

        _orig = Ksm._Ksm__ksm_enter          # read when the file loads: the unpatched one

        def __ksm_enter(ksm, mm):
            ksm.entered = getattr(ksm, "entered", 0) + 1
            return _orig(ksm, mm)
    """)
    orig = Ksm._Ksm__ksm_enter
    with load_patch(path).applied():
        assert Ksm.ksm_enter is Ksm._Ksm__ksm_enter is not orig
        m = Machine()
        a, b = m.spawn("a"), m.spawn("b")
        for p in (a, b):
            p.madvise(p.mmap(1, name="r"), "mergeable")
        assert m.ksm.entered == 2 and len(m.ksm.mm_list) == 2
    assert Ksm._Ksm__ksm_enter is orig and Ksm.ksm_enter is orig


def test_memory_manager_method_and_ambiguity(tmp_path):
    path = write(tmp_path, "split.py", """
        def split_huge_page(mem, page):
            return -11          # -EAGAIN: the memory manager never splits
    """)
    orig_mem, orig_ksm = Memory.split_huge_page, Ksm.split_huge_page
    with load_patch(path).applied():
        assert Memory.split_huge_page is not orig_mem
        assert Ksm.split_huge_page is orig_ksm
    assert Memory.split_huge_page is orig_mem
    amb = write(tmp_path, "amb.py", """
        def split_huge_page(x, page):
            return 0
    """)
    with pytest.raises(PatchError, match=r"amb\.py: split_huge_page: ambiguous: "
                                         r"Ksm\.split_huge_page and Memory\.split_huge_page"):
        load_patch(amb)


@pytest.mark.parametrize("text,msg", [
    ("def try_to_merge_with_zero_pages(ksm, rmap_item, page):\n    return 0\n",
     r"bad\.py: try_to_merge_with_zero_pages: no such method of the engine or the memory "
     r"manager \(did you mean try_to_merge_with_zero_page"),
    ("def try_to_merge_with_zero_page(ksm, page):\n    return 0\n",
     r"bad\.py: try_to_merge_with_zero_page: signature \(ksm, page\) differs from "
     r"Ksm\.try_to_merge_with_zero_page\(self, item, page\)$"),
    ("def f(:\n    pass\n", r"bad\.py: line 1: SyntaxError: "),
    ("x = 1\nraise RuntimeError('boom')\n", r"bad\.py: line 2: RuntimeError: boom$"),
    ("def pages_volatile(ksm):\n    return 0\n", r"is a property, not a method"),
    ("STRATEGIES = {'x': 3}\n", r"bad\.py: STRATEGIES: must be a dict"),
    ("def s(ksm):\n    pass\nSTRATEGIES = {'x': s}\n", r"bad\.py: STRATEGIES\.x: a strategy"),
    # folios and rmap_items are handles: `is` between two of them is never true
    ("def write_protect_page(ksm, vma, folio):\n    f = ksm.mem.page_folio[folio.pfn]\n"
     "    if f is folio:\n        return 0\n",
     r"bad\.py: line 3: 'f is folio': folios and rmap_items are handles, compare them with "
     r"==$"),
    ("def remove_rmap_item_from_tree(ksm, item):\n    x = 1\n\n"
     "    if x and ksm.ff_reinsert is not item:\n        pass\n",
     r"bad\.py: line 4: 'ksm.ff_reinsert is not item': .* compare them with !=$"),
])
def test_bad_patches(tmp_path, text, msg):
    path = write(tmp_path, "bad.py", text)
    with pytest.raises(PatchError, match=msg):
        load_patch(path)
    assert Ksm.preempt is None


def test_identity_of_other_things_is_allowed(tmp_path):
    """`is` against None, a stable node, a marker: not handles, accepted."""
    path = write(tmp_path, "ok.py", """
        def ksm_get_folio(ksm, node, flags):
            folio = ksm.mem.page_folio[node.kpfn]
            if folio is None or folio.mapping is not node:
                return None
            return folio
    """)
    assert load_patch(path).replacements


def test_helpers_and_imports_are_not_methods(tmp_path):
    path = write(tmp_path, "ok.py", """
        from os.path import join            # imported: ignored
        def _helper(x):                     # private helper: ignored
            return x
        def calc_checksum(ksm, pfn):
            return _helper(12345)
    """)
    p = load_patch(path)
    assert [(c.__name__, a) for c, a, _ in p.replacements] == [("Ksm", "calc_checksum")]


# ------------------------------------------------------------------------------ the CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_run_with_patch(runner, tmp_path):
    path = write(tmp_path, "nozero.py", NOZERO)
    plain = runner.invoke(app, ["run", ZERO, "--json"])
    patched = runner.invoke(app, ["run", ZERO, "--json", "--patch", path])
    assert plain.exit_code == 0 and patched.exit_code == 0, patched.output
    last = [json.loads(line) for line in plain.stdout.splitlines()][-2]
    plast = [json.loads(line) for line in patched.stdout.splitlines()][-2]
    assert last["ksm_zero_pages"] > 0 and plast["ksm_zero_pages"] == 0
    assert plast["pages_sharing"] > last["pages_sharing"]
    assert Ksm.preempt is None                 # restored when the command ended


@pytest.mark.parametrize("cmd", [["run", ZERO], ["explore", RACE],
                                 ["compare", ZERO, "--against", "x.jsonl"]])
def test_cli_bad_patch_is_one_line_exit_2(runner, tmp_path, cmd):
    path = write(tmp_path, "bad.py", "def try_to_merge_with_zero_page(ksm, page):\n"
                                     "    return 0\n")
    r = runner.invoke(app, [*cmd, "--patch", path])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"samepage: error: {path}: "
                                                   "try_to_merge_with_zero_page: signature")


STRATEGY_PATCH = """
    from samepage.ksm.same_folio import unstable_merge_v618
    from samepage.patch import same_folio_strategy

    @same_folio_strategy("use-without-ref")
    def use_without_ref(ksm, item, page):
        # early-put's flaw, as a patch: drop the tree page's reference before merging
        mem = ksm.mem
        found = ksm.unstable_tree_search_insert(item, page)
        if found is None:
            return
        tree_item, tree_page = found
        same = mem.page_folio[page] == mem.page_folio[tree_page]
        if same:
            mem.folio_put(mem.page_folio[tree_page])
            ksm.preempt("use-without-ref:after-put")
        kfolio = ksm.try_to_merge_two_pages(item, page, tree_item, tree_page)
        if not same:
            mem.folio_put(mem.page_folio_used(tree_page, "folio_put tree_page"))
        if kfolio is not None:
            ksm.stable_tree_insert_pair(kfolio, tree_item, item)

    STRATEGIES = {"plain-copy": unstable_merge_v618}
"""


def test_cli_patch_strategies_run_and_explore(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path, "strat.py", STRATEGY_PATCH)
    r = runner.invoke(app, ["run", str(ROOT / "examples" / "thp-identical.toml"), "-q",
                            "--same-folio", "plain-copy", "--patch", path])
    assert r.exit_code == 0, r.output
    assert "use-without-ref" not in same_folio.STRATEGIES
    r = runner.invoke(app, ["explore", RACE, "--same-folio", "use-without-ref",
                            "--patch", path, "--budget", "60"])
    assert r.exit_code == 1, r.output
    assert "use-after-free" in r.stdout
    saved = tmp_path / "seed-same-folio-race.schedule.json"
    assert saved.exists()
    r = runner.invoke(app, ["explore", RACE, "--replay", str(saved), "--patch", path])
    assert r.exit_code == 1 and "the recorded report is reproduced" in r.stdout
    # without the patch, the schedule's strategy is unknown: one line, exit 2
    r = runner.invoke(app, ["explore", RACE, "--replay", str(saved)])
    assert r.exit_code == 2 and "unknown strategy 'use-without-ref'" in r.stderr
