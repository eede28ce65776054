"""Checks on request fields, shared by the coordinator and the shards.

Each check returns the cleaned value or raises :class:`InvalidArgument`
with a message that names the field and says what is wrong.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from .errors import InvalidArgument
from .v1 import leaderboard_pb2 as _pb

__all__ = [
    "MAX_USER_ID_BYTES",
    "MAX_LEADERBOARD_BYTES",
    "MAX_DISPLAY_NAME_BYTES",
    "MAX_BATCH",
    "MAX_LIMIT",
    "DEFAULT_LIMIT",
    "Update",
    "check_user_id",
    "check_leaderboard",
    "check_display_name",
    "check_limit",
    "check_update",
    "check_batch",
    "mode_name",
]

MAX_USER_ID_BYTES = 128
MAX_LEADERBOARD_BYTES = 128
MAX_DISPLAY_NAME_BYTES = 256
MAX_BATCH = 10_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 10

_LEADERBOARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_MODES: dict[int, str] = {
    _pb.SCORE_MODE_BEST: "best",
    _pb.SCORE_MODE_SET: "set",
    _pb.SCORE_MODE_INCREMENT: "increment",
}


@dataclass(frozen=True, slots=True)
class Update:
    """One validated score update."""

    leaderboard: str
    user_id: str
    score: int
    mode: int


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def check_user_id(user_id: str, field: str = "user_id") -> str:
    if not user_id.strip():
        raise InvalidArgument(f"{field} must not be empty or blank")
    size = len(user_id.encode())
    if size > MAX_USER_ID_BYTES:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {MAX_USER_ID_BYTES}"
        )
    if _has_control(user_id):
        raise InvalidArgument(f"{field} must not contain control characters")
    return user_id


def check_leaderboard(name: str, field: str = "leaderboard") -> str:
    if not name:
        raise InvalidArgument(f"{field} must not be empty")
    if len(name) > MAX_LEADERBOARD_BYTES:
        raise InvalidArgument(
            f"{field} is {len(name)} characters; the limit is {MAX_LEADERBOARD_BYTES}"
        )
    if not _LEADERBOARD.fullmatch(name):
        raise InvalidArgument(
            f"{field} {name!r} may hold only ASCII letters, digits and"
            " '_.:-', and must start with a letter or digit"
        )
    return name


def check_display_name(name: str, field: str = "display_name") -> str:
    if not name.strip():
        raise InvalidArgument(f"{field} must not be empty or blank")
    size = len(name.encode())
    if size > MAX_DISPLAY_NAME_BYTES:
        raise InvalidArgument(
            f"{field} is {size} bytes; the limit is {MAX_DISPLAY_NAME_BYTES}"
        )
    if _has_control(name):
        raise InvalidArgument(f"{field} must not contain control characters")
    return name


def check_limit(limit: int, field: str = "limit") -> int:
    """A list length: 0 means the default, otherwise 1..MAX_LIMIT."""
    if limit == 0:
        return DEFAULT_LIMIT
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def check_update(req: _pb.SubmitScoreRequest, field: str = "") -> Update:
    """Validate one SubmitScoreRequest; ``field`` prefixes messages."""
    board = check_leaderboard(req.leaderboard, f"{field}leaderboard")
    user = check_user_id(req.user_id, f"{field}user_id")
    if not req.HasField("score"):
        raise InvalidArgument(f"{field}score is required (0 is a valid score)")
    if req.mode not in _MODES:
        if req.mode == _pb.SCORE_MODE_UNSPECIFIED:
            raise InvalidArgument(f"{field}mode is required: BEST, SET or INCREMENT")
        raise InvalidArgument(f"{field}mode {req.mode} is not a known mode")
    return Update(board, user, req.score, req.mode)


def check_batch(updates: list[_pb.SubmitScoreRequest]) -> list[Update]:
    """Validate a batch; any bad update rejects the whole batch."""
    if not updates:
        raise InvalidArgument("updates must not be empty")
    if len(updates) > MAX_BATCH:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH} updates, got {len(updates)}"
        )
    return [check_update(u, f"updates[{i}].") for i, u in enumerate(updates)]


def mode_name(mode: int) -> str:
    return _MODES[mode]
