"""Tests of the ``samepage`` command line (samepage.cli)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from samepage import __version__
from samepage.cli.main import app
from samepage.cli.plot import plot_trace
from samepage.cli.report import convergence
from samepage.scenario import COUNTER_NAMES, PROCESS_KEYS, load_scenario, load_scenario_text, read_trace
from samepage.scenario.model_runner import run_scenario_on_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.toml"))
REQUIRED_EXAMPLES = ("identical-pages", "two-vms", "zero-pages", "max-page-sharing", "volatile",
                     "fork-after-merge", "smart-scan-unique")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

SMALL = """
name = "small"
[ksm]
pages_to_scan = 100
sleep_millisecs = 200
[[process]]
name = "p"
  [[process.region]]
  name = "ram"
  pages = 120
  fill = { kind = "pattern", distinct = 3 }
[run]
batches = 7
"""


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def small(tmp_path: Path) -> Path:
    p = tmp_path / "small.toml"
    p.write_text(SMALL)
    return p


def one_error_line(result) -> str:
    """The run failed the documented way: exit 2, one ``samepage: error:`` line on stderr."""
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("samepage: error: ")
    return lines[0]


# ------------------------------------------------------------------------------ basics


def test_version(runner):
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert __version__ in r.stdout and "6.18" in r.stdout


def test_help_lists_commands(runner):
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("run", "demo", "validate"):
        assert cmd in r.stdout


# ------------------------------------------------------------------------------ run --json


def test_run_json_is_exactly_the_trace(runner, small):
    r = runner.invoke(app, ["run", str(small), "--json"])
    assert r.exit_code == 0, r.stderr
    assert r.stderr == ""
    lines = r.stdout.splitlines()
    assert len(lines) == 7 + 1
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    batches, final = records[:-1], records[-1]
    assert [b["batch"] for b in batches] == list(range(1, 8))
    for b in batches:
        # the 11 counters in order, then the extra keys of the CPU model (ignored by compare)
        assert list(b) == ["batch", "t_ms", *COUNTER_NAMES, "ksmd_cpu_us", "pages_to_scan", "ops"]
    assert final["final"] is True and final["kernel"] == "6.18"
    assert list(final["processes"]) == ["p"]
    assert list(final["processes"]["p"]) == list(PROCESS_KEYS)
    # ... and the trace reader accepts it.
    path = small.with_suffix(".jsonl")
    path.write_text(r.stdout)
    rb, rf = read_trace(path)
    assert rb == batches and rf == final


def test_run_json_equals_the_model_runner(runner):
    path = EXAMPLES / "two-vms.toml"
    r = runner.invoke(app, ["run", str(path), "--json"])
    assert r.exit_code == 0
    want = run_scenario_on_model(load_scenario(path))
    got = [json.loads(line) for line in r.stdout.splitlines()]
    assert got == want.records + [want.final]


def test_run_json_batches_option(runner, small):
    r = runner.invoke(app, ["run", str(small), "--json", "--batches", "3"])
    assert r.exit_code == 0
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x.get("batch") for x in recs] == [1, 2, 3, None]
    assert recs[-1]["final"] is True


def test_run_json_with_plot_keeps_stdout_clean(runner, small, tmp_path):
    png = tmp_path / "p.png"
    r = runner.invoke(app, ["run", str(small), "--json", "--plot", str(png)])
    assert r.exit_code == 0
    assert all(json.loads(line) for line in r.stdout.splitlines())
    assert png.read_bytes().startswith(PNG_MAGIC)


# ------------------------------------------------------------------------------ run (tables)


def test_run_table_and_summary(runner, small):
    r = runner.invoke(app, ["run", str(small)])
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    for header in ("batch", "t_ms", "shared", "sharing", "unshared", "volatile", "scans",
                   "scanned", "skipped", "chains", "dups", "zero", "profit"):
        assert header in out
    assert "pages saved" in out and "MiB" in out
    assert "general_profit" in out and "full scans" in out and "simulated time" in out
    assert "rmap_items" in out and "merging_pages" in out  # the per-process table
    # 120 pages, 3 contents: 3 KSM pages, 117 sharers -> (117 * 4096) bytes saved.
    assert f"{117 * 4096 / 2**20:.2f} MiB" in out
    assert max(len(line) for line in out.splitlines()) <= 120


def test_run_quiet_prints_only_the_summary(runner, small):
    r = runner.invoke(app, ["run", str(small), "--quiet"])
    assert r.exit_code == 0
    assert "pages saved" in r.stdout
    assert "rmap_items" not in r.stdout and "t_ms" not in r.stdout


# ------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("text, where", [
    ('colour = "red"\n[run]\nbatches = 2\n', "colour: unknown key"),
    ("[ksm]\nbogus = 1\n[run]\nbatches = 2\n", "ksm.bogus"),
    ("[run]\nbatches = 2\nextra = 1\n", "run.extra: unknown key"),
    ("[run\nbatches = 2\n", "(toml)"),
])
def test_malformed_file_is_one_line_exit_2(runner, tmp_path, text, where):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    for args in (["run", str(p)], ["run", str(p), "--json"]):
        r = runner.invoke(app, args)
        line = one_error_line(r)
        assert str(p) in line and where in line
        assert r.stdout == ""


def test_missing_file(runner, tmp_path):
    r = runner.invoke(app, ["run", str(tmp_path / "nope.toml")])
    assert "file not found" in one_error_line(r)


def test_scenario_run_error(runner, tmp_path):
    p = tmp_path / "stop.toml"
    p.write_text(SMALL.replace("[run]", '[[event]]\nafter_batch = 2\nprocess = "p"\n'
                                        'op = "set"\ntunable = "run"\nvalue = 0\n[run]'))
    r = runner.invoke(app, ["run", str(p)])
    assert "ksmd cannot run" in one_error_line(r)


def test_tunable_write_error(runner, tmp_path):
    # max_page_sharing cannot change while KSM pages exist: EBUSY.
    p = tmp_path / "busy.toml"
    p.write_text(SMALL.replace("[run]", '[[event]]\nafter_batch = 5\nprocess = "p"\n'
                                        'op = "set"\ntunable = "max_page_sharing"\n'
                                        'value = 5\n[run]'))
    r = runner.invoke(app, ["run", str(p)])
    assert "max_page_sharing" in one_error_line(r)


def test_plot_into_missing_directory_fails_before_running(runner, small, tmp_path):
    r = runner.invoke(app, ["run", str(small), "--plot", str(tmp_path / "no" / "x.png")])
    assert "cannot write the plot" in one_error_line(r)
    assert r.stdout == ""


def test_plot_unknown_format(runner, small, tmp_path):
    r = runner.invoke(app, ["run", str(small), "--plot", str(tmp_path / "x.nope")])
    assert "cannot write the plot" in one_error_line(r)


# ------------------------------------------------------------------------------ plots


def test_run_plot_creates_png(runner, small, tmp_path):
    png = tmp_path / "out.png"
    r = runner.invoke(app, ["run", str(small), "--plot", str(png), "--quiet"])
    assert r.exit_code == 0, r.stderr
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_plot_trace_overlays_a_second_trace(tmp_path):
    run = run_scenario_on_model(load_scenario(EXAMPLES / "two-vms.toml"))
    other = [dict(r, pages_sharing=r["pages_sharing"] // 2) for r in run.records[:-3]]
    png = tmp_path / "cmp.png"
    plot_trace(run.records + [run.final], png, "model vs kernel", other=other,
               other_label="kernel")
    assert png.read_bytes().startswith(PNG_MAGIC)
    svg = tmp_path / "one.svg"
    plot_trace(run.records[:1], svg, "a single batch")
    assert svg.read_text().lstrip().startswith("<?xml")


# ------------------------------------------------------------------------------ demo


def test_demo_prints_what_was_saved(runner):
    t0 = time.monotonic()
    r = runner.invoke(app, ["demo"])
    elapsed = time.monotonic() - t0
    assert r.exit_code == 0, r.stderr
    out = r.stdout
    assert "Saved" in out and "MiB" in out
    assert "Dedup ratio" in out
    assert "Converged after batch" in out
    assert "ksmd CPU time" in out
    for vm in ("vm1", "vm2", "vm3", "vm4"):
        assert vm in out
    assert elapsed < 10


def test_demo_plot(runner, tmp_path):
    png = tmp_path / "demo.png"
    r = runner.invoke(app, ["demo", "--plot", str(png)])
    assert r.exit_code == 0, r.stderr
    assert png.read_bytes().startswith(PNG_MAGIC)


def test_demo_scenario_is_valid_and_converges():
    from samepage.cli.main import demo_scenario_text

    sc = load_scenario_text(demo_scenario_text(), "demo.toml")
    assert [p.name for p in sc.processes] == ["vm1", "vm2", "vm3", "vm4"]
    assert 60 <= sc.run.batches <= 100
    run = run_scenario_on_model(sc)
    conv = convergence(run.records)
    assert conv is not None and conv.batch < sc.run.batches - 10  # converged well before the end
    assert run.records[-1]["pages_sharing"] > 0 and run.records[-1]["pages_volatile"] > 0


def test_demo_show_scenario(runner):
    r = runner.invoke(app, ["demo", "--show-scenario"])
    assert r.exit_code == 0
    assert load_scenario_text(r.stdout, "shown.toml").run.batches > 0


# ------------------------------------------------------------------------------ validate


def test_required_examples_exist():
    names = {p.stem for p in EXAMPLE_FILES}
    assert set(REQUIRED_EXAMPLES) <= names


def test_validate_all_examples(runner):
    r = runner.invoke(app, ["validate", *map(str, EXAMPLE_FILES)])
    assert r.exit_code == 0, r.stdout
    lines = r.stdout.splitlines()
    assert len(lines) == len(EXAMPLE_FILES)
    assert all(line.endswith(": ok") for line in lines)


def test_validate_reports_failures(runner, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[run]\nbatches = 0\n")
    good = EXAMPLE_FILES[0]
    r = runner.invoke(app, ["validate", str(good), str(bad), str(tmp_path / "missing.toml")])
    assert r.exit_code == 2
    lines = r.stdout.splitlines()
    assert lines[0] == f"{good}: ok"
    assert lines[1].startswith(f"{bad}: run.batches: ")
    assert "file not found" in lines[2]
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_every_example_runs(runner, path):
    r = runner.invoke(app, ["run", str(path), "--json"])
    assert r.exit_code == 0, r.stderr
    recs = [json.loads(line) for line in r.stdout.splitlines()]
    sc = load_scenario(path)
    assert len(recs) == sc.run.batches + 1 and recs[-1]["final"] is True
    r = runner.invoke(app, ["run", str(path)])
    assert r.exit_code == 0 and "pages saved" in r.stdout


def test_example_expectations():
    """The numbers the examples' comments promise."""
    def last(name):
        run = run_scenario_on_model(load_scenario(EXAMPLES / f"{name}.toml"))
        return run.records[-1], run.final

    rec, _ = last("identical-pages")
    assert (rec["pages_shared"], rec["pages_sharing"]) == (1, 199)
    rec, final = last("two-vms")
    assert (rec["pages_shared"], rec["pages_sharing"], rec["pages_unshared"]) == (160, 320, 120)
    assert final["processes"]["vm1"]["ksm_merging_pages"] == 240
    rec, final = last("zero-pages")
    assert rec["ksm_zero_pages"] == 150 and final["processes"]["p"]["ksm_zero_pages"] == 150
    rec, _ = last("max-page-sharing")
    assert (rec["stable_node_chains"], rec["stable_node_dups"]) == (1, 3)
    assert (rec["pages_shared"], rec["pages_sharing"]) == (4, 4)
    rec, final = last("fork-after-merge")
    assert list(final["processes"]) == ["child"]
    rec, _ = last("smart-scan-unique")
    assert rec["pages_skipped"] > 0 and rec["pages_sharing"] == 0
    rec, _ = last("volatile")
    assert rec["pages_volatile"] == 0 and rec["pages_shared"] == 22


