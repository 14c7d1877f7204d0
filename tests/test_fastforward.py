"""Fast-forward of quiescent scans (samepage.ksm.fastforward) changes nothing but speed.

Every check runs the same thing on two machines, ``fast_forward`` on and off, and compares
everything: each batch record (t_ms, pages, CPU time, operation counts), the 11 counters,
ksm_stat, and a digest of the whole state -- every rmap_item (address with its seqnr bits,
checksum, smart-scan age and skips, tree links and colour), both trees' shapes, the cursor,
the clock, CPU time, the advisor, the page tables and folios.  Further tests check that the
fast path does skip the work (so the comparisons are not vacuous), that the things which
must end a skip do (an event, a tunable write, a chain due for pruning, the advisor moving),
and the switches (``SAMEPAGE_FAST_FORWARD=0``, ``samepage run --no-fast-forward``).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from samepage import Machine
from samepage.ksm import fastforward
from samepage.ksm.ksm import Ksm
from samepage.ksm.rbtree import rb_inorder
from samepage.ksm.structs import PAGE_MASK, RmapItem, StableNode
from samepage.scenario import load_scenario
from samepage.scenario.model_runner import run_scenario_on_model

SCENARIOS = sorted((Path(__file__).parent / "conformance" / "scenarios").glob("*.toml"))


# ------------------------------------------------------------------------------ helpers
def digest(m: Machine) -> dict:
    """The whole state, by names rather than object identities."""
    k = m.ksm                                # materialises a replay stopped mid-scan
    names: dict = {}                         # by id(node) or (for rmap_item handles) row

    def key(x):
        return ("row", x.row) if isinstance(x, RmapItem) else id(x)

    for slot in k.mm_list:
        for it in slot.rmap_list:
            names[key(it)] = ("item", slot.mm.name, it.address & PAGE_MASK)
    stable = []
    for nid, root in enumerate(k.root_stable_tree):
        for n in rb_inorder(root):
            names[id(n)] = ("node", n.kpfn, n.rmap_hlist_len)
            for d in n.hlist:
                if isinstance(d, StableNode):
                    names[id(d)] = ("dup", d.kpfn)
    for n in k.migrate_nodes:
        names[id(n)] = ("migrated", n.kpfn)

    def ref(x):
        if x is None or isinstance(x, (int, str)):
            return x
        if isinstance(x, (RmapItem, StableNode)):
            return names.get(key(x), ("unnamed", type(x).__name__))
        return type(x).__name__

    def links(n):
        return (ref(n.rb_parent), ref(n.rb_left), ref(n.rb_right), n.rb_red)

    for nid, root in enumerate(k.root_stable_tree):
        for n in rb_inorder(root):
            stable.append((nid, ref(n), links(n), n.chain_prune_time,
                           [(ref(d), getattr(d, "rmap_hlist_len", None),
                             [ref(i) for i in getattr(d, "hlist", ())]) for d in n.hlist]))
    unstable = [(nid, ref(n), links(n)) for nid, root in enumerate(k.root_unstable_tree)
                for n in rb_inorder(root)]
    items = [(slot.mm.name, [(it.address, it.oldchecksum, it.age, it.remaining_skips,
                              ref(it.anon_vma), links(it)) for it in slot.rmap_list])
             for slot in k.mm_list]
    scan = k.ksm_scan
    tables = {}
    for name, p in sorted(m.processes.items()):
        tables[name] = [(v.start, list(v.pte), list(v.ptef), v.flags) for v in p.mm.vmas]
    mem = m.mem
    folios = sorted({(f.pfn, f.refcount, f.mapcount, f.flags)
                     for f in mem.page_folio if f is not None})
    return {
        "counters": k.counters(), "stable": stable, "unstable": unstable, "items": items,
        "scan": (scan.mm_slot.mm.name if scan.mm_slot else None, scan.address,
                 scan.rmap_index, scan.seqnr),
        "clock": k.clock_ns, "cpu": k.cpu_ns, "ops": list(k.ops),
        "advisor": dict(k.advisor_ctx), "pages_to_scan": k.ksm_thread_pages_to_scan,
        "failures": dict(k.merge_failures), "current": ref(k.current_item),
        "batches": m.batches, "tables": tables, "folios": folios,
        "vmstat": dict(mem.vmstat), "ksm_stats": m.ksm_stats(),
        "contents": [mem.page_content[f[0]] for f in folios],
    }


def records(rs) -> list[tuple]:
    return [(r.batch, r.t_ms, r.pages, r.cpu_ms, r.ops) for r in rs]


class Counting:
    """Counts the real ksm_do_scan calls (replayed batches do not call it)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        orig = Ksm.ksm_do_scan

        def counted(ksm, n):
            self.calls += 1
            return orig(ksm, n)
        monkeypatch.setattr(Ksm, "ksm_do_scan", counted)


