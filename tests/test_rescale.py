"""Changing the shard count while the cluster serves reads and writes.

Three shards hold 100k users. A fourth joins under write and read load;
the mover is killed half-way and run again; then a shard leaves. All
along, readers check that no answer counts a user twice or misses one,
and at the end every user is present once, the shards' counts add up,
the ranks equal the SQL oracle's, and every acknowledged write is there.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from chronoscore import Client, Unavailable, Update
from chronoscore._cluster import LocalCluster
from chronoscore._ring import SLOT_COUNT, Ring, slot_of
from chronoscore.v1 import shard_pb2 as spb
from chronoscore.v1 import shard_pb2_grpc as spb_grpc

from .oracle import ranked
from .support import eventually

BOARD = "rescale"
USERS = int(os.environ.get("CHRONOSCORE_RESCALE_USERS", "100000"))


class Load:
    """Writers and readers running until stopped, keeping what they saw."""

    def __init__(self, target: str, users: int, acked: dict[str, int]) -> None:
        self.target = target
        self.users = users
        self.acked = acked
        self.stopping = threading.Event()
        self.problems: list[str] = []
        self.unavailable = 0
        self.writes = 0
        self.reads = 0
        self._threads = [
            threading.Thread(target=self._guard(self._write), daemon=True),
            threading.Thread(target=self._guard(self._read), daemon=True),
        ]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        for thread in self._threads:
            thread.join(timeout=120)

    def _guard(self, work: Callable[[Client], None]) -> Callable[[], None]:
        def run() -> None:
            with Client(self.target, timeout=30) as client:
                try:
                    work(client)
                except Exception as exc:  # reported by the test, not lost
                    self.problems.append(f"{type(exc).__name__}: {exc}")

        return run

    def _write(self, client: Client) -> None:
        rng = random.Random()
        run = uuid.uuid4().hex[:8]
        round_ = 0
        while not self.stopping.is_set():
            round_ += 1
            batch = {f"u{rng.randrange(self.users)}": rng.randrange(10_000)}
            for _ in range(199):
                batch[f"u{rng.randrange(self.users)}"] = rng.randrange(10_000)
            updates = [
                Update(BOARD, user, score, "set", request_id=f"{run}-{round_}")
                for user, score in batch.items()
            ]
            while updates:
                try:
                    results = client.submit_scores(updates)
                except Unavailable:
                    # Unknown outcome: the request ids make a resend safe.
                    self.unavailable += 1
                    continue
                again = []
                for update, result in zip(updates, results, strict=True):
                    if result.ok:
                        assert result.score == update.score, (update, result)
                        self.acked[update.user_id] = update.score
                        self.writes += 1
                    elif isinstance(result.error, Unavailable):
                        self.unavailable += 1
                        again.append(update)
                    else:
                        self.problems.append(f"write {update}: {result.error}")
                updates = again

    def _read(self, client: Client) -> None:
        rng = random.Random()
        while not self.stopping.is_set():
            try:
                top = client.top(BOARD, 10)
                offset = rng.randrange(self.users - 100)
                page = client.page(BOARD, offset, 100)
            except Unavailable:
                self.unavailable += 1
                continue
            self.reads += 2
            for answer in (top, page):
                if answer.total != self.users:
                    self.problems.append(f"total {answer.total} != {self.users}")
            ids = [e.user_id for e in page.entries]
            if len(set(ids)) != len(ids) or len(ids) != 100:
                self.problems.append(f"page at {offset} has {len(set(ids))} users")


def _mover(dsn: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "chronoscore", "cluster", *args, "--dsn", dsn]


def _slots(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT owner, count(*) FROM ring_slots GROUP BY owner"
        ).fetchall()
    return {owner: int(n) for owner, n in rows}


def _owners(dsn: str) -> dict[int, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT slot, owner FROM ring_slots").fetchall()
    return {int(slot): str(owner) for slot, owner in rows}


def _describe(cluster: LocalCluster, name: str) -> spb.DescribeResponse:
    with grpc.insecure_channel(f"127.0.0.1:{cluster.shard_ports[name]}") as channel:
        stub = spb_grpc.ShardServiceStub(channel)
        reply: spb.DescribeResponse = stub.Describe(
            spb.DescribeRequest(),
            metadata=(("x-chronoscore-shard", name),),
            timeout=10,
        )
    return reply


def _check(cluster: LocalCluster, client: Client, acked: dict[str, int]) -> None:
    """Every user once, counts that add up, the oracle's ranks, no lost write."""
    owned = _slots(cluster.dsn)
    assert sum(owned.values()) == SLOT_COUNT
    members = [n for n in cluster.names if owned.get(n)]
    # The placement settled on exactly the members' ring.
    assert owned == {n: len(Ring(members).slots_of(n)) for n in members}, (
        "slots are not where the ring puts them"
    )

    described = {n: _describe(cluster, n) for n in cluster.names}
    assert {n: d.slots for n, d in described.items() if d.slots} == owned
    assert sum(d.entries for d in described.values()) == USERS

    seen: list[tuple[str, int, int]] = []
    for offset in range(0, USERS, 1000):
        page = client.page(BOARD, offset, 1000)
        assert page.total == USERS
        seen.extend((e.user_id, e.score, e.rank) for e in page.entries)
    assert len(seen) == USERS and len({u for u, _, _ in seen}) == USERS
    assert seen == ranked(cluster.dsn, BOARD)
    scores = {u: s for u, s, _ in seen}
    lost = {u: s for u, s in acked.items() if scores[u] != s}
    assert not lost, f"{len(lost)} acknowledged writes are not there"


