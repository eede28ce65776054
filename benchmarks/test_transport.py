"""What a read between coordinator and shard costs on the gRPC stack
alone: a unary call of its own, against one message each way on a
stream that stays open (how coordinators send shard reads).

Both sides run in this process on one event loop, so each figure is the
client's and the server's cost together, and the two compare directly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc import aio
from pytest_benchmark.fixture import BenchmarkFixture

from chronoscore.v1 import shard_pb2 as spb

# A Count of one position, about the size of a rank's second round.
_READ = spb.ReadRequest(
    id=1,
    slots_digest="0" * 16,
    count=spb.CountRequest(
        board=spb.BoardPeriod(board_id=1),
        positions=[spb.Position(score=1200, reached_us=1 << 50, user_id="u000123456")],
    ),
).SerializeToString()
_REPLY = spb.ReadReply(
    id=1, count=spb.CountReply(counts=[spb.Counts(ahead=123_456)], total=250_000)
).SerializeToString()


def _same(data: bytes) -> bytes:
    return data


@dataclass
class Transport:
    loop: asyncio.AbstractEventLoop
    server: aio.Server
    channel: aio.Channel
    unary: Any
    stream: Any


async def _answer(request: bytes, context: aio.ServicerContext) -> bytes:
    return _REPLY


async def _answer_each(
    requests: AsyncIterator[bytes], context: aio.ServicerContext
) -> AsyncIterator[bytes]:
    async for _ in requests:
        yield _REPLY


async def _start() -> tuple[aio.Server, aio.Channel, Any, Any]:
    server = aio.server()
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_answer, _same, _same),
        "Stream": grpc.stream_stream_rpc_method_handler(_answer_each, _same, _same),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("bench.Transport", handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    unary = channel.unary_unary("/bench.Transport/Unary", _same, _same)
    stream = channel.stream_stream("/bench.Transport/Stream", _same, _same)()
    assert await unary(_READ) == _REPLY
    return server, channel, unary, stream


async def _stop(server: aio.Server, channel: aio.Channel, stream: Any) -> None:
    await stream.done_writing()
    assert await stream.code() == grpc.StatusCode.OK
    await channel.close()
    await server.stop(None)


@pytest.fixture(scope="module")
def transport() -> Iterator[Transport]:
    # The loop gRPC's objects bind to; it must be current while they
    # are made, whatever tests ran before.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        server, channel, unary, stream = loop.run_until_complete(_start())
        yield Transport(loop, server, channel, unary, stream)
        loop.run_until_complete(_stop(server, channel, stream))
    finally:
        asyncio.set_event_loop(None)
        loop.close()


def test_transport_unary_call(
    benchmark: BenchmarkFixture, transport: Transport
) -> None:
    run = transport.loop.run_until_complete

    async def call() -> bytes:
        reply: bytes = await transport.unary(_READ)
        return reply

    reply = benchmark(lambda: run(call()))
    assert reply == _REPLY


def test_transport_stream_message(
    benchmark: BenchmarkFixture, transport: Transport
) -> None:
    run = transport.loop.run_until_complete
    stream = transport.stream

    async def round_trip() -> bytes:
        await stream.write(_READ)
        reply: bytes = await stream.read()
        return reply

    reply = benchmark(lambda: run(round_trip()))
    assert reply == _REPLY
