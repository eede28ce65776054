"""Reads that span shards: top, rank, page, around, and friends' lists.

Every shard holds a rank-ordered index of the users it owns. A user's
global position is the sum over shards of the entries ahead of them,
and every shard can count that for any position in O(log n), so exact
global ranks cost one round of calls. Pages at any offset are found by
a search over those counts (see :meth:`Reader.page`), not by pulling
offset + limit entries from every shard.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import islice
from typing import Any

from chronoscore._keys import sort_key, sort_keys
from chronoscore._validate import MAX_LIMIT
from chronoscore.errors import NotFound, Unavailable
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import shard_pb2 as _shard_pb

from .catalog import Board
from .shards import ShardClients

__all__ = ["Reader", "Ranked", "Moved", "Sketches", "merge", "to_entries"]

# Entries each shard offers in the first round of a page search, and
# beyond the page's own length in later rounds (see Reader.page).
_FIRST_COUNT = 256
_MORE_COUNT = 64

# Pages that end within this many entries are cut from merged top lists.
_SHALLOW = 256

# The search ends once the range holds at most the page and this many
# entries more, over all shards: then each shard sends its part whole.
_WHOLE_SLACK = 512

# The search ends in three rounds or so unless writes keep moving the
# entries; then it gives up with Moved.
_MAX_ROUNDS = 12


@dataclass(slots=True)
class _Sketch:
    replies: list[_shard_pb.BetweenReply]
    keys: list[list[tuple[int, int, str]]]


class Sketches:
    """Recent first rounds of page searches, as hints for the next ones.

    A first round (256 entries spread over each shard) tells the search
    where any offset lies. Reusing one for ``ttl`` seconds saves later
    deep pages a round. A hint only chooses where the search looks:
    each answer is still checked against what the shards report in its
    own round, so a stale hint can cost a round, never a wrong page.
    """

    def __init__(self, ttl: float = 1.0, size: int = 256) -> None:
        self.ttl = ttl
        self.size = size
        self._kept: OrderedDict[tuple[int, int, int], tuple[float, _Sketch]] = (
            OrderedDict()
        )

    def get(self, key: tuple[int, int, int]) -> _Sketch | None:
        kept = self._kept.get(key)
        if kept is None or time.monotonic() - kept[0] > self.ttl:
            return None
        return kept[1]

    def put(
        self,
        key: tuple[int, int, int],
        replies: list[_shard_pb.BetweenReply],
        keys: list[list[tuple[int, int, str]]],
    ) -> None:
        self._kept[key] = (time.monotonic(), _Sketch(replies, keys))
        self._kept.move_to_end(key)
        while len(self._kept) > self.size:
            self._kept.popitem(last=False)


class Moved(Unavailable):
    """An entry moved between the steps of a read; reading again helps."""


@dataclass(frozen=True, slots=True)
class Ranked:
    """An entry with its 0-based global position."""

    entry: _shard_pb.ShardEntry
    position: int


def merge(
    lists: Iterable[Sequence[_shard_pb.ShardEntry]], ascending: bool
) -> list[_shard_pb.ShardEntry]:
    """Merge rank-ordered per-shard lists. O(m log s) for m entries.

    Each shard owns distinct users, so the lists never share an entry
    and the merge needs no de-duplication.
    """

    def order(e: _shard_pb.ShardEntry) -> tuple[int, int, str]:
        return sort_key(e.score, e.reached_us, e.user_id, ascending)

    return list(heapq.merge(*lists, key=order))


def _position(entry: _shard_pb.ShardEntry) -> _shard_pb.Position:
    return _shard_pb.Position(
        score=entry.score, reached_us=entry.reached_us, user_id=entry.user_id
    )


class Reader:
    """Cross-shard reads of one period of one leaderboard."""

    def __init__(
        self,
        shards: ShardClients,
        board: Board,
        period: _shard_pb.BoardPeriod,
        sketches: Sketches | None = None,
    ) -> None:
        self.shards = shards
        self.board = board
        self.period = period
        self.sketches = sketches or Sketches(ttl=0)
        # One placement for every call of this read, so each slot is
        # counted on exactly one shard; shards that own other slots by
        # now refuse with WrongShard, and the read starts over.
        self.placement = shards.placement

    async def _each(self, method: str, requests: object) -> dict[str, Any]:
        if isinstance(requests, dict):
            return await self.shards.each(
                method, requests, shards=list(requests), placement=self.placement
            )
        return await self.shards.each(method, requests, placement=self.placement)

    def _from_start(self) -> dict[str, int]:
        return dict.fromkeys(self.placement.holders, 0)

    async def top(self, limit: int) -> tuple[list[Ranked], int]:
        """The first ``limit`` entries and the total. One round of calls."""
        return await self._slice(self._from_start(), 0, limit)

    async def rank(self, user_id: str) -> tuple[Ranked, int, int]:
        """(entry with position, shared rank, total).

        Two rounds: the owner finds the entry and counts its own side;
        then every other shard counts the entries ahead of it.
        """
        entry, total = await self._lookup(user_id)
        ahead, better = entry.position, entry.better
        others = [
            n for n in self.placement.holders if n != self.placement.owner(user_id)
        ]
        if others:
            request = _shard_pb.CountRequest(
                board=self.period, positions=[_position(entry)]
            )
            replies = await self._each("Count", dict.fromkeys(others, request))
            for reply in replies.values():
                ahead += reply.counts[0].ahead
                better += reply.counts[0].better
                total += reply.total
        return Ranked(entry, ahead), better + 1, total

    async def lookup(self, user_id: str) -> _shard_pb.ShardEntry:
        entry, _ = await self._lookup(user_id)
        return entry

    async def _lookup(self, user_id: str) -> tuple[_shard_pb.ShardEntry, int]:
        """The user's entry from its owner, and the owner's total."""
        owner = self.placement.owner(user_id)
        reply = await self.shards.call(
            owner,
            "Lookup",
            _shard_pb.LookupRequest(board=self.period, user_ids=[user_id]),
            placement=self.placement,
        )
        if not reply.entries:
            raise NotFound(
                f"user {user_id!r} has no entry on {self.board.name!r} in this period"
            )
        entry: _shard_pb.ShardEntry = reply.entries[0]
        return entry, int(reply.total)

    async def count(
        self, positions: list[_shard_pb.Position]
    ) -> tuple[list[tuple[int, int]], int]:
        """Global (ahead, better) for each position, and the total."""
        replies = await self._counts(positions)
        sums = [(0, 0)] * len(positions)
        for reply in replies.values():
            sums = [
                (a + c.ahead, b + c.better)
                for (a, b), c in zip(sums, reply.counts, strict=True)
            ]
        return sums, sum(r.total for r in replies.values())

    async def _counts(
        self, positions: list[_shard_pb.Position]
    ) -> dict[str, _shard_pb.CountReply]:
        """Every shard's counts ahead of each position. One round of calls."""
        return await self._each(
            "Count", _shard_pb.CountRequest(board=self.period, positions=positions)
        )

    async def page(self, offset: int, limit: int) -> tuple[list[Ranked], int]:
        """Entries at global positions [offset, offset + limit), and the total.

        Shallow pages are cut from merged top lists. Deeper ones narrow,
        round by round, a range between two places in the ranking that
        must hold the page, until every shard can send all its entries
        in the range; one round costs one call per shard.

        Each round, every shard reports where the range starts and ends
        in its own index, and sends up to ``count`` entries spread over
        it. An entry sent by one shard has an exact position there and,
        on every other shard, lies between two of that shard's entries,
        whose positions bound its count there. Summed, that bounds the
        entry's global position. The next range runs from the last entry
        surely at or before ``offset`` to the first surely at or after the
        page's end. With s shards of n entries, the first round leaves a
        range of about 2 s n / 256 entries, the next of 2 s / 64 of that
        plus the page. Sampling rounds send only what places an entry,
        without names or metadata. Once the range can hold no more than
        the page and 512 entries, a last round has every shard send all
        of its part of the range, whole, and the merge holds the page. A
        million entries take three rounds, each O(count log n) on a
        shard, whatever the offset; two while the first round of a page
        search in the last second is kept (see Sketches).
        """
        if offset + limit <= _SHALLOW:
            ranked, total = await self._slice(self._from_start(), 0, offset + limit)
            return ranked[offset:], total

        ascending = self.board.ascending
        lo: _shard_pb.Position | None = None
        hi: _shard_pb.Position | None = None
        count = _FIRST_COUNT
        # Whether the round asks for whole entries, names and all, or
        # only for what places them.
        whole = False
        key = (
            self.period.board_id,
            self.period.period_start_us,
            self.placement.version,
        )
        hint = self.sketches.get(key)
        if hint is not None and offset < sum(r.total for r in hint.replies):
            want = min(offset + limit, sum(r.total for r in hint.replies))
            hinted = _narrow(hint.replies, hint.keys, offset, want, lo, hi)
            lo, hi = hinted.lo, hinted.hi
            count, whole = _next_count(hinted.span, limit)
        for _ in range(_MAX_ROUNDS):
            replies = list((await self._between(lo, hi, count, whole)).values())
            keys = [sort_keys(r.entries, ascending) for r in replies]
            if lo is None and hi is None and count == _FIRST_COUNT:
                self.sketches.put(key, replies, keys)
            total = sum(r.total for r in replies)
            if offset >= total:
                return [], total
            start = sum(r.start for r in replies)
            want = min(offset + limit, total)
            if start > offset or sum(r.end for r in replies) < want:
                # Writes moved entries past the range since the last
                # round: search again from the whole ranking.
                lo = hi = None
                count, whole = _FIRST_COUNT, False
                continue
            if all(len(r.entries) == r.end - r.start for r in replies):
                if whole:
                    return self._cut(replies, start, offset, limit), total
                # All of the range came, but without names: again, whole.
                count = max(r.end - r.start for r in replies)
                whole = True
                continue
            narrowed = _narrow(replies, keys, offset, want, lo, hi)
            lo, hi = narrowed.lo, narrowed.hi
            count, whole = _next_count(narrowed.span, limit)
        raise Moved("writes kept moving entries while the page was found; try again")

    def _cut(
        self,
        replies: Sequence[_shard_pb.BetweenReply | _shard_pb.EntriesReply],
        first: int,
        offset: int,
        limit: int,
    ) -> list[Ranked]:
        """The page from every shard's consecutive entries, the first of
        which, merged, is at global position ``first``."""
        merged = merge([list(r.entries) for r in replies], self.board.ascending)
        page = merged[offset - first : offset - first + limit]
        return [Ranked(e, offset + i) for i, e in enumerate(page)]

    async def _between(
        self,
        lo: _shard_pb.Position | None,
        hi: _shard_pb.Position | None,
        count: int,
        whole: bool,
    ) -> dict[str, _shard_pb.BetweenReply]:
        request = _shard_pb.BetweenRequest(
            board=self.period, count=count, places_only=not whole
        )
        if lo is not None:
            request.lo.CopyFrom(lo)
        if hi is not None:
            request.hi.CopyFrom(hi)
        return await self._each("Between", request)

    async def around(
        self, user_id: str, above: int, below: int
    ) -> tuple[list[Ranked], int, Ranked]:
        """A window of above + 1 + below entries holding the user.

        At either end of the ranking the window shifts so it stays full
        (when there are enough entries), and it never repeats or skips a
        user. Two rounds of calls: the owner finds the entry, then every
        shard sends the entries around the place it holds there.
        """
        entry = await self.lookup(user_id)
        # Any entry within `reach` global positions of the user is within
        # `reach` local positions on its shard, so these slices hold the
        # whole window.
        reach = above + below
        replies = await self._each(
            "Range",
            _shard_pb.RangeRequest(
                board=self.period,
                around=_position(entry),
                before=reach,
                limit=min(2 * reach + 1, MAX_LIMIT),
            ),
        )
        total = sum(r.total for r in replies.values())
        position = sum(r.ahead for r in replies.values())
        width = above + below + 1
        start = max(0, min(position - above, total - width))
        merged = merge(
            [list(r.entries) for r in replies.values()], self.board.ascending
        )
        me = next((i for i, e in enumerate(merged) if e.user_id == user_id), None)
        if me is None:
            raise Moved(f"user {user_id!r} moved while the window was read; try again")
        first = max(0, me - (position - start))
        window = [
            Ranked(e, start + i) for i, e in enumerate(merged[first : first + width])
        ]
        return window, total, Ranked(entry, position)

    async def entries(
        self, user_ids: list[str]
    ) -> tuple[list[tuple[Ranked, int]], list[str], int]:
        """Given users' entries with (position, shared rank), best first.

        Returns the ranked entries, the users without one, and the total.
        Two rounds of calls.
        """
        by_owner: dict[str, list[str]] = {}
        for user in user_ids:
            by_owner.setdefault(self.placement.owner(user), []).append(user)
        replies = await self._each(
            "Lookup",
            {
                owner: _shard_pb.LookupRequest(board=self.period, user_ids=users)
                for owner, users in by_owner.items()
            },
        )
        found = [e for reply in replies.values() for e in reply.entries]
        names = {e.user_id for e in found}
        missing = [u for u in user_ids if u not in names]
        if not found:
            _, total = await self.count([])
            return [], missing, total

        counts, total = await self.count([_position(e) for e in found])
        pairs = sorted(
            zip(found, counts, strict=True),
            key=lambda p: sort_key(
                p[0].score, p[0].reached_us, p[0].user_id, self.board.ascending
            ),
        )
        # The counts of each entry come from a slightly different moment
        # while writes go on; keep positions strictly increasing in list
        # order so one answer never gives two users the same place.
        ranked: list[tuple[Ranked, int]] = []
        for entry, (ahead, better) in pairs:
            if ranked and ahead <= ranked[-1][0].position:
                ahead = ranked[-1][0].position + 1
            ranked.append((Ranked(entry, ahead), better + 1))
        return ranked, missing, total

    async def shared_rank_of_score(self, score: int) -> int:
        """1 + the entries with a strictly better score than ``score``."""
        counts, _ = await self.count(
            [_shard_pb.Position(score=score, reached_us=0, user_id="")]
        )
        return counts[0][1] + 1

    async def _slice(
        self, starts: dict[str, int], offset: int, limit: int
    ) -> tuple[list[Ranked], int]:
        """Merge ``limit`` entries read from ``starts`` on every shard.

        ``starts`` must be each shard's count of entries ahead of global
        position ``offset``.
        """
        if limit <= 0:
            _, total = await self.count([])
            return [], total
        lists, total = await self._ranges(starts, limit)
        merged = merge(lists.values(), self.board.ascending)
        ranked = [Ranked(e, offset + i) for i, e in enumerate(islice(merged, limit))]
        return ranked, total

    async def _ranges(
        self, starts: dict[str, int], limit: int
    ) -> tuple[dict[str, list[_shard_pb.ShardEntry]], int]:
        replies = await self._each(
            "Range",
            {
                name: _shard_pb.RangeRequest(
                    board=self.period, start=start, limit=min(limit, 1000)
                )
                for name, start in starts.items()
            },
        )
        total = sum(r.total for r in replies.values())
        return {name: list(r.entries) for name, r in replies.items()}, total


