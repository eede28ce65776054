"""Shared feeds for WatchTop.

However many clients watch a leaderboard, the coordinator reads its top
from the shards once per interval per feed and pushes changes to all of
them. Watchers share a feed when their limits fall in one bucket (10,
100, 1000) and their intervals round up to one step; each gets its own
slice, pushed when that slice changes. So a leaderboard has at most a
few dozen feeds whatever its watchers ask for. A feed stops polling when
its last watcher leaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

from chronoscore.errors import ChronoscoreError, NotFound, Unavailable
from chronoscore.v1 import leaderboard_pb2 as _pb

__all__ = ["Feeds", "Poll"]

logger = logging.getLogger("chronoscore.coordinator")

# Reads the top once: the reply, and the id of the leaderboard read.
Poll = Callable[[str, int], Awaitable[tuple[_pb.EntriesResponse, int]]]
Key = tuple[str, int, float]


@dataclass
class _Feed:
    latest: _pb.EntriesResponse | None = None
    error: ChronoscoreError | None = None
    version: int = 0
    watchers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    task: asyncio.Task[None] | None = None


_LIMITS = (10, 100, 1000)
_INTERVALS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


def _round_up(value: float, steps: tuple[float, ...]) -> float:
    return next((step for step in steps if value <= step), steps[-1])


def _newer_than(feed: _Feed, version: int) -> bool:
    return feed.version > version


class Feeds:
    def __init__(self, poll: Poll) -> None:
        self._poll = poll
        self._feeds: dict[Key, _Feed] = {}

    async def watch(
        self, name: str, limit: int, interval: float
    ) -> AsyncIterator[_pb.EntriesResponse]:
        """Each new top ``limit`` entries; raises the error that ends it.

        ``interval`` (seconds) is a floor: pushes may come less often.
        """
        key = (name, int(_round_up(limit, _LIMITS)), _round_up(interval, _INTERVALS))
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = _Feed()
            feed.task = asyncio.create_task(self._run(key, feed))
        feed.watchers += 1
        seen = 0
        last: tuple[list[_pb.Entry], str] | None = None
        try:
            while True:
                async with feed.changed:
                    await feed.changed.wait_for(partial(_newer_than, feed, seen))
                seen = feed.version
                if feed.error is not None:
                    raise feed.error
                assert feed.latest is not None
                entries = list(feed.latest.entries[:limit])
                mine = (entries, feed.latest.period.label)
                if mine != last:
                    last = mine
                    yield _pb.EntriesResponse(
                        entries=entries,
                        total=feed.latest.total,
                        period=feed.latest.period,
                    )
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]
                assert feed.task is not None
                feed.task.cancel()

    async def _run(self, key: Key, feed: _Feed) -> None:
        name, limit, interval = key
        board_id: int | None = None
        while True:
            started = time.monotonic()
            try:
                reply, read_id = await self._poll(name, limit)
                if board_id is not None and read_id != board_id:
                    raise NotFound(f"leaderboard {name!r} was deleted")
                board_id = read_id
            except Unavailable as exc:
                # A shard is down: keep the last list and try again.
                logger.debug("watch of %s waiting: %s", name, exc)
            except ChronoscoreError as exc:
                await self._publish(feed, error=exc)
                return
            except Exception:
                logger.exception("watch of %s failed", name)
                await self._publish(feed, error=ChronoscoreError("the watch failed"))
                return
            else:
                if reply != feed.latest:
                    await self._publish(feed, reply=reply)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))

    @staticmethod
    async def _publish(
        feed: _Feed,
        *,
        reply: _pb.EntriesResponse | None = None,
        error: ChronoscoreError | None = None,
    ) -> None:
        async with feed.changed:
            if reply is not None:
                feed.latest = reply
            feed.error = error
            feed.version += 1
            feed.changed.notify_all()
