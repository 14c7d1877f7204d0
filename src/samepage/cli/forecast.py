"""``samepage forecast SNAPSHOT`` (KSM on a captured host, on the model, in simulated time)
and ``samepage kernel measure`` (the live kernel's answer, in the same shape).

Both print the counters at every full scan, the convergence (99% of the final pages_sharing,
in full scans and time), what is saved (in all and per process) and ksmd's CPU; ``--json``
prints one object (samepage.forecast.run.Result.as_json) that a script can compare key by key.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from .common import CliError, check_plot, error_exit, markup_safe, printable, reported_errors, \
    stdout_console

MIB = 1024 * 1024


SLOW_FORECAST_S = 20.0      # wall seconds after which a CPython forecast suggests --engine pypy
AUTO_PYPY_PAGES = 131_072   # --engine auto: PyPy from 512 MiB of captured pages (a JIT's
                            # warm-up, about a second, costs more than it saves below)


def _parse_sets(sets: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in sets or []:
        name, eq, value = s.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or not name or not value:
            error_exit(f"--set {s!r}: expected TUNABLE=VALUE (e.g. pages_to_scan=1000)")
        out[name] = value
    return out


def _check_tunables(tun: dict[str, str]) -> dict[str, Any]:
    from samepage.scenario.tunables import TunableError, check_tunable

    out: dict[str, Any] = {}
    for k, v in tun.items():
        if k == "run":
            error_exit("--set run: the run sets run itself")
        val: Any = int(v) if v.lstrip("-").isdigit() else v
        try:
            out[k] = check_tunable(k, val, in_ksm_table=True)
        except TunableError as e:
            error_exit(f"--set {k}={v}: {e.msg}")
    return out


def _load_costs(costs: Path | None):
    if costs is None:
        return None
    from samepage.ksm.costs import CostProfileError, load_profile
    try:
        return load_profile(costs)
    except CostProfileError as e:
        error_exit(str(e))


def _until(text: str):
    from samepage.forecast import ForecastError, parse_until
    try:
        return parse_until(text)
    except ForecastError as e:
        error_exit(str(e))


def _duration_ms(text: str, opt: str) -> float:
    from samepage.forecast import ForecastError, parse_until
    try:
        u = parse_until(text)
    except ForecastError:
        u = None
    if u is None or u.kind != "ms":
        error_exit(f"{opt} {text!r}: expected a time such as 90s, 10m, 1h")
    return u.value


# ------------------------------------------------------------------------------ output


def scans_table(doc: dict[str, Any], title: str) -> Table:
    t = Table(title=title, title_justify="left")
    for h in ("scans", "t (s)", "shared", "sharing", "unshared", "volatile", "zero", "profit MiB",
              "ksmd CPU ms"):
        t.add_column(h, justify="right")
    for s in doc["scans"]:
        t.add_row(str(s["full_scans"]), f"{s['t_ms'] / 1000:.2f}", str(s["pages_shared"]),
                  str(s["pages_sharing"]), str(s["pages_unshared"]), str(s["pages_volatile"]),
                  str(s["ksm_zero_pages"]), f"{s['general_profit'] / MIB:.2f}",
                  f"{s['ksmd_cpu_ms']:.1f}")
    return t


def summary_lines(doc: dict[str, Any]) -> list[str]:
    f = doc["final"]
    saved = doc["saved_bytes"]
    lines = []
    merged = f["pages_shared"] + f["pages_sharing"]
    ratio = merged / f["pages_shared"] if f["pages_shared"] else 0.0
    mp = doc.get("mergeable_pages")
    lines.append(f"saved {saved / MIB:.2f} MiB: {f['pages_sharing']} pages share "
                 f"{f['pages_shared']} KSM pages ({ratio:.2f}x on the merged pages)"
                 + (f", {f['ksm_zero_pages']} KSM zero pages" if f["ksm_zero_pages"] else "")
                 + f"; general_profit {f['general_profit'] / MIB:.2f} MiB")
    if mp:
        used = mp - f["pages_sharing"] - f["ksm_zero_pages"]
        lines.append(f"dedup ratio {mp / used if used > 0 else 0:.2f}x: the {mp} mergeable "
                     f"pages use {used} physical pages")
    if doc["scans"]:
        conv = (f"converged after {doc['converged_full_scans']} full scans, "
                f"{doc['converged_ms'] / 1000:.2f} s (pages_sharing stays at >= 99% of its "
                f"final {f['pages_sharing']} from then on)")
        if not doc.get("converged", True) and doc.get("until") == "converged":
            conv += "; NOT settled by the end of the run"
        lines.append(conv)
    lines.append(f"ksmd CPU {doc['ksmd_cpu_ms']:.1f} ms over {doc['t_ms'] / 1000:.2f} s: "
                 f"{doc['ksmd_cpu_percent']:.2f}% of one CPU; {len(doc['scans'])} full scans")
    return lines


def process_table(doc: dict[str, Any]) -> Table:
    t = Table(title="per process (/proc/PID/ksm_stat)", title_justify="left")
    for h in ("pid", "comm", "merging pages", "merged MiB", "rmap_items", "zero_pages",
              "profit MiB", "merge_any"):
        t.add_column(h, justify="right" if h not in ("comm",) else "left")
    for p in doc["per_process"]:
        mp = p.get("ksm_merging_pages", 0)
        t.add_row(str(p["pid"]), markup_safe(p.get("comm", "")), str(mp),
                  f"{mp * 4096 / MIB:.2f}", str(p.get("ksm_rmap_items", "")),
                  str(p.get("ksm_zero_pages", "")),
                  f"{p.get('ksm_process_profit', 0) / MIB:.2f}",
                  "yes" if p.get("ksm_merge_any") else "no")
    return t


def _figure(docs: list[tuple[str, dict[str, Any]]], title: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    styles = {"model": "-", "kernel": "--"}
    for label, doc in docs:
        sc = doc["scans"]
        t = [0.0] + [s["t_ms"] / 1000 for s in sc]
        ls = styles.get(doc.get("source", "model"), "-")
        cv = doc.get("curve")            # counters after every batch (thinned), if recorded
        for name, color in (("pages_sharing", "tab:green"), ("pages_shared", "tab:blue"),
                            ("pages_unshared", "tab:orange"), ("pages_volatile", "tab:red")):
            if cv and cv.get("t_ms"):
                ax.plot([0.0] + [x / 1000 for x in cv["t_ms"]], [0] + cv[name], ls,
                        color=color, label=f"{name} ({label})")
                ax.plot(t[1:], [s[name] for s in sc], "o", color=color, markersize=3)
            else:
                ax.plot(t, [0] + [s[name] for s in sc], ls, color=color, marker=".",
                        label=f"{name} ({label})")
        if cv and cv.get("t_ms"):
            ax2.plot([0.0] + [x / 1000 for x in cv["t_ms"]], [0.0] + cv["ksmd_cpu_ms"], ls,
                     color="tab:gray", label=f"ksmd CPU ms ({label})")
        else:
            ax2.plot(t, [0.0] + [s["ksmd_cpu_ms"] for s in sc], ls, color="tab:gray",
                     marker=".", label=f"ksmd CPU ms ({label})")
    ax.set_ylabel("pages")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    ax2.set_xlabel("time since run = 1 (s); a dot at the end of each full scan")
    ax2.set_ylabel("ksmd CPU (ms)")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_plot(path: Path, docs: list[tuple[str, dict[str, Any]]], title: str) -> None:
    import matplotlib.pyplot as plt
    fig = _figure(docs, title)
    try:
        fig.savefig(path, dpi=100)
    except (OSError, ValueError) as e:
        raise CliError(f"{path}: cannot write the plot: {getattr(e, 'strerror', None) or e}") from None
    finally:
        plt.close(fig)


def html_page(doc: dict[str, Any], title: str) -> str:
    """One self-contained page: the curve (inline SVG), per-process savings, the settings."""
    import matplotlib.pyplot as plt
    fig = _figure([("model", doc)], title)
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    e = html.escape
    rows = "".join(
        f"<tr><td>{p['pid']}</td><td>{e(str(p.get('comm', '')))}</td>"
        f"<td>{p.get('ksm_merging_pages', 0)}</td>"
        f"<td>{p.get('ksm_merging_pages', 0) * 4096 / MIB:.2f}</td>"
        f"<td>{p.get('ksm_process_profit', 0) / MIB:.2f}</td></tr>" for p in doc["per_process"])
    settings = "".join(f"<tr><td>{e(str(k))}</td><td>{e(str(v))}</td></tr>"
                       for k, v in doc["settings"].items())
    summary = "".join(f"<li>{e(line)}</li>" for line in summary_lines(doc))
    scans = "".join(
        f"<tr><td>{s['full_scans']}</td><td>{s['t_ms'] / 1000:.2f}</td><td>{s['pages_shared']}</td>"
        f"<td>{s['pages_sharing']}</td><td>{s['pages_unshared']}</td><td>{s['pages_volatile']}</td>"
        f"<td>{s['ksmd_cpu_ms']:.1f}</td></tr>" for s in doc["scans"])
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1000px}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;
text-align:right}}th{{background:#eee}}svg{{max-width:100%;height:auto}}</style></head>
<body><h1>{e(title)}</h1><ul>{summary}</ul>
<h2>Counters over simulated time (a dot at the end of each full scan)</h2>{svg}
<h2>Per process</h2><table><tr><th>pid</th><th>comm</th><th>merging pages</th>
<th>merged MiB</th><th>profit MiB</th></tr>{rows}</table>
<h2>Settings</h2><table><tr><th>tunable</th><th>value</th></tr>{settings}</table>
<h2>Full scans</h2><table><tr><th>full scans</th><th>t (s)</th><th>shared</th><th>sharing</th>
<th>unshared</th><th>volatile</th><th>ksmd CPU ms</th></tr>{scans}</table>
</body></html>
"""


