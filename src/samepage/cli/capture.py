"""``samepage capture`` (a snapshot of live processes, core files or a raw memory file),
``samepage snapshot show`` and ``samepage launch`` (start a program with merge_any set).

Registered into the root app by ``register(app)`` at the end of samepage.cli.main.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .common import EXIT_ERROR, error_exit, markup_safe, printable, reported_errors, \
    stderr_console, stdout_console

MiB = 1024 * 1024


class CaptureProgress:
    """A bytes progress bar on stderr (a terminal only) and the warning lines."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.progress = None
        self.task = None

    def __enter__(self) -> "CaptureProgress":
        if self.enabled:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TransferSpeedColumn)

            self.progress = Progress(TextColumn("capturing"), BarColumn(), DownloadColumn(),
                                     TransferSpeedColumn(), TimeElapsedColumn(),
                                     console=stderr_console(), transient=True)
            self.progress.start()
            self.task = self.progress.add_task("capture", total=0)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self.progress.stop()

    def total(self, nbytes: int) -> None:
        if self.progress is not None:
            t = self.progress.tasks[0]
            self.progress.update(self.task, total=(t.total or 0) + nbytes)

    def advance(self, nbytes: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, nbytes)

    def warn(self, line: str) -> None:
        msg = f"samepage: warning: {printable(line)}"
        if self.progress is not None:
            self.progress.console.print(msg, markup=False, highlight=False)
        else:
            print(msg, file=sys.stderr, flush=True)


def _select_pids(pids: list[int], names: list[str], cgroups: list[str],
                 all_mergeable: bool) -> list[int]:
    from samepage.capture import procfs

    me = {os.getpid(), os.getppid()}
    out: list[int] = []
    for pid in pids:
        if pid <= 0 or not os.path.isdir(f"/proc/{pid}"):
            error_exit(f"--pid {pid}: no such process")
        out.append(pid)
    for pat in names:
        try:
            re.compile(pat)
        except re.error as e:
            error_exit(f"--name {pat}: not a regular expression: {e}")
        found = procfs.pids_by_name(pat, exclude=me)
        if not found:
            error_exit(f"--name {pat}: no process matches")
        out.extend(found)
    for cg in cgroups:
        try:
            found = procfs.pids_in_cgroup(cg)
        except FileNotFoundError:
            error_exit(f"--cgroup {cg}: not a cgroup directory (no cgroup.procs)")
        except (OSError, ValueError) as e:
            error_exit(f"--cgroup {cg}: cannot read cgroup.procs: {getattr(e, 'strerror', e) or e}")
        out.extend(p for p in found if p not in me)
    if all_mergeable:
        out.extend(procfs.mergeable_pids(exclude=me))
    seen: set[int] = set()
    return [p for p in out if not (p in seen or seen.add(p))]


def _summary_table(summary: dict[str, Any]) -> Table:
    t = Table(title=None)
    # "file anon": of the present pages, the anonymous ones of private file mappings
    for col in ("pid", "comm", "source", "VMAs", "present", "file anon", "zero", "distinct",
                "duplicate", "changed", "MiB"):
        t.add_column(col, justify="left" if col in ("comm", "source") else "right")
    for p in summary["processes"]:
        t.add_row(str(p["pid"]), markup_safe(p["comm"]), markup_safe(p["source"]),
                  str(p["vmas"]), str(p["present_pages"]), str(p.get("file_anon_pages", 0)),
                  str(p["zero_pages"]),
                  str(p["distinct_tokens"]), str(p["duplicate_pages"]),
                  str(p["changed_pages"]), f"{p['present_pages'] * 4096 / MiB:.1f}")
    s = summary["total"]
    t.add_row("all", "", "", str(s["vmas"]), str(s["present_pages"]),
              str(s.get("file_anon_pages", 0)), str(s["zero_pages"]),
              str(s["distinct_tokens"]), str(s["duplicate_pages"]), str(s["changed_pages"]),
              f"{s['present_pages'] * 4096 / MiB:.1f}", style="bold")
    return t


