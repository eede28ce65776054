"""The side-by-side comparison runs end to end on a small workload.

Figures from this run mean nothing; it only keeps the harness working.
Real figures come from ``chronoscore bench compare --users 1000000``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from chronoscore._bench import Settings, Workload, compare, scaling, targets


def _redis_up(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def test_workload_is_skewed_and_tied() -> None:
    workload = Workload(5000)
    scores = [s for _, s in workload.scores()]
    assert len(set(scores)) < len(scores) / 10
    active = workload.active(5000)
    busiest = max(active.count(u) for u in set(active))
    assert busiest > 50 * len(active) / workload.users


def test_compare_writes_every_figure(pg_server: str, tmp_path: Path) -> None:
    settings = Settings(
        users=400, clients=2, shards=2, calls=20, single_updates=50, dsn=pg_server
    )
    settings.out = tmp_path
    if not _redis_up(settings.redis_url):
        pytest.skip(f"no Redis at {settings.redis_url} to compare with")
    reports = compare(settings, Console(quiet=True))

    names = [r.system for r in reports]
    assert names == [
        "chronoscore",
        "redis-pipelined",
        "redis-single",
        "postgresql",
        "empty-rpc",
    ]
    doc = json.loads((tmp_path / "compare-400-2shards.json").read_text())
    assert [r["system"] for r in doc["reports"]] == names
    assert (tmp_path / "compare-400-2shards.png").stat().st_size > 1000
    assert len(targets(reports)) == 8
    ours = reports[0]
    assert len(ours.memory_bytes_per_user) == 2
    assert all(40 < b < 2000 for b in ours.memory_bytes_per_user.values())
    assert ours.restart_seconds and ours.restart_seconds > 0
    assert "one shard of 400 entries" in " ".join(ours.notes)

    # The same run on 8 shards, ChronoScore alone, gives the shard scaling.
    settings.shards, settings.systems = 8, ("chronoscore",)
    only = compare(settings, Console(quiet=True))
    assert [r.system for r in only] == ["chronoscore", "empty-rpc"]
    (found,) = scaling(tmp_path)
    assert found[0].startswith("top-10 cost grows <= 1.5x from 2 to 8 shards")
