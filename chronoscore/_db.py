"""PostgreSQL connections shared by the shards and the coordinator."""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

__all__ = ["make_pool", "is_unavailable"]


def make_pool(
    dsn: str, name: str, *, max_size: int, timeout: float
) -> AsyncConnectionPool:
    """A closed pool; ``await pool.open()`` before use.

    Connections are checked when taken from the pool, so after
    PostgreSQL restarts the next call reconnects instead of failing.
    """
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=max_size,
        open=False,
        timeout=timeout,
        check=AsyncConnectionPool.check_connection,
        kwargs={"connect_timeout": max(1, round(timeout))},
        name=name,
        # The pool retries a lost connection with doubling delays; giving
        # each attempt up after 10 s keeps those delays short, so the
        # next call after an outage reconnects at once.
        reconnect_timeout=10.0,
    )


# SQLSTATE classes that mean the server cannot be reached or will not
# take work now: connection exceptions, shutdowns, and lack of resources.
_UNREACHABLE_STATES = ("08", "57P", "53")


def is_unavailable(exc: BaseException) -> bool:
    """Whether an exception means PostgreSQL could not be reached.

    A deadlock or serialization failure is also an OperationalError, but
    the server is up; the caller should retry the transaction instead.
    """
    if isinstance(exc, PoolTimeout):
        return True
    if not isinstance(exc, psycopg.OperationalError):
        return False
    return exc.sqlstate is None or exc.sqlstate.startswith(_UNREACHABLE_STATES)
