"""What every ChronoScore gRPC server shares: error mapping and serving.

Servicer methods raise :mod:`chronoscore.errors`; :func:`rpc` turns
those into gRPC statuses, and it is the only place that does.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ._db import is_unavailable
from ._metrics import RPC_SECONDS
from ._ring import SHARD_HEADER
from .errors import ChronoscoreError, FailedPrecondition

__all__ = [
    "rpc",
    "add_server_arguments",
    "run_server",
    "listen",
    "serve_until_stopped",
    "remaining",
    "SERVER_OPTIONS",
    "ShardCheck",
    "Malformed",
    "add_service",
    "add_health_and_reflection",
    "refusal",
]

# When the call being served must be answered by (time.monotonic()), so
# calls it makes to other servers give up no later than its caller does.
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


def remaining(default: float) -> float:
    """Seconds left before the current call's deadline, or ``default``."""
    deadline = _deadline.get()
    if deadline is None:
        return default
    return max(0.01, deadline - time.monotonic())


# gRPC turns SO_REUSEPORT on by default, which lets a second server bind a
# port already in use and take half its connections. A port must have
# one owner, so binding a busy one fails instead.
SERVER_OPTIONS = [
    ("grpc.so_reuseport", 0),
    ("grpc.max_receive_message_length", 64 << 20),
    # Coordinators ping the shards' long-lived FollowTop streams every
    # 10 s to notice a shard whose host vanished; let them.
    ("grpc.http2.min_ping_interval_without_data_ms", 5000),
]

logger = logging.getLogger("chronoscore.server")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Method = Callable[[Any, Req, aio.ServicerContext], Awaitable[Resp]]


def rpc(method: Method[Req, Resp]) -> Method[Req, Resp]:
    """Abort the call with the status that matches a ChronoscoreError."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Req, context: aio.ServicerContext) -> Resp:
        left = context.time_remaining()
        # Leave a little time to send the answer back.
        _deadline.set(None if left is None else time.monotonic() + left - 0.05)
        if isinstance(request, Malformed):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid message: {request.error}",
            )
        started = time.perf_counter()
        code = "OK"
        try:
            return await method(self, request, context)
        except ChronoscoreError as exc:
            code = exc.code.name
            if exc.code == grpc.StatusCode.INTERNAL:
                logger.error("%s failed: %s", method.__name__, exc)
            await context.abort(exc.code, str(exc))
            raise  # context.abort raises; this line is never reached
        except Exception as exc:
            # A lost database connection that a lower layer did not
            # translate is still the database being unavailable.
            if not is_unavailable(exc):
                raise
            code = "UNAVAILABLE"
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"PostgreSQL is unavailable: {exc}"
            )
            raise
        finally:
            elapsed = time.perf_counter() - started
            RPC_SECONDS.labels(method.__name__, code).observe(elapsed)

    return wrapper


def add_server_arguments(
    parser: argparse.ArgumentParser, *, default_port: int, dsn_help: str
) -> None:
    """The flags every ChronoScore server takes."""
    parser.add_argument(
        "--dsn",
        default=os.environ.get("CHRONOSCORE_DSN"),
        help=f"{dsn_help} (default: $CHRONOSCORE_DSN)",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=default_port, help="0 picks a free port"
    )
    parser.add_argument(
        "--port-file", type=Path, help="write the bound port here once serving"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus metrics over HTTP on this port (0: off)",
    )
    parser.add_argument("--log-level", default="INFO")


def run_server(name: str, start: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run a server's coroutine; exit with status 2 if it cannot start.

    Startup failures (bad flags, a busy port, an unreachable or foreign
    database) are logged as one line, not a traceback.
    """
    try:
        asyncio.run(start())
    except ChronoscoreError as exc:
        logger.error("%s cannot start: %s", name, exc)
        raise SystemExit(2) from None
    except Exception as exc:
        if not is_unavailable(exc):
            raise
        logger.error("%s cannot reach PostgreSQL: %s", name, exc)
        raise SystemExit(2) from None


