"""A blocking Python client for the public LeaderboardService.

Example::

    from chronoscore import Client

    with Client("127.0.0.1:50051") as client:
        client.create_leaderboard("weekly", reset="weekly", keep_periods=4)
        client.upsert_user("u1", "Ada")
        client.submit_score("weekly", "u1", 120)
        print(client.top("weekly", limit=10).entries)

Every unary call has a deadline (``timeout`` seconds, 10 by default)
and raises :mod:`chronoscore.errors` classes, never ``grpc.RpcError``.
Calls that are safe to repeat (reads, creating a leaderboard, profile
upserts, and writes that carry a request id) are retried on UNAVAILABLE
until the deadline; others are not, so they never apply twice.
Enum-like arguments are lower-case strings: see ``MODES``,
``SORT_ORDERS``, ``TIE_POLICIES`` and ``RESETS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ._keys import SCORE_MAX, SCORE_MIN
from ._security import TlsFiles, channel_credentials
from .errors import (
    ChronoscoreError,
    InvalidArgument,
    OutOfRange,
    Unavailable,
    from_code_number,
    from_status,
)
from .v1 import leaderboard_pb2 as _pb
from .v1 import leaderboard_pb2_grpc as _grpc

__all__ = [
    "Client",
    "Entry",
    "Friends",
    "Leaderboard",
    "Page",
    "Period",
    "RankedEntry",
    "Result",
    "Update",
    "MODES",
    "SORT_ORDERS",
    "TIE_POLICIES",
    "RESETS",
]

MODES = {
    "best": _pb.SCORE_MODE_BEST,
    "set": _pb.SCORE_MODE_SET,
    "increment": _pb.SCORE_MODE_INCREMENT,
    "decrement": _pb.SCORE_MODE_DECREMENT,
}
SORT_ORDERS = {
    "descending": _pb.SORT_ORDER_DESCENDING,
    "ascending": _pb.SORT_ORDER_ASCENDING,
}
TIE_POLICIES = {
    "earliest": _pb.TIE_POLICY_EARLIEST_FIRST,
    "shared": _pb.TIE_POLICY_SHARED,
}
RESETS = {
    "none": _pb.RESET_SCHEDULE_NONE,
    "daily": _pb.RESET_SCHEDULE_DAILY,
    "weekly": _pb.RESET_SCHEDULE_WEEKLY,
    "monthly": _pb.RESET_SCHEDULE_MONTHLY,
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Period:
    """[start_us, end_us) in microseconds since the epoch, UTC."""

    label: str
    start_us: int
    end_us: int


@dataclass(frozen=True, slots=True)
class Leaderboard:
    name: str
    sort_order: str
    operator: str
    tie_policy: str
    reset: str
    keep_periods: int
    current_period: Period


@dataclass(frozen=True, slots=True)
class Entry:
    rank: int
    user_id: str
    display_name: str
    score: int
    metadata: bytes = b""


@dataclass(frozen=True, slots=True)
class Page:
    """Entries in rank order, the leaderboard's total, and the period."""

    entries: list[Entry]
    total: int
    period: Period


@dataclass(frozen=True, slots=True)
class RankedEntry:
    """One user's entry with the shared rank and the leaderboard's size."""

    entry: Entry
    total: int
    shared_rank: int
    period: Period


@dataclass(frozen=True, slots=True)
class Friends:
    """Given users' entries, best first, with their places in the list."""

    entries: list[Entry]
    list_ranks: list[int]
    missing: list[str]
    total: int
    period: Period


