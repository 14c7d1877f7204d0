#!/usr/bin/env python3
"""The bad-input campaign of issue 8: thousands of generated and mutated files plus the misuse
commands, through the real ``samepage`` command, classified by the fuzzer's oracle.

    python tools/fuzz_campaign.py [--seed 0] [-o report.json] [--jobs 2]

Sources:

* scenarios: generated scenarios mutated structurally, and byte-mutated examples/*.toml and
  tests/conformance/scenarios/*.toml, each through ``samepage validate``; every file validate
  accepts is then run (``run -q --batches N``, N = min(3, run.batches); ``explore`` too if it has [[thread]]s) and run
  must not reject it ("run-rejects-validated");
* schedules: mutated schedule files through ``samepage explore SEED --replay FILE``;
* traces: mutated conformance traces through ``samepage compare SCENARIO --against FILE``;
* profiles: mutated CPU cost profiles (src/samepage/data/costs-default.toml) through
  ``samepage run OK --costs FILE``;
* commands: misuse of the command line (missing and wrong arguments and options, directories,
  /dev/null, nonexistent and unreadable files, ``--save`` onto inputs, ``| head -1``);
* regressions: the reproducer of every failure class found so far (tests/fuzz/regressions.py).

Everything is seeded (same seed, same files) and written to a temporary directory.  Each case
runs in a forked child (at most --jobs at a time) with a 20 s timeout and a 4 GB address-space
cap (the issue's "no run above 4 GB"; samepage refuses what will not fit); peak RSS over 4 GiB is a bad outcome.  Prints the counts per outcome per source and one
example per bad (source, outcome) with a reproducer; -o FILE saves every case as JSON and the
inputs of the bad cases beside it (FILE.cases/).  Exit status 1 if any outcome is bad.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.fuzz import strategies as S  # noqa: E402
from tests.fuzz.regressions import regression_cases, schedule_base, small, trace_pair  # noqa: E402
from tests.fuzz.runner import (GOOD, TIMEOUT_S, Case, Outcome, differential,  # noqa: E402
                               run_args, run_cases)

SOURCES = ("scenarios", "schedules", "traces", "profiles", "commands", "regressions")
COSTS = REPO / "src" / "samepage" / "data" / "costs-default.toml"


# ------------------------------------------------------------------------------ bad files


def scenario_cases(tmp: Path, rng: random.Random, n: int) -> list[Case]:
    d = tmp / "scenarios"
    d.mkdir()
    cases = []
    for i in range(n):
        r = random.Random(rng.getrandbits(64))
        if i % 5 < 3:
            data = S.scenario_text(r).encode("utf-8", "surrogatepass")
            kind = "struct"
        else:
            data = S.scenario_bytes(r)
            kind = "bytes"
        p = str(d / f"{kind}-{i:05d}.toml")
        Path(p).write_bytes(data)
        cases.append(Case("scenarios", f"validate {kind}", ["validate", p], names=[p],
                          inputs=[p], keyed=True))
    return cases


def follow_ups(case: Case, o: Outcome, tmp: Path) -> list[Case]:
    """A scenario validate accepted: run it (and explore it if it has threads)."""
    if case.source != "scenarios" or o.rc != 0:
        return []
    p = case.argv[1]
    out = [Case("scenarios", "run", run_args(p), names=[p], inputs=[p],
                keyed=True)]
    try:
        text = Path(p).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    if "[[thread]]" in text or "thread = " in text:
        out.append(Case("scenarios", "explore",
                        ["explore", p, "--budget", "3", "--schedules", "30",
                         "--save", str(tmp / "explore-out" / (Path(p).stem + ".json"))],
                        names=[p], inputs=[p], allow_found=True, cwd=str(tmp / "explore-out")))
    return out


def schedule_cases(tmp: Path, rng: random.Random, n: int) -> list[Case]:
    d = tmp / "schedules"
    d.mkdir()
    seed = d / "seed.toml"
    seed.write_bytes(S.SEED_SCENARIO.read_bytes())
    base = schedule_base(d)
    cases = []
    for i in range(n):
        r = random.Random(rng.getrandbits(64))
        p = str(d / f"sched-{i:05d}.json")
        Path(p).write_text(S.schedule_text(r, base), "utf-8", errors="surrogateescape")
        cases.append(Case("schedules", "explore --replay", ["explore", str(seed), "--replay", p],
                          names=[p], inputs=[p, str(seed)], allow_found=True, keyed=True))
    return cases


def trace_cases(tmp: Path, rng: random.Random, n: int) -> list[Case]:
    d = tmp / "traces"
    d.mkdir()
    pairs = [(t.with_suffix(".toml"), t.read_text().splitlines()) for t in S.TRACES]
    cases = []
    for i in range(n):
        r = random.Random(rng.getrandbits(64))
        scen, lines = r.choice(pairs)
        p = str(d / f"trace-{i:05d}.jsonl")
        Path(p).write_text(S.trace_text(r, lines), "utf-8", errors="surrogateescape")
        cases.append(Case("traces", "compare --against", ["compare", str(scen), "--against", p],
                          names=[p], inputs=[p], allow_found=True, keyed=True))
    return cases


def profile_cases(tmp: Path, rng: random.Random, n: int) -> list[Case]:
    """Mutated CPU cost profiles (the shipped one) through ``run --costs FILE``."""
    d = tmp / "profiles"
    d.mkdir()
    ok = d / "ok.toml"
    ok.write_text(small())
    base = COSTS.read_bytes() if COSTS.exists() else b"[costs]\nbatch = 1.0\n"
    cases = []
    for i in range(n):
        r = random.Random(rng.getrandbits(64))
        if r.random() < 0.5:
            data = S.mutate_bytes(r, base)
        else:
            text = base.decode()
            lines = text.splitlines()
            j = r.randrange(len(lines))
            if "=" in lines[j]:
                k = lines[j].split("=")[0].strip()
                lines[j] = f"{k} = {S.toml_value(S.extreme(r))}"
            else:
                lines.insert(j, f"{S.toml_key(S._typo(r, 'batch'))} = {S.toml_value(S.extreme(r))}")
            data = ("\n".join(lines) + "\n").encode("utf-8", "surrogatepass")
        p = str(d / f"costs-{i:05d}.toml")
        Path(p).write_bytes(data)
        cases.append(Case("profiles", "run --costs", ["run", str(ok), "-q", "--batches", "2",
                                                      "--costs", p], names=[p], inputs=[p]))
    return cases


# ------------------------------------------------------------------------------ misuse


def command_cases(tmp: Path) -> list[Case]:
    d = tmp / "commands"
    d.mkdir()
    ok = d / "ok.toml"
    ok.write_text(small())
    okp = str(ok)
    seed = d / "seed.toml"
    seed.write_bytes(S.SEED_SCENARIO.read_bytes())
    seedp = str(seed)
    bad = d / "bad.toml"
    bad.write_text("[run]\nbatches = 0\n")
    badp = str(bad)
    binary = d / "binary.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    unreadable = d / "unreadable.toml"
    unreadable.write_text(small())
    unreadable.chmod(0)
    dash = d / "-dash.toml"
    dash.write_text(small())
    subdir = d / "adir.toml"
    subdir.mkdir()
    ghost = str(d / "nonexistent.toml")
    scen_t, lines = trace_pair()
    trace = d / "trace.jsonl"
    trace.write_text("\n".join(lines) + "\n")
    tp = str(trace)
    other_trace = str(S.TRACES[-1])
    sched = d / "sched.json"
    sched.write_text(json.dumps(schedule_base(d)))
    sp = str(sched)
    nodir = str(d / "no" / "such" / "dir" / "x.png")
    keep = d / "keep.json"
    keep.write_text("{}\n")
    files = {"nonexistent": ghost, "directory": str(subdir), "/dev/null": "/dev/null",
             "binary": str(binary), "unreadable(root reads it)": str(unreadable),
             "bad": badp, "dash-name": str(dash), "dev-zero-dir": "/dev"}

    C = []

    def c(label: str, argv: list[str], names: list[str] | None = None, **kw) -> None:
        C.append(Case("commands", label, argv, names=names or [], **kw))

    # top level
    c("no args", [])
    c("--version", ["--version"])
    c("-V extra", ["-V", "run"])
    c("--help", ["--help"])
    c("unknown command", ["nosuch"])
    c("unknown top option", ["--nosuch"])
    c("empty command", [""])
    # each file-taking command with each kind of bad file
    for what, f in files.items():
        c(f"run {what}", ["run", f, "-q"], [f])
        c(f"validate {what}", ["validate", f], [f])
        c(f"explore {what}", ["explore", f, "--budget", "2"], [f], allow_found=True)
        c(f"compare {what} (scenario)", ["compare", f, "--against", tp], [f], allow_found=True)
        c(f"compare --against {what}", ["compare", scen_t, "--against", f], [f],
          allow_found=True)
        c(f"explore --replay {what}", ["explore", seedp, "--replay", f], [f], allow_found=True)
        c(f"kernel run {what}", ["kernel", "run", f], [f])
        c(f"kernel record {what}", ["kernel", "record", f, "-o", str(d / "rec.jsonl")], [f])
    # run options
    for v in ("0", "-1", "x", "1e3", "99999999999999999999999", "", " 3"):
        c(f"run --batches {v!r}", ["run", okp, "--batches", v])
    c("run --batches missing value", ["run", okp, "--batches"])
    c("run unknown option", ["run", okp, "--nosuch"])
    c("run two scenarios", ["run", okp, okp])
    c("run --same-folio bogus", ["run", okp, "--same-folio", "bogus"])
    c("run --same-folio ''", ["run", okp, "--same-folio", ""])
    c("run --same-folio all --json", ["run", okp, "--same-folio", "all", "--json"])
    c("run --same-folio all --plot", ["run", okp, "--same-folio", "all", "--plot",
                                      str(d / "p.png")])
    c("run --same-folio all --sanitize", ["run", okp, "--same-folio", "all", "--sanitize"])
    c("run --same-folio all", ["run", okp, "--same-folio", "all", "--batches", "3"])
    c("run --sanitize", ["run", okp, "--sanitize", "--batches", "3", "-q"], allow_found=True)
    c("run --plot into nonexistent dir", ["run", okp, "--plot", nodir], [nodir])
    c("run --plot onto a directory", ["run", okp, "--plot", str(subdir)], [str(subdir)])
    c("run --plot bad extension", ["run", okp, "--plot", str(d / "p.xyz"), "-q"],
      [str(d / "p.xyz")])
    c("run --plot /dev/full", ["run", okp, "--plot", "/dev/full", "-q"], ["/dev/full"])
    c("run --plot onto the scenario", ["run", okp, "--plot", okp, "-q"], [okp], inputs=[okp])
    c("run - (empty stdin)", ["run", "-"], ["<stdin>"])
    c("run --json -q", ["run", okp, "--json", "-q", "--batches", "2"])
    c("run -n twice", ["run", okp, "-n", "2", "-n", "3", "-q"])
    # validate
    c("validate no args", ["validate"])
    c("validate mixed", ["validate", okp, badp, ghost, str(subdir), "/dev/null"],
      [badp, ghost])
    c("validate same file twice", ["validate", okp, okp])
    c("validate unknown option", ["validate", "--json", okp])
    # explore
    c("explore no threads", ["explore", okp, "--budget", "2"], [okp])
    c("explore --strategy bogus", ["explore", seedp, "--strategy", "bogus"])
    for v in ("-1", "nan", "inf", "1e400", "x"):
        c(f"explore --budget {v}", ["explore", seedp, "--budget", v, "--schedules", "3",
                                    "--save", str(d / f"b{v}.json")], allow_found=True,
          cwd=str(d))
    c("explore --schedules 0", ["explore", seedp, "--schedules", "0"])
    c("explore --bound -1", ["explore", seedp, "--bound", "-1"])
    c("explore --bound huge", ["explore", seedp, "--bound", "9" * 30])
    c("explore --seed x", ["explore", seedp, "--seed", "x"])
    c("explore --same-folio bogus", ["explore", seedp, "--same-folio", "bogus"])
    c("explore --save onto the scenario", ["explore", seedp, "--same-folio", "early-put",
                                           "--save", seedp], [seedp], inputs=[seedp],
      allow_found=True)
    c("explore --save onto an existing file", ["explore", seedp, "--same-folio", "early-put",
                                               "--save", str(keep)], [str(keep)],
      inputs=[str(keep)], allow_found=True)
    c("explore --save into nonexistent dir", ["explore", seedp, "--same-folio", "early-put",
                                              "--save", nodir], [nodir], allow_found=True)
    c("explore --save onto a directory", ["explore", seedp, "--same-folio", "early-put",
                                          "--save", str(subdir)], [str(subdir)],
      allow_found=True)
    c("explore --save /dev/full", ["explore", seedp, "--same-folio", "early-put",
                                   "--save", "/dev/full"], ["/dev/full"], allow_found=True)
    c("explore default save (cwd elsewhere)", ["explore", seedp, "--same-folio", "early-put"],
      [seedp], inputs=[seedp], allow_found=True, cwd=str(tmp))
    c("explore --replay ok", ["explore", seedp, "--replay", sp], [sp], allow_found=True)
    c("explore --replay the scenario", ["explore", seedp, "--replay", seedp], [seedp],
      allow_found=True)
    c("explore --replay a trace", ["explore", seedp, "--replay", tp], [tp], allow_found=True)
    c("explore --replay onto other scenario", ["explore", okp, "--replay", sp], [okp, sp],
      allow_found=True)
    c("explore --replay + --strategy", ["explore", seedp, "--replay", sp, "--strategy", "pct"],
      allow_found=True)
    # compare (always --against: without it compare would run the live kernel)
    c("compare no args", ["compare"])
    c("compare matching", ["compare", scen_t, "--against", tp], allow_found=True)
    c("compare other scenario's trace", ["compare", scen_t, "--against", other_trace],
      allow_found=True)
    c("compare --json", ["compare", scen_t, "--against", tp, "--json"], allow_found=True)
    c("compare --against the scenario", ["compare", scen_t, "--against", scen_t], [scen_t],
      allow_found=True)
    c("compare --against missing value", ["compare", scen_t, "--against"])
    c("compare --plot into nonexistent dir", ["compare", scen_t, "--against", tp, "--plot",
                                              nodir], [nodir], allow_found=True)
    c("compare --against a schedule", ["compare", scen_t, "--against", sp], [sp],
      allow_found=True)
    c("compare --against - (empty stdin)", ["compare", scen_t, "--against", "-"],
      allow_found=True)
    # snapshots (samepage capture's files): only files, never a live process
    npz = d / "junk.npz"
    npz.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    zipped = d / "empty.npz"
    import zipfile
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("tokens.npy", b"\x93NUMPY\x01\x00" + b"x" * 40)
    for what, f in {**files, "junk.npz": str(npz), "zip of junk": str(zipped),
                    "a scenario": okp}.items():
        c(f"snapshot show {what}", ["snapshot", "show", f], [f])
        c(f"snapshot show --json {what}", ["snapshot", "show", "--json", f], [f])
    c("snapshot no args", ["snapshot"])
    c("snapshot show no args", ["snapshot", "show"])
    # cost profiles
    for what, f in files.items():
        c(f"run --costs {what}", ["run", okp, "-q", "--costs", f], [f])
    # demo
    c("demo --show-scenario", ["demo", "--show-scenario"])
    c("demo --plot into nonexistent dir", ["demo", "--plot", nodir], [nodir])
    c("demo unknown option", ["demo", "--nosuch"])
    c("demo extra argument", ["demo", "x"])
    # kernel (only what fails before touching KSM: no valid scenario is ever passed)
    c("kernel no args", ["kernel"])
    c("kernel unknown command", ["kernel", "nosuch"])
    c("kernel run no args", ["kernel", "run"])
    c("kernel record no -o", ["kernel", "record", ghost])
    c("kernel run --wait x", ["kernel", "run", ghost, "--wait", "x"])
    # | head -1
    many = ["validate"] + [okp] * 3000
    c("validate many | head -1", many, head=True)
    c("validate many with errors | head -1", ["validate"] + [okp, badp] * 1500, head=True)
    c("run --json | head -1", ["run", okp, "--json", "--batches", "3000"], head=True)
    c("run | head -1", ["run", okp, "--batches", "300"], head=True)
    c("run --same-folio all | head -1", ["run", okp, "--same-folio", "all", "--batches", "3"],
      head=True)
    c("demo --show-scenario | head -1", ["demo", "--show-scenario"], head=True)
    c("--help | head -1", ["--help"], head=True)
    c("compare --json | head -1", ["compare", scen_t, "--against", tp, "--json"], head=True,
      allow_found=True)
    c("explore | head -1", ["explore", seedp, "--same-folio", "early-put", "--save",
                            str(d / "h.json")], head=True, allow_found=True)
    c("explore --replay | head -1", ["explore", seedp, "--replay", sp], head=True,
      allow_found=True)
    return C


# ------------------------------------------------------------------------------ the campaign


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scenarios", type=int, default=2200, help="scenario files (default 2200)")
    ap.add_argument("--schedules", type=int, default=500, help="schedule files (default 500)")
    ap.add_argument("--traces", type=int, default=500, help="trace files (default 500)")
    ap.add_argument("--profiles", type=int, default=200,
                    help="cost profile files (default 200)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=TIMEOUT_S)
    ap.add_argument("-o", "--output", type=Path, help="save every case as JSON here")
    ap.add_argument("--no-regressions", action="store_true")
    args = ap.parse_args(argv)

    rng = random.Random(args.seed)
    results: list[tuple[Case, Outcome, str]] = []     # (case, outcome, kind incl. differential)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="samepage-campaign-") as root:
        tmp = Path(root)
        (tmp / "explore-out").mkdir()
        cases = (scenario_cases(tmp, rng, args.scenarios)
                 + schedule_cases(tmp, rng, args.schedules)
                 + trace_cases(tmp, rng, args.traces)
                 + profile_cases(tmp, rng, args.profiles)
                 + command_cases(tmp))
        pairs: list[list[Case]] = []
        if not args.no_regressions:
            (tmp / "regressions").mkdir()
            for _, cs in regression_cases(tmp / "regressions"):
                pairs.append(cs)
                cases.extend(cs)
        for c in cases:
            c.timeout = args.timeout
        n_files = args.scenarios + args.schedules + args.traces + args.profiles
        print(f"campaign seed {args.seed}: {n_files} bad files, "
              f"{sum(c.source == 'commands' for c in cases)} misuse commands, "
              f"{len(pairs)} regression reproducers; {args.jobs} jobs", file=sys.stderr)

        done: dict[int, Outcome] = {}
        second: list[Case] = []
        validated: dict[str, Outcome] = {}

        def progress(i: int, total: int) -> None:
            tty = sys.stderr.isatty()
            if i % (50 if tty else 500) == 0:
                lead, end = ("\r", "") if tty else ("", "\n")
                print(f"{lead}  {i}/{total} cases, {time.monotonic() - t0:.0f} s", end=end,
                      file=sys.stderr, flush=True)

        total = len(cases)
        for i, (case, o) in enumerate(run_cases(cases, jobs=args.jobs), 1):
            done[id(case)] = o
            results.append((case, o, o.kind))
            if case.source == "scenarios":
                validated[case.argv[1]] = o
                second.extend(follow_ups(case, o, tmp))
            progress(i, total)
        total += len(second)
        for i, (case, o) in enumerate(run_cases(second, jobs=args.jobs), len(results) + 1):
            kind = o.kind
            if case.label == "run":
                kind = differential(validated[case.argv[1]], o) or kind
            results.append((case, o, kind))
            progress(i, total)
        # regression pairs (validate, run): the differential check
        for cs in pairs:
            if len(cs) == 2 and id(cs[0]) in done and id(cs[1]) in done:
                d = differential(done[id(cs[0])], done[id(cs[1])])
                if d:
                    for k, (c, o, kind) in enumerate(results):
                        if c is cs[1]:
                            results[k] = (c, o, d)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        elapsed = time.monotonic() - t0

        bad = [(c, o, k) for c, o, k in results if k not in GOOD]
        moved: dict[str, str] = {}
        if args.output is not None:
            keep = args.output.with_name(args.output.name + ".cases")
            moved = _save(args.output, keep, results, bad, tmp, elapsed, args.seed)
        _print(results, bad, elapsed, moved)
    return 1 if bad else 0


def _save(out: Path, keep: Path, results, bad, tmp: Path, elapsed: float,
          seed: int) -> dict[str, str]:
    """Every case as JSON; the inputs of the bad ones copied to ``keep`` (the paths in the
    saved reproducers point there)."""
    if keep.exists():
        shutil.rmtree(keep)
    keep.mkdir(parents=True)
    moved: dict[str, str] = {}
    for c, _, _ in bad:
        for a in c.argv:
            if a.startswith(str(tmp)) and os.path.isfile(a) and a not in moved:
                dst = keep / os.path.relpath(a, tmp)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(a, dst)
                moved[a] = str(dst)
    rows = []
    for c, o, k in results:
        argv = [moved.get(a, a) for a in c.argv]
        rows.append({"source": c.source, "label": c.label, "argv": argv, "head": c.head,
                     "outcome": k, "good": k in GOOD, "rc": o.rc,
                     "seconds": round(o.seconds, 3), "rss_mb": round(o.rss_mb, 1),
                     "detail": o.detail, "stderr": o.stderr[-2000:]})
    counts = _counts(results)
    out.write_text(json.dumps({"seed": seed, "elapsed_s": round(elapsed, 1),
                               "counts": counts, "cases": rows}, indent=1))
    print(f"details: {out} (inputs of the bad cases in {keep})", file=sys.stderr)
    return moved


def _counts(results) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = defaultdict(Counter)
    for c, _, k in results:
        counts[c.source][k] += 1
    return {s: dict(counts[s]) for s in SOURCES if s in counts}


def _safe(s: object) -> str:
    """Control characters from the cases shown as escapes, rich markup escaped."""
    from rich.markup import escape

    return escape("".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1]
                          for ch in str(s)))


def _print(results, bad, elapsed: float, moved: dict[str, str]) -> None:
    import dataclasses

    from rich.console import Console
    from rich.table import Table

    con = Console(highlight=False, width=max(100, Console().width))
    counts = _counts(results)
    kinds = sorted({k for c in counts.values() for k in c},
                   key=lambda k: (k not in GOOD, GOOD.index(k) if k in GOOD else 0, k))
    t = Table(title=f"samepage fuzz campaign: {len(results)} cases in {elapsed:.0f} s")
    t.add_column("outcome")
    for s in counts:
        t.add_column(s, justify="right")
    t.add_column("total", justify="right")
    for k in kinds:
        row = [counts[s].get(k, 0) for s in counts]
        t.add_row(k if k in GOOD else f"[red]{k}[/]", *map(str, row), str(sum(row)))
    t.add_row("[bold]all[/]", *(str(sum(counts[s].values())) for s in counts),
              str(len(results)))
    con.print(t)
    slow = max(results, key=lambda r: r[1].seconds)
    big = max(results, key=lambda r: r[1].rss_mb)
    con.print(f"slowest case {slow[1].seconds:.1f} s ({slow[0].label}); "
              f"largest peak RSS {big[1].rss_mb:.0f} MiB ({big[0].label})", soft_wrap=True)
    if not bad:
        con.print("[bold green]no bad outcome[/]")
        return
    con.print(f"[bold red]{len(bad)} bad outcomes[/]; one example per (source, outcome):")
    seen = set()
    for c, o, k in bad:
        detail = o.detail
        key = (c.source, k, c.label if c.source in ("commands", "regressions") else "")
        if key in seen:
            continue
        seen.add(key)
        if k == "run-rejects-validated":
            detail = o.stderr.strip()[:200]
        con.print(f"[red]{k}[/] \\[{c.source}: {_safe(c.label)}] {_safe(detail)}",
                  soft_wrap=True)
        rep = dataclasses.replace(c, argv=[moved.get(a, a) for a in c.argv]).reproducer()
        if len(rep) > 300:
            rep = rep[:300] + " ..."
        con.print(f"    {_safe(rep)}", soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