def workload(ff: bool, n: int = 2048, pages_to_scan: int = 256, smart: int = 0,
             unique: int = 0, sleep: int = 0, **tun) -> tuple[Machine, object]:
    """n pages holding 64 distinct tokens (plus ``unique`` pages of their own), merged."""
    m = Machine(fast_forward=ff)
    p = m.spawn("a")
    ram = p.mmap(n + unique, name="ram", thp="nohuge")
    p.fill(ram, [(i % 64) + 1 for i in range(n)] + [10_000 + i for i in range(unique)])
    p.madvise(ram, "mergeable")
    for key, v in (("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep),
                   ("smart_scan", smart), *tun.items()):
        m.sysfs_write(key, v)
    m.sysfs_write("run", 1)
    return m, p


def both(fn):
    on, off = fn(True), fn(False)
    return on, off


# ------------------------------------------------------------------------------ conformance
@pytest.mark.parametrize("toml", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_conformance_scenario_identical_with_and_without(toml, monkeypatch):
    sc = load_scenario(toml)
    runs = {}
    for ff in ("1", "0"):
        monkeypatch.setenv("SAMEPAGE_FAST_FORWARD", ff)
        r = run_scenario_on_model(sc)
        runs[ff] = (r.records, r.final, digest(r.machine))
    assert runs["1"][0] == runs["0"][0]              # every key, t_ms and CPU included
    assert runs["1"][1] == runs["0"][1]
    assert runs["1"][2] == runs["0"][2]


# ------------------------------------------------------------------------------ it skips
@pytest.mark.unsanitized
def test_steady_state_is_replayed_not_rescanned(monkeypatch):
    c = Counting(monkeypatch)
    on, _ = workload(True)
    on.run_full_scans(3)                             # scan1, merge, first steady (recorded)
    real = c.calls
    assert on.ksm.ff_profile is not None
    on.run_full_scans(200)
    assert c.calls == real                           # not one real batch
    off, _ = workload(False)
    off.run_full_scans(203)
    assert digest(on) == digest(off)
    assert on.counters()["full_scans"] == 203


@pytest.mark.unsanitized
def test_single_batches_mid_scan_then_an_event(monkeypatch):
    """The scenario runner's way: one batch at a time, an event inside a scan."""
    c = Counting(monkeypatch)
    runs = {}
    for ff in (True, False):
        m, p = workload(ff, unique=100)
        rs = m.run_batches(3 * 10)                   # 9 batches a scan (2148 / 256)
        rs += m.run_batches(40)
        calls = c.calls
        rs += m.run_batches(4)                      # stops inside a scan
        if ff:
            assert c.calls == calls                  # replayed
        p.write("ram", [5], 999)                    # the event: materialise, then apply
        rs += m.run_batches(30)
        runs[ff] = (records(rs), digest(m))
    assert runs[True] == runs[False]


def test_peek_mid_scan_materialises(monkeypatch):
    on, _ = workload(True, unique=300, smart=0)
    off, _ = workload(False, unique=300, smart=0)
    assert records(on.run_batches(50)) == records(off.run_batches(50))
    for n in (1, 2, 3, 5, 7, 11):
        assert records(on.run_batches(n)) == records(off.run_batches(n))
        assert on.counters() == off.counters()       # exact without materialising
        assert digest(on) == digest(off)             # the real state, materialised


@pytest.mark.unsanitized
def test_smart_scan_fixed_point_when_all_merged(monkeypatch):
    c = Counting(monkeypatch)
    on, _ = workload(True, smart=1)
    on.run_full_scans(4)
    calls = c.calls
    on.run_full_scans(30)
    assert c.calls == calls
    off, _ = workload(False, smart=1)
    off.run_full_scans(34)
    assert digest(on) == digest(off)


def test_unique_pages_with_smart_scan_are_never_skipped(monkeypatch):
    # ages move every scan: no scan is clean, every batch is real
    on, _ = workload(True, smart=1, unique=50)
    off, _ = workload(False, smart=1, unique=50)
    for _ in range(6):
        assert records(on.run_batches(25)) == records(off.run_batches(25))
    assert digest(on) == digest(off)


# ------------------------------------------------------------------------------ what ends it
@pytest.mark.unsanitized
def test_chain_due_for_pruning_ends_the_skip(monkeypatch):
    """max_page_sharing 2 makes chains; unique pages search the stable tree through them
    every scan; a chain due for pruning (every second of simulated time, a scan takes
    170 ms) is pruned for real, in the right batch."""
    c = Counting(monkeypatch)
    runs = {}
    for ff in (True, False):
        m, _ = workload(ff, n=256, pages_to_scan=64, unique=40, sleep=20,
                        max_page_sharing=2, stable_node_chains_prune_millisecs=1000)
        m.run_full_scans(4)
        assert m.counters()["stable_node_chains"] > 0
        calls = c.calls
        times = []
        rs = []
        for _ in range(40):
            rs += m.run_batches(7)
            # prune times are real state even inside a replay (m._ksm: no materialising)
            times.append(sorted(n.chain_prune_time for n in rb_inorder(m._ksm.root_stable_tree[0])
                                if n.is_chain()))
        runs[ff] = (records(rs), digest(m), times)
        if ff:
            assert c.calls - calls < len(rs)         # some batches were replayed
    assert runs[True] == runs[False]
    assert len({tuple(t) for t in runs[True][2]}) > 3    # pruning happened, several times


def test_tunable_write_ends_the_skip():
    def run(ff):
        m, p = workload(ff, unique=20)
        rs = m.run_batches(60)
        m.sysfs_write("pages_to_scan", 100)
        rs += m.run_batches(60)
        m.sysfs_write("use_zero_pages", 1)
        rs += m.run_batches(60)
        m.sysfs_write("run", 2)
        m.sysfs_write("run", 1)
        rs += m.run_batches(60)
        return records(rs), digest(m)
    on, off = both(run)
    assert on == off


@pytest.mark.unsanitized
def test_scan_time_advisor_runs_in_replayed_scans(monkeypatch):
    def run(ff):
        m, _ = workload(ff, n=4096, unique=64, sleep=5, advisor_mode="scan-time",
                        advisor_min_pages_to_scan=500, advisor_max_pages_to_scan=500)
        rs = m.run_batches(400)
        m.run_full_scans(50)
        rs += m.run_batches(33)
        return records(rs), digest(m), m.ksm.advisor_ctx
    c = Counting(monkeypatch)
    on = run(True)
    on_calls = c.calls
    off = run(False)
    assert on == off
    assert on_calls < c.calls - on_calls             # the fast path did replay


def test_advisor_moving_pages_to_scan_is_followed():
    def run(ff):
        m, _ = workload(ff, n=4096, unique=10, sleep=20, advisor_mode="scan-time",
                        advisor_target_scan_time=1)
        rs = m.run_batches(300)
        return records(rs), digest(m)
    on, off = both(run)
    assert on == off


def test_fork_and_exit_between_batches():
    def run(ff):
        m, p = workload(ff, n=512, pages_to_scan=100, unique=30)
        rs = m.run_batches(40)
        c = p.fork("child")
        rs += m.run_batches(40)
        c.exit()
        rs += m.run_batches(23)
        p.zap("ram", range(10, 20))
        rs += m.run_batches(40)
        return records(rs), digest(m)
    on, off = both(run)
    assert on == off


# ------------------------------------------------------------------------------ switches
def test_switches(monkeypatch):
    monkeypatch.setenv("SAMEPAGE_FAST_FORWARD", "0")
    assert Machine().fast_forward is False
    assert Machine(fast_forward=True).fast_forward is True
    monkeypatch.setenv("SAMEPAGE_FAST_FORWARD", "1")
    assert Machine().fast_forward is True
    monkeypatch.delenv("SAMEPAGE_FAST_FORWARD")
    assert Machine().fast_forward is True
    assert Machine(sanitize=True)._ff_batch is not None     # sanitizer: real batches only


def test_sanitized_machine_runs_every_batch(monkeypatch):
    c = Counting(monkeypatch)
    m = Machine(sanitize=True)
    p = m.spawn("a")
    ram = p.mmap(64, name="ram")
    p.fill(ram, [1] * 64)
    p.madvise(ram, "mergeable")
    m.sysfs_write("run", 1)
    m.run_full_scans(10)
    assert c.calls == m.batches


# ------------------------------------------------------------------------------ property
STEP = st.one_of(
    st.tuples(st.just("batches"), st.integers(1, 40)),
    st.tuples(st.just("scans"), st.integers(1, 12)),
    st.tuples(st.just("write"), st.integers(0, 10_000), st.sampled_from([0, 1, 2, 3, 7, 9])),
    st.tuples(st.just("zap"), st.integers(0, 10_000), st.integers(1, 4)),
    st.tuples(st.just("fork"), st.integers(0, 10_000)),
    st.tuples(st.just("exit"), st.integers(0, 10_000)),
    st.tuples(st.just("unmergeable"), st.integers(0, 10_000)),
    st.tuples(st.just("peek")),
    st.tuples(st.just("sysfs"), st.sampled_from([
        ("smart_scan", 0), ("smart_scan", 1), ("use_zero_pages", 0), ("use_zero_pages", 1),
        ("pages_to_scan", 3), ("pages_to_scan", 16), ("pages_to_scan", 100),
        ("advisor_mode", "scan-time"), ("advisor_mode", "none"), ("sleep_millisecs", 0),
        ("stable_node_chains_prune_millisecs", 50), ("max_page_sharing", 2),
        ("max_page_sharing", 256), ("run", 2), ("run", 1), ("run", 0),
        ("merge_across_nodes", 0)])),
)


def apply(m: Machine, step, out: list) -> None:
    kind = step[0]
    procs = [p for _, p in sorted(m.processes.items()) if p.alive]
    if kind == "batches":
        out.extend(records(m.run_batches(step[1])))
    elif kind == "scans":
        out.append(("scans", m.run_full_scans(step[1], max_batches=400)))
    elif kind == "peek":
        out.append(("peek", repr(digest(m))))
    elif kind == "sysfs":
        try:
            m.sysfs_write(*step[1])
            out.append(("sysfs", step[1], "ok"))
        except OSError as e:
            out.append(("sysfs", step[1], e.errno))
    elif procs:
        p = procs[step[1] % len(procs)]
        if kind == "write":
            ram = p.region("ram")
            p.write(ram, [step[1] % ram.nr_pages], step[2])
        elif kind == "zap":
            ram = p.region("ram")
            i = step[1] % ram.nr_pages
            p.zap(ram, range(i, min(ram.nr_pages, i + step[2])))
        elif kind == "fork" and len(procs) < 4:
            p.fork(f"f{len(m.processes)}")
        elif kind == "exit" and len(procs) > 1:
            p.exit()
        elif kind == "unmergeable":
            p.madvise("ram", "unmergeable")
    out.append(m.counters())


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(fills=st.lists(st.lists(st.sampled_from([0, 1, 1, 2, 2, 2, 3, 4, 5, 6]), min_size=1,
                                max_size=40), min_size=1, max_size=3),
       unique=st.integers(0, 12), pages_to_scan=st.sampled_from([1, 5, 16, 64, 100]),
       smart=st.booleans(), zero=st.booleans(), max_sharing=st.sampled_from([2, 3, 256]),
       advisor=st.booleans(), prune=st.sampled_from([0, 40, 2000]),
       sleep=st.sampled_from([0, 20]),
       steps=st.lists(STEP, min_size=1, max_size=14))
def test_property_on_equals_off(fills, unique, pages_to_scan, smart, zero, max_sharing,
                                advisor, prune, sleep, steps):
    results = []
    for ff in (True, False):
        m = Machine(fast_forward=ff)
        for k, fill in enumerate(fills):
            p = m.spawn(f"p{k}")
            ram = p.mmap(len(fill) + unique, name="ram", thp="nohuge")
            p.fill(ram, fill + [1000 * (k + 1) + i for i in range(unique)])
            p.madvise(ram, "mergeable")
        tun = [("pages_to_scan", pages_to_scan), ("smart_scan", int(smart)),
               ("use_zero_pages", int(zero)), ("max_page_sharing", max_sharing),
               ("stable_node_chains_prune_millisecs", prune), ("sleep_millisecs", sleep)]
        if advisor:
            tun += [("advisor_mode", "scan-time"), ("advisor_min_pages_to_scan", 5),
                    ("advisor_max_pages_to_scan", 50), ("advisor_target_scan_time", 2)]
        for k, v in tun:
            m.sysfs_write(k, v)
        m.sysfs_write("run", 1)
        out: list = [records(m.run_batches(30))]
        for step in steps:
            apply(m, step, out)
        out.append(records(m.run_batches(50)))
        results.append((out, digest(m)))
    assert results[0][0] == results[1][0]
    assert results[0][1] == results[1][1]


@pytest.mark.unsanitized
def test_replay_needs_the_state_it_was_recorded_from():
    m, p = workload(True)
    m.run_full_scans(3)
    prof = m.ksm.ff_profile
    assert prof is not None and fastforward.can_replay(m.ksm, prof)
    m.ksm.ksm_pages_shared += 1                      # a change behind the API's back
    assert not fastforward.can_replay(m.ksm, prof)
    m.ksm.ksm_pages_shared -= 1
    p.write("ram", [0], 5)                          # an event drops the profile
    assert m.ksm.ff_profile is None


@pytest.mark.unsanitized
def test_cli_no_fast_forward(monkeypatch):
    from typer.testing import CliRunner

    from samepage.cli.main import app
    toml = str(Path(__file__).parent / "conformance" / "scenarios" / "kst_Z1_512.toml")
    replayed = []
    orig = fastforward.replay_batch
    monkeypatch.setattr(fastforward, "replay_batch",
                        lambda *a, **k: (replayed.append(1), orig(*a, **k))[1])
    monkeypatch.setenv("SAMEPAGE_FAST_FORWARD", "1")     # restored after the test
    r1 = CliRunner().invoke(app, ["run", toml, "--json"])
    n_on = len(replayed)
    r2 = CliRunner().invoke(app, ["run", toml, "--json", "--no-fast-forward"])
    assert r1.exit_code == 0 and r2.exit_code == 0, (r1.output, r2.output)
    assert r1.output == r2.output
    assert n_on > 0 and len(replayed) == n_on            # the second run replayed nothing


@pytest.mark.unsanitized
def test_handing_out_mm_or_mem_drops_the_profile():
    """p.mm and m.mem may be changed behind the API: taking them ends any fast-forward."""
    m, p = workload(True)
    m.run_full_scans(3)
    assert m.ksm.ff_profile is not None
    p.mm.write_page(p.region("ram").start, 77)     # behind the API's back
    assert m.ksm.ff_profile is None
    off, q = workload(False)
    off.run_full_scans(3)
    q.mm.write_page(q.region("ram").start, 77)
    assert records(m.run_batches(40)) == records(off.run_batches(40))
    m.run_full_scans(3)
    assert m.ksm.ff_profile is not None
    m.mem
    assert m.ksm.ff_profile is None


@pytest.mark.unsanitized
def test_scan_rate_benchmark_json(tmp_path):
    """benchmarks/scan_rate.py --json: one object with every phase; the steady phase (many
    scans, replayed) is far faster than the same scans done for real."""
    import json
    import subprocess
    import sys
    script = Path(__file__).parent.parent / "benchmarks" / "scan_rate.py"
    outs = []
    for extra in ([], ["--no-fast-forward"]):
        r = subprocess.run([sys.executable, str(script), "--pages", "2048", "--steady-scans",
                            "40", "--json", *extra], capture_output=True, text=True,
                           cwd=tmp_path, timeout=300)
        assert r.returncode == 0, r.stderr
        outs.append(json.loads(r.stdout))
    on, off = outs
    assert set(on) >= {"scan1", "merge", "steady", "unique", "bytes_per_page"}
    assert "ratios" not in on                        # only with --against-kernel
    assert on["steady"] > 5 * off["steady"]


def test_scan_rate_warmup(tmp_path):
    """--warmup PAGES: an untimed run first, reported in the JSON; the timed run's counters
    are those of a cold run (the warm-up is another Machine); bad values refused."""
    import json
    import subprocess
    import sys
    script = Path(__file__).parent.parent / "benchmarks" / "scan_rate.py"

    def run(*extra):
        return subprocess.run([sys.executable, str(script), "--pages", "2048", "--steady-scans",
                               "3", *extra], capture_output=True, text=True, cwd=tmp_path,
                              timeout=300)
    cold, warm = (json.loads(run("--json", *x).stdout) for x in ([], ["--warmup", "4096"]))
    assert cold["warmup_pages"] == 0 and cold["warmup_s"] == 0
    assert warm["warmup_pages"] == 4096 and warm["warmup_s"] > 0
    assert warm["counters"] == cold["counters"]
    text = run("--warmup", "4096")
    assert text.returncode == 0 and "untimed warm-up run on 4,096 pages" in text.stdout
    bad = run("--warmup", "10")
    assert bad.returncode == 2 and "--warmup" in bad.stderr and bad.stdout == ""
