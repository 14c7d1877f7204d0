"""The snapshot file: what a capture saw of a host's anonymous memory, as tokens.

A snapshot is a NumPy ``.npz`` archive (``np.savez_compressed``, no pickled objects) holding
per process and VMA the layout (start, pages, flags, THP backing, holes) and one uint64 token
per present page (samepage.capture.tokens), never page bytes. The format is documented in
docs/snapshot-format.md; ``load_snapshot(path)`` validates every array and raises one
ScenarioError ``FILE: KEY: message`` for a file that is not a valid snapshot.

API::

    snap = load_snapshot("host.npz")
    for proc in snap.processes:            # SnapProcess: pid, comm, source, merge_any, vmas
        for vma in proc.vmas:              # SnapVma, in address order
            vma.offsets, vma.tokens        # present pages: page offset in the VMA, token
            vma.dense_tokens()             # int64[vma.pages]: token, HOLE (-1), SWAPPED (-2)
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import zipfile
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from samepage.scenario.errors import ScenarioError
from samepage.scenario.jsonfile import parse_json, validate

from .procfs import PAGE_ZERO_PFN, VMA_FILE, VMA_MERGEABLE
from .tokens import PAGE_SIZE, Digests, assign_tokens

FORMAT = "samepage-snapshot"
VERSION = 1
HOLE = -1
SWAPPED = -2
#: A member of a snapshot larger than this (uncompressed) is refused before it is read.
MAX_MEMBER_BYTES = 16 * 1024 ** 3
MAX_METADATA_BYTES = 256 * 1024 ** 2

#: name -> dtype of every array member besides ``metadata``.
ARRAYS: dict[str, np.dtype] = {
    "vma_process": np.dtype(np.uint32),
    "vma_start": np.dtype(np.uint64),
    "vma_pages": np.dtype(np.uint64),
    "vma_flags": np.dtype(np.uint32),
    "vma_thp_kb": np.dtype(np.uint64),
    "page_vma": np.dtype(np.uint32),
    "page_offset": np.dtype(np.uint64),
    "page_token": np.dtype(np.uint64),
    "page_flags": np.dtype(np.uint8),
    "page_changes": np.dtype(np.uint16),
    "swap_vma": np.dtype(np.uint32),
    "swap_offset": np.dtype(np.uint64),
}
_GROUPS = {"vma": ["vma_process", "vma_start", "vma_pages", "vma_flags", "vma_thp_kb"],
           "page": ["page_vma", "page_offset", "page_token", "page_flags", "page_changes"],
           "swap": ["swap_vma", "swap_offset"]}


class ProcessMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    pid: int = Field(ge=0, le=2 ** 32)          # 0: not a process (a guest, a raw file)
    comm: str
    source: str
    merge_any: Optional[bool] = None            # None: not known (core dump, raw file)
    mergeable: Optional[bool] = None


class SnapshotMeta(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    format: Literal["samepage-snapshot"]
    version: Literal[1]
    host: str
    kernel_release: str
    created: str
    page_size: Literal[4096]
    samples: int = Field(ge=1, le=65535)
    interval_s: float = Field(ge=0)
    sources: list[str]
    zero_pfn_known: bool
    # how all-zero pages of core files were recorded (holes or token-0 pages); None without
    # a core source. Optional: snapshots written before it was added lack it.
    core_zeros: Optional[Literal["absent", "present"]] = None
    distinct_tokens: int = Field(ge=0)
    captured_bytes: int = Field(ge=0)
    capture_seconds: float = Field(ge=0)
    processes: list[ProcessMeta]
    vma_names: list[str]


@dataclass
class CapturedVma:
    """One VMA as a source read it: present pages (sorted offsets) and their digests."""

    name: str
    start: int
    pages: int
    flags: int
    thp_kb: int
    offsets: np.ndarray
    digests: Digests
    page_flags: np.ndarray
    swapped: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    changes: np.ndarray | None = None


@dataclass
class CapturedProcess:
    pid: int
    comm: str
    source: str
    merge_any: bool | None
    mergeable: bool | None
    vmas: list[CapturedVma]


@dataclass
class SnapVma:
    """A VMA of a snapshot; the page arrays are views into the snapshot's."""

    index: int
    process: int
    start: int
    pages: int
    flags: int
    thp_kb: int
    name: str
    offsets: np.ndarray
    tokens: np.ndarray
    page_flags: np.ndarray
    changes: np.ndarray
    swapped: np.ndarray

    @property
    def end(self) -> int:
        return self.start + self.pages * PAGE_SIZE

    @property
    def mergeable(self) -> bool:
        return bool(self.flags & VMA_MERGEABLE)

    @property
    def file_backed(self) -> bool:
        """A private file-backed VMA: its pages are the anonymous (COW'd) ones only."""
        return bool(self.flags & VMA_FILE)

    def dense_tokens(self) -> np.ndarray:
        """int64[pages]: the token of each page, HOLE (-1) where no page is present,
        SWAPPED (-2) where it is swapped out."""
        out = np.full(self.pages, HOLE, np.int64)
        out[self.offsets.astype(np.int64)] = self.tokens.astype(np.int64)
        out[self.swapped.astype(np.int64)] = SWAPPED
        return out


