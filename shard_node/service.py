"""The internal gRPC service of a shard node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import grpc
from grpc import aio

from chronoscore import _validate as check
from chronoscore._metrics import RPC_SECONDS
from chronoscore._ring import GENERATION_TRAILER, SLOTS_HEADER
from chronoscore._server import Malformed, rpc
from chronoscore.errors import ChronoscoreError, InvalidArgument, WrongShard
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import shard_pb2 as _shard_pb
from chronoscore.v1 import shard_pb2_grpc as _shard_grpc

from .index import IndexEntry, LeaderboardIndex
from .shard import Applied, Outcome, Shard, Write
from .store import BoardKey

__all__ = ["ShardServicer"]

# Count answers at most this many positions per call...
_MAX_POSITIONS = 1 << 16
# ... and Between returns at most this many entries.
_MAX_BETWEEN = 2048


class ShardServicer(_shard_grpc.ShardServiceServicer):
    def __init__(self, shard: Shard) -> None:
        self.shard = shard
        # Read streams waiting for their next request.
        self._idle_readers: set[asyncio.Task[object]] = set()
        # Each kind of streamed read: its handler, the reply's field, and
        # the unary method it stands for in metrics.
        self._reads: dict[str, tuple[Callable[[Any, str], Any], str, str]] = {
            "range": (self._range, "entries", "Range"),
            "between": (self._between, "between", "Between"),
            "count": (self._count, "count", "Count"),
            "lookup": (self._lookup, "entries", "Lookup"),
        }

    @rpc
    async def Apply(
        self, request: _shard_pb.ApplyRequest, context: aio.ServicerContext
    ) -> _shard_pb.ApplyResponse:
        if not request.updates:
            raise InvalidArgument("updates must not be empty")
        if len(request.updates) > check.MAX_BATCH:
            raise InvalidArgument(f"a batch holds at most {check.MAX_BATCH} updates")
        writes = [_write(u, i) for i, u in enumerate(request.updates)]
        outcomes = await self.shard.apply(writes, request.arrived_us)
        self._tell_generation(context)
        return _shard_pb.ApplyResponse(results=[_result(o) for o in outcomes])

    @rpc
    async def UpsertUser(
        self, request: _pb.UpsertUserRequest, context: aio.ServicerContext
    ) -> _pb.UpsertUserResponse:
        user = check.check_user_id(request.user_id)
        name = check.check_display_name(request.display_name)
        await self.shard.upsert_user(user, name)
        self._tell_generation(context)
        return _pb.UpsertUserResponse(user_id=user, display_name=name)

    @rpc
    async def Remove(
        self, request: _shard_pb.ShardRemoveRequest, context: aio.ServicerContext
    ) -> _pb.RemoveResponse:
        user = check.check_user_id(request.user_id)
        if request.board_id < 0:
            raise InvalidArgument(f"board_id {request.board_id} is negative")
        removed = await self.shard.remove(user, request.board_id)
        self._tell_generation(context)
        return _pb.RemoveResponse(removed=removed)

    @rpc
    async def Range(
        self, request: _shard_pb.RangeRequest, context: aio.ServicerContext
    ) -> _shard_pb.EntriesReply:
        return self._range(request, _digest(context))

    @rpc
    async def Between(
        self, request: _shard_pb.BetweenRequest, context: aio.ServicerContext
    ) -> _shard_pb.BetweenReply:
        return self._between(request, _digest(context))

    @rpc
    async def Count(
        self, request: _shard_pb.CountRequest, context: aio.ServicerContext
    ) -> _shard_pb.CountReply:
        return self._count(request, _digest(context))

    @rpc
    async def Lookup(
        self, request: _shard_pb.LookupRequest, context: aio.ServicerContext
    ) -> _shard_pb.EntriesReply:
        return self._lookup(request, _digest(context))

    def _range(
        self, request: _shard_pb.RangeRequest, digest: str | None
    ) -> _shard_pb.EntriesReply:
        index = self._index(request.board, digest)
        start = check.check_offset(request.start, "start")
        limit = check.check_limit(request.limit)
        ahead = 0
        if request.HasField("around"):
            if request.around.reached_us < 0 or request.before < 0:
                raise InvalidArgument("around and before must not be negative")
            ahead = _ahead(index, request.around)
            start = max(0, ahead - request.before)
        entries = index.range(start, limit)
        reply = self._reply(index, entries, range(start, start + len(entries)))
        reply.ahead = ahead
        return reply

    def _between(
        self, request: _shard_pb.BetweenRequest, digest: str | None
    ) -> _shard_pb.BetweenReply:
        index = self._index(request.board, digest)
        for name in ("lo", "hi"):
            if request.HasField(name) and getattr(request, name).reached_us < 0:
                raise InvalidArgument(f"{name} must not have a negative reached_us")
        start = _ahead(index, request.lo) if request.HasField("lo") else 0
        end = _ahead(index, request.hi) if request.HasField("hi") else len(index)
        end = max(start, end)
        count = min(max(request.count, 0), _MAX_BETWEEN)
        if end - start <= count:
            positions = list(range(start, end))
            entries = index.range(start, end - start)
        else:
            positions = _spread(start, end, count)
            entries = [index.at(p) for p in positions]
        sent = self._sent(index, entries, positions, not request.places_only)
        return _shard_pb.BetweenReply(
            start=start, end=end, entries=sent, total=len(index)
        )

    def _count(
        self, request: _shard_pb.CountRequest, digest: str | None
    ) -> _shard_pb.CountReply:
        index = self._index(request.board, digest)
        if len(request.positions) > _MAX_POSITIONS:
            raise InvalidArgument("too many positions in one Count")
        if any(p.reached_us < 0 for p in request.positions):
            raise InvalidArgument("positions must not have a negative reached_us")
        counts = [
            _shard_pb.Counts(
                ahead=index.count_ahead(p.score, p.reached_us, p.user_id),
                better=index.count_better(p.score),
            )
            for p in request.positions
        ]
        return _shard_pb.CountReply(counts=counts, total=len(index))

    def _lookup(
        self, request: _shard_pb.LookupRequest, digest: str | None
    ) -> _shard_pb.EntriesReply:
        index = self._index(request.board, digest)
        entries, positions = [], []
        for user in check.check_user_ids(list(request.user_ids)):
            entry = index.get(user)
            if entry is not None:
                entries.append(entry)
                positions.append(index.rank_of(user) or 0)
        reply = self._reply(index, entries, positions)
        for sent in reply.entries:
            sent.better = index.count_better(sent.score)
        return reply

    @rpc
    async def Prune(
        self, request: _shard_pb.PruneRequest, context: aio.ServicerContext
    ) -> _shard_pb.PruneReply:
        if request.board_id <= 0:
            raise InvalidArgument(f"board_id must be positive, got {request.board_id}")
        removed = await self.shard.prune(
            request.board_id, request.before_us, request.drop_board
        )
        self._tell_generation(context)
        return _shard_pb.PruneReply(removed=removed)

    @rpc
    async def Describe(
        self, request: _shard_pb.DescribeRequest, context: aio.ServicerContext
    ) -> _shard_pb.DescribeResponse:
        return _shard_pb.DescribeResponse(
            name=self.shard.name,
            slots=len(self.shard.slots),
            epoch=self.shard.epoch,
            entries=sum(len(i) for i in self.shard.indexes.values()),
            index_bytes=(
                sum(i.memory_bytes() for i in self.shard.indexes.values())
                if request.measure_memory
                else 0
            ),
        )

    async def FollowTop(
        self, request: _shard_pb.FollowTopRequest, context: aio.ServicerContext
    ) -> AsyncIterator[_shard_pb.TopSnapshot]:
        """The first entries now, then after every change of generation.

        A snapshot whose entries (with their names and metadata) are
        those of the one before says so instead of repeating them, so
        commits that leave the top alone cost a few bytes per follower.
        The stream ends, with OK, when the shard drains.
        """
        try:
            if isinstance(request, Malformed):
                raise InvalidArgument(
                    f"the request is not a valid message: {request.error}"
                )
            key = _board_key(request.board)
            limit = check.check_limit(request.limit)
        except ChronoscoreError as exc:
            await context.abort(exc.code, str(exc))
            return

        shard = self.shard
        sent: list[_shard_pb.ShardEntry] | None = None
        while not shard.draining:
            generation = shard.generation
            index = shard.index(key, request.board.ascending)
            top = index.top(limit)
            entries = self._reply(index, top, range(len(top))).entries
            snapshot = _shard_pb.TopSnapshot(
                total=len(index), generation=generation, slots_digest=shard.digest
            )
            if sent is not None and list(entries) == sent:
                snapshot.unchanged = True
            else:
                sent = list(entries)
                snapshot.entries.extend(sent)
            yield snapshot
            await shard.changed_after(generation)

    async def Read(
        self,
        requests: AsyncIterator[_shard_pb.ReadRequest],
        context: aio.ServicerContext,
    ) -> None:
        """Answer reads as they arrive, each with its request's id.

        Reads touch only memory, so each is answered before the next is
        read, in the order sent. A read that fails gets a failure reply
        and the stream goes on. When the shard drains, a stream waiting
        for its next request ends with OK; one answering finishes first.
        """
        task = asyncio.current_task()
        assert task is not None
        shard = self.shard
        # Tells the caller the stream is taken before it sends a read.
        await context.send_initial_metadata(())
        while not shard.draining:
            self._idle_readers.add(task)
            try:
                request = await context.read()
            except asyncio.CancelledError:
                if shard.draining:
                    return
                raise
            finally:
                self._idle_readers.discard(task)
            if request is aio.EOF:
                return
            if isinstance(request, Malformed):
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"a read is not a valid message: {request.error}",
                )
            await context.write(self._answer(request))

    def drain(self) -> None:
        """End the Read streams that wait for a request; the server is
        stopping. Streams answering a read end after sending it."""
        for task in list(self._idle_readers):
            task.cancel()

    def _answer(self, request: _shard_pb.ReadRequest) -> _shard_pb.ReadReply:
        kind = request.WhichOneof("read")
        started = time.perf_counter()
        code = "OK"
        reply = _shard_pb.ReadReply(id=request.id)
        handler, field, method = self._reads.get(kind or "", (None, "", "Read"))
        try:
            if handler is None:
                raise InvalidArgument(
                    "a read must name range, between, count or lookup"
                )
            answer = handler(getattr(request, kind), request.slots_digest)
            getattr(reply, field).CopyFrom(answer)
        except ChronoscoreError as exc:
            code = exc.code.name
            reply.failure.code = exc.code.value[0]
            reply.failure.message = str(exc)
        finally:
            RPC_SECONDS.labels(method, code).observe(time.perf_counter() - started)
        return reply

    def _tell_generation(self, context: aio.ServicerContext) -> None:
        context.set_trailing_metadata(
            ((GENERATION_TRAILER, str(self.shard.generation)),)
        )

    def _index(
        self, board: _shard_pb.BoardPeriod, expected: str | None
    ) -> LeaderboardIndex:
        """The index a read uses, once the read's slots are checked.

        A read names the digest of the slots the caller believes this
        shard owns. If the shard owns others (slots moved, see
        ``chronoscore._placement``), summing its answer with the other
        shards' could count a user twice or not at all, so the read is
        refused with WrongShard and the caller reads the placement
        again. The check and the read run without yielding in between.
        """
        if expected and expected != self.shard.digest:
            raise WrongShard(
                f"shard {self.shard.name} owns other slots than the caller"
                f" expects (epoch {self.shard.epoch}); the placement changed"
            )
        return self.shard.index(_board_key(board), board.ascending)

    def _reply(
        self,
        index: LeaderboardIndex,
        entries: list[IndexEntry],
        positions: Iterable[int],
    ) -> _shard_pb.EntriesReply:
        return _shard_pb.EntriesReply(
            entries=self._sent(index, entries, positions), total=len(index)
        )

    def _sent(
        self,
        index: LeaderboardIndex,
        entries: list[IndexEntry],
        positions: Iterable[int],
        whole: bool = True,
    ) -> list[_shard_pb.ShardEntry]:
        """Entries as sent, with their local positions; without names and
        metadata unless ``whole``."""
        if not whole:
            return [
                _shard_pb.ShardEntry(
                    user_id=e.user_id,
                    score=e.score,
                    reached_us=e.reached_us,
                    position=position,
                )
                for e, position in zip(entries, positions, strict=True)
            ]
        profiles = self.shard.profiles
        return [
            _shard_pb.ShardEntry(
                user_id=e.user_id,
                display_name=profiles.get(e.user_id, ""),
                score=e.score,
                reached_us=e.reached_us,
                metadata=index.metadata(e.user_id),
                position=position,
            )
            for e, position in zip(entries, positions, strict=True)
        ]


def _digest(context: aio.ServicerContext) -> str | None:
    """The slots digest a unary read names in its metadata, if any."""
    return dict(context.invocation_metadata() or ()).get(SLOTS_HEADER)


def _board_key(board: _shard_pb.BoardPeriod) -> BoardKey:
    if board.board_id <= 0:
        raise InvalidArgument(f"board_id must be positive, got {board.board_id}")
    return (board.board_id, board.period_start_us)


def _write(update: _shard_pb.ShardUpdate, i: int) -> Write:
    field = f"updates[{i}]."
    user = check.check_user_id(update.user_id, f"{field}user_id")
    mode = check.check_mode(update.mode, f"{field}mode", allow_default=False)
    metadata = None
    if update.HasField("metadata"):
        metadata = check.check_metadata(update.metadata, f"{field}metadata")
    return Write(
        board=_board_key(update.board),
        ascending=update.board.ascending,
        user_id=user,
        score=update.score,
        mode=mode,
        metadata=metadata,
        request_id=check.check_request_id(update.request_id, f"{field}request_id"),
        arrived_us=update.arrived_us,
    )


def _ahead(index: LeaderboardIndex, position: _shard_pb.Position) -> int:
    return index.count_ahead(position.score, position.reached_us, position.user_id)


def _spread(lo: int, hi: int, count: int) -> list[int]:
    """Up to ``count`` distinct positions evenly spread over [lo, hi)."""
    span = hi - lo
    if span <= 0 or count <= 0:
        return []
    if span <= count:
        return list(range(lo, hi))
    return sorted({lo + (span * i) // count for i in range(count)})


def _result(outcome: Outcome) -> _pb.SubmitResult:
    if isinstance(outcome, Applied):
        return _pb.SubmitResult(
            applied=_pb.SubmitScoreResponse(
                score=outcome.score,
                changed=outcome.changed,
                period=_pb.Period(start_us=outcome.period_start_us),
                replayed=outcome.replayed,
            )
        )
    assert isinstance(outcome, ChronoscoreError)
    return _pb.SubmitResult(
        failure=_pb.Failure(code=outcome.code.value[0], message=str(outcome))
    )
