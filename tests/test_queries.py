"""Deep pages, window edges, periods, request ids and live pushes."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from chronoscore import Client, NotFound, Page, Unavailable, Update
from chronoscore._cluster import LocalCluster
from chronoscore._periods import Reset, period_of
from chronoscore._ring import Ring, slot_of
from chronoscore._validate import Update as CheckedUpdate
from chronoscore.v1 import leaderboard_pb2 as pb
from coordinator.catalog import Board
from coordinator.service import _shard_update
from shard_node.store import Store

from .oracle import ranked
from .support import eventually


def _fill(client: Client, board: str, users: int, seed: int) -> None:
    rng = random.Random(seed)
    updates = [
        Update(board, f"p{i:05d}", rng.choice([10, 20, 20, 30, 40]), "set")
        for i in range(users)
    ]
    for start in range(0, users, 1000):
        assert all(r.ok for r in client.submit_scores(updates[start : start + 1000]))


@pytest.mark.parametrize("order", ["descending", "ascending"])
def test_deep_pages_equal_sql_order(
    client: Client, cluster: LocalCluster, order: str
) -> None:
    board = f"deep-{order}"
    client.create_leaderboard(board, sort_order=order)
    _fill(client, board, 3000, seed=5)
    rows = ranked(cluster.dsn, board)
    rng = random.Random(9)
    offsets = [0, 99, 100, 255, 256, 257, 1000, 1500, 2999]
    offsets += rng.sample(range(200, 3000), 25)

    split_runs = 0
    for i, offset in enumerate(offsets):
        # Now and then a page longer than one shard's sample.
        limit = 1000 if i % 8 == 7 else rng.randrange(1, 60)
        page = client.page(board, offset, limit)
        want = rows[offset : offset + limit]
        assert [(e.user_id, e.score, e.rank) for e in page.entries] == want
        assert page.total == 3000
        if 0 < offset < 3000 and rows[offset - 1][1] == rows[offset][1]:
            split_runs += 1
    # Most pages start inside a run of equal scores, which is the case
    # that needs the exact per-shard boundary.
    assert split_runs > 10

    assert client.page(board, 3000, 10).entries == []
    assert client.page(board, 10**15, 10).entries == []

    # Deep pages come whole: names and metadata too.
    named = rows[1500][0]
    client.upsert_user(named, "Deep Diver")
    client.submit_score(board, named, 25, "set", metadata=b"\x00deep")
    rows = ranked(cluster.dsn, board)
    at = [r[0] for r in rows].index(named)
    entry = client.page(board, at, 3).entries[0]
    assert (entry.user_id, entry.display_name, entry.metadata) == (
        named,
        "Deep Diver",
        b"\x00deep",
    )


def test_a_page_read_just_after_a_shift_is_exact(
    client: Client, cluster: LocalCluster
) -> None:
    # The coordinator reuses a page search's first round for a moment;
    # a page read right after many entries moved must still be exact.
    client.create_leaderboard("shift")
    _fill(client, "shift", 3000, seed=6)
    rows = ranked(cluster.dsn, "shift")
    page = client.page("shift", 1500, 20)
    assert [(e.user_id, e.score, e.rank) for e in page.entries] == rows[1500:1520]

    movers = [Update("shift", f"p{i:05d}", 100, "set") for i in range(1, 3000, 3)]
    assert all(r.ok for r in client.submit_scores(movers))
    rows = ranked(cluster.dsn, "shift")
    for offset in (1500, 400, 2900):
        page = client.page("shift", offset, 20)
        want = rows[offset : offset + 20]
        assert [(e.user_id, e.score, e.rank) for e in page.entries] == want


def test_around_shifts_at_both_ends(client: Client, cluster: LocalCluster) -> None:
    client.create_leaderboard("edges")
    _fill(client, "edges", 40, seed=3)
    rows = ranked(cluster.dsn, "edges")
    first, last = rows[0][0], rows[-1][0]

    top = client.around("edges", first, above=3, below=2)
    assert [e.user_id for e in top.entries] == [r[0] for r in rows[:6]]
    bottom = client.around("edges", last, above=2, below=3)
    assert [e.user_id for e in bottom.entries] == [r[0] for r in rows[-6:]]
    middle = client.around("edges", rows[20][0], above=2, below=2)
    assert [e.rank for e in middle.entries] == [19, 20, 21, 22, 23]
    whole = client.around("edges", rows[5][0], above=100, below=100)
    assert [e.user_id for e in whole.entries] == [r[0] for r in rows]


def _daily() -> Board:
    return Board(1, "daily", False, pb.SCORE_MODE_BEST, 1, pb.RESET_SCHEDULE_DAILY, 1)


def _at(text: str) -> int:
    moment = datetime.fromisoformat(text).replace(tzinfo=UTC)
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def test_update_period_is_its_arrival_day_in_utc() -> None:
    update = CheckedUpdate("daily", "u", 1, 0, None, "")
    late = _shard_update(update, _daily(), _at("2026-03-01T23:59:59.999999"))
    early = _shard_update(update, _daily(), _at("2026-03-02T00:00:00"))
    assert late.board.period_start_us == _at("2026-03-01T00:00:00")
    assert early.board.period_start_us == _at("2026-03-02T00:00:00")
    assert late.mode == pb.SCORE_MODE_BEST


def test_past_periods_age_out_even_across_restarts(dsn: str, tmp_path: Path) -> None:
    now_us = time.time_ns() // 1000
    today = period_of(Reset.DAILY, now_us)
    yesterday = period_of(Reset.DAILY, today.start_us - 1)
    long_ago = period_of(Reset.DAILY, today.start_us - 5 * 86_400_000_000)

    with LocalCluster(dsn, 3, workdir=tmp_path / "a") as cluster:
        with Client(cluster.target) as client:
            client.create_leaderboard("daily", reset="daily", keep_periods=1)
            client.submit_score("daily", "today", 5)

    # Rows of earlier periods, as if written on those days.
    with psycopg.connect(dsn) as conn:
        (board_id,) = conn.execute(
            "SELECT id FROM leaderboards WHERE name = 'daily'"
        ).fetchone()  # type: ignore[misc]
        for user, period in (("yday", yesterday), ("old", long_ago)):
            conn.execute(
                "INSERT INTO user_score (board_id, user_id, slot,"
                " period_start_us, score, reached_us) VALUES (%s, %s, %s, %s, 7, %s)",
                [board_id, user, slot_of(user), period.start_us, period.start_us],
            )

    with LocalCluster(dsn, 3, workdir=tmp_path / "b") as cluster:
        with Client(cluster.target) as client:
            current = client.top("daily")
            assert [e.user_id for e in current.entries] == ["today"]
            assert current.period.label == today.label
            past = client.top("daily", period=yesterday.label)
            assert [e.user_id for e in past.entries] == ["yday"]
            with pytest.raises(Exception, match="no longer kept"):
                client.top("daily", period=long_ago.label)

    # The coordinator pruned the aged-out period from PostgreSQL too.
    with psycopg.connect(dsn) as conn:
        users = conn.execute("SELECT user_id FROM user_score ORDER BY 1").fetchall()
    assert users == [("today",), ("yday",)]


_FAST_CLOCK = """
import time

