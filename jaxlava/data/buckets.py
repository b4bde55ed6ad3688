"""Sequence-length buckets: the one rule that keeps shapes static (a few compiled programs, none after warm-up).

`bucket_length(n)`: powers of two from `minimum` up to `multiple`, then multiples of `multiple` (the sampler's
prompt buckets).  `bucket_length(n, buckets)`: the smallest of the given buckets that holds n (the pipelines'
batch lengths; a longer n gets the largest bucket, and the pipelines filter such records out beforehand).
"""
from __future__ import annotations

from typing import Sequence

DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048)


def bucket_length(n: int, buckets: Sequence[int] | None = None, *, multiple: int = 64, minimum: int = 16) -> int:
    if buckets is not None:
        for b in sorted(buckets):
            if n <= b:
                return b
        return max(buckets)
    if n <= multiple:
        b = minimum
        while b < n:
            b *= 2
        return b
    return -(-n // multiple) * multiple
