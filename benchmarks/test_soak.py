"""A short soak in the suite; ``chronoscore bench soak`` runs the long one."""

from __future__ import annotations

from pathlib import Path

from chronoscore._bench import soak
from chronoscore._cluster import LocalCluster


def test_short_soak_has_no_errors(dsn: str, tmp_path: Path) -> None:
    with LocalCluster(dsn, 3, workdir=tmp_path, log_level="WARNING") as cluster:
        pids = {name: p.pid for name, p in cluster.processes.items()}
        report = soak(cluster.target, pids, seconds=20, users=2000, sample_every=4)
    assert report.errors == {}
    assert sum(report.operations.values()) > 100
    # A leak detector, not a target: far from what a leak would show.
    assert max(report.growth().values()) < 1.5
