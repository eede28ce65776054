"""Run the coordinator: the public gRPC API in front of the shards."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from grpc import aio

from chronoscore._logging import configure_logging
from chronoscore._server import SERVER_OPTIONS, listen, serve_until_stopped
from chronoscore.errors import ChronoscoreError, InvalidArgument
from chronoscore.v1 import leaderboard_pb2_grpc as _grpc

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
    if not shards:
        raise InvalidArgument("at least one shard is required")
    return shards


async def serve(
    shards: dict[str, str],
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    port_file: Path | None = None,
) -> None:
    """Serve the public API until SIGINT or SIGTERM."""
    clients = ShardClients(shards)
    server = aio.server(options=SERVER_OPTIONS)
    _grpc.add_LeaderboardServiceServicer_to_server(LeaderboardServicer(clients), server)
    bound = listen(server, host, port)
    logger.info("coordinator routing to shards %s", ", ".join(sorted(shards)))
    await serve_until_stopped(
        server,
        name="coordinator",
        port=bound,
        port_file=port_file,
        on_stop=clients.close,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="Run the ChronoScore coordinator.",
    )
    parser.add_argument(
        "--shards",
        required=True,
        help="comma-separated name=host:port for every shard",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=50051, help="0 picks a free port")
    parser.add_argument(
        "--port-file", type=Path, help="write the bound port here once serving"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    configure_logging(args.log_level)
    try:
        shards = parse_shards(args.shards)
        asyncio.run(
            serve(shards, host=args.host, port=args.port, port_file=args.port_file)
        )
    except ChronoscoreError as exc:
        logger.error("coordinator cannot start: %s", exc)
        raise SystemExit(2) from None