@dataclass(frozen=True, slots=True)
class Update:
    """One score update. ``mode`` None means the leaderboard's default."""

    leaderboard: str
    user_id: str
    score: int
    mode: str | None = None
    metadata: bytes | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one update: a score, or an error."""

    score: int | None
    changed: bool
    error: ChronoscoreError | None
    period: Period | None = None
    replayed: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


class Client:
    def __init__(
        self,
        target: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        tls_ca: Path | None = None,
        tls_cert: Path | None = None,
        tls_key: Path | None = None,
    ) -> None:
        """Connect to a coordinator.

        ``token`` is sent as a bearer token. Any of the TLS files makes the
        channel TLS: ``tls_ca`` to trust the server, ``tls_cert`` and
        ``tls_key`` for mutual TLS.
        """
        if not target.strip():
            raise InvalidArgument("target must be HOST:PORT, got an empty string")
        self.target = target
        self.timeout = timeout
        self._metadata = () if not token else (("authorization", f"Bearer {token}"),)
        options = [("grpc.max_receive_message_length", 64 << 20)]
        credentials = channel_credentials(TlsFiles(tls_cert, tls_key, tls_ca))
        if credentials is None:
            self._channel = grpc.insecure_channel(target, options=options)
        else:
            self._channel = grpc.secure_channel(target, credentials, options=options)
        self._stub = _grpc.LeaderboardServiceStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def ready(self) -> bool:
        """Whether the coordinator answers and reports itself serving."""
        try:
            reply = self._call(self._health.Check, health_pb2.HealthCheckRequest())
        except Unavailable:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    # Leaderboards

    def create_leaderboard(
        self,
        name: str,
        *,
        sort_order: str = "descending",
        operator: str = "best",
        tie_policy: str = "earliest",
        reset: str = "none",
        keep_periods: int = 0,
    ) -> Leaderboard:
        """Create a leaderboard; succeed quietly if it exists identically."""
        config = _pb.Leaderboard(
            name=name,
            sort_order=_choose(SORT_ORDERS, sort_order, "sort_order"),
            operator=_choose(MODES, operator, "operator"),
            tie_policy=_choose(TIE_POLICIES, tie_policy, "tie_policy"),
            reset=_choose(RESETS, reset, "reset"),
            keep_periods=keep_periods,
        )
        request = _pb.CreateLeaderboardRequest(leaderboard=config)
        return _leaderboard(
            self._call(self._stub.CreateLeaderboard, request, retry=True)
        )

    def get_leaderboard(self, name: str) -> Leaderboard:
        request = _pb.GetLeaderboardRequest(name=name)
        return _leaderboard(self._call(self._stub.GetLeaderboard, request, retry=True))

    def list_leaderboards(self) -> list[Leaderboard]:
        reply = self._call(
            self._stub.ListLeaderboards, _pb.ListLeaderboardsRequest(), retry=True
        )
        return [_leaderboard(b) for b in reply.leaderboards]

    def delete_leaderboard(self, name: str) -> None:
        request = _pb.DeleteLeaderboardRequest(name=name)
        self._call(self._stub.DeleteLeaderboard, request)

    # Writes

    def submit_score(
        self,
        leaderboard: str,
        user_id: str,
        score: int,
        mode: str | None = None,
        *,
        metadata: bytes | None = None,
        request_id: str = "",
    ) -> Result:
        """Apply one update; raises if it fails."""
        update = Update(leaderboard, user_id, score, mode, metadata, request_id)
        # With a request id a retry cannot apply the update twice.
        reply = self._call(
            self._stub.SubmitScore, _request(update), retry=bool(request_id)
        )
        return _applied(reply)

    def submit_scores(self, updates: Iterable[Update]) -> list[Result]:
        """Apply a batch; one Result per update, in order.

        Updates fail one by one (for example an increment that would
        overflow); a malformed batch raises and applies nothing.
        """
        requests = [_request(u) for u in updates]
        request = _pb.SubmitScoresRequest(updates=requests)
        retry = all(r.request_id for r in requests)
        reply = self._call(self._stub.SubmitScores, request, retry=retry)
        return [_result(r) for r in reply.results]

    def remove_entry(self, leaderboard: str, user_id: str) -> int:
        """Remove the user from a leaderboard, every period; return count."""
        request = _pb.RemoveEntryRequest(leaderboard=leaderboard, user_id=user_id)
        return int(self._call(self._stub.RemoveEntry, request).removed)

    def remove_user(self, user_id: str) -> int:
        """Remove the user's entries everywhere, and their profile."""
        request = _pb.RemoveUserRequest(user_id=user_id)
        return int(self._call(self._stub.RemoveUser, request).removed)

    def upsert_user(self, user_id: str, display_name: str) -> None:
        self._call(
            self._stub.UpsertUser,
            _pb.UpsertUserRequest(user_id=user_id, display_name=display_name),
            retry=True,
        )

    def upsert_user_future(self, user_id: str, display_name: str) -> grpc.Future:
        """Start an upsert without waiting; ``.result()`` raises RpcError."""
        return self._stub.UpsertUser.future(
            _pb.UpsertUserRequest(user_id=user_id, display_name=display_name),
            timeout=self.timeout,
            metadata=self._metadata,
        )

    # Reads

    def top(self, leaderboard: str, limit: int = 10, period: str = "") -> Page:
        request = _pb.GetTopRequest(leaderboard=leaderboard, limit=limit, period=period)
        return _page(self._call(self._stub.GetTop, request, retry=True))

    def rank(self, leaderboard: str, user_id: str, period: str = "") -> RankedEntry:
        request = _pb.GetRankRequest(
            leaderboard=leaderboard, user_id=user_id, period=period
        )
        reply = self._call(self._stub.GetRank, request, retry=True)
        return RankedEntry(
            _entry(reply.entry),
            reply.total,
            reply.shared_rank,
            _period(reply.period),
        )

    def around(
        self,
        leaderboard: str,
        user_id: str,
        above: int = 5,
        below: int = 5,
        period: str = "",
    ) -> Page:
        request = _pb.GetAroundRequest(
            leaderboard=leaderboard,
            user_id=user_id,
            above=above,
            below=below,
            period=period,
        )
        return _page(self._call(self._stub.GetAround, request, retry=True))

    def page(
        self, leaderboard: str, offset: int, limit: int = 10, period: str = ""
    ) -> Page:
        request = _pb.GetPageRequest(
            leaderboard=leaderboard, offset=offset, limit=limit, period=period
        )
        return _page(self._call(self._stub.GetPage, request, retry=True))

    def entries(
        self, leaderboard: str, user_ids: Iterable[str], period: str = ""
    ) -> Friends:
        request = _pb.GetEntriesRequest(
            leaderboard=leaderboard, user_ids=list(user_ids), period=period
        )
        reply = self._call(self._stub.GetEntries, request, retry=True)
        return Friends(
            [_entry(e) for e in reply.entries],
            list(reply.list_ranks),
            list(reply.missing),
            reply.total,
            _period(reply.period),
        )

    def watch_top(
        self, leaderboard: str, limit: int = 10, min_interval_ms: int = 1000
    ) -> Iterator[Page]:
        """Yield the top each time it changes, until the caller stops.

        The stream has no deadline; leaving the loop cancels it.
        """
        request = _pb.WatchTopRequest(
            leaderboard=leaderboard, limit=limit, min_interval_ms=min_interval_ms
        )
        stream = self._stub.WatchTop(request, metadata=self._metadata)
        try:
            for reply in stream:
                yield _page(reply)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                raise from_status(exc.code(), exc.details() or "") from None
        finally:
            stream.cancel()

    def _call(self, method: Callable[..., T], request: Any, retry: bool = False) -> T:
        """Call with a deadline of ``timeout`` seconds in all.

        With ``retry``, for calls that are safe to repeat, UNAVAILABLE is
        retried with backoff until the deadline.
        """
        deadline = time.monotonic() + self.timeout
        pause = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                return method(
                    request, timeout=max(left, 0.001), metadata=self._metadata
                )
            except ValueError as exc:
                # A field the proto cannot hold, such as a limit past 2**31.
                raise InvalidArgument(str(exc)) from None
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.CANCELLED:
                    # This client never cancels a unary call, so the
                    # server did: it is shutting down.
                    code = grpc.StatusCode.UNAVAILABLE
                error = from_status(code, exc.details() or "")
            if not (retry and isinstance(error, Unavailable)):
                raise error
            if time.monotonic() + pause >= deadline:
                raise error
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _choose(options: dict[str, Any], value: str, field: str) -> Any:
    choice = options.get(value)
    if choice is None:
        raise InvalidArgument(f"{field} {value!r} is not one of {', '.join(options)}")
    return choice