@dataclass
class SnapProcess:
    index: int
    pid: int
    comm: str
    source: str
    merge_any: bool | None
    mergeable: bool | None
    vmas: list[SnapVma]


class Snapshot:
    """A loaded (or freshly built) snapshot: ``meta``, the arrays of ARRAYS as attributes,
    and ``processes`` (SnapProcess, each with its SnapVmas in address order)."""

    def __init__(self, meta: SnapshotMeta, arrays: dict[str, np.ndarray],
                 path: str | None = None) -> None:
        self.meta = meta
        self.path = path
        for k in ARRAYS:
            setattr(self, k, arrays[k])
        self.arrays = arrays
        nv = len(arrays["vma_start"])
        pr = np.searchsorted(arrays["page_vma"], np.arange(nv + 1, dtype=np.uint32))
        sr = np.searchsorted(arrays["swap_vma"], np.arange(nv + 1, dtype=np.uint32))
        self.vmas: list[SnapVma] = []
        for i in range(nv):
            a, b = int(pr[i]), int(pr[i + 1])
            self.vmas.append(SnapVma(
                i, int(arrays["vma_process"][i]), int(arrays["vma_start"][i]),
                int(arrays["vma_pages"][i]), int(arrays["vma_flags"][i]),
                int(arrays["vma_thp_kb"][i]), meta.vma_names[i],
                arrays["page_offset"][a:b], arrays["page_token"][a:b],
                arrays["page_flags"][a:b], arrays["page_changes"][a:b],
                arrays["swap_offset"][int(sr[i]):int(sr[i + 1])]))
        self.processes: list[SnapProcess] = [
            SnapProcess(i, p.pid, p.comm, p.source, p.merge_any, p.mergeable, [])
            for i, p in enumerate(meta.processes)]
        for v in self.vmas:
            self.processes[v.process].vmas.append(v)

    def summary(self) -> dict[str, Any]:
        """Counts per process and in all (see docs/snapshot-format.md, "Summary")."""
        procs = []
        for p in self.processes:
            procs.append({"pid": p.pid, "comm": p.comm, "source": p.source,
                          "merge_any": p.merge_any, **_counts(p.vmas)})
        return {"processes": procs, "total": _counts(self.vmas),
                "samples": self.meta.samples, "interval_s": self.meta.interval_s,
                "core_zeros": self.meta.core_zeros,
                "captured_bytes": self.meta.captured_bytes,
                "capture_seconds": self.meta.capture_seconds}


