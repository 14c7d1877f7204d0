"""The model's ksmtuned against the real script: Debian's ksmtuned package is fetched at
test time (``apt-get download ksmtuned``; SAMEPAGE_KSMTUNED_DEB may name a .deb instead),
its /usr/sbin/ksmtuned run in a sandbox and fed a meminfo/ps trace step by step; the model's
policy, fed the same trace, must make the same sysfs writes at the same steps.

The sandbox is a copy of the script with its paths rewritten into a temporary directory:
/proc/meminfo, /etc/ksmtuned.conf and /sys/kernel/mm/ksm/ (whose ``>`` redirections become
``>>`` so every write is kept: sysfs ignores the file offset, so the script's logic is the
same); ``sleep``, ``pgrep`` and ``ps`` are stubs first in PATH. The stub ``sleep`` (the
monitor interval) installs the next trace record and marks the step in the write logs. The
copy is checked to name no /sys path before it runs: the real KSM is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from samepage.policy import load_policy
from samepage.policy.base import ProcInfo
from samepage.policy.view import TraceView

FILES = ("run", "pages_to_scan", "sleep_millisecs")

SLEEP_STUB = r"""#!/bin/bash
# the monitor interval: step N+1 begins; mark the write logs, install record N+1
n=$(cat "$SB/step"); n=$((n + 1)); echo $n > "$SB/step"
echo "$n $(wc -l < "$SB/ksm/run") $(wc -l < "$SB/ksm/pages_to_scan") $(wc -l < "$SB/ksm/sleep_millisecs")" >> "$SB/marks"
if [ ! -f "$SB/trace/meminfo.$n" ]; then
    touch "$SB/done"; kill -TERM $PPID; exit 0
fi
cp "$SB/trace/meminfo.$n" "$SB/meminfo"; cp "$SB/trace/procs.$n" "$SB/procs"
"""

PGREP_STUB = r"""#!/bin/bash
# pgrep [-f] [-d DELIM] PATTERN over $SB/procs ("pid rss comm cmdline...")
delim=$'\n'; full=0
while [ $# -gt 1 ]; do
  case "$1" in -f) full=1; shift;; -d) delim="$2"; shift 2;; --) shift; break;; *) break;; esac
done
pat="$1"; out=()
while read -r pid rss comm cmd; do
  if [ $full = 1 ]; then t="$cmd"; else t="$comm"; fi
  if [[ "$t" =~ $pat ]]; then out+=("$pid"); fi
done < "$SB/procs"
[ ${#out[@]} -eq 0 ] && exit 1
(IFS="$delim"; echo "${out[*]}")
"""

PS_STUB = r"""#!/bin/bash
# ps -p "PIDS" -o rsz= over $SB/procs
pids=""
while [ $# -gt 0 ]; do
  case "$1" in -p) pids="$2"; shift 2;; -o) [ "$2" = "rsz=" ] || exit 9; shift 2;; *) exit 9;; esac
