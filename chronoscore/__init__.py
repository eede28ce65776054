"""ChronoScore: real-time sharded leaderboards with exact global ranks."""

from .client import Client, Entry, RankedEntry, Result, Update
from .errors import (
    ChronoscoreError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)

__all__ = [
    "Client",
    "Entry",
    "RankedEntry",
    "Result",
    "Update",
    "ChronoscoreError",
    "FailedPrecondition",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "Unavailable",
]

__version__ = "0.1.0"