def listen(
    server: aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Bind a port, with TLS if given; return the port bound (for 0)."""
    address = f"{host}:{port}"
    try:
        if credentials is None:
            return int(server.add_insecure_port(address))
        return int(server.add_secure_port(address, credentials))
    except RuntimeError as exc:
        raise FailedPrecondition(f"cannot listen on {host}:{port}: {exc}") from None


def add_health_and_reflection(
    server: aio.Server, services: list[str]
) -> health.aio.HealthServicer:
    """Serve grpc.health.v1 and server reflection for ``services``."""
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    names = [*services, health.SERVICE_NAME, reflection.SERVICE_NAME]
    reflection.enable_server_reflection(names, server)
    return checker


async def serve_until_stopped(
    server: aio.Server,
    *,
    name: str,
    health_checker: health.aio.HealthServicer | None = None,
    port: int,
    port_file: Path | None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_drain: Callable[[], None] | None = None,
    fatal: asyncio.Future[None] | None = None,
    grace: float = 10.0,
) -> None:
    """Start ``server``, announce its port, and run until SIGINT/SIGTERM.

    On a signal the server stops taking calls, runs ``on_drain`` (which
    ends streams that would otherwise last until the grace ran out),
    lets calls in flight finish for up to ``grace`` seconds, then runs
    ``on_stop``. If
    ``fatal`` completes first, the server stops the same way and the
    process exits with status 1.
    """
    await server.start()
    if health_checker is not None:
        # "" is the whole server; probes that name no service ask for it.
        await health_checker.set("", health_pb2.HealthCheckResponse.SERVING)
    if port_file is not None:
        # Written last and renamed into place, so a reader that sees the
        # file knows the server is serving.
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(f"{port}\n")
        tmp.replace(port_file)
    logger.info("%s serving on port %d", name, port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    waiters: set[asyncio.Future[Any]] = {asyncio.ensure_future(stop.wait())}
    if fatal is not None:
        waiters.add(asyncio.ensure_future(asyncio.shield(fatal)))
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)

    logger.info("%s draining", name)
    if health_checker is not None:
        await health_checker.enter_graceful_shutdown()
    if on_drain is not None:
        on_drain()
    await server.stop(grace)
    if fatal is not None and fatal.done():
        logger.error("%s stopped after a fatal error: %r", name, fatal.exception())
        raise SystemExit(1)
    if on_stop is not None:
        await on_stop()
    logger.info("%s stopped", name)


_SHARD_SERVICE = "/chronoscore.v1.ShardService/"
# Shard methods that are not unary, by their index in refusal()'s handlers.
_SHAPES = {"FollowTop": 1, "Read": 2}


def refusal(
    code: grpc.StatusCode, message: str
) -> tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler, grpc.RpcMethodHandler]:
    """Handlers that end a call with ``code``, one per shape of call:
    (unary, server-streaming, bidirectional)."""

    async def refuse(request: object, context: aio.ServicerContext) -> None:
        await context.abort(code, message)

    async def refuse_stream(
        request: object, context: aio.ServicerContext
    ) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield

    async def refuse_both(
        requests: object, context: aio.ServicerContext
    ) -> AsyncIterator[None]:
        await context.abort(code, message)
        yield

    return (
        grpc.unary_unary_rpc_method_handler(refuse),
        grpc.unary_stream_rpc_method_handler(refuse_stream),
        grpc.stream_stream_rpc_method_handler(refuse_both),
    )


class ShardCheck(aio.ServerInterceptor):  # type: ignore[misc]
    """Refuse calls meant for another shard.

    Every call names the shard it means, which catches an address that
    points at the wrong one.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._wrong_shard = refusal(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"this is shard {name}; the caller's address for another shard points here",
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        details: grpc.HandlerCallDetails,
    ) -> Any:
        if not details.method.startswith(_SHARD_SERVICE):
            # Health checks and reflection are for anyone.
            return await continuation(details)
        metadata = dict(details.invocation_metadata or ())
        if metadata.get(SHARD_HEADER) != self.name:
            method = details.method[len(_SHARD_SERVICE) :]
            return self._wrong_shard[_SHAPES.get(method, 0)]
        return await continuation(details)


class Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, error: str) -> None:
        self.error = error


def add_service(
    add: Callable[[Any, Any], None], servicer: Any, server: aio.Server
) -> None:
    """Register ``servicer`` with a generated ``add_*_to_server`` function.

    Requests that do not parse (bad UTF-8 in a string, say) reach the
    servicer as :class:`Malformed`, which :func:`rpc` answers with
    INVALID_ARGUMENT; gRPC itself would answer UNKNOWN.
    """
    add(servicer, _ParsingServer(server))


def _parse_or_flag(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_request(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return Malformed(str(exc))

    return parse_request


class _ParsingServer:
    """Just enough of a server for generated registration code."""

    def __init__(self, server: aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        # Registered again, with safe parsing, by the call that follows.
        pass

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        safe = {
            method: handler._replace(
                request_deserializer=_parse_or_flag(handler.request_deserializer)
            )
            for method, handler in handlers.items()
        }
        generic = grpc.method_handlers_generic_handler(service, safe)
        self._server.add_generic_rpc_handlers((generic,))
        self._server.add_registered_method_handlers(service, safe)