_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + 86_400
time.time_ns = lambda: _time_ns() + 86_400 * 10**9
"""


def test_a_coordinator_a_day_ahead_drops_and_writes_nothing(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A coordinator whose clock is wrong must not decide that another
    coordinator's current period has aged out, nor write to the wrong
    period."""
    with LocalCluster(dsn, 2, workdir=tmp_path, log_dir=tmp_path / "logs") as cluster:
        with Client(cluster.target, timeout=30) as client:
            client.create_leaderboard("today", reset="daily", keep_periods=0)
            client.create_leaderboard("ever")
            assert all(
                r.ok
                for r in client.submit_scores(
                    [Update("today", f"t{i}", i, "set") for i in range(50)]
                )
            )

        clock = tmp_path / "clock"
        clock.mkdir()
        (clock / "sitecustomize.py").write_text(_FAST_CLOCK)
        monkeypatch.setenv("PYTHONPATH", str(clock))
        cluster.kill("coordinator")
        cluster.restart("coordinator")
        with Client(cluster.target, timeout=30) as client:
            # Its first pruning round runs at start; give it time to finish.
            time.sleep(2)
            with pytest.raises(Unavailable, match="clock"):
                client.submit_score("today", "late", 1)
            assert client.submit_score("ever", "late", 1).changed
        with psycopg.connect(dsn) as conn:
            (rows,) = conn.execute(
                "SELECT count(*) FROM user_score s JOIN leaderboards b"
                " ON b.id = s.board_id WHERE b.name = 'today'"
            ).fetchone()  # type: ignore[misc]
        assert rows == 50

        monkeypatch.delenv("PYTHONPATH")
        cluster.kill("coordinator")
        cluster.restart("coordinator")
        with Client(cluster.target, timeout=30) as client:
            assert client.top("today", 100).total == 50
            assert client.submit_score("today", "late", 1).changed
    log = (tmp_path / "logs" / "coordinator.log").read_text()
    assert "clock is" in log and "off PostgreSQL's" in log


