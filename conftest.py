"""The PostgreSQL server the tests and benchmarks run against.

Set ``CHRONOSCORE_TEST_DSN`` to use a PostgreSQL you run; otherwise the
suite starts an embedded one (from the ``pgserver`` wheel) for itself.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

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
