"""Tests of samepage.scenario: scenario schema, loader errors and trace I/O."""

from __future__ import annotations

import io
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from samepage.scenario import (
    COUNTER_NAMES,
    TUNABLES,
    Scenario,
    ScenarioError,
    format_batch_record,
    format_final_record,
    load_scenario,
    load_scenario_text,
    read_trace,
    write_trace_jsonl,
)
from samepage.scenario.schema import PatternFill, UniqueFill
from samepage.scenario.tunables import TUNABLE_DEFAULTS

# The spec's example (scenario-format.md), with a second process to make it richer.
SPEC_EXAMPLE = """
name = "two VMs from one image"          # optional
description = "..."                      # optional

[ksm]
pages_to_scan = 100
sleep_millisecs = 200
max_page_sharing = 256
use_zero_pages = 0
smart_scan = 1
merge_across_nodes = 1

[machine]
numa_nodes = 1
thp = "madvise"

[[process]]
name = "vm1"
merge_any = false

  [[process.region]]
  name = "ram"
  pages = 300
  thp = "nohuge"
  mergeable = true
  fill = { kind = "pattern", distinct = 1 }

[[process]]
name = "vm2"

  [[process.region]]
  name = "ram"
  pages = 300
  fill = { kind = "pattern", distinct = 1 }

[[event]]
after_batch = 8
process = "vm1"
op = "write"
region = "ram"
pages = [0, 1, 2]
token = 77

[run]
batches = 16
"""

PROC = """
[[process]]
name = "vm1"
  [[process.region]]
  name = "ram"
  pages = 10
  fill = { kind = "pattern", distinct = 2 }
  [[process.region]]
  name = "heap"
  pages = 4
  fill = { kind = "zero" }
"""

RUN = "\n[run]\nbatches = 10\n"


def event(**kv: object) -> str:
    """One [[event]] table with the given keys (TOML literals given as Python values)."""
    lines = ["[[event]]"]
    for k, v in kv.items():
        lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def load_err(text: str, filename: str = "t.toml") -> ScenarioError:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text(text, filename)
    e = info.value
    assert "\n" not in str(e)
    assert str(e) == f"{e.file}: {e.key}: {e.msg}"
    assert e.file == filename
    return e


# --------------------------------------------------------------------------- valid files


def test_spec_example_loads() -> None:
    s = load_scenario_text(SPEC_EXAMPLE)
    assert s.path is None
    assert s.name == "two VMs from one image"
    assert s.description == "..."
    assert list(s.ksm) == ["pages_to_scan", "sleep_millisecs", "max_page_sharing", "use_zero_pages",
                           "smart_scan", "merge_across_nodes"]
    assert s.ksm["sleep_millisecs"] == 200
    assert s.machine.numa_nodes == 1 and s.machine.thp == "madvise" and s.machine.mthp_kb == []
    assert s.model.same_folio == "v6.18" and s.model.split_zero_remap is True
    assert [p.name for p in s.processes] == ["vm1", "vm2"]
    vm1 = s.processes[0]
    assert vm1.merge_any is False and vm1.numa_node == 0
    ram = vm1.regions[0]
    assert (ram.name, ram.pages, ram.thp, ram.mergeable) == ("ram", 300, "nohuge", True)
    assert ram.tokens() == [1] * 300
    vm2_ram = s.find_region("vm2", "ram")
    assert vm2_ram is not None and vm2_ram.thp == "default" and vm2_ram.mergeable is True
    (ev,) = s.events
    assert (ev.after_batch, ev.process, ev.op, ev.region, ev.token) == (8, "vm1", "write", "ram", 77)
    assert ev.page_indices(ram.pages) == [0, 1, 2]
    assert s.run.batches == 16
    assert s.events_after(8) == [ev] and s.events_after(7) == []
    assert s.process_names() == ["vm1", "vm2"]


