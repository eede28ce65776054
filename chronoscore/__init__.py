"""ChronoScore: real-time sharded leaderboards with exact global ranks."""

from .client import (
    Client,
    Entry,
    Friends,
    Leaderboard,
    Page,
    Period,
    RankedEntry,
    Result,
    Update,
)
from .errors import (
    AlreadyExists,
    ChronoscoreError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

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
    "AlreadyExists",
    "ChronoscoreError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
]

__version__ = "0.1.0"
