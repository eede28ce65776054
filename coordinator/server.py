"""Run the coordinator: the public gRPC API in front of the shards."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from grpc import aio

from chronoscore._db import is_unavailable
from chronoscore._logging import configure_logging
from chronoscore._metrics import serve_metrics
from chronoscore._security import (
    PLAINTEXT,
    TlsFiles,
    TokenCheck,
    Tokens,
    add_tls_arguments,
    channel_credentials,
    server_credentials,
    tls_files,
)
from chronoscore._server import (
    SERVER_OPTIONS,
    add_health_and_reflection,
    add_server_arguments,
    add_service,
    listen,
    run_server,
    serve_until_stopped,
)
from chronoscore.errors import InvalidArgument, Unavailable
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import leaderboard_pb2_grpc as _grpc

from .catalog import Catalog
from .service import LeaderboardServicer
from .shards import ShardClients

__all__ = ["main", "serve", "parse_shards"]

logger = logging.getLogger("chronoscore.coordinator")


def parse_shards(spec: str) -> dict[str, str]:
    """Parse ``name=host:port,name=host:port`` into a name → address map."""
    shards: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise InvalidArgument(f"shard {item!r} must look like name=host:port")
        if name in shards:
            raise InvalidArgument(f"shard {name!r} is listed twice")
        shards[name] = address
    return shards


async def serve(
    shards: dict[str, str],
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
    metrics_port: int = 0,
    tls: TlsFiles = PLAINTEXT,
    shard_tls: TlsFiles = PLAINTEXT,
    tokens: Tokens | None = None,
) -> None:
    """Serve the public API until SIGINT or SIGTERM.

    ``shards`` maps shard names to addresses: the first ring of a new
    cluster, and addresses that take precedence over the ones shards
    record in PostgreSQL. It may be empty once the database holds a
    placement.
    """
    if metrics_port:
        serve_metrics(host, metrics_port)
    catalog = Catalog(dsn)
    await catalog.open()
    clients = ShardClients(dsn, shards, credentials=channel_credentials(shard_tls))
    try:
        await clients.open(sorted(shards))
    except BaseException:
        await catalog.close()
        raise
    servicer = LeaderboardServicer(clients, catalog)
    # Know the clock's skew before taking any write.
    await servicer.check_clock()
    retention = asyncio.create_task(_prune_forever(servicer))

    async def stop() -> None:
        retention.cancel()
        servicer.tops.close()
        await clients.close()
        await catalog.close()

    interceptors = [] if tokens is None else [TokenCheck(tokens)]
    server = aio.server(options=SERVER_OPTIONS, interceptors=interceptors)
    add_service(_grpc.add_LeaderboardServiceServicer_to_server, servicer, server)
    bound = listen(server, host, port, server_credentials(tls))
    checker = add_health_and_reflection(server, ["chronoscore.v1.LeaderboardService"])
    await serve_until_stopped(
        server,
        health_checker=checker,
        name="coordinator",
        port=bound,
        port_file=port_file,
        on_stop=stop,
    )


async def _prune_forever(servicer: LeaderboardServicer, every: float = 30.0) -> None:
    """Drop aged-out periods from the shards, now and every ``every`` s."""
    while True:
        try:
            clock_us = await servicer.check_clock()
            boards = await servicer.catalog.list()
        except Exception as exc:
            if not (isinstance(exc, Unavailable) or is_unavailable(exc)):
                raise
            logger.warning("cannot read the catalog to prune periods: %s", exc)
            boards = []
        for board in boards:
            if board.keep_periods or board.reset != _pb.RESET_SCHEDULE_NONE:
                await servicer.prune(board, clock_us=clock_us)
        await asyncio.sleep(every)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="Run the ChronoScore coordinator.",
    )
    parser.add_argument(
        "--shards",
        default="",
        help="comma-separated name=host:port: a new cluster's first ring, and"
        " addresses that take precedence over those the shards record",
    )
    add_server_arguments(
        parser,
        default_port=50051,
        dsn_help="PostgreSQL holding the leaderboard catalog",
    )
    add_tls_arguments(parser, "tls-", "CA whose certificates clients must present")
    add_tls_arguments(parser, "shard-tls-", "CA that signed the shards' certificates")
    parser.add_argument(
        "--tokens",
        type=Path,
        help="JSON file of bearer-token digests and scopes; without it the"
        " public API takes every caller",
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn or $CHRONOSCORE_DSN is required")

    configure_logging(args.log_level)

    async def start() -> None:
        await serve(
            parse_shards(args.shards),
            args.dsn,
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
            tls=tls_files(args, "tls-"),
            shard_tls=tls_files(args, "shard-tls-"),
            tokens=None if args.tokens is None else Tokens.load(args.tokens),
        )

    run_server("coordinator", start)