# ------------------------------------------------------------------------------ report helpers


def test_convergence():
    def recs(values):
        return [{"batch": i + 1, "t_ms": 100.0 * i, "full_scans": i // 3, "pages_sharing": v}
                for i, v in enumerate(values)]

    c = convergence(recs([0, 0, 50, 99, 1000, 995, 1000, 1000]))
    assert (c.batch, c.pages_sharing) == (5, 1000)
    assert convergence(recs([0, 5, 0, 0])).batch == 3      # final 0: exactly 0 from then on
    assert convergence(recs([7])).batch == 1
    assert convergence([]) is None


# ------------------------------------------------------------------------------ the installed command


def _samepage_exe() -> str | None:
    exe = Path(sys.executable).with_name("samepage")
    return str(exe) if exe.exists() else shutil.which("samepage")


@pytest.mark.skipif(_samepage_exe() is None, reason="the samepage command is not installed")
def test_installed_command_json_and_error(small, tmp_path):
    exe = _samepage_exe()
    env = dict(os.environ, PYTHONWARNINGS="error::DeprecationWarning:samepage")
    p = subprocess.run([exe, "run", str(small), "--json"], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stderr == ""
    assert len([json.loads(line) for line in p.stdout.splitlines()]) == 8

    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1\n[run]\nbatches = 1\n")
    p = subprocess.run([exe, "run", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr == f"samepage: error: {bad}: nonsense: unknown key\n"


# ------------------------------------------------------------------------------ conventions


@pytest.mark.parametrize(("args", "line"), [
    (["run"], "samepage: error: run: missing argument SCENARIO (see samepage run --help)"),
    (["run", "x.toml", "--batchez", "3"], "samepage: error: run: no such option: --batchez"),
    (["run", "x.toml", "--batches", "0"], "samepage: error: run: invalid value for"),
    (["nosuch"], "samepage: error: no such command"),
    (["kernel", "run"], "samepage: error: kernel run: missing argument SCENARIO "
                        "(see samepage kernel run --help)"),
    (["explore", "x.toml", "--budget", "nan"], "samepage: error: explore: invalid value"),
])
def test_usage_error_is_one_line_exit_2(runner, args, line):
    r = runner.invoke(app, args)
    got = one_error_line(r)
    assert got.startswith(line), got
    assert "╭" not in r.stderr and r.stdout == ""


def test_internal_error_is_short_unless_debug(runner, small, monkeypatch):
    import samepage.cli.main as cli_main

    def boom(*a, **k):
        raise ValueError("the model broke\nbadly")
    monkeypatch.setattr(cli_main, "iter_model_trace", boom)
    monkeypatch.delenv("SAMEPAGE_DEBUG", raising=False)
    r = runner.invoke(app, ["run", str(small), "-q"])
    assert r.exit_code == 3
    assert r.stderr == ("samepage: internal error: ValueError: the model broke badly "
                        "(run with SAMEPAGE_DEBUG=1 for the traceback)\n")
    monkeypatch.setenv("SAMEPAGE_DEBUG", "1")
    r = runner.invoke(app, ["run", str(small), "-q"])
    assert r.exit_code == 3
    assert "Traceback (most recent call last)" in r.stderr and "in boom" in r.stderr
    assert r.stderr.splitlines()[-1].startswith("samepage: internal error: ValueError")


def test_help_shows_brackets(runner):
    r = runner.invoke(app, ["explore", "--help"])
    assert r.exit_code == 0
    assert "[[thread]]" in r.stdout and "[model]" in r.stdout
    r = runner.invoke(app, ["--help"])
    assert "╭" not in r.stdout


def test_scenario_from_stdin(runner, small):
    r = runner.invoke(app, ["run", "-", "--json"], input=SMALL)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == runner.invoke(app, ["run", str(small), "--json"]).stdout
    r = runner.invoke(app, ["validate", "-"], input="[run]\nbatches = 0\n")
    assert r.stdout.startswith("<stdin>: run.batches: ")
    r = runner.invoke(app, ["run", "-"], input="nonsense = 1\n[run]\nbatches = 1\n")
    assert one_error_line(r) == "samepage: error: <stdin>: nonsense: unknown key"


EVIL = """
name = "evil\\u001b[31m [/] name"
[[process]]
name = "p\\u001b]0;pwned\\u0007"
  [[process.region]]
  name = "ram"
  pages = 10
  fill = { kind = "zero" }
[run]
batches = 2
"""


def test_untrusted_names_are_escaped(runner, tmp_path):
    p = tmp_path / "evil.toml"
    p.write_text(EVIL)
    r = runner.invoke(app, ["run", str(p)])
    assert r.exit_code == 0, r.stderr
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "evil\\x1b[31m [/] name: 2 batches" in r.stdout      # markup shown, not applied
    assert "p\\x1b]0;pwned\\x07" in r.stdout
    # a file name with an escape sequence, in an error and in validate's output
    odd = tmp_path / "x\x1b[2J.toml"
    r = runner.invoke(app, ["run", str(odd)])
    assert "x\\x1b[2J.toml: (file): file not found" in one_error_line(r)
    r = runner.invoke(app, ["validate", str(p), str(odd)])
    assert "\x1b" not in r.stdout + r.stderr


def trace_lines(**final_overrides) -> list[str]:
    base = ROOT / "tests" / "conformance" / "scenarios" / "identical"
    lines = base.with_suffix(".jsonl").read_text().splitlines()
    if final_overrides:
        final = json.loads(lines[-1]) | final_overrides
        lines[-1] = json.dumps(final)
    return lines


def test_compare_shows_a_hostile_kernel_release(runner, tmp_path):
    toml = ROOT / "tests" / "conformance" / "scenarios" / "identical.toml"
    t = tmp_path / "t.jsonl"
    final = json.loads(trace_lines()[-1])
    procs = {"a\x1b[2Jb": next(iter(final["processes"].values()))}
    t.write_text("\n".join(trace_lines(kernel="[/]\x1b[31m", processes=procs)) + "\n")
    r = runner.invoke(app, ["compare", str(toml), "--against", str(t)])
    assert r.exit_code == 1, r.stderr       # the process names differ
    assert "Linux [/]\\x1b[31m" in r.stdout and "\x1b" not in r.stdout
    assert "a\\x1b[2Jb" in r.stdout


@pytest.mark.parametrize(("edit", "where"), [
    (lambda ls: [ls[0].replace('"pages_shared": 0', '"pages_shared": 1e400'), *ls[1:]],
     "line 1: pages_shared: number out of range"),
    (lambda ls: [ls[0].replace('"pages_shared": 0', f'"pages_shared": {10 ** 400}'), *ls[1:]],
     "line 1: pages_shared: integer out of range"),
    (lambda ls: [re.sub(r'"t_ms": [0-9.]+', f'"t_ms": {10 ** 400}', ls[0]), *ls[1:]],
     "line 1: t_ms: integer out of range"),
    (lambda ls: [re.sub(r'"t_ms": [0-9.]+', '"t_ms": 1e300', ls[0]), *ls[1:]],
     "line 1: t_ms must be a number from 0 to"),
    (lambda ls: [re.sub(r'"t_ms": [0-9.]+', '"t_ms": NaN', ls[0]), *ls[1:]],
     "line 1: t_ms: NaN is not a number"),
    (lambda ls: ["[" * 100_000 + "]" * 100_000, *ls],
     "line 1: nested too deeply"),
    (lambda ls: ['"a string"', *ls], "line 1: not a JSON object"),
    (lambda ls: [*ls[:-1], ls[-1].replace('"processes": {', '"processes": [').replace("}}}", "}}]}")],
     "line {last}: invalid JSON"),
    (lambda ls: [*ls[:-1], json.dumps({"final": True, "kernel": "6.18", "processes": []})],
     "line {last}: processes must be an object"),
    (lambda ls: [*ls[:-1], json.dumps({"final": True, "kernel": ["6.18"], "processes": {}})],
     "line {last}: kernel must be a string"),
    (lambda ls: [ls[0].replace('"batch": 1', '"batch": 1, "batch": 1'), *ls[1:]],
     "line 1: batch: duplicate key"),
])
def test_compare_malformed_trace_is_one_line(runner, tmp_path, edit, where):
    toml = ROOT / "tests" / "conformance" / "scenarios" / "identical.toml"
    lines = trace_lines()
    where = where.format(last=len(lines))
    t = tmp_path / "t.jsonl"
    new = edit(lines)
    assert new != lines
    t.write_text("\n".join(new) + "\n")
    for extra in ([], ["--plot", str(tmp_path / "p.png")], ["--json"]):
        line = one_error_line(runner.invoke(app, ["compare", str(toml), "--against", str(t),
                                                  *extra]))
        assert line.startswith(f"samepage: error: {t}: {where}"), line
    assert not (tmp_path / "p.png").exists()


def _read_one_line_then_close(args: list[str]) -> subprocess.CompletedProcess:
    """Run the installed command with stdout into a pipe whose reader takes one line and
    closes it (as `| head -1`)."""
    p = subprocess.Popen([_samepage_exe(), *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, cwd=ROOT)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    rc = p.wait(timeout=120)
    return subprocess.CompletedProcess(args, rc, first, err)


@pytest.mark.skipif(_samepage_exe() is None, reason="the samepage command is not installed")
@pytest.mark.parametrize("command", ["validate", "compare", "run --json", "run"])
def test_closed_pipe_is_not_an_error(command, runner, tmp_path):
    """`samepage ... | head -1`: every command writes far more than a pipe holds (64 KiB), so
    the write after the reader closed fails; that ends the command quietly, exit status 0."""
    toml = "tests/conformance/scenarios/identical.toml"
    if command == "validate":
        args = ["validate", *[toml] * 3000]
    elif command == "compare":
        trace = tmp_path / "long.jsonl"
        r = runner.invoke(app, ["run", toml, "--batches", "1500", "--json"])
        trace.write_text(r.stdout)
        args = ["compare", toml, "--against", str(trace), "--json"]
    else:
        args = ["run", toml, "--batches", "3000", *command.split()[1:]]
    p = _read_one_line_then_close(args)
    assert p.stdout, p.stderr
    assert p.returncode == 0, p.stderr
    assert p.stderr == b""


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_docs_link_only_to_files_in_the_repository(doc):
    path = ROOT / doc
    text = path.read_text()
    assert "/work/" not in text and "../shared" not in text
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith(("http://", "https://")):
            assert (path.parent / target).resolve().is_relative_to(ROOT), target
            assert (path.parent / target).exists(), f"{doc} links to missing {target}"


def test_compare_empty_trace_names_the_key(runner, tmp_path):
    toml = ROOT / "tests" / "conformance" / "scenarios" / "identical.toml"
    t = tmp_path / "t.jsonl"
    t.write_text("\n")
    assert one_error_line(runner.invoke(app, ["compare", str(toml), "--against", str(t)])) == \
        f"samepage: error: {t}: (file): the trace has no batch record"
