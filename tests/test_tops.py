"""Top reads answered from the lists the shards push to the coordinator.

They must be exactly what asking every shard would give: every write
acknowledged through the coordinator shows at once, and a shard that
stops takes its list with it.
"""

from __future__ import annotations

import random
import signal
import socket
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from chronoscore import Client, Update
from chronoscore._cluster import LocalCluster
from chronoscore.v1 import leaderboard_pb2 as pb
from chronoscore.v1 import leaderboard_pb2_grpc as pb_grpc

from .oracle import ranked
from .support import eventually

BOARD = "pushed"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _top_reads(port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    reads = {}
    for line in text.splitlines():
        if line.startswith("chronoscore_top_reads_total{"):
            source = line.split('source="')[1].split('"')[0]
            reads[source] = float(line.split()[-1])
    return reads


def _expected(dsn: str, limit: int) -> list[tuple[str, int]]:
    return [(u, s) for u, s, _ in ranked(dsn, BOARD)[:limit]]


def test_every_acknowledged_write_shows_in_the_next_top(
    dsn: str, tmp_path: Path
) -> None:
    port = _free_port()
    with (
        LocalCluster(
            dsn, 3, workdir=tmp_path, metrics_ports={"coordinator": port}
        ) as cluster,
        Client(cluster.target) as client,
    ):
        client.create_leaderboard(BOARD, operator="set")
        users = [f"p{i}" for i in range(300)]
        rng = random.Random(5)
        client.submit_scores([Update(BOARD, u, rng.randrange(500)) for u in users])
        client.top(BOARD, 10)  # starts following

        for step in range(120):
            user = rng.choice(users)
            score = rng.randrange(1000)
            if step % 10 == 9:
                client.remove_entry(BOARD, client.top(BOARD, 1).entries[0].user_id)
            else:
                client.submit_score(BOARD, user, score)
            limit = rng.choice([1, 10, 100])
            page = client.top(BOARD, limit)
            got = [(e.user_id, e.score) for e in page.entries]
            assert got == _expected(cluster.dsn, limit), f"step {step}"
            assert page.total == len(ranked(cluster.dsn, BOARD))

        # A new display name is a write too.
        leader = client.top(BOARD, 1).entries[0].user_id
        client.upsert_user(leader, "Top Player")
        assert client.top(BOARD, 1).entries[0].display_name == "Top Player"

        # More than the followed entries: asked of every shard.
        deep = client.top(BOARD, 250)
        assert [(e.user_id, e.score) for e in deep.entries] == _expected(
            cluster.dsn, 250
        )

        reads = _top_reads(port)
        # Only the first read, and reads a push was late for, asked the
        # shards; pushes that are late by more than 50 ms are rare.
        assert reads.get("pushed", 0) > 0.8 * sum(reads.values()), reads


def test_a_killed_shard_takes_its_pushed_top_with_it(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard(BOARD)
    client.submit_scores([Update(BOARD, f"k{i}", i) for i in range(100)])
    before = client.top(BOARD, 10)
    assert client.top(BOARD, 10) == before
    victim = cluster.names[1]
    cluster.kill(victim, signal.SIGKILL)

    # Within moments every top read says the shard is missing; until
    # then, only the answer from before the kill is given.
    deadline = time.monotonic() + 3
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.LeaderboardServiceStub(channel)
        while True:
            try:
                reply = stub.GetTop(pb.GetTopRequest(leaderboard=BOARD), timeout=5)
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
                assert victim in (exc.details() or "")
                break
            assert [e.user_id for e in reply.entries] == [
                e.user_id for e in before.entries
            ]
            assert time.monotonic() < deadline, "still answering without a shard"
            time.sleep(0.01)

    cluster.start_shard(victim)
    client.submit_score(BOARD, "newcomer", 1_000)
    top = eventually(lambda: client.top(BOARD, 10))
    assert top.entries[0].user_id == "newcomer"
    assert top.total == 101


@pytest.mark.timeout(120)
def test_a_draining_shard_ends_its_streams_at_once(
    cluster: LocalCluster, client: Client
) -> None:
    """Followed streams must not hold a shard's drain for its grace."""
    client.create_leaderboard(BOARD)
    client.submit_score(BOARD, "d", 1)
    client.top(BOARD)
    victim = cluster.names[0]
    started = time.monotonic()
    assert cluster.kill(victim, signal.SIGTERM) == 0
    assert time.monotonic() - started < 8


def test_idle_top_streams_stay_open(dsn: str, tmp_path: Path) -> None:
    """The coordinator pings its idle FollowTop streams every 10 s; the
    shards must accept those pings rather than close the connection."""
    port = _free_port()
    logs = tmp_path / "logs"
    with (
        LocalCluster(
            dsn, 2, workdir=tmp_path, log_dir=logs, metrics_ports={"coordinator": port}
        ) as cluster,
        Client(cluster.target, timeout=30) as client,
    ):
        client.create_leaderboard(BOARD)
        client.submit_score(BOARD, "idle", 5)
        deadline = time.monotonic() + 15
        while not _top_reads(port).get("pushed") and time.monotonic() < deadline:
            client.top(BOARD, 1)
            time.sleep(0.05)
        assert _top_reads(port).get("pushed")
        # Past the two strikes a shard allows for pings it thinks too
        # frequent (three pings, 10 s apart).
        time.sleep(36)
        assert [e.user_id for e in client.top(BOARD, 1).entries] == ["idle"]
    complaints = [
        line
        for log in logs.glob("*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "too_many_pings" in line or "GOAWAY" in line
    ]
    assert complaints == []
