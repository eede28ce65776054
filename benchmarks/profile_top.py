"""Profile GetTop(10) on a local 4-shard cluster with py-spy.

Usage: ``python benchmarks/profile_top.py [--users 100000] [--seconds 8]``
(needs ``pip install py-spy``). Writes speedscope profiles of the
coordinator and one shard to ``benchmarks/results/`` and prints where
their time goes.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import tempfile
import time
from pathlib import Path

from chronoscore import Client, Update
from chronoscore._cluster import LocalCluster, embedded_postgres

OUT = Path(__file__).parent / "results"


def summarise(path: Path, top: int = 8) -> None:
    doc = json.loads(path.read_text())
    frames = doc["shared"]["frames"]
    own: collections.Counter[str] = collections.Counter()
    total = 0.0
    for profile in doc["profiles"]:
        for sample, weight in zip(profile["samples"], profile["weights"], strict=True):
            total += weight
            if sample:
                frame = frames[sample[-1]]
                where = Path(frame.get("file", "")).name
                own[f"{frame['name']} ({where}:{frame.get('line')})"] += weight
    print(f"{path.name}: time spent in each function itself")
    for name, weight in own.most_common(top):
        print(f"  {100 * weight / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        with embedded_postgres(Path(tmp) / "pg") as dsn:
            with LocalCluster(dsn, 4, log_level="WARNING") as cluster:
                with Client(cluster.target) as client:
                    client.create_leaderboard("profile")
                    for start in range(0, args.users, 5000):
                        batch = range(start, min(start + 5000, args.users))
                        client.submit_scores(
                            Update("profile", f"u{i}", i % 977, "set") for i in batch
                        )
                    targets = {
                        "coordinator": cluster.processes["coordinator"].pid,
                        "shard": cluster.processes["shard-0"].pid,
                    }
                    spies = [
                        subprocess.Popen(
                            ["py-spy", "record", "--nonblocking", "-f", "speedscope"]
                            + ["-d", str(args.seconds), "-p", str(pid)]
                            + ["-o", str(OUT / f"profile-top10-{name}.json")],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                        for name, pid in targets.items()
                    ]
                    started, calls = time.perf_counter(), 0
                    while time.perf_counter() - started < args.seconds + 1:
                        client.top("profile", 10)
                        calls += 1
                    for spy in spies:
                        spy.wait()
    print(f"GetTop(10): {calls / (args.seconds + 1):.0f} calls/s while profiled")
    for name in ("coordinator", "shard"):
        summarise(OUT / f"profile-top10-{name}.json")


if __name__ == "__main__":
    main()