def _print_summary(summary: dict[str, Any], as_json: bool, saved: str | None) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=False))
        return
    con = stdout_console()
    con.print(_summary_table(summary))
    s = summary["total"]
    secs = summary["capture_seconds"]
    mb = summary["captured_bytes"] / 1e6
    rate = f", {mb / secs:.0f} MB/s" if secs > 0 and mb > 0 else ""
    print(f"{s['present_pages']} present pages ({s['zero_pages']} zero, "
          f"{s['zero_pfn_pages']} of them mapping the zero page), {s['distinct_tokens']} "
          f"distinct contents, {s['duplicate_pages']} duplicate pages (at most "
          f"{s['duplicate_pages'] * 4096 / MiB:.1f} MiB for KSM to free; "
          f"{s['duplicate_mergeable_pages']} in mergeable VMAs).")
    if s.get("file_vmas"):
        print(f"Of them {s['file_anon_pages']} anon pages in private file mappings "
              f"({s['file_vmas']} VMAs: copied-on-write pages, which ksmd scans; the "
              "mappings' page-cache pages are holes).")
    if summary.get("core_zeros") == "absent":
        print("All-zero pages of core files recorded as holes (--core-zeros absent).")
    elif summary.get("core_zeros") == "present":
        print("All-zero pages of core files recorded as present zero pages "
              "(--core-zeros present).")
    if summary["samples"] > 1:
        print(f"{summary['samples']} samples {summary['interval_s']:g} s apart: "
              f"{s['changed_pages']} pages changed at least once.")
    # MiB as in the table above; MB (10**6) for the rate, as disk and memory speeds are given
    print(f"Captured {summary['captured_bytes'] / 2**20:.1f} MiB ({mb:.1f} MB) in {secs:.2f} s"
          f"{rate}.")
    if saved:
        print(printable(f"Snapshot written to {saved}."))


