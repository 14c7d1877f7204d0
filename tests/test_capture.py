"""Tests of samepage capture (live processes, core files, raw files), the snapshot format and
its loader, and samepage launch. Every process captured here is one the test started."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from samepage.capture import HOLE, build_snapshot, load_snapshot, save_snapshot
from samepage.capture import procfs
from samepage.capture.live import Progress, capture_live
from samepage.capture.raw import capture_raw
from samepage.capture.snapshot import CapturedProcess, CapturedVma
from samepage.capture.tokens import PAGE_SIZE, Digests, assign_tokens, digest_pages, token_page
from samepage.scenario.errors import ScenarioError

SAMEPAGE = [sys.executable, "-c", "import sys; from samepage.cli.main import app; sys.exit(app())"]

# A child with a 64-page private anonymous mapping: pages 0-9 hold token patterns 1, 2, 3,
# 1, 2, 3, ..., page 10 is written with zeros (a present anonymous zero page), page 11 has
# the first word of token 1 and then 0xff, pages 12-15 are read-faulted (the shared zero
# page), pages 16-63 are never touched. It prints the mapping's address, then sleeps; with
# "volatile" it rewrites the first word of page 0 every 20 ms.
CHILD = r'''
import ctypes, mmap, sys, time
n = 64
m = mmap.mmap(-1, n * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof((ctypes.c_char * (n * 4096)).from_buffer(m))
tp = lambda t: t.to_bytes(8, "big") * 512
for i in range(10):
    m[i * 4096:(i + 1) * 4096] = tp(i % 3 + 1)
m[10 * 4096:11 * 4096] = bytes(4096)
m[11 * 4096:12 * 4096] = tp(1)[:8] + b"\xff" * 4088
for i in range(12, 16):
    _ = m[i * 4096]
print(addr, flush=True)
if "volatile" in sys.argv[2:]:
    k = 0
    while True:
        k += 1
        m[0:8] = k.to_bytes(8, "big")
        time.sleep(0.02)
time.sleep(3600)
'''


class Child:
    def __init__(self, script: Path, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, str(script), *args],
                                     stdout=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.addr = int(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    p = tmp_path / "child.py"
    p.write_text(CHILD)
    return p


@pytest.fixture
def spawn(child_script: Path):
    children: list[Child] = []

    def start(*args: str) -> Child:
        c = Child(child_script, *args)
        children.append(c)
        return c

    yield start
    for c in children:
        c.stop()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("samepage: error: ")
    return lines[0]


def cli(runner, *args):
    from samepage.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def region(snap, child: Child):
    """(vma, dense tokens of the child's 64 pages, page flags by page) of a snapshot."""
    for p in snap.processes:
        if p.pid != child.pid:
            continue
        for v in p.vmas:
            if v.start <= child.addr < v.end:
                base = (child.addr - v.start) // PAGE_SIZE
                dense = v.dense_tokens()[base:base + 64]
                flags = np.zeros(v.pages, np.int64)
                flags[v.offsets.astype(np.int64)] = v.page_flags
                changes = np.full(v.pages, -1, np.int64)
                changes[v.offsets.astype(np.int64)] = v.changes
                return v, dense, flags[base:base + 64], changes[base:base + 64]
    raise AssertionError("the child's mapping is not in the snapshot")


def pagemap_present(pid: int, addr: int, n: int) -> np.ndarray:
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        raw = os.pread(f.fileno(), n * 8, addr // PAGE_SIZE * 8)
    return (np.frombuffer(raw, "<u8") >> np.uint64(63)).astype(bool)


# ------------------------------------------------------------------------------ tokens


def test_tokens_follow_token_order_and_zero_is_zero():
    ts = [7, 0, 3, 7, 2 ** 63 + 5, 1, 3]
    d = digest_pages(b"".join(token_page(t) for t in ts))
    tok, distinct = assign_tokens(d)
    assert distinct == 4
    assert tok.tolist() == [3, 0, 2, 3, 4, 1, 2]


def test_tokens_same_first_word_are_distinct():
    a = token_page(5)
    b = a[:8] + b"\x00" * 4088          # same first word, differs later
    tok, distinct = assign_tokens(digest_pages(a + b + a))
    assert distinct == 2 and tok[0] == tok[2] != tok[1] and 0 not in tok.tolist()


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.booleans()),
                min_size=1, max_size=40))
def test_tokens_equal_iff_contents_equal_and_ordered_by_first_word(spec):
    pages = []
    for first, tail, zero in spec:
        if zero:
            pages.append(bytes(PAGE_SIZE))
        else:
            pages.append(first.to_bytes(8, "big") + bytes([tail]) * (PAGE_SIZE - 8))
    tok, distinct = assign_tokens(digest_pages(b"".join(pages)))
    nonzero = {p for p in pages if any(p)}
    assert distinct == len(nonzero)
    assert sorted(set(tok.tolist()) - {0}) == list(range(1, distinct + 1))
    for i, p in enumerate(pages):
        assert (tok[i] == 0) == (not any(p))
        for j, q in enumerate(pages):
            assert (tok[i] == tok[j]) == (p == q)
            if any(p) and any(q) and p[:8] < q[:8]:
                assert tok[i] < tok[j]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 2 ** 64 - 1)), min_size=2,
                max_size=40))
def test_token_order_is_memcmp_order_over_the_first_32_bytes(spec):
    # pages that share a header word and differ in the 2nd-4th words (a counter behind a
    # common header): the kernel's trees see them in memcmp order, so must the tokens
    pages = [b"HDR\x00\x00\x00\x00\x01" + w.to_bytes(8, "big") * 3 + k.to_bytes(8, "big")
             + bytes(PAGE_SIZE - 40) for w, k in spec]
    tok, _ = assign_tokens(digest_pages(b"".join(pages)))
    for i, p in enumerate(pages):
        for j, q in enumerate(pages):
            if p[:32] < q[:32]:
                assert tok[i] < tok[j]
            assert (tok[i] == tok[j]) == (p == q)


