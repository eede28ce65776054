"""Bad input gets a precise status and message, and changes nothing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest

from chronoscore._cluster import LocalCluster
from chronoscore.v1 import leaderboard_pb2 as pb
from chronoscore.v1 import leaderboard_pb2_grpc as pb_grpc

BOARD = "board"
DAILY = "daily-board"
BEST = pb.SCORE_MODE_BEST
INCREMENT = pb.SCORE_MODE_INCREMENT


@pytest.fixture
def stub(cluster: LocalCluster) -> Iterator[pb_grpc.LeaderboardServiceStub]:
    channel = grpc.insecure_channel(cluster.target)
    stub = pb_grpc.LeaderboardServiceStub(channel)
    for name, reset in (
        (BOARD, pb.RESET_SCHEDULE_NONE),
        (DAILY, pb.RESET_SCHEDULE_DAILY),
    ):
        config = pb.Leaderboard(
            name=name,
            reset=reset,
            keep_periods=1 if reset == pb.RESET_SCHEDULE_DAILY else 0,
        )
        stub.CreateLeaderboard(
            pb.CreateLeaderboardRequest(leaderboard=config), timeout=10
        )
    yield stub
    channel.close()


def _rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        scores = conn.execute("SELECT * FROM user_score ORDER BY 1, 2").fetchall()
        users = conn.execute(
            "SELECT user_id, display_name FROM users ORDER BY 1"
        ).fetchall()
    return scores + users


def _update(**fields: Any) -> pb.SubmitScoreRequest:
    base: dict[str, Any] = dict(leaderboard=BOARD, user_id="u", score=1, mode=BEST)
    base.update(fields)
    return pb.SubmitScoreRequest(**{k: v for k, v in base.items() if v is not None})


def _expect(call: Any, request: Any, code: grpc.StatusCode, *words: str) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(request, timeout=10)
    assert caught.value.code() == code, caught.value.details()
    for word in words:
        assert word in caught.value.details()


INVALID_UPDATES = [
    pytest.param(_update(user_id=""), ["user_id", "empty"], id="empty-user"),
    pytest.param(_update(user_id="   "), ["user_id", "blank"], id="blank-user"),
    pytest.param(_update(user_id="x" * 129), ["129 bytes", "128"], id="long-user"),
    pytest.param(_update(user_id="é" * 65), ["130 bytes"], id="long-utf8-user"),
    pytest.param(_update(user_id="a\x00b"), ["control"], id="nul-in-user"),
    pytest.param(_update(user_id="\u200b"), ["blank"], id="invisible-user"),
    pytest.param(_update(user_id="ab\u202ec"), ["direction"], id="bidi-user"),
    pytest.param(_update(user_id="a\u2028b"), ["separator"], id="line-sep-user"),
    pytest.param(_update(leaderboard=""), ["leaderboard", "empty"], id="no-board"),
    pytest.param(_update(leaderboard="a b"), ["leaderboard"], id="space-board"),
    pytest.param(_update(score=None), ["score is required"], id="missing-score"),
    pytest.param(_update(mode=7), ["mode 7"], id="unknown-mode"),
    pytest.param(_update(mode=-1), ["mode -1"], id="negative-mode"),
    pytest.param(_update(metadata=b"x" * 1025), ["1025 bytes"], id="big-metadata"),
    pytest.param(_update(request_id="r" * 129), ["request_id"], id="long-request-id"),
]


@pytest.mark.parametrize(("request_", "words"), INVALID_UPDATES)
def test_invalid_update_is_rejected(
    stub: pb_grpc.LeaderboardServiceStub,
    cluster: LocalCluster,
    request_: pb.SubmitScoreRequest,
    words: list[str],
) -> None:
    stub.SubmitScore(_update(user_id="keep", score=5), timeout=10)
    before = _rows(cluster.dsn)

    _expect(stub.SubmitScore, request_, grpc.StatusCode.INVALID_ARGUMENT, *words)

    # In a batch, one bad update rejects the batch and applies nothing.
    batch = pb.SubmitScoresRequest(updates=[_update(user_id="good", score=3), request_])
    _expect(stub.SubmitScores, batch, grpc.StatusCode.INVALID_ARGUMENT, "updates[1].")
    assert _rows(cluster.dsn) == before


def test_zero_is_a_real_score(stub: pb_grpc.LeaderboardServiceStub) -> None:
    reply = stub.SubmitScore(_update(score=0), timeout=10)
    assert (reply.score, reply.changed) == (0, True)


def test_batch_limits(
    stub: pb_grpc.LeaderboardServiceStub, cluster: LocalCluster
) -> None:
    before = _rows(cluster.dsn)
    too_many = pb.SubmitScoresRequest(
        updates=[_update(user_id=f"u{i}") for i in range(10_001)]
    )
    _expect(
        stub.SubmitScores, too_many, grpc.StatusCode.INVALID_ARGUMENT, "10000", "10001"
    )
    _expect(
        stub.SubmitScores,
        pb.SubmitScoresRequest(),
        grpc.StatusCode.INVALID_ARGUMENT,
        "empty",
    )
    assert _rows(cluster.dsn) == before


def test_increment_overflow_is_out_of_range(
    stub: pb_grpc.LeaderboardServiceStub, cluster: LocalCluster
) -> None:
    top = 2**63 - 1
    stub.SubmitScore(_update(user_id="rich", score=top - 1, mode=INCREMENT), timeout=10)
    stub.SubmitScore(
        _update(user_id="poor", score=-(2**63), mode=INCREMENT), timeout=10
    )
    before = _rows(cluster.dsn)

    up = _update(user_id="rich", score=2, mode=INCREMENT)
    _expect(stub.SubmitScore, up, grpc.StatusCode.OUT_OF_RANGE, "int64", "rich")
    down = _update(user_id="poor", score=-1, mode=INCREMENT)
    _expect(stub.SubmitScore, down, grpc.StatusCode.OUT_OF_RANGE, "int64")
    assert _rows(cluster.dsn) == before

    # In a batch the overflowing update fails alone; the rest apply.
    reply = stub.SubmitScores(
        pb.SubmitScoresRequest(
            updates=[up, _update(user_id="rich", score=1, mode=INCREMENT)]
        ),
        timeout=10,
    )
    first, second = reply.results
    assert first.failure.code == grpc.StatusCode.OUT_OF_RANGE.value[0]
    assert second.applied.score == top


def test_unknown_user_rank_is_not_found(stub: pb_grpc.LeaderboardServiceStub) -> None:
    stub.SubmitScore(_update(user_id="known"), timeout=10)
    for board, user in ((BOARD, "ghost"), (DAILY, "known"), ("other-board", "known")):
        request = pb.GetRankRequest(leaderboard=board, user_id=user)
        _expect(stub.GetRank, request, grpc.StatusCode.NOT_FOUND, board)


@pytest.mark.parametrize("limit", [-1, 1001])
def test_top_limit_out_of_bounds(
    stub: pb_grpc.LeaderboardServiceStub, limit: int
) -> None:
    request = pb.GetTopRequest(leaderboard=BOARD, limit=limit)
    _expect(stub.GetTop, request, grpc.StatusCode.INVALID_ARGUMENT, "limit", str(limit))


def test_top_of_empty_leaderboard_is_empty(
    stub: pb_grpc.LeaderboardServiceStub,
) -> None:
    reply = stub.GetTop(pb.GetTopRequest(leaderboard=DAILY), timeout=10)
    assert list(reply.entries) == [] and reply.total == 0


@pytest.mark.parametrize(
    ("user", "name", "words"),
    [
        ("", "Ann", ["user_id"]),
        ("ann", "", ["display_name"]),
        ("ann", "  ", ["display_name"]),
        ("ann", "A\x00nn", ["control"]),
        ("ann", "x" * 257, ["257 bytes"]),
    ],
)
def test_invalid_profile_is_rejected(
    stub: pb_grpc.LeaderboardServiceStub,
    cluster: LocalCluster,
    user: str,
    name: str,
    words: list[str],
) -> None:
    before = _rows(cluster.dsn)
    request = pb.UpsertUserRequest(user_id=user, display_name=name)
    _expect(stub.UpsertUser, request, grpc.StatusCode.INVALID_ARGUMENT, *words)
    assert _rows(cluster.dsn) == before


def test_unknown_leaderboard_is_not_found(
    stub: pb_grpc.LeaderboardServiceStub, cluster: LocalCluster
) -> None:
    before = _rows(cluster.dsn)
    request = _update(leaderboard="no-such-board")
    _expect(stub.SubmitScore, request, grpc.StatusCode.NOT_FOUND, "no-such-board")
    top = pb.GetTopRequest(leaderboard="no-such-board")
    _expect(stub.GetTop, top, grpc.StatusCode.NOT_FOUND, "no-such-board")

    # In a batch, the update for the unknown board fails on its own.
    reply = stub.SubmitScores(
        pb.SubmitScoresRequest(updates=[request, _update(user_id="ok")]), timeout=10
    )
    assert reply.results[0].failure.code == grpc.StatusCode.NOT_FOUND.value[0]
    assert reply.results[1].applied.score == 1
    assert len(_rows(cluster.dsn)) == len(before) + 1


@pytest.mark.parametrize(
    ("config", "words"),
    [
        (pb.Leaderboard(name=""), ["name"]),
        (pb.Leaderboard(name="x", keep_periods=-1), ["keep_periods", "-1"]),
        (
            pb.Leaderboard(name="x", reset=pb.RESET_SCHEDULE_DAILY, keep_periods=1001),
            ["keep_periods", "1001"],
        ),
        (pb.Leaderboard(name="x", keep_periods=2), ["never resets"]),
        (pb.Leaderboard(name="x", sort_order=9), ["sort_order 9"]),
        (pb.Leaderboard(name="x", operator=9), ["operator 9"]),
        (pb.Leaderboard(name="x", tie_policy=9), ["tie_policy 9"]),
        (pb.Leaderboard(name="x", reset=9), ["reset 9"]),
    ],
)
def test_invalid_leaderboard_config(
    stub: pb_grpc.LeaderboardServiceStub, config: pb.Leaderboard, words: list[str]
) -> None:
    request = pb.CreateLeaderboardRequest(leaderboard=config)
    _expect(stub.CreateLeaderboard, request, grpc.StatusCode.INVALID_ARGUMENT, *words)
    boards = stub.ListLeaderboards(pb.ListLeaderboardsRequest(), timeout=10)
    assert sorted(b.name for b in boards.leaderboards) == [BOARD, DAILY]


def test_recreating_with_another_config_already_exists(
    stub: pb_grpc.LeaderboardServiceStub,
) -> None:
    same = pb.CreateLeaderboardRequest(leaderboard=pb.Leaderboard(name=BOARD))
    assert stub.CreateLeaderboard(same, timeout=10).name == BOARD
    other = pb.CreateLeaderboardRequest(
        leaderboard=pb.Leaderboard(name=BOARD, sort_order=pb.SORT_ORDER_ASCENDING)
    )
    _expect(stub.CreateLeaderboard, other, grpc.StatusCode.ALREADY_EXISTS, BOARD)
    got = stub.GetLeaderboard(pb.GetLeaderboardRequest(name=BOARD), timeout=10)
    assert got.sort_order == pb.SORT_ORDER_DESCENDING


@pytest.mark.parametrize(
    ("label", "code", "words"),
    [
        ("yesterday", grpc.StatusCode.INVALID_ARGUMENT, ["YYYY-MM-DD"]),
        ("2026-02-30", grpc.StatusCode.INVALID_ARGUMENT, ["2026-02"]),
        ("9999-12-31", grpc.StatusCode.OUT_OF_RANGE, ["not started"]),
        ("2001-01-01", grpc.StatusCode.NOT_FOUND, ["no longer kept"]),
    ],
)
def test_bad_periods(
    stub: pb_grpc.LeaderboardServiceStub,
    label: str,
    code: grpc.StatusCode,
    words: list[str],
) -> None:
    request = pb.GetTopRequest(leaderboard=DAILY, period=label)
    _expect(stub.GetTop, request, code, *words)
    never = pb.GetTopRequest(leaderboard=BOARD, period="2026-01-01")
    _expect(stub.GetTop, never, grpc.StatusCode.INVALID_ARGUMENT, "never resets")


def test_query_limits(stub: pb_grpc.LeaderboardServiceStub) -> None:
    stub.SubmitScore(_update(user_id="me"), timeout=10)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for above, below in ((101, 0), (0, 101), (-1, 0)):
        request = pb.GetAroundRequest(
            leaderboard=BOARD, user_id="me", above=above, below=below
        )
        _expect(stub.GetAround, request, invalid, "between 0 and 100")
    _expect(
        stub.GetPage, pb.GetPageRequest(leaderboard=BOARD, offset=-1), invalid, "offset"
    )
    _expect(
        stub.GetPage,
        pb.GetPageRequest(leaderboard=BOARD, limit=1001),
        invalid,
        "limit",
    )
    many = pb.GetEntriesRequest(
        leaderboard=BOARD, user_ids=[f"u{i}" for i in range(1001)]
    )
    _expect(stub.GetEntries, many, invalid, "1000")
    none = pb.GetEntriesRequest(leaderboard=BOARD)
    _expect(stub.GetEntries, none, invalid, "empty")
    watch = pb.WatchTopRequest(leaderboard=BOARD, min_interval_ms=50)
    with pytest.raises(grpc.RpcError) as caught:
        next(iter(stub.WatchTop(watch, timeout=10)))
    assert caught.value.code() == invalid

    # An offset past the end is an empty page, not an error.
    past = stub.GetPage(pb.GetPageRequest(leaderboard=BOARD, offset=10**12), timeout=10)
    assert list(past.entries) == [] and past.total == 1


def test_far_future_arrival_time_is_not_believed(cluster: LocalCluster) -> None:
    """A shard keeps its stamps sane even if a caller's clock is wrong."""
    from chronoscore._ring import SHARD_HEADER, Ring
    from chronoscore.v1 import shard_pb2 as spb
    from chronoscore.v1 import shard_pb2_grpc as spb_grpc

    ring = Ring(cluster.names)
    user = "time-traveller"
    owner = ring.owner(user)
    channel = grpc.insecure_channel(f"127.0.0.1:{cluster.shard_ports[owner]}")
    shard = spb_grpc.ShardServiceStub(channel)
    headers = ((SHARD_HEADER, owner),)
    board = spb.BoardPeriod(board_id=1, period_start_us=0)
    for arrived in (2**63 - 1, 10**18, -5):
        update = spb.ShardUpdate(board=board, user_id=user, score=1, mode=INCREMENT)
        reply = shard.Apply(
            spb.ApplyRequest(updates=[update], arrived_us=arrived),
            metadata=headers,
            timeout=10,
        )
        assert reply.results[0].applied.changed
    channel.close()

    with psycopg.connect(cluster.dsn) as conn:
        (reached,) = conn.execute(
            "SELECT reached_us FROM user_score WHERE user_id = %s", [user]
        ).fetchone()  # type: ignore[misc]
    assert reached <= time.time_ns() // 1000 + 60_000_000


@pytest.mark.parametrize(
    "method",
    ["LeaderboardService/SubmitScore", "LeaderboardService/WatchTop"],
)
def test_bytes_that_do_not_parse_are_invalid(
    cluster: LocalCluster, method: str
) -> None:
    # A leaderboard field holding bytes that are not UTF-8.
    raw = bytes.fromhex("0a02fffe")
    channel = grpc.insecure_channel(cluster.target)
    if method.endswith("WatchTop"):
        call = channel.unary_stream(f"/chronoscore.v1.{method}")
        with pytest.raises(grpc.RpcError) as caught:
            next(iter(call(raw, timeout=10)))
    else:
        call = channel.unary_unary(f"/chronoscore.v1.{method}")
        with pytest.raises(grpc.RpcError) as caught:
            call(raw, timeout=10)
    channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "UTF-8" in (caught.value.details() or "")
