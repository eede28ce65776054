"""The coordinator's connections to the shard nodes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import grpc
from grpc import aio

from chronoscore._ring import RING_HEADER, SHARD_HEADER, Ring
from chronoscore._server import remaining
from chronoscore.errors import ChronoscoreError, Unavailable, from_status
from chronoscore.v1 import shard_pb2_grpc as _shard_grpc

__all__ = ["ShardClients"]

logger = logging.getLogger("chronoscore.coordinator")

T = TypeVar("T")

# A shard that is down, slow, or shutting down: worth retrying elsewhere
# or later, never the caller's fault.
_UNREACHABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)


class ShardClients:
    """One channel and stub per shard, and the ring that routes to them."""

    def __init__(
        self,
        addresses: Mapping[str, str],
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.ring = Ring(addresses)
        self.timeout = timeout
        self._metadata = {
            name: ((RING_HEADER, self.ring.fingerprint), (SHARD_HEADER, name))
            for name in addresses
        }
        self._channels = {
            name: _channel(
                address,
                credentials,
                [
                    ("grpc.max_receive_message_length", 64 << 20),
                    # A restarted shard is back within seconds; keep the
                    # reconnect backoff short so it is used right away.
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 200),
                    ("grpc.max_reconnect_backoff_ms", 2000),
                ],
            )
            for name, address in addresses.items()
        }
        self.stubs = {
            name: _shard_grpc.ShardServiceStub(channel)
            for name, channel in self._channels.items()
        }

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self._channels.values()))

    async def call(
        self,
        shard: str,
        method: Callable[[Any], Awaitable[T]],
        request: Any,
    ) -> T:
        """Call one shard; translate its failures to ChronoscoreError."""
        try:
            return await method(  # type: ignore[call-arg]
                request,
                timeout=remaining(self.timeout),
                metadata=self._metadata[shard],
            )
        except aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
            if code in _UNREACHABLE:
                logger.debug("shard %s unreachable: %s", shard, details)
                raise Unavailable(f"shard {shard} is unavailable: {details}") from None
            raise from_status(code, details) from None

    async def each(
        self,
        method: Callable[[_shard_grpc.ShardServiceStub], Callable[[Any], Awaitable[T]]],
        request: Any,
        *,
        shards: list[str] | None = None,
    ) -> dict[str, T]:
        """Call every shard (or ``shards``) concurrently.

        ``request`` is one request for all, or a dict of one per shard.

        Raises the first failure: an answer that needs every shard is
        not given from some of them.
        """
        names = list(self.stubs) if shards is None else shards
        if isinstance(request, dict):
            requests = request
        else:
            requests = dict.fromkeys(names, request)
        results = await asyncio.gather(
            *(self.call(n, method(self.stubs[n]), requests[n]) for n in names),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, ChronoscoreError):
                raise result
            if isinstance(result, BaseException):
                raise result
        return dict(zip(names, results, strict=True))  # type: ignore[arg-type]


def _channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, int]],
) -> aio.Channel:
    if credentials is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, credentials, options=options)