def test_a_counter_behind_a_common_first_word_orders_its_pages():
    pages = [b"\x00" * 7 + b"\x07" + i.to_bytes(8, "big") + b"\x5a" * (PAGE_SIZE - 16)
             for i in (5, 1, 4, 2, 3)]
    tok, _ = assign_tokens(digest_pages(b"".join(pages)))
    assert tok.tolist() == [5, 1, 4, 2, 3]     # memcmp order, not the hash's


# ------------------------------------------------------------------------------ live capture


def test_live_capture_reads_only_present_pages(spawn):
    c = spawn("m")
    before = pagemap_present(c.pid, c.addr, 64)
    procs, nbytes, zero_known = capture_live([c.pid])
    after = pagemap_present(c.pid, c.addr, 64)
    assert before[:16].all() and not before[16:].any()
    assert np.array_equal(before, after), "the capture faulted pages into the target"
    snap = build_snapshot(procs, sources=[f"pid:{c.pid}"], zero_pfn_known=zero_known)
    vma, dense, flags, _ = region(snap, c)
    assert (dense[16:] == HOLE).all()
    t1, t2, t3 = dense[0], dense[1], dense[2]
    assert 0 < t1 < t2 < t3                       # memcmp order of the first word
    assert dense[:10].tolist() == [t1, t2, t3] * 3 + [t1]
    assert dense[10] == 0 and dense[11] not in (0, t1, t2, t3)
    assert (dense[12:16] == 0).all()
    if zero_known:
        assert (flags[12:16] & procfs.PAGE_ZERO_PFN).all()
        assert not (flags[:12] & procfs.PAGE_ZERO_PFN).any()
    assert vma.flags & procfs.VMA_WRITE and not vma.mergeable
    assert procs[0].merge_any is False
    assert nbytes >= 12 * PAGE_SIZE