@dataclass(slots=True)
class _Narrowed:
    lo: _shard_pb.Position | None
    hi: _shard_pb.Position | None
    # The most entries the range [lo, hi) can hold, over all shards.
    span: int


def _narrow(
    replies: list[_shard_pb.BetweenReply],
    keys: list[list[tuple[int, int, str]]],
    offset: int,
    want: int,
    lo: _shard_pb.Position | None,
    hi: _shard_pb.Position | None,
) -> _Narrowed:
    """A narrower range that still holds global positions [offset, want);
    ``keys`` are the sort keys of each reply's entries.

    See :meth:`Reader.page`. Bounds grow with an entry's place, so each
    shard's entries are binary-searched: O(s² log count) for s shards.
    """

    def bounds(j: int, k: int) -> tuple[int, int]:
        """Least and most entries ahead of shard j's k-th entry."""
        key = keys[j][k]
        least = most = replies[j].entries[k].position
        for i, reply in enumerate(replies):
            if i == j:
                continue
            # Shard i's sent entries before `below` are ahead of the key.
            below = bisect_left(keys[i], key)
            sent = reply.entries
            least += sent[below - 1].position + 1 if below else reply.start
            most += sent[below].position if below < len(sent) else reply.end
        return least, most

    # The last sent entry surely at or before `offset`, and the first
    # surely at or past `want`, over all shards.
    lows: list[tuple[tuple[int, int, str], int, int]] = []
    highs: list[tuple[tuple[int, int, str], int, int]] = []
    for j, shard_keys in enumerate(keys):
        n = len(shard_keys)
        k = _first_true(n, partial(lambda j, k: bounds(j, k)[1] > offset, j)) - 1
        if k >= 0:
            lows.append((shard_keys[k], j, k))
        k = _first_true(n, partial(lambda j, k: bounds(j, k)[0] >= want, j))
        if k < n:
            highs.append((shard_keys[k], j, k))
    # Exact for the range's own ends, bounds for the sent entries.
    least = sum(r.start for r in replies)
    most = sum(r.end for r in replies)
    if lows:
        _, j, k = max(lows)
        lo = _position(replies[j].entries[k])
        least = bounds(j, k)[0]
    if highs:
        _, j, k = min(highs)
        hi = _position(replies[j].entries[k])
        most = bounds(j, k)[1]
    return _Narrowed(lo, hi, most - least)


