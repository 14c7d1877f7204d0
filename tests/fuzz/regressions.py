"""One reproducer per failure class found by the fuzzer and the bad-input campaign (issue 8).

``regression_cases(tmp)`` writes the files into ``tmp`` and returns ``(id, cases)`` pairs:
each case must end in a good outcome of the oracle (tests/fuzz/runner.py).  A pair with two
cases (validate, then run) is a differential check: validate must reject what run rejects.
tests/test_fuzz.py runs them; tools/fuzz_campaign.py runs them too.
"""

from __future__ import annotations

import json
from pathlib import Path

from .runner import Case
from .strategies import SEED_SCENARIO, TRACES, toml_str

SMALL = """name = "small"
[ksm]
pages_to_scan = 100
[[process]]
name = "a"
  [[process.region]]
  name = "ram"
  pages = {pages}
  fill = {{ kind = "pattern", distinct = 1 }}{region_extra}
[[process]]
name = "b"
  [[process.region]]
  name = "ram"
  pages = 16
  fill = {{ kind = "pattern", distinct = 1 }}{region_extra}
{extra}
[run]
batches = 3
"""


def small(pages: object = 16, extra: str = "", region_extra: str = "") -> str:
    return SMALL.format(pages=pages, extra=extra, region_extra=region_extra)


def _w(tmp: Path, name: str, text: str | bytes) -> str:
    p = tmp / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(p)


def schedule_base(tmp: Path) -> dict:
    """A real schedule: what ``samepage explore SEED --same-folio early-put`` saves."""
    scen = str(SEED_SCENARIO)
    return {"scenario": scen, "same_folio": "early-put", "strategy": "exhaustive", "seed": 0,
            "decisions": [{"step": 8, "point": "unstable_search:after-found",
                           "thread": "zapper", "op": "zap ram pages=[0]"}],
            "report": {"kind": "use-after-free", "op": "try_to_merge_one_page",
                       "function": "try_to_merge_one_page (ksm.py:1033)",
                       "summary": "use-after-free: try_to_merge_one_page"}}


def trace_pair() -> tuple[str, list[str]]:
    """(scenario path, trace lines) of the first conformance trace."""
    trace = TRACES[0]
    scen = trace.with_suffix(".toml")
    return str(scen), trace.read_text().splitlines()


def _file_case(id_: str, argv: list[str], path: str, **kw) -> tuple[str, list[Case]]:
    return id_, [Case("regressions", id_, argv, names=[path], inputs=[path], keyed=True, **kw)]


def _both(id_: str, path: str) -> tuple[str, list[Case]]:
    """validate and run (3 batches, quiet): run must not reject what validate accepted."""
    return id_, [Case("regressions", id_ + ":validate", ["validate", path], names=[path]),
                 Case("regressions", id_ + ":run", ["run", path, "-q", "--batches", "3"],
                      names=[path], allow_found=False)]