def _counts(vmas: list[SnapVma]) -> dict[str, int]:
    """present/zero/distinct/duplicate pages of ``vmas``; duplicates are the pages KSM could
    free at most if every one were mergeable: present pages (not zero-page mappings, which
    KSM skips) less one per distinct content."""
    if vmas:
        tok = np.concatenate([v.tokens for v in vmas])
        fl = np.concatenate([v.page_flags for v in vmas])
        ch = np.concatenate([v.changes for v in vmas])
        mg = np.concatenate([np.full(v.tokens.size, v.mergeable) for v in vmas])
    else:
        tok = np.zeros(0, np.uint64)
        fl = np.zeros(0, np.uint8)
        ch = np.zeros(0, np.uint16)
        mg = np.zeros(0, bool)
    zpfn = (fl & PAGE_ZERO_PFN) != 0
    cand = tok[~zpfn]
    cand_mg = tok[~zpfn & mg]
    return {
        "vmas": len(vmas),
        "pages": int(sum(v.pages for v in vmas)),
        "present_pages": int(tok.size),
        "zero_pages": int(np.count_nonzero(tok == 0)),
        "zero_pfn_pages": int(np.count_nonzero(zpfn)),
        "swapped_pages": int(sum(v.swapped.size for v in vmas)),
        "distinct_tokens": int(np.unique(tok[tok != 0]).size),
        "duplicate_pages": int(cand.size - np.unique(cand).size),
        "mergeable_pages": int(cand_mg.size),
        "duplicate_mergeable_pages": int(cand_mg.size - np.unique(cand_mg).size),
        "changed_pages": int(np.count_nonzero(ch)),
        "thp_kb": int(sum(v.thp_kb for v in vmas)),
        # of the above: private file-backed VMAs and their anonymous (COW'd) pages
        "file_vmas": sum(1 for v in vmas if v.file_backed),
        "file_anon_pages": int(sum(v.tokens.size for v in vmas if v.file_backed)),
    }