def test_load_scenario_from_file(tmp_path) -> None:
    p = tmp_path / "s.toml"
    p.write_text(SPEC_EXAMPLE)
    s = load_scenario(p)
    assert s.path == str(p)
    assert isinstance(s, Scenario)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario(tmp_path / "nope.toml")
    assert info.value.key == "(file)"
    assert info.value.file == str(tmp_path / "nope.toml")


MINIMAL = '[[process]]\nname = "p"\n[[process.region]]\nname = "r"\npages = 1\nfill = { kind = "zero" }\n'


def test_minimal_and_defaults() -> None:
    s = load_scenario_text(MINIMAL + "[run]\nbatches = 1\n")
    assert s.ksm == {} and s.events == [] and s.machine.thp is None
    assert s.processes[0].regions[0].mergeable is True and s.processes[0].merge_any is False
    # without a process ksmd has nothing to scan: refused (checks.check_runnable)
    assert load_err("[run]\nbatches = 1\n").key == "process"


def test_process_without_regions() -> None:
    s = load_scenario_text(PROC + '[[process]]\nname = "idle"\n' + RUN)
    assert s.processes[1].regions == []


def test_machine_and_model_options() -> None:
    s = load_scenario_text(
        '[machine]\nnuma_nodes = 2\nthp = "always"\nmthp_kb = [16, 64, 2048]\n'
        '[model]\nsame_folio = "split-retry"\nsplit_zero_remap = false\n'
        '[[process]]\nname = "a"\nnuma_node = 1\n' + PROC + RUN)
    assert s.machine.mthp_kb == [16, 64, 2048]
    assert s.model.same_folio == "split-retry" and s.model.split_zero_remap is False
    assert s.processes[0].numa_node == 1


def test_every_tunable_accepted_in_ksm_table() -> None:
    lines = [f"{k} = {json.dumps(v)}" for k, v in TUNABLE_DEFAULTS.items() if k != "run"]
    s = load_scenario_text("[ksm]\n" + "\n".join(lines) + "\n" + PROC + RUN)
    assert set(s.ksm) == set(TUNABLES) - {"run"}
    assert list(TUNABLES)[0] == "run" and set(TUNABLES) == set(TUNABLE_DEFAULTS)


def test_ksm_booleans_become_integers() -> None:
    s = load_scenario_text("[ksm]\nuse_zero_pages = true\nsmart_scan = false\nmerge_across_nodes = 1\n"
                           'advisor_mode = "scan-time"\n' + PROC + RUN)
    assert s.ksm == {"use_zero_pages": 1, "smart_scan": 0, "merge_across_nodes": 1,
                     "advisor_mode": "scan-time"}
    assert type(s.ksm["use_zero_pages"]) is int


# --------------------------------------------------------------------------- fills


def region_tokens(fill: str, pages: int) -> list[int]:
    s = load_scenario_text(f'[[process]]\nname = "p"\n[[process.region]]\nname = "r"\npages = {pages}\n'
                           f"fill = {fill}\n" + RUN)
    return s.processes[0].regions[0].tokens()


def test_fill_zero() -> None:
    assert region_tokens('{ kind = "zero" }', 3) == [0, 0, 0]


def test_fill_pattern() -> None:
    assert region_tokens('{ kind = "pattern", distinct = 3 }', 7) == [1, 2, 3, 1, 2, 3, 1]
    assert region_tokens('{ kind = "pattern", distinct = 2, offset = 10 }', 4) == [11, 12, 11, 12]


def test_fill_unique() -> None:
    assert region_tokens('{ kind = "unique" }', 3) == [2**40, 2**40 + 1, 2**40 + 2]
    assert region_tokens('{ kind = "unique", seed = 2 }', 2) == [2**40 + 20_000_000, 2**40 + 20_000_001]


def test_fill_tokens() -> None:
    assert region_tokens(f'{{ kind = "tokens", tokens = [0, 5, {2**63 - 1}] }}', 3) == [0, 5, 2**63 - 1]


