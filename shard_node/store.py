"""A shard's PostgreSQL persistence: loading, batch writes, request log.

PostgreSQL is the source of truth (see ``chronoscore._schema``). A shard
reads and writes only the rows of the slots it owns, so several shards
share one database without touching each other's rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from chronoscore import _placement
from chronoscore._db import is_unavailable, make_pool
from chronoscore._schema import migrate
from chronoscore.errors import FailedPrecondition

from .index import LeaderboardIndex

__all__ = [
    "Store",
    "ScoreRow",
    "ProfileRow",
    "RequestRow",
    "Removal",
    "Batch",
    "Snapshot",
    "BoardKey",
    "EpochChanged",
    "is_unavailable",
]

logger = logging.getLogger("chronoscore.shard")

# (board_id, period_start_us): one index, one period of one leaderboard.
BoardKey = tuple[int, int]

_UPSERT_SCORES = """
    INSERT INTO user_score
        (board_id, period_start_us, user_id, slot, score, reached_us, metadata)
    SELECT * FROM unnest(
        %s::bigint[], %s::bigint[], %s::text[], %s::integer[],
        %s::bigint[], %s::bigint[], %s::bytea[])
    ON CONFLICT (board_id, period_start_us, user_id) DO UPDATE
    SET score = EXCLUDED.score,
        reached_us = EXCLUDED.reached_us,
        metadata = EXCLUDED.metadata
"""

_UPSERT_PROFILES = """
    INSERT INTO users (user_id, slot, display_name)
    SELECT * FROM unnest(%s::text[], %s::integer[], %s::text[])
    ON CONFLICT (user_id) DO UPDATE
    SET display_name = EXCLUDED.display_name, updated_at = now()
"""

_LOG_REQUESTS = """
    INSERT INTO request_log
        (user_id, request_id, slot, board_id, period_start_us, score, changed)
    SELECT * FROM unnest(
        %s::text[], %s::text[], %s::integer[], %s::bigint[],
        %s::bigint[], %s::bigint[], %s::boolean[])
    ON CONFLICT DO NOTHING
"""

_FIND_REQUESTS = """
    SELECT user_id, request_id, board_id, period_start_us, score, changed
    FROM request_log
    WHERE (user_id, request_id) IN (
        SELECT * FROM unnest(%s::text[], %s::text[]))
"""

# Rows of deleted leaderboards have no catalog row and are not loaded.
# Unordered: the shard sorts in memory, which is far cheaper than a sort
# in PostgreSQL.
# User ids arrive as their UTF-8 bytes, the form the index keeps them
# in, which spares decoding and encoding each one.
_LOAD_SCORES = """
    SELECT s.board_id, s.period_start_us, b.ascending,
           convert_to(s.user_id, 'UTF8'), s.score, s.reached_us, s.metadata
    FROM user_score s JOIN leaderboards b ON b.id = s.board_id
    WHERE s.slot = ANY(%s)
"""
_LOAD_CHUNK = 50_000


class Superseded(Exception):
    """Another process has started as this shard since this one did;
    nothing was written, and this one must stop."""


class EpochChanged(Exception):
    """The shard's slots changed since it last loaded them; nothing was
    written. Reload the placement and compute the batch again."""


@dataclass(frozen=True, slots=True)
class ScoreRow:
    board_id: int
    period_start_us: int
    user_id: str
    slot: int
    score: int
    reached_us: int
    metadata: bytes | None


@dataclass(frozen=True, slots=True)
class ProfileRow:
    user_id: str
    slot: int
    display_name: str


@dataclass(frozen=True, slots=True)
class RequestRow:
    """The stored result of an update sent with a request id."""

    user_id: str
    request_id: str
    slot: int
    board_id: int
    period_start_us: int
    score: int
    changed: bool


@dataclass(frozen=True, slots=True)
class Removal:
    """Delete a user's scores on one board (board_id > 0) or on all."""

    user_id: str
    board_id: int
    profile: bool