def build_snapshot(processes: list[CapturedProcess], *, sources: list[str], samples: int = 1,
                   interval_s: float = 0.0, zero_pfn_known: bool = False,
                   core_zeros: str | None = None, captured_bytes: int = 0,
                   capture_seconds: float = 0.0) -> Snapshot:
    """Assign tokens over all captured pages and lay them out as a Snapshot."""
    vmas = [(pi, v) for pi, p in enumerate(processes) for v in p.vmas]
    digests = Digests.concat([v.digests for _, v in vmas])
    tokens, distinct = assign_tokens(digests)

    def cat(xs: list[np.ndarray], dt: np.dtype) -> np.ndarray:
        return np.concatenate(xs).astype(dt) if xs else np.zeros(0, dt)

    arrays = {
        "vma_process": np.array([pi for pi, _ in vmas], np.uint32),
        "vma_start": np.array([v.start for _, v in vmas], np.uint64),
        "vma_pages": np.array([v.pages for _, v in vmas], np.uint64),
        "vma_flags": np.array([v.flags for _, v in vmas], np.uint32),
        "vma_thp_kb": np.array([v.thp_kb for _, v in vmas], np.uint64),
        "page_vma": cat([np.full(v.offsets.size, i) for i, (_, v) in enumerate(vmas)],
                        ARRAYS["page_vma"]),
        "page_offset": cat([v.offsets for _, v in vmas], ARRAYS["page_offset"]),
        "page_token": tokens.astype(np.uint64),
        "page_flags": cat([v.page_flags for _, v in vmas], ARRAYS["page_flags"]),
        "page_changes": cat([v.changes if v.changes is not None
                             else np.zeros(v.offsets.size, np.uint16) for _, v in vmas],
                            ARRAYS["page_changes"]),
        "swap_vma": cat([np.full(v.swapped.size, i) for i, (_, v) in enumerate(vmas)],
                        ARRAYS["swap_vma"]),
        "swap_offset": cat([v.swapped for _, v in vmas], ARRAYS["swap_offset"]),
    }
    meta = SnapshotMeta(
        format=FORMAT, version=VERSION, host=platform.node(),
        kernel_release=platform.release(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        page_size=PAGE_SIZE, samples=samples, interval_s=float(interval_s),
        sources=sources, zero_pfn_known=zero_pfn_known, core_zeros=core_zeros,
        distinct_tokens=distinct,
        captured_bytes=captured_bytes, capture_seconds=float(capture_seconds),
        processes=[ProcessMeta(pid=p.pid, comm=p.comm, source=p.source,
                               merge_any=p.merge_any, mergeable=p.mergeable)
                   for p in processes],
        vma_names=[v.name for _, v in vmas])
    return Snapshot(meta, arrays)


def save_snapshot(snap: Snapshot, path: str | os.PathLike[str]) -> None:
    """Write ``snap`` to ``path`` (an .npz archive; np.savez would append .npz to a name
    without it, so the file is opened here)."""
    meta = np.frombuffer(snap.meta.model_dump_json().encode(), dtype=np.uint8)
    with open(path, "wb") as f:
        np.savez_compressed(f, metadata=meta, **snap.arrays)


def load_snapshot(path: str | os.PathLike[str]) -> Snapshot:
    """Read and validate a snapshot file; any problem is one ScenarioError."""
    fn = os.fspath(path)

    def bad(key: str, msg: str) -> ScenarioError:
        return ScenarioError(fn, key, msg)

    try:
        zf = zipfile.ZipFile(fn)
    except FileNotFoundError:
        raise bad("(file)", "file not found") from None
    except IsADirectoryError:
        raise bad("(file)", "is a directory") from None
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise bad("(file)", "not a samepage snapshot (not an .npz archive)") from None
    except OSError as e:
        raise bad("(file)", f"cannot read: {e.strerror or e}") from None
    with zf:
        try:
            infos = {i.filename: i for i in zf.infolist()}
        except Exception:        # a corrupt central directory
            raise bad("(file)", "not a samepage snapshot (corrupt archive)") from None
        names = {n[:-4] if n.endswith(".npy") else n for n in infos}
        want = set(ARRAYS) | {"metadata"}
        if "metadata" not in names:
            raise bad("metadata", "missing (not a samepage snapshot)")
        for n in sorted(want - names):
            raise bad(n, "missing array")
        for n in sorted(names - want):
            raise bad(n, "unknown member of a snapshot")
        for n, info in infos.items():
            cap = MAX_METADATA_BYTES if n == "metadata.npy" else MAX_MEMBER_BYTES
            if info.file_size > cap:
                raise bad(n[:-4], f"too large ({info.file_size} bytes, at most {cap})")
        arrays: dict[str, np.ndarray] = {}
        for n in ["metadata", *ARRAYS]:
            try:
                with zf.open(n + ".npy") as f:
                    a = np.lib.format.read_array(f, allow_pickle=False)
            except Exception as e:      # zlib, format, pickle refusal, truncation
                msg = " ".join(str(e).split())[:200]
                raise bad(n, f"unreadable array ({type(e).__name__}: {msg})") from None
            arrays[n] = a
    md = arrays.pop("metadata")
    if md.dtype != np.uint8 or md.ndim != 1:
        raise bad("metadata", f"expected a 1-D uint8 array (UTF-8 JSON), got {md.dtype} "
                              f"with shape {md.shape}")
    try:
        text = md.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad("metadata", f"not valid UTF-8 (byte {e.start})") from None
    try:
        doc = parse_json(text, fn)
    except ScenarioError as e:
        raise _under_metadata(e) from None
    if isinstance(doc, dict) and doc.get("format") != FORMAT:
        raise bad("metadata.format", f"not a samepage snapshot (format {doc.get('format')!r})")
    if isinstance(doc, dict) and doc.get("version") != VERSION:
        raise bad("metadata.version", f"unsupported snapshot version {doc.get('version')!r} "
                                      f"(this samepage reads version {VERSION})")
    try:
        meta = validate(SnapshotMeta, doc, fn)
    except ScenarioError as e:
        raise _under_metadata(e) from None
    _check_arrays(meta, arrays, bad)
    return Snapshot(meta, arrays, path=fn)


def _under_metadata(e: ScenarioError) -> ScenarioError:
    """A metadata error's key as ``metadata.KEY`` (``metadata`` for the whole document)."""
    key = "metadata" if e.key == "(top)" else f"metadata.{e.key}"
    return ScenarioError(e.file, key, e.msg)


def _check_arrays(meta: SnapshotMeta, a: dict[str, np.ndarray], bad) -> None:
    for n, dt in ARRAYS.items():
        if a[n].dtype != dt or a[n].ndim != 1:
            raise bad(n, f"expected a 1-D {dt} array, got {a[n].dtype} with shape "
                         f"{a[n].shape}")
    for g, members in _GROUPS.items():
        n0 = a[members[0]].size
        for m in members[1:]:
            if a[m].size != n0:
                raise bad(m, f"{a[m].size} entries, but {members[0]} has {n0}")
    nv, npr = a["vma_start"].size, len(meta.processes)
    if len(meta.vma_names) != nv:
        raise bad("metadata.vma_names", f"{len(meta.vma_names)} names for {nv} VMAs")
    vp, vs, vn = a["vma_process"], a["vma_start"], a["vma_pages"]
    if nv:
        if int(vp.max()) >= npr:
            raise bad("vma_process", f"process index {int(vp.max())} out of range "
                                     f"({npr} processes)")
        if np.any(np.diff(vp.astype(np.int64)) < 0):
            raise bad("vma_process", "VMAs not grouped by process in order")
        if np.any(vs % PAGE_SIZE):
            raise bad("vma_start", "a VMA start is not page-aligned")
        if np.any(vn == 0) or np.any(vn > (np.uint64(2 ** 64 - 1) - vs) // np.uint64(PAGE_SIZE)):
            raise bad("vma_pages", "a VMA is empty or ends beyond the address space")
        same = vp[1:] == vp[:-1]
        ends = vs[:-1] + vn[:-1] * np.uint64(PAGE_SIZE)
        if np.any(same & (vs[1:] < ends)):
            raise bad("vma_start", "a process's VMAs overlap or are not in address order")
        if np.any(a["vma_flags"] >= 256):
            raise bad("vma_flags", "unknown flag bits (at most 0xff)")
    for prefix in ("page", "swap"):
        v, off = a[f"{prefix}_vma"], a[f"{prefix}_offset"]
        if v.size == 0:
            continue
        if int(v.max()) >= nv:
            raise bad(f"{prefix}_vma", f"VMA index {int(v.max())} out of range ({nv} VMAs)")
        if np.any(off >= vn[v]):
            raise bad(f"{prefix}_offset", "a page offset beyond its VMA's end")
        dv = np.diff(v.astype(np.int64))
        if np.any(dv < 0) or np.any((dv == 0) & (off[1:] <= off[:-1])):
            raise bad(f"{prefix}_offset", "pages not in (VMA, offset) order or repeated")
    tok = a["page_token"]
    nz = np.unique(tok[tok != 0])
    if nz.size != meta.distinct_tokens or (nz.size and int(nz[-1]) != nz.size):
        raise bad("page_token", f"tokens are not 1..{meta.distinct_tokens} "
                                f"(metadata.distinct_tokens) each used at least once")
    if np.any(a["page_flags"] >= 4):
        raise bad("page_flags", "unknown flag bits (at most 0x3)")
    zp = (a["page_flags"] & PAGE_ZERO_PFN) != 0
    if np.any(tok[zp] != 0):
        raise bad("page_token", "a zero-page mapping (page_flags bit 0) with a non-zero token")
    if a["page_changes"].size and int(a["page_changes"].max()) > meta.samples - 1:
        raise bad("page_changes", f"a change count above samples - 1 = {meta.samples - 1}")
    if a["swap_vma"].size and a["page_vma"].size:
        v = np.concatenate([a["page_vma"], a["swap_vma"]])
        off = np.concatenate([a["page_offset"], a["swap_offset"]])
        order = np.lexsort((off, v))
        v, off = v[order], off[order]
        if np.any((v[1:] == v[:-1]) & (off[1:] == off[:-1])):
            raise bad("swap_offset", "a page both present and swapped")