@given(distinct=st.integers(1, 1000), offset=st.integers(0, 2**40), pages=st.integers(1, 3000))
def test_pattern_tokens_property(distinct: int, offset: int, pages: int) -> None:
    toks = PatternFill(distinct=distinct, offset=offset).page_tokens(pages)
    assert len(toks) == pages
    assert all(1 + offset <= t <= distinct + offset for t in toks)
    assert len(set(toks)) == min(distinct, pages)
    assert all(toks[i] == toks[i + distinct] for i in range(pages - distinct))


@given(seed_a=st.integers(0, 1000), seed_b=st.integers(0, 1000), pages=st.integers(1, 5000))
def test_unique_tokens_disjoint_across_seeds(seed_a: int, seed_b: int, pages: int) -> None:
    a = UniqueFill(seed=seed_a).page_tokens(pages)
    b = UniqueFill(seed=seed_b).page_tokens(pages)
    assert len(set(a)) == pages and all(t >= 2**40 for t in a)
    if seed_a != seed_b:
        assert not set(a) & set(b)


# --------------------------------------------------------------------------- errors

REGION = '[[process]]\nname = "p"\n[[process.region]]\nname = "r"\npages = 4\n'

ERROR_CASES = [
    # top level and [run]
    ("x = 1" + RUN, "x", "unknown key"),
    ('path = "/etc"' + RUN, "path", "unknown key"),
    ("", "run", "missing required key"),
    ("[run]\nbatches = 0", "run.batches", "must be >= 1 (got 0)"),
    ('[run]\nbatches = "3"', "run.batches", "must be an integer"),
    ("[run]\nbatches = 3.0", "run.batches", "must be an integer"),
    ("[run]\nbatches = 3\nfoo = 1", "run.foo", "unknown key"),
    ("name = 3" + RUN, "name", "must be a string"),
    # [ksm]
    ("[ksm]\nrun = 1" + RUN, "ksm.run", "not allowed in [ksm]"),
    ("[ksm]\nfoo = 1" + RUN, "ksm.foo", "unknown tunable"),
    ("[ksm]\npages_to_scan = -1" + RUN, "ksm.pages_to_scan", "must be >= 0 (got -1)"),
    ("[ksm]\npages_to_scan = 4294967296" + RUN, "ksm.pages_to_scan", "must be <= 4294967295"),
    ("[ksm]\nsleep_millisecs = 4294967296" + RUN, "ksm.sleep_millisecs", "must be <= 4294967295"),
    ('[ksm]\npages_to_scan = "100"' + RUN, "ksm.pages_to_scan", "must be an integer"),
    ("[ksm]\npages_to_scan = true" + RUN, "ksm.pages_to_scan", "must be an integer"),
    ("[ksm]\nmax_page_sharing = 1" + RUN, "ksm.max_page_sharing", "must be >= 2 (got 1)"),
    ("[ksm]\nuse_zero_pages = 2" + RUN, "ksm.use_zero_pages", "must be 0 or 1"),
    ("[ksm]\nadvisor_target_scan_time = 0" + RUN, "ksm.advisor_target_scan_time", "must be >= 1"),
    ('[ksm]\nadvisor_mode = "fast"' + RUN, "ksm.advisor_mode", '"none" or "scan-time"'),
    ("[ksm]\nadvisor_mode = 1" + RUN, "ksm.advisor_mode", "must be a string"),
    ('[ksm]\nadvisor_mode = "scan-time"\npages_to_scan = 5' + RUN, "ksm.pages_to_scan", "advisor"),
    ("ksm = 3" + RUN, "ksm", "must be a table"),
    # [machine] and [model]
    ("[machine]\nnuma_nodes = 0" + RUN, "machine.numa_nodes", "must be >= 1"),
    ("[machine]\nnuma_nodes = 65" + RUN, "machine.numa_nodes", "must be <= 64"),
    ('[machine]\nthp = "sometimes"' + RUN, "machine.thp", 'must be one of "always", "madvise" or "never"'),
    ("[machine]\nmthp_kb = [16, 12]" + RUN, "machine.mthp_kb[1]", "power of two"),
    ("[machine]\nmthp_kb = [4]" + RUN, "machine.mthp_kb[0]", "power of two"),
    ("[machine]\nmthp_kb = [4096]" + RUN, "machine.mthp_kb[0]", "power of two"),
    ("[machine]\nmthp_kb = [16, 16]" + RUN, "machine.mthp_kb[1]", "duplicate"),
    ("[machine]\nhuge = 1" + RUN, "machine.huge", "unknown key"),
    ('[model]\nsame_folio = "v7"' + RUN, "model.same_folio", "must be one of"),
    ("[model]\nsplit_zero_remap = 1" + RUN, "model.split_zero_remap", "must be a boolean"),
    # processes and regions
    ('[[process]]\nname = "a"\n[[process]]\nname = "a"' + RUN, "process[1].name", "duplicate process name"),
    ('[[process]]\nname = ""' + RUN, "process[0].name", "must not be empty"),
    ("[[process]]\nmerge_any = true" + RUN, "process[0].name", "missing required key"),
    ('[[process]]\nname = "a"\nmerge_any = 1' + RUN, "process[0].merge_any", "must be a boolean"),
    ('[[process]]\nname = "a"\nnuma_node = 1' + RUN, "process[0].numa_node", "must be < machine.numa_nodes"),
    ('[[process]]\nname = "a"\ncolour = 1' + RUN, "process[0].colour", "unknown key"),
    ('[[process]]\nname = "a"\n[[process]]\nname = "b"\n[[process.region]]\nname = "r"\npages = 0\n'
     'fill = { kind = "zero" }' + RUN, "process[1].region[0].pages", "must be >= 1 (got 0)"),
    (REGION + 'fill = { kind = "zero" }\n[[process.region]]\nname = "r"\npages = 1\nfill = { kind = "zero" }'
     + RUN, "process[0].region[1].name", "duplicate region name"),
    (REGION + 'thp = "always"\nfill = { kind = "zero" }' + RUN, "process[0].region[0].thp", "must be one of"),
    (REGION + RUN, "process[0].region[0].fill", "missing required key"),
    (REGION + 'fill = { kind = "zero", distinct = 1 }' + RUN, "process[0].region[0].fill.distinct", "unknown key"),
    (REGION + 'fill = { kind = "pattern", distinct = 1, colour = 2 }' + RUN,
     "process[0].region[0].fill.colour", "unknown key"),
    (REGION + 'fill = { kind = "pattern" }' + RUN, "process[0].region[0].fill.distinct", "missing required key"),
    (REGION + 'fill = { kind = "pattern", distinct = 0 }' + RUN, "process[0].region[0].fill.distinct", "must be >= 1"),
    (REGION + 'fill = { kind = "pattern", distinct = 1, offset = -1 }' + RUN,
     "process[0].region[0].fill.offset", "must be >= 0"),
    (REGION + f'fill = {{ kind = "pattern", distinct = 2, offset = {2**64 - 2} }}' + RUN,
     "process[0].region[0].fill.offset", "2**64"),
    (REGION + 'fill = { kind = "unique", seed = -1 }' + RUN, "process[0].region[0].fill.seed", "must be >= 0"),
    (REGION + 'fill = { kind = "tokens", tokens = [1, 2, 3] }' + RUN,
     "process[0].region[0].fill.tokens", "exactly 4 entries"),
    (REGION + 'fill = { kind = "tokens", tokens = [1, 2, -3, 4] }' + RUN,
     "process[0].region[0].fill.tokens[2]", "must be >= 0"),
    (REGION + 'fill = { kind = "tokens", tokens = [1, 2, "x", 4] }' + RUN,
     "process[0].region[0].fill.tokens[2]", "must be an integer"),
    (REGION + 'fill = { kind = "random" }' + RUN, "process[0].region[0].fill", 'unknown fill kind "random"'),
    (REGION + "fill = { distinct = 1 }" + RUN, "process[0].region[0].fill.kind", "missing required key"),
    (REGION + 'fill = "zero"' + RUN, "process[0].region[0].fill", "must be a table"),
    # events: keys per op
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", pages=[1], child="x") + RUN,
     "event[0].child", "not allowed for op 'zap'"),
    (PROC + event(after_batch=1, process="vm1", op="exit", region="ram") + RUN,
     "event[0].region", "not allowed for op 'exit'"),
    (PROC + event(after_batch=1, process="vm1", op="write", region="ram", pages=[1]) + RUN,
     "event[0].token", "required for op 'write'"),
    (PROC + event(after_batch=1, process="vm1", op="write", pages=[1], token=3) + RUN,
     "event[0].region", "required for op 'write'"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram") + RUN,
     "event[0].pages", "required for op 'zap'"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", pages=[1], range=[0, 2]) + RUN,
     "event[0].range", "not both"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", pages=[]) + RUN,
     "event[0].pages", "must not be empty"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", range=[3, 3]) + RUN,
     "event[0].range", "start must be < stop"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", range=[3]) + RUN,
     "event[0].range", "two integers"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", range=[1, 2, 3]) + RUN,
     "event[0].range", "two integers"),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="ram", pages=[-1]) + RUN,
     "event[0].pages[0]", "must be >= 0"),
    (PROC + event(after_batch=1, process="vm1", op="write", region="ram", pages=[1], token=-1) + RUN,
     "event[0].token", "must be >= 0"),
    (PROC + event(after_batch=1, process="vm1", op="write", region="ram", pages=[1], token=2**64) + RUN,
     "event[0].token", "must be <= 18446744073709551615"),
    (PROC + event(after_batch=1, process="vm1", op="fork") + RUN, "event[0].child", "required for op 'fork'"),
    (PROC + event(after_batch=1, process="vm1", op="merge_any") + RUN, "event[0].value", "required"),
    (PROC + event(after_batch=1, process="vm1", op="merge_any", value=1) + RUN, "event[0].value", "must be a boolean"),
    (PROC + event(after_batch=1, process="vm1", op="set", value=1) + RUN, "event[0].tunable", "required for op 'set'"),
    (PROC + event(after_batch=1, process="vm1", op="set", tunable="run", value=3) + RUN,
     "event[0].value", "must be 0, 1 or 2"),
    (PROC + event(after_batch=1, process="vm1", op="set", tunable="turbo", value=3) + RUN,
     "event[0].tunable", "unknown tunable"),
    (PROC + event(after_batch=1, process="vm1", op="set", tunable="max_page_sharing", value=1) + RUN,
     "event[0].value", "must be >= 2"),
    (PROC + event(after_batch=1, process="vm1", op="set", tunable="sleep_millisecs", value="fast") + RUN,
     "event[0].value", "must be an integer"),
    (PROC + event(after_batch=1, process="vm1", op="dance") + RUN, "event[0].op", "must be one of"),
    (PROC + event(after_batch=1, process="vm1", op="exit", when=3) + RUN, "event[0].when", "unknown key"),
    (PROC + event(process="vm1", op="exit") + RUN, "event[0].after_batch", "missing required key"),
    (PROC + event(after_batch=0, process="vm1", op="exit") + RUN, "event[0].after_batch", "must be >= 1 (got 0)"),
    (PROC + event(after_batch=11, process="vm1", op="exit") + RUN,
     "event[0].after_batch", "must be <= run.batches = 10 (got 11)"),
    # events: cross-checks
    (PROC + event(after_batch=1, process="vm9", op="exit") + RUN, "event[0].process", 'unknown process "vm9"'),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="stack", pages=[0]) + RUN,
     "event[0].region", 'has no region "stack"'),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="heap", pages=[4]) + RUN,
     "event[0].pages", 'page 4 is outside region "heap" (4 pages)'),
    (PROC + event(after_batch=1, process="vm1", op="zap", region="heap", range=[2, 5]) + RUN,
     "event[0].range", "outside region"),
    (PROC + event(after_batch=1, process="vm1", op="fork", child="vm1") + RUN, "event[0].child", "already used"),
    (PROC + event(after_batch=2, process="vm1", op="exit")
     + event(after_batch=3, process="vm1", op="merge_any", value=True) + RUN,
     "event[1].process", "has exited (event[0], after batch 2)"),
    # the same file sorted by after_batch: the exit (file index 1) comes first
    (PROC + event(after_batch=5, process="vm1", op="merge_any", value=True)
     + event(after_batch=2, process="vm1", op="exit") + RUN,
     "event[0].process", "has exited (event[1]"),
    (PROC + event(after_batch=2, process="kid", op="exit")
     + event(after_batch=3, process="vm1", op="fork", child="kid") + RUN,
     "event[0].process", "does not exist yet"),
    (PROC + event(after_batch=1, process="vm1", op="munmap", region="heap")
     + event(after_batch=1, process="vm1", op="mergeable", region="heap") + RUN,
     "event[1].region", 'region "heap" of process "vm1" was unmapped by event[0]'),
    (PROC + event(after_batch=1, process="vm1", op="munmap", region="heap")
     + event(after_batch=2, process="vm1", op="fork", child="kid")
     + event(after_batch=3, process="kid", op="zap", region="heap", pages=[0]) + RUN,
     "event[2].region", 'process "kid" has no region "heap"'),
    (PROC + event(after_batch=1, process="vm1", op="fork", child="kid")
     + event(after_batch=2, process="vm1", op="fork", child="kid") + RUN,
     "event[1].child", 'process name "kid" is already used'),
    ('[ksm]\nadvisor_mode = "scan-time"\n' + PROC
     + event(after_batch=1, process="vm1", op="set", tunable="pages_to_scan", value=5) + RUN,
     "event[0].tunable", "advisor_mode"),
]


