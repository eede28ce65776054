"""Top lists that the shards push, so top-N reads need no fan-out.

The first time a leaderboard period's top is read, the coordinator
starts following it: every shard that owns slots streams its first
``FOLLOWED`` entries (``ShardService.FollowTop``), now and after every
commit. Later reads of up to ``FOLLOWED`` entries merge those lists in
memory, one RPC in all instead of one per shard.

A pushed list is used only while it is provably as good as asking the
shard:

- its slots digest equals the one the current placement gives the
  shard, so no user is counted on two shards while slots move;
- its generation is at least the one the shard reported after the last
  write this coordinator saw acknowledged there, so a caller reads its
  own writes (a write that arrived through another coordinator shows up
  within one push, moments later);
- its stream is open: a shard that stops or goes away takes its list
  with it, and reads fall back to asking every shard, which fails with
  UNAVAILABLE while it is down.

When a list is only behind by a push in flight, a read waits for it up
to ``_FRESH_WAIT`` seconds; otherwise, or after that, it asks the shards
as if nothing were followed. A period nobody has read for ``_IDLE``
seconds is no longer followed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from grpc import aio

from chronoscore._metrics import TOP_READS
from chronoscore._placement import Placement
from chronoscore._ring import SHARD_HEADER
from chronoscore.errors import Unavailable
from chronoscore.v1 import shard_pb2 as _shard_pb

from .queries import merge
from .shards import ShardClients

__all__ = ["FOLLOWED", "Top", "Tops"]

logger = logging.getLogger("chronoscore.coordinator")

# Entries followed per shard; GetTop with a larger limit asks the shards.
FOLLOWED = 100

_FRESH_WAIT = 0.05
_IDLE = 60.0
_FIRST_RETRY = 0.2
_LAST_RETRY = 2.0

Key = tuple[int, int, bool]


@dataclass(slots=True)
class _Pushed:
    entries: list[_shard_pb.ShardEntry]
    total: int
    generation: int
    digest: str


@dataclass(slots=True)
class Top:
    """The merged pushed lists of one period under one placement."""

    version: int
    entries: list[_shard_pb.ShardEntry]
    total: int
    # Whatever callers derive from this top (finished replies, say),
    # kept as long as it is current.
    memo: dict[object, object] = field(default_factory=dict)


@dataclass
class _Followed:
    period: _shard_pb.BoardPeriod
    read_at: float
    pushed: dict[str, _Pushed] = field(default_factory=dict)
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # Set, and replaced, on every push.
    pushed_event: asyncio.Event = field(default_factory=asyncio.Event)
    # The merge of `pushed` for one placement version, until a push.
    merged: Top | None = None

    def push(self, shard: str, pushed: _Pushed | None) -> None:
        if pushed is None:
            self.pushed.pop(shard, None)
        else:
            self.pushed[shard] = pushed
        self.merged = None
        self.pushed_event.set()
        self.pushed_event = asyncio.Event()


class Tops:
    """Followed top lists of the periods being read, per shard."""

    def __init__(self, shards: ShardClients) -> None:
        self.shards = shards
        self._followed: dict[Key, _Followed] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def top(self, period: _shard_pb.BoardPeriod, limit: int) -> Top | None:
        """The merged pushed lists, holding at least the first ``limit``
        entries, or None when they cannot answer now and the caller must
        ask the shards. O(s) for s shards once merged."""
        if limit > FOLLOWED:
            return None
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep())
        now = time.monotonic()
        key = (period.board_id, period.period_start_us, period.ascending)
        followed = self._followed.get(key)
        fresh = followed is None
        if followed is None:
            followed = self._followed[key] = _Followed(period, now)
        followed.read_at = now
        placement = self.shards.placement
        self._follow_holders(followed, placement)

        answer = self._answer(followed, placement, limit)
        if answer is None and not fresh:
            # A push for the latest write may be on its way.
            event = followed.pushed_event
            try:
                await asyncio.wait_for(event.wait(), _FRESH_WAIT)
            except TimeoutError:
                pass
            answer = self._answer(followed, self.shards.placement, limit)
        TOP_READS.labels("pushed" if answer is not None else "fan-out").inc()
        return answer

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for key in list(self._followed):
            self._unfollow(key)

    def _answer(
        self, followed: _Followed, placement: Placement, limit: int
    ) -> Top | None:
        written = self.shards.written
        for name in placement.holders:
            pushed = followed.pushed.get(name)
            if (
                pushed is None
                or pushed.digest != placement.digest(name)
                or pushed.generation < written.get(name, 0)
            ):
                return None
        merged = followed.merged
        if merged is None or merged.version != placement.version:
            lists = [followed.pushed[n].entries for n in placement.holders]
            total = sum(followed.pushed[n].total for n in placement.holders)
            entries = merge(lists, followed.period.ascending)[:FOLLOWED]
            merged = followed.merged = Top(placement.version, entries, total)
        return merged

    def _follow_holders(self, followed: _Followed, placement: Placement) -> None:
        for name in placement.holders:
            task = followed.tasks.get(name)
            if task is None or task.done():
                following = self._follow(followed, name)
                followed.tasks[name] = asyncio.create_task(following)

    async def _follow(self, followed: _Followed, shard: str) -> None:
        """Keep ``followed.pushed[shard]`` current while the shard holds
        slots; reconnect, with a growing delay, when its stream ends."""
        request = _shard_pb.FollowTopRequest(board=followed.period, limit=FOLLOWED)
        delay = _FIRST_RETRY
        while shard in self.shards.placement.holders:
            try:
                call = self.shards.stub(shard).FollowTop(
                    request, metadata=((SHARD_HEADER, shard),)
                )
                entries: list[_shard_pb.ShardEntry] = []
                async for snapshot in call:
                    if not snapshot.unchanged:
                        entries = list(snapshot.entries)
                    followed.push(
                        shard,
                        _Pushed(
                            entries,
                            snapshot.total,
                            snapshot.generation,
                            snapshot.slots_digest,
                        ),
                    )
                    delay = _FIRST_RETRY
                logger.debug("shard %s ended its top stream", shard)
            except (aio.AioRpcError, Unavailable) as exc:
                logger.debug("top stream from shard %s failed: %s", shard, exc)
            followed.push(shard, None)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _LAST_RETRY)
        followed.push(shard, None)

    async def _sweep(self) -> None:
        """Stop following periods nobody has read for a while."""
        while True:
            await asyncio.sleep(_IDLE / 4)
            now = time.monotonic()
            for key, followed in list(self._followed.items()):
                if now - followed.read_at > _IDLE:
                    self._unfollow(key)

    def _unfollow(self, key: Key) -> None:
        followed = self._followed.pop(key)
        for task in followed.tasks.values():
            task.cancel()
