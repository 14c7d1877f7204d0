"""``samepage kernel exporter``: the live kernel's KSM as Prometheus metrics
(samepage.kernel.exporter), on an HTTP endpoint (``--port``) and/or as a file for
node_exporter's textfile collector (``--textfile DIR``). Only reads; no root needed.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import error_exit, printable

DEFAULT_PORT = 9560


def exporter(
    port: Annotated[Optional[int], typer.Option("--port", metavar="PORT", min=0, max=65535, help=f"Serve http://ADDRESS:PORT/metrics (0: a free port, printed on stderr). Default {DEFAULT_PORT} unless --textfile is given alone.")] = None,
    address: Annotated[str, typer.Option("--address", metavar="ADDR", help="The address to listen on.")] = "0.0.0.0",
    textfile: Annotated[Optional[Path], typer.Option("--textfile", metavar="DIR", file_okay=False, help="Write DIR/samepage_ksm.prom (atomically) every --interval, for node_exporter --collector.textfile.directory=DIR.")] = None,
    interval: Annotated[float, typer.Option("--interval", metavar="SECONDS", min=0.2, max=86400.0, help="How often the textfile is rewritten.")] = 15.0,
    once: Annotated[bool, typer.Option("--once", help="With --textfile: write it once and exit.")] = False,
    pid: Annotated[Optional[list[int]], typer.Option("--pid", metavar="PID", min=1, help="Export only these processes' ksm_stat (repeatable; default: every process using KSM whose ksm_stat is readable).")] = None,
    no_node_names: Annotated[bool, typer.Option("--no-node-names", help="Leave out the node_ksmd_* series (when node_exporter's own ksmd collector is on).")] = False,
    procfs: Annotated[str, typer.Option("--path.procfs", metavar="PATH", help="procfs mount point (as node_exporter's).")] = "/proc",
    sysfs: Annotated[str, typer.Option("--path.sysfs", metavar="PATH", help="sysfs mount point (as node_exporter's).")] = "/sys",
) -> None:
    """Export KSM's counters, settings, ksmd's CPU and per-process ksm_stat to Prometheus:
    node_exporter's node_ksmd_* names plus samepage_* for what it lacks. Only reads."""
    from samepage.kernel.exporter import KsmReader, make_registry, serve, write_textfile

    if once and textfile is None:
        error_exit("--once needs --textfile DIR")
    if once and port is not None:
        error_exit("--once writes the textfile and exits: no --port")
    if textfile is not None:
        if not textfile.is_dir():
            error_exit(f"{textfile}: --textfile: not a directory")
        if not os.access(textfile, os.W_OK):
            error_exit(f"{textfile}: --textfile: directory is not writable")
    if not os.path.isdir(os.path.join(sysfs, "kernel/mm/ksm")):
        error_exit(f"{os.path.join(sysfs, 'kernel/mm/ksm')}: no such directory "
                   "(a kernel without KSM?)")
    reg = make_registry(KsmReader(sysfs, procfs, pid), node_names=not no_node_names)
    if once:
        assert textfile is not None
        try:
            path = write_textfile(str(textfile), reg)
        except OSError as e:
            error_exit(f"{textfile}: cannot write: {e.strerror or e}")
        print(printable(f"samepage: wrote {path}"), file=sys.stderr)
        return
    if port is None and textfile is None:
        port = DEFAULT_PORT
    if port is not None:
        try:
            server, _thread = serve(reg, port, address)
        except OSError as e:
            error_exit(f"--port {port}: cannot listen on {address}: {e.strerror or e}")
        host = address if ":" not in address else f"[{address}]"
        print(f"samepage: serving http://{host}:{server.server_port}/metrics", file=sys.stderr,
              flush=True)
    while True:
        if textfile is not None:
            try:
                write_textfile(str(textfile), reg)
            except OSError as e:
                error_exit(f"{textfile}: cannot write: {e.strerror or e}")
        time.sleep(interval)


def register(kernel_app: typer.Typer) -> None:
    kernel_app.command("exporter")(exporter)
