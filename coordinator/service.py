"""The public LeaderboardService, served by the coordinator."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar, cast

from grpc import aio

from chronoscore import _periods
from chronoscore import _validate as check
from chronoscore._server import Malformed, remaining, rpc
from chronoscore.errors import (
    ChronoscoreError,
    InvalidArgument,
    NotFound,
    Unavailable,
    WrongShard,
    from_code_number,
)
from chronoscore.v1 import leaderboard_pb2 as _pb
from chronoscore.v1 import leaderboard_pb2_grpc as _grpc
from chronoscore.v1 import shard_pb2 as _shard_pb

from .catalog import Board, Catalog, board_from_proto, period_proto
from .queries import Moved, Ranked, Reader, Sketches, to_entries
from .shards import ShardClients
from .tops import FOLLOWED, Top, Tops
from .watch import Feeds

__all__ = ["LeaderboardServicer"]

logger = logging.getLogger("chronoscore.coordinator")

T = TypeVar("T")

# While slots move, calls that reach a shard that no longer (or not yet)
# owns them are tried again, after delays doubling from the first to the
# longest, for as long as the caller's deadline allows, or this long.
_SETTLE_SECONDS = 10.0
_FIRST_DELAY = 0.01
_MAX_DELAY = 0.2


# A period is dropped only once it has been aged out this long by
# PostgreSQL's clock, and a coordinator whose clock is further than
# _MAX_SKEW_US from PostgreSQL's refuses writes to resetting leaderboards:
# so no coordinator writes to a period that another one drops.
_PRUNE_GRACE_US = 10 * 60 * 1_000_000
_MAX_SKEW_US = 60 * 1_000_000


def now_us() -> int:
    return time.time_ns() // 1000


class LeaderboardServicer(_grpc.LeaderboardServiceServicer):
    def __init__(self, shards: ShardClients, catalog: Catalog) -> None:
        self.shards = shards
        self.catalog = catalog
        self.feeds = Feeds(self._poll_top)
        self.tops = Tops(shards)
        self.sketches = Sketches()
        self._last_stamp = 0
        # This process's clock minus PostgreSQL's, as last measured.
        self.skew_us = 0

    def _stamp(self) -> int:
        """This update's arrival time: distinct, and in arrival order.

        Updates arriving within one microsecond, as in a batch, are
        spread over the next microseconds so equal scores keep the
        order in which they arrived, whichever shard they land on.
        """
        self._last_stamp = max(now_us(), self._last_stamp + 1)
        return self._last_stamp

    # Leaderboards

    @rpc
    async def CreateLeaderboard(
        self, request: _pb.CreateLeaderboardRequest, context: aio.ServicerContext
    ) -> _pb.Leaderboard:
        board = await self.catalog.create(board_from_proto(request.leaderboard))
        return board.to_proto(now_us())

    @rpc
    async def GetLeaderboard(
        self, request: _pb.GetLeaderboardRequest, context: aio.ServicerContext
    ) -> _pb.Leaderboard:
        board = await self.catalog.get(check.check_leaderboard(request.name, "name"))
        return board.to_proto(now_us())

    @rpc
    async def ListLeaderboards(
        self, request: _pb.ListLeaderboardsRequest, context: aio.ServicerContext
    ) -> _pb.ListLeaderboardsResponse:
        now = now_us()
        boards = await self.catalog.list()
        return _pb.ListLeaderboardsResponse(
            leaderboards=[b.to_proto(now) for b in boards]
        )

    @rpc
    async def DeleteLeaderboard(
        self, request: _pb.DeleteLeaderboardRequest, context: aio.ServicerContext
    ) -> _pb.DeleteLeaderboardResponse:
        name = check.check_leaderboard(request.name, "name")
        board = await self.catalog.delete(name)
        await self.prune(board, drop=True)
        return _pb.DeleteLeaderboardResponse()

    async def check_clock(self) -> int:
        """Measure this clock against PostgreSQL's; return PostgreSQL's."""
        before = now_us()
        theirs = await self.catalog.clock_us()
        self.skew_us = (before + now_us()) // 2 - theirs
        if abs(self.skew_us) > _MAX_SKEW_US:
            logger.warning(
                "this machine's clock is %.1f s off PostgreSQL's; writes to"
                " resetting leaderboards are refused until it is set right",
                self.skew_us / 1e6,
            )
        return theirs

    def _check_skew(self, board: Board) -> None:
        if board.reset != _pb.RESET_SCHEDULE_NONE and abs(self.skew_us) > _MAX_SKEW_US:
            raise Unavailable(
                f"this coordinator's clock is {self.skew_us / 1e6:.0f} s off"
                " PostgreSQL's, so it cannot tell which period an update"
                f" belongs to; leaderboard {board.name!r} resets, so its"
                " updates wait until the clock is set right"
            )

    async def prune(
        self, board: Board, *, drop: bool = False, clock_us: int = 0
    ) -> None:
        """Drop a board's aged-out periods (or all of it) on every shard.

        A period goes once it has been aged out for _PRUNE_GRACE_US by
        ``clock_us``, PostgreSQL's clock. Best effort: PostgreSQL no
        longer holds them for queries, and a shard that misses this
        drops them on the next round.
        """
        before_us = 0
        if not drop:
            before_us = board.oldest_kept_us(clock_us - _PRUNE_GRACE_US)
        request = _shard_pb.PruneRequest(
            board_id=board.id, before_us=before_us, drop_board=drop
        )
        try:
            await self._settled(lambda: self.shards.each("Prune", request))
        except ChronoscoreError as exc:
            logger.warning("pruning %s was incomplete: %s", board.name, exc)

    # Writes

    @rpc
    async def SubmitScore(
        self, request: _pb.SubmitScoreRequest, context: aio.ServicerContext
    ) -> _pb.SubmitScoreResponse:
        update = check.check_update(request)
        board = await self.catalog.get(update.leaderboard)
        (result,) = await self._apply([update], {board.name: board})
        if result.HasField("failure"):
            raise from_code_number(result.failure.code, result.failure.message)
        applied: _pb.SubmitScoreResponse = result.applied
        return applied

    @rpc
    async def SubmitScores(
        self, request: _pb.SubmitScoresRequest, context: aio.ServicerContext
    ) -> _pb.SubmitScoresResponse:
        updates = check.check_batch(list(request.updates))
        names = sorted({u.leaderboard for u in updates})
        found = await asyncio.gather(
            *(self.catalog.get(name) for name in names), return_exceptions=True
        )
        boards: dict[str, Board] = {}
        for name, board in zip(names, found, strict=True):
            if isinstance(board, Board):
                boards[name] = board
            elif not isinstance(board, NotFound):
                raise board
        return _pb.SubmitScoresResponse(results=await self._apply(updates, boards))

    async def _apply(
        self, updates: list[check.Update], boards: dict[str, Board]
    ) -> list[_pb.SubmitResult]:
        """Route updates to their owners; one result each, in order.

        Updates a shard turns away because their slot moved are sent
        again to the new owner, with the same arrival times, until the
        deadline.
        """
        arrived = now_us()
        results: dict[int, _pb.SubmitResult] = {}
        writes: dict[int, _shard_pb.ShardUpdate] = {}
        for i, update in enumerate(updates):
            board = boards.get(update.leaderboard)
            if board is None:
                error = NotFound(f"leaderboard {update.leaderboard!r} does not exist")
                results[i] = _failure(error)
                continue
            try:
                self._check_skew(board)
            except Unavailable as exc:
                results[i] = _failure(exc)
                continue
            writes[i] = _shard_update(update, board, self._stamp())

        async def send(owner: str, where: list[int]) -> None:
            request = _shard_pb.ApplyRequest(
                updates=[writes[i] for i in where], arrived_us=arrived
            )
            try:
                reply = await self.shards.call(owner, "Apply", request)
            except ChronoscoreError as exc:
                results.update(dict.fromkeys(where, _failure(exc)))
                return
            for i, result in zip(where, reply.results, strict=True):
                if result.HasField("applied"):
                    _fill_period(result.applied, boards[updates[i].leaderboard])
                results[i] = result

        pending = sorted(writes)
        give_up = time.monotonic() + remaining(_SETTLE_SECONDS)
        delay = _FIRST_DELAY
        while True:
            by_owner: dict[str, list[int]] = defaultdict(list)
            for i in pending:
                by_owner[self.shards.placement.owner(updates[i].user_id)].append(i)
            await asyncio.gather(*(send(o, w) for o, w in by_owner.items()))
            pending = [i for i in pending if _moved(results[i])]
            if not pending:
                break
            if time.monotonic() + delay >= give_up:
                moving = Unavailable("slots are moving between shards; try again")
                results.update(dict.fromkeys(pending, _failure(moving)))
                break
            await self.shards.refresh()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _MAX_DELAY)
        return [results[i] for i in range(len(updates))]

    async def _settled(self, call: Callable[[], Awaitable[T]]) -> T:
        """Run ``call``, and again after reading the placement anew, while
        shards answer that their slots moved; Unavailable at the deadline.
        """
        give_up = time.monotonic() + remaining(_SETTLE_SECONDS)
        delay = _FIRST_DELAY
        while True:
            try:
                return await call()
            except WrongShard as exc:
                if time.monotonic() + delay >= give_up:
                    raise Unavailable(
                        f"slots are moving between shards; try again ({exc})"
                    ) from None
            await self.shards.refresh()
            await asyncio.sleep(delay)
            delay = min(2 * delay, _MAX_DELAY)

    @rpc
    async def RemoveEntry(
        self, request: _pb.RemoveEntryRequest, context: aio.ServicerContext
    ) -> _pb.RemoveResponse:
        board = await self.catalog.get(check.check_leaderboard(request.leaderboard))
        return await self._remove(check.check_user_id(request.user_id), board.id)

    @rpc
    async def RemoveUser(
        self, request: _pb.RemoveUserRequest, context: aio.ServicerContext
    ) -> _pb.RemoveResponse:
        return await self._remove(check.check_user_id(request.user_id), 0)

    async def _remove(self, user: str, board_id: int) -> _pb.RemoveResponse:
        request = _shard_pb.ShardRemoveRequest(user_id=user, board_id=board_id)
        reply: _pb.RemoveResponse = await self._settled(
            lambda: self.shards.call(
                self.shards.placement.owner(user), "Remove", request
            )
        )
        return reply

    @rpc
    async def UpsertUser(
        self, request: _pb.UpsertUserRequest, context: aio.ServicerContext
    ) -> _pb.UpsertUserResponse:
        user = check.check_user_id(request.user_id)
        check.check_display_name(request.display_name)
        reply: _pb.UpsertUserResponse = await self._settled(
            lambda: self.shards.call(
                self.shards.placement.owner(user), "UpsertUser", request
            )
        )
        return reply

    # Reads

    async def _reader(self, name: str, label: str) -> tuple[Reader, _pb.Period]:
        board = await self.catalog.get(check.check_leaderboard(name))
        period = board.resolve_period(label, now_us())
        ref = _shard_pb.BoardPeriod(
            board_id=board.id,
            period_start_us=period.start_us,
            ascending=board.ascending,
        )
        return Reader(self.shards, board, ref, self.sketches), period_proto(period)

    @rpc
    async def GetTop(
        self, request: _pb.GetTopRequest, context: aio.ServicerContext
    ) -> _pb.EntriesResponse:
        limit = check.check_limit(request.limit)

        async def read() -> _pb.EntriesResponse:
            reader, period = await self._reader(request.leaderboard, request.period)
            top = await self.tops.top(reader.period, limit)
            if top is None:
                ranked, total = await reader.top(limit)
                return _entries_reply(reader.board, ranked, total, period)
            # Until the next push, every GetTop of this period and limit
            # gets the same reply.
            key = (limit, reader.board, period.label)
            reply = top.memo.get(key)
            if not isinstance(reply, _pb.EntriesResponse):
                ranked = _ranked(top, limit)
                reply = _entries_reply(reader.board, ranked, top.total, period)
                top.memo[key] = reply
            return reply

        return await self._settled(read)

    async def _top(self, reader: Reader, limit: int) -> tuple[list[Ranked], int]:
        """From the shards' pushed lists if they can answer, else from
        every shard (see coordinator.tops)."""
        top = await self.tops.top(reader.period, limit)
        if top is None:
            return await reader.top(limit)
        return _ranked(top, limit), top.total

    @rpc
    async def GetRank(
        self, request: _pb.GetRankRequest, context: aio.ServicerContext
    ) -> _pb.GetRankResponse:
        user = check.check_user_id(request.user_id)

        async def read() -> _pb.GetRankResponse:
            reader, period = await self._reader(request.leaderboard, request.period)
            found, shared, total = await reader.rank(user)
            (entry,) = to_entries(reader.board, [found], shared)
            return _pb.GetRankResponse(
                entry=entry, total=total, shared_rank=shared, period=period
            )

        return await self._settled(read)

    @rpc
    async def GetAround(
        self, request: _pb.GetAroundRequest, context: aio.ServicerContext
    ) -> _pb.EntriesResponse:
        user = check.check_user_id(request.user_id)
        above = check.check_window(request.above, "above")
        below = check.check_window(request.below, "below")

        async def read() -> _pb.EntriesResponse:
            reader, period = await self._reader(request.leaderboard, request.period)
            window, total, me = await _again_if_moved(
                lambda: reader.around(user, above, below)
            )
            first = await self._first_shared(reader, window, me)
            return _pb.EntriesResponse(
                entries=to_entries(reader.board, window, first),
                total=total,
                period=period,
            )

        return await self._settled(read)

    @rpc
    async def GetPage(
        self, request: _pb.GetPageRequest, context: aio.ServicerContext
    ) -> _pb.EntriesResponse:
        offset = check.check_offset(request.offset)
        limit = check.check_limit(request.limit)

        async def read() -> _pb.EntriesResponse:
            reader, period = await self._reader(request.leaderboard, request.period)
            if offset + limit <= FOLLOWED:
                ranked, total = await self._top(reader, offset + limit)
                page = ranked[offset:]
            else:
                page, total = await reader.page(offset, limit)
            first = await self._first_shared(reader, page, None)
            return _pb.EntriesResponse(
                entries=to_entries(reader.board, page, first),
                total=total,
                period=period,
            )

        return await self._settled(read)

    async def _first_shared(
        self, reader: Reader, ranked: list[Ranked], known: Ranked | None
    ) -> int | None:
        """The shared rank of the first entry, where the board uses them."""
        if not reader.board.shared_ranks or not ranked:
            return None
        first = ranked[0]
        if first.position == 0:
            return 1
        if known is not None and known.entry.score == first.entry.score:
            _, shared, _ = await reader.rank(known.entry.user_id)
            return shared
        return await reader.shared_rank_of_score(first.entry.score)

    @rpc
    async def GetEntries(
        self, request: _pb.GetEntriesRequest, context: aio.ServicerContext
    ) -> _pb.GetEntriesResponse:
        users = check.check_user_ids(list(request.user_ids))

        async def read() -> _pb.GetEntriesResponse:
            reader, period = await self._reader(request.leaderboard, request.period)
            ranked, missing, total = await reader.entries(users)
            entries = []
            for item, shared in ranked:
                entries.extend(to_entries(reader.board, [item], shared))
            return _pb.GetEntriesResponse(
                entries=entries,
                list_ranks=_list_ranks(reader.board, ranked),
                missing=missing,
                total=total,
                period=period,
            )

        return await self._settled(read)

    async def WatchTop(
        self, request: _pb.WatchTopRequest, context: aio.ServicerContext
    ) -> AsyncIterator[_pb.EntriesResponse]:
        """Push the current period's top whenever it changes.

        While a shard is down the stream waits and carries on when it
        is back; a deleted leaderboard ends the stream with NOT_FOUND.
        """
        try:
            if isinstance(request, Malformed):
                raise InvalidArgument(
                    f"the request is not a valid message: {request.error}"
                )
            name = check.check_leaderboard(request.leaderboard)
            limit = check.check_limit(request.limit)
            interval = check.check_interval_ms(request.min_interval_ms) / 1000
        except ChronoscoreError as exc:
            await context.abort(exc.code, str(exc))
            return

        try:
            async for reply in self.feeds.watch(name, limit, interval):
                yield reply
        except ChronoscoreError as exc:
            await context.abort(exc.code, str(exc))

    async def _poll_top(self, name: str, limit: int) -> tuple[_pb.EntriesResponse, int]:
        async def read() -> tuple[_pb.EntriesResponse, int]:
            reader, period = await self._reader(name, "")
            ranked, total = await self._top(reader, limit)
            return _entries_reply(reader.board, ranked, total, period), reader.board.id

        return await self._settled(read)


async def _again_if_moved(read: Callable[[], Awaitable[T]], attempts: int = 3) -> T:
    """Run a multi-step read again if a write moved its entry meanwhile."""
    for attempt in range(attempts):
        try:
            return await read()
        except Moved:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _shard_update(
    update: check.Update, board: Board, arrived_us: int
) -> _shard_pb.ShardUpdate:
    period = board.period_at(arrived_us)
    write = _shard_pb.ShardUpdate(
        arrived_us=arrived_us,
        board=_shard_pb.BoardPeriod(
            board_id=board.id,
            period_start_us=period.start_us,
            ascending=board.ascending,
        ),
        user_id=update.user_id,
        score=update.score,
        mode=cast(_pb.ScoreMode, update.mode or board.operator),
        request_id=update.request_id,
    )
    if update.metadata is not None:
        write.metadata = update.metadata
    return write


def _fill_period(applied: _pb.SubmitScoreResponse, board: Board) -> None:
    """Complete the period a shard reported by its start alone."""
    period = _periods.period_of(board.schedule, applied.period.start_us)
    applied.period.CopyFrom(period_proto(period))


def _moved(result: _pb.SubmitResult) -> bool:
    if not result.HasField("failure"):
        return False
    code: int = result.failure.code
    return code == int(WrongShard.code.value[0])


def _failure(error: ChronoscoreError) -> _pb.SubmitResult:
    return _pb.SubmitResult(
        failure=_pb.Failure(code=error.code.value[0], message=str(error))
    )


def _list_ranks(board: Board, ranked: list[tuple[Ranked, int]]) -> list[int]:
    """Places within a friends' list, sharing places on equal scores if
    the board shares ranks."""
    places: list[int] = []
    for i, (item, _) in enumerate(ranked):
        same = i > 0 and ranked[i - 1][0].entry.score == item.entry.score
        places.append(places[-1] if board.shared_ranks and same else i + 1)
    return places


def _ranked(top: Top, limit: int) -> list[Ranked]:
    return [Ranked(e, i) for i, e in enumerate(top.entries[:limit])]


def _entries_reply(
    board: Board, ranked: list[Ranked], total: int, period: _pb.Period
) -> _pb.EntriesResponse:
    return _pb.EntriesResponse(
        entries=to_entries(board, ranked, 1), total=total, period=period
    )
