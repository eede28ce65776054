"""A shard's state and its write path.

Writes go through one group-commit loop. Requests queue up while the
previous batch commits; the loop then takes everything queued (up to
``max_batch`` updates), computes each result in arrival order, writes
the final rows in one PostgreSQL transaction, and only after the commit
applies them to the in-memory indexes and answers the callers. A failed
commit answers every caller in the batch with an error and leaves the
indexes untouched, so a change is either durable and visible, or
neither.

Reads never wait for PostgreSQL: they are served from the indexes on
the event loop, which the commit loop changes without yielding, so a
reader sees a batch entirely or not at all.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from chronoscore import _keys
from chronoscore._ring import Ring, slot_of
from chronoscore._validate import Update
from chronoscore.errors import (
    ChronoscoreError,
    FailedPrecondition,
    NotFound,
    OutOfRange,
    Unavailable,
)
from chronoscore.v1 import leaderboard_pb2 as _pb

from .index import IndexEntry, LeaderboardIndex
from .lease import ShardLease
from .store import ProfileRow, ScoreRow, Store, is_unavailable

__all__ = ["Shard", "Applied", "Outcome"]

logger = logging.getLogger("chronoscore.shard")


@dataclass(frozen=True, slots=True)
class Applied:
    score: int
    changed: bool


Outcome = Applied | ChronoscoreError


@dataclass(slots=True)
class _Job:
    """One caller's request waiting for the commit loop."""

    updates: list[Update] = field(default_factory=list)
    arrived_us: int = 0
    profile: ProfileRow | None = None
    future: asyncio.Future[list[Outcome]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def size(self) -> int:
        return max(1, len(self.updates))


_STOP = None


class Shard:
    """The users, indexes and profiles of one shard."""

    def __init__(
        self,
        name: str,
        ring: Ring,
        store: Store,
        lease: ShardLease,
        *,
        max_batch: int = 20_000,
    ) -> None:
        if name not in ring.shards:
            raise FailedPrecondition(f"shard {name!r} is not in the ring {ring!r}")
        self.name = name
        self.ring = ring
        self.store = store
        self.lease = lease
        self.max_batch = max_batch
        self.indexes: dict[str, LeaderboardIndex] = {}
        self.profiles: dict[str, str] = {}
        self._last_reached_us = 0
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=10_000)
        self._loop_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store, migrate, rebuild the indexes, start committing."""
        started = time.perf_counter()
        await self.store.open()
        await self.lease.acquire()
        self._lease_task = asyncio.create_task(self.lease.hold())
        await self.store.migrate()
        snapshot = await self.store.load(self.ring.slots_of(self.name))
        self.indexes = snapshot.indexes
        self.profiles = snapshot.profiles
        self._last_reached_us = snapshot.last_reached_us
        self._loop_task = asyncio.create_task(self._commit_loop())
        logger.info(
            "shard %s rebuilt %d entries on %d leaderboards in %.2fs",
            self.name,
            sum(len(i) for i in self.indexes.values()),
            len(self.indexes),
            time.perf_counter() - started,
        )

    async def stop(self) -> None:
        """Commit what is queued, then close the store."""
        if self._loop_task is not None:
            await self._queue.put(_STOP)
            await self._loop_task
            self._loop_task = None
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self.lease.release()
        await self.store.close()

    # Writes

    def check_owner(self, user_id: str) -> None:
        owner = self.ring.owner(user_id)
        if owner != self.name:
            raise FailedPrecondition(
                f"user {user_id!r} belongs to shard {owner!r}, not {self.name!r};"
                " the coordinator's ring differs from this shard's"
            )

    async def apply(self, updates: list[Update], arrived_us: int) -> list[Outcome]:
        """Apply updates in order; one outcome each, once committed."""
        for update in updates:
            self.check_owner(update.user_id)
        if arrived_us <= 0:
            arrived_us = time.time_ns() // 1000
        job = _Job(updates=updates, arrived_us=min(arrived_us, _keys.REACHED_MAX))
        return await self._submit(job)

    async def upsert_user(self, user_id: str, display_name: str) -> None:
        self.check_owner(user_id)
        job = _Job(profile=ProfileRow(user_id, slot_of(user_id), display_name))
        outcomes = await self._submit(job)
        if isinstance(outcomes[0], ChronoscoreError):
            raise outcomes[0]

    async def _submit(self, job: _Job) -> list[Outcome]:
        if self._loop_task is None or self._loop_task.done():
            raise Unavailable(f"shard {self.name} is not accepting writes")
        await self._queue.put(job)
        return await job.future

    async def _commit_loop(self) -> None:
        stopping = False
        while not stopping:
            job = await self._queue.get()
            if job is _STOP:
                break
            jobs = [job]
            size = job.size
            while size < self.max_batch and not self._queue.empty():
                job = self._queue.get_nowait()
                if job is _STOP:
                    stopping = True
                    break
                jobs.append(job)
                size += job.size
            try:
                await self._commit(jobs)
            except Exception:
                # A failure here is a bug, and it may have left memory
                # behind PostgreSQL. Stop taking writes; the server exits
                # and a restart rebuilds the indexes from PostgreSQL.
                logger.critical("shard %s commit loop failed", self.name, exc_info=True)
                error = ChronoscoreError(f"shard {self.name} failed; it will restart")
                for job in jobs:
                    if not job.future.done():
                        job.future.set_result([error] * job.size)
                raise

    @property
    def failed(self) -> asyncio.Future[None]:
        """Completes if the commit loop dies or the shard loses its lease;
        the shard must then exit."""
        assert self._loop_task is not None and self._lease_task is not None
        tasks = (self._loop_task, self._lease_task)

        async def first() -> None:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()

        return asyncio.ensure_future(first())

    async def _commit(self, jobs: list[_Job]) -> None:
        # Results are computed against the indexes plus the changes made
        # earlier in this batch, so a user's second increment in one
        # batch builds on the first.
        pending: dict[tuple[str, str], IndexEntry] = {}
        profiles: dict[str, ProfileRow] = {}
        results: list[list[Outcome]] = []
        for job in jobs:
            if job.profile is not None:
                profiles[job.profile.user_id] = job.profile
                results.append([Applied(0, True)])
            else:
                results.append(
                    [self._compute(u, pending, job.arrived_us) for u in job.updates]
                )

        rows = [
            ScoreRow(board, user, slot_of(user), entry.score, entry.reached_us)
            for (board, user), entry in pending.items()
        ]
        try:
            await self.store.write(rows, list(profiles.values()))
        except Exception as exc:
            error = self._commit_error(exc)
            for job in jobs:
                if not job.future.done():
                    job.future.set_result([error] * job.size)
            return

        for (board, _), entry in pending.items():
            self.indexes.setdefault(board, LeaderboardIndex()).upsert(*entry)
        for profile in profiles.values():
            self.profiles[profile.user_id] = profile.display_name
        for job, outcome in zip(jobs, results, strict=True):
            if not job.future.done():
                job.future.set_result(outcome)

    def _commit_error(self, exc: Exception) -> ChronoscoreError:
        if is_unavailable(exc):
            logger.warning("shard %s could not commit: %s", self.name, exc)
            return Unavailable(f"shard {self.name}: PostgreSQL is unavailable")
        logger.exception("shard %s commit failed", self.name)
        return ChronoscoreError(f"shard {self.name}: commit failed: {exc}")

    def _compute(
        self,
        update: Update,
        pending: dict[tuple[str, str], IndexEntry],
        arrived_us: int,
    ) -> Outcome:
        key = (update.leaderboard, update.user_id)
        current = pending.get(key)
        if current is None and update.leaderboard in self.indexes:
            current = self.indexes[update.leaderboard].get(update.user_id)

        if update.mode == _pb.SCORE_MODE_INCREMENT:
            base = 0 if current is None else current.score
            score = base + update.score
            if not _keys.SCORE_MIN <= score <= _keys.SCORE_MAX:
                return OutOfRange(
                    f"adding {update.score} to {update.user_id!r}'s score {base}"
                    f" on {update.leaderboard!r} would leave the int64 range"
                )
        elif update.mode == _pb.SCORE_MODE_BEST and current is not None:
            score = max(current.score, update.score)
        else:
            score = update.score

        # An unchanged score keeps its time, so the user keeps their
        # place among equal scores.
        if current is not None and current.score == score:
            return Applied(score, False)
        pending[key] = IndexEntry(update.user_id, score, self._stamp(arrived_us))
        return Applied(score, True)

    def _stamp(self, arrived_us: int) -> int:
        """A reached time no earlier than arrival and unique on this shard."""
        self._last_reached_us = max(arrived_us, self._last_reached_us + 1)
        return self._last_reached_us

    # Reads

    def index(self, leaderboard: str) -> LeaderboardIndex:
        return self.indexes.get(leaderboard) or _EMPTY

    def lookup(self, leaderboard: str, user_id: str) -> tuple[IndexEntry, int]:
        """The user's entry and the entries ahead of it on this shard."""
        index = self.index(leaderboard)
        entry = index.get(user_id)
        if entry is None:
            raise NotFound(f"user {user_id!r} has no entry on {leaderboard!r}")
        ahead = index.rank_of(user_id)
        assert ahead is not None
        return entry, ahead


_EMPTY = LeaderboardIndex()
