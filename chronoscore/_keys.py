"""The total order of leaderboard entries, and its integer encoding.

Entries rank by:

1. the better score first: higher on a descending leaderboard, lower on
   an ascending one;
2. on equal scores, the earlier ``reached_us`` (when the user reached
   that score, in microseconds since the Unix epoch);
3. then the smaller user id, compared as UTF-8 bytes (PostgreSQL's
   ``COLLATE "C"``, which for UTF-8 equals code point order).

Both orders map a score to a *rank score* in [0, 2**64) that is smaller
for better scores. Shard indexes hold each entry as one Python int whose
natural order is rank order, so the sorted index compares plain ints::

    bits:  [ 64: rank score ][ 64: reached_us ][ 16: tie ][ 32: handle ]

``tie`` orders the rare entries of one shard that share both score and
``reached_us`` by user id, and ``handle`` names the user inside its
index. Scores are exact signed 64-bit integers and never pass through
float.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = [
    "SCORE_MIN",
    "SCORE_MAX",
    "REACHED_MAX",
    "TIE_LIMIT",
    "HANDLE_LIMIT",
    "rank_score",
    "prefix",
    "make_key",
    "make_keys",
    "with_tie",
    "key_prefix",
    "key_prefixes",
    "key_handle",
    "key_score",
    "key_reached",
    "prefix_floor",
    "score_floor",
    "sort_key",
    "sort_keys",
    "is_better",
]

SCORE_MIN = -(1 << 63)
SCORE_MAX = (1 << 63) - 1
REACHED_MAX = (1 << 63) - 1

_HANDLE_BITS = 32
_TIE_BITS = 16
_LOW_BITS = _HANDLE_BITS + _TIE_BITS
_REACHED_BITS = 64

TIE_LIMIT = 1 << _TIE_BITS
HANDLE_LIMIT = 1 << _HANDLE_BITS
_HANDLE_MASK = HANDLE_LIMIT - 1
_REACHED_MASK = (1 << _REACHED_BITS) - 1


def rank_score(score: int, ascending: bool) -> int:
    """Map a score into [0, 2**64), smaller meaning better. O(1)."""
    return score - SCORE_MIN if ascending else SCORE_MAX - score


def _unrank(value: int, ascending: bool) -> int:
    return value + SCORE_MIN if ascending else SCORE_MAX - value


def is_better(a: int, b: int, ascending: bool) -> bool:
    """Whether score ``a`` ranks strictly ahead of score ``b``."""
    return a < b if ascending else a > b


def prefix(score: int, reached_us: int, ascending: bool) -> int:
    """The order-preserving int for (score, reached_us). O(1)."""
    return (rank_score(score, ascending) << _REACHED_BITS) | reached_us


def make_key(
    score: int, reached_us: int, tie: int, handle: int, ascending: bool
) -> int:
    """An index key; ``tie`` and ``handle`` must be below their limits."""
    low = (tie << _HANDLE_BITS) | handle
    return (prefix(score, reached_us, ascending) << _LOW_BITS) | low


def make_keys(
    scores: Sequence[int], reached: Sequence[int], ascending: bool
) -> list[int]:
    """Keys with tie 0 and handle i for the i-th (score, reached_us). O(n).

    The same keys as :func:`make_key` builds one at a time, for loading
    whole indexes.
    """
    if len(scores) != len(reached):
        raise ValueError("scores and reached differ in length")
    if len(scores) > HANDLE_LIMIT:
        raise OverflowError(f"an index holds at most {HANDLE_LIMIT} users")
    if ascending:
        return [
            ((s - SCORE_MIN) << _REACHED_BITS | r) << _LOW_BITS | i
            for i, (s, r) in enumerate(zip(scores, reached, strict=True))
        ]
    return [
        ((SCORE_MAX - s) << _REACHED_BITS | r) << _LOW_BITS | i
        for i, (s, r) in enumerate(zip(scores, reached, strict=True))
    ]


def with_tie(key: int, tie: int) -> int:
    """``key`` with its tie field set to ``tie``."""
    return key & ~((TIE_LIMIT - 1) << _HANDLE_BITS) | tie << _HANDLE_BITS


def key_prefix(key: int) -> int:
    """The (score, reached_us) part of a key, as from :func:`prefix`."""
    return key >> _LOW_BITS


def key_prefixes(keys: Iterable[int]) -> list[int]:
    """:func:`key_prefix` of each key, in one pass, for whole indexes."""
    return [key >> _LOW_BITS for key in keys]


def key_handle(key: int) -> int:
    return key & _HANDLE_MASK


def key_score(key: int, ascending: bool) -> int:
    return _unrank(key >> (_LOW_BITS + _REACHED_BITS), ascending)


def key_reached(key: int) -> int:
    return (key >> _LOW_BITS) & _REACHED_MASK


def prefix_floor(score: int, reached_us: int, ascending: bool) -> int:
    """The smallest key with this (score, reached_us)."""
    return prefix(score, reached_us, ascending) << _LOW_BITS


def score_floor(score: int, ascending: bool) -> int:
    """The smallest key with this score: every key below has a better one."""
    return prefix_floor(score, 0, ascending)


def sort_key(
    score: int, reached_us: int, user_id: str, ascending: bool
) -> tuple[int, int, str]:
    """A tuple that sorts entries from any shards in rank order."""
    return (rank_score(score, ascending), reached_us, user_id)


def sort_keys(entries: Iterable[Any], ascending: bool) -> list[tuple[int, int, str]]:
    """:func:`sort_key` of each entry (anything with ``score``,
    ``reached_us`` and ``user_id``), in one pass."""
    if ascending:
        return [(e.score - SCORE_MIN, e.reached_us, e.user_id) for e in entries]
    return [(SCORE_MAX - e.score, e.reached_us, e.user_id) for e in entries]
