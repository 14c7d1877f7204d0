"""Record a scenario on the live kernel: ``python -m samepage.kernel.record SCENARIO.toml -o TRACE.jsonl``.

(The same as ``samepage kernel record SCENARIO -o TRACE.jsonl``, which prints the tables of
``samepage run``; this module is the minimal, dependency-free form used by scripts and tests.)

Takes the KSM lock, runs the scenario (samepage.kernel.runner), writes the trace as JSON Lines
and prints a table of the batches to stderr. Every process the run creates is announced on
stderr as ``# pid NAME PID`` as soon as it exists (so a supervisor can check none is left).
Exit status: 0 on success, 1 on a harness or kernel error, 2 on a bad scenario or usage,
130 on SIGINT, 143 on SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import sys

from .runner import Terminated, UnreliableTrace, run_scenario_on_kernel


def run_with_retries(scenario, *, retries: int = 0, on_retry=None, info: dict | None = None,
                     **kwargs) -> tuple[list[dict], dict]:
    """``run_scenario_on_kernel(scenario, info=info, **kwargs)``, run again up to ``retries``
    times when the run was unreliable (UnreliableTrace: a busy machine). ``on_retry(error)`` is
    called before each new attempt. Used by this module and by ``samepage kernel run/record``."""
    info = info if info is not None else {}
    for attempt in range(retries + 1):
        info.clear()
        try:
            return run_scenario_on_kernel(scenario, info=info, **kwargs)
        except UnreliableTrace as e:
            if attempt == retries:
                raise
            if on_retry is not None:
                on_retry(e)
    raise AssertionError("unreachable")  # pragma: no cover

_COLS = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
         "pages_scanned", "pages_skipped", "stable_node_chains", "stable_node_dups",
         "ksm_zero_pages", "general_profit")
_HEAD = ("shared", "sharing", "unshar", "volat", "full", "scanned", "skipped", "chains",
         "dups", "zero", "profit")


def format_row(rec: dict) -> str:
    cells = [f"{rec['batch']:>5}", f"{rec['t_ms']:>9.1f}"]
    cells += [f"{rec[c]:>{max(len(h), 7)}}" for c, h in zip(_COLS, _HEAD)]
    return " ".join(cells)


def format_header() -> str:
    return " ".join([f"{'batch':>5}", f"{'t_ms':>9}"] + [f"{h:>{max(len(h), 7)}}" for h in _HEAD])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m samepage.kernel.record",
                                 description="Record a scenario's trace on the live kernel KSM.")
    ap.add_argument("scenario", help="scenario file (.toml)")
    ap.add_argument("-o", "--output", help="trace file to write (JSON Lines); default: stdout")
    ap.add_argument("--lock-timeout", type=float, default=None, metavar="SECONDS",
                    help="give up if another run holds the KSM lock this long (default: wait)")
    ap.add_argument("--info", metavar="FILE", help="also write run diagnostics (JSON) here")
    ap.add_argument("--drain-lru", action="store_true",
                    help="empty every CPU's LRU add batch after each event group, so freshly "
                         "faulted pages carry no extra reference (not what the model does; "
                         "see docs/kernel-findings.md)")
    ap.add_argument("--no-lru-check", dest="check_lru", action="store_false",
                    help="do not watch the workers' CPU's LRU batch for other processes' pages")
    ap.add_argument("--retries", type=int, default=0, metavar="N",
                    help="run again, up to N times, when a run is unreliable (a busy machine)")
    ap.add_argument("--force", action="store_true",
                    help="run even if other processes have mergeable memory (they would be "
                         "unmerged by run = 2 and scanned with the scenario's pages)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no table on stderr")
    args = ap.parse_args(argv)

    from samepage.scenario import ScenarioError, load_scenario, write_trace_jsonl

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def progress(kind: str, data: dict) -> None:
        if kind == "pid":
            print(f"# pid {data['name']} {data['pid']}", file=sys.stderr, flush=True)
            return
        if args.quiet:
            return
        if kind == "setup":
            print(f"# {data['message']}", file=sys.stderr, flush=True)
        elif kind == "batch":
            if data["batch"] == 1:
                print(format_header(), file=sys.stderr)
            print(format_row(data), file=sys.stderr, flush=True)
        elif kind == "event":
            print(f"#   after batch {data['batch']}: {data['event']}", file=sys.stderr, flush=True)

    info: dict = {}
    try:
        records, final = run_with_retries(
            scenario, retries=args.retries, info=info, progress=progress,
            lock_timeout=args.lock_timeout, drain_lru=args.drain_lru,
            check_lru=args.check_lru, force=args.force,
            on_retry=lambda e: print(f"# unreliable run ({e}); retrying", file=sys.stderr,
                                     flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; KSM settings restored", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated; KSM settings restored", file=sys.stderr)
        return 143
    except (OSError, RuntimeError) as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        if args.info:
            with open(args.info, "w") as f:
                json.dump(info, f, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            write_trace_jsonl([*records, final], f)
    else:
        write_trace_jsonl([*records, final], sys.stdout)
    if not args.quiet:
        print(f"# final: {json.dumps(final['processes'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
