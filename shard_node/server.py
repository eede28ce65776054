"""Run a shard node: rebuild from PostgreSQL, then serve gRPC."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from grpc import aio

from chronoscore._logging import configure_logging
from chronoscore._metrics import RING_INFO, serve_metrics, watch_index_sizes
from chronoscore._ring import Ring
from chronoscore._security import (
    PLAINTEXT,
    TlsFiles,
    add_tls_arguments,
    server_credentials,
    tls_files,
)
from chronoscore._server import (
    SERVER_OPTIONS,
    RingCheck,
    add_health_and_reflection,
    add_server_arguments,
    add_service,
    listen,
    run_server,
    serve_until_stopped,
)
from chronoscore.v1 import shard_pb2_grpc as _shard_grpc

from .lease import ShardLease
from .service import ShardServicer
from .shard import Shard
from .store import Store

__all__ = ["main", "serve"]

logger = logging.getLogger("chronoscore.shard")


async def serve(
    name: str,
    ring: Ring,
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
    metrics_port: int = 0,
    tls: TlsFiles = PLAINTEXT,
) -> None:
    """Serve one shard until SIGINT or SIGTERM.

    With ``tls.ca`` set, only callers holding a certificate that CA
    signed (the cluster credential) get through the TLS handshake.
    """
    shard = Shard(name, ring, Store(dsn), ShardLease(dsn, name))
    await shard.start()
    RING_INFO.labels(ring.fingerprint, ",".join(ring.shards)).set(1)
    watch_index_sizes(shard.index_sizes)
    if metrics_port:
        serve_metrics(host, metrics_port)

    server = aio.server(options=SERVER_OPTIONS, interceptors=[RingCheck(ring, name)])
    add_service(
        _shard_grpc.add_ShardServiceServicer_to_server, ShardServicer(shard), server
    )
    bound = listen(server, host, port, server_credentials(tls))
    checker = add_health_and_reflection(server, ["chronoscore.v1.ShardService"])
    await serve_until_stopped(
        server,
        health_checker=checker,
        name=f"shard {name}",
        port=bound,
        port_file=port_file,
        on_stop=shard.stop,
        fatal=shard.failed,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shard_node",
        description="Run one ChronoScore shard node.",
    )
    parser.add_argument("--name", required=True, help="this shard's ring name")
    parser.add_argument(
        "--ring",
        required=True,
        help="comma-separated names of every shard in the ring",
    )
    add_server_arguments(
        parser, default_port=0, dsn_help="PostgreSQL connection string"
    )
    add_tls_arguments(
        parser,
        "tls-",
        "CA whose certificates callers must present (mutual TLS)",
    )
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("--dsn or $CHRONOSCORE_DSN is required")

    configure_logging(args.log_level)

    async def start() -> None:
        await serve(
            args.name,
            Ring(args.ring.split(",")),
            args.dsn,
            host=args.host,
            port=args.port,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
            tls=tls_files(args, "tls-"),
        )

    run_server(f"shard {args.name}", start)
