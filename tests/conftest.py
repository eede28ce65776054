"""Fixtures: a real PostgreSQL and real cluster processes.

Set ``CHRONOSCORE_TEST_DSN`` to use a PostgreSQL you run; otherwise the
suite starts an embedded one (from the ``pgserver`` wheel) for itself.
Each test gets a database of its own.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from chronoscore import Client
from chronoscore._cluster import LocalCluster


@pytest.fixture
def cluster(dsn: str, tmp_path: Path) -> Iterator[LocalCluster]:
    """Three shard processes and a coordinator on ephemeral ports."""
    with LocalCluster(
        dsn, 3, workdir=tmp_path, log_dir=tmp_path / "logs", log_level="DEBUG"
    ) as running:
        yield running


@pytest.fixture
def client(cluster: LocalCluster) -> Iterator[Client]:
    with Client(cluster.target) as connected:
        yield connected
