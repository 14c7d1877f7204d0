"""ScenarioError: the one exception raised for a bad scenario file or trace."""

from __future__ import annotations

from typing import BinaryIO


class ScenarioError(Exception):
    """A scenario (or trace) problem, located by file and key path.

    ``str(e)`` is the single line ``"{file}: {key}: {msg}"``. ``key`` is a path such as
    ``ksm.pages_to_scan``, ``process[1].region[0].pages`` or ``event[2].region`` (list
    indices count from 0, in file order), ``(toml)`` for a TOML syntax error, ``(file)`` when
    the file cannot be read, or ``line N`` for a trace line.
    """

    def __init__(self, file: str, key: str, msg: str) -> None:
        self.file = str(file)
        self.key = str(key)
        self.msg = " ".join(str(msg).split("\n")).strip()
        super().__init__(f"{self.file}: {self.key}: {self.msg}")

    def __reduce__(self):  # keep pickling working with the 3-argument constructor
        return (type(self), (self.file, self.key, self.msg))


def open_input(path: str, what: str = "") -> "BinaryIO":
    """Open the input file ``path`` for reading (binary); every way that fails is one
    ScenarioError naming the file. ``what`` (e.g. "ELF core") only words the message."""
    import os

    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise ScenarioError(path, "(file)", "file not found") from None
    except IsADirectoryError:
        raise ScenarioError(path, "(file)", "is a directory") from None
    except OSError as e:
        raise ScenarioError(path, "(file)", f"cannot read: {e.strerror or e}") from None
    if os.path.isdir(path):   # opening a directory read-only can succeed on some systems
        f.close()
        raise ScenarioError(path, "(file)", "is a directory")
    return f
