"""``python -m samepage``: the ``samepage`` command (on interpreters where the console script
is not installed, such as the PyPy environment of ``make pypy``)."""

from samepage.cli.main import app

app(prog_name="samepage")
