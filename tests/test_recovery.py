"""Restarts and kills of real processes: nothing acknowledged is lost."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import psycopg
import pytest

from chronoscore import Client, FailedPrecondition, Unavailable, Update
from chronoscore._cluster import LocalCluster
from chronoscore._ring import Ring
from chronoscore.v1 import leaderboard_pb2 as pb
from chronoscore.v1 import leaderboard_pb2_grpc as pb_grpc

from .oracle import ranked, scores
from .support import eventually

BOARD = "arena"


def test_full_restart_keeps_scores_and_ranks(dsn: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    updates = [
        Update(BOARD, f"u{rng.randrange(400)}", rng.randrange(-5, 50), mode)
        for mode in ("set", "increment", "best")
        for _ in range(1500)
    ]

    with LocalCluster(dsn, 3, workdir=tmp_path / "a") as cluster:
        with Client(cluster.target) as client:
            client.create_leaderboard(BOARD)
            client.upsert_user("u1", "One")
            assert all(r.ok for r in client.submit_scores(updates))
            before_top = client.top(BOARD, 1000).entries
            before_ranks = {
                e.user_id: client.rank(BOARD, e.user_id) for e in before_top
            }

    # Every process is new: the indexes come back from PostgreSQL alone.
    with LocalCluster(dsn, 3, workdir=tmp_path / "b") as cluster:
        with Client(cluster.target) as client:
            assert client.top(BOARD, 1000).entries == before_top
            for user, found in before_ranks.items():
                assert client.rank(BOARD, user) == found
    assert [(e.user_id, e.score, e.rank) for e in before_top] == ranked(dsn, BOARD)
    assert before_ranks["u1"].entry.display_name == "One"


def _writer(
    target: str,
    users: list[str],
    acked: dict[str, int],
    tried: dict[str, int],
    stop: threading.Event,
) -> None:
    """Increment each user in turn, recording attempts and acknowledgements."""
    with Client(target, timeout=2.0) as client:
        while not stop.is_set():
            for user in users:
                tried[user] = tried.get(user, 0) + 1
                try:
                    client.submit_score(BOARD, user, 1, "increment")
                except Unavailable:
                    # Not acknowledged: it may or may not have committed.
                    continue
                acked[user] = acked.get(user, 0) + 1


def test_kill_9_loses_no_acknowledged_write(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard(BOARD)
    ring = Ring(cluster.names)
    victim = cluster.names[1]
    users = [f"w{i}" for i in range(60)]
    assert any(ring.owner(u) == victim for u in users)

    acked: dict[str, int] = {}
    tried: dict[str, int] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=_writer, args=(cluster.target, users[i::4], acked, tried, stop)
        )
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    cluster.kill(victim, signal.SIGKILL)
    time.sleep(1.0)
    cluster.start_shard(victim)
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join()

    victims = [u for u in users if ring.owner(u) == victim]
    assert sum(acked.get(u, 0) for u in victims) > 0
    stored = scores(cluster.dsn, BOARD)
    with Client(cluster.target) as client:
        for user in users:
            # Each acknowledged increment committed; an unacknowledged
            # one may have committed too, but never twice.
            assert acked.get(user, 0) <= stored[user] <= tried[user], user
            assert client.rank(BOARD, user).entry.score == stored[user]


def test_shard_down_gives_unavailable(cluster: LocalCluster, client: Client) -> None:
    client.create_leaderboard(BOARD)
    client.submit_score(BOARD, "x", 1, "set")
    victim = cluster.names[0]
    cluster.kill(victim, signal.SIGKILL)

    # The coordinator answers UNAVAILABLE itself, well before the call's
    # deadline would have said DEADLINE_EXCEEDED. (The Python client
    # would retry a read until its deadline, so this asks the raw stub.)
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.LeaderboardServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetTop(pb.GetTopRequest(leaderboard=BOARD), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert victim in (caught.value.details() or "")

    # Once the shard is back, the coordinator reconnects by itself.
    cluster.start_shard(victim)
    assert eventually(lambda: client.top(BOARD).entries)[0].user_id == "x"


def test_second_process_for_a_shard_is_refused(cluster: LocalCluster) -> None:
    name = cluster.names[0]
    # Same name and database, a different port: the shard's lock says no.
    result = subprocess.run(
        [sys.executable, "-m", "shard_node", "--name", name]
        + ["--ring", ",".join(cluster.names), "--dsn", cluster.dsn, "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "already running against this database" in result.stderr

    # Same port: it is taken, not shared.
    port = cluster.shard_ports[name]
    result = subprocess.run(
        [sys.executable, "-m", "coordinator", "--port", str(port)]
        + ["--shards", f"{name}=127.0.0.1:{port}", "--dsn", cluster.dsn],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_killed_supervisor_takes_its_processes_with_it(
    dsn: str, tmp_path: Path
) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from chronoscore._cluster import LocalCluster\n"
        f"c = LocalCluster({dsn!r}, 2, workdir=Path({str(tmp_path)!r})).start()\n"
        "print(' '.join(str(p.pid) for p in c.processes.values()), flush=True)\n"
        "time.sleep(600)\n"
    )
    supervisor = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True
    )
    assert supervisor.stdout is not None
    pids = [int(p) for p in supervisor.stdout.readline().split()]
    assert len(pids) == 3
    supervisor.kill()
    supervisor.wait()
    supervisor.stdout.close()

    deadline = time.monotonic() + 30
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in pids)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie has exited; only its parent (now init) has yet to reap it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


@contextmanager
def _coordinator(
    cluster: LocalCluster, shards: str, tmp_path: Path
) -> Iterator[Client]:
    """A second coordinator over ``shards``, and a client of it."""
    port_file = tmp_path / "second.port"
    process = subprocess.Popen(
        [sys.executable, "-m", "coordinator", "--dsn", cluster.dsn, "--port", "0"]
        + ["--shards", shards, "--port-file", str(port_file)],
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        with Client(f"127.0.0.1:{port_file.read_text().strip()}") as client:
            yield client
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_coordinator_routes_by_the_database_not_its_flags(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    client.create_leaderboard(BOARD)
    client.submit_scores([Update(BOARD, f"p{i}", i) for i in range(30)])
    # A coordinator told of one shard only still routes by the placement
    # in the database and finds the others at the addresses they recorded.
    name = cluster.names[0]
    only = f"{name}=127.0.0.1:{cluster.shard_ports[name]}"
    with _coordinator(cluster, only, tmp_path) as other:
        page = other.top(BOARD, 30)
        assert page.total == 30
        assert [e.user_id for e in page.entries] == [f"p{i}" for i in range(29, -1, -1)]
        assert other.submit_score(BOARD, "p0", 100).changed
    assert client.rank(BOARD, "p0").entry.rank == 1


def test_two_names_for_one_address_are_refused(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    client.create_leaderboard(BOARD)
    first, second, third = cluster.names
    port = cluster.shard_ports
    miswired = (
        f"{first}=127.0.0.1:{port[first]},{second}=127.0.0.1:{port[first]},"
        f"{third}=127.0.0.1:{port[third]}"
    )
    with _coordinator(cluster, miswired, tmp_path) as wrong:
        with pytest.raises(FailedPrecondition, match="points here"):
            wrong.top(BOARD)
        # Reads over shard streams get the same answer every time, never
        # an error of gRPC's own from a write racing the refusal.
        for offset in range(300, 320):
            with pytest.raises(FailedPrecondition, match="points here"):
                wrong.page(BOARD, offset, 5)


def test_database_must_be_utf8(pg_server: str, tmp_path: Path) -> None:
    import uuid

    from psycopg.conninfo import make_conninfo

    name = f"chronoscore_latin1_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(
            f"CREATE DATABASE {name} ENCODING 'LATIN1' TEMPLATE template0"
            " LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    try:
        result = subprocess.run(
            [sys.executable, "-m", "shard_node", "--name", "shard-0"]
            + ["--ring", "shard-0", "--port", "0"]
            + ["--dsn", make_conninfo(pg_server, dbname=name)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "encoding is LATIN1" in result.stderr
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {name}")


def test_every_server_answers_health_checks(cluster: LocalCluster) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ports = [cluster.coordinator_port, *cluster.shard_ports.values()]
    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_metrics_are_served(dsn: str, tmp_path: Path) -> None:
    import socket
    import urllib.request

    def free_port() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    ports = {"coordinator": free_port(), "shard-0": free_port()}
    with LocalCluster(dsn, 2, workdir=tmp_path, metrics_ports=ports) as cluster:
        with Client(cluster.target) as client:
            client.create_leaderboard(BOARD)
            client.submit_scores([Update(BOARD, f"m{i}", i) for i in range(50)])
            client.top(BOARD)

        def scrape(name: str) -> str:
            url = f"http://127.0.0.1:{ports[name]}/metrics"
            with urllib.request.urlopen(url, timeout=10) as reply:
                return str(reply.read().decode())

        coordinator = scrape("coordinator")
        assert 'chronoscore_rpc_seconds_count{code="OK",method="GetTop"} 1.0' in (
            coordinator
        )
        assert "chronoscore_ring_version 1.0" in coordinator
        shard = scrape("shard-0")
        assert 'chronoscore_rpc_seconds_count{code="OK",method="Apply"}' in shard
        assert "chronoscore_commit_batch_updates_count" in shard
        assert "chronoscore_commit_lag_seconds_bucket" in shard
        assert "chronoscore_shard_epoch " in shard
        owned = len(Ring(cluster.names).slots_of("shard-0"))
        assert f"chronoscore_shard_slots {float(owned)}" in shard
        sizes = [
            line
            for line in shard.splitlines()
            if line.startswith("chronoscore_index_entries{")
        ]
        assert len(sizes) == 1 and float(sizes[0].split()[-1]) > 0


def _lease_backend(dsn: str, name: str) -> int:
    """The PostgreSQL backend holding a shard's lock."""
    from chronoscore._placement import lease_key

    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 1 AND (classid::bigint << 32 | objid::bigint) = %s",
            [lease_key(name) & (2**64 - 1)],
        ).fetchone()
    assert row is not None, f"{name} holds no lock"
    return int(row[0])


