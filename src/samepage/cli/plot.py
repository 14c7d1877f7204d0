"""Plots of traces (matplotlib, Agg backend: no display needed).

``plot_trace(records, path, title)`` draws the page counters of a trace over its batches and,
in a second panel, ``general_profit`` in MiB. An optional second trace (e.g. the live kernel's
run of the same scenario) is overlaid with dashed lines of the same colours, so the two can be
compared batch by batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

#: The page counters drawn in the upper panel, with their colours.
PAGE_SERIES: tuple[tuple[str, str], ...] = (
    ("pages_shared", "tab:blue"),
    ("pages_sharing", "tab:green"),
    ("pages_unshared", "tab:orange"),
    ("pages_volatile", "tab:red"),
    ("ksm_zero_pages", "tab:purple"),
)
PROFIT_COLOUR = "tab:olive"
MIB = 1024 * 1024


def check_plot_path(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot take a plot (no such directory, unknown format), or None."""
    from matplotlib.backend_bases import FigureCanvasBase

    p = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(p))
    if not os.path.isdir(parent):
        return f"no such directory: {parent}"
    if os.path.isdir(p):
        return "is a directory"
    ext = os.path.splitext(p)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext not in formats:
        return (f"{'unknown image format ' + repr(ext) if ext else 'no file extension'} (the file name must end in one of "
                f"{', '.join('.' + f for f in ('png', 'svg', 'pdf'))}, ...)")
    return None


def batch_records(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch records of a trace (the final record, if present, is dropped)."""
    return [r for r in records if "batch" in r]


def plot_trace(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], title: str,
               other: Sequence[dict[str, Any]] | None = None, *, label: str = "model",
               other_label: str = "kernel", scan_marks: bool = True) -> None:
    """Write a figure of ``records`` (a trace's records, the final one may be included) to
    ``path``; the format follows the file name's extension (.png, .svg, .pdf).

    ``other``: a second trace to overlay dashed, named ``other_label`` in the legend (the first
    is then named ``label``). ``scan_marks``: thin vertical lines where a full scan completes
    (omitted when there are more than 40 of them).
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    recs = batch_records(records)
    others = batch_records(other) if other is not None else None

    fig, (ax, ax_profit) = plt.subplots(
        2, 1, sharex=True, figsize=(10, 6.5), height_ratios=(2.2, 1), layout="constrained")
    fig.suptitle(title.replace("$", r"\$"), fontsize=13)  # no mathtext

    def draw(trace: list[dict[str, Any]], style: str, alpha: float, width: float,
             z: float) -> None:
        xs = [r["batch"] for r in trace]
        kw = dict(alpha=alpha, linewidth=width, drawstyle="steps-post", zorder=z)
        for name, colour in PAGE_SERIES:
            ax.plot(xs, [r[name] for r in trace], style, color=colour, **kw)
        ax_profit.plot(xs, [r["general_profit"] / MIB for r in trace], style,
                       color=PROFIT_COLOUR, **kw)

    # The second trace goes underneath, wider and lighter: where the two agree it shows as
    # a halo around the first one's line.
    if others is not None:
        draw(others, "--", 0.55, 2.6, 2.0)
    draw(recs, "-", 1.0, 1.5, 2.5)

    # Legend: one entry per counter, plus line styles when two traces are drawn.
    handles = [Line2D([], [], color=c, linewidth=2, label=n) for n, c in PAGE_SERIES]
    if others is not None:
        handles += [Line2D([], [], color="black", linestyle="-", label=label),
                    Line2D([], [], color="black", linestyle="--", label=other_label)]
    scans = _scan_ends(recs) if scan_marks else []
    if scans and len(scans) <= 40:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="full scan completed"))
    ax.legend(handles=handles, loc="best", fontsize=8.5, framealpha=0.85)
    ax.set_ylabel("pages")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)

    ax_profit.axhline(0, color="grey", linewidth=0.8)
    ax_profit.set_ylabel("general_profit (MiB)")
    ax_profit.set_xlabel("batch")
    ax_profit.grid(True, alpha=0.3)
    if others is not None:
        ax_profit.legend(handles=[
            Line2D([], [], color=PROFIT_COLOUR, linestyle="-", label=label),
            Line2D([], [], color=PROFIT_COLOUR, linestyle="--", label=other_label)],
            loc="best", fontsize=8.5)

    if recs:
        lo, hi = recs[0]["batch"], recs[-1]["batch"]
        if others:
            lo, hi = min(lo, others[0]["batch"]), max(hi, others[-1]["batch"])
        # Each step shows a record's value from its batch to the next: show the last one too.
        ax_profit.set_xlim(lo, hi + 1)
        if len(scans) <= 40:
            for b in scans:
                for a in (ax, ax_profit):
                    a.axvline(b, color="grey", linewidth=0.6, linestyle=":", alpha=0.8)
        _seconds_axis(ax, recs)

    fig.savefig(os.fspath(path), dpi=110)
    plt.close(fig)


def _scan_ends(recs: list[dict[str, Any]]) -> list[int]:
    """The batches in which full_scans advanced."""
    ends, prev = [], 0
    for r in recs:
        if r["full_scans"] != prev:
            ends.append(r["batch"])
        prev = r["full_scans"]
    return ends


def _seconds_axis(ax, recs: list[dict[str, Any]]) -> None:
    """A secondary x axis on top of ``ax`` in simulated (or measured) seconds."""
    if len(recs) < 2:
        return
    import numpy as np

    b = np.array([r["batch"] for r in recs], dtype=float)
    t = np.array([r["t_ms"] for r in recs], dtype=float) / 1000.0
    if np.any(np.diff(t) <= 0):  # not strictly increasing: no invertible mapping
        return
    def interp(x, xp, fp):
        """Piecewise-linear through (xp, fp), extended linearly past both ends."""
        x = np.asarray(x, dtype=float)
        y = np.interp(x, xp, fp)
        lo_slope = (fp[1] - fp[0]) / (xp[1] - xp[0])
        hi_slope = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
        y = np.where(x < xp[0], fp[0] + (x - xp[0]) * lo_slope, y)
        return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * hi_slope, y)

    sec = ax.secondary_xaxis("top", functions=(lambda x: interp(x, b, t),
                                               lambda s: interp(s, t, b)))
    sec.set_xlabel("t (s since run = 1)", fontsize=9)
    sec.tick_params(labelsize=8)
