"""Merging per-shard results into global ones."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from itertools import islice

from chronoscore._keys import sort_key
from chronoscore.v1 import shard_pb2 as _shard_pb

__all__ = ["merge_top"]


def _order(entry: _shard_pb.ShardEntry) -> tuple[int, int, str]:
    return sort_key(entry.score, entry.reached_us, entry.user_id)


def merge_top(
    lists: Iterable[Sequence[_shard_pb.ShardEntry]], limit: int
) -> list[_shard_pb.ShardEntry]:
    """The first ``limit`` entries of rank-ordered per-shard lists.

    O(limit log s) for s lists. Each shard owns distinct users, so the
    lists never share an entry and the merge needs no de-duplication.
    """
    return list(islice(heapq.merge(*lists, key=_order), limit))