@pytest.mark.parametrize(("text", "key", "msg"), ERROR_CASES, ids=[c[1] + ":" + c[2][:20] for c in ERROR_CASES])
def test_errors(text: str, key: str, msg: str) -> None:
    e = load_err(text)
    assert e.key == key, str(e)
    assert msg in e.msg, str(e)


def test_toml_syntax_error() -> None:
    e = load_err("[run]\nbatches = \n", "bad.toml")
    assert e.key == "(toml)"
    assert "line 2" in e.msg
    assert str(e).startswith("bad.toml: (toml): ")


def test_toml_duplicate_key_is_a_syntax_error() -> None:
    assert load_err("[run]\nbatches = 1\nbatches = 2\n").key == "(toml)"


def test_quoted_key_in_path() -> None:
    e = load_err('[ksm]\n"pages to scan" = 1' + RUN)
    assert e.key == 'ksm."pages to scan"'


def test_error_on_string_default_filename() -> None:
    with pytest.raises(ScenarioError) as info:
        load_scenario_text("[run]\nbatches = 0\n")
    assert str(info.value) == "<string>: run.batches: must be >= 1 (got 0)"


def test_scenario_error_attributes_and_pickle() -> None:
    e = ScenarioError("f.toml", "run.batches", "must be\nan integer")
    assert (e.file, e.key, e.msg) == ("f.toml", "run.batches", "must be an integer")
    assert str(e) == "f.toml: run.batches: must be an integer"
    e2 = pickle.loads(pickle.dumps(e))
    assert str(e2) == str(e) and e2.key == e.key


