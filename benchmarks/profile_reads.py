"""Profile one kind of call on a local 4-shard cluster with py-spy.

Usage::

    python benchmarks/profile_reads.py top [--users 100000] [--seconds 8]

where the call is one of ``top`` (GetTop 10), ``rank``, ``around``,
``page`` (10 entries at offset n/2) or ``ingest`` (batches of 1000
updates from two threads). py-spy comes with ``pip install -e
'.[bench]'``. Writes speedscope profiles of the coordinator and one
shard to ``benchmarks/results/profile-<call>-<process>.json`` and prints
where their time goes.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chronoscore import Client, Update
from chronoscore._cluster import LocalCluster, embedded_postgres

OUT = Path(__file__).parent / "results"
# py-spy installs beside the interpreter, which need not be on PATH.
PY_SPY = shutil.which("py-spy", path=Path(sys.executable).parent) or "py-spy"
BOARD = "profile"


def summarise(path: Path, top: int = 10) -> None:
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


def _call(kind: str, client: Client, users: int) -> Callable[[], object]:
    rng = random.Random(3)
    ids = (f"u{rng.randrange(users)}" for _ in itertools.count())
    if kind == "top":
        return lambda: client.top(BOARD, 10)
    if kind == "rank":
        return lambda: client.rank(BOARD, next(ids))
    if kind == "around":
        return lambda: client.around(BOARD, next(ids), 5, 5)
    if kind == "page":
        return lambda: client.page(BOARD, users // 2, 10)

    def ingest() -> None:
        scores = [rng.randrange(10**6) for _ in range(1000)]
        client.submit_scores([Update(BOARD, next(ids), s, "set") for s in scores])

    return ingest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("call", choices=["top", "rank", "around", "page", "ingest"])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--dsn", help="a PostgreSQL to use (default: embedded)")
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.dsn:
            profile(args, args.dsn)
        else:
            with embedded_postgres(Path(tmp) / "pg") as dsn:
                profile(args, dsn)


def profile(args: argparse.Namespace, dsn: str) -> None:
    with (
        LocalCluster(dsn, 4, log_level="WARNING") as cluster,
        Client(cluster.target) as client,
    ):
        if BOARD in [b.name for b in client.list_leaderboards()]:
            client.delete_leaderboard(BOARD)
        client.create_leaderboard(BOARD)
        for start in range(0, args.users, 5000):
            batch = range(start, min(start + 5000, args.users))
            client.submit_scores(Update(BOARD, f"u{i}", i % 977, "set") for i in batch)
        targets = {
            "coordinator": cluster.processes["coordinator"].pid,
            "shard": cluster.processes["shard-0"].pid,
        }
        spies = [
            subprocess.Popen(
                [PY_SPY, "record", "--nonblocking", "-f", "speedscope"]
                + ["-d", str(args.seconds), "-p", str(pid)]
                + ["-o", str(OUT / f"profile-{args.call}-{name}.json")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for name, pid in targets.items()
        ]
        threads = 2 if args.call == "ingest" else 1
        calls = [0] * threads
        started = time.perf_counter()

        def loop(i: int) -> None:
            call = _call(args.call, client, args.users)
            while time.perf_counter() - started < args.seconds + 1:
                call()
                calls[i] += 1

        workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        for spy in spies:
            spy.wait()
    print(f"{args.call}: {sum(calls) / (args.seconds + 1):.0f} calls/s while profiled")
    for name in ("coordinator", "shard"):
        summarise(OUT / f"profile-{args.call}-{name}.json")


if __name__ == "__main__":
    main()