done
for p in ${pids//,/ }; do
  while read -r pid rss rest; do [ "$pid" = "$p" ] && echo " $rss"; done < "$SB/procs"
done
"""


@pytest.fixture(scope="module")
def ksmtuned_script(tmp_path_factory) -> Path:
    """/usr/sbin/ksmtuned of Debian's package, extracted into a temporary directory."""
    for tool in ("bash", "awk", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    d = tmp_path_factory.mktemp("ksmtuned-deb")
    deb = os.environ.get("SAMEPAGE_KSMTUNED_DEB")
    if not deb:
        if shutil.which("apt-get") is None:
            pytest.skip("apt-get is not available to fetch Debian's ksmtuned")
        r = subprocess.run(["apt-get", "download", "ksmtuned"], cwd=d, capture_output=True,
                           text=True, timeout=120)
        debs = sorted(d.glob("ksmtuned_*.deb"))
        if r.returncode != 0 or not debs:
            pytest.skip("apt-get download ksmtuned failed (no network or no Debian "
                        f"archive?): {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
        deb = str(debs[0])
    subprocess.run(["dpkg-deb", "-x", deb, str(d / "x")], check=True, timeout=60)
    script = d / "x" / "usr" / "sbin" / "ksmtuned"
    assert script.is_file()
    return script


def sandbox(script: Path, sb: Path) -> Path:
    """The rewritten copy of ``script`` in ``sb`` with its stubs."""
    text = script.read_text()
    for old in ("/proc/meminfo", "/etc/ksmtuned.conf", "> /sys/kernel/mm/ksm/"):
        assert old in text, f"the script no longer uses {old}: update the sandbox"
    text = (text.replace("> /sys/kernel/mm/ksm/", f">> {sb}/ksm/")
                .replace("/proc/meminfo", f"{sb}/meminfo")
                .replace("/etc/ksmtuned.conf", f"{sb}/ksmtuned.conf"))
    assert "/sys/" not in text and "/proc/" not in text
    (sb / "ksm").mkdir()
    for f in FILES:
        (sb / "ksm" / f).write_text("")
    (sb / "bin").mkdir()
    for name, body in (("sleep", SLEEP_STUB), ("pgrep", PGREP_STUB), ("ps", PS_STUB)):
        (sb / "bin" / name).write_text(body)
        (sb / "bin" / name).chmod(0o755)
    (sb / "ksmtuned.conf").write_text("# sandbox: the defaults\n")
    (sb / "step").write_text("0\n")
    (sb / "marks").write_text("")
    out = sb / "ksmtuned"
    out.write_text(text)
    out.chmod(0o755)
    return out


def _meminfo_text(mi: dict[str, int]) -> str:
    return "".join(f"{k}:{v:>16} kB\n" for k, v in mi.items())


def run_script(script: Path, tmp: Path, trace: list[tuple[dict, list[ProcInfo]]]) -> list[dict]:
    """The script's sysfs writes per step, {file: [values]}, driven by ``trace``."""
    sb = tmp / "sb"
    sb.mkdir()
    copy = sandbox(script, sb)
    (sb / "trace").mkdir()
    for i, (mi, procs) in enumerate(trace, start=1):
        (sb / "trace" / f"meminfo.{i}").write_text(_meminfo_text(mi))
        (sb / "trace" / f"procs.{i}").write_text(
            "".join(f"{p.pid} {p.rss_kb} {p.comm} {p.cmdline}\n" for p in procs))
    shutil.copy(sb / "trace" / "meminfo.1", sb / "meminfo")
    shutil.copy(sb / "trace" / "procs.1", sb / "procs")
    env = {"PATH": f"{sb}/bin:/usr/bin:/bin", "SB": str(sb), "PIDFILE": str(sb / "pid"),
           "LANG": "C"}
    subprocess.run(["bash", str(copy)], env=env, check=True, timeout=30)
    deadline = time.monotonic() + 30 + len(trace)
    while not (sb / "done").exists():
        assert time.monotonic() < deadline, "the sandboxed ksmtuned did not finish"
        time.sleep(0.05)
    pid = int((sb / "pid").read_text())
    while os.path.exists(f"/proc/{pid}"):             # the loop the stub ended
        assert time.monotonic() < deadline
        time.sleep(0.02)
    logs = {f: (sb / "ksm" / f).read_text().split() for f in FILES}
    marks = [list(map(int, ln.split()[1:])) for ln in (sb / "marks").read_text().splitlines()]
    steps = []
    for a, b in zip(marks, marks[1:]):               # writes between two sleeps: one step
        steps.append({f: [int(v) for v in logs[f][a[k]:b[k]]]
                      for k, f in enumerate(FILES) if b[k] > a[k]})
    return steps


def run_model(trace, variant="debian") -> list[dict]:
    pol = load_policy("ksmtuned", {"variant": variant})
    view = TraceView(trace[0][0], trace[0][1])
    pol.start(view)
    steps = []
    for i, (mi, procs) in enumerate(trace, start=1):
        view.meminfo_now, view.procs_now = mi, procs
        view.now_ms = i * pol.interval_ms
        n = len(view.writes)
        pol.step(view)
        step: dict[str, list[int]] = {}
        for _, f, v in view.writes[n:]:
            step.setdefault(f, []).append(int(v))
        steps.append(step)
    return steps


def guest(pid: int, name: str, rss_kb: int) -> ProcInfo:
    return ProcInfo(pid, name, rss_kb, rss_kb * 2, rss_kb, comm="qemu-system-x86",
                    cmdline=f"qemu-system-x86_64 -name guest={name} -enable-kvm -m 2048")


def synthetic_trace() -> list[tuple[dict, list[ProcInfo]]]:
    """A 16 GiB host through every branch: idle (stop), pressure (boost up to the max
    clamp), committed memory high but free plenty (decay down to the min clamp), free
    exactly at the threshold, and processes the match must leave out."""
    total = 16 * 1024 * 1024
    thres = total * 20 // 100
    other = ProcInfo(900, "bash", 5_000_000, 6_000_000, 5_000_000, comm="qemu-img",
                     cmdline="qemu-img convert -enable-kvm-not-a-guest x y")
    frees = ([thres + 500_000] * 2 + [thres - 1] * 6 + [thres + 1] * 3 + [thres] * 2 +
             [thres + 1] * 25 + [thres - 100_000] * 2 + [thres + 2_000_000] * 2)
    committed = [1_000_000] * 2 + [14_000_000] * 36 + [1_000_000] * 4
    trace = []
    for i, (free, com) in enumerate(zip(frees, committed)):
        procs = [guest(1000 + i % 3, "a", com // 2), guest(2000, "b", com - com // 2), other]
        mi = {"MemTotal": total, "MemFree": free - 300_000 - i, "MemAvailable": free,
              "Buffers": 100_000 + i, "Cached": 200_000}
        trace.append((mi, procs))
    return trace


def test_model_ksmtuned_matches_the_script_on_every_branch(ksmtuned_script, tmp_path):
    trace = synthetic_trace()
    script = run_script(ksmtuned_script, tmp_path, trace)
    model = run_model(trace)
    assert len(script) == len(trace)
    assert script == model
    # the trace did reach every branch (a sanity check of the test itself)
    pts = [s["pages_to_scan"][0] for s in model if "pages_to_scan" in s]
    assert 1250 in pts and 64 in pts and {"run": [0]} in model


def test_model_ksmtuned_matches_the_script_on_a_model_run(ksmtuned_script, tmp_path):
    """The meminfo and ps the model's ksmtuned saw in examples/host-under-pressure.toml,
    recorded step by step, replayed to the script: the same writes at the same steps as
    the model made in that run."""
    from samepage.policy.view import MachineView
    from samepage.scenario.loader import load_scenario
    from samepage.scenario.policy_runner import run_with_policy

    seen: list[tuple[dict, list[ProcInfo]]] = []
    model_steps: list[dict] = []
    step = MachineView.__init__

    class Recording(type(load_policy("ksmtuned"))):
        def step(self, view):
            mi = view.meminfo()
            procs = [guest(p.pid, p.name, p.rss_kb) for p in view.processes()]
            seen.append((mi, procs))
            n = len(view.writes)
            super().step(view)
            d: dict[str, list[int]] = {}
            for _, f, v in view.writes[n:]:
                d.setdefault(f, []).append(int(v))
            model_steps.append(d)

    del step
    ex = Path(__file__).resolve().parent.parent / "examples" / "host-under-pressure.toml"
    sc = load_scenario(ex)
    run = run_with_policy(sc, Recording(), duration_s=600)
    assert run.writes and len(seen) >= 5
    assert {"run": [0]} in model_steps and any("pages_to_scan" in s for s in model_steps)
    assert run_script(ksmtuned_script, tmp_path, seen) == model_steps