# --------------------------------------------------------------------------- events


def test_fork_child_inherits_only_mapped_regions() -> None:
    text = (PROC
            # file order differs from apply order: the child's write comes first in the file
            + event(after_batch=4, process="kid", op="write", region="ram", range=[2, 5], token=9)
            + event(after_batch=1, process="vm1", op="munmap", region="heap")
            + event(after_batch=2, process="vm1", op="fork", child="kid")
            + event(after_batch=3, process="kid", op="fork", child="grandkid")
            + event(after_batch=5, process="vm1", op="exit")
            + event(after_batch=6, process="grandkid", op="zap", region="ram", pages=[9])
            + event(after_batch=6, process="kid", op="merge_any", value=True)
            + event(after_batch=7, process="kid", op="unmergeable", region="ram")
            + RUN)
    s = load_scenario_text(text)
    assert s.process_names() == ["vm1", "kid", "grandkid"]
    assert s.parent_of("kid") == "vm1" and s.parent_of("grandkid") == "kid" and s.parent_of("vm1") is None
    assert s.find_region("kid", "ram") is s.find_region("vm1", "ram")
    assert s.find_region("kid", "heap") is None
    assert s.find_region("vm1", "heap") is not None  # as created
    assert s.find_process("kid") is None and s.find_process("vm1") is s.processes[0]
    assert [e.op for e in s.sorted_events()] == ["munmap", "fork", "fork", "write", "exit", "zap",
                                                 "merge_any", "unmergeable"]
    assert [e.op for e in s.events_after(6)] == ["zap", "merge_any"]
    assert s.events[0].page_indices(10) == [2, 3, 4]


