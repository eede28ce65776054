"""Run a shard node: rebuild from PostgreSQL, then serve gRPC."""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

from grpc import aio

from chronoscore._logging import configure_logging
from chronoscore._metrics import (
    SHARD_EPOCH,
    SHARD_SLOTS,
    serve_metrics,
    watch_index_sizes,
)
from chronoscore._ring import check_shard_name
from chronoscore._security import (
    PLAINTEXT,
    TlsFiles,
    add_tls_arguments,
    server_credentials,
    tls_files,
)
from chronoscore._server import (
    SERVER_OPTIONS,
    ShardCheck,
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
    ring: list[str],
    dsn: str,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    advertise: str = "",
    port_file: Path | None = None,
    metrics_port: int = 0,
    tls: TlsFiles = PLAINTEXT,
) -> None:
    """Serve one shard until SIGINT or SIGTERM.

    ``ring`` names the shards of a new cluster's first ring. The shard
    records ``advertise`` (by default host:port) in PostgreSQL as the
    address coordinators reach it at. With ``tls.ca`` set, only callers
    holding a certificate that CA signed (the cluster credential) get
    through the TLS handshake.
    """
    shard = Shard(name, Store(dsn), ShardLease(dsn, name), ring=ring)
    await shard.start()
    SHARD_EPOCH.set_function(lambda: shard.epoch)
    SHARD_SLOTS.set_function(lambda: len(shard.slots))
    watch_index_sizes(shard.index_sizes)
    if metrics_port:
        serve_metrics(host, metrics_port)

    server = aio.server(
        options=SERVER_OPTIONS,
        interceptors=[ShardCheck(name)],
    )
    servicer = ShardServicer(shard)
    add_service(_shard_grpc.add_ShardServiceServicer_to_server, servicer, server)
    bound = listen(server, host, port, server_credentials(tls))
    await shard.advertise(advertise or _address(host, bound))
    checker = add_health_and_reflection(server, ["chronoscore.v1.ShardService"])

    def drain() -> None:
        shard.drain()
        servicer.drain()

    await serve_until_stopped(
        server,
        health_checker=checker,
        name=f"shard {name}",
        port=bound,
        port_file=port_file,
        on_stop=shard.stop,
        on_drain=drain,
        fatal=shard.failed,
    )


def _address(host: str, port: int) -> str:
    """host:port as others reach it; a wildcard host means this machine."""
    if host in ("", "0.0.0.0", "::", "[::]"):
        host = socket.getfqdn()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m shard_node",
        description="Run one ChronoScore shard node.",
    )
    parser.add_argument("--name", required=True, help="this shard's ring name")
    parser.add_argument(
        "--ring",
        default="",
        help="comma-separated shard names of a new cluster's first ring;"
        " ignored once the database holds a placement",
    )
    parser.add_argument(
        "--advertise",
        default="",
        help="host:port at which coordinators reach this shard"
        " (default: --host and the port it listens on)",
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
            check_shard_name(args.name),
            [n.strip() for n in args.ring.split(",") if n.strip()],
            args.dsn,
            host=args.host,
            port=args.port,
            advertise=args.advertise,
            port_file=args.port_file,
            metrics_port=args.metrics_port,
            tls=tls_files(args, "tls-"),
        )

    run_server(f"shard {args.name}", start)
