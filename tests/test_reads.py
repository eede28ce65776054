"""A shard's Read stream, called directly: what a coordinator relies on."""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Iterator

import grpc
import psycopg
import pytest

from chronoscore import Client, Unavailable, Update
from chronoscore._cluster import LocalCluster
from chronoscore._ring import SHARD_HEADER, Ring
from chronoscore.v1 import shard_pb2 as spb
from chronoscore.v1 import shard_pb2_grpc as spb_grpc

BOARD = "reads"


class Stream:
    """A Read stream to one shard, sending one request at a time."""

    def __init__(self, cluster: LocalCluster, shard: str, header: str = "") -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{cluster.shard_ports[shard]}")
        self._requests: queue.Queue[spb.ReadRequest | None] = queue.Queue()
        stub = spb_grpc.ShardServiceStub(self.channel)
        self.replies = stub.Read(
            iter(self._requests.get, None),
            metadata=((SHARD_HEADER, header or shard),),
            timeout=60,
        )

    def ask(self, request: spb.ReadRequest) -> spb.ReadReply:
        self._requests.put(request)
        return next(self.replies)

    def close(self) -> None:
        self._requests.put(None)
        self.channel.close()


@pytest.fixture
def board(cluster: LocalCluster, client: Client) -> Iterator[spb.BoardPeriod]:
    client.create_leaderboard(BOARD, operator="set")
    client.submit_scores([Update(BOARD, f"r{i}", i) for i in range(60)])
    with psycopg.connect(cluster.dsn) as conn:
        (board_id,) = conn.execute(
            "SELECT id FROM leaderboards WHERE name = %s", [BOARD]
        ).fetchone() or (0,)
    yield spb.BoardPeriod(board_id=board_id)


def _owned(cluster: LocalCluster, shard: str) -> list[str]:
    ring = Ring(cluster.names)
    return [u for u in (f"r{i}" for i in range(60)) if ring.owner(u) == shard]


def test_reads_are_answered_in_turn_and_a_bad_one_fails_alone(
    cluster: LocalCluster, board: spb.BoardPeriod
) -> None:
    shard = cluster.names[0]
    mine = _owned(cluster, shard)
    stream = Stream(cluster, shard)
    try:
        top = stream.ask(
            spb.ReadRequest(id=7, range=spb.RangeRequest(board=board, limit=3))
        )
        assert top.id == 7 and top.WhichOneof("result") == "entries"
        assert top.entries.total == len(mine)
        best = sorted(mine, key=lambda u: -int(u[1:]))[:3]
        assert [e.user_id for e in top.entries.entries] == best

        bad = stream.ask(
            spb.ReadRequest(
                id=8,
                range=spb.RangeRequest(board=spb.BoardPeriod(board_id=0), limit=3),
            )
        )
        assert bad.id == 8 and bad.WhichOneof("result") == "failure"
        assert bad.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert "board_id must be positive" in bad.failure.message

        neither = stream.ask(spb.ReadRequest(id=9))
        assert neither.failure.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]

        moved = stream.ask(
            spb.ReadRequest(
                id=10,
                slots_digest="not-the-digest",
                count=spb.CountRequest(board=board),
            )
        )
        assert moved.failure.code == grpc.StatusCode.ABORTED.value[0]
        assert "owns other slots" in moved.failure.message

        # The stream is still good after the failures.
        found = stream.ask(
            spb.ReadRequest(
                id=11, lookup=spb.LookupRequest(board=board, user_ids=[best[1]])
            )
        )
        assert found.id == 11
        assert [(e.user_id, e.position) for e in found.entries.entries] == [
            (best[1], 1)
        ]
        counted = stream.ask(
            spb.ReadRequest(
                id=12,
                count=spb.CountRequest(
                    board=board,
                    positions=[spb.Position(score=int(best[0][1:]), user_id="")],
                ),
            )
        )
        assert [(c.ahead, c.better) for c in counted.count.counts] == [(0, 0)]
        between = stream.ask(
            spb.ReadRequest(id=13, between=spb.BetweenRequest(board=board, count=2))
        )
        assert (between.between.start, between.between.end) == (0, len(mine))
        assert len(between.between.entries) == 2
    finally:
        stream.close()


def test_a_stream_for_another_shard_is_refused(cluster: LocalCluster) -> None:
    stream = Stream(cluster, cluster.names[0], header=cluster.names[1])
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stream.ask(spb.ReadRequest(id=1))
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert f"this is shard {cluster.names[0]}" in (caught.value.details() or "")
    finally:
        stream.close()