def test_same_batch_events_apply_in_file_order() -> None:
    ok = (PROC + event(after_batch=3, process="vm1", op="fork", child="kid")
          + event(after_batch=3, process="kid", op="exit") + RUN)
    load_scenario_text(ok)
    bad = (PROC + event(after_batch=3, process="kid", op="exit")
           + event(after_batch=3, process="vm1", op="fork", child="kid") + RUN)
    assert load_err(bad).key == "event[0].process"


def test_set_events() -> None:
    s = load_scenario_text(
        PROC
        + event(after_batch=1, process="vm1", op="set", tunable="run", value=2)
        + event(after_batch=2, process="vm1", op="set", tunable="use_zero_pages", value=True)
        + event(after_batch=1, op="set", tunable="run", value=1)   # no process: allowed
        + event(after_batch=3, process="vm1", op="set", tunable="advisor_mode", value="scan-time")
        + event(after_batch=4, process="vm1", op="set", tunable="advisor_mode", value="none")
        + event(after_batch=5, process="vm1", op="set", tunable="pages_to_scan", value=1000)
        + event(after_batch=6, process="vm1", op="merge_any", value=False)
        + RUN)
    assert [(e.tunable, e.value) for e in s.events[:2] + s.events[3:6]] == [
        ("run", 2), ("use_zero_pages", 1), ("advisor_mode", "scan-time"), ("advisor_mode", "none"),
        ("pages_to_scan", 1000)]
    assert type(s.events[1].value) is int
    assert s.events[2].process is None and s.events[6].value is False


