"""Page contents.

A page's content is either a *token* (an int, see the scenario format: 0 is 4096 zero bytes,
t >= 1 is the 8-byte big-endian encoding of t repeated 512 times) or real bytes (a 4096-byte
``bytes`` object).  Bytes that spell a token are normalised to the token, so equal contents
always have one representation, and identical byte contents are interned (stored once).

Comparisons follow ``memcmp`` (the kernel's ``memcmp_pages``): for two tokens that is numeric
order, because the big-endian encoding preserves it.
"""

from __future__ import annotations

from typing import Union

PAGE_SIZE = 4096
PAGE_SHIFT = 12
TOKEN_LIMIT = 1 << 64

Content = Union[int, bytes]

_interned: dict[bytes, bytes] = {}
_tokens: dict[int, int] = {}          # small working set of tokens, one int object each
_TOKENS_LIMIT = 4096


def token_bytes(token: int) -> bytes:
    """The 4096 bytes a token stands for."""
    if token == 0:
        return bytes(PAGE_SIZE)
    return token.to_bytes(8, "big") * (PAGE_SIZE // 8)


def make_content(value: Content) -> Content:
    """Validate and normalise a content value (token or 4096 bytes)."""
    if isinstance(value, bool):
        raise TypeError("page content must be an int token or 4096 bytes")
    if isinstance(value, int):
        if not 0 <= value < TOKEN_LIMIT:
            raise ValueError(f"token {value} out of range [0, 2**64)")
        t = _tokens.get(value)
        if t is None:
            if len(_tokens) >= _TOKENS_LIMIT:
                return value
            _tokens[value] = t = value
        return t
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
        if len(data) != PAGE_SIZE:
            raise ValueError(f"page content must be {PAGE_SIZE} bytes, got {len(data)}")
        head = data[:8]
        if head * (PAGE_SIZE // 8) == data:
            return int.from_bytes(head, "big")  # a token's pattern (all zero -> 0)
        return _interned.setdefault(data, data)
    raise TypeError("page content must be an int token or 4096 bytes")


def content_bytes(c: Content) -> bytes:
    return token_bytes(c) if isinstance(c, int) else c


def memcmp_contents(a: Content, b: Content) -> int:
    """Sign of memcmp(a, b) over the 4096 bytes (-1, 0, 1)."""
    if a.__class__ is int and b.__class__ is int:
        return (a > b) - (a < b)
    ab, bb = content_bytes(a), content_bytes(b)
    return (ab > bb) - (ab < bb)


def is_zero_content(c: Content) -> bool:
    return c == 0 and c.__class__ is int
