"""The coordinator's connections to the shard nodes."""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import grpc
from grpc import aio

from chronoscore import _placement
from chronoscore._db import is_unavailable, make_pool
from chronoscore._metrics import RING_VERSION
from chronoscore._placement import Placement
from chronoscore._ring import GENERATION_TRAILER, SHARD_HEADER, SLOTS_HEADER
from chronoscore._server import remaining
from chronoscore.errors import (
    ChronoscoreError,
    Unavailable,
    from_code_number,
    from_status,
)
from chronoscore.v1 import shard_pb2 as _shard_pb
from chronoscore.v1 import shard_pb2_grpc as _shard_grpc

__all__ = ["ShardClients"]

logger = logging.getLogger("chronoscore.coordinator")

# A shard that is down, slow, or shutting down: worth retrying elsewhere
# or later, never the caller's fault.
_UNREACHABLE = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)

# Calls whose replies carry the shard's generation after the write.
_WRITES = frozenset({"Apply", "UpsertUser", "Remove", "Prune"})

# Reads sent over a shard's Read stream, by their field in ReadRequest.
_STREAMED = {
    "Range": "range",
    "Between": "between",
    "Count": "count",
    "Lookup": "lookup",
}


class ShardClients:
    """Channels to the shards, and the placement that routes to them.

    The placement is read from PostgreSQL at start and again whenever it
    changes (see ``chronoscore._placement``). Shards record their own
    addresses there; ``addresses`` given here take precedence, until the
    shard records another address than it had (it started elsewhere).
    """

    def __init__(
        self,
        dsn: str,
        addresses: Mapping[str, str] | None = None,
        *,
        timeout: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
    ):
        self.dsn = dsn
        self.timeout = timeout
        self._credentials = credentials
        self._given = dict(addresses or {})
        # The addresses shards recorded, when last read.
        self._recorded: dict[str, str | None] = {}
        self._pool = make_pool(dsn, "chronoscore-placement", max_size=2, timeout=5.0)
        self._addresses: dict[str, str] = {}
        self._channels: dict[str, aio.Channel] = {}
        self._stubs: dict[str, _shard_grpc.ShardServiceStub] = {}
        self._reads: dict[str, _ReadStream] = {}
        self._placement: Placement | None = None
        self._reloading = asyncio.Lock()
        self._watch: asyncio.Task[None] | None = None
        # Per shard, the generation after the last write this coordinator
        # saw acknowledged: pushed top lists older than that miss it.
        self.written: dict[str, int] = {}

    async def open(self, first_ring: list[str]) -> None:
        """Load the placement (creating it from ``first_ring`` in a new
        cluster's database) and follow its changes."""
        await self._pool.open(wait=True, timeout=30)
        if first_ring:
            async with self._pool.connection() as conn:
                await _placement.bootstrap(conn, first_ring)
        await self.reload()
        self._watch = asyncio.create_task(_placement.watch(self.dsn, self._changed))

    async def close(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
        for stream in self._reads.values():
            stream.close()
        await asyncio.gather(*(c.close() for c in self._channels.values()))
        await self._pool.close()

    @property
    def placement(self) -> Placement:
        assert self._placement is not None, "open() first"
        return self._placement

    async def reload(self) -> None:
        """Read the placement and the shards' addresses again."""
        async with self._reloading, self._pool.connection() as conn:
            placement = await _placement.load(conn)
            states = await _placement.shard_states(conn)
        for name in placement.holders:
            recorded = states.get(name, _NOWHERE).address
            before = self._recorded.get(name)
            if name in self._given and before and recorded != before:
                # The shard started again somewhere else since.
                logger.info(
                    "shard %s now listens at %s; following it instead of %s",
                    name,
                    recorded,
                    self._given.pop(name),
                )
            self._recorded[name] = recorded
            address = self._given.get(name) or recorded
            if address and address != self._addresses.get(name):
                self._connect(name, address)
        if self._placement is None or placement.version != self._placement.version:
            logger.info("routing by placement %r", placement)
        self._placement = placement
        RING_VERSION.set(placement.version)

    async def refresh(self) -> None:
        """Reload if the placement changed; quietly keep the old one while
        PostgreSQL is unreachable."""
        try:
            await self._changed()
        except Exception as exc:
            if not is_unavailable(exc):
                raise
            logger.debug("cannot read the placement: %s", exc)

    async def _changed(self) -> None:
        async with self._pool.connection() as conn:
            current = await _placement.version(conn)
            recorded = await _placement.addresses(conn)
        placement = self.placement
        unknown = any(name not in self._stubs for name in placement.holders)
        # A shard that restarted elsewhere (another port, another host).
        moved = any(
            recorded.get(name) != self._recorded.get(name) for name in placement.holders
        )
        if current != placement.version or unknown or moved:
            await self.reload()

    def _connect(self, name: str, address: str) -> None:
        old = self._channels.get(name)
        if old is not None:
            asyncio.ensure_future(old.close(grace=self.timeout))
        self._addresses[name] = address
        self._channels[name] = _channel(
            address,
            self._credentials,
            [
                ("grpc.max_receive_message_length", 64 << 20),
                # A restarted shard is back within seconds; keep the
                # reconnect backoff short so it is used right away.
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
                # A shard whose host vanished sends no reset; pings find
                # it, ending the top lists it pushed (coordinator.tops).
                ("grpc.keepalive_time_ms", 10_000),
                ("grpc.keepalive_timeout_ms", 5_000),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        self._stubs[name] = _shard_grpc.ShardServiceStub(self._channels[name])
        old_reads = self._reads.pop(name, None)
        if old_reads is not None:
            old_reads.close()

    async def call(
        self,
        shard: str,
        method: str,
        request: Any,
        *,
        placement: Placement | None = None,
    ) -> Any:
        """Call one shard; translate its failures to ChronoscoreError.

        With ``placement``, the call is a read that the shard answers
        only if it owns exactly the slots that placement gives it.
        """
        stub = self.stub(shard)
        kind = _STREAMED.get(method)
        if kind is not None:
            digest = "" if placement is None else placement.digest(shard)
            return await self._read_stream(shard, stub).read(
                kind, request, digest, remaining(self.timeout)
            )
        metadata: tuple[tuple[str, str], ...] = ((SHARD_HEADER, shard),)
        if placement is not None:
            metadata += ((SLOTS_HEADER, placement.digest(shard)),)
        try:
            call = getattr(stub, method)(
                request, timeout=remaining(self.timeout), metadata=metadata
            )
            reply = await call
            if method in _WRITES:
                self._note_generation(shard, await call.trailing_metadata())
            return reply
        except aio.AioRpcError as exc:
            raise _translate(shard, exc) from None

    def _read_stream(
        self, shard: str, stub: _shard_grpc.ShardServiceStub
    ) -> _ReadStream:
        stream = self._reads.get(shard)
        if stream is None or stream.ended:
            stream = self._reads[shard] = _ReadStream(shard, stub)
        return stream

    def stub(self, shard: str) -> _shard_grpc.ShardServiceStub:
        stub = self._stubs.get(shard)
        if stub is None:
            raise Unavailable(f"shard {shard} has not recorded its address yet")
        return stub

    def _note_generation(self, shard: str, trailers: Any) -> None:
        for key, value in trailers or ():
            if key == GENERATION_TRAILER:
                self.written[shard] = max(self.written.get(shard, 0), int(value))

    async def each(
        self,
        method: str,
        request: Any,
        *,
        shards: Iterable[str] | None = None,
        placement: Placement | None = None,
    ) -> dict[str, Any]:
        """Call every shard that owns slots (or ``shards``) concurrently.

        ``request`` is one request for all, or a dict of one per shard.

        Raises the first failure: an answer that needs every shard is
        not given from some of them.
        """
        names = list(
            (placement or self.placement).holders if shards is None else shards
        )
        if isinstance(request, dict):
            requests = request
        else:
            requests = dict.fromkeys(names, request)
        results = await asyncio.gather(
            *(self.call(n, method, requests[n], placement=placement) for n in names),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return dict(zip(names, results, strict=True))


_NOWHERE = _placement.ShardState("", 0, 0, None, False)


class _ReadStream:
    """Reads to one shard over one long-lived Read stream.

    A read costs one message each way instead of a call of its own. The
    replies are matched to their reads by id. Messages are written by
    one task of the stream's own, so a read that gives up (its deadline
    passed, its caller went away) never cuts a write short, which would
    end the stream for every read on it. When the stream ends, for
    whatever reason, every read still waiting on it fails as
    Unavailable, and the next read opens a new stream.
    """

    def __init__(self, shard: str, stub: _shard_grpc.ShardServiceStub) -> None:
        self.shard = shard
        self.ended = False
        self._call = stub.Read(metadata=((SHARD_HEADER, shard),))
        self._ids = itertools.count(1)
        # Each waiting read's future gets its reply, or the error that
        # ended the stream: a value, never an exception, so a future
        # whose read has gone leaves nothing unretrieved behind.
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._outbox: asyncio.Queue[_shard_pb.ReadRequest] = asyncio.Queue()
        self._tasks = (
            asyncio.ensure_future(self._send()),
            asyncio.ensure_future(self._receive()),
        )

    async def read(self, kind: str, request: Any, digest: str, timeout: float) -> Any:
        """The reply to one read, or the error it failed with."""
        if self.ended:
            raise Unavailable(f"shard {self.shard} is unavailable: its stream ended")
        read_id = next(self._ids)
        reply = asyncio.get_running_loop().create_future()
        self._waiting[read_id] = reply
        message = _shard_pb.ReadRequest(id=read_id, slots_digest=digest)
        getattr(message, kind).CopyFrom(request)
        self._outbox.put_nowait(message)
        try:
            async with asyncio.timeout(timeout):
                answer = await reply
        except TimeoutError:
            raise Unavailable(
                f"shard {self.shard} is unavailable: no answer within {timeout:.2f} s"
            ) from None
        finally:
            self._waiting.pop(read_id, None)
        if isinstance(answer, ChronoscoreError):
            raise answer
        if answer.HasField("failure"):
            raise from_code_number(answer.failure.code, answer.failure.message)
        return getattr(answer, answer.WhichOneof("result"))

    def close(self) -> None:
        self._end(Unavailable(f"shard {self.shard} is unavailable: closed"))

    async def _send(self) -> None:
        try:
            # A write racing the shard's refusal of the stream (another
            # shard's address, say) makes gRPC end it as an internal
            # error, losing the shard's answer; the first waits until
            # the shard has taken the stream or refused it.
            await self._call.initial_metadata()
            while not self._call.done():
                message = await self._outbox.get()
                await self._call.write(message)
        except (aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            # The stream has ended; _receive tells the reads how.
            pass
        except asyncio.CancelledError:
            pass

    async def _receive(self) -> None:
        error: ChronoscoreError = Unavailable(
            f"shard {self.shard} is unavailable: it ended the stream"
        )
        try:
            while True:
                answer = await self._call.read()
                if answer is aio.EOF:
                    break
                waiting = self._waiting.get(answer.id)
                if waiting is not None and not waiting.done():
                    waiting.set_result(answer)
        except aio.AioRpcError as exc:
            error = _translate(self.shard, exc)
            if exc.code() == grpc.StatusCode.INTERNAL:
                # gRPC's own: a write met the stream's end. Shards send
                # their errors as replies, never as the stream's status.
                error = Unavailable(
                    f"shard {self.shard} is unavailable: its stream broke"
                    f" ({exc.details()})"
                )
        except asyncio.CancelledError:
            pass
        finally:
            self._end(error)

    def _end(self, error: ChronoscoreError) -> None:
        """Fail every waiting read with ``error``; later reads open a new
        stream."""
        if not self.ended:
            self.ended = True
            self._call.cancel()
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
        for waiting in self._waiting.values():
            if not waiting.done():
                waiting.set_result(error)
        self._waiting.clear()


def _translate(shard: str, exc: aio.AioRpcError) -> ChronoscoreError:
    code, details = exc.code(), exc.details() or ""
    if code in _UNREACHABLE:
        logger.debug("shard %s unreachable: %s", shard, details)
        return Unavailable(f"shard {shard} is unavailable: {details}")
    return from_status(code, details)


def _channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: list[tuple[str, int]],
) -> aio.Channel:
    if credentials is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, credentials, options=options)