def test_page_indices() -> None:
    s = load_scenario_text(PROC + event(after_batch=1, process="vm1", op="zap", region="ram", pages=[7, 1])
                           + event(after_batch=1, process="vm1", op="mergeable", region="ram") + RUN)
    assert s.events[0].page_indices(10) == [7, 1]
    assert s.events[1].page_indices(3) == [0, 1, 2]
    with pytest.raises(ValueError):
        s.events[0].page_indices(5)


# --------------------------------------------------------------------------- traces


def counters(**over: int) -> dict[str, int]:
    c = {name: i for i, name in enumerate(COUNTER_NAMES)}
    c.update(over)
    return c


def test_batch_record_key_order_matches_spec() -> None:
    rec = format_batch_record(1, 0, counters(pages_volatile=100, general_profit=-6400, extra=5))
    assert list(rec) == ["batch", "t_ms", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
                         "full_scans", "pages_scanned", "pages_skipped", "stable_node_chains",
                         "stable_node_dups", "ksm_zero_pages", "general_profit"]
    assert rec["t_ms"] == 0.0 and isinstance(rec["t_ms"], float)
    assert rec["general_profit"] == -6400 and "extra" not in rec
    assert format_batch_record(2, 1.23456, counters())["t_ms"] == 1.235
    with pytest.raises(ValueError):
        format_batch_record(1, 0.0, {"pages_shared": 0})