@pytest.mark.timeout(900)
def test_shards_join_and_leave_under_load(dsn: str, tmp_path: Path) -> None:
    acked: dict[str, int] = {}
    with LocalCluster(dsn, 3, workdir=tmp_path, log_dir=tmp_path / "logs") as cluster:
        client = Client(cluster.target, timeout=60)
        client.create_leaderboard(BOARD)
        rng = random.Random(1)
        for start in range(0, USERS, 5000):
            updates = [
                Update(BOARD, f"u{i}", rng.randrange(10_000), "set")
                for i in range(start, min(start + 5000, USERS))
            ]
            assert all(r.ok for r in client.submit_scores(updates))
            acked.update((u.user_id, u.score) for u in updates)

        cluster.add_shard("shard-3")
        with Load(cluster.target, USERS, acked) as load:
            # Kill the mover once it has moved some slots but not all.
            log = tmp_path / "mover.log"
            with log.open("wb") as stderr:
                mover = subprocess.Popen(
                    _mover(
                        cluster.dsn, "add-shard", "shard-3", "--slots-per-step", "16"
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            deadline = time.monotonic() + 300
            while _slots(cluster.dsn).get("shard-3", 0) < 1000:
                assert mover.poll() is None, log.read_text()
                assert time.monotonic() < deadline
                time.sleep(0.02)
            mover.send_signal(signal.SIGKILL)
            mover.wait()
            halfway = _slots(cluster.dsn)
            assert (
                1000
                <= halfway["shard-3"]
                < len(Ring(cluster.names).slots_of("shard-3"))
            )
            assert sum(halfway.values()) == SLOT_COUNT
            time.sleep(1)  # serve a while from the half-moved placement

            done = subprocess.run(
                _mover(cluster.dsn, "rebalance", "--json"),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr
            time.sleep(1)
        assert not load.problems, load.problems[:10]
        assert load.writes > 0 and load.reads > 0
        _check(cluster, client, acked)

        # About a quarter of the slots moved, all to the new shard.
        grown = _slots(cluster.dsn)
        assert 0.15 < grown["shard-3"] / SLOT_COUNT < 0.35

        with Load(cluster.target, USERS, acked) as load:
            done = subprocess.run(
                _mover(cluster.dsn, "remove-shard", "shard-1"),
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert done.returncode == 0, done.stderr
            time.sleep(1)
        assert not load.problems, load.problems[:10]
        assert _describe(cluster, "shard-1").entries == 0
        _check(cluster, client, acked)
        cluster.stop_shard("shard-1")
        # Shard-1 is gone and nobody needs it.
        assert client.top(BOARD, 10).total == USERS
        client.close()


def test_moves_refuse_what_cannot_work(dsn: str, tmp_path: Path) -> None:
    with LocalCluster(dsn, 2, workdir=tmp_path) as cluster:
        run = lambda *args: subprocess.run(  # noqa: E731
            _mover(cluster.dsn, *args), capture_output=True, text=True, timeout=120
        )
        # A shard that never started cannot take slots.
        absent = run("add-shard", "shard-9")
        assert absent.returncode == 1
        assert "FAILED_PRECONDITION" in absent.stderr
        assert "shard-9 is not running" in absent.stderr
        assert _slots(cluster.dsn) == {
            n: len(Ring(cluster.names).slots_of(n)) for n in cluster.names
        }
        not_member = run("remove-shard", "shard-7")
        assert not_member.returncode == 1 and "not a member" in not_member.stderr
        bad_name = run("add-shard", "Shard_X")
        assert bad_name.returncode == 1 and "INVALID_ARGUMENT" in bad_name.stderr

        # Removing one of two, then the last. The first removal is cut off
        # right after the members changed, before any slot moved; running
        # the command again finishes it.
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(
                "UPDATE ring_state"
                " SET members = ARRAY['shard-1'], version = version + 1"
            )
        assert set(_slots(cluster.dsn)) == {"shard-0", "shard-1"}
        resumed = run("remove-shard", "shard-0")
        assert resumed.returncode == 0, resumed.stderr
        assert _slots(cluster.dsn) == {"shard-1": SLOT_COUNT}
        last = run("remove-shard", "shard-1")
        assert last.returncode == 1 and "last shard" in last.stderr
        status = run("status", "--json")
        assert status.returncode == 0 and '"pending_slots": 0' in status.stdout


def test_a_slot_that_leaves_and_returns_is_loaded_again(
    dsn: str, tmp_path: Path
) -> None:
    """A shard paused while its slots go away and come back must not keep
    serving (or writing over) what it held before."""
    with LocalCluster(dsn, 3, workdir=tmp_path, log_dir=tmp_path / "logs") as cluster:
        client = Client(cluster.target, timeout=30)
        client.create_leaderboard(BOARD)
        users = [f"v{i}" for i in range(3000)]
        client.submit_scores([Update(BOARD, u, i, "set") for i, u in enumerate(users)])
        run = lambda *args: subprocess.run(  # noqa: E731
            _mover(cluster.dsn, *args), capture_output=True, text=True, timeout=120
        )

        ring = Ring(cluster.names)
        paused = cluster.processes["shard-0"]
        paused.send_signal(signal.SIGSTOP)
        try:
            # The first chunk moves; then the mover gives up waiting for
            # the paused shard to take the change.
            away = run(
                "remove-shard", "shard-0", "--slots-per-step", "64", "--wait", "1"
            )
            assert away.returncode == 1 and "has not taken" in away.stderr
            owners = _owners(cluster.dsn)
            moved = [
                u
                for u in users
                if ring.owner(u) == "shard-0" and owners[slot_of(u)] != "shard-0"
            ]
            assert moved
            results = client.submit_scores(
                [Update(BOARD, u, 99_999, "set") for u in moved]
            )
            assert all(r.ok for r in results)
            back = run("add-shard", "shard-0", "--wait", "1")
            assert back.returncode == 1 and "has not taken" in back.stderr
        finally:
            paused.send_signal(signal.SIGCONT)

        # Back where they started, with the writes made elsewhere meanwhile.
        assert eventually(lambda: client.rank(BOARD, moved[0])).entry.score == 99_999
        assert run("rebalance").returncode == 0
        page = client.page(BOARD, 0, 1000)
        assert [(e.user_id, e.score) for e in page.entries] == [
            (u, s) for u, s, _ in ranked(cluster.dsn, BOARD)[:1000]
        ]
        assert {e.user_id for e in page.entries} >= set(moved)
        client.close()


def test_one_mover_at_a_time_and_bad_dsns(dsn: str, tmp_path: Path) -> None:
    with LocalCluster(dsn, 2, workdir=tmp_path) as cluster:
        run = lambda *args: subprocess.run(  # noqa: E731
            [sys.executable, "-m", "chronoscore", "cluster", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        # Another mover holds the rebalance lock.
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_advisory_lock(%s)", [0x43_68_72_6F_4D_76])
            busy = run("remove-shard", "shard-1", "--dsn", cluster.dsn)
        assert busy.returncode == 1 and "another add-shard" in busy.stderr
        assert set(_slots(cluster.dsn)) == {"shard-0", "shard-1"}

        # A shard killed a moment ago is not running, even while another
        # whose name has the same 32-bit hashtext runs.
        cluster.add_shard("shard-295117")
        cluster.kill("shard-295117")
        cluster.add_shard("shard-3311")
        dead = run("add-shard", "shard-295117", "--dsn", cluster.dsn)
        assert dead.returncode == 1
        assert "shard-295117 is not running" in dead.stderr
        assert set(_slots(cluster.dsn)) == {"shard-0", "shard-1"}

        # A shard stopped in the middle of a commit holds its row; the
        # mover gives up after --wait instead of hanging, and moves nothing.
        with psycopg.connect(cluster.dsn) as conn:
            conn.execute("SELECT 1 FROM ring_shards WHERE name = 'shard-1' FOR SHARE")
            stuck = run("remove-shard", "shard-1", "--wait", "1", "--dsn", cluster.dsn)
            # Under a millisecond still gives up, rather than never.
            brief = run(
                "remove-shard", "shard-1", "--wait", "0.0004", "--dsn", cluster.dsn
            )
        for result in (stuck, brief):
            assert result.returncode == 1 and "UNAVAILABLE" in result.stderr
            assert "held its placement row" in result.stderr
        assert set(_slots(cluster.dsn)) == {"shard-0", "shard-1"}

        # A database that refuses changes (a read-only standby, say).
        read_only = make_conninfo(
            cluster.dsn, options="-c default_transaction_read_only=on"
        )
        refused = run("remove-shard", "shard-1", "--dsn", read_only)
        assert refused.returncode == 1, refused.stderr
        assert "FAILED_PRECONDITION" in refused.stderr
        assert "read-only" in refused.stderr and "Traceback" not in refused.stderr
        assert set(_slots(cluster.dsn)) == {"shard-0", "shard-1"}

        bad = run("status", "--dsn", "not a dsn")
        assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr
        assert "Traceback" not in bad.stderr

        # Whichever step the refused runs reached, running it again
        # finishes the removal.
        done = run("remove-shard", "shard-1", "--dsn", cluster.dsn)
        assert done.returncode == 0, done.stderr
        assert set(_slots(cluster.dsn)) == {"shard-0"}
        again = run("remove-shard", "shard-1", "--dsn", cluster.dsn)
        assert again.returncode == 1 and "not a member" in again.stderr

    # Pointed at a database without a cluster, nothing is created in it.
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    empty = run("status", "--dsn", dsn)
    assert empty.returncode == 1 and "no ChronoScore placement" in empty.stderr
    with psycopg.connect(dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)
