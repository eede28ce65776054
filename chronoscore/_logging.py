"""Log set-up for ChronoScore processes: one line per event, on stderr."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO") -> None:
    """Send ``chronoscore.*`` records to stderr at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s")
    )
    root = logging.getLogger("chronoscore")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