def test_final_record_matches_spec() -> None:
    rec = format_final_record("6.18.44", {"vm1": {
        "ksm_rmap_items": 300, "ksm_zero_pages": 0, "ksm_merging_pages": 300,
        "ksm_process_profit": 1209600, "ksm_merge_any": 0, "ksm_mergeable": 1}})
    expected = ('{"final": true, "kernel": "6.18.44", "processes": {"vm1": {"ksm_rmap_items": 300, '
                '"ksm_zero_pages": 0, "ksm_merging_pages": 300, "ksm_process_profit": 1209600, '
                '"ksm_merge_any": false, "ksm_mergeable": true}}}')
    assert json.dumps(rec) == expected


def test_trace_round_trip(tmp_path) -> None:
    batches = [format_batch_record(b, b * 20.5, counters(full_scans=b)) for b in range(1, 6)]
    final = format_final_record("6.18", {"a": dict.fromkeys(
        ["ksm_rmap_items", "ksm_zero_pages", "ksm_merging_pages", "ksm_process_profit"], 3)
        | {"ksm_merge_any": True, "ksm_mergeable": False}})
    buf = io.StringIO()
    write_trace_jsonl([*batches, final], buf)
    text = buf.getvalue()
    assert text.count("\n") == 6 and all(line.startswith("{") for line in text.splitlines())
    got_b, got_f = read_trace(io.StringIO(text))
    assert got_b == batches and got_f == final
    p = tmp_path / "t.jsonl"
    p.write_text(text)
    assert read_trace(p) == (batches, final)
    assert read_trace(str(p)) == (batches, final)
    # without a final record
    assert read_trace(io.StringIO(text.split("\n", 2)[0] + "\n")) == (batches[:1], None)


def trace_text(*records: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


@pytest.mark.parametrize(("records", "key", "msg"), [
    (["{not json"], "line 1", "invalid JSON"),
    (["[1, 2]"], "line 1", "not a JSON object"),
    ([{"hello": 1}], "line 1", "neither"),
    ([format_batch_record(1, 0, counters()), {"batch": 2, "t_ms": 1.0}], "line 2", "missing counter"),
    ([format_batch_record(2, 0, counters()), format_batch_record(2, 0, counters())], "line 2", "does not follow"),
    ([format_batch_record(1, 0, counters()) | {"pages_shared": "3"}], "line 1", "must be an integer"),
    ([format_batch_record(1, 0, counters()) | {"t_ms": "x"}], "line 1", "t_ms"),
    ([format_final_record("6.18", {}), format_batch_record(1, 0, counters())], "line 2", "after the final"),
    ([{"final": True, "kernel": "6.18", "processes": {"a": {"ksm_rmap_items": 1}}}], "line 1", "missing"),
    ([{"final": False, "kernel": "6.18", "processes": {}}], "line 1", "final must be true"),
])
def test_malformed_trace_lines(records: list, key: str, msg: str) -> None:
    f = io.StringIO(trace_text(*records))
    with pytest.raises(ScenarioError) as info:
        read_trace(f)
    e = info.value
    assert e.key == key and msg in e.msg and "\n" not in str(e)


def test_trace_blank_lines_skipped_and_numbering() -> None:
    text = "\n" + json.dumps(format_batch_record(1, 0, counters())) + "\n\n{bad\n"
    with pytest.raises(ScenarioError) as info:
        read_trace(io.StringIO(text))
    assert info.value.key == "line 4"