def _name(options: dict[str, Any], value: int) -> str:
    return next((k for k, v in options.items() if v == value), str(value))


def _request(update: Update) -> _pb.SubmitScoreRequest:
    mode = _pb.SCORE_MODE_UNSPECIFIED
    if update.mode is not None:
        mode = _choose(MODES, update.mode, "mode")
    if not SCORE_MIN <= update.score <= SCORE_MAX:
        raise OutOfRange(f"score {update.score} does not fit in a signed 64-bit int")
    request = _pb.SubmitScoreRequest(
        leaderboard=update.leaderboard,
        user_id=update.user_id,
        score=update.score,
        mode=mode,
        request_id=update.request_id,
    )
    if update.metadata is not None:
        request.metadata = update.metadata
    return request


def _period(period: _pb.Period) -> Period:
    return Period(period.label, period.start_us, period.end_us)


def _applied(applied: _pb.SubmitScoreResponse) -> Result:
    return Result(
        applied.score,
        applied.changed,
        None,
        _period(applied.period),
        applied.replayed,
    )


def _result(result: _pb.SubmitResult) -> Result:
    if result.HasField("failure"):
        error = from_code_number(result.failure.code, result.failure.message)
        return Result(None, False, error)
    return _applied(result.applied)


def _entry(entry: _pb.Entry) -> Entry:
    return Entry(
        entry.rank, entry.user_id, entry.display_name, entry.score, entry.metadata
    )


def _page(reply: _pb.EntriesResponse) -> Page:
    return Page([_entry(e) for e in reply.entries], reply.total, _period(reply.period))


def _leaderboard(board: _pb.Leaderboard) -> Leaderboard:
    return Leaderboard(
        board.name,
        _name(SORT_ORDERS, board.sort_order),
        _name(MODES, board.operator),
        _name(TIE_POLICIES, board.tie_policy),
        _name(RESETS, board.reset),
        board.keep_periods,
        _period(board.current_period),
    )
