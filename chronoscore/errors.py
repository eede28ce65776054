"""Errors raised by ChronoScore.

Hierarchy::

    ChronoscoreError
     ├── InvalidArgument      the request itself is malformed
     ├── NotFound             the user or entry does not exist
     ├── AlreadyExists        a leaderboard exists with another configuration
     ├── OutOfRange           a score would leave the int64 range
     ├── FailedPrecondition   the cluster is not in a state to serve it
     ├── Unauthenticated      no valid bearer token
     ├── PermissionDenied     the token lacks the scope the call needs
     ├── Unavailable          a shard or PostgreSQL cannot be reached
     └── WrongShard           the slot belongs to another shard now

``WrongShard`` passes only between shards and coordinators, which read
the new placement and try again; callers of the public API never get
it.

Servers map each class to the gRPC status of the same name, and the
client maps those statuses back, so callers catch the same classes on
both sides of the wire.
"""

from __future__ import annotations

import grpc

__all__ = [
    "ChronoscoreError",
    "InvalidArgument",
    "NotFound",
    "AlreadyExists",
    "OutOfRange",
    "FailedPrecondition",
    "Unauthenticated",
    "PermissionDenied",
    "Unavailable",
    "WrongShard",
    "from_status",
    "from_code_number",
]


class ChronoscoreError(Exception):
    """Root of every ChronoScore error."""

    code = grpc.StatusCode.INTERNAL


class InvalidArgument(ChronoscoreError):
    """The request is malformed and would fail on every retry."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(ChronoscoreError):
    """The named user or entry does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ChronoscoreError):
    """A leaderboard of that name exists with another configuration."""

    code = grpc.StatusCode.ALREADY_EXISTS


class OutOfRange(ChronoscoreError):
    """The result would not fit in a signed 64-bit score."""

    code = grpc.StatusCode.OUT_OF_RANGE


class FailedPrecondition(ChronoscoreError):
    """The cluster is in a state that rejects this request."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(ChronoscoreError):
    """The call carried no valid bearer token."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ChronoscoreError):
    """The bearer token lacks the scope the call needs."""

    code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(ChronoscoreError):
    """A shard or the database is unreachable; retrying may succeed."""

    code = grpc.StatusCode.UNAVAILABLE


class WrongShard(ChronoscoreError):
    """The shard no longer (or not yet) owns the slots the caller meant."""

    code = grpc.StatusCode.ABORTED


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        OutOfRange,
        FailedPrecondition,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        WrongShard,
    )
}
_BY_CODE[grpc.StatusCode.DEADLINE_EXCEEDED] = Unavailable


def from_status(code: grpc.StatusCode, message: str) -> ChronoscoreError:
    """The error class that matches a gRPC status code."""
    return _BY_CODE.get(code, ChronoscoreError)(message)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def from_code_number(number: int, message: str) -> ChronoscoreError:
    """The error for a status code given as its number, e.g. 11."""
    code = _CODES.get(number, grpc.StatusCode.UNKNOWN)
    return from_status(code, message)
