"""PostgreSQL persistence for a shard: schema, loading, and batch writes.

PostgreSQL is the source of truth. ``user_score`` holds one row per
(leaderboard, user) and ``users`` one row per profile; both carry the
user's slot so a shard loads exactly the slots it owns. Several shards
may share one database, each reading and writing only its own slots.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from chronoscore.errors import FailedPrecondition

from .index import IndexEntry, LeaderboardIndex

__all__ = [
    "Store",
    "ScoreRow",
    "ProfileRow",
    "Snapshot",
    "SCHEMA_VERSION",
    "is_unavailable",
]

logger = logging.getLogger("chronoscore.shard")

# Each migration runs once, in order, in one transaction with the
# version bump. Append new ones; never edit a released one.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        user_id text COLLATE "C" PRIMARY KEY,
        slot integer NOT NULL,
        display_name text NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX users_slot ON users (slot);
    CREATE TABLE user_score (
        leaderboard text COLLATE "C" NOT NULL,
        user_id text COLLATE "C" NOT NULL,
        slot integer NOT NULL,
        score bigint NOT NULL,
        reached_us bigint NOT NULL,
        PRIMARY KEY (leaderboard, user_id)
    );
    CREATE INDEX user_score_slot ON user_score (slot);
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# Serialises migrations when several shards start on one database.
_MIGRATION_LOCK = 0x43_68_72_6F_6E_6F

_UPSERT_SCORES = """
    INSERT INTO user_score (leaderboard, user_id, slot, score, reached_us)
    SELECT * FROM unnest(
        %s::text[], %s::text[], %s::integer[], %s::bigint[], %s::bigint[])
    ON CONFLICT (leaderboard, user_id) DO UPDATE
    SET score = EXCLUDED.score, reached_us = EXCLUDED.reached_us
"""

_UPSERT_PROFILES = """
    INSERT INTO users (user_id, slot, display_name)
    SELECT * FROM unnest(%s::text[], %s::integer[], %s::text[])
    ON CONFLICT (user_id) DO UPDATE
    SET display_name = EXCLUDED.display_name, updated_at = now()
"""

_LOAD_SCORES = """
    COPY (
        SELECT leaderboard, user_id, score, reached_us FROM user_score
        WHERE slot = ANY(%s)
        ORDER BY leaderboard, score DESC, reached_us, user_id
    ) TO STDOUT (FORMAT BINARY)
"""


@dataclass(frozen=True, slots=True)
class ScoreRow:
    leaderboard: str
    user_id: str
    slot: int
    score: int
    reached_us: int


@dataclass(frozen=True, slots=True)
class ProfileRow:
    user_id: str
    slot: int
    display_name: str


@dataclass(slots=True)
class Snapshot:
    """Everything a shard holds in memory, as loaded at start."""

    indexes: dict[str, LeaderboardIndex]
    profiles: dict[str, str]
    last_reached_us: int


class Store:
    """A connection pool to the shard's PostgreSQL database."""

    def __init__(self, dsn: str, *, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._pool = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=2,
            open=False,
            timeout=timeout,
            check=AsyncConnectionPool.check_connection,
            kwargs={"connect_timeout": max(1, round(timeout))},
            name="chronoscore-shard",
        )

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=self.timeout * 6)

    async def close(self) -> None:
        await self._pool.close()

    async def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; return the old version."""
        async with self._pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS chronoscore_schema"
                " (version integer NOT NULL)"
            )
            cur = await conn.execute("SELECT version FROM chronoscore_schema")
            row = await cur.fetchone()
            version = 0 if row is None else int(row[0])
            if version > SCHEMA_VERSION:
                raise FailedPrecondition(
                    f"database schema version {version} is newer than this"
                    f" build's {SCHEMA_VERSION}; upgrade ChronoScore"
                )

            for sql in _MIGRATIONS[version:]:
                await conn.execute(sql)
            if row is None:
                await conn.execute(
                    "INSERT INTO chronoscore_schema VALUES (%s)", [SCHEMA_VERSION]
                )
            else:
                await conn.execute(
                    "UPDATE chronoscore_schema SET version = %s", [SCHEMA_VERSION]
                )
        if version < SCHEMA_VERSION:
            logger.info("schema migrated from %d to %d", version, SCHEMA_VERSION)
        return version

    async def load(self, slots: Sequence[int]) -> Snapshot:
        """Read every score and profile in ``slots``."""
        indexes: dict[str, LeaderboardIndex] = {}
        last_reached = 0
        async with self._pool.connection() as conn:
            async with conn.cursor().copy(_LOAD_SCORES, [list(slots)]) as copy:
                copy.set_types(["text", "text", "int8", "int8"])
                board: str | None = None
                run: list[IndexEntry] = []
                async for leaderboard, user, score, reached in copy.rows():
                    if leaderboard != board:
                        if board is not None:
                            indexes[board] = LeaderboardIndex.from_sorted(run)
                        board, run = leaderboard, []
                    run.append(IndexEntry(user, score, reached))
                    last_reached = max(last_reached, reached)
                if board is not None:
                    indexes[board] = LeaderboardIndex.from_sorted(run)

            cur = await conn.execute(
                "SELECT user_id, display_name FROM users WHERE slot = ANY(%s)",
                [list(slots)],
            )
            profiles = {user: name for user, name in await cur.fetchall()}
        return Snapshot(indexes, profiles, last_reached)

    async def write(
        self, scores: Sequence[ScoreRow], profiles: Sequence[ProfileRow]
    ) -> None:
        """Commit score and profile rows in one transaction.

        Each (leaderboard, user) and each profile may appear only once.
        Raises psycopg or pool errors when PostgreSQL cannot commit.
        """
        async with self._pool.connection() as conn, conn.transaction():
            if scores:
                await conn.execute(
                    _UPSERT_SCORES,
                    [
                        [r.leaderboard for r in scores],
                        [r.user_id for r in scores],
                        [r.slot for r in scores],
                        [r.score for r in scores],
                        [r.reached_us for r in scores],
                    ],
                )
            if profiles:
                await conn.execute(
                    _UPSERT_PROFILES,
                    [
                        [p.user_id for p in profiles],
                        [p.slot for p in profiles],
                        [p.display_name for p in profiles],
                    ],
                )


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means PostgreSQL could not be reached."""
    return isinstance(exc, psycopg.OperationalError | PoolTimeout)