def regression_cases(tmp: Path) -> list[tuple[str, list[Case]]]:
    tmp = Path(tmp)
    out: list[tuple[str, list[Case]]] = []

    def scen(id_: str, text: str | bytes, cmd: str = "run") -> None:
        p = _w(tmp, id_ + ".toml", text)
        argv = ["run", p, "-q", "--batches", "1"] if cmd == "run" else ["validate", p]
        out.append(_file_case(id_, argv, p))

    # TOML and numbers the parser or int() choke on
    scen("toml-nested-500", small() + "x = " + "[" * 500 + "]" * 500 + "\n")
    scen("toml-inline-nested-500", small() + "y = " + "{a = " * 500 + "1" + " }" * 500 + "\n")
    scen("int-5000-digits", small().replace("batches = 3", "batches = " + "9" * 5000))
    scen("tokens-5000-digits", small(region_extra='\n  thp = "nohuge"').replace(
        "distinct = 1 }", "distinct = " + "7" * 5000 + " }", 1))
    scen("dotted-key-100000", "a" + ".a" * 100_000 + " = 1\n" + small())
    scen("pages-2**63", small(pages=2**63))
    scen("pages-2**64", small(pages=2**64))
    scen("pages-10**12", small(pages=10**12))
    scen("pages-10**8", small(pages=10**8))
    # 10**7 pages (40 GB of guest memory) may run: it must stay under 20 s and 4 GB or be refused
    scen("pages-10**7", small(pages=10**7))
    scen("tokens-list-10**6", small(pages=4).replace(
        'fill = { kind = "pattern", distinct = 1 }',
        "fill = { kind = \"tokens\", tokens = [" + "1," * 10**6 + "1] }", 1))
    # aliases of the table names are not the contract
    for alias in ("processes", "regions", "events", "threads"):
        text = small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\nop = "exit"\n'
                     + '[[thread]]\nname = "t"\nprocess = "a"\nops = [{ op = "exit" }]\n')
        if alias == "regions":
            text = text.replace("[[process.region]]", "[[process.regions]]")
        else:
            text = text.replace(f"[[{alias[:-1]}]]", f"[[{alias}]]")
        scen(f"alias-{alias}", text, cmd="validate")
    scen("mthp-kb-8", small(extra="").replace("[ksm]", '[machine]\nthp = "always"\n'
                                              "mthp_kb = [8]\n[ksm]"), cmd="validate")
    # validate says ok: run must not fail (or validate must refuse it)
    both = {
        "no-mergeable-memory": small(region_extra="\n  mergeable = false"),
        "all-exited": small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\nop = "exit"\n'
                                  '[[event]]\nafter_batch = 1\nprocess = "b"\nop = "exit"\n'),
        "all-unmapped": small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\nop = "munmap"\n'
                                    'region = "ram"\n[[event]]\nafter_batch = 1\n'
                                    'process = "b"\nop = "munmap"\nregion = "ram"\n'),
        "set-run-0": small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\nop = "set"\n'
                                 'tunable = "run"\nvalue = 0\n'),
        "set-run-2": small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\nop = "set"\n'
                                 'tunable = "run"\nvalue = 2\n'),
        "mthp-kb-8-run": small(region_extra='\n  thp = "huge"').replace(
            "[ksm]", '[machine]\nthp = "madvise"\nmthp_kb = [8]\n[ksm]'),
        "thread-forks-same-child": small(extra='[[thread]]\nname = "t1"\nprocess = "a"\n'
                                               'ops = [{ op = "fork", child = "c" }]\n'
                                               '[[thread]]\nname = "t2"\nprocess = "b"\n'
                                               'ops = [{ op = "fork", child = "c" }]\n'),
        "event-forks-same-child": small(extra='[[event]]\nafter_batch = 1\nprocess = "a"\n'
                                              'op = "fork"\nchild = "c"\n[[event]]\n'
                                              'after_batch = 1\nprocess = "b"\nop = "fork"\n'
                                              'child = "c"\n'),
    }
    for id_, text in both.items():
        out.append(_both(id_, _w(tmp, id_ + ".toml", text)))
    p = _w(tmp, "thread-forks-same-child-explore.toml", both["thread-forks-same-child"])
    out.append(("explore-thread-forks-same-child", [Case(
        "regressions", "explore-thread-forks-same-child",
        ["explore", p, "--budget", "5", "--save", str(tmp / "tf.schedule.json")],
        names=[p], inputs=[p], allow_found=True)]))

    # escape sequences from the input must not reach the terminal
    esc = small().replace('name = "a"', 'name = "\\u001b[2J\\u001b]0;pwned\\u0007a"', 1)
    esc = esc.replace('name = "small"', 'name = "\\u001b[31mred\\u202e"')
    p = _w(tmp, "escape-names.toml", esc)
    out.append(("escape-in-names-run", [Case("regressions", "escape-in-names-run",
                                             ["run", p, "--batches", "2"], names=[p])]))
    bad = esc.replace("pages = 16", "pages = 0", 1)
    p = _w(tmp, "escape-names-bad.toml", bad)
    out.append(("escape-in-names-error", [Case("regressions", "escape-in-names-error",
                                               ["run", p], names=[p])]))
    ghost = str(tmp / "no\x1b[2Jsuch.toml")
    out.append(("escape-in-file-name", [Case("regressions", "escape-in-file-name",
                                             ["validate", ghost])]))
    out.append(("escape-in-event-key", [Case(
        "regressions", "escape-in-event-key",
        ["validate", _w(tmp, "escape-key.toml", small(extra='[[event]]\n"\\u001b[2J" = 1\n'))],
        names=[str(tmp / "escape-key.toml")])]))

    # schedule files (explore --replay)
    base = schedule_base(tmp)
    seed = _w(tmp, "seed.toml", SEED_SCENARIO.read_bytes())
    sched = {
        "report-string": json.dumps({**base, "report": "x"}),
        "report-list": json.dumps({**base, "report": [1]}),
        "same-folio-list": json.dumps({**base, "same_folio": ["v6.18"]}),
        "step-1e400": json.dumps({**base, "decisions": [{**base["decisions"][0], "step": 1}]}
                                 ).replace('"step": 1', '"step": 1e400'),
        "step-10**400": json.dumps({**base, "decisions": [{**base["decisions"][0], "step": 1}]}
                                   ).replace('"step": 1', '"step": 1' + "0" * 400),
        "decisions-dict": json.dumps({**base, "decisions": {"a": 1}}),
        "json-nested-100000": "[" * 100_000 + "]" * 100_000,
        "not-utf8": b"\xff\xfe{}",
        "schedule-array": json.dumps([base]),
    }
    for id_, text in sched.items():
        p = _w(tmp, f"sched-{id_}.json", text)
        out.append(_file_case(f"replay-{id_}", ["explore", seed, "--replay", p], p,
                              allow_found=True))

    # traces (compare --against)
    scen_path, lines = trace_pair()
    recs = [json.loads(ln) for ln in lines]
    first = json.dumps(recs[0])
    final = recs[-1]
    traces = {
        "counter-10**400": "\n".join([first.replace('"pages_shared": 0',
                                                    '"pages_shared": 1' + "0" * 400)]
                                     + lines[1:]),
        "t_ms-10**400": "\n".join([first.replace('"t_ms": 0.0', '"t_ms": 1' + "0" * 400)]
                                  + lines[1:]),
        "t_ms-1e400": "\n".join([first.replace('"t_ms": 0.0', '"t_ms": 1e400')] + lines[1:]),
        "json-nested-100000": "[" * 100_000 + "]" * 100_000 + "\n",
        "kernel-markup": "\n".join(lines[:-1] + [json.dumps({**final, "kernel": "[/]"})]),
        "kernel-escape": "\n".join(lines[:-1] + [json.dumps({**final, "kernel": "\x1b[2J"})]),
        "counter-string": "\n".join([first.replace('"pages_shared": 0', '"pages_shared": "0"')]
                                    + lines[1:]),
        "processes-list": "\n".join(lines[:-1] + [json.dumps({**final, "processes": [1]})]),
    }
    for id_, text in traces.items():
        p = _w(tmp, f"trace-{id_}.jsonl", text + "\n")
        out.append(_file_case(f"against-{id_}", ["compare", scen_path, "--against", p], p,
                              allow_found=True))

    # explore must not write beside the scenario, nor overwrite it with --save
    p = _w(tmp, "explore-beside.toml", SEED_SCENARIO.read_bytes())
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    out.append(("explore-writes-beside", [Case(
        "regressions", "explore-writes-beside", ["explore", p, "--same-folio", "early-put"],
        names=[p], inputs=[p], allow_found=True, cwd=str(cwd))]))
    p = _w(tmp, "explore-save-onto.toml", SEED_SCENARIO.read_bytes())
    out.append(("explore-save-onto-scenario", [Case(
        "regressions", "explore-save-onto-scenario",
        ["explore", p, "--same-folio", "early-put", "--save", p],
        names=[p], inputs=[p], allow_found=True)]))
    keep = _w(tmp, "keep.json", '{"precious": true}\n')
    out.append(("explore-save-overwrites", [Case(
        "regressions", "explore-save-overwrites",
        ["explore", seed, "--same-folio", "early-put", "--save", keep],
        names=[keep], inputs=[keep], allow_found=True)]))

    # usage errors: one line, exit 2
    ok = _w(tmp, "ok.toml", small())
    for id_, argv in {
        "usage-no-args-run": ["run"],
        "usage-unknown-command": ["nosuch"],
        "usage-unknown-option": ["run", ok, "--nosuch"],
        "usage-bad-int": ["run", ok, "--batches", "x"],
        "usage-batches-0": ["run", ok, "--batches", "0"],
        "usage-missing-value": ["run", ok, "--batches"],
        "usage-explore-budget-negative": ["explore", seed, "--budget", "-1"],
        "usage-compare-no-args": ["compare"],
        "usage-validate-no-args": ["validate"],
    }.items():
        out.append((id_, [Case("regressions", id_, argv)]))

    # | head -1: a closed stdout is a quiet exit (validate prints > 64 KiB, so EPIPE is certain)
    many = ["validate"] + [ok] * 3000
    out.append(("validate-head-1", [Case("regressions", "validate-head-1", many, head=True)]))
    out.append(("run-json-head-1", [Case("regressions", "run-json-head-1",
                                         ["run", ok, "--json", "--batches", "2000"],
                                         head=True)]))
    return out


def toml_name(s: str) -> str:
    return toml_str(s)
