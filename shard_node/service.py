"""The internal gRPC service of a shard node."""

from __future__ import annotations

from grpc import aio

from chronoscore import _validate as check
from chronoscore._server import rpc
from chronoscore.errors import ChronoscoreError
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import shard_pb2 as _shard_pb
from chronoscore.v1 import shard_pb2_grpc as _shard_grpc

from .index import IndexEntry
from .shard import Applied, Outcome, Shard

__all__ = ["ShardServicer"]


class ShardServicer(_shard_grpc.ShardServiceServicer):
    def __init__(self, shard: Shard) -> None:
        self.shard = shard

    @rpc
    async def Apply(
        self, request: _shard_pb.ApplyRequest, context: aio.ServicerContext
    ) -> _shard_pb.ApplyResponse:
        updates = check.check_batch(list(request.updates))
        outcomes = await self.shard.apply(updates, request.arrived_us)
        return _shard_pb.ApplyResponse(results=[_result(o) for o in outcomes])

    @rpc
    async def UpsertUser(
        self, request: _pb.UpsertUserRequest, context: aio.ServicerContext
    ) -> _pb.UpsertUserResponse:
        user = check.check_user_id(request.user_id)
        name = check.check_display_name(request.display_name)
        await self.shard.upsert_user(user, name)
        return _pb.UpsertUserResponse(user_id=user, display_name=name)

    @rpc
    async def Top(
        self, request: _shard_pb.ShardTopRequest, context: aio.ServicerContext
    ) -> _shard_pb.ShardTopResponse:
        index = self.shard.index(check.check_leaderboard(request.leaderboard))
        entries = index.top(check.check_limit(request.limit))
        return _shard_pb.ShardTopResponse(
            entries=[self._entry(e) for e in entries], total=len(index)
        )

    @rpc
    async def Lookup(
        self, request: _shard_pb.LookupRequest, context: aio.ServicerContext
    ) -> _shard_pb.LookupResponse:
        board = check.check_leaderboard(request.leaderboard)
        user = check.check_user_id(request.user_id)
        entry, ahead = self.shard.lookup(board, user)
        return _shard_pb.LookupResponse(
            entry=self._entry(entry),
            ahead=ahead,
            total=len(self.shard.index(board)),
        )

    @rpc
    async def CountAhead(
        self, request: _shard_pb.CountAheadRequest, context: aio.ServicerContext
    ) -> _shard_pb.CountAheadResponse:
        index = self.shard.index(check.check_leaderboard(request.leaderboard))
        user = check.check_user_id(request.user_id)
        ahead = index.count_ahead(request.score, request.reached_us, user)
        return _shard_pb.CountAheadResponse(ahead=ahead, total=len(index))

    @rpc
    async def Describe(
        self, request: _shard_pb.DescribeRequest, context: aio.ServicerContext
    ) -> _shard_pb.DescribeResponse:
        return _shard_pb.DescribeResponse(
            name=self.shard.name,
            ring=list(self.shard.ring.shards),
            slots=len(self.shard.ring.slots_of(self.shard.name)),
        )

    def _entry(self, entry: IndexEntry) -> _shard_pb.ShardEntry:
        return _shard_pb.ShardEntry(
            user_id=entry.user_id,
            display_name=self.shard.profiles.get(entry.user_id, ""),
            score=entry.score,
            reached_us=entry.reached_us,
        )


def _result(outcome: Outcome) -> _pb.SubmitResult:
    if isinstance(outcome, Applied):
        return _pb.SubmitResult(
            applied=_pb.SubmitScoreResponse(
                score=outcome.score, changed=outcome.changed
            )
        )
    assert isinstance(outcome, ChronoscoreError)
    return _pb.SubmitResult(
        failure=_pb.Failure(code=outcome.code.value[0], message=str(outcome))
    )