def capture(
    pid: Annotated[Optional[list[int]], typer.Option(
        "--pid", metavar="PID", help="A process to capture (repeatable).")] = None,
    name: Annotated[Optional[list[str]], typer.Option(
        "--name", metavar="PATTERN",
        help="Processes whose comm or command line matches this regular expression.")] = None,
    cgroup: Annotated[Optional[list[str]], typer.Option(
        "--cgroup", metavar="PATH", help="The processes of a cgroup directory.")] = None,
    all_mergeable: Annotated[bool, typer.Option(
        "--all-mergeable", help="Every process with mergeable memory (ksm_stat).")] = False,
    core: Annotated[Optional[list[str]], typer.Option(
        "--core", metavar="FILE",
        help="An ELF core file: gdb's gcore or QEMU's dump-guest-memory (repeatable).")] = None,
    core_zeros: Annotated[Optional[str], typer.Option(
        "--core-zeros", metavar="absent|present",
        help="--core: record all-zero pages as holes, like never-touched pages of a live "
             "capture (absent, the default), or as present zero pages (present). A core "
             "cannot tell the two apart.")] = None,
    raw: Annotated[Optional[str], typer.Option(
        "--raw", metavar="FILE", help="A raw memory file.")] = None,
    offset: Annotated[int, typer.Option(
        "--offset", min=0, metavar="N", help="--raw: where the memory starts (bytes).")] = 0,
    length: Annotated[Optional[int], typer.Option(
        "--length", min=1, metavar="M", help="--raw: how many bytes (default: to the end).")
    ] = None,
    samples: Annotated[int, typer.Option(
        "--samples", min=1, max=65535, metavar="K",
        help="Capture live processes K times and count the pages that changed.")] = 1,
    interval: Annotated[float, typer.Option(
        "--interval", min=0, max=86400, metavar="S", help="Seconds between samples.")] = 1.0,
    output: Annotated[Optional[str], typer.Option(
        "--output", "-o", metavar="FILE", help="Write the snapshot (.npz) here.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing FILE.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Capture anonymous memory as a snapshot of page tokens (never the bytes).

    Reads only present pages of private anonymous VMAs (never faulting one in), gives every
    distinct content a token (0 = zero page) and prints per process the present, zero,
    distinct and duplicate pages. See docs/snapshot-format.md."""
    from samepage.capture import build_snapshot, save_snapshot
    from samepage.capture.elfcore import CORE_ZEROS, capture_core
    from samepage.capture.live import capture_live
    from samepage.capture.raw import capture_raw

    if raw is None and (offset or length is not None):
        error_exit("--offset/--length: only with --raw FILE")
    if core_zeros is not None and not core:
        error_exit("--core-zeros: only with --core FILE")
    if core_zeros is not None and core_zeros not in CORE_ZEROS:
        error_exit(f"--core-zeros {core_zeros}: unknown value (one of {', '.join(CORE_ZEROS)})")
    core_zeros = core_zeros or "absent"
    if output is not None:
        if os.path.isdir(output):
            error_exit(f"{output}: is a directory")
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            error_exit(f"{output}: no such directory: {parent}")
        if os.path.lexists(output) and not force:
            error_exit(f"{output}: already exists (--force to replace it)")
    pids = _select_pids(pid or [], name or [], cgroup or [], all_mergeable)
    if not pids and not core and raw is None:
        if name or cgroup or all_mergeable:
            error_exit("no process selected: nothing to capture")
        error_exit("nothing to capture: give --pid, --name, --cgroup, --all-mergeable, "
                   "--core or --raw")
    sources = [f"pid:{p}" for p in pids] + [f"core:{c}" for c in core or []] + \
        ([f"raw:{raw}"] if raw is not None else [])
    t0 = time.monotonic()
    procs = []
    nbytes = 0
    zero_known = False
    with reported_errors(), CaptureProgress(enabled=not as_json) as prog:
        for c in core or []:
            p, n = capture_core(c, core_zeros=core_zeros, on_total=prog.total,
                                on_bytes=prog.advance)
            procs.append(p)
            nbytes += n
        if raw is not None:
            p, n = capture_raw(raw, offset, length, on_total=prog.total, on_bytes=prog.advance)
            procs.append(p)
            nbytes += n
        if pids:
            live, n, zero_known = capture_live(pids, samples=samples, interval=interval,
                                               progress=prog)
            procs.extend(live)
            nbytes += n
            if not live and not core and raw is None:
                error_exit("no process could be captured")
    # the time spent capturing: the sleeps between samples are not part of it
    secs = max(0.0, time.monotonic() - t0 - (interval * (samples - 1) if pids else 0.0))
    snap = build_snapshot(procs, sources=sources, samples=samples if pids else 1,
                          interval_s=interval if pids and samples > 1 else 0.0,
                          zero_pfn_known=zero_known,
                          core_zeros=core_zeros if core else None, captured_bytes=nbytes,
                          capture_seconds=secs)
    if output is not None:
        with reported_errors():
            tmp = f"{output}.tmp{os.getpid()}"
            try:
                save_snapshot(snap, tmp)
                os.replace(tmp, output)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
    _print_summary(snap.summary(), as_json, output)


snapshot_app = typer.Typer(help="Look at snapshot files written by samepage capture.",
                           no_args_is_help=True, rich_markup_mode=None)


@snapshot_app.command("show")
def snapshot_show(
    file: Annotated[str, typer.Argument(metavar="FILE", help="A snapshot (.npz).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Print the summary of a snapshot: per process VMAs, present, zero, distinct and
    duplicate pages."""
    from samepage.capture import load_snapshot

    with reported_errors():
        snap = load_snapshot(file)
    m = snap.meta
    if not as_json:
        print(printable(f"{file}: {m.host}, Linux {m.kernel_release}, {m.created}; "
                        f"sources: {', '.join(m.sources) or '-'}"))
    _print_summary(snap.summary(), as_json, None)


def launch(
    command: Annotated[list[str], typer.Argument(metavar="-- CMD ...",
                                                 help="The program and its arguments.")],
    merge_any: Annotated[bool, typer.Option(
        "--merge-any/--no-merge-any",
        help="Set PR_SET_MEMORY_MERGE before exec (the default).")] = True,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Print the pid and return without waiting (the program runs in "
                         "its own session, its input and output on /dev/null).")] = False,
) -> None:
    """Start CMD with prctl(PR_SET_MEMORY_MERGE) set before exec, as systemd's MemoryKSM=yes
    does: KSM then considers all of its anonymous memory (ksmd merges only with run=1).

    Prints the pid on stderr (on stdout with --detach), waits for the program, forwards
    SIGINT/SIGTERM/SIGHUP to it and exits with its status."""
    from samepage.capture.launch import LaunchError, run, start

    try:
        if detach:
            proc = start(command, merge_any, detach=True)
            print(proc.pid, flush=True)
            proc.returncode = 0          # not ours to wait for: no ResourceWarning
            return
        code = run(command, merge_any, on_start=lambda p: print(
            f"samepage: launched pid {p}{' with merge_any' if merge_any else ''}",
            file=sys.stderr, flush=True))
    except LaunchError as e:
        error_exit(str(e))
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("capture")(capture)
    app.add_typer(snapshot_app, name="snapshot")
    app.command("launch", context_settings={"allow_interspersed_args": False,
                                            "ignore_unknown_options": True})(launch)
