"""The PostgreSQL schema every ChronoScore process shares, and its migrations.

Tables:

- ``leaderboards``: the catalog. ``id`` is never reused, so entries of a
  deleted leaderboard can never reappear under a new one of that name.
- ``user_score``: one row per (leaderboard, period, user).
- ``users``: one profile per user.
- ``request_log``: results of updates sent with a ``request_id``.
- ``ring_state``, ``ring_slots``, ``ring_shards``: which shard owns
  which slot, and where shards listen (see ``chronoscore._placement``).

Score, profile and request rows carry the user's slot, so a shard reads
and writes only the slots it owns.
"""

from __future__ import annotations

import logging

from psycopg import AsyncConnection

from .errors import FailedPrecondition

__all__ = ["SCHEMA_VERSION", "migrate"]

logger = logging.getLogger("chronoscore.schema")

# Each migration runs once, in order, in one transaction with the
# version bump. Append new ones; never edit one that has shipped.
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
    # Leaderboards become configured objects with periods; entries gain
    # metadata; retried updates are answered from request_log. Existing
    # leaderboards keep their entries with the default configuration.
    """
    CREATE TABLE leaderboards (
        id bigserial PRIMARY KEY,
        name text COLLATE "C" NOT NULL UNIQUE,
        ascending boolean NOT NULL,
        operator smallint NOT NULL,
        tie_policy smallint NOT NULL,
        reset smallint NOT NULL,
        keep_periods integer NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO leaderboards
        (name, ascending, operator, tie_policy, reset, keep_periods)
    SELECT DISTINCT leaderboard, false, 1, 1, 1, 0 FROM user_score;

    ALTER TABLE user_score
        ADD COLUMN board_id bigint,
        ADD COLUMN period_start_us bigint NOT NULL DEFAULT 0,
        ADD COLUMN metadata bytea;
    UPDATE user_score s SET board_id = b.id
    FROM leaderboards b WHERE b.name = s.leaderboard;
    ALTER TABLE user_score
        DROP CONSTRAINT user_score_pkey,
        DROP COLUMN leaderboard,
        ALTER COLUMN board_id SET NOT NULL,
        ALTER COLUMN period_start_us DROP DEFAULT;
    ALTER TABLE user_score
        ADD PRIMARY KEY (board_id, period_start_us, user_id);
    CREATE INDEX user_score_user ON user_score (user_id);

    CREATE TABLE request_log (
        user_id text COLLATE "C" NOT NULL,
        request_id text COLLATE "C" NOT NULL,
        slot integer NOT NULL,
        board_id bigint NOT NULL,
        period_start_us bigint NOT NULL,
        score bigint NOT NULL,
        changed boolean NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (user_id, request_id)
    );
    CREATE INDEX request_log_slot_created ON request_log (slot, created_at);
    """,
    # Placement moves from command-line flags into the database, so the
    # shard count can change while the cluster runs. The tables start
    # empty; the first process to start fills them from its flags.
    """
    CREATE TABLE ring_state (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version bigint NOT NULL,
        members text[] NOT NULL
    );
    CREATE TABLE ring_slots (
        slot integer PRIMARY KEY,
        owner text COLLATE "C" NOT NULL,
        moved_at bigint NOT NULL DEFAULT 1
    );
    CREATE TABLE ring_shards (
        name text COLLATE "C" PRIMARY KEY,
        epoch bigint NOT NULL DEFAULT 1,
        applied_epoch bigint NOT NULL DEFAULT 0,
        address text,
        seen_at timestamptz,
        -- Bumped by every process that starts as this shard; commits
        -- check it, so one that lost its lock cannot write on.
        incarnation bigint NOT NULL DEFAULT 0
    );
    """,
)
SCHEMA_VERSION = len(_MIGRATIONS)

# Serialises migrations when several processes start on one database.
_MIGRATION_LOCK = 0x43_68_72_6F_6E_6F


async def migrate(conn: AsyncConnection) -> int:
    """Bring the schema to SCHEMA_VERSION; return the version found."""
    cur = await conn.execute("SHOW server_encoding")
    encoding = (await cur.fetchone() or ("",))[0]
    if encoding != "UTF8":
        raise FailedPrecondition(
            f"the database's encoding is {encoding}; ChronoScore stores"
            " user ids and names as UTF-8, so create it with ENCODING 'UTF8'"
        )
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", [_MIGRATION_LOCK])
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS chronoscore_schema (version integer NOT NULL)"
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
