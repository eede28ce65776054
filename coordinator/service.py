"""The public LeaderboardService, served by the coordinator."""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from grpc import aio

from chronoscore import _validate as check
from chronoscore._server import rpc
from chronoscore.errors import ChronoscoreError, from_code_number
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import leaderboard_pb2_grpc as _grpc
from chronoscore.v1 import shard_pb2 as _shard_pb

from .merge import merge_top
from .shards import ShardClients

__all__ = ["LeaderboardServicer"]


class LeaderboardServicer(_grpc.LeaderboardServiceServicer):
    def __init__(self, shards: ShardClients) -> None:
        self.shards = shards

    @rpc
    async def SubmitScore(
        self, request: _pb.SubmitScoreRequest, context: aio.ServicerContext
    ) -> _pb.SubmitScoreResponse:
        update = check.check_update(request)
        owner = self.shards.ring.owner(update.user_id)
        reply = await self.shards.call(
            owner,
            self.shards.stubs[owner].Apply,
            _shard_pb.ApplyRequest(updates=[request], arrived_us=_now_us()),
        )
        (result,) = reply.results
        if result.HasField("failure"):
            raise _failure_error(result.failure)
        applied: _pb.SubmitScoreResponse = result.applied
        return applied

    @rpc
    async def SubmitScores(
        self, request: _pb.SubmitScoresRequest, context: aio.ServicerContext
    ) -> _pb.SubmitScoresResponse:
        updates = list(request.updates)
        check.check_batch(updates)
        arrived_us = _now_us()

        # Split by owner, keeping each user's updates in request order.
        positions: dict[str, list[int]] = defaultdict(list)
        for i, update in enumerate(updates):
            positions[self.shards.ring.owner(update.user_id)].append(i)

        async def apply(owner: str, where: list[int]) -> list[_pb.SubmitResult]:
            req = _shard_pb.ApplyRequest(
                updates=[updates[i] for i in where], arrived_us=arrived_us
            )
            try:
                reply = await self.shards.call(
                    owner, self.shards.stubs[owner].Apply, req
                )
            except ChronoscoreError as exc:
                failure = _pb.Failure(code=exc.code.value[0], message=str(exc))
                return [_pb.SubmitResult(failure=failure)] * len(where)
            return list(reply.results)

        owners = list(positions)
        replies = await asyncio.gather(*(apply(o, positions[o]) for o in owners))
        results: dict[int, _pb.SubmitResult] = {}
        for owner, reply in zip(owners, replies, strict=True):
            results.update(zip(positions[owner], reply, strict=True))
        return _pb.SubmitScoresResponse(
            results=[results[i] for i in range(len(updates))]
        )

    @rpc
    async def GetTop(
        self, request: _pb.GetTopRequest, context: aio.ServicerContext
    ) -> _pb.GetTopResponse:
        board = check.check_leaderboard(request.leaderboard)
        limit = check.check_limit(request.limit)
        replies = await self.shards.each(
            lambda stub: stub.Top,
            _shard_pb.ShardTopRequest(leaderboard=board, limit=limit),
        )
        merged = merge_top((r.entries for r in replies.values()), limit)
        return _pb.GetTopResponse(
            entries=[
                _pb.Entry(
                    rank=rank,
                    user_id=e.user_id,
                    display_name=e.display_name,
                    score=e.score,
                )
                for rank, e in enumerate(merged, start=1)
            ],
            total=sum(r.total for r in replies.values()),
        )

    @rpc
    async def GetRank(
        self, request: _pb.GetRankRequest, context: aio.ServicerContext
    ) -> _pb.GetRankResponse:
        board = check.check_leaderboard(request.leaderboard)
        user = check.check_user_id(request.user_id)
        owner = self.shards.ring.owner(user)
        found = await self.shards.call(
            owner,
            self.shards.stubs[owner].Lookup,
            _shard_pb.LookupRequest(leaderboard=board, user_id=user),
        )

        # Rank is 1 + the entries ahead on every shard. The owner counted
        # its own; the others count against the owner's entry.
        entry = found.entry
        others = [s for s in self.shards.stubs if s != owner]
        counts = await self.shards.each(
            lambda stub: stub.CountAhead,
            _shard_pb.CountAheadRequest(
                leaderboard=board,
                score=entry.score,
                reached_us=entry.reached_us,
                user_id=user,
            ),
            shards=others,
        )
        ahead = found.ahead + sum(c.ahead for c in counts.values())
        total = found.total + sum(c.total for c in counts.values())
        return _pb.GetRankResponse(
            entry=_pb.Entry(
                rank=ahead + 1,
                user_id=user,
                display_name=entry.display_name,
                score=entry.score,
            ),
            total=total,
        )

    @rpc
    async def UpsertUser(
        self, request: _pb.UpsertUserRequest, context: aio.ServicerContext
    ) -> _pb.UpsertUserResponse:
        user = check.check_user_id(request.user_id)
        check.check_display_name(request.display_name)
        owner = self.shards.ring.owner(user)
        reply: _pb.UpsertUserResponse = await self.shards.call(
            owner, self.shards.stubs[owner].UpsertUser, request
        )
        return reply


def _now_us() -> int:
    return time.time_ns() // 1000


def _failure_error(failure: _pb.Failure) -> ChronoscoreError:
    return from_code_number(failure.code, failure.message)
