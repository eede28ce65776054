"""A blocking Python client for the public LeaderboardService.

Example::

    from chronoscore import Client

    with Client("127.0.0.1:50051") as client:
        client.upsert_user("u1", "Ada")
        client.submit_score("weekly", "u1", 120, mode="best")
        print(client.top("weekly", limit=10))

Every call has a deadline (``timeout`` seconds, 10 by default) and
raises :mod:`chronoscore.errors` classes, never ``grpc.RpcError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import grpc

from ._keys import SCORE_MAX, SCORE_MIN
from .errors import (
    ChronoscoreError,
    InvalidArgument,
    OutOfRange,
    from_code_number,
    from_status,
)
from .v1 import leaderboard_pb2 as _pb
from .v1 import leaderboard_pb2_grpc as _grpc

__all__ = ["Client", "Entry", "RankedEntry", "Update", "Result", "MODES"]

MODES = {
    "best": _pb.SCORE_MODE_BEST,
    "set": _pb.SCORE_MODE_SET,
    "increment": _pb.SCORE_MODE_INCREMENT,
}

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry:
    rank: int
    user_id: str
    display_name: str
    score: int


@dataclass(frozen=True, slots=True)
class RankedEntry:
    """One user's entry with the size of the whole leaderboard."""

    entry: Entry
    total: int


@dataclass(frozen=True, slots=True)
class Update:
    leaderboard: str
    user_id: str
    score: int
    mode: str = "best"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one update in a batch: a score, or an error."""

    score: int | None
    changed: bool
    error: ChronoscoreError | None

    @property
    def ok(self) -> bool:
        return self.error is None


class Client:
    def __init__(self, target: str, *, timeout: float = 10.0) -> None:
        self.target = target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(
            target, options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self._stub = _grpc.LeaderboardServiceStub(self._channel)

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

    def submit_score(
        self, leaderboard: str, user_id: str, score: int, mode: str = "best"
    ) -> tuple[int, bool]:
        """Apply one update; return (resulting score, whether it changed)."""
        reply = self._call(
            self._stub.SubmitScore,
            _request(Update(leaderboard, user_id, score, mode)),
        )
        return reply.score, reply.changed

    def submit_scores(self, updates: Iterable[Update]) -> list[Result]:
        """Apply a batch; one Result per update, in order.

        Updates fail one by one (for example an increment that would
        overflow); a malformed batch raises and applies nothing.
        """
        request = _pb.SubmitScoresRequest(updates=[_request(u) for u in updates])
        reply = self._call(self._stub.SubmitScores, request)
        return [_result(r) for r in reply.results]

    def top(self, leaderboard: str, limit: int = 10) -> list[Entry]:
        reply = self._call(
            self._stub.GetTop, _pb.GetTopRequest(leaderboard=leaderboard, limit=limit)
        )
        return [_entry(e) for e in reply.entries]

    def rank(self, leaderboard: str, user_id: str) -> RankedEntry:
        reply = self._call(
            self._stub.GetRank,
            _pb.GetRankRequest(leaderboard=leaderboard, user_id=user_id),
        )
        return RankedEntry(_entry(reply.entry), reply.total)

    def upsert_user(self, user_id: str, display_name: str) -> None:
        self._call(
            self._stub.UpsertUser,
            _pb.UpsertUserRequest(user_id=user_id, display_name=display_name),
        )

    def upsert_user_future(self, user_id: str, display_name: str) -> grpc.Future:
        """Start an upsert without waiting; ``.result()`` raises RpcError."""
        return self._stub.UpsertUser.future(
            _pb.UpsertUserRequest(user_id=user_id, display_name=display_name),
            timeout=self.timeout,
        )

    def _call(self, method: Callable[..., T], request: Any) -> T:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise from_status(exc.code(), exc.details() or "") from None


def _request(update: Update) -> _pb.SubmitScoreRequest:
    mode = MODES.get(update.mode)
    if mode is None:
        raise InvalidArgument(f"mode {update.mode!r} is not one of {', '.join(MODES)}")
    if not SCORE_MIN <= update.score <= SCORE_MAX:
        raise OutOfRange(f"score {update.score} does not fit in a signed 64-bit int")
    return _pb.SubmitScoreRequest(
        leaderboard=update.leaderboard,
        user_id=update.user_id,
        score=update.score,
        mode=mode,
    )


def _result(result: _pb.SubmitResult) -> Result:
    if result.HasField("failure"):
        error = from_code_number(result.failure.code, result.failure.message)
        return Result(None, False, error)
    return Result(result.applied.score, result.applied.changed, None)


def _entry(entry: _pb.Entry) -> Entry:
    return Entry(entry.rank, entry.user_id, entry.display_name, entry.score)
