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

The slots a shard owns can change while it runs (see
``chronoscore._placement``). A change reaches the shard as a job in the
same loop: it loads the slots it gained from PostgreSQL, drops the ones
it lost, and only then takes the next batch. Every commit checks in its
transaction that the shard's slots have not changed since; if they
have, the batch is computed again against the new ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from psycopg.errors import DeadlockDetected, SerializationFailure

from chronoscore import _keys, _placement
from chronoscore._db import is_unavailable
from chronoscore._metrics import COMMIT_LAG, COMMIT_SECONDS, COMMIT_UPDATES
from chronoscore._placement import holding_digest
from chronoscore._ring import slot_of
from chronoscore.errors import (
    ChronoscoreError,
    InvalidArgument,
    OutOfRange,
    Unavailable,
    WrongShard,
)
from chronoscore.v1 import leaderboard_pb2 as _pb

from .index import IndexEntry, LeaderboardIndex
from .lease import ShardLease
from .store import (
    Batch,
    BoardKey,
    EpochChanged,
    ProfileRow,
    Removal,
    RequestRow,
    ScoreRow,
    Snapshot,
    Store,
    Superseded,
)

__all__ = ["Shard", "Write", "Applied", "Outcome"]

logger = logging.getLogger("chronoscore.shard")

# Request ids are answered from PostgreSQL for at least this long.
REQUEST_RETENTION_HOURS = 48
_RECENT_REQUESTS = 100_000
_MAX_CLOCK_LEAD_US = 60_000_000
# How often a shard tells PostgreSQL it is alive, in seconds.
_HEARTBEAT_EVERY = 5.0


@dataclass(frozen=True, slots=True)
class Write:
    """One score update, resolved by the coordinator."""

    board: BoardKey
    ascending: bool
    user_id: str
    score: int
    mode: int
    metadata: bytes | None = None
    request_id: str = ""
    arrived_us: int = 0


@dataclass(frozen=True, slots=True)
class Applied:
    score: int
    changed: bool
    period_start_us: int
    replayed: bool = False


Outcome = Applied | ChronoscoreError | int


@dataclass(frozen=True, slots=True)
class _Prune:
    board_id: int
    before_us: int  # < 0 drops the whole board