@dataclass(slots=True)
class Batch:
    """Everything one group commit writes, in one transaction."""

    scores: list[ScoreRow] = field(default_factory=list)
    profiles: list[ProfileRow] = field(default_factory=list)
    requests: list[RequestRow] = field(default_factory=list)
    removals: list[Removal] = field(default_factory=list)
    # (board_id, before_us, slots): drop periods starting before before_us;
    # before_us < 0 drops the whole board.
    prunes: list[tuple[int, int, list[int]]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.scores
            or self.profiles
            or self.requests
            or self.removals
            or self.prunes
        )


@dataclass(slots=True)
class _Columns:
    """One leaderboard period's rows as they arrive."""

    ascending: bool
    # User ids in UTF-8, as LeaderboardIndex.from_columns takes them.
    users: list[bytes] = field(default_factory=list)
    scores: list[int] = field(default_factory=list)
    reached: list[int] = field(default_factory=list)
    metadata: dict[bytes, bytes] = field(default_factory=dict)


@dataclass(slots=True)
class Snapshot:
    """Everything a shard holds in memory, as loaded at start."""

    indexes: dict[BoardKey, LeaderboardIndex]
    profiles: dict[str, str]
    last_reached_us: int


class Store:
    """A connection pool to the cluster's PostgreSQL database."""

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._pool = make_pool(dsn, "chronoscore-shard", max_size=2, timeout=timeout)

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=self.timeout * 6)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> int:
        async with self._pool.connection() as conn:
            return await migrate(conn)

    async def load(self, slots: Sequence[int]) -> Snapshot:
        """Read every score and profile in ``slots``."""
        loading: dict[BoardKey, _Columns] = {}
        last_reached = 0
        async with self._pool.connection() as conn:
            async with conn.cursor("load", binary=True) as cur:
                await cur.execute(_LOAD_SCORES, [list(slots)])
                while rows := await cur.fetchmany(_LOAD_CHUNK):
                    for board_id, period, asc, user, score, reached, meta in rows:
                        board = (board_id, period)
                        columns = loading.get(board)
                        if columns is None:
                            columns = loading[board] = _Columns(asc)
                        columns.users.append(user)
                        columns.scores.append(score)
                        columns.reached.append(reached)
                        if meta:
                            columns.metadata[user] = bytes(meta)
                        if reached > last_reached:
                            last_reached = reached
            found = await conn.execute(
                "SELECT user_id, display_name FROM users WHERE slot = ANY(%s)",
                [list(slots)],
            )
            profiles = {user: name for user, name in await found.fetchall()}
        indexes = {
            board: LeaderboardIndex.from_columns(
                c.users,
                c.scores,
                c.reached,
                ascending=c.ascending,
                metadata=c.metadata,
            )
            for board, c in loading.items()
        }
        return Snapshot(indexes, profiles, last_reached)

    async def bootstrap(self, ring: Sequence[str]) -> None:
        async with self._pool.connection() as conn:
            await _placement.bootstrap(conn, ring)

    async def register(self, shard: str, address: str | None = None) -> None:
        async with self._pool.connection() as conn:
            await _placement.register(conn, shard, address)

    async def heartbeat(self, shard: str, applied_epoch: int) -> None:
        async with self._pool.connection() as conn:
            await _placement.heartbeat(conn, shard, applied_epoch)

    async def epoch(self, shard: str) -> int:
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT epoch FROM ring_shards WHERE name = %s", [shard]
            )
            row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def layout(self, shard: str) -> tuple[int, dict[int, int]]:
        """(epoch, {owned slot: moved_at}) of ``shard``."""
        async with self._pool.connection() as conn:
            return await _placement.layout(conn, shard)

    async def find_requests(
        self, keys: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], RequestRow]:
        """Stored results for (user_id, request_id) pairs that have one."""
        if not keys:
            return {}
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                _FIND_REQUESTS, [[k[0] for k in keys], [k[1] for k in keys]]
            )
            rows = await cur.fetchall()
        return {
            (user, rid): RequestRow(user, rid, 0, board, period, score, changed)
            for user, rid, board, period, score, changed in rows
        }

    async def claim(self, shard: str) -> int:
        """Become the process of ``shard``: a new incarnation, which waits
        for commits of an earlier process still in flight, and fences off
        its later ones (see :meth:`write`)."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE ring_shards SET incarnation = incarnation + 1"
                " WHERE name = %s RETURNING incarnation",
                [shard],
            )
            row = await cur.fetchone()
        if row is None:
            raise FailedPrecondition(f"shard {shard!r} is not registered")
        return int(row[0])

    async def write(
        self, batch: Batch, shard: str, epoch: int, incarnation: int
    ) -> None:
        """Commit a batch in one transaction, if ``shard`` still holds
        ``epoch`` (see ``chronoscore._placement``); else EpochChanged.
        Superseded if another process has claimed the shard since
        ``incarnation``.

        Each (board, period, user), profile and request appears once.
        Raises psycopg or pool errors when PostgreSQL cannot commit.
        """
        async with self._pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "SELECT epoch, incarnation FROM ring_shards WHERE name = %s FOR SHARE",
                [shard],
            )
            row = await cur.fetchone()
            if row is not None and row[1] != incarnation:
                raise Superseded(
                    f"another process started as shard {shard}; this one stops"
                )
            if row is None or row[0] != epoch:
                raise EpochChanged(f"shard {shard}'s epoch is no longer {epoch}")
            for removal in batch.removals:
                await self._remove(conn, removal)
            for board_id, before_us, slots in batch.prunes:
                await conn.execute(
                    "DELETE FROM user_score WHERE board_id = %s"
                    " AND (%s < 0 OR period_start_us < %s) AND slot = ANY(%s)",
                    [board_id, before_us, before_us, slots],
                )
            if batch.scores:
                await conn.execute(_UPSERT_SCORES, _columns(batch.scores))
            if batch.profiles:
                await conn.execute(_UPSERT_PROFILES, _columns(batch.profiles))
            if batch.requests:
                await conn.execute(_LOG_REQUESTS, _columns(batch.requests))

    async def _remove(self, conn: psycopg.AsyncConnection, removal: Removal) -> None:
        if removal.board_id:
            await conn.execute(
                "DELETE FROM user_score WHERE user_id = %s AND board_id = %s",
                [removal.user_id, removal.board_id],
            )
        else:
            await conn.execute(
                "DELETE FROM user_score WHERE user_id = %s", [removal.user_id]
            )
        if removal.profile:
            await conn.execute(
                "DELETE FROM users WHERE user_id = %s", [removal.user_id]
            )

    async def live_boards(self) -> tuple[set[int], int]:
        """Leaderboard ids in the catalog, and the highest id ever given.

        Ids only grow, so a missing id below the highest was deleted; one
        above it may just be newer than this read.
        """
        async with self._pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM leaderboards")
            ids = {int(row[0]) for row in await cur.fetchall()}
            cur = await conn.execute("SELECT last_value FROM leaderboards_id_seq")
            row = await cur.fetchone()
        return ids, int(row[0]) if row else 0

    async def orphaned_boards(self, slots: Sequence[int]) -> set[int]:
        """Ids of deleted leaderboards that still have rows in ``slots``."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "SELECT DISTINCT board_id FROM user_score s WHERE slot = ANY(%s)"
                " AND NOT EXISTS"
                " (SELECT 1 FROM leaderboards b WHERE b.id = s.board_id)",
                [list(slots)],
            )
            return {int(row[0]) for row in await cur.fetchall()}

    async def expire_requests(self, slots: Sequence[int], hours: int) -> int:
        """Forget request ids older than ``hours``; return how many."""
        async with self._pool.connection() as conn:
            cur = await conn.execute(
                "DELETE FROM request_log WHERE slot = ANY(%s)"
                " AND created_at < now() - make_interval(hours => %s)",
                [list(slots), hours],
            )
            return cur.rowcount


def _columns(rows: Sequence[object]) -> list[list[object]]:
    """Turn dataclass rows into one list per field, for unnest()."""
    names = rows[0].__slots__  # type: ignore[attr-defined]
    return [[getattr(row, name) for row in rows] for name in names]
