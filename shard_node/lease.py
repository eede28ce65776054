"""One running process per shard name and database.

Two processes serving the same shard would each keep their own index
and overwrite each other's rows, losing acknowledged writes. A shard
therefore holds a PostgreSQL session advisory lock keyed by its name
(``chronoscore._placement.lease_key``) for as long as it runs; a second
process with the same name fails to start. ``chronoscore cluster``
reads the same lock to tell which shards run.
"""

from __future__ import annotations

import asyncio
import logging

import psycopg

from chronoscore._placement import lease_key
from chronoscore.errors import FailedPrecondition

__all__ = ["ShardLease"]

logger = logging.getLogger("chronoscore.shard")


class ShardLease:
    def __init__(self, dsn: str, name: str, *, check_every: float = 5.0) -> None:
        self.dsn = dsn
        self.name = name
        self.check_every = check_every
        self._conn: psycopg.AsyncConnection | None = None

    async def acquire(self) -> None:
        """Take the lock; FailedPrecondition if another process holds it."""
        conn = await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, connect_timeout=5
        )
        cur = await conn.execute(
            "SELECT pg_try_advisory_lock(%s)", [lease_key(self.name)]
        )
        row = await cur.fetchone()
        if not (row and row[0]):
            await conn.close()
            raise FailedPrecondition(
                f"shard {self.name} is already running against this database"
            )
        self._conn = conn

    async def hold(self) -> None:
        """Keep the lock, retaking it after a lost connection.

        Returns only by raising FailedPrecondition, when another process
        took the lock while the connection was down.
        """
        while True:
            await asyncio.sleep(self.check_every)
            try:
                assert self._conn is not None
                await self._conn.execute("SELECT 1")
            except psycopg.Error:
                logger.warning("shard %s lost its lock connection", self.name)
                await self._retake()

    async def _retake(self) -> None:
        if self._conn is not None:
            await self._conn.close()
        while True:
            try:
                await self.acquire()
            except psycopg.OperationalError:
                await asyncio.sleep(self.check_every)
                continue
            logger.info("shard %s retook its lock", self.name)
            return

    async def release(self) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None
