"""Untrusted strings on the terminal: scenario, process, thread and file names, kernel
releases and messages that quote a file come from outside, and may hold escape sequences or
rich markup. ``printable`` shows every control character as an escape (``\\x1b``);
``markup_safe`` also escapes rich markup (``[/]``)."""

from __future__ import annotations

from rich.markup import escape

# C0 controls (newline and tab included), DEL, C1 controls, and the bidirectional overrides
# and isolates that reorder what a terminal shows.
_UNPRINTABLE = {c: (f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}")
                for c in (*range(0x20), *range(0x7f, 0xa0), *range(0x202a, 0x202f),
                          *range(0x2066, 0x206a), 0x200e, 0x200f, 0x061c)}


def printable(s: object) -> str:
    """``s`` with every control character written as an escape (``\\x1b``, ``\\x0a``)."""
    return str(s).translate(_UNPRINTABLE)


def markup_safe(s: object) -> str:
    """``s`` safe to put into rich markup: printable, and ``[...]`` escaped."""
    return escape(printable(s))
