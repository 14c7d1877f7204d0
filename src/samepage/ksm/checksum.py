"""``calc_checksum``: xxh64 of the page truncated to 32 bits (64-bit kernels).

Checksums of token contents are memoised: a token always stands for the same bytes.
"""

from __future__ import annotations

import xxhash

from samepage.mm.content import Content, content_bytes

_cache: dict = {}
_CACHE_LIMIT = 1 << 14


def calc_checksum_content(c: Content) -> int:
    v = _cache.get(c)
    if v is None:
        v = xxhash.xxh64_intdigest(content_bytes(c), 0) & 0xFFFFFFFF
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()
        _cache[c] = v
    return v


ZERO_CHECKSUM = calc_checksum_content(0)