def test_request_id_survives_a_shard_restart(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard("coins", operator="increment")
    first = client.submit_score("coins", "payer", 10, request_id="pay-1")
    assert (first.score, first.replayed) == (10, False)

    owner = Ring(cluster.names).owner("payer")
    cluster.kill(owner, signal.SIGKILL)
    cluster.start_shard(owner)

    again = eventually(
        lambda: client.submit_score("coins", "payer", 10, request_id="pay-1")
    )
    assert (again.score, again.replayed) == (10, True)
    assert client.rank("coins", "payer").entry.score == 10
    other = client.submit_score("coins", "payer", 10, request_id="pay-2")
    assert other.score == 20


def test_request_ids_are_kept_for_a_day(dsn: str, cluster: LocalCluster) -> None:
    with psycopg.connect(dsn) as conn:
        for user, hours in (("fresh", 1), ("day-old", 25), ("stale", 49)):
            conn.execute(
                "INSERT INTO request_log VALUES"
                " (%s, 'r', %s, 1, 0, 1, true, now() - make_interval(hours => %s))",
                [user, slot_of(user), hours],
            )

    async def expire() -> int:
        store = Store(dsn)
        await store.open()
        try:
            return await store.expire_requests(list(range(16384)), 48)
        finally:
            await store.close()

    assert asyncio.run(expire()) == 1
    with psycopg.connect(dsn) as conn:
        left = conn.execute("SELECT user_id FROM request_log ORDER BY 1").fetchall()
    assert left == [("day-old",), ("fresh",)]


def test_watch_top_pushes_changes_and_survives_a_shard_restart(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard("live")
    pages: list[Page] = []
    stop = threading.Event()

    def watch() -> None:
        with Client(cluster.target) as watcher:
            for page in watcher.watch_top("live", limit=3, min_interval_ms=100):
                pages.append(page)
                if stop.is_set():
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    client.submit_score("live", "a", 10)
    _wait_for(pages, ["a"])
    client.submit_score("live", "b", 20)
    _wait_for(pages, ["b", "a"])

    owner = Ring(cluster.names).owner("a")
    cluster.kill(owner, signal.SIGKILL)
    time.sleep(0.5)
    cluster.start_shard(owner)
    eventually(lambda: client.submit_score("live", "a", 30))
    _wait_for(pages, ["a", "b"])

    # Pushes come only on change: no two in a row are the same.
    tops = [[e.user_id for e in p.entries] for p in pages]
    assert all(x != y for x, y in zip(tops, tops[1:], strict=False))
    stop.set()
    client.submit_score("live", "c", 40)
    thread.join(timeout=10)
    assert not thread.is_alive()


def _wait_for(pages: list[Page], users: list[str], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if pages and [e.user_id for e in pages[-1].entries] == users:
            return
        time.sleep(0.05)
    raise AssertionError(f"never saw {users}; last {pages[-1:]}")


def test_batch_order_decides_ties_across_shards(
    client: Client, cluster: LocalCluster
) -> None:
    client.create_leaderboard("ties")
    ring = Ring(cluster.names)
    # Pairs of users on different shards, the later one with the
    # smaller id: only arrival order can put the first one ahead.
    users = [f"u{i:03d}" for i in range(60)]
    late = sorted(users, reverse=True)
    assert len({ring.owner(u) for u in late[:10]}) > 1
    results = client.submit_scores([Update("ties", u, 100) for u in late])
    assert all(r.ok for r in results)
    assert [e.user_id for e in client.top("ties", 100).entries] == late


def test_delete_while_writing_leaves_nothing_behind(
    client: Client, cluster: LocalCluster
) -> None:
    stop = threading.Event()
    failures: list[Exception] = []

    def write() -> None:
        with Client(cluster.target) as writer:
            i = 0
            while not stop.is_set():
                i += 1
                batch = [Update("churn", f"w{j}", i) for j in range(200)]
                try:
                    results = writer.submit_scores(batch)
                except Exception as exc:  # noqa: BLE001 - recorded, then asserted
                    failures.append(exc)
                    continue
                for result in results:
                    if result.error is not None and not isinstance(
                        result.error, NotFound
                    ):
                        failures.append(result.error)

    client.create_leaderboard("churn")
    threads = [threading.Thread(target=write) for _ in range(2)]
    for thread in threads:
        thread.start()
    for _ in range(10):
        client.delete_leaderboard("churn")
        client.create_leaderboard("churn")
        time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join()
    client.delete_leaderboard("churn")

    assert failures == []
    # Rows of deleted leaderboards go within a sweep (every 30 s).
    deadline = time.monotonic() + 45
    while time.monotonic() < deadline:
        with psycopg.connect(cluster.dsn) as conn:
            (left,) = conn.execute(
                "SELECT count(*) FROM user_score s WHERE NOT EXISTS"
                " (SELECT 1 FROM leaderboards b WHERE b.id = s.board_id)"
            ).fetchone()  # type: ignore[misc]
        if left == 0:
            break
        time.sleep(1)
    assert left == 0


def test_many_watchers_all_get_each_change(
    cluster: LocalCluster, client: Client
) -> None:
    client.create_leaderboard("crowd")
    client.submit_score("crowd", "a", 1)
    seen: list[list[str]] = [[] for _ in range(40)]
    stop = threading.Event()

    def watch(slot: list[str]) -> None:
        with Client(cluster.target) as watcher:
            for page in watcher.watch_top("crowd", limit=5, min_interval_ms=100):
                slot.append(",".join(e.user_id for e in page.entries))
                if stop.is_set():
                    return

    threads = [threading.Thread(target=watch, args=(s,), daemon=True) for s in seen]
    for thread in threads:
        thread.start()
    time.sleep(1)
    client.submit_score("crowd", "b", 2)
    deadline = time.monotonic() + 10
    while any(s[-1:] != ["b,a"] for s in seen) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(s[-1:] == ["b,a"] for s in seen)
    stop.set()
    client.submit_score("crowd", "c", 3)
    for thread in threads:
        thread.join(timeout=10)


def test_concurrent_batches_each_keep_their_order(
    client: Client, cluster: LocalCluster
) -> None:
    client.create_leaderboard("rush")
    batches = [[f"b{t}-{n}-{i}" for i in range(8)] for t in range(4) for n in range(15)]

    def send(chunk: list[list[str]]) -> None:
        with Client(cluster.target) as sender:
            for users in chunk:
                updates = [Update("rush", u, 100) for u in users]
                assert all(r.ok for r in sender.submit_scores(updates))

    threads = [threading.Thread(target=send, args=(batches[t::4],)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    place = {u: r for u, _, r in ranked(cluster.dsn, "rush")}
    for users in batches:
        ranks = [place[u] for u in users]
        assert ranks == sorted(ranks), users
