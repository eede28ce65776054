"""``chronoscore bench compare``: ChronoScore, Redis and PostgreSQL side by side.

One run generates one workload and drives all three systems with it, on
the same machine and with the same client concurrency:

- ChronoScore: a local cluster (4 shards by default), durable: a write is
  acknowledged after PostgreSQL commits it.
- Redis sorted sets through redis-py, pipelined and one call at a time.
  Redis acknowledges before anything reaches a disk.
- Plain PostgreSQL: an upsert per update, ``ORDER BY ... LIMIT`` for the
  top, ``count(*)`` for a rank and ``OFFSET`` for pages.

Users have Zipf-skewed activity; scores follow a long-tailed spread with
many ties. Figures are medians and 99th percentiles of per-call latency
and calls (or updates) per second.
"""

from __future__ import annotations

import bisect
import itertools
import json
import multiprocessing
import os
import platform
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

if TYPE_CHECKING:
    from ._cluster import LocalCluster

__all__ = ["Workload", "compare", "render", "targets", "scaling", "soak"]

BOARD = "bench"
BATCH = 1000
SYSTEMS = ("chronoscore", "redis", "postgresql")


@dataclass(frozen=True)
class Workload:
    users: int
    seed: int = 1

    def user(self, i: int) -> str:
        return f"u{i:09d}"

    def scores(self) -> list[tuple[str, int]]:
        """Every user's first score: long-tailed, in steps of 10, so many tie."""
        rng = random.Random(self.seed)
        return [
            (self.user(i), int(rng.lognormvariate(6, 1.2)) // 10 * 10)
            for i in range(self.users)
        ]

    def active(self, count: int, seed: int = 2) -> list[str]:
        """Users chosen with Zipf-skewed activity (s = 1.1)."""
        rng = random.Random(self.seed * 1000 + seed)
        weights = itertools.accumulate(1 / (k**1.1) for k in range(1, self.users + 1))
        cumulative = list(weights)
        # Rank k of the activity order is a random user, so the busy ones
        # are spread over every shard.
        order = list(range(self.users))
        rng.shuffle(order)
        total = cumulative[-1]
        picks = (bisect.bisect(cumulative, rng.random() * total) for _ in range(count))
        return [self.user(order[min(p, self.users - 1)]) for p in picks]


class System(Protocol):
    name: str

    def ingest(self, pairs: list[tuple[str, int]]) -> None: ...
    def submit(self, user: str, score: int) -> None: ...
    def top(self) -> None: ...
    def rank(self, user: str) -> None: ...
    def around(self, user: str) -> None: ...
    def page(self, offset: int) -> None: ...
    def close(self) -> None: ...


@dataclass
class Timing:
    """Per-call latencies of one operation."""

    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds if self.seconds else 0.0


@dataclass
class Report:
    system: str
    users: int
    ingest_batched_per_s: float = 0.0
    ingest_single_per_s: float = 0.0
    timings: dict[str, Timing] = field(default_factory=dict)
    memory_bytes_per_user: dict[str, float] = field(default_factory=dict)
    rss_bytes_per_user: dict[str, float] = field(default_factory=dict)
    restart_seconds: float | None = None
    restart_entries: int = 0
    notes: list[str] = field(default_factory=list)


def _timed(call: Callable[[], None], calls: int, budget: float) -> Timing:
    """Run ``call`` up to ``calls`` times or ``budget`` seconds."""
    return _interleaved({"call": call}, calls, budget, blocks=1)["call"]


def _interleaved(
    calls: dict[str, Callable[[], None]], count: int, budget: float, blocks: int = 8
) -> dict[str, Timing]:
    """Time each call ``count`` times (or for ``budget`` seconds each),
    taking turns in ``blocks`` blocks so that they share the same moments
    of a noisy machine."""
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    spent = dict.fromkeys(calls, 0.0)
    per_block = max(1, count // blocks)
    for _ in range(blocks):
        for name, call in calls.items():
            started = time.perf_counter()
            for _ in range(per_block):
                t0 = time.perf_counter()
                call()
                latencies[name].append(time.perf_counter() - t0)
                if spent[name] + time.perf_counter() - started > budget:
                    break
            spent[name] += time.perf_counter() - started
    timings = {}
    for name, values in latencies.items():
        values.sort()
        p99 = values[min(len(values) - 1, int(len(values) * 0.99))]
        timings[name] = Timing(
            len(values), spent[name], statistics.median(values) * 1e3, p99 * 1e3
        )
    return timings


# Systems. Each is built from a picklable spec so ingest can run in
# several client processes.


class ChronoScore:
    name = "chronoscore"

    def __init__(self, target: str) -> None:
        from .client import Client

        self.client = Client(target, timeout=120)

    def empty(self) -> None:
        """A health check: a call that does no work, on the same server."""
        self.client.ready()

    def ingest(self, pairs: list[tuple[str, int]]) -> None:
        from .client import Update

        for start in range(0, len(pairs), BATCH):
            batch = [
                Update(BOARD, u, s, "set") for u, s in pairs[start : start + BATCH]
            ]
            for result in self.client.submit_scores(batch):
                if result.error is not None:
                    raise result.error

    def submit(self, user: str, score: int) -> None:
        self.client.submit_score(BOARD, user, score, "best")

    def top(self) -> None:
        self.client.top(BOARD, 10)

    def rank(self, user: str) -> None:
        self.client.rank(BOARD, user)

    def around(self, user: str) -> None:
        self.client.around(BOARD, user, 5, 5)

    def page(self, offset: int) -> None:
        self.client.page(BOARD, offset, 10)

    def close(self) -> None:
        self.client.close()


class RedisSortedSet:
    def __init__(self, url: str, pipelined: bool) -> None:
        import redis

        self.redis = redis.Redis.from_url(url)
        self.pipelined = pipelined
        self.name = "redis-pipelined" if pipelined else "redis-single"

    def ingest(self, pairs: list[tuple[str, int]]) -> None:
        if not self.pipelined:
            for user, score in pairs:
                self.redis.zadd(BOARD, {user: score})
            return
        for start in range(0, len(pairs), BATCH):
            pipe = self.redis.pipeline(transaction=False)
            for user, score in pairs[start : start + BATCH]:
                pipe.zadd(BOARD, {user: score})
            pipe.execute()

    def submit(self, user: str, score: int) -> None:
        self.redis.zadd(BOARD, {user: score}, gt=True)

    def top(self) -> None:
        self.redis.zrevrange(BOARD, 0, 9, withscores=True)

    def rank(self, user: str) -> None:
        self.redis.zrevrank(BOARD, user)

    def around(self, user: str) -> None:
        rank = int(self.redis.zrevrank(BOARD, user) or 0)  # type: ignore[arg-type]
        self.redis.zrevrange(BOARD, max(0, rank - 5), rank + 5, withscores=True)

    def page(self, offset: int) -> None:
        self.redis.zrevrange(BOARD, offset, offset + 9, withscores=True)

    def close(self) -> None:
        self.redis.close()


class PlainPostgres:
    name = "postgresql"

    def __init__(self, dsn: str) -> None:
        import psycopg

        self.conn = psycopg.connect(dsn, autocommit=True)

    def ingest(self, pairs: list[tuple[str, int]]) -> None:
        for start in range(0, len(pairs), BATCH):
            chunk = pairs[start : start + BATCH]
            self.conn.execute(
                "INSERT INTO bench_score (user_id, score)"
                " SELECT * FROM unnest(%s::text[], %s::bigint[])"
                " ON CONFLICT (user_id) DO UPDATE SET score = EXCLUDED.score,"
                " reached = clock_timestamp()",
                [[u for u, _ in chunk], [s for _, s in chunk]],
            )

    def submit(self, user: str, score: int) -> None:
        self.conn.execute(
            "INSERT INTO bench_score (user_id, score) VALUES (%s, %s)"
            " ON CONFLICT (user_id) DO UPDATE SET score = EXCLUDED.score,"
            " reached = clock_timestamp() WHERE bench_score.score < EXCLUDED.score",
            [user, score],
        )

    def top(self) -> None:
        self.conn.execute(
            "SELECT user_id, score FROM bench_score"
            " ORDER BY score DESC, reached, user_id LIMIT 10"
        ).fetchall()

    def _rank(self, user: str) -> int:
        row = self.conn.execute(
            "SELECT count(*) FROM bench_score o, bench_score me"
            " WHERE me.user_id = %s AND (o.score > me.score OR (o.score = me.score"
            " AND (o.reached, o.user_id) < (me.reached, me.user_id)))",
            [user],
        ).fetchone()
        return int(row[0]) if row else 0

    def rank(self, user: str) -> None:
        self._rank(user)

    def around(self, user: str) -> None:
        rank = self._rank(user)
        self._page(max(0, rank - 5), 11)

    def page(self, offset: int) -> None:
        self._page(offset, 10)

    def _page(self, offset: int, limit: int) -> None:
        self.conn.execute(
            "SELECT user_id, score FROM bench_score"
            " ORDER BY score DESC, reached, user_id OFFSET %s LIMIT %s",
            [offset, limit],
        ).fetchall()

    def close(self) -> None:
        self.conn.close()


def _make(spec: tuple[str, str, bool]) -> System:
    kind, address, pipelined = spec
    if kind == "chronoscore":
        return ChronoScore(address)
    if kind == "redis":
        return RedisSortedSet(address, pipelined)
    return PlainPostgres(address)


def _ingest_worker(spec: tuple[str, str, bool], pairs: list[tuple[str, int]]) -> None:
    system = _make(spec)
    try:
        system.ingest(pairs)
    finally:
        system.close()


def _ingest(
    spec: tuple[str, str, bool], pairs: list[tuple[str, int]], clients: int
) -> float:
    """Updates per second over ``clients`` processes."""
    slices = [pairs[i::clients] for i in range(clients)]
    context = multiprocessing.get_context("spawn")
    with context.Pool(clients) as pool:
        started = time.perf_counter()
        pool.starmap(_ingest_worker, [(spec, s) for s in slices])
        elapsed = time.perf_counter() - started
    return len(pairs) / elapsed


@dataclass
class Settings:
    users: int
    clients: int = 2
    shards: int = 4
    calls: int = 2000
    budget: float = 10.0
    single_updates: int = 3000
    dsn: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/15"
    out: Path = Path("benchmarks/results")
    # Which of chronoscore, redis and postgresql to run; the empty-RPC
    # floor always runs.
    systems: tuple[str, ...] = SYSTEMS
    # Entries in the shard whose restart is timed (default: --users).
    restart_users: int | None = None

    @property
    def stem(self) -> str:
        """Results file name: compare-<users>[-<shards>shards]."""
        suffix = "" if self.shards == 4 else f"-{self.shards}shards"
        return f"compare-{self.users}{suffix}"


def compare(settings: Settings, console: Console) -> list[Report]:
    """Run the comparison; write JSON and a PNG chart; return the reports."""
    workload = Workload(settings.users)
    pairs = workload.scores()
    active = workload.active(max(settings.calls, settings.single_updates))
    reports = []
    with ExitStack() as stack, Progress(console=console, transient=True) as progress:
        steps = {"chronoscore": 2, "redis": 2, "postgresql": 1}
        total = 1 + sum(steps[name] for name in settings.systems)
        task = progress.add_task("comparing", total=total)
        dsn = settings.dsn or stack.enter_context(_embedded())

        if "chronoscore" in settings.systems:
            with ExitStack() as running:
                ours = _run_chronoscore(settings, dsn, pairs, active, running)
            progress.advance(task)
            ours.restart_seconds, restarted = _restart(
                settings, dsn, settings.restart_users or settings.users
            )
            ours.restart_entries = restarted
            ours.notes.append(
                f"restart: kill -9 to serving again, one shard of {restarted:,} entries"
            )
            reports.append(ours)
            progress.advance(task)
        if "redis" in settings.systems:
            for pipelined in (True, False):
                reports.append(_run_redis(settings, pairs, active, pipelined))
                progress.advance(task)
        if "postgresql" in settings.systems:
            reports.append(_run_postgres(settings, dsn, pairs, active))
            progress.advance(task)
        if "chronoscore" in settings.systems:
            floor = Report("empty-rpc", settings.users)
            floor.timings["empty"] = ours.timings.pop("empty")
            floor.notes.append(
                "a health check on ChronoScore's coordinator, taking turns"
                " with its top-10 reads"
            )
        else:
            floor = _empty_rpc_floor(settings, dsn)
        reports.append(floor)
        progress.advance(task)

    _write(settings, reports)
    return reports


@contextmanager
def _embedded() -> Iterator[str]:
    import tempfile

    from ._cluster import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="chronoscore-bench-") as tmp:
        with embedded_postgres(Path(tmp)) as dsn:
            yield dsn


def _reads(
    system: System,
    active: list[str],
    users: int,
    s: Settings,
    floor: Callable[[], None] | None = None,
) -> dict[str, Timing]:
    """Time each read; ``floor``, an empty call to the same server, takes
    turns with the top-10 reads it is compared with."""
    ranks = itertools.cycle(active)
    if floor is None:
        tops = {"top10": _timed(system.top, s.calls, s.budget)}
    else:
        tops = _interleaved({"empty": floor, "top10": system.top}, s.calls, s.budget)
    return tops | {
        "rank": _timed(lambda: system.rank(next(ranks)), s.calls, s.budget),
        "around": _timed(lambda: system.around(next(ranks)), s.calls, s.budget),
        "page_half": _timed(lambda: system.page(users // 2), s.calls, s.budget),
    }


def _single(system: System, active: list[str], count: int) -> float:
    rng = random.Random(7)
    started = time.perf_counter()
    for user in active[:count]:
        system.submit(user, int(rng.lognormvariate(6, 1.2)) // 10 * 10)
    return count / (time.perf_counter() - started)


def _run_chronoscore(
    s: Settings,
    dsn: str,
    pairs: list[tuple[str, int]],
    active: list[str],
    stack: ExitStack,
) -> Report:
    import psutil

    from ._cluster import LocalCluster
    from ._ring import Ring
    from .client import Client

    database = _fresh_database(dsn, "chronoscore_bench")
    cluster = stack.enter_context(LocalCluster(database, s.shards, log_level="WARNING"))
    with Client(cluster.target) as client:
        client.create_leaderboard(BOARD)
    rss = {
        n: psutil.Process(cluster.processes[n].pid).memory_info().rss
        for n in cluster.names
    }

    report = Report("chronoscore", s.users)
    report.ingest_batched_per_s = _ingest(
        ("chronoscore", cluster.target, False), pairs, s.clients
    )
    system = ChronoScore(cluster.target)
    report.ingest_single_per_s = _single(system, active, s.single_updates)
    report.timings = _reads(system, active, s.users, s, floor=system.empty)
    system.close()

    ring = Ring(cluster.names)
    owned = {n: 0 for n in cluster.names}
    for user, _ in pairs:
        owned[ring.owner(user)] += 1
    for name in cluster.names:
        grown = (
            psutil.Process(cluster.processes[name].pid).memory_info().rss - rss[name]
        )
        report.rss_bytes_per_user[name] = grown / max(1, owned[name])
        described = _describe(cluster, name, measure_memory=True)
        report.memory_bytes_per_user[name] = described.index_bytes / max(
            1, described.entries
        )
    report.notes.append(
        "memory: each shard's index (sorted keys, user map, user ids) per entry,"
        " by sys.getsizeof rounded as the allocator rounds; RSS: growth of its"
        " process per user it owns"
    )
    return report


def _describe(cluster: LocalCluster, name: str, *, measure_memory: bool) -> Any:
    import grpc

    from ._ring import SHARD_HEADER
    from .v1 import shard_pb2, shard_pb2_grpc

    address = f"127.0.0.1:{cluster.shard_ports[name]}"
    with grpc.insecure_channel(address) as channel:
        stub = shard_pb2_grpc.ShardServiceStub(channel)
        return stub.Describe(
            shard_pb2.DescribeRequest(measure_memory=measure_memory),
            metadata=((SHARD_HEADER, name),),
            timeout=120,
        )


def _restart(s: Settings, dsn: str, entries: int) -> tuple[float, int]:
    """Seconds from kill -9 to serving again for a one-shard cluster that
    holds ``entries`` entries, copied into PostgreSQL as the shard would
    have written them."""
    import psycopg

    from ._cluster import LocalCluster
    from .client import Client

    database = _fresh_database(dsn, "chronoscore_restart")
    with LocalCluster(database, 1, log_level="WARNING") as cluster:
        with Client(cluster.target) as client:
            client.create_leaderboard(BOARD)
            client.submit_score(BOARD, "first", 1)
        shard = cluster.names[0]
        with psycopg.connect(database) as conn:
            _copy_entries(conn, entries)
        cluster.kill(shard)
        started = time.perf_counter()
        cluster.start_shard(shard)
        seconds = time.perf_counter() - started
        described = _describe(cluster, shard, measure_memory=False)
    return seconds, int(described.entries)


def _copy_entries(conn: Any, entries: int) -> None:
    """``entries`` rows of the first leaderboard, as shards write them."""
    from ._ring import slot_of

    row = conn.execute(
        "SELECT board_id, period_start_us FROM user_score LIMIT 1"
    ).fetchone()
    board_id, period = row
    rng = random.Random(11)
    started_us = 1_700_000_000_000_000
    with (
        conn.cursor() as cur,
        cur.copy(
            "COPY user_score (board_id, period_start_us, user_id, slot, score,"
            " reached_us) FROM STDIN"
        ) as copy,
    ):
        for i in range(entries - 1):
            user = f"r{i:09d}"
            score = int(rng.lognormvariate(6, 1.2)) // 10 * 10
            copy.write_row(
                (board_id, period, user, slot_of(user), score, started_us + i)
            )
    conn.commit()


def _run_redis(
    s: Settings, pairs: list[tuple[str, int]], active: list[str], pipelined: bool
) -> Report:
    import redis

    conn = redis.Redis.from_url(s.redis_url)
    conn.delete(BOARD)
    before = int(conn.info("memory")["used_memory"])
    name = "redis-pipelined" if pipelined else "redis-single"
    report = Report(name, s.users)
    rate = _ingest(("redis", s.redis_url, pipelined), pairs, s.clients)
    if pipelined:
        report.ingest_batched_per_s = rate
    else:
        report.ingest_single_per_s = rate
    after = int(conn.info("memory")["used_memory"])
    report.memory_bytes_per_user["redis"] = (after - before) / s.users
    system = RedisSortedSet(s.redis_url, pipelined)
    report.timings = _reads(system, active, s.users, s)
    system.close()
    conn.delete(BOARD)
    conn.close()
    report.notes.append("not durable: acknowledged before any disk write")
    return report


def _run_postgres(
    s: Settings, dsn: str, pairs: list[tuple[str, int]], active: list[str]
) -> Report:
    import psycopg

    database = _fresh_database(dsn, "plain_bench")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute(
            'CREATE TABLE bench_score (user_id text COLLATE "C" PRIMARY KEY,'
            " score bigint NOT NULL, reached timestamptz NOT NULL DEFAULT"
            " clock_timestamp())"
        )
        conn.execute(
            "CREATE INDEX bench_score_rank"
            " ON bench_score (score DESC, reached, user_id)"
        )
    report = Report("postgresql", s.users)
    report.ingest_batched_per_s = _ingest(
        ("postgres", database, False), pairs, s.clients
    )
    system = PlainPostgres(database)
    system.conn.execute("ANALYZE bench_score")
    report.ingest_single_per_s = _single(system, active, min(s.single_updates, 1000))
    report.timings = _reads(system, active, s.users, s)
    row = system.conn.execute("SELECT pg_total_relation_size('bench_score')").fetchone()
    report.memory_bytes_per_user["table+index on disk"] = (
        row[0] if row else 0
    ) / s.users
    system.close()
    return report


def _empty_rpc_floor(s: Settings, dsn: str) -> Report:
    """A health check on a ChronoScore coordinator: gRPC's own cost."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from ._cluster import LocalCluster

    database = _fresh_database(dsn, "chronoscore_floor")
    report = Report("empty-rpc", s.users)
    with LocalCluster(database, 1, log_level="WARNING") as cluster:
        with grpc.insecure_channel(cluster.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest()
            report.timings["empty"] = _timed(
                lambda: stub.Check(request, timeout=10), s.calls, s.budget
            )
    return report


def _fresh_database(dsn: str, name: str) -> str:
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(dsn, dbname=name)


def _write(s: Settings, reports: list[Report]) -> None:
    s.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "users": s.users,
        "clients": s.clients,
        "shards": s.shards,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "reports": [
            {
                **asdict(r),
                "timings": {
                    k: {**asdict(t), "per_second": t.per_second}
                    for k, t in r.timings.items()
                },
            }
            for r in reports
        ],
    }
    (s.out / f"{s.stem}.json").write_text(json.dumps(doc, indent=2) + "\n")
    _chart(s, reports)


def _chart(s: Settings, reports: list[Report]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["top10", "rank", "around", "page_half"]
    systems = [r for r in reports if r.timings and r.system != "empty-rpc"]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(systems))
    for i, report in enumerate(systems):
        values = [
            report.timings[m].per_second if m in report.timings else 0 for m in metrics
        ]
        ax.bar(
            [x + i * width for x in range(len(metrics))],
            values,
            width,
            label=report.system,
        )
    ax.set_xticks([x + width * (len(systems) - 1) / 2 for x in range(len(metrics))])
    ax.set_xticklabels(metrics)
    ax.set_yscale("log")
    ax.set_ylabel("calls per second (log)")
    ax.set_title(f"Reads at {s.users:,} users, {s.shards} shards, one client")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=len(systems))
    fig.tight_layout()
    fig.savefig(s.out / f"{s.stem}.png", dpi=120)
    plt.close(fig)


def render(reports: list[Report], console: Console) -> None:
    """Print the figures and ChronoScore's ratio to each other system."""
    ours = next(r for r in reports if r.system == "chronoscore")
    table = Table(title=f"{ours.users:,} users", title_justify="left")
    table.add_column("figure")
    for r in reports:
        table.add_column(r.system, justify="right")

    def row(label: str, value: Callable[[Report], float | None], fmt: str) -> None:
        cells = []
        for r in reports:
            v = value(r)
            cells.append("" if not v else format(v, fmt))
        table.add_row(label, *cells)

    row("ingest batched /s", lambda r: r.ingest_batched_per_s, ",.0f")
    row("ingest single /s", lambda r: r.ingest_single_per_s, ",.0f")
    for metric in ("empty", "top10", "rank", "around", "page_half"):
        for label, attr, fmt in (
            ("/s", "per_second", ",.0f"),
            ("p50 ms", "p50_ms", ".2f"),
            ("p99 ms", "p99_ms", ".2f"),
        ):
            row(f"{metric} {label}", _figure(metric, attr), fmt)
    row(
        "memory B/user (max)",
        lambda r: (
            max(r.memory_bytes_per_user.values()) if r.memory_bytes_per_user else None
        ),
        ",.0f",
    )
    row(
        "RSS growth B/user (max)",
        lambda r: max(r.rss_bytes_per_user.values()) if r.rss_bytes_per_user else None,
        ",.0f",
    )
    row("restart s", lambda r: r.restart_seconds, ".2f")
    console.print(table)
    for r in reports:
        for note in r.notes:
            console.print(f"{r.system}: {note}", markup=False)


def _figure(metric: str, attr: str) -> Callable[[Report], float | None]:
    def value(report: Report) -> float | None:
        timing = report.timings.get(metric)
        return None if timing is None else float(getattr(timing, attr))

    return value


def targets(reports: list[Report]) -> list[tuple[str, str, bool | None]]:
    """The performance targets: (target, measured, met), where met is
    None when this run cannot tell (a restart of fewer than 1M entries).

    Needs every system's report; see :func:`scaling` for the targets
    that compare runs.
    """
    by = {r.system: r for r in reports}
    ours, floor = by["chronoscore"], by["empty-rpc"].timings["empty"]
    redis, pg = by["redis-pipelined"], by["postgresql"]
    top, rank = ours.timings["top10"], ours.timings["rank"]
    page = ours.timings["page_half"]
    ingest = ours.ingest_batched_per_s / redis.ingest_batched_per_s
    memory = max(ours.memory_bytes_per_user.values())
    rank_speedup = pg.timings["rank"].p50_ms / rank.p50_ms
    return [
        (
            "durable batched ingest >= 2x pipelined Redis",
            f"{ingest:.2f}x",
            ingest >= 2,
        ),
        (
            "top-10 throughput >= 90% of empty RPC",
            f"{top.per_second / floor.per_second:.0%}",
            top.per_second >= 0.9 * floor.per_second,
        ),
        (
            "top-10 p99 <= 2x empty RPC p99",
            f"{top.p99_ms / floor.p99_ms:.2f}x",
            top.p99_ms <= 2 * floor.p99_ms,
        ),
        (
            "rank >= 100x faster than PostgreSQL count(*)",
            f"{rank_speedup:.2g}x",
            rank_speedup >= 100,
        ),
        (
            "rank p99 < 5x empty RPC p99",
            f"{rank.p99_ms / floor.p99_ms:.2f}x",
            rank.p99_ms < 5 * floor.p99_ms,
        ),
        (
            "deep page <= 10x GetTop(10)",
            f"{page.p50_ms / top.p50_ms:.2f}x",
            page.p50_ms <= 10 * top.p50_ms,
        ),
        ("index memory <= 100 B/user", f"{memory:.0f} B", memory <= 100),
        (
            "1M-user shard restart <= 5 s",
            f"{ours.restart_seconds or 0:.2f} s ({ours.restart_entries:,} entries)",
            (ours.restart_seconds or 0) <= 5
            if ours.restart_entries >= 1_000_000
            else None,
        ),
    ]


def scaling(out: Path) -> list[tuple[str, str, bool | None]]:
    """The targets that compare runs, from the results files in ``out``
    (this run's and any earlier ones): rank cost from the fewest to the
    most users (at 4 shards), and top-10 cost from 2 to 8 shards (at the
    most users run with both). Each names the files it compares."""
    runs = []
    for path in sorted(out.glob("compare-*.json")):
        doc = json.loads(path.read_text())
        ours = next((r for r in doc["reports"] if r["system"] == "chronoscore"), None)
        if ours is not None:
            runs.append((doc["users"], doc["shards"], ours["timings"]))
    found = []
    four = sorted((u, t) for u, shards, t in runs if shards == 4)
    if len(four) > 1:
        (small, first), (large, last) = four[0], four[-1]
        growth = last["rank"]["p50_ms"] / first["rank"]["p50_ms"]
        found.append(
            (
                f"rank cost grows <= 2x from {small:,} to {large:,} users"
                f" (compare-{small}.json, compare-{large}.json)",
                f"{growth:.2f}x",
                growth <= 2,
            )
        )
    by_users: dict[int, dict[int, Any]] = {}
    for users, shards, timing in runs:
        by_users.setdefault(users, {})[shards] = timing
    both = [u for u, t in by_users.items() if 2 in t and 8 in t]
    if both:
        users = max(both)
        two, eight = by_users[users][2], by_users[users][8]
        growth = eight["top10"]["p50_ms"] / two["top10"]["p50_ms"]
        found.append(
            (
                f"top-10 cost grows <= 1.5x from 2 to 8 shards"
                f" (compare-{users}-2shards.json, compare-{users}-8shards.json)",
                f"{growth:.2f}x",
                growth <= 1.5,
            )
        )
    return found


@dataclass
class SoakReport:
    seconds: float
    operations: dict[str, int]
    errors: dict[str, int]
    rss_mb: dict[str, list[float]]

    def growth(self) -> dict[str, float]:
        """Each process's RSS at the end over its RSS after warm-up."""
        return {
            name: samples[-1] / samples[1] if len(samples) > 1 else 1.0
            for name, samples in self.rss_mb.items()
        }


def soak(
    target: str,
    pids: dict[str, int],
    *,
    seconds: float,
    users: int = 20_000,
    workers: int = 3,
    sample_every: float = 5.0,
) -> SoakReport:
    """Mixed load for ``seconds``: writes, batches and every read.

    Samples each process's RSS every ``sample_every`` seconds; the first
    sample is taken once the first writes have landed.
    """
    import psutil

    from .client import Client, Update
    from .errors import ChronoscoreError, NotFound

    with Client(target) as client:
        client.create_leaderboard("soak")
        client.create_leaderboard("soak-daily", reset="daily", keep_periods=2)
    operations: dict[str, int] = {}
    errors: dict[str, int] = {}
    stop = time.monotonic() + seconds

    def pick(rng: random.Random) -> str:
        return f"s{rng.randrange(users):06d}"

    def batch(client: Client, board: str, rng: random.Random) -> None:
        updates = [Update(board, pick(rng), rng.randrange(10_000)) for _ in range(200)]
        failed = [r.error for r in client.submit_scores(updates) if r.error]
        if failed:
            raise failed[0]

    calls: dict[str, Callable[[Client, str, random.Random], object]] = {
        "single": lambda c, b, r: c.submit_score(b, pick(r), r.randrange(10_000)),
        "batch": batch,
        "top": lambda c, b, r: c.top(b, 10),
        "rank": lambda c, b, r: c.rank(b, pick(r)),
        "around": lambda c, b, r: c.around(b, pick(r), 5, 5),
        "page": lambda c, b, r: c.page(b, r.randrange(users), 10),
        "friends": lambda c, b, r: c.entries(b, [pick(r) for _ in range(20)]),
    }

    def work(seed: int) -> None:
        rng = random.Random(seed)
        kinds = sorted(calls)
        with Client(target) as client:
            while time.monotonic() < stop:
                kind = rng.choice(kinds)
                board = rng.choice(("soak", "soak-daily"))
                try:
                    calls[kind](client, board, rng)
                except NotFound:
                    pass  # a rank of a user with no entry yet
                except ChronoscoreError:
                    errors[kind] = errors.get(kind, 0) + 1
                operations[kind] = operations.get(kind, 0) + 1

    import threading

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    rss: dict[str, list[float]] = {name: [] for name in pids}
    while time.monotonic() < stop:
        time.sleep(min(sample_every, max(0.0, stop - time.monotonic())))
        for name, pid in pids.items():
            rss[name].append(psutil.Process(pid).memory_info().rss / 2**20)
    for thread in threads:
        thread.join()
    return SoakReport(time.monotonic() - started, operations, errors, rss)
