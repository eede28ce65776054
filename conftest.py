"""The PostgreSQL server the tests and benchmarks run against.

Set ``CHRONOSCORE_TEST_DSN`` to use a PostgreSQL you run; otherwise the
suite starts an embedded one (from the ``pgserver`` wheel) for itself.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from chronoscore._cluster import embedded_postgres


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The DSN of a PostgreSQL server the tests may create databases on."""
    dsn = os.environ.get("CHRONOSCORE_TEST_DSN")
    if dsn:
        yield dsn
        return
    with embedded_postgres(tmp_path_factory.mktemp("pg")) as dsn:
        yield dsn


@pytest.fixture
def dsn(pg_server: str) -> Iterator[str]:
    """A new, empty database, dropped after the test."""
    name = f"chronoscore_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield make_conninfo(pg_server, dbname=name)
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
