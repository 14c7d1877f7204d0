"""Capturing a raw memory file (a guest's RAM file, /dev/shm backing, a dd of memory):
``length`` bytes from ``offset`` as one "process" (pid 0) with one VMA at address ``offset``,
every page present."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np

from samepage.scenario.errors import ScenarioError, open_input

from .elfcore import read_file_digests
from .procfs import CHUNK, VMA_FLAGS_UNKNOWN, VMA_READ, VMA_WRITE
from .snapshot import CapturedProcess, CapturedVma
from .tokens import PAGE_SIZE


def capture_raw(path: str, offset: int = 0, length: int | None = None, *,
                on_total: Callable[[int], None] | None = None,
                on_bytes: Callable[[int], None] | None = None,
                chunk: int = CHUNK) -> tuple[CapturedProcess, int]:
    f = open_input(path)
    fd = f.fileno()
    try:
        size = os.fstat(fd).st_size
        if offset < 0 or offset % PAGE_SIZE:
            raise ScenarioError(path, "--offset", f"{offset} is not a multiple of the page "
                                                  f"size ({PAGE_SIZE})")
        if length is None:
            length = size - offset
        if length <= 0 or length % PAGE_SIZE:
            raise ScenarioError(path, "--length", f"{length} is not a positive multiple of "
                                                  f"the page size ({PAGE_SIZE})")
        if size and offset + length > size:
            raise ScenarioError(path, "--length", f"offset {offset} + length {length} goes "
                                                  f"beyond the end of the file ({size} bytes)")
        if on_total is not None:
            on_total(length)
        d = read_file_digests(fd, offset, length, bytearray(min(chunk, length)), on_bytes)
    finally:
        f.close()
    n = length // PAGE_SIZE
    vma = CapturedVma("raw", offset, n, VMA_READ | VMA_WRITE | VMA_FLAGS_UNKNOWN, 0,
                      np.arange(n, dtype=np.uint64), d, np.zeros(n, np.uint8),
                      np.zeros(0, np.uint64), np.zeros(n, np.uint16))
    return CapturedProcess(0, os.path.basename(path), f"raw:{path}", None, None, [vma]), length
