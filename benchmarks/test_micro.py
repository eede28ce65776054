"""Micro-benchmarks of the hot paths: index, merge, keys, protobuf."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from chronoscore import _keys
from chronoscore.v1 import leaderboard_pb2 as pb
from chronoscore.v1 import shard_pb2 as spb
from coordinator.queries import merge
from shard_node.index import IndexEntry, LeaderboardIndex

from .conftest import ENTRIES


def _entries(count: int, seed: int = 1) -> list[IndexEntry]:
    rng = random.Random(seed)
    # Scores with many ties, as on a real leaderboard.
    return [
        IndexEntry(f"user-{i:08d}", int(rng.paretovariate(1.2) * 100), i + 1)
        for i in range(count)
    ]


@pytest.fixture(scope="module")
def index() -> LeaderboardIndex:
    entries = _entries(ENTRIES)
    entries.sort(key=lambda e: (-e.score, e.reached_us, e.user_id))
    return LeaderboardIndex.from_entries(entries)


@pytest.fixture
def users(index: LeaderboardIndex) -> Iterator[str]:
    rng = random.Random(2)
    names = [e.user_id for e in index.top(len(index))]

    def forever() -> Iterator[str]:
        while True:
            yield rng.choice(names)

    return forever()


def test_index_update(
    benchmark: BenchmarkFixture, index: LeaderboardIndex, users: Iterator[str]
) -> None:
    stamp = iter(range(10**12, 10**13))

    def move() -> None:
        user = next(users)
        entry = index.get(user)
        assert entry is not None
        index.upsert(user, entry.score + 1, next(stamp))

    benchmark(move)


def test_index_rank(
    benchmark: BenchmarkFixture, index: LeaderboardIndex, users: Iterator[str]
) -> None:
    benchmark(lambda: index.rank_of(next(users)))


def test_index_count_ahead(
    benchmark: BenchmarkFixture, index: LeaderboardIndex
) -> None:
    middle = index.at(len(index) // 2)
    benchmark(index.count_ahead, middle.score, middle.reached_us, "zzz")


def test_index_top_10(benchmark: BenchmarkFixture, index: LeaderboardIndex) -> None:
    benchmark(index.top, 10)


def test_index_page_at_half(
    benchmark: BenchmarkFixture, index: LeaderboardIndex
) -> None:
    benchmark(index.range, len(index) // 2, 10)


def test_index_rebuild(benchmark: BenchmarkFixture) -> None:
    # As a shard loads: columns in the order PostgreSQL returns them.
    entries = list(_entries(ENTRIES, seed=3))
    users = [e.user_id for e in entries]
    scores = [e.score for e in entries]
    reached = [e.reached_us for e in entries]
    index = benchmark.pedantic(
        LeaderboardIndex.from_columns,
        args=(users, scores, reached),
        rounds=1,
        iterations=1,
    )
    assert len(index) == ENTRIES


def test_merge_top_lists(benchmark: BenchmarkFixture) -> None:
    # Four shards' top 1000, as GetTop(1000) merges them.
    lists = []
    for shard in range(4):
        entries = sorted(
            _entries(1000, seed=shard), key=lambda e: (-e.score, e.reached_us)
        )
        lists.append(
            [
                spb.ShardEntry(
                    user_id=f"{shard}-{e.user_id}",
                    score=e.score,
                    reached_us=e.reached_us,
                )
                for e in entries
            ]
        )
    merged = benchmark(merge, lists, False)
    assert len(merged) == 4000


def test_key_encoding(benchmark: BenchmarkFixture) -> None:
    def encode_decode() -> int:
        key = _keys.make_key(123_456_789, 1_796_256_000_000_000, 3, 42, False)
        return _keys.key_score(key, False) + _keys.key_reached(key)

    assert benchmark(encode_decode) == 123_456_789 + 1_796_256_000_000_000


def _batch() -> pb.SubmitScoresRequest:
    return pb.SubmitScoresRequest(
        updates=[
            pb.SubmitScoreRequest(
                leaderboard="weekly",
                user_id=f"user-{i:08d}",
                score=i * 7,
                mode=pb.SCORE_MODE_INCREMENT,
            )
            for i in range(1000)
        ]
    )


def test_protobuf_batch_encode(benchmark: BenchmarkFixture) -> None:
    batch = _batch()
    data = benchmark(batch.SerializeToString)
    assert len(data) > 20_000


def test_protobuf_batch_decode(benchmark: BenchmarkFixture) -> None:
    data = _batch().SerializeToString()
    decoded = benchmark(pb.SubmitScoresRequest.FromString, data)
    assert len(decoded.updates) == 1000