def _next_count(span: int, limit: int) -> tuple[int, bool]:
    """How many entries each shard sends in the next round of a page
    search whose range holds at most ``span`` entries, and whether they
    are whole: all of them if that is few, else a sample to narrow by."""
    if span <= limit + _WHOLE_SLACK:
        return max(span, 1), True
    return limit + _MORE_COUNT, False


def _first_true(n: int, test: Callable[[int], bool]) -> int:
    """The least k in [0, n) with test(k), or n; ``test`` must be
    monotonic (false, then true)."""
    low, high = 0, n
    while low < high:
        middle = (low + high) // 2
        if test(middle):
            high = middle
        else:
            low = middle + 1
    return low


def to_entries(
    board: Board, ranked: list[Ranked], first_shared: int | None
) -> list[_pb.Entry]:
    """Public entries; ``first_shared`` is the first one's shared rank.

    With shared ranks, an entry whose score equals the one before it
    takes that entry's rank; any other takes its own position + 1.
    """
    out = []
    rank = 0
    previous: int | None = None
    for i, item in enumerate(ranked):
        e = item.entry
        if not board.shared_ranks:
            rank = item.position + 1
        elif i == 0:
            rank = first_shared or item.position + 1
        elif e.score != previous:
            rank = item.position + 1
        previous = e.score
        out.append(
            _pb.Entry(
                rank=rank,
                user_id=e.user_id,
                display_name=e.display_name,
                score=e.score,
                metadata=e.metadata,
            )
        )
    return out
