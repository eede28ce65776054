"""Faults with real processes: PostgreSQL stopping, SIGTERM, coordinator restarts."""

from __future__ import annotations

import re
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chronoscore import ChronoscoreError, Client, Unavailable
from chronoscore._cluster import LocalCluster
from chronoscore._ring import Ring

from .oracle import scores
from .support import eventually

BOARD = "faults"


class Postgres:
    """A PostgreSQL of the test's own, which it may stop and start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: Any = None

    def start(self) -> str:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR")
            import pgserver

            self.server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        return str(self.server.get_uri())

    def stop(self) -> None:
        self.server.cleanup()


@pytest.fixture
def own_postgres(tmp_path: Path) -> Iterator[tuple[Postgres, str]]:
    postgres = Postgres(tmp_path / "pg")
    dsn = postgres.start()
    yield postgres, dsn
    postgres.stop()


def test_postgres_outage(own_postgres: tuple[Postgres, str], tmp_path: Path) -> None:
    postgres, dsn = own_postgres
    with LocalCluster(
        dsn, 3, workdir=tmp_path / "c", log_dir=tmp_path / "logs"
    ) as cluster:
        with Client(cluster.target, timeout=8) as client:
            client.create_leaderboard(BOARD)
            client.submit_score(BOARD, "before", 10)
            top = client.top(BOARD).entries

            postgres.stop()

            # Writes fail within their deadline, and say why.
            started = time.monotonic()
            with pytest.raises(Unavailable):
                client.submit_score(BOARD, "during", 20)
            assert time.monotonic() - started < 9

            # Calls that need the catalog say so within a short deadline
            # too; the list of leaderboards is the last one read.
            with Client(cluster.target, timeout=2) as hurried:
                for call in (
                    lambda: hurried.create_leaderboard("other"),
                    lambda: hurried.submit_score("unknown", "x", 1),
                ):
                    started = time.monotonic()
                    with pytest.raises(Unavailable, match="PostgreSQL"):
                        call()
                    assert time.monotonic() - started < 2.5
                assert [b.name for b in hurried.list_leaderboards()] == [BOARD]

            # Reads go on serving the last state, for longer than the
            # catalog cache lives.
            for _ in range(3):
                assert client.top(BOARD).entries == top
                assert client.rank(BOARD, "before").entry.score == 10
                time.sleep(2.5)

            postgres.start()
            # Everything recovers by itself, with no restart.
            started = time.monotonic()
            result = eventually(lambda: client.submit_score(BOARD, "after", 30), 30)
            assert result.score == 30
            assert time.monotonic() - started < 30
            assert [e.user_id for e in client.top(BOARD).entries] == ["after", "before"]
        assert all(p.poll() is None for p in cluster.processes.values())
    # The driver's complaints during the outage are log lines like ours.
    lines = [
        line
        for log in (tmp_path / "logs").glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
    ]
    lost = [line for line in lines if "connect" in line and "psycopg" in line]
    assert lost, "no log line told of the lost database"
    stamped = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} WARNING psycopg")
    assert all(stamped.match(line) for line in lost), lost[:3]


def test_sigterm_drains_a_shard(cluster: LocalCluster, client: Client) -> None:
    client.create_leaderboard(BOARD, operator="increment")
    victim = cluster.names[0]
    ring = Ring(cluster.names)
    users = [u for u in (f"d{i}" for i in range(200)) if ring.owner(u) == victim][:20]
    acked: dict[str, int] = {}
    errors: list[ChronoscoreError] = []
    stop = threading.Event()

    def write() -> None:
        with Client(cluster.target, timeout=5) as writer:
            while not stop.is_set():
                for user in users:
                    try:
                        writer.submit_score(BOARD, user, 1)
                    except Unavailable:
                        continue
                    except ChronoscoreError as exc:
                        errors.append(exc)
                        continue
                    acked[user] = acked.get(user, 0) + 1

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(1.0)
    code = cluster.kill(victim, signal.SIGTERM)
    time.sleep(0.5)
    stop.set()
    thread.join()

    # A clean exit; nothing but UNAVAILABLE for calls it would not take.
    assert code == 0
    assert errors == []
    assert sum(acked.values()) > 0
    stored = scores(cluster.dsn, BOARD)
    for user, count in acked.items():
        assert stored[user] >= count

    cluster.start_shard(victim)
    for user in acked:
        found = eventually(lambda u=user: client.rank(BOARD, u), 10)  # type: ignore[misc]
        assert found.entry.score == stored[user]


def test_clients_ride_over_a_coordinator_restart(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard(BOARD, operator="increment")
    client.submit_score(BOARD, "u", 5, request_id="first")
    cluster.restart_coordinator()

    # The same client reconnects by itself; a retried request id is
    # answered from the log, not applied again.
    again = eventually(
        lambda: client.submit_score(BOARD, "u", 5, request_id="first"), 15
    )
    assert (again.score, again.replayed) == (5, True)
    assert client.submit_score(BOARD, "u", 1, request_id="second").score == 6
    assert client.top(BOARD).entries[0].score == 6
