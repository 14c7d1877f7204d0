"""Page contents -> tokens: the content identity of a snapshot (docs/snapshot-format.md).

In the model (samepage.mm.content), token t is the page whose 4 KiB hold the 8-byte
big-endian value t repeated 512 times, so memcmp order of token pages is the numeric order of
the tokens, and token 0 is the zero page. A capture maps real pages onto that space:

* an all-zero page gets token 0;
* the other distinct contents, identified by xxh3_128 of the 4 KiB, are sorted by (their first
  32 bytes, as four big-endian words, then the 128-bit hash) and numbered 1, 2, ... in that
  order.

So token order is memcmp order exactly as far as the first 32 bytes decide it; between pages
whose first 32 bytes are equal it is the hash order (approximate: memcmp would look further).
The order matters beyond the merges: it shapes ksmd's trees, hence how many memcmps a search
costs (pages that differ only after their first word, such as a counter behind a common
header, are inserted in sorted order by the kernel: a deep right spine, not a random tree).
Equal hashes are taken as equal contents: a 128-bit collision among the at most 2^40 pages of
a host is far less likely (about 2^-49) than a memory error in the machine reading them.

Raw page bytes are only ever held in the read buffer while they are digested.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xxhash

PAGE_SIZE = 4096
PAGE_WORDS = PAGE_SIZE // 8
#: big-endian words of a page's start kept to order the tokens (transient: 32 bytes a page
#: while a capture runs, never written to a snapshot)
KEY_WORDS = 4
#: The hash recorded for an all-zero page (its contents are known: token 0).
ZERO_HASH = (0, 0)


@dataclass
class Digests:
    """Per-page digests of a run of pages: ``zero`` (all-zero contents), ``first`` ((n,
    KEY_WORDS) uint64: the first 32 bytes as big-endian words) and ``hash`` ((n, 2) uint64: xxh3_128, high word first;
    (0, 0) for a zero page)."""

    zero: np.ndarray
    first: np.ndarray
    hash: np.ndarray

    @property
    def n(self) -> int:
        return int(self.zero.shape[0])

    @classmethod
    def empty(cls) -> "Digests":
        return cls(np.zeros(0, bool), np.zeros((0, KEY_WORDS), np.uint64),
                   np.zeros((0, 2), np.uint64))

    @classmethod
    def zeros(cls, n: int) -> "Digests":
        """``n`` pages known to be zero (the shared zero page) without reading them."""
        return cls(np.ones(n, bool), np.zeros((n, KEY_WORDS), np.uint64),
                   np.zeros((n, 2), np.uint64))

    @classmethod
    def concat(cls, parts: list["Digests"]) -> "Digests":
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(np.concatenate([p.zero for p in parts]),
                   np.concatenate([p.first for p in parts]),
                   np.concatenate([p.hash for p in parts]))

    def take(self, idx: np.ndarray) -> "Digests":
        return Digests(self.zero[idx], self.first[idx], self.hash[idx])


def digest_pages(buf: bytes | bytearray | memoryview) -> Digests:
    """Digest ``len(buf) // 4096`` whole pages of ``buf`` (a multiple of the page size)."""
    mv = memoryview(buf).cast("B")
    n = len(mv) // PAGE_SIZE
    if n == 0:
        return Digests.empty()
    words = np.frombuffer(mv, dtype=np.uint64, count=n * PAGE_WORDS).reshape(n, PAGE_WORDS)
    zero = np.bitwise_or.reduce(words, axis=1) == 0
    # the first words read as big-endian numbers (a view, not a value conversion)
    first = np.ascontiguousarray(words[:, :KEY_WORDS]).view(">u8").astype(np.uint64)
    hashes = np.zeros((n, 2), np.uint64)
    nz = np.flatnonzero(~zero)
    if nz.size:
        d = xxhash.xxh3_128_digest
        if nz.size == n:
            raw = b"".join([d(mv[o:o + PAGE_SIZE]) for o in range(0, n * PAGE_SIZE, PAGE_SIZE)])
        else:
            raw = b"".join([d(mv[i * PAGE_SIZE:(i + 1) * PAGE_SIZE]) for i in nz.tolist()])
        hashes[nz] = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    return Digests(zero, first, hashes)


def assign_tokens(d: Digests) -> tuple[np.ndarray, int]:
    """The token of every page of ``d`` (uint64) and the number of distinct non-zero
    contents: 0 for zero pages, the others numbered from 1 in (first words, hash) order."""
    tokens = np.zeros(d.n, np.uint64)
    nz = np.flatnonzero(~d.zero)
    if nz.size == 0:
        return tokens, 0
    first, hi, lo = d.first[nz], d.hash[nz, 0], d.hash[nz, 1]
    # np.lexsort: the last key is the primary one
    order = np.lexsort((lo, hi) + tuple(first[:, k] for k in range(KEY_WORDS - 1, -1, -1)))
    h, l_ = hi[order], lo[order]
    new = np.ones(nz.size, bool)
    new[1:] = (h[1:] != h[:-1]) | (l_[1:] != l_[:-1])     # equal hash: equal contents
    rank = np.cumsum(new, dtype=np.uint64)               # 1, 2, ... per distinct content
    out = np.empty(nz.size, np.uint64)
    out[order] = rank
    tokens[nz] = out
    return tokens, int(rank[-1])


def token_page(token: int) -> bytes:
    """The model's page of ``token``: its 8-byte big-endian value repeated 512 times."""
    return int(token).to_bytes(8, "big") * PAGE_WORDS