# ------------------------------------------------------------------------------ forecast


def forecast(
    snapshot: Annotated[str, typer.Argument(metavar="SNAPSHOT", help="A snapshot file (samepage capture -o FILE).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="TUNABLE=VALUE", help="A /sys/kernel/mm/ksm setting (repeatable); the others keep the kernel defaults.")] = None,
    merge_any: Annotated[bool, typer.Option("--merge-any", help="As if prctl(PR_SET_MEMORY_MERGE) / systemd MemoryKSM=yes applied to every captured process.")] = False,
    thp: Annotated[bool, typer.Option("--thp", help="As if transparent_hugepage/enabled = always: every fully present, aligned 2 MiB block starts as a THP (default: the captured AnonHugePages).")] = False,
    until: Annotated[str, typer.Option("--until", metavar="converged|N|T", help="Stop when converged (default), after N full scans, or after a simulated time T (90s, 10m).")] = "converged",
    costs: Annotated[Optional[Path], typer.Option("--costs", metavar="COSTS.toml", dir_okay=False, help="ksmd's CPU cost profile (default: the shipped one).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (scans, final, convergence, savings, per process).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Plot the counters and ksmd CPU over time.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", metavar="FILE.html", help="Write one self-contained page: curve, per-process savings, settings.")] = None,
    no_volatile: Annotated[bool, typer.Option("--static", help="Do not rewrite the pages the capture saw change.")] = False,
    recommend_: Annotated[bool, typer.Option("--recommend", help="Find the cheapest pages_to_scan / sleep_millisecs converging --within under --max-cpu.")] = False,
    within: Annotated[str, typer.Option("--within", metavar="T", help="With --recommend: the time to converge within (e.g. 10m).")] = "10m",
    max_cpu: Annotated[float, typer.Option("--max-cpu", metavar="PERCENT", help="With --recommend: ksmd's CPU cap, percent of one CPU.")] = 5.0,
    engine: Annotated[str, typer.Option("--engine", metavar="auto|cpython|pypy", help="Run the model on this interpreter: pypy (make pypy; $SAMEPAGE_PYPY) is 10-30 times faster on large hosts, same results; auto (default) takes PyPy when it is set up and the snapshot holds 512 MiB or more.")] = "auto",
) -> None:
    """Forecast KSM on a captured host: the snapshot's processes on the model, ksmd in
    simulated time, volatile pages rewritten at their measured rates."""
    from samepage.capture import load_snapshot
    from samepage.forecast import ForecastError, build_machine, recommend, simulate

    tun = _check_tunables(_parse_sets(set_))
    u = _until(until)
    if engine not in ("auto", "cpython", "pypy"):
        error_exit(f"--engine {engine}: auto, cpython or pypy")
    within_ms = _duration_ms(within, "--within") if recommend_ else 0.0
    if recommend_ and not 0 < max_cpu <= 100:
        error_exit(f"--max-cpu {max_cpu:g}: a percentage above 0 and at most 100")
    check_plot(plot)
    if html_out is not None:
        import os
        parent = html_out.parent if str(html_out.parent) else Path(".")
        if html_out.is_dir():
            error_exit(f"{html_out}: cannot write the page: is a directory")
        if not parent.is_dir():
            error_exit(f"{html_out}: cannot write the page: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            error_exit(f"{html_out}: cannot write the page: directory {parent} is not writable")
    cost_model = _load_costs(costs)
    with reported_errors():
        snap = load_snapshot(snapshot)
    title = f"forecast of {Path(snapshot).name}"
    if engine == "auto":
        engine = _auto_engine(snap)

    def build(t: dict):
        return build_machine(snap, tunables=t, merge_any_all=merge_any, thp_always=thp,
                             costs=cost_model, volatile=not no_volatile)

    con = stdout_console()
    t0 = time.monotonic()
    from samepage.forecast.run import StderrProgress
    prog = StderrProgress.on_tty()
    if engine == "pypy":
        from samepage.forecast.worker import EngineError, candidates_from, run_forecast
        req = {"snapshot": str(snapshot), "tunables": tun, "merge_any": merge_any, "thp": thp,
               "volatile": not no_volatile, "until": until, "progress": prog is not None,
               "costs": str(costs) if costs is not None else None}
        if recommend_:
            req["recommend"] = {"within_ms": within_ms, "max_cpu": max_cpu}
        try:
            ans = run_forecast(req)
        except EngineError as e:
            error_exit(str(e))
        if recommend_:
            best, tried = candidates_from(ans["recommend"])
            _print_recommend(con, best, tried, within_ms, max_cpu, json_out)
            return
        doc = ans["doc"]
        facts = (ans["processes"], ans["mergeable_pages"], ans["rewrites"], ans["thp_pages"],
                 ans["interpreter"])
    else:
        try:
            if recommend_:
                best, tried = recommend(build, within_ms, max_cpu, base=tun,
                                        on_try=prog.candidate if prog else None)
                if prog:
                    prog.done()
                _print_recommend(con, best, tried, within_ms, max_cpu, json_out)
                return
            built = build(tun)
            res = simulate(built, u, progress=prog.scan if prog else None)
        except ForecastError as e:
            error_exit(f"{snapshot}: {e}")
        finally:
            if prog:
                prog.done()
        doc = res.as_json()
        facts = (len(built.processes), built.mergeable_pages, res.extra.get("rewrites"),
                 built.thp_pages, None)
    doc["until"] = u.kind
    wall = time.monotonic() - t0
    if plot is not None:
        with reported_errors():
            write_plot(plot, [("model", doc)], title)
    if html_out is not None:
        try:
            html_out.write_text(html_page(doc, title))
        except OSError as e:
            error_exit(f"{html_out}: cannot write the page: {e.strerror or e}")
    if json_out:
        print(json.dumps(doc))
        return
    con.print(scans_table(doc, f"{printable(title)}: counters at each full scan (simulated time)"))
    for line in summary_lines(doc):
        con.print("  " + markup_safe(line), soft_wrap=True)
    n_procs, mergeable, rewrites, thp_pages, interpreter = facts
    extra = [f"{n_procs} processes, {mergeable} mergeable pages"]
    if rewrites:
        extra.append(f"{rewrites} page rewrites of volatile pages")
    if thp_pages:
        extra.append(f"{thp_pages} pages THP-backed at the start")
    on = f" on {interpreter}" if interpreter else ""
    con.print("  " + markup_safe("; ".join(extra)) + f" (the simulation took {wall:.2f} s{on})",
              soft_wrap=True)
    if costs is None:
        # ksmd's cost per operation drifts by 15-30% within hours on a shared machine
        # (docs/cpu-model.md): say where the CPU figure comes from and how to pin it down
        con.print("  " + markup_safe(
            "ksmd CPU priced by the shipped cost profile (fitted on the reference machine); "
            "for this host's figure: samepage kernel calibrate -o host.toml, then --costs "
            "host.toml"), style="dim", soft_wrap=True)
    if engine == "cpython" and wall >= SLOW_FORECAST_S:
        # a large host: the same sources run several times faster on PyPy (README, "PyPy")
        con.print("  " + markup_safe(
            f"this took {wall:.0f} s on CPython; --engine pypy runs the same model several "
            "times faster (make pypy sets it up)"), style="dim", soft_wrap=True)
    if plot is not None:
        con.print(f"  plot: {markup_safe(plot)}")
    if html_out is not None:
        con.print(f"  page: {markup_safe(html_out)}")
    con.print(process_table(doc))


def _print_recommend(con, best, tried, within_ms: float, max_cpu: float, json_out: bool) -> None:
    def row(c):
        r = c.result
        return {"pages_to_scan": c.pages_to_scan, "sleep_millisecs": c.sleep_millisecs,
                "converged": bool(r.converged), "converged_ms": round(r.converged_ms, 3),
                "converged_full_scans": r.converged_full_scans,
                "ksmd_cpu_percent": round(r.cpu_percent, 3), "ok": c.ok, "why": c.why}
    if json_out:
        print(json.dumps({"within_ms": within_ms, "max_cpu": max_cpu,
                          "recommended": row(best) if best else None,
                          "tried": [row(c) for c in tried]}))
        return
    if best is not None:
        r = best.result
        con.print(f"recommended: pages_to_scan = {best.pages_to_scan}, sleep_millisecs = "
                  f"{best.sleep_millisecs}: converges in {r.converged_ms / 1000:.2f} s "
                  f"({r.converged_full_scans} full scans) at {r.cpu_percent:.2f}% of one CPU, "
                  f"saving {r.saved_bytes / MIB:.2f} MiB ({len(tried)} setting{'s' if len(tried) != 1 else ''} tried, slowest "
                  "scan rate first)", soft_wrap=True)
        return
    fastest = max(tried, key=lambda c: c.pages_to_scan / c.sleep_millisecs)
    conv = [c for c in tried if c.result.converged and c.result.converged_ms <= within_ms]
    if not conv:
        why = (f"none converges within {within_ms / 1000:g} s, not even the fastest "
               f"(pages_to_scan = {fastest.pages_to_scan}, sleep_millisecs = "
               f"{fastest.sleep_millisecs})")
    else:
        cheapest = min(conv, key=lambda c: c.result.cpu_percent)
        why = (f"every setting that converges within {within_ms / 1000:g} s needs more than "
               f"{max_cpu:g}% CPU; the cheapest, pages_to_scan = {cheapest.pages_to_scan}, "
               f"sleep_millisecs = {cheapest.sleep_millisecs}, needs "
               f"{cheapest.result.cpu_percent:.2f}%")
    con.print(f"no recommendation: {why}", soft_wrap=True)
    raise typer.Exit(1)


# ------------------------------------------------------------------------------ kernel measure


def measure(
    pid: Annotated[list[int], typer.Option("--pid", metavar="PID", help="A process that opted in to KSM (repeatable).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", metavar="TUNABLE=VALUE", help="A /sys/kernel/mm/ksm setting (repeatable); the others get the kernel defaults.")] = None,
    until: Annotated[str, typer.Option("--until", metavar="converged|N|T", help="Stop when converged (default), after N full scans, or after wall time T.")] = "converged",
    forecast_: Annotated[Optional[str], typer.Option("--forecast", metavar="SNAPSHOT", help="Forecast this snapshot (taken just before) at the same settings and print it beside the measure.")] = None,
    merge_any: Annotated[bool, typer.Option("--merge-any", help="With --forecast: forecast as if every captured process had merge_any.")] = False,
    costs: Annotated[Optional[Path], typer.Option("--costs", metavar="COSTS.toml", dir_okay=False, help="With --forecast: the cost profile.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object, the shape of samepage forecast --json (with --forecast: {\"kernel\": ..., \"forecast\": ...}).")] = False,
    plot: Annotated[Optional[Path], typer.Option("--plot", metavar="FILE.png", help="Plot the measure (and the forecast).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Run although other processes have mergeable memory.")] = False,
    wait: Annotated[Optional[float], typer.Option("--wait", metavar="SECONDS", help="Wait this long for another run's KSM lock.")] = None,
) -> None:
    """Run the live kernel's KSM over processes that opted in, record the counters and ksmd
    CPU at every full scan (root; only KSM's global settings change, restored afterwards)."""
    from samepage.forecast import ForecastError, build_machine, simulate
    from samepage.forecast.run import MAX_SCANS_CONVERGED, Until, settled
    from samepage.kernel.measure import MeasureError
    from samepage.kernel.measure import measure as kmeasure

    from .kernel import require_live_ksm

    tun = _check_tunables(_parse_sets(set_))
    u = _until(until)
    check_plot(plot)
    cost_model = _load_costs(costs)
    snap = None
    if forecast_ is not None:
        from samepage.capture import load_snapshot
        with reported_errors():
            snap = load_snapshot(forecast_)
    require_live_ksm("samepage kernel measure")
    from samepage.kernel import KsmLockTimeout, KsmdError
    from samepage.kernel.runner import ForeignKsmUsers
    try:
        kdoc = kmeasure(pid, tun, u.kind, u.value, max_scans=MAX_SCANS_CONVERGED, force=force,
                        lock_timeout=wait, settled=lambda sc: settled(sc, static=snap is None
                                                                    or _static(snap)))
    except (MeasureError, ForeignKsmUsers, KsmdError, KsmLockTimeout, PermissionError) as e:
        error_exit(f"kernel measure: {e}")
    kdoc["until"] = u.kind
    fdoc = None
    if snap is not None:
        try:
            built = build_machine(snap, tunables=tun, merge_any_all=merge_any, costs=cost_model)
            res = simulate(built, Until("scans", max(1, len(kdoc["scans"]))))
        except ForecastError as e:
            error_exit(f"{forecast_}: {e}")
        fdoc = res.as_json()
        fdoc["until"] = u.kind
        # run for the kernel's number of scans: settled by the kernel's rule, not "converged"
        fdoc["converged"] = settled(fdoc["scans"], static=_static(snap))
    if plot is not None:
        docs = [("kernel", kdoc)] + ([("model", fdoc)] if fdoc else [])
        with reported_errors():
            write_plot(plot, docs, "kernel measure" + (" and forecast" if fdoc else ""))
    if json_out:
        print(json.dumps({"kernel": kdoc, "forecast": fdoc} if fdoc else kdoc))
        return
    con = stdout_console()
    if fdoc is None:
        con.print(scans_table(kdoc, "kernel measure: counters at each full scan"))
        for line in summary_lines(kdoc):
            con.print("  " + markup_safe(line), soft_wrap=True)
        con.print(process_table(kdoc))
        return
    con.print(comparison_table(kdoc, fdoc))
    con.print("kernel:   " + markup_safe("; ".join(summary_lines(kdoc))), soft_wrap=True)
    con.print("forecast: " + markup_safe("; ".join(summary_lines(fdoc))), soft_wrap=True)


def _static(snap) -> bool:
    return snap.meta.samples < 2 or not any(int(v.changes.max(initial=0)) for v in snap.vmas)


def agree(k: int, f: int) -> bool:
    """The accuracy target: within 2% or 50 pages."""
    return abs(k - f) <= max(50, 0.02 * max(abs(k), abs(f)))


def comparison_table(kdoc: dict[str, Any], fdoc: dict[str, Any]) -> Table:
    t = Table(title="kernel measure beside the forecast, at each full scan", title_justify="left")
    for h in ("scans", "t kernel s", "t model s", "sharing kernel", "sharing model", "diff",
              "shared kernel", "shared model", "CPU kernel ms", "CPU model ms"):
        t.add_column(h, justify="right")
    fs = {s["full_scans"]: s for s in fdoc["scans"]}
    for s in kdoc["scans"]:
        m = fs.get(s["full_scans"])
        if m is None:
            continue
        d = s["pages_sharing"] - m["pages_sharing"]
        mark = "" if agree(s["pages_sharing"], m["pages_sharing"]) else " !"
        t.add_row(str(s["full_scans"]), f"{s['t_ms'] / 1000:.2f}", f"{m['t_ms'] / 1000:.2f}",
                  str(s["pages_sharing"]), str(m["pages_sharing"]), f"{d:+d}{mark}",
                  str(s["pages_shared"]), str(m["pages_shared"]),
                  f"{s['ksmd_cpu_ms']:.1f}", f"{m['ksmd_cpu_ms']:.1f}")
    return t


def register(app: typer.Typer, kernel_app: typer.Typer) -> None:
    app.command("forecast")(forecast)
    kernel_app.command("measure")(measure)


def _auto_engine(snap) -> str:
    """``--engine auto``: PyPy for a snapshot of AUTO_PYPY_PAGES present pages or more, when
    an environment for it exists; CPython otherwise (the results are the same)."""
    if len(snap.page_token) < AUTO_PYPY_PAGES:
        return "cpython"
    from samepage.forecast.worker import EngineError, find_pypy
    try:
        find_pypy()
    except EngineError:
        return "cpython"
    return "pypy"
