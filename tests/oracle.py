"""The reference answers: SQL window functions over ``user_score``."""

from __future__ import annotations

import psycopg

# The documented order: higher score, then earlier reached_us, then
# user id as bytes. COLLATE "C" on the column makes that the byte order.
_RANKED = """
    SELECT user_id, score,
           row_number() OVER (ORDER BY score DESC, reached_us, user_id) AS rank
    FROM user_score WHERE leaderboard = %s
    ORDER BY rank
"""


def ranked(dsn: str, leaderboard: str) -> list[tuple[str, int, int]]:
    """(user_id, score, rank) for every entry, in rank order."""
    with psycopg.connect(dsn) as conn:
        return [tuple(row) for row in conn.execute(_RANKED, [leaderboard])]


def scores(dsn: str, leaderboard: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT user_id, score FROM user_score WHERE leaderboard = %s",
            [leaderboard],
        )
        return dict(rows.fetchall())
