"""The zoo of real KSM bugs (``make zoo``): every examples/bugs/NAME.py patch with its
NAME.toml, explored patched (the bug must be found, exit 1, and its saved schedule must
replay to the same report) and unpatched (nothing may be found) with the same budget.
Prints one table; exits 1 if any expectation fails.  Writes only into a temporary
directory.

  python examples/bugs/run_zoo.py [--budget SECONDS] [BUG ...]
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
FOUND = re.compile(r"\): (\S+) found after (\d+) schedules")
CLEAN = re.compile(r"nothing found: (\d+) schedules")
#: explore options a bug needs, patched, unpatched and replayed alike
EXTRA = {"unmerge-oom-ignored": ["--fail-alloc", "folio"]}


def _samepage() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "samepage")
    return [exe] if os.path.exists(exe) else [sys.executable, "-m", "samepage.cli.main"]


def _explore(args: list[str], cwd: str, budget: float) -> tuple[int, str, float]:
    t = time.monotonic()
    r = subprocess.run(_samepage() + ["explore", *args, "--budget", str(budget)],
                       capture_output=True, text=True, cwd=cwd, timeout=budget * 3 + 120)
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t


def run_bug(bug: str, budget: float, tmp: str) -> tuple[list[str], bool]:
    scen = os.path.join(HERE, bug + ".toml")
    patch = os.path.join(HERE, bug + ".py")
    sched = os.path.join(tmp, bug + ".schedule.json")
    extra = EXTRA.get(bug, [])
    ok = True
    rc, out, secs = _explore([scen, "--patch", patch, "--save", sched, "--force", *extra],
                             tmp, budget)
    m = FOUND.search(out)
    if rc == 1 and m:
        kind, n = m.group(1), m.group(2)
        rc2, out2, _ = _explore([scen, "--patch", patch, "--replay", sched, *extra], tmp,
                               budget)
        replayed = rc2 == 1 and "reproduced" in out2
        ok &= replayed
        patched = [f"{secs:.1f}", kind, n, "yes" if replayed else "NO"]
    else:
        ok = False
        patched = ["NOT FOUND" if rc == 0 else f"exit {rc}", "-", "-", "-"]
    # unpatched: were something found, its schedule would go to a file of its own
    rc, out, secs = _explore([scen, "--save", sched + ".unpatched", "--force", *extra], tmp,
                               budget)
    m = CLEAN.search(out)
    if rc == 0 and m:
        unpatched = [m.group(1), "yes" if "whole space" in out else "no (budget)"]
    else:
        ok = False
        f = FOUND.search(out)
        unpatched = [f"FOUND {f.group(1)}" if f else f"exit {rc}", "-"]
    return [bug, *patched, *unpatched], ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="seconds per exploration")
    ap.add_argument("bugs", nargs="*", help="NAMEs (default: every NAME.py with a NAME.toml)")
    a = ap.parse_args(argv)
    bugs = a.bugs or sorted(os.path.basename(p)[:-3]
                            for p in glob.glob(os.path.join(HERE, "*.py"))
                            if os.path.exists(p[:-3] + ".toml"))
    head = ["bug", "found in s", "report", "schedules", "replayed",
            "unpatched: schedules", "exhausted"]
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="samepage-zoo-") as tmp:
        for bug in bugs:
            row, ok = run_bug(bug, a.budget, tmp)
            rows.append(row)
            if not ok:
                failed.append(bug)
    widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
    for r in [head] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if failed:
        print(f"run_zoo: FAILED: {', '.join(failed)}")
        return 1
    print(f"run_zoo: {len(rows)} bugs found patched and clean unpatched "
          f"(budget {a.budget:g} s each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