def test_a_shard_that_lost_its_lock_cannot_write_on(
    cluster: LocalCluster, client: Client, tmp_path: Path
) -> None:
    """A process that lost its lock while another took over as the same
    shard is fenced off: its writes fail and it exits. Coordinators follow
    the shard to its new address."""
    from chronoscore._ring import SHARD_HEADER
    from chronoscore.v1 import shard_pb2 as spb
    from chronoscore.v1 import shard_pb2_grpc as spb_grpc

    client.create_leaderboard(BOARD, operator="set")
    name = cluster.names[0]
    ring = Ring(cluster.names)
    users = [u for u in (f"f{i}" for i in range(200)) if ring.owner(u) == name]
    client.submit_scores([Update(BOARD, u, 1) for u in users])

    old = cluster.processes[name]
    old_port = cluster.shard_ports[name]
    old.send_signal(signal.SIGSTOP)
    port_file = tmp_path / "second.port"
    try:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(%s)", [_lease_backend(cluster.dsn, name)]
            )
        second = subprocess.Popen(
            [sys.executable, "-m", "shard_node", "--name", name, "--dsn"]
            + [cluster.dsn, "--port", "0", "--port-file", str(port_file)],
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not port_file.exists():
            assert second.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        old.send_signal(signal.SIGCONT)

    try:
        with psycopg.connect(cluster.dsn) as conn:
            (board_id,) = conn.execute(
                "SELECT id FROM leaderboards WHERE name = %s", [BOARD]
            ).fetchone() or (0,)
        # The old process still answers on its port, but cannot commit.
        with grpc.insecure_channel(f"127.0.0.1:{old_port}") as channel:
            stub = spb_grpc.ShardServiceStub(channel)
            update = spb.ShardUpdate(
                board=spb.BoardPeriod(board_id=board_id),
                user_id=users[0],
                score=666,
                mode=pb.SCORE_MODE_SET,
            )
            try:
                reply = stub.Apply(
                    spb.ApplyRequest(updates=[update]),
                    metadata=((SHARD_HEADER, name),),
                    timeout=30,
                )
                failure = reply.results[0].failure
                assert failure.code == grpc.StatusCode.UNAVAILABLE.value[0], reply
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
        assert old.wait(timeout=30) != 0
        assert scores(cluster.dsn, BOARD)[users[0]] == 1

        # The coordinator finds the shard where it runs now.
        rank = eventually(lambda: client.rank(BOARD, users[0]), seconds=20)
        assert rank.entry.score == 1
        client.submit_score(BOARD, users[0], 2)
        assert client.rank(BOARD, users[0]).entry.score == 2
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