def test_bytes_that_do_not_parse_end_the_stream_as_invalid(
    cluster: LocalCluster,
) -> None:
    shard = cluster.names[0]
    channel = grpc.insecure_channel(f"127.0.0.1:{cluster.shard_ports[shard]}")
    read = channel.stream_stream("/chronoscore.v1.ShardService/Read")
    # A RangeRequest whose board field is cut short.
    raw = bytes.fromhex("1a020a05")
    with pytest.raises(grpc.RpcError) as caught:
        list(read(iter([raw]), metadata=((SHARD_HEADER, shard),), timeout=10))
    channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in (caught.value.details() or "")


def test_sigterm_ends_an_idle_stream_and_the_shard_exits_at_once(
    cluster: LocalCluster, board: spb.BoardPeriod
) -> None:
    shard = cluster.names[0]
    stream = Stream(cluster, shard)
    ended: list[BaseException | None] = []
    try:
        first = stream.ask(
            spb.ReadRequest(id=1, range=spb.RangeRequest(board=board, limit=1))
        )
        assert first.WhichOneof("result") == "entries"

        def drain_replies() -> None:
            try:
                ended.append(next(stream.replies, None))  # type: ignore[arg-type]
            except grpc.RpcError as exc:
                ended.append(exc)

        waiter = threading.Thread(target=drain_replies)
        waiter.start()
        started = time.monotonic()
        code = cluster.kill(shard, signal.SIGTERM)
        took = time.monotonic() - started
        waiter.join(timeout=10)
    finally:
        stream.close()

    assert code == 0
    # Well inside the 10 s the server would give a stream that stayed.
    assert took < 8, f"the shard took {took:.1f} s to stop"
    assert ended == [None], "the stream should end with OK and no reply"
    assert stream.replies.code() == grpc.StatusCode.OK  # type: ignore[attr-defined]


def test_a_paused_shard_fails_reads_in_time_and_serves_again_after(
    cluster: LocalCluster, client: Client, board: spb.BoardPeriod
) -> None:
    """Through the coordinator: reads that need a shard that stopped
    answering fail as UNAVAILABLE by their deadline; the late answers are
    dropped, and the same stream serves once the shard goes on."""
    user = _owned(cluster, cluster.names[1])[0]
    before = client.rank(BOARD, user)
    paused = cluster.processes[cluster.names[0]]
    paused.send_signal(signal.SIGSTOP)
    try:
        with Client(cluster.target, timeout=1.5) as impatient:
            started = time.monotonic()
            with pytest.raises(Unavailable) as caught:
                impatient.rank(BOARD, user)
            took = time.monotonic() - started
    finally:
        paused.send_signal(signal.SIGCONT)
    assert took < 2.5, f"failed after {took:.1f} s"
    assert cluster.names[0] in str(caught.value)
    for _ in range(3):
        assert client.rank(BOARD, user) == before


def test_callers_that_give_up_early_do_not_fail_the_others(
    cluster: LocalCluster, board: spb.BoardPeriod
) -> None:
    """Reads whose deadlines pass while their messages are being sent
    leave the shared streams whole for every other read."""
    from chronoscore.v1 import leaderboard_pb2 as pb
    from chronoscore.v1 import leaderboard_pb2_grpc as pb_grpc

    users = [f"r{i}" for i in range(60)]
    with grpc.insecure_channel(cluster.target) as channel:
        stub = pb_grpc.LeaderboardServiceStub(channel)
        failures: list[grpc.RpcError] = []
        for round_ in range(40):
            hasty = [
                stub.GetRank.future(
                    pb.GetRankRequest(leaderboard=BOARD, user_id=users[i]),
                    timeout=0.002 * (1 + i % 10),
                )
                for i in range(20)
            ]
            try:
                stub.GetRank(
                    pb.GetRankRequest(leaderboard=BOARD, user_id=users[round_]),
                    timeout=10,
                )
                stub.GetPage(
                    pb.GetPageRequest(leaderboard=BOARD, offset=20, limit=5),
                    timeout=10,
                )
            except grpc.RpcError as exc:
                failures.append(exc)
            for call in hasty:
                try:
                    call.result()
                except grpc.RpcError as exc:
                    # Only their own deadline, or a shard read that hit it.
                    assert exc.code() in (
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        grpc.StatusCode.UNAVAILABLE,
                    ), exc
        assert failures == []
    assert cluster.log_dir is not None
    log = (cluster.log_dir / "coordinator.log").read_text()
    assert "never retrieved" not in log and "Traceback" not in log
