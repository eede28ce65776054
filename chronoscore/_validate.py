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
    "check_mode",
    "check_metadata",
    "check_request_id",
    "check_window",
    "check_offset",
    "check_user_ids",
    "check_interval_ms",
]

MAX_USER_ID_BYTES = 128
MAX_LEADERBOARD_BYTES = 128
MAX_DISPLAY_NAME_BYTES = 256
MAX_BATCH = 10_000
MAX_LIMIT = 1000
DEFAULT_LIMIT = 10
MAX_METADATA_BYTES = 1024
MAX_REQUEST_ID_BYTES = 128
MAX_WINDOW = 100
MAX_USERS = 1000
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 60_000
DEFAULT_INTERVAL_MS = 1000

_LEADERBOARD = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")
_MODES: dict[int, str] = {
    _pb.SCORE_MODE_BEST: "best",
    _pb.SCORE_MODE_SET: "set",
    _pb.SCORE_MODE_INCREMENT: "increment",
    _pb.SCORE_MODE_DECREMENT: "decrement",
}


@dataclass(frozen=True, slots=True)
class Update:
    """One validated score update."""

    leaderboard: str
    user_id: str
    score: int
    # SCORE_MODE_UNSPECIFIED means the leaderboard's default operator.
    mode: int
    metadata: bytes | None
    request_id: str


# Characters that control layout rather than show anything: line and
# paragraph separators and bidirectional overrides, which can make one
# id display as another.
_LAYOUT = set("\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _check_size(text: str, field: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise InvalidArgument(f"{field} is {size} bytes; the limit is {limit}")


def _reject_control(text: str, field: str) -> None:
    if any(unicodedata.category(ch) == "Cc" or ch in _LAYOUT for ch in text):
        raise InvalidArgument(
            f"{field} must not contain control, line-separator or"
            " text-direction characters"
        )


def _is_blank(text: str) -> bool:
    """Nothing visible: only spaces and invisible format characters."""
    return all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text)


def check_user_id(user_id: str, field: str = "user_id") -> str:
    if _is_blank(user_id):
        raise InvalidArgument(f"{field} must not be empty or blank")
    _check_size(user_id, field, MAX_USER_ID_BYTES)
    _reject_control(user_id, field)
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
    if _is_blank(name):
        raise InvalidArgument(f"{field} must not be empty or blank")
    _check_size(name, field, MAX_DISPLAY_NAME_BYTES)
    _reject_control(name, field)
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
    check_mode(req.mode, f"{field}mode", allow_default=True)
    metadata = None
    if req.HasField("metadata"):
        metadata = check_metadata(req.metadata, f"{field}metadata")
    request_id = check_request_id(req.request_id, f"{field}request_id")
    return Update(board, user, req.score, req.mode, metadata, request_id)


def check_mode(mode: int, field: str = "mode", *, allow_default: bool) -> int:
    if mode in _MODES or (allow_default and mode == _pb.SCORE_MODE_UNSPECIFIED):
        return mode
    if mode == _pb.SCORE_MODE_UNSPECIFIED:
        raise InvalidArgument(f"{field} is required: BEST, SET, INCREMENT or DECREMENT")
    raise InvalidArgument(f"{field} {mode} is not a known mode")


def check_metadata(metadata: bytes, field: str = "metadata") -> bytes:
    if len(metadata) > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{field} is {len(metadata)} bytes; the limit is {MAX_METADATA_BYTES}"
        )
    return metadata


def check_request_id(request_id: str, field: str = "request_id") -> str:
    """An optional id: empty, or 1..128 bytes without control characters."""
    _check_size(request_id, field, MAX_REQUEST_ID_BYTES)
    _reject_control(request_id, field)
    return request_id


def check_batch(updates: list[_pb.SubmitScoreRequest]) -> list[Update]:
    """Validate a batch; any bad update rejects the whole batch."""
    if not updates:
        raise InvalidArgument("updates must not be empty")
    if len(updates) > MAX_BATCH:
        raise InvalidArgument(
            f"a batch holds at most {MAX_BATCH} updates, got {len(updates)}"
        )
    return [check_update(u, f"updates[{i}].") for i, u in enumerate(updates)]


def check_window(count: int, field: str) -> int:
    if not 0 <= count <= MAX_WINDOW:
        raise InvalidArgument(
            f"{field} must be between 0 and {MAX_WINDOW}, got {count}"
        )
    return count


def check_offset(offset: int, field: str = "offset") -> int:
    if offset < 0:
        raise InvalidArgument(f"{field} must not be negative, got {offset}")
    return offset


def check_user_ids(user_ids: list[str], field: str = "user_ids") -> list[str]:
    """1..MAX_USERS valid ids; repeats are dropped, first one kept."""
    if not user_ids:
        raise InvalidArgument(f"{field} must not be empty")
    if len(user_ids) > MAX_USERS:
        raise InvalidArgument(
            f"{field} holds at most {MAX_USERS} users, got {len(user_ids)}"
        )
    for i, user in enumerate(user_ids):
        check_user_id(user, f"{field}[{i}]")
    return list(dict.fromkeys(user_ids))


def check_interval_ms(interval: int, field: str = "min_interval_ms") -> int:
    if interval == 0:
        return DEFAULT_INTERVAL_MS
    if not MIN_INTERVAL_MS <= interval <= MAX_INTERVAL_MS:
        raise InvalidArgument(
            f"{field} must be between {MIN_INTERVAL_MS} and {MAX_INTERVAL_MS},"
            f" got {interval}"
        )
    return interval
