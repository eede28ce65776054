"""The leaderboard catalog: configured leaderboards in PostgreSQL.

A leaderboard's configuration never changes after it is created; to
change one, delete it and create it again. Each creation gets a new id,
and entries are keyed by id, so a deleted leaderboard's entries never
show up under a new one of the same name.

The coordinator caches configurations for ``ttl`` seconds, so another
coordinator's deletion is seen within that time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from psycopg import AsyncConnection

from chronoscore import _periods
from chronoscore._db import is_unavailable, make_pool
from chronoscore._periods import Period, Reset
from chronoscore._schema import migrate
from chronoscore._server import remaining
from chronoscore._validate import check_leaderboard
from chronoscore.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from chronoscore.v1 import leaderboard_pb2 as _pb

__all__ = ["Board", "Catalog", "MAX_KEEP_PERIODS"]

logger = logging.getLogger("chronoscore.coordinator")

MAX_KEEP_PERIODS = 1000

_RESETS: dict[int, Reset] = {
    _pb.RESET_SCHEDULE_NONE: Reset.NONE,
    _pb.RESET_SCHEDULE_DAILY: Reset.DAILY,
    _pb.RESET_SCHEDULE_WEEKLY: Reset.WEEKLY,
    _pb.RESET_SCHEDULE_MONTHLY: Reset.MONTHLY,
}

_COLUMNS = "id, name, ascending, operator, tie_policy, reset, keep_periods"


@dataclass(frozen=True, slots=True)
class Board:
    """One leaderboard's configuration, with enum values from the protos."""

    id: int
    name: str
    ascending: bool
    operator: int
    tie_policy: int
    reset: int
    keep_periods: int

    @property
    def schedule(self) -> Reset:
        return _RESETS[self.reset]

    @property
    def shared_ranks(self) -> bool:
        return self.tie_policy == _pb.TIE_POLICY_SHARED

    def period_at(self, t_us: int) -> Period:
        return _periods.period_of(self.schedule, t_us)

    def oldest_kept_us(self, now_us: int) -> int:
        current = self.period_at(now_us)
        return _periods.oldest_kept(self.schedule, current, self.keep_periods)

    def resolve_period(self, label: str, now_us: int) -> Period:
        """The period a query names: ``""`` is the current one.

        Raises NotFound for a period that has aged out, OutOfRange for
        one that has not started.
        """
        current = self.period_at(now_us)
        if not label:
            return current
        period = _periods.parse_label(self.schedule, label)
        if period.start_us > current.start_us:
            raise OutOfRange(
                f"period {label!r} of {self.name!r} has not started;"
                f" the current period is {current.label!r}"
            )
        if period.start_us < self.oldest_kept_us(now_us):
            raise NotFound(
                f"period {label!r} of {self.name!r} is no longer kept; it keeps"
                f" {self.keep_periods} past periods besides the current one"
            )
        return period

    def config(self) -> tuple[bool, int, int, int, int]:
        return (
            self.ascending,
            self.operator,
            self.tie_policy,
            self.reset,
            self.keep_periods,
        )

    def to_proto(self, now_us: int) -> _pb.Leaderboard:
        return _pb.Leaderboard(
            name=self.name,
            sort_order=(
                _pb.SORT_ORDER_ASCENDING
                if self.ascending
                else _pb.SORT_ORDER_DESCENDING
            ),
            operator=cast(_pb.ScoreMode, self.operator),
            tie_policy=cast(_pb.TiePolicy, self.tie_policy),
            reset=cast(_pb.ResetSchedule, self.reset),
            keep_periods=self.keep_periods,
            current_period=period_proto(self.period_at(now_us)),
        )


def period_proto(period: Period) -> _pb.Period:
    return _pb.Period(
        label=period.label, start_us=period.start_us, end_us=period.end_us
    )


def board_from_proto(config: _pb.Leaderboard) -> Board:
    """Validate a requested configuration and fill in the defaults."""
    name = check_leaderboard(config.name, "leaderboard.name")
    order = config.sort_order or _pb.SORT_ORDER_DESCENDING
    if order not in (_pb.SORT_ORDER_DESCENDING, _pb.SORT_ORDER_ASCENDING):
        raise InvalidArgument(f"leaderboard.sort_order {order} is not known")
    operator = config.operator or _pb.SCORE_MODE_BEST
    if operator not in _pb.ScoreMode.values():
        raise InvalidArgument(f"leaderboard.operator {operator} is not known")
    tie = config.tie_policy or _pb.TIE_POLICY_EARLIEST_FIRST
    if tie not in (_pb.TIE_POLICY_EARLIEST_FIRST, _pb.TIE_POLICY_SHARED):
        raise InvalidArgument(f"leaderboard.tie_policy {tie} is not known")
    reset = config.reset or _pb.RESET_SCHEDULE_NONE
    if reset not in _RESETS:
        raise InvalidArgument(f"leaderboard.reset {reset} is not known")
    keep = config.keep_periods
    if not 0 <= keep <= MAX_KEEP_PERIODS:
        raise InvalidArgument(
            f"leaderboard.keep_periods must be between 0 and {MAX_KEEP_PERIODS},"
            f" got {keep}"
        )
    if reset == _pb.RESET_SCHEDULE_NONE and keep:
        raise InvalidArgument(
            "leaderboard.keep_periods must be 0 for a leaderboard that never resets"
        )
    return Board(0, name, order == _pb.SORT_ORDER_ASCENDING, operator, tie, reset, keep)


