"""The ``--patch FILE.py`` option of ``run``, ``explore`` and ``compare`` (samepage.patch):
the patch is loaded and checked first (a bad one: one line, exit status 2) and applied until
the command's click context closes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .common import error_exit

PatchOpt = Annotated[Optional[str], typer.Option(
    "--patch", metavar="FILE.py",
    help="Replace engine or memory-manager methods (and add same-folio strategies) with the "
         "top-level functions of FILE.py for this run (README: Checking a patch).")]


def apply_patch_option(path: str | None) -> None:
    """Apply the patch at ``path`` (if any) for the rest of the current command."""
    if path is None:
        return
    from samepage.cli.common import click
    get_current_context = click.globals.get_current_context

    from samepage.patch import PatchError, load_patch

    try:
        patch = load_patch(path)
    except PatchError as e:
        error_exit(str(e))
    cm = patch.applied()
    cm.__enter__()
    get_current_context().call_on_close(lambda: cm.__exit__(None, None, None))
