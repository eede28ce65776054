"""Log set-up for ChronoScore processes: one line per event, on stderr."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


class _OneLine(logging.Formatter):
    """Keeps each record on one line, whatever its message holds."""

    def format(self, record: logging.LogRecord) -> str:
        return " | ".join(
            part.strip() for part in super().format(record).splitlines() if part
        )


def configure_logging(level: str = "INFO") -> None:
    """Send ``chronoscore.*`` records to stderr at ``level``, and the
    database driver's warnings (lost connections, say) in the same form."""
    handler = logging.StreamHandler()
    handler.setFormatter(
        _OneLine("%(asctime)s %(levelname)s %(name)s %(process)d %(message)s")
    )
    for name, least in (("chronoscore", level.upper()), ("psycopg", "WARNING")):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(least)
        logger.propagate = False
