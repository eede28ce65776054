"""The cluster's answers against SQL over the same rows.

Three shard processes, a coordinator, and PostgreSQL are all real. The
oracle ranks rows with a window function in the documented tie order,
and a plain dict models what each score should be after each mode.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from chronoscore import Client, Update
from chronoscore._cluster import LocalCluster
from chronoscore._ring import Ring

from .oracle import ranked, scores

BOARD = "season"


@pytest.fixture(autouse=True)
def _board(client: Client) -> None:
    client.create_leaderboard(BOARD)


def _submit(client: Client, *args: Any) -> tuple[int | None, bool]:
    result = client.submit_score(*args)
    return result.score, result.changed


def _model_apply(model: dict[str, int], update: Update) -> int:
    current = model.get(update.user_id)
    if update.mode == "increment":
        new = (current or 0) + update.score
    elif update.mode == "best" and current is not None:
        new = max(current, update.score)
    else:
        new = update.score
    model[update.user_id] = new
    return new


def _random_updates(rng: random.Random, users: int, count: int) -> list[Update]:
    # Few distinct scores, so most entries tie with many others, on
    # every shard.
    modes = ["best", "set", "increment"]
    return [
        Update(
            BOARD,
            f"user-{rng.randrange(users):04d}",
            rng.choice([-3, 0, 0, 1, 2, 5, 5, 5, 8]),
            rng.choice(modes),
        )
        for _ in range(count)
    ]


def _assert_matches_oracle(client: Client, dsn: str) -> None:
    expected = ranked(dsn, BOARD)
    top = client.top(BOARD, 1000).entries
    assert [(e.user_id, e.score, e.rank) for e in top] == expected[:1000]
    for user_id, score, rank in expected:
        found = client.rank(BOARD, user_id)
        assert (found.entry.score, found.entry.rank) == (score, rank), user_id
        assert found.total == len(expected)


def test_ranks_and_top_equal_sql_window_order(
    client: Client, cluster: LocalCluster
) -> None:
    rng = random.Random(20261203)
    model: dict[str, int] = {}
    updates = _random_updates(rng, 300, 3000)

    # Half through batches, half one at a time, checking each result.
    for start in range(0, 1500, 250):
        batch = updates[start : start + 250]
        results = client.submit_scores(batch)
        for update, result in zip(batch, results, strict=True):
            assert result.ok
            assert result.score == _model_apply(model, update)
    for update in updates[1500:]:
        result = client.submit_score(
            update.leaderboard, update.user_id, update.score, update.mode
        )
        assert result.score == _model_apply(model, update)

    assert scores(cluster.dsn, BOARD) == model
    _assert_matches_oracle(client, cluster.dsn)

    # The data really is spread: every shard holds some of the users.
    ring = Ring(cluster.names)
    assert {ring.owner(u) for u in model} == set(cluster.names)


def test_top_merges_equal_scores_across_shards(
    client: Client, cluster: LocalCluster
) -> None:
    users = [f"tie-{i:03d}" for i in range(60)]
    results = client.submit_scores([Update(BOARD, u, 7, "set") for u in users])
    assert all(r.ok for r in results)

    # One batch reaches every shard with one arrival time. Each shard
    # stamps its users in batch order, so equal times only occur across
    # shards, where the user id decides.
    top = client.top(BOARD, 100).entries
    expected = ranked(cluster.dsn, BOARD)
    assert [e.user_id for e in top] == [user for user, _, _ in expected]
    assert [e.rank for e in top] == list(range(1, 61))

    # The merged list interleaves the shards rather than concatenating.
    ring = Ring(cluster.names)
    owners = [ring.owner(e.user_id) for e in top]
    switches = sum(a != b for a, b in zip(owners, owners[1:], strict=False))
    assert switches > len(cluster.names)
    _assert_matches_oracle(client, cluster.dsn)


def test_unchanged_score_keeps_its_place(client: Client, dsn: str) -> None:
    client.submit_score(BOARD, "first", 50, "set")
    client.submit_score(BOARD, "second", 50, "set")
    assert _submit(client, BOARD, "first", 40, "best") == (50, False)
    assert _submit(client, BOARD, "first", 50, "set") == (50, False)
    assert _submit(client, BOARD, "first", 0, "increment") == (50, False)

    assert [e.user_id for e in client.top(BOARD).entries] == ["first", "second"]
    assert client.rank(BOARD, "first").entry.rank == 1
    _assert_matches_oracle(client, dsn)


def test_int64_extremes_are_exact(client: Client, dsn: str) -> None:
    big = 2**53
    values = {
        "max": 2**63 - 1,
        "min": -(2**63),
        "big": big,
        "big+1": big + 1,
        "zero": 0,
        "neg": -1,
    }
    for user, value in values.items():
        assert _submit(client, BOARD, user, value, "set") == (value, True)

    order = [e.user_id for e in client.top(BOARD).entries]
    assert order == ["max", "big+1", "big", "zero", "neg", "min"]
    assert client.rank(BOARD, "big+1").entry.score == big + 1
    _assert_matches_oracle(client, dsn)


@pytest.mark.parametrize("users", [1, 5])
def test_display_names_come_with_entries(client: Client, users: int) -> None:
    for i in range(users):
        client.upsert_user(f"p{i}", f"Player {i}")
        client.submit_score(BOARD, f"p{i}", i, "set")
    client.upsert_user("p0", "Renamed")

    top = client.top(BOARD).entries
    names = {e.user_id: e.display_name for e in top}
    assert names["p0"] == "Renamed"
    assert all(names[f"p{i}"] == f"Player {i}" for i in range(1, users))
    assert client.rank(BOARD, "p0").entry.display_name == "Renamed"
