"""Prometheus metrics of every ChronoScore server.

Each server serves them over HTTP at ``/metrics`` when started with
``--metrics-port``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

__all__ = [
    "RPC_SECONDS",
    "COMMIT_UPDATES",
    "COMMIT_SECONDS",
    "COMMIT_LAG",
    "RING_VERSION",
    "SHARD_EPOCH",
    "SHARD_SLOTS",
    "TOP_READS",
    "watch_index_sizes",
    "serve_metrics",
]

RPC_SECONDS = Histogram(
    "chronoscore_rpc_seconds",
    "Time to answer a call, by method and status code",
    ["method", "code"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
)
COMMIT_UPDATES = Histogram(
    "chronoscore_commit_batch_updates",
    "Updates committed together in one PostgreSQL transaction",
    buckets=(1, 2, 5, 10, 50, 100, 500, 1000, 5000, 20000),
)
COMMIT_SECONDS = Histogram(
    "chronoscore_commit_seconds",
    "Time one group commit spends writing to PostgreSQL",
)
COMMIT_LAG = Histogram(
    "chronoscore_commit_lag_seconds",
    "Time from a write reaching a shard to its acknowledgement",
)
RING_VERSION = Gauge(
    "chronoscore_ring_version",
    "Version of the slot placement this coordinator routes by",
)
SHARD_EPOCH = Gauge(
    "chronoscore_shard_epoch",
    "Epoch of the slots this shard owns; it grows with every move",
)
SHARD_SLOTS = Gauge(
    "chronoscore_shard_slots",
    "Slots this shard owns",
)
TOP_READS = Counter(
    "chronoscore_top_reads",
    "GetTop reads, by whether pushed top lists answered or every shard was asked",
    ["source"],
)


class _IndexSizes(Collector):
    """Entries per leaderboard period, read at scrape time."""

    def __init__(self, sizes: Callable[[], Iterator[tuple[int, int, int]]]) -> None:
        self._sizes = sizes

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "chronoscore_index_entries",
            "Entries in this shard's index of a leaderboard period",
            labels=["leaderboard_id", "period_start_us"],
        )
        for board_id, period, size in self._sizes():
            family.add_metric([str(board_id), str(period)], size)
        yield family


def watch_index_sizes(sizes: Callable[[], Iterator[tuple[int, int, int]]]) -> None:
    """Report (leaderboard id, period start, entries) at every scrape."""
    REGISTRY.register(_IndexSizes(sizes))


def serve_metrics(host: str, port: int) -> None:
    """Serve /metrics over HTTP in a background thread."""
    start_http_server(port, addr=host)