@dataclass(slots=True)
class _Job:
    """One caller's request waiting for the commit loop."""

    writes: list[Write] = field(default_factory=list)
    arrived_us: int = 0
    queued_at: float = field(default_factory=time.perf_counter)
    profile: ProfileRow | None = None
    removal: Removal | None = None
    prune: _Prune | None = None
    relayout: bool = False
    future: asyncio.Future[list[Outcome]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def size(self) -> int:
        return max(1, len(self.writes))

    @property
    def alone(self) -> bool:
        """Whether the job commits in a batch of its own: a prune, so no
        write in its batch lands in a period it drops, or a relayout."""
        return self.prune is not None or self.relayout


@dataclass(frozen=True, slots=True)
class _Change:
    """An entry's state after the batch: None in ``entry`` removes it."""

    entry: IndexEntry | None
    ascending: bool
    metadata: bytes | None = None


_STOP = None


class Shard:
    """The users, indexes and profiles of one shard."""

    def __init__(
        self,
        name: str,
        store: Store,
        lease: ShardLease,
        *,
        ring: Sequence[str] = (),
        max_batch: int = 20_000,
    ) -> None:
        """``ring`` names the shards of a new cluster's first ring; a
        database that already holds a placement keeps its own."""
        self.name = name
        self.first_ring = list(ring)
        self.store = store
        self.lease = lease
        self.max_batch = max_batch
        self.indexes: dict[BoardKey, LeaderboardIndex] = {}
        self.profiles: dict[str, str] = {}
        # The slots this shard owns at `epoch`, with the version each
        # last moved at, and their digest.
        self.epoch = 0
        self.incarnation = 0
        self.slots: list[int] = []
        self.digest = holding_digest({})
        self._held: dict[int, int] = {}
        self._owned: frozenset[int] = frozenset()
        self._last_reached_us = 0
        self._last_heartbeat = 0.0
        # Bumped whenever what reads see changes. It starts from the
        # clock, so it keeps growing across restarts of the shard.
        self.generation = _now_us()
        self.draining = False
        self._changed = asyncio.Event()
        self._recent: OrderedDict[tuple[str, str], RequestRow] = OrderedDict()
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=10_000)
        self._loop_task: asyncio.Task[None] | None = None
        self._expiry_task: asyncio.Task[None] | None = None
        self._sweep_task: asyncio.Task[None] | None = None
        self._lease_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the store, migrate, rebuild the indexes, start committing."""
        started = time.perf_counter()
        await self.store.open()
        await self.lease.acquire()
        self._lease_task = asyncio.create_task(self.lease.hold())
        await self.store.migrate()
        if self.first_ring:
            await self.store.bootstrap(self.first_ring)
        await self.store.register(self.name)
        self.incarnation = await self.store.claim(self.name)
        epoch, held = await self.store.layout(self.name)
        snapshot = await self.store.load(sorted(held))
        self.indexes = snapshot.indexes
        self.profiles = snapshot.profiles
        self._last_reached_us = snapshot.last_reached_us
        self._hold(epoch, held)
        slots = self.slots
        self._loop_task = asyncio.create_task(self._commit_loop())
        self._expiry_task = asyncio.create_task(self._expire_requests())
        self._sweep_task = asyncio.create_task(self._sweep())
        self._watch_task = asyncio.create_task(
            _placement.watch(self.store.dsn, self._check_epoch)
        )
        if not slots:
            logger.warning(
                "shard %s owns no slots; `chronoscore cluster add-shard %s`"
                " gives it its share",
                self.name,
                self.name,
            )
        logger.info(
            "shard %s rebuilt %d entries of %d slots in %d leaderboard periods"
            " in %.2fs",
            self.name,
            sum(len(i) for i in self.indexes.values()),
            len(slots),
            len(self.indexes),
            time.perf_counter() - started,
        )

    async def advertise(self, address: str) -> None:
        """Record where coordinators reach this shard."""
        await self.store.register(self.name, address)

    def drain(self) -> None:
        """End every follower's stream; the server is stopping."""
        self.draining = True
        self._changed.set()

    async def changed_after(self, generation: int) -> None:
        """Return once the generation is past ``generation``, or the shard
        drains."""
        while self.generation <= generation and not self.draining:
            await self._changed.wait()

    def _bump(self) -> None:
        """What reads see changed: wake everyone waiting in changed_after."""
        self.generation = max(self.generation + 1, _now_us())
        self._changed.set()
        self._changed = asyncio.Event()

    async def stop(self) -> None:
        """Commit what is queued, then close the store."""
        for task in (self._expiry_task, self._sweep_task, self._watch_task):
            if task is not None:
                task.cancel()
        if self._loop_task is not None:
            await self._queue.put(_STOP)
            await self._loop_task
            self._loop_task = None
        if self._lease_task is not None:
            self._lease_task.cancel()
        await self.lease.release()
        await self.store.close()

    # Placement

    def _hold(self, epoch: int, held: dict[int, int]) -> None:
        self.epoch = epoch
        self._held = held
        self.slots = sorted(held)
        self._owned = frozenset(held)
        self.digest = holding_digest(held)

    def _wrong_shard(self, user_id: str) -> WrongShard | None:
        if slot_of(user_id) in self._owned:
            return None
        return WrongShard(
            f"shard {self.name} does not own user {user_id!r}'s slot"
            f" {slot_of(user_id)} at epoch {self.epoch}"
        )

    async def _check_epoch(self) -> None:
        """Relayout if the placement gave or took slots; heartbeat."""
        epoch = await self.store.epoch(self.name)
        if epoch != self.epoch:
            await self._submit_one(_Job(relayout=True))
        if time.monotonic() - self._last_heartbeat > _HEARTBEAT_EVERY:
            await self.store.heartbeat(self.name, self.epoch)
            self._last_heartbeat = time.monotonic()

    async def _relayout(self) -> None:
        """Take the slots PostgreSQL says this shard owns now.

        Runs in the commit loop. Gained slots are loaded from PostgreSQL
        first; then, without yielding, lost ones are dropped and gained
        ones added, so reads see the old slots or the new, never a mix.
        A slot held before whose ``moved_at`` changed went elsewhere and
        came back; it is dropped and loaded again.
        """
        epoch, held = await self.store.layout(self.name)
        if epoch == self.epoch:
            return
        gained = sorted(s for s, at in held.items() if self._held.get(s) != at)
        lost = frozenset(s for s, at in self._held.items() if held.get(s) != at)
        snapshot = await self.store.load(gained) if gained else None
        if lost:
            self._drop(lost)
        if snapshot is not None:
            self._adopt(snapshot)
        self._hold(epoch, held)
        self._bump()
        logger.info(
            "shard %s now owns %d slots (epoch %d): %d gained, %d lost",
            self.name,
            len(held),
            epoch,
            len(gained),
            len(lost),
        )
        try:
            await self.store.heartbeat(self.name, epoch)
            self._last_heartbeat = time.monotonic()
        except Exception as exc:
            if not is_unavailable(exc):
                raise

    def _drop(self, lost: frozenset[int]) -> None:
        for board, index in list(self.indexes.items()):
            for user in index.user_ids():
                if slot_of(user) in lost:
                    index.remove(user)
            if not len(index):
                del self.indexes[board]
        for user in [u for u in self.profiles if slot_of(u) in lost]:
            del self.profiles[user]
        for key in [k for k in self._recent if slot_of(k[0]) in lost]:
            del self._recent[key]

    def _adopt(self, snapshot: Snapshot) -> None:
        for board, loaded in snapshot.indexes.items():
            index = self.indexes.get(board)
            if index is None:
                self.indexes[board] = loaded
                continue
            for entry in loaded:
                index.upsert(*entry, metadata=loaded.metadata(entry.user_id))
        self.profiles.update(snapshot.profiles)
        self._last_reached_us = max(self._last_reached_us, snapshot.last_reached_us)

    # Writes

    async def apply(self, writes: list[Write], arrived_us: int) -> list[Outcome]:
        """Apply writes in order; one outcome each, once committed.

        A write for a user this shard does not own fails alone, with
        WrongShard; the coordinator sends it to the owner.
        """
        writes = [
            w if not w.arrived_us else replace(w, arrived_us=_arrival(w.arrived_us))
            for w in writes
        ]
        job = _Job(writes=writes, arrived_us=_arrival(arrived_us))
        return await self._submit(job)

    async def upsert_user(self, user_id: str, display_name: str) -> None:
        job = _Job(profile=ProfileRow(user_id, slot_of(user_id), display_name))
        await self._submit_one(job)

    async def remove(self, user_id: str, board_id: int) -> int:
        """Remove the user's entries on one board, or everywhere with 0."""
        job = _Job(removal=Removal(user_id, board_id, profile=board_id == 0))
        return await self._submit_one(job)

    async def prune(self, board_id: int, before_us: int, drop_board: bool) -> int:
        """Drop a board's periods starting before ``before_us``, or all."""
        job = _Job(prune=_Prune(board_id, -1 if drop_board else before_us))
        return await self._submit_one(job)

    async def _submit_one(self, job: _Job) -> int:
        (outcome,) = await self._submit(job)
        if isinstance(outcome, ChronoscoreError):
            raise outcome
        assert isinstance(outcome, int)
        return outcome

    async def _submit(self, job: _Job) -> list[Outcome]:
        if self._loop_task is None or self._loop_task.done():
            raise Unavailable(f"shard {self.name} is not accepting writes")
        await self._queue.put(job)
        return await job.future

    async def _commit_loop(self) -> None:
        held: _Job | None = None
        stopping = False
        while not stopping:
            job = held or await self._queue.get()
            held = None
            if job is _STOP:
                return

            jobs = [job]
            size = job.size
            while not job.alone and size < self.max_batch:
                if self._queue.empty():
                    break
                nxt = self._queue.get_nowait()
                if nxt is _STOP:
                    stopping = True
                    break
                if nxt.alone:
                    held = nxt
                    break
                jobs.append(nxt)
                size += nxt.size
            try:
                await self._commit(jobs)
            except Superseded:
                logger.error("shard %s was superseded by a newer process", self.name)
                raise
            except Exception:
                # A failure here is a bug, and it may have left memory
                # behind PostgreSQL. Stop taking writes; the server exits
                # and a restart rebuilds the indexes from PostgreSQL.
                logger.critical("shard %s commit loop failed", self.name, exc_info=True)
                error = ChronoscoreError(f"shard {self.name} failed; it will restart")
                _answer_all(jobs, error)
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
        # A caller that gave up (its deadline passed, or it went away)
        # was told nothing was acknowledged; applying its writes now
        # would surprise a retry.
        jobs = [job for job in jobs if not job.future.cancelled()]
        if not jobs:
            return
        if jobs[0].relayout:
            try:
                await self._relayout()
            except Exception as exc:
                _answer_all(jobs, self._commit_error(exc))
                return
            jobs[0].future.set_result([len(self.slots)])
            return
        try:
            stored = await self._stored_requests(jobs)
        except Exception as exc:
            _answer_all(jobs, self._commit_error(exc))
            return

        # Results are computed against the indexes plus the changes made
        # earlier in this batch, so a user's second increment in one
        # batch builds on the first.
        batch = Batch()
        changes: dict[tuple[BoardKey, str], _Change] = {}
        profiles: dict[str, str | None] = {}
        requests: dict[tuple[str, str], RequestRow] = {}
        results: list[list[Outcome]] = []
        for job in jobs:
            target = job.profile or job.removal
            wrong = None if target is None else self._wrong_shard(target.user_id)
            if wrong is not None:
                results.append([wrong])
            elif job.profile is not None:
                profiles[job.profile.user_id] = job.profile.display_name
                results.append([1])
            elif job.removal is not None:
                results.append([self._remove(job.removal, changes, profiles)])
                batch.removals.append(job.removal)
            elif job.prune is not None:
                prune = job.prune
                batch.prunes.append((prune.board_id, prune.before_us, self.slots))
                results.append([self._count_pruned(prune)])
            else:
                results.append(
                    [
                        self._compute(
                            w, changes, stored, requests, w.arrived_us or job.arrived_us
                        )
                        for w in job.writes
                    ]
                )

        for (board, user), change in changes.items():
            if change.entry is not None:
                batch.scores.append(
                    ScoreRow(
                        board[0],
                        board[1],
                        user,
                        slot_of(user),
                        change.entry.score,
                        change.entry.reached_us,
                        change.metadata or None,
                    )
                )
        batch.profiles = [
            ProfileRow(user, slot_of(user), name)
            for user, name in profiles.items()
            if name is not None
        ]
        batch.requests = list(requests.values())
        started = time.perf_counter()
        try:
            if batch:
                await self._write(batch)
        except EpochChanged:
            # The slots moved under this batch: take the new ones and
            # compute it again, so writes to slots now elsewhere fail
            # with WrongShard and the rest commit.
            try:
                await self._relayout()
            except Exception as exc:
                _answer_all(jobs, self._commit_error(exc))
                return
            await self._commit(jobs)
            return
        except Superseded as exc:
            # Its writes are not in PostgreSQL; the process that took
            # over will serve them if they are sent again.
            _answer_all(jobs, Unavailable(str(exc)))
            raise
        except Exception as exc:
            _answer_all(jobs, self._commit_error(exc))
            return

        self._apply(changes, profiles, requests, [j.prune for j in jobs if j.prune])
        done = time.perf_counter()
        COMMIT_SECONDS.observe(done - started)
        COMMIT_UPDATES.observe(sum(len(j.writes) for j in jobs))
        for job, outcome in zip(jobs, results, strict=True):
            COMMIT_LAG.observe(done - job.queued_at)
            if not job.future.done():
                job.future.set_result(outcome)

    def _apply(
        self,
        changes: dict[tuple[BoardKey, str], _Change],
        profiles: dict[str, str | None],
        requests: dict[tuple[str, str], RequestRow],
        prunes: list[_Prune],
    ) -> None:
        """Make a committed batch visible. Runs without yielding."""
        for (board, user), change in changes.items():
            if change.entry is None:
                index = self.indexes.get(board)
                if index is not None:
                    index.remove(user)
                continue
            index = self.indexes.get(board)
            if index is None:
                index = self.indexes[board] = LeaderboardIndex(
                    ascending=change.ascending
                )
            index.upsert(*change.entry, metadata=change.metadata or b"")
        for user, name in profiles.items():
            if name is None:
                self.profiles.pop(user, None)
            else:
                self.profiles[user] = name
        for key, row in requests.items():
            self._remember(key, row)
        for prune in prunes:
            for board in self._pruned_boards(prune):
                del self.indexes[board]
        self._bump()

    async def _write(self, batch: Batch) -> None:
        """Write a batch, again if PostgreSQL rolled it back for a
        conflict with another transaction (a deadlock, say)."""
        for attempt in range(3):
            try:
                await self.store.write(batch, self.name, self.epoch, self.incarnation)
                return
            except (DeadlockDetected, SerializationFailure) as exc:
                if attempt == 2:
                    raise
                logger.warning("shard %s retrying a commit: %s", self.name, exc)

    def _commit_error(self, exc: Exception) -> ChronoscoreError:
        if is_unavailable(exc):
            logger.warning("shard %s could not commit: %s", self.name, exc)
            return Unavailable(f"shard {self.name}: PostgreSQL is unavailable")
        logger.exception("shard %s commit failed", self.name)
        return ChronoscoreError(f"shard {self.name}: commit failed: {exc}")

    async def _stored_requests(
        self, jobs: list[_Job]
    ) -> dict[tuple[str, str], RequestRow]:
        """Results of earlier requests whose ids this batch repeats."""
        found: dict[tuple[str, str], RequestRow] = {}
        missing = []
        for job in jobs:
            for write in job.writes:
                if not write.request_id:
                    continue
                key = (write.user_id, write.request_id)
                row = self._recent.get(key)
                if row is not None:
                    found[key] = row
                else:
                    missing.append(key)
        if missing:
            found.update(await self.store.find_requests(missing))
        return found

    def _compute(
        self,
        write: Write,
        changes: dict[tuple[BoardKey, str], _Change],
        stored: dict[tuple[str, str], RequestRow],
        requests: dict[tuple[str, str], RequestRow],
        arrived_us: int,
    ) -> Outcome:
        wrong = self._wrong_shard(write.user_id)
        if wrong is not None:
            return wrong
        request_key = (write.user_id, write.request_id)
        if write.request_id:
            earlier = requests.get(request_key) or stored.get(request_key)
            if earlier is not None:
                return self._replay(write, earlier)

        outcome = self._compute_score(write, changes, arrived_us)
        if write.request_id and isinstance(outcome, Applied):
            requests[request_key] = RequestRow(
                write.user_id,
                write.request_id,
                slot_of(write.user_id),
                write.board[0],
                write.board[1],
                outcome.score,
                outcome.changed,
            )
        return outcome

    def _replay(self, write: Write, earlier: RequestRow) -> Outcome:
        if earlier.board_id != write.board[0]:
            return InvalidArgument(
                f"request_id {write.request_id!r} was already used for"
                f" another update of user {write.user_id!r}"
            )
        return Applied(
            earlier.score, earlier.changed, earlier.period_start_us, replayed=True
        )

    def _compute_score(
        self,
        write: Write,
        changes: dict[tuple[BoardKey, str], _Change],
        arrived_us: int,
    ) -> Outcome:
        key = (write.board, write.user_id)
        change = changes.get(key)
        if change is not None:
            current, metadata = change.entry, change.metadata
        else:
            index = self.indexes.get(write.board)
            current = None if index is None else index.get(write.user_id)
            metadata = None if index is None else index.metadata(write.user_id)

        base = 0 if current is None else current.score
        if write.mode in (_pb.SCORE_MODE_INCREMENT, _pb.SCORE_MODE_DECREMENT):
            sign = 1 if write.mode == _pb.SCORE_MODE_INCREMENT else -1
            score = base + sign * write.score
            if not _keys.SCORE_MIN <= score <= _keys.SCORE_MAX:
                how = "adding it to" if sign > 0 else "subtracting it from"
                return OutOfRange(
                    f"{write.score} for user {write.user_id!r}: {how} the"
                    f" score {base} would leave the int64 range"
                )
        elif write.mode == _pb.SCORE_MODE_BEST and current is not None:
            better = _keys.is_better(write.score, base, write.ascending)
            score = write.score if better else base
        else:
            score = write.score

        # An unchanged score keeps its time (so the user keeps their place
        # among equal scores) and its metadata.
        period = write.board[1]
        if current is not None and current.score == score:
            return Applied(score, False, period)
        if write.metadata is not None:
            metadata = write.metadata
        entry = IndexEntry(write.user_id, score, self._stamp(write, arrived_us))
        changes[key] = _Change(entry, write.ascending, metadata)
        return Applied(score, True, period)

    def _remove(
        self,
        removal: Removal,
        changes: dict[tuple[BoardKey, str], _Change],
        profiles: dict[str, str | None],
    ) -> int:
        """Mark the user's entries removed; return how many there were."""
        boards = set(self.indexes) | {board for board, _ in changes}
        removed = 0
        for board in boards:
            if removal.board_id and board[0] != removal.board_id:
                continue
            key = (board, removal.user_id)
            change = changes.get(key)
            index = self.indexes.get(board)
            if change is not None:
                present = change.entry is not None
            else:
                present = index is not None and removal.user_id in index
            if present:
                removed += 1
                ascending = False if index is None else index.ascending
                changes[key] = _Change(None, ascending)
        if removal.profile:
            profiles[removal.user_id] = None
        return removed

    def _pruned_boards(self, prune: _Prune) -> list[BoardKey]:
        return [
            board
            for board in self.indexes
            if board[0] == prune.board_id
            and (prune.before_us < 0 or board[1] < prune.before_us)
        ]

    def _count_pruned(self, prune: _Prune) -> int:
        return sum(len(self.indexes[b]) for b in self._pruned_boards(prune))

    def _stamp(self, write: Write, arrived_us: int) -> int:
        """The time a write's user reached its score.

        A coordinator gives each update its own arrival time, in the
        order it took them; that time is kept as it is, so equal scores
        order alike on every shard. Writes without one (from callers other
        than a coordinator) get distinct times in the order they came.
        """
        if write.arrived_us:
            self._last_reached_us = max(self._last_reached_us, write.arrived_us)
            return write.arrived_us
        self._last_reached_us = max(arrived_us, self._last_reached_us + 1)
        return self._last_reached_us

    def _remember(self, key: tuple[str, str], row: RequestRow) -> None:
        self._recent[key] = row
        self._recent.move_to_end(key)
        while len(self._recent) > _RECENT_REQUESTS:
            self._recent.popitem(last=False)

    async def _sweep(self) -> None:
        """Drop entries of deleted leaderboards, now and every 30 s.

        The coordinator tells every shard when it deletes a leaderboard;
        this catches shards that missed it and writes that raced it.
        """
        while True:
            try:
                live, highest = await self.store.live_boards()
                dead = {b for b, _ in self.indexes if b <= highest and b not in live}
                dead |= await self.store.orphaned_boards(self.slots)
                for board_id in sorted(dead):
                    await self.prune(board_id, 0, drop_board=True)
                    logger.info(
                        "shard %s dropped deleted leaderboard %d", self.name, board_id
                    )
            except Exception as exc:
                if not (is_unavailable(exc) or isinstance(exc, ChronoscoreError)):
                    raise
                logger.debug("shard %s could not sweep: %s", self.name, exc)
            await asyncio.sleep(30)

    async def _expire_requests(self) -> None:
        while True:
            try:
                removed = await self.store.expire_requests(
                    self.slots, REQUEST_RETENTION_HOURS
                )
                logger.debug("shard %s expired %d request ids", self.name, removed)
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                logger.warning("shard %s could not expire request ids", self.name)
            await asyncio.sleep(600)

    # Reads

    def index_sizes(self) -> Iterator[tuple[int, int, int]]:
        """(leaderboard id, period start, entries) for every index."""
        for (board_id, period), index in list(self.indexes.items()):
            yield board_id, period, len(index)

    def index(self, board: BoardKey, ascending: bool) -> LeaderboardIndex:
        """The index of one period; an empty one if it has no entries."""
        index = self.indexes.get(board)
        if index is None:
            return LeaderboardIndex(ascending=ascending)
        return index


def _now_us() -> int:
    return time.time_ns() // 1000


def _arrival(arrived_us: int) -> int:
    """The coordinator's arrival time, or ours if it is missing or absurd.

    Stamps on a shard only move forward, so one far-future time would
    push every later stamp past it; a time more than a minute ahead of
    this shard's clock is not believed.
    """
    now = time.time_ns() // 1000
    if 0 < arrived_us <= now + _MAX_CLOCK_LEAD_US:
        return arrived_us
    return now


def _answer_all(jobs: list[_Job], error: ChronoscoreError) -> None:
    for job in jobs:
        if not job.future.done():
            job.future.set_result([error] * job.size)