class Catalog:
    """Leaderboard configurations, read through a short-lived cache."""

    def __init__(self, dsn: str, *, ttl: float = 5.0, timeout: float = 5.0):
        self.ttl = ttl
        self.timeout = timeout
        self._pool = make_pool(dsn, "chronoscore-catalog", max_size=4, timeout=timeout)
        self._cache: dict[str, tuple[float, Board]] = {}
        self._refreshing: dict[str, asyncio.Task[None]] = {}
        # Whether the cache has held every leaderboard since a full list.
        self._listed = False

    async def open(self) -> None:
        await self._pool.open(wait=True, timeout=30)
        async with self._pool.connection() as conn:
            await migrate(conn)

    async def close(self) -> None:
        await self._pool.close()

    async def get(self, name: str) -> Board:
        """The named leaderboard; NotFound if it does not exist.

        A cached configuration older than ``ttl`` is still returned at
        once while it is re-read in the background, so reads go on
        while PostgreSQL is down.
        """
        cached = self._cache.get(name)
        if cached is None:
            return await self._load(name)
        if time.monotonic() - cached[0] >= self.ttl and name not in self._refreshing:
            self._refreshing[name] = asyncio.create_task(self._refresh(name))
        return cached[1]

    async def _load(self, name: str) -> Board:
        async with self._connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM leaderboards WHERE name = %s", [name]
            )
            row = await cur.fetchone()
        if row is None:
            self._cache.pop(name, None)
            raise NotFound(f"leaderboard {name!r} does not exist")
        return self._remember(Board(*row))

    async def _refresh(self, name: str) -> None:
        try:
            await self._load(name)
        except (NotFound, Unavailable) as exc:
            logger.debug("refreshing leaderboard %s: %s", name, exc)
        finally:
            del self._refreshing[name]

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection]:
        """A pooled connection; Unavailable if PostgreSQL cannot be reached."""
        try:
            # No longer than the caller's deadline allows.
            async with self._pool.connection(timeout=remaining(self.timeout)) as conn:
                yield conn
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            raise Unavailable(
                f"the catalog's PostgreSQL is unavailable: {exc}"
            ) from None

    async def create(self, wanted: Board) -> Board:
        """Create a leaderboard, or return it if it exists identically."""
        async with self._connection() as conn:
            cur = await conn.execute(
                f"""
                INSERT INTO leaderboards
                    (name, ascending, operator, tie_policy, reset, keep_periods)
                VALUES (%s, %s, %s, %s, %s, %s)
                ON CONFLICT (name) DO NOTHING
                RETURNING {_COLUMNS}
                """,
                [wanted.name, *wanted.config()],
            )
            row = await cur.fetchone()
            if row is None:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM leaderboards WHERE name = %s",
                    [wanted.name],
                )
                row = await cur.fetchone()
        if row is None:
            # Deleted between the two statements: a rare race; say so.
            raise AlreadyExists(
                f"leaderboard {wanted.name!r} is being changed; try again"
            )
        board = self._remember(Board(*row))
        if board.config() != wanted.config():
            raise AlreadyExists(
                f"leaderboard {wanted.name!r} already exists with another"
                " configuration; delete it first to change it"
            )
        return board

    async def delete(self, name: str) -> Board:
        """Delete a leaderboard from the catalog.

        Its entries become unreachable at once (queries go by id) and
        each shard deletes its own rows of it: deleting them all here
        would take row locks in another order than the shards' commits
        and deadlock with them.
        """
        async with self._connection() as conn:
            cur = await conn.execute(
                f"DELETE FROM leaderboards WHERE name = %s RETURNING {_COLUMNS}",
                [name],
            )
            row = await cur.fetchone()
        if row is None:
            raise NotFound(f"leaderboard {name!r} does not exist")
        board = Board(*row)
        self._cache.pop(name, None)
        logger.info("leaderboard %s (id %d) deleted", name, board.id)
        return board

    async def list(self) -> list[Board]:
        """Every leaderboard; while PostgreSQL is down, the last known
        list, if this coordinator has read one."""
        try:
            async with self._connection() as conn:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM leaderboards ORDER BY name"
                )
                rows = await cur.fetchall()
        except Unavailable:
            if not self._listed:
                raise
            return sorted((b for _, b in self._cache.values()), key=lambda b: b.name)
        boards = [Board(*row) for row in rows]
        self._cache = {board.name: (time.monotonic(), board) for board in boards}
        self._listed = True
        return boards

    async def clock_us(self) -> int:
        """PostgreSQL's clock, in microseconds since the Unix epoch."""
        async with self._connection() as conn:
            cur = await conn.execute(
                "SELECT (extract(epoch FROM clock_timestamp()) * 1e6)::bigint"
            )
            row = await cur.fetchone()
        assert row is not None
        return int(row[0])

    def _remember(self, board: Board) -> Board:
        self._cache[board.name] = (time.monotonic(), board)
        return board
