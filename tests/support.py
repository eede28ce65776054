"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from chronoscore import Unavailable

T = TypeVar("T")


def eventually(call: Callable[[], T], seconds: float = 15.0) -> T:
    """Call until it stops raising Unavailable, for up to ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