# A merge_any child (prctl PR_SET_MEMORY_MERGE, as samepage launch sets it) with a 32-page
# private mapping of a file: pages 0, 3, 6, ..., 21 are written (copied on write: anonymous
# folios), pages 1-2, 4-5, ... up to 23 are read (page-cache pages; fault-around may map
# pages 24-31 too). It prints the mapping's address, then sleeps.
FILE_CHILD = r'''
import ctypes, mmap, sys, time
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(67, 1, 0, 0, 0) != 0:           # PR_SET_MEMORY_MERGE
    print(-ctypes.get_errno(), flush=True)
    time.sleep(3600)
f = open(sys.argv[1], "rb")
n = 32
m = mmap.mmap(f.fileno(), n * 4096, flags=mmap.MAP_PRIVATE,
              prot=mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof((ctypes.c_char * (n * 4096)).from_buffer(m))
s = 0
for i in range(24):
    if i % 3 == 0:
        m[i * 4096:i * 4096 + 8] = (1000 + i).to_bytes(8, "big")
    else:
        s += m[i * 4096]
print(addr, flush=True)
time.sleep(3600)
'''
FILE_WRITTEN = list(range(0, 24, 3))


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.skipif(not os.path.exists("/proc/self/ksm_stat"), reason="no ksm_stat")
def test_private_file_mapping_anon_pages_are_captured_and_scanned(tmp_path):
    """The capture reads exactly the copied-on-write pages of a private file mapping (ksmd
    scans them: anonymous folios of a VM_MERGEABLE VMA), none of its page-cache pages, and
    leaves the target's pagemap and RSS as they were; the forecast scans those pages."""
    data = tmp_path / "data.bin"
    data.write_bytes(secrets.token_bytes(32 * PAGE_SIZE))
    script = tmp_path / "filechild.py"
    script.write_text(FILE_CHILD)
    c = Child.__new__(Child)
    c.proc = subprocess.Popen([sys.executable, str(script), str(data)], stdout=subprocess.PIPE,
                              text=True)
    c.pid, c.addr = c.proc.pid, int(c.proc.stdout.readline())
    try:
        if c.addr < 0:
            pytest.skip(f"prctl(PR_SET_MEMORY_MERGE) refused (errno {-c.addr})")
        with open(f"/proc/{c.pid}/pagemap", "rb") as f:
            before = os.pread(f.fileno(), 32 * 8, c.addr // PAGE_SIZE * 8)
        rss = _status_kb(c.pid, "VmRSS"), _status_kb(c.pid, "RssAnon"), \
            _status_kb(c.pid, "RssFile")
        procs, _, zero_known = capture_live([c.pid])
        with open(f"/proc/{c.pid}/pagemap", "rb") as f:
            after = os.pread(f.fileno(), 32 * 8, c.addr // PAGE_SIZE * 8)
        assert after == before, "the capture changed the target's page tables"
        assert (_status_kb(c.pid, "VmRSS"), _status_kb(c.pid, "RssAnon"),
                _status_kb(c.pid, "RssFile")) == rss
    finally:
        c.stop()
    entries = np.frombuffer(before, "<u8")
    present = (entries >> np.uint64(63)) & np.uint64(1) == 1
    file_page = (entries >> np.uint64(61)) & np.uint64(1) == 1
    # the read faults mapped page-cache pages (fault-around maps their neighbours too)
    assert present[:24].all() and file_page[present].sum() >= 24 - len(FILE_WRITTEN)
    assert np.flatnonzero(present & ~file_page).tolist() == FILE_WRITTEN
    snap = build_snapshot(procs, sources=[f"pid:{c.pid}"], zero_pfn_known=zero_known)
    (vma,) = [v for v in snap.vmas if v.start <= c.addr < v.end]
    assert vma.file_backed and vma.name == str(data)
    assert vma.mergeable and procs[0].merge_any is True
    base = (c.addr - vma.start) // PAGE_SIZE
    assert (vma.offsets.astype(np.int64) - base).tolist() == FILE_WRITTEN
    assert np.unique(vma.tokens).size == len(FILE_WRITTEN) and (vma.tokens > 0).all()
    assert not vma.page_flags.any() or not (vma.page_flags & procfs.PAGE_ZERO_PFN).any()
    s = snap.summary()["total"]
    assert s["file_anon_pages"] == sum(v.tokens.size for v in snap.vmas if v.file_backed)
    assert s["file_anon_pages"] >= len(FILE_WRITTEN) and s["file_vmas"] >= 1
    # the forecast builds the VMA at its address with those pages present, the rest holes,
    # and ksmd scans them: pages_scanned of a full scan counts every page of the mergeable
    # VMAs that is not a zero-page mapping, the file-backed ones included
    from samepage.forecast import build_machine, simulate
    from samepage.forecast.run import Until
    path = tmp_path / "s.npz"
    save_snapshot(snap, path)
    built = build_machine(load_snapshot(path))
    proc = built.processes[0].process
    (mv,) = [v for v in proc.mm.vmas if v.start == vma.start]
    assert [i - base for i in range(vma.pages) if int(mv.pte[i]) >= 0] == FILE_WRITTEN
    scannable = [v for v in snap.vmas if v.mergeable]
    want = sum(int(np.count_nonzero((v.page_flags & procfs.PAGE_ZERO_PFN) == 0))
               for v in scannable)
    in_files = sum(v.tokens.size for v in scannable if v.file_backed)
    assert in_files >= len(FILE_WRITTEN)
    r = simulate(built, Until("scans", 2))
    assert [sc["pages_scanned"] for sc in r.scans] == [want, 2 * want]


def test_samples_count_changed_pages(spawn):
    c = spawn("m", "volatile")
    procs, _, _ = capture_live([c.pid], samples=3, interval=0.15)
    snap = build_snapshot(procs, sources=[], samples=3, interval_s=0.15)
    _, dense, _, changes = region(snap, c)
    assert changes[0] == 2
    assert (changes[1:16] == 0).all() and (changes[16:] == -1).all()


class Recorder(Progress):
    def __init__(self, on_advance=None) -> None:
        self.warnings: list[str] = []
        self.read = 0
        self.on_advance = on_advance

    def advance(self, n: int) -> None:
        self.read += n
        if self.on_advance is not None:
            self.on_advance()

    def warn(self, line: str) -> None:
        self.warnings.append(line)


def test_process_exiting_mid_capture_is_one_warning(spawn):
    a, b = spawn("a"), spawn("b")

    def kill_a():
        if a.proc.poll() is None and os.path.exists(f"/proc/{a.pid}"):
            os.kill(a.pid, signal.SIGKILL)
            for _ in range(200):        # until it is a zombie (we reap it later)
                with open(f"/proc/{a.pid}/stat") as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        break
                time.sleep(0.01)

    rec = Recorder(kill_a)
    procs, _, _ = capture_live([a.pid, b.pid], progress=rec, chunk=4 * PAGE_SIZE)
    assert [p.pid for p in procs] == [b.pid]
    assert len(rec.warnings) == 1 and f"pid {a.pid}" in rec.warnings[0]
    assert "exited" in rec.warnings[0]


def test_process_gone_before_capture_is_left_out(spawn):
    c = spawn("m")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    rec = Recorder()
    procs, _, _ = capture_live([gone.pid, c.pid], progress=rec)
    assert [p.pid for p in procs] == [c.pid]
    assert len(rec.warnings) == 1 and str(gone.pid) in rec.warnings[0]


def _fake_proc(root: Path, pid: int, comm: str, *, kthread=False, ksm: str | None = None,
               smaps: str = "", cmdline: str = "") -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cmdline").write_text(cmdline.replace(" ", "\0"))
    flags = 0x00200000 if kthread else 0x400000
    (d / "stat").write_text(f"{pid} ({comm}) S 2 0 0 0 -1 {flags} 0 0 0 0\n")
    if ksm is not None:
        (d / "ksm_stat").write_text(ksm)
    (d / "smaps").write_text(smaps)


SMAPS_MG = """7f0000000000-7f0000010000 rw-p 00000000 00:00 0 
Size:                 64 kB
AnonHugePages:         0 kB
VmFlags: rd wr mr mw me ac mg 
"""


def test_selection_on_a_fake_proc(tmp_path):
    root = tmp_path / "proc"
    _fake_proc(root, 2, "kthreadd", kthread=True)
    _fake_proc(root, 10, "qemu", ksm="ksm_merge_any: no\nksm_mergeable: yes\n",
               cmdline="qemu-system-x86_64 -m 4G")
    _fake_proc(root, 11, "bash", ksm="ksm_merge_any: no\nksm_mergeable: no\n")
    _fake_proc(root, 12, "old", smaps=SMAPS_MG)             # no ksm_stat: smaps decides
    _fake_proc(root, 13, "any", ksm="ksm_merge_any: yes\nksm_mergeable: yes\n")
    assert procfs.mergeable_pids(str(root)) == [10, 12, 13]
    assert procfs.mergeable_pids(str(root), exclude={13}) == [10, 12]
    assert procfs.pids_by_name("system-x86", str(root)) == [10]
    assert procfs.pids_by_name("^(bash|kthreadd)$", str(root)) == [11]   # no kernel threads
    rec = Recorder()
    procs, _, _ = capture_live([2], progress=rec, proc_root=str(root))
    assert procs == [] and "kernel thread" in rec.warnings[0]


def test_smaps_parsing_selects_private_anonymous():
    text = (SMAPS_MG
            + "7f0000010000-7f0000020000 rw-s 00000000 00:01 42 /dev/zero (deleted)\n"
              "VmFlags: rd wr sh\n"
              "7f0000020000-7f0000030000 rw-p 00001000 fe:00 77 /usr/lib/libc.so.6\n"
              "VmFlags: rd wr\n"
              "7f0000030000-7f0000230000 rw-p 00000000 00:00 0 [anon:guest]\n"
              "AnonHugePages:      2048 kB\nVmFlags: rd wr hg mg\n"
              "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0 [stack]\nVmFlags: rd wr gd\n")
    vmas = procfs.parse_smaps(text)
    anon = [v for v in vmas if v.private_anonymous]
    assert [v.path for v in anon] == ["", "[anon:guest]", "[stack]"]
    guest = anon[1]
    assert guest.anon_huge_kb == 2048 and guest.pages == 512
    assert guest.flags & procfs.VMA_MERGEABLE and guest.flags & procfs.VMA_HUGEPAGE
    assert not anon[2].flags & procfs.VMA_MERGEABLE


def test_smaps_parsing_selects_private_file_vmas_with_anon_pages():
    """File VMAs ksmd may scan: private, with anonymous pages, not refused by
    vma_ksm_compatible (VM_SHARED, VM_IO, VM_PFNMAP, VM_DONTEXPAND, VM_MIXEDMAP, VM_HUGETLB)."""
    head = "7f00000{}0000-7f00000{}0000 {} 00000000 fe:00 {} {}\nAnonymous: {} kB\nVmFlags: {}\n"
    rows = [("rw-p", 77, "/usr/lib/libc.so.6", 8, "rd wr mr mw me ac mg"),      # taken
            ("r--p", 77, "/usr/lib/libc.so.6", 4, "rd mr mw me ac mg"),         # RELRO: taken
            ("rw-p", 78, "/usr/lib/libm.so.6", 0, "rd wr mr mw me ac mg"),      # no anon pages
            ("rw-s", 79, "/dev/shm/x", 4, "rd wr sh mr mw me ms"),              # shared
            ("rw-p", 80, "/dev/mem", 4, "rd wr mr mw me io pf"),                # VM_IO|PFNMAP
            ("rw-p", 81, "/dev/dri/card0", 4, "rd wr mr mw me de"),             # DONTEXPAND
            ("rw-p", 82, "/dev/hugepages/h", 4, "rd wr mr mw me ht"),           # hugetlb
            ("r--p", 0, "[vvar]", 0, "rd mr pf io de dd"),                      # special
            ("rw-p", 0, "", 4, "rd wr mr mw me ac mg")]                         # anonymous
    text = "".join(head.format(i, i + 1, perms, ino, path, kb, fl)
                   for i, (perms, ino, path, kb, fl) in enumerate(rows))
    vmas = procfs.parse_smaps(text)
    assert [v.anonymous_kb for v in vmas] == [r[3] for r in rows]
    taken = [i for i, v in enumerate(vmas) if v.file_with_anon]
    assert taken == [0, 1]
    assert [i for i, v in enumerate(vmas) if v.private_anonymous] == [8]
    assert vmas[0].flags & procfs.VMA_FILE and vmas[0].flags & procfs.VMA_MERGEABLE
    assert vmas[1].flags == procfs.VMA_READ | procfs.VMA_MERGEABLE | procfs.VMA_FILE
    assert not vmas[8].flags & procfs.VMA_FILE


# ------------------------------------------------------------------------------ CLI, live


def test_cli_capture_pid_writes_a_snapshot(spawn, runner, tmp_path):
    c = spawn("m")
    out = tmp_path / "snap.npz"
    r = cli(runner, "capture", "--pid", c.pid, "-o", out, "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["processes"][0]["pid"] == c.pid
    snap = load_snapshot(out)
    assert snap.summary() == summary
    _, dense, _, _ = region(snap, c)
    assert dense[0] > 0 and (dense[16:] == HOLE).all()
    with zipfile.ZipFile(out) as z:                  # no page bytes in the file
        assert sum(i.file_size for i in z.infolist()) < 40 * snap.arrays["page_token"].size + 10 ** 6
    r = cli(runner, "capture", "--pid", c.pid, "-o", out)
    assert "already exists" in one_error_line(r)
    r = cli(runner, "snapshot", "show", out)
    assert r.exit_code == 0 and "duplicate pages" in r.stdout


def test_cli_capture_by_name_finds_only_the_marked_child(spawn, runner):
    marker = "samepage-test-" + secrets.token_hex(6)
    c = spawn(marker)
    r = cli(runner, "capture", "--name", marker, "--json")
    assert r.exit_code == 0, r.stderr
    assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [c.pid]
    r = cli(runner, "capture", "--name", marker + "-nobody")
    assert "no process matches" in one_error_line(r)


def test_cli_capture_cgroup(spawn, runner):
    marker = "samepage-test-" + secrets.token_hex(4)
    for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        d = Path(base) / marker
        try:
            d.mkdir()
        except OSError:
            continue
        break
    else:
        pytest.skip("no writable cgroup hierarchy")
    c = spawn("m")
    try:
        try:
            (d / "cgroup.procs").write_text(str(c.pid))
        except OSError:
            pytest.skip("cannot move a process into a new cgroup here")
        r = cli(runner, "capture", "--cgroup", d, "--json")
        assert r.exit_code == 0, r.stderr
        assert [p["pid"] for p in json.loads(r.stdout)["processes"]] == [c.pid]
    finally:
        c.stop()
        for _ in range(100):
            try:
                d.rmdir()
                break
            except OSError:
                time.sleep(0.05)


def test_cli_bad_pid_and_nothing_to_capture(runner):
    r = cli(runner, "capture", "--pid", 2 ** 22 + 12345)
    assert "no such process" in one_error_line(r)
    assert "nothing to capture" in one_error_line(cli(runner, "capture"))
    assert "only with --raw" in one_error_line(cli(runner, "capture", "--offset", 4096))


# ------------------------------------------------------------------------------ core files


@pytest.mark.skipif(shutil.which("gcore") is None, reason="gdb's gcore is not installed")
def test_gcore_gives_the_live_tokens(spawn, runner, tmp_path):
    c = spawn("m")
    live = tmp_path / "live.npz"
    assert cli(runner, "capture", "--pid", c.pid, "-o", live).exit_code == 0
    subprocess.run(["gcore", "-o", str(tmp_path / "core"), str(c.pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
    core = tmp_path / f"core.{c.pid}"
    # gdb 13.1 writes every page of a dumped mapping (p_filesz = p_memsz, not sparse)
    vaddr = {v.start: v for v in load_snapshot(live).vmas}
    from samepage.capture.elfcore import open_core
    f, elf = open_core(str(core))
    with f:
        loads = [s.header for s in elf.iter_segments() if s.header["p_type"] == "PT_LOAD"]
    assert any(h["p_vaddr"] in vaddr for h in loads)
    assert all(h["p_filesz"] == h["p_memsz"] for h in loads if h["p_vaddr"] in vaddr)
    out, outp = tmp_path / "core.npz", tmp_path / "core-present.npz"
    r = cli(runner, "capture", "--core", core, "-o", out)
    assert r.exit_code == 0, r.stderr
    assert "recorded as holes (--core-zeros absent)" in r.stdout
    r = cli(runner, "capture", "--core", core, "--core-zeros", "present", "-o", outp)
    assert r.exit_code == 0, r.stderr
    a, b, bp = load_snapshot(live), load_snapshot(out), load_snapshot(outp)
    assert (a.meta.core_zeros, b.meta.core_zeros, bp.meta.core_zeros) == \
        (None, "absent", "present")
    assert b.processes[0].pid == c.pid and b.processes[0].source.startswith("core:")
    # the zero token is not among distinct_tokens: both give the same non-zero contents
    # (the live capture has the contents of private file VMAs too, which a core leaves out)
    live_anon = np.concatenate([v.tokens for v in a.vmas if not v.file_backed])
    anon_tokens = np.unique(live_anon[live_anon != 0])
    assert anon_tokens.size == b.meta.distinct_tokens == bp.meta.distinct_tokens
    by_start, by_start_p = {v.start: v for v in b.vmas}, {v.start: v for v in bp.vmas}
    compared = 0
    # a core has no file-backed mapping (gcore writes them, but cannot tell their COW'd
    # pages from the file's): the live capture's anon pages of private file VMAs are not in it
    assert not any(v.file_backed for v in b.vmas)
    assert any(v.file_backed and v.start not in by_start for v in a.vmas)
    for v in a.vmas:
        if v.offsets.size == 0 or v.file_backed:
            continue
        w, wp = by_start[v.start], by_start_p[v.start]
        assert w.pages == wp.pages == v.pages
        dl, dc, dp = v.dense_tokens(), w.dense_tokens(), wp.dense_tokens()
        nonzero = dl > 0
        # tokens number the contents of a snapshot in order: the live token's rank among
        # the contents of anonymous VMAs is the core's token
        dl[nonzero] = np.searchsorted(anon_tokens, dl[nonzero]) + 1
        assert np.array_equal(dl[nonzero], dc[nonzero])   # same tokens, page by page
        assert np.array_equal(dl[nonzero], dp[nonzero])
        assert (dc[~nonzero] == HOLE).all()                # absent: every zero is a hole
        assert (dp[~nonzero] == 0).all()                   # present: gcore read holes as zeros
        compared += int(nonzero.sum())
    assert compared == int(sum(np.count_nonzero(v.tokens) for v in a.vmas if not v.file_backed))
    _, dense, _, _ = region(b, c)
    assert (dense[10] == HOLE) and (dense[12:] == HOLE).all()
    _, dense, _, _ = region(bp, c)
    assert (dense[10] == 0) and (dense[12:] == 0).all()
    r = cli(runner, "snapshot", "show", out)
    assert r.exit_code == 0 and "(--core-zeros absent)" in r.stdout
    r = cli(runner, "snapshot", "show", out, "--json")
    assert json.loads(r.stdout)["core_zeros"] == "absent"
    assert json.loads(cli(runner, "snapshot", "show", live, "--json").stdout)["core_zeros"] \
        is None


# A process without libc (x86_64): its anonymous memory is its stack (argv, environment,
# auxv: not zero) and one 96-page mapping: pages 0-11 hold the patterns 1..4 three times,
# 12-15 are read-faulted (the shared zero page), 16-95 are never touched. No present page of
# it is all zero, so a core of it, with zeros as holes, is exactly what a live capture sees.
NOLIBC_CHILD = r"""
typedef unsigned long u64;
static long sys(long n, long a, long b, long c, long d, long e, long f) {
    long r;
    register long r10 __asm__("r10") = d, r8 __asm__("r8") = e, r9 __asm__("r9") = f;
    __asm__ volatile("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8),
                     "r"(r9) : "rcx", "r11", "memory");
    return r;
}
void _start(void) {
    u64 ps = 4096, n = 96;
    volatile unsigned char *m = (void *)sys(9, 0, n * ps, 3, 0x22, -1, 0);  /* mmap */
    for (u64 i = 0; i < 12; i++) {
        u64 t = i % 4 + 1;
        for (u64 w = 0; w < ps / 8; w++)
            for (int b = 0; b < 8; b++) m[i * ps + w * 8 + b] = (unsigned char)(t >> (56 - 8 * b));
    }
    unsigned char s = 0;
    for (u64 i = 12; i < 16; i++) s += m[i * ps];
    char out[17];
    for (int k = 0; k < 16; k++) out[k] = "0123456789abcdef"[((u64)m >> (60 - 4 * k)) & 15];
    out[16] = '\n';
    sys(1, 1, (long)out, 17, 0, 0, 0);                                      /* write */
    for (;;) sys(34, 0, 0, 0, 0, 0, 0);                                      /* pause */
}
"""


def _forecast_counters(runner, snap: Path) -> dict:
    r = cli(runner, "forecast", snap, "--merge-any", "--json", "--until", "4")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    scans = [{k: v for k, v in s.items() if k not in ("t_ms", "ksmd_cpu_ms")}
             for s in d["scans"]]
    return {"scans": scans, "final": d["final"], "converged": d["converged_full_scans"]}


@pytest.mark.skipif(shutil.which("gcore") is None, reason="gdb's gcore is not installed")
@pytest.mark.skipif(shutil.which("cc") is None or os.uname().machine != "x86_64",
                    reason="needs a C compiler for x86_64")
def test_gcore_forecast_equals_the_live_forecast(runner, tmp_path):
    src = tmp_path / "nolibc.c"
    src.write_text(NOLIBC_CHILD)
    exe = tmp_path / "nolibc"
    subprocess.run(["cc", "-O1", "-static", "-nostdlib", "-fno-stack-protector",
                    "-fno-builtin", "-o", str(exe), str(src)], check=True, timeout=120)
    procs = [subprocess.Popen([str(exe)], stdout=subprocess.PIPE) for _ in range(2)]
    try:
        for p in procs:
            assert len(p.stdout.readline()) == 17
        live = tmp_path / "live.npz"
        r = cli(runner, "capture", *[a for p in procs for a in ("--pid", p.pid)], "-o", live)
        assert r.exit_code == 0, r.stderr
        s = load_snapshot(live).summary()["total"]
        assert s["zero_pages"] == s["zero_pfn_pages"] == 8   # no present page is all zero
        for p in procs:                                   # after the live capture: gcore
            subprocess.run(["gcore", "-o", str(tmp_path / "core"), str(p.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        cores = [a for p in procs for a in ("--core", tmp_path / f"core.{p.pid}")]
        absent, present = tmp_path / "absent.npz", tmp_path / "present.npz"
        assert cli(runner, "capture", *cores, "-o", absent).exit_code == 0
        assert cli(runner, "capture", *cores, "--core-zeros", "present",
                   "-o", present).exit_code == 0
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stdout.close()
    want = _forecast_counters(runner, live)
    # patterns 1..4, six pages each (and a stack page the two may have in common)
    assert want["final"]["pages_sharing"] >= 4 * 5
    assert _forecast_counters(runner, absent) == want
    # present: the never-touched pages (and the zero-page mappings) read back as zeros
    # become present zero pages, merged into one KSM page
    got = _forecast_counters(runner, present)
    assert got["final"]["pages_sharing"] >= want["final"]["pages_sharing"] + 2 * 84 - 1
    assert got["final"]["pages_shared"] == want["final"]["pages_shared"] + 1


def _elf_core(path: Path, segments: list[tuple[int, bytes]], etype: int = 4) -> None:
    """A minimal ELF64 core: one PT_LOAD per (guest-physical address, data)."""
    ehsize, phsize = 64, 56
    off = ehsize + phsize * len(segments)
    off = (off + 4095) // 4096 * 4096
    ph, data = b"", b""
    for paddr, blob in segments:
        ph += struct.pack("<IIQQQQQQ", 1, 6, off + len(data), 0, paddr, len(blob), len(blob),
                          4096)
        data += blob
    eh = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7, etype,
                     62, 1, 0, ehsize, 0, 0, ehsize, phsize, len(segments), 64, 0, 0)
    head = eh + ph
    path.write_bytes(head + b"\0" * (off - len(head)) + data)


def test_guest_dump_is_one_process_with_a_vma_per_segment(runner, tmp_path):
    core = tmp_path / "guest.core"
    _elf_core(core, [(0, token_page(4) + token_page(9) + bytes(4096)),
                     (0x100000, token_page(4) + token_page(1))])
    out = tmp_path / "g.npz"
    r = cli(runner, "capture", "--core", core, "-o", out)
    assert r.exit_code == 0, r.stderr
    snap = load_snapshot(out)
    (p,) = snap.processes
    assert p.pid == 0 and p.source.startswith("guest:")
    assert [v.start for v in p.vmas] == [0, 0x100000]
    assert p.vmas[0].dense_tokens().tolist() == [2, 3, HOLE]    # --core-zeros absent
    assert p.vmas[1].dense_tokens().tolist() == [2, 1]
    assert snap.summary()["total"]["duplicate_pages"] == 1
    assert snap.meta.core_zeros == "absent"
    r = cli(runner, "capture", "--core", core, "--core-zeros", "present", "-o", out, "--force")
    assert r.exit_code == 0, r.stderr
    snap = load_snapshot(out)
    assert snap.processes[0].vmas[0].dense_tokens().tolist() == [2, 3, 0]
    assert snap.meta.core_zeros == "present"
    assert snap.summary()["total"]["zero_pages"] == 1


def test_core_zeros_api_and_bad_values(runner, tmp_path):
    from samepage.capture.elfcore import capture_core

    core = tmp_path / "guest.core"
    _elf_core(core, [(0, bytes(4096) + token_page(3) + bytes(4096))])
    p, n = capture_core(str(core))
    assert n == 3 * 4096 and p.vmas[0].offsets.tolist() == [1]
    p, _ = capture_core(str(core), core_zeros="present")
    assert p.vmas[0].offsets.tolist() == [0, 1, 2]
    with pytest.raises(ValueError):
        capture_core(str(core), core_zeros="maybe")
    line = one_error_line(cli(runner, "capture", "--core", core, "--core-zeros", "maybe"))
    assert "--core-zeros maybe: unknown value (one of absent, present)" in line
    raw = tmp_path / "ram.bin"
    raw.write_bytes(token_page(1))
    line = one_error_line(cli(runner, "capture", "--raw", raw, "--core-zeros", "absent"))
    assert "--core-zeros: only with --core FILE" in line


def test_core_files_of_another_format_are_one_line(runner, tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("not a core\n")
    assert "no ELF header" in one_error_line(cli(runner, "capture", "--core", txt))
    assert "not a core dump" in one_error_line(cli(runner, "capture", "--core",
                                                   os.path.realpath(sys.executable)))
    trunc = tmp_path / "trunc.core"
    _elf_core(trunc, [(0, token_page(1) * 4)])
    trunc.write_bytes(trunc.read_bytes()[:-4096])
    assert "beyond the end of the file" in one_error_line(cli(runner, "capture", "--core",
                                                              trunc))
    assert "file not found" in one_error_line(cli(runner, "capture", "--core",
                                                  tmp_path / "nope"))


# ------------------------------------------------------------------------------ raw files


def test_raw_file_with_offset_and_length(runner, tmp_path):
    f = tmp_path / "ram.bin"
    f.write_bytes(token_page(5) + token_page(2) + bytes(4096) + token_page(5) + token_page(9))
    p, n = capture_raw(str(f))
    snap = build_snapshot([p], sources=["raw"])
    assert n == 5 * 4096 and snap.vmas[0].dense_tokens().tolist() == [2, 1, 0, 2, 3]
    out = tmp_path / "r.npz"
    r = cli(runner, "capture", "--raw", f, "--offset", 4096, "--length", 3 * 4096, "-o", out)
    assert r.exit_code == 0, r.stderr
    v = load_snapshot(out).vmas[0]
    assert v.start == 4096 and v.dense_tokens().tolist() == [1, 0, 2]
    assert "page size" in one_error_line(cli(runner, "capture", "--raw", f, "--offset", 100))
    assert "beyond the end" in one_error_line(cli(runner, "capture", "--raw", f,
                                                  "--length", 6 * 4096))


# ------------------------------------------------------------------------------ the snapshot file


def _snap_file(tmp_path: Path) -> Path:
    pages = [token_page(t) for t in (3, 1, 0, 3)]
    d = digest_pages(b"".join(pages))
    v1 = CapturedVma("", 0x10000, 8, procfs.VMA_READ | procfs.VMA_WRITE, 0,
                     np.array([0, 2, 5, 7], np.uint64), d, np.zeros(4, np.uint8),
                     np.array([3], np.uint64), np.zeros(4, np.uint16))
    v2 = CapturedVma("[heap]", 0x40000, 2, procfs.VMA_MERGEABLE, 0,
                     np.array([1], np.uint64), digest_pages(token_page(1)),
                     np.zeros(1, np.uint8))
    p1 = CapturedProcess(100, "a", "pid:100", True, True, [v1])
    p2 = CapturedProcess(200, "b", "pid:200", False, False, [v2])
    snap = build_snapshot([p1, p2], sources=["pid:100", "pid:200"])
    path = tmp_path / "s.npz"
    save_snapshot(snap, path)
    return path


def test_snapshot_round_trip(tmp_path):
    s = load_snapshot(_snap_file(tmp_path))
    assert [p.pid for p in s.processes] == [100, 200]
    a, b = s.processes[0].vmas[0], s.processes[1].vmas[0]
    assert a.dense_tokens().tolist() == [2, -1, 1, -2, -1, 0, -1, 2]
    assert b.dense_tokens().tolist() == [-1, 1] and b.mergeable and b.name == "[heap]"
    t = s.summary()["total"]
    assert (t["present_pages"], t["zero_pages"], t["distinct_tokens"], t["swapped_pages"]) == \
        (5, 1, 2, 1)
    assert t["duplicate_pages"] == 2          # token 2 twice and token 1 twice, zero once
    assert s.processes[0].merge_any is True


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    with open(dst, "wb") as f:
        np.savez(f, **arrays)
    return dst


def _meta(src: Path, **updates) -> np.ndarray:
    with np.load(src) as z:
        m = json.loads(z["metadata"].tobytes())
    m.update(updates)
    return np.frombuffer(json.dumps(m).encode(), np.uint8)


@pytest.mark.parametrize("case,key", [
    ("page_offset_beyond", "page_offset"),
    ("token_float", "page_token"),
    ("tokens_not_dense", "page_token"),
    ("vma_process_range", "vma_process"),
    ("short_flags", "page_flags"),
    ("missing", "swap_vma"),
    ("extra", "extra"),
    ("bad_json", "metadata"),
    ("version", "metadata.version"),
    ("unknown_meta_key", "metadata.surprise"),
    ("pickled", "page_changes"),
    ("changes_above_samples", "page_changes"),
])
def test_corrupt_snapshots_name_the_key(tmp_path, case, key):
    src = _snap_file(tmp_path)
    dst = tmp_path / "bad.npz"
    with np.load(src) as z:
        a = {k: z[k] for k in z.files}
    ch = {
        "page_offset_beyond": {"page_offset": a["page_offset"] + np.uint64(100)},
        "token_float": {"page_token": a["page_token"].astype(np.float64)},
        "tokens_not_dense": {"page_token": a["page_token"] * np.uint64(2)},
        "vma_process_range": {"vma_process": a["vma_process"] + np.uint32(5)},
        "short_flags": {"page_flags": a["page_flags"][:-1]},
        "missing": {"swap_vma": None},
        "extra": {"extra": np.zeros(3)},
        "bad_json": {"metadata": np.frombuffer(b"{not json", np.uint8)},
        "version": {"metadata": _meta(src, version=2)},
        "unknown_meta_key": {"metadata": _meta(src, surprise=1)},
        "pickled": {"page_changes": np.array([object()] * 5, dtype=object)},
        "changes_above_samples": {"page_changes": a["page_changes"] + np.uint16(1)},
    }[case]
    _rewrite(src, dst, **ch)
    with pytest.raises(ScenarioError) as e:
        load_snapshot(dst)
    assert e.value.file == str(dst) and e.value.key == key, str(e.value)


def test_snapshot_without_core_zeros_still_loads(tmp_path):
    """Snapshots written before metadata.core_zeros existed load (as None); a bad value
    names the key."""
    src = _snap_file(tmp_path)
    with np.load(src) as z:
        m = json.loads(z["metadata"].tobytes())
    del m["core_zeros"]
    old = _rewrite(src, tmp_path / "old.npz",
                   metadata=np.frombuffer(json.dumps(m).encode(), np.uint8))
    assert load_snapshot(old).meta.core_zeros is None
    bad = _rewrite(src, tmp_path / "bad.npz", metadata=_meta(src, core_zeros="sometimes"))
    with pytest.raises(ScenarioError) as e:
        load_snapshot(bad)
    assert e.value.key == "metadata.core_zeros", str(e.value)


def test_corrupt_snapshot_on_the_cli_is_one_line(runner, tmp_path):
    good = _snap_file(tmp_path)
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(5000))
    assert "not an .npz archive" in one_error_line(cli(runner, "snapshot", "show", junk))
    half = tmp_path / "half.npz"
    half.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    line = one_error_line(cli(runner, "snapshot", "show", half))
    assert line.startswith(f"samepage: error: {half}: ")
    assert "file not found" in one_error_line(cli(runner, "snapshot", "show",
                                                  tmp_path / "none.npz"))


# ------------------------------------------------------------------------------ launch


def _launch(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*SAMEPAGE, "launch", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.skipif(not os.path.exists("/proc/self/ksm_stat"), reason="no ksm_stat")
def test_launch_sets_merge_any_before_exec(tmp_path):
    out = tmp_path / "ksm_stat"
    r = _launch("--", "sh", "-c", f"cat /proc/self/ksm_stat > {out}; exit 3")
    assert r.returncode == 3, r.stderr
    assert "ksm_merge_any: yes" in out.read_text()
    assert "launched pid" in r.stderr
    r = _launch("--no-merge-any", "--", "sh", "-c", f"cat /proc/self/ksm_stat > {out}")
    assert r.returncode == 0 and "ksm_merge_any: no" in out.read_text()


def test_launch_detach_prints_the_pid(tmp_path):
    flag = tmp_path / "ran"
    r = _launch("--detach", "--", "sh", "-c", f"grep ksm_merge_any /proc/self/ksm_stat "
                                             f"> {flag} 2>/dev/null; echo done >> {flag}")
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip())
    assert pid > 0
    for _ in range(200):
        if flag.exists() and "done" in flag.read_text():
            break
        time.sleep(0.05)
    assert "done" in flag.read_text()


def test_launch_of_a_missing_command_is_one_line():
    r = _launch("--", "/nonexistent/samepage-no-such-program")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("samepage: error: ") and "not found" in r.stderr


def test_permission_denied_is_one_warning(spawn, monkeypatch):
    """A process whose memory may not be read (ptrace access mode) is left out with one
    warning line; the capture goes on. (Root passes the check, so the refusal is simulated
    where the kernel reports it: opening /proc/PID/mem.)"""
    a, b = spawn("a"), spawn("b")
    real_open = os.open

    def refuse(path, *args, **kw):
        if str(path) == f"/proc/{a.pid}/mem":
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(os, "open", refuse)
    rec = Recorder()
    procs, _, _ = capture_live([a.pid, b.pid], progress=rec)
    assert [p.pid for p in procs] == [b.pid]
    assert len(rec.warnings) == 1
    assert f"pid {a.pid}" in rec.warnings[0] and "permission denied" in rec.warnings[0]


def test_launch_detach_returns_through_a_pipe(tmp_path):
    """pid=$(samepage launch --detach -- CMD): the detached program does not hold the
    caller's pipe open, so the command substitution returns at once."""
    exe = str(Path(sys.executable).with_name("samepage"))
    r = subprocess.run([exe, "launch", "--detach", "--", sys.executable, "-c",
                        "import time; print('hello'); time.sleep(60)"],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 0, r.stderr
    pid = int(r.stdout.strip())
    try:
        assert Path(f"/proc/{pid}").exists()
    finally:
        os.kill(pid, signal.SIGKILL)
