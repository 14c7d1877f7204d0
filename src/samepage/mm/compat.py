"""What Python 3.9 (Debian's PyPy 3.9) lacks and the memory manager uses: ``bisect`` with
``key=`` (3.10).  Imported only on those interpreters."""

from __future__ import annotations


def bisect_right(a, x, key):
    lo, hi = 0, len(a)
    while lo < hi:
        mid = (lo + hi) >> 1
        if x < key(a[mid]):
            hi = mid
        else:
            lo = mid + 1
    return lo


def insort(a, item, key):
    a.insert(bisect_right(a, key(item), key), item)
