"""The reference answers: SQL window functions over ``user_score``."""

from __future__ import annotations

import psycopg

# The documented order: the better score, then earlier reached_us, then
# user id as bytes (COLLATE "C" on the column). rank() gives the shared
# "1224" ranks over the same order.
_RANKED = """
    SELECT s.user_id, s.score,
           row_number() OVER w AS position,
           rank() OVER (ORDER BY
               CASE WHEN b.ascending THEN s.score END,
               CASE WHEN NOT b.ascending THEN s.score END DESC) AS shared
    FROM user_score s JOIN leaderboards b ON b.id = s.board_id
    WHERE b.name = %s AND s.period_start_us = %s
    WINDOW w AS (ORDER BY
        CASE WHEN b.ascending THEN s.score END,
        CASE WHEN NOT b.ascending THEN s.score END DESC,
        s.reached_us, s.user_id)
    ORDER BY position
"""


def ranked_with_shared(
    dsn: str, leaderboard: str, period_start_us: int = 0
) -> list[tuple[str, int, int, int]]:
    """(user_id, score, rank, shared rank) for every entry, in rank order."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(_RANKED, [leaderboard, period_start_us]).fetchall()
    return [(u, s, int(p), int(r)) for u, s, p, r in rows]


def ranked(
    dsn: str, leaderboard: str, period_start_us: int = 0
) -> list[tuple[str, int, int]]:
    """(user_id, score, rank) for every entry, in rank order."""
    return [row[:3] for row in ranked_with_shared(dsn, leaderboard, period_start_us)]


def scores(dsn: str, leaderboard: str, period_start_us: int = 0) -> dict[str, int]:
    return {user: score for user, score, _ in ranked(dsn, leaderboard, period_start_us)}
