"""A seeded, stateful random walk over the whole API, checked at every step.

Writes are mirrored in a plain Python model of scores, metadata and
request ids. Every query's answer is compared with SQL window functions
over ``user_score`` (which hold the ``reached_us`` tie-breaks the shards
chose); the model's scores are compared with the same rows, so the SQL
oracle and the model check each other.

``CHRONOSCORE_MODEL_STEPS`` and ``CHRONOSCORE_MODEL_SEED`` run a longer
walk locally, e.g. ``CHRONOSCORE_MODEL_STEPS=20000 pytest tests/test_model.py``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from chronoscore import Client, NotFound, OutOfRange, Update
from chronoscore._cluster import LocalCluster
from chronoscore._keys import SCORE_MAX, SCORE_MIN

from .oracle import ranked_with_shared

STEPS = int(os.environ.get("CHRONOSCORE_MODEL_STEPS", "1500"))
SEED = int(os.environ.get("CHRONOSCORE_MODEL_SEED", "20261203"))

# (name, sort order, default operator, tie policy)
BOARDS = [
    ("points", "descending", "best", "earliest"),
    ("laps", "ascending", "best", "shared"),
    ("coins", "descending", "increment", "shared"),
]
MODES = [None, "best", "set", "increment", "decrement"]


@dataclass
class Model:
    """What every score should be, from the writes alone."""

    scores: dict[str, dict[str, int]] = field(default_factory=dict)
    metadata: dict[tuple[str, str], bytes] = field(default_factory=dict)
    requests: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)

    def apply(self, board: str, update: Update) -> int:
        """The expected score, or raise OutOfRange like the server."""
        _, order, default, _ = next(b for b in BOARDS if b[0] == board)
        mode = update.mode or default
        scores = self.scores.setdefault(board, {})
        current = scores.get(update.user_id)
        base = current or 0
        if mode == "increment":
            new = base + update.score
        elif mode == "decrement":
            new = base - update.score
        elif mode == "best" and current is not None:
            pick = min if order == "ascending" else max
            new = pick(current, update.score)
        else:
            new = update.score
        if not SCORE_MIN <= new <= SCORE_MAX:
            raise OutOfRange("overflow")
        if current != new:
            scores[update.user_id] = new
            if update.metadata is not None:
                self.metadata[(board, update.user_id)] = update.metadata
        return new


class Walk:
    def __init__(self, client: Client, dsn: str, rng: random.Random) -> None:
        self.client = client
        self.dsn = dsn
        self.rng = rng
        self.model = Model()
        self.users = [f"user-{i:03d}" for i in range(120)] + ["ünï", "z\U0001f600"]
        self.checks = 0

    # Helpers

    def board(self) -> str:
        return self.rng.choice(BOARDS)[0]

    def user(self) -> str:
        return self.rng.choice(self.users)

    def score(self) -> int:
        # Few distinct values make long runs of equal scores on every
        # shard; now and then an extreme one tests the int64 edges.
        if self.rng.random() < 0.02:
            return self.rng.choice([SCORE_MAX, SCORE_MIN, 2**53 + 1, -(2**53) - 1])
        return self.rng.choice([-7, -1, 0, 0, 1, 3, 3, 5, 8, 13])

    def update(self, board: str) -> Update:
        metadata = None
        if self.rng.random() < 0.3:
            metadata = self.rng.randbytes(self.rng.randrange(0, 40))
        return Update(
            board, self.user(), self.score(), self.rng.choice(MODES), metadata
        )

    def oracle(self, board: str) -> list[tuple[str, int, int, int]]:
        return ranked_with_shared(self.dsn, board)

    def expected_rank(self, row: tuple[str, int, int, int], board: str) -> int:
        shared = next(b[3] for b in BOARDS if b[0] == board) == "shared"
        return row[3] if shared else row[2]

    # Writes

    def submit(self) -> None:
        board = self.board()
        update = self.update(board)
        request_id = ""
        if self.rng.random() < 0.2:
            request_id = f"req-{self.rng.randrange(10**9)}"
        try:
            expected = self.model.apply(board, update)
        except OutOfRange:
            with pytest.raises(OutOfRange):
                self.client.submit_score(
                    board,
                    update.user_id,
                    update.score,
                    update.mode,
                    metadata=update.metadata,
                )
            return
        result = self.client.submit_score(
            board,
            update.user_id,
            update.score,
            update.mode,
            metadata=update.metadata,
            request_id=request_id,
        )
        assert result.score == expected and not result.replayed
        if request_id:
            self.model.requests[(update.user_id, request_id)] = (board, expected)

    def retry(self) -> None:
        """Resend a request id: the first result, applied once."""
        if not self.model.requests:
            return
        (user, request_id), (board, score) = self.rng.choice(
            sorted(self.model.requests.items())
        )
        result = self.client.submit_score(
            board, user, 1, "increment", request_id=request_id
        )
        assert (result.score, result.replayed) == (score, True)

    def batch(self) -> None:
        board = self.board()
        updates = [self.update(board) for _ in range(self.rng.randrange(1, 60))]
        results = self.client.submit_scores(updates)
        for update, result in zip(updates, results, strict=True):
            try:
                expected = self.model.apply(board, update)
            except OutOfRange:
                assert isinstance(result.error, OutOfRange)
                continue
            assert result.ok and result.score == expected

    def remove_entry(self) -> None:
        board, user = self.board(), self.user()
        had = user in self.model.scores.get(board, {})
        assert self.client.remove_entry(board, user) == int(had)
        self.model.scores.get(board, {}).pop(user, None)
        self.model.metadata.pop((board, user), None)

    def remove_user(self) -> None:
        user = self.user()
        had = sum(user in s for s in self.model.scores.values())
        assert self.client.remove_user(user) == had
        for board, scores in self.model.scores.items():
            scores.pop(user, None)
            self.model.metadata.pop((board, user), None)

    def rename(self) -> None:
        self.client.upsert_user(self.user(), f"Player {self.rng.randrange(1000)}")

    # Queries, each against the oracle

    def top(self) -> None:
        board = self.board()
        limit = self.rng.choice([1, 3, 10, 50, 1000])
        page = self.client.top(board, limit)
        self.check_page(board, page.entries, 0, page.total)

    def page(self) -> None:
        board = self.board()
        total = len(self.model.scores.get(board, {}))
        offset = self.rng.randrange(0, total + 5)
        limit = self.rng.choice([1, 2, 7, 25])
        page = self.client.page(board, offset, limit)
        self.check_page(board, page.entries, offset, page.total)

    def rank(self) -> None:
        board, user = self.board(), self.user()
        rows = self.oracle(board)
        row = next((r for r in rows if r[0] == user), None)
        if row is None:
            with pytest.raises(NotFound):
                self.client.rank(board, user)
            return
        found = self.client.rank(board, user)
        assert found.entry.rank == self.expected_rank(row, board)
        assert (found.entry.score, found.shared_rank, found.total) == (
            row[1],
            row[3],
            len(rows),
        )
        self.checks += 1

    def around(self) -> None:
        board, user = self.board(), self.user()
        above, below = self.rng.randrange(0, 6), self.rng.randrange(0, 6)
        rows = self.oracle(board)
        where = next((i for i, r in enumerate(rows) if r[0] == user), None)
        if where is None:
            with pytest.raises(NotFound):
                self.client.around(board, user, above, below)
            return
        page = self.client.around(board, user, above, below)
        width = min(len(rows), above + below + 1)
        start = max(0, min(where - above, len(rows) - width))
        assert user in [e.user_id for e in page.entries]
        self.check_page(board, page.entries, start, page.total, width)

    def friends(self) -> None:
        board = self.board()
        asked = self.rng.sample(self.users, self.rng.randrange(1, 15))
        found = self.client.entries(board, asked)
        rows = {r[0]: r for r in self.oracle(board)}
        expected = sorted((u for u in asked if u in rows), key=lambda u: rows[u][2])
        assert [e.user_id for e in found.entries] == expected
        assert [e.rank for e in found.entries] == [
            self.expected_rank(rows[u], board) for u in expected
        ]
        assert sorted(found.missing) == sorted(u for u in asked if u not in rows)
        assert found.list_ranks[:1] in ([], [1])
        self.checks += 1

    def check_page(
        self,
        board: str,
        entries: list,  # type: ignore[type-arg]
        offset: int,
        total: int,
        width: int | None = None,
    ) -> None:
        rows = self.oracle(board)
        want = rows[offset : offset + (width or len(entries))]
        assert total == len(rows)
        assert [(e.user_id, e.score) for e in entries] == [(r[0], r[1]) for r in want]
        assert [e.rank for e in entries] == [self.expected_rank(r, board) for r in want]
        for e in entries:
            assert e.metadata == self.model.metadata.get((board, e.user_id), b"")
        self.checks += 1

    def check_scores(self) -> None:
        for board, _, _, _ in BOARDS:
            stored = {r[0]: r[1] for r in self.oracle(board)}
            assert stored == self.model.scores.get(board, {}), board


def test_random_walk_matches_the_oracle(cluster: LocalCluster, client: Client) -> None:
    for name, order, operator, ties in BOARDS:
        client.create_leaderboard(
            name, sort_order=order, operator=operator, tie_policy=ties
        )
    walk = Walk(client, cluster.dsn, random.Random(SEED))
    actions: list[tuple[Callable[[], None], int]] = [
        (walk.submit, 30),
        (walk.batch, 8),
        (walk.retry, 4),
        (walk.remove_entry, 3),
        (walk.remove_user, 1),
        (walk.rename, 3),
        (walk.top, 10),
        (walk.page, 10),
        (walk.rank, 10),
        (walk.around, 10),
        (walk.friends, 6),
    ]
    choose = [action for action, weight in actions for _ in range(weight)]
    for step in range(STEPS):
        walk.rng.choice(choose)()
        if step % 50 == 0:
            walk.check_scores()
    walk.check_scores()
    assert walk.checks > STEPS // 3
