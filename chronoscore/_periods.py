"""Reset periods: which daily, weekly or monthly leaderboard a time is in.

Every time is an ``int`` of microseconds since the Unix epoch, in UTC,
the same unit as ``reached_us``. Nothing here reads the clock, the local
time zone or a float: the answer for a given time is the same on every
host, whatever ``TZ`` says.

A period is the half-open span ``[start_us, end_us)``:

- ``DAILY`` periods start at 00:00:00 UTC. An update at
  23:59:59.999999 UTC belongs to that day; one at 00:00:00 UTC to the
  next day.
- ``WEEKLY`` periods start on Monday at 00:00:00 UTC, so Sunday
  23:59:59.999999 UTC is the last moment of a week.
- ``MONTHLY`` periods start on the 1st at 00:00:00 UTC and end where
  the next month starts (28, 29, 30 or 31 days later).
- ``NONE`` has one period, covering all time: ``[0, FOREVER_US)``.

The resets happen at UTC midnight, not local midnight: a player in Los
Angeles sees the daily reset at 16:00 (17:00 in summer), one in
Kathmandu at 05:45. Unix time has no leap seconds, so every day is
exactly 86 400 seconds long.

A period's label names it by the UTC date it starts on: ``"2026-03-02"``
for a day or a week, ``"2026-03"`` for a month, and ``""`` for
``NONE``. :func:`parse_label` turns a label back into its period.

Supported range: times from 1970-01-01 00:00:00 UTC (``0``) up to, but
not including, 10000-01-01 00:00:00 UTC (``LIMIT_US``). The periods at
either end are cut to fit the range. 1970-01-01 was a Thursday, so the
first weekly period is ``[1970-01-01, 1970-01-05)`` and is labelled
``"1970-01-01"``, the one weekly label that is not a Monday; the last is
``[9999-12-27, LIMIT_US)``. No period starts below 0.

Errors: a label that a client sent and that is wrong raises
:class:`InvalidArgument` saying what was expected. Times outside the
range, a shift that would leave it, and a period that does not belong
to the reset it is used with are caller mistakes and raise
``ValueError``; a time that is not an ``int`` raises ``TypeError``.

Every operation is O(1), apart from :func:`parse_label`, which is
O(len(label)).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import date
from enum import IntEnum

from .errors import InvalidArgument

__all__ = [
    "LIMIT_US",
    "FOREVER_US",
    "Reset",
    "Period",
    "period_of",
    "previous",
    "shift",
    "parse_label",
    "oldest_kept",
]

_DAY_US = 86_400 * 1_000_000

# Calendar work is done on proleptic Gregorian day numbers, which have
# no time zone, so converting never goes through the local clock.
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()

LIMIT_US = (date.max.toordinal() + 1 - _EPOCH_ORDINAL) * _DAY_US
"""The first microsecond past the range: 10000-01-01 00:00:00 UTC."""

FOREVER_US = (1 << 63) - 1
"""The end of the single ``NONE`` period: the largest signed int64."""

# Day 0, 1970-01-01, was a Thursday: 3 days after a Monday.
_DAYS_AFTER_MONDAY = 3

_DAY_LABEL = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_MONTH_LABEL = re.compile(r"([0-9]{4})-([0-9]{2})")

_WEEKDAYS = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)


class Reset(IntEnum):
    """How often a leaderboard starts over."""

    NONE = 0
    DAILY = 1
    WEEKLY = 2
    MONTHLY = 3


@dataclass(frozen=True, slots=True)
class Period:
    """The span ``[start_us, end_us)`` of one period of ``reset``.

    Build periods with :func:`period_of` or :func:`parse_label`; the
    other functions reject a hand-made span that is not a real period.
    """

    reset: Reset
    start_us: int
    end_us: int

    @property
    def label(self) -> str:
        """The period's name, from the UTC date it starts on."""
        if self.reset == Reset.NONE:
            return ""
        day = _date_of(self.start_us // _DAY_US)
        if self.reset == Reset.MONTHLY:
            return f"{day.year:04d}-{day.month:02d}"
        return day.isoformat()


_ALL_TIME = Period(Reset.NONE, 0, FOREVER_US)


def period_of(reset: Reset, t_us: int) -> Period:
    """The period of ``reset`` that holds the time ``t_us``. O(1).

    Raises ``ValueError`` if ``t_us`` is outside ``[0, LIMIT_US)``.
    """
    reset = Reset(reset)
    _check_time(t_us)
    if reset == Reset.NONE:
        return _ALL_TIME
    return _nth(reset, _index(reset, t_us))


def previous(reset: Reset, period: Period) -> Period:
    """The period just before ``period``. O(1).

    Raises ``ValueError`` for the first period of the range and for
    ``NONE``, whose one period has nothing before it.
    """
    return shift(reset, period, -1)


def shift(reset: Reset, period: Period, n: int) -> Period:
    """The period ``n`` periods after ``period`` (before, if n < 0). O(1).

    Raises ``ValueError`` if the result would leave the supported range,
    or for ``NONE`` when ``n`` is not 0.
    """
    reset = _check_period(reset, period)
    if reset == Reset.NONE:
        if n:
            raise ValueError(
                "a leaderboard that never resets has one period;"
                f" it cannot be shifted by {n}"
            )
        return period

    index = _index(reset, period.start_us) + n
    if not _FIRST[reset] <= index <= _LAST[reset]:
        raise ValueError(
            f"shifting the {reset.name.lower()} period {period.label!r}"
            f" by {n} leaves the supported range, 1970-01-01 to"
            " 9999-12-31 UTC"
        )
    return _nth(reset, index)


def parse_label(reset: Reset, label: str) -> Period:
    """The period of ``reset`` named ``label``. O(len(label)).

    Raises :class:`InvalidArgument` if the label is malformed, names a
    date that does not exist or is outside 1970..9999, or is a weekly
    label that is not a Monday (except ``"1970-01-01"``, see above).
    """
    reset = Reset(reset)
    if reset == Reset.NONE:
        if label:
            raise InvalidArgument(
                "a leaderboard that never resets has one period, labelled"
                f" '' (the empty string); got {label!r}"
            )
        return _ALL_TIME
    if reset == Reset.MONTHLY:
        return _parse_month(label)
    return _parse_day(reset, label)


def oldest_kept(reset: Reset, current: Period, keep: int) -> int:
    """The start_us of the oldest period still readable. O(1).

    ``keep`` past periods are readable besides ``current``, so with
    ``keep=0`` only ``current`` is. The answer never goes below 0: near
    1970 fewer than ``keep`` past periods exist. For ``NONE`` it is 0.
    """
    if keep < 0:
        raise ValueError(f"keep must be 0 or more, got {keep}")
    reset = _check_period(reset, current)
    if reset == Reset.NONE:
        return 0
    index = _index(reset, current.start_us) - keep
    return _start_us(reset, max(index, _FIRST[reset]))


def _check_time(t_us: int) -> None:
    # bool is an int subclass, and a float time would lose microseconds
    # past 2**53, so both are refused rather than rounded.
    if isinstance(t_us, bool) or not isinstance(t_us, int):
        raise TypeError(
            f"t_us must be an int of microseconds, got {type(t_us).__name__}"
        )
    if not 0 <= t_us < LIMIT_US:
        raise ValueError(
            f"t_us={t_us} is outside the supported range [0, {LIMIT_US}),"
            " 1970-01-01 to 9999-12-31 UTC"
        )


def _check_period(reset: Reset, period: Period) -> Reset:
    """Return ``reset`` as a Reset if ``period`` is one of its periods."""
    reset = Reset(reset)
    if period.reset != reset:
        given = Reset(period.reset).name.lower()
        wanted = reset.name.lower()
        raise ValueError(f"expected a {wanted} period, got a {given} one")
    if reset == Reset.NONE:
        real = period == _ALL_TIME
    else:
        real = 0 <= period.start_us < LIMIT_US and period == _nth(
            reset, _index(reset, period.start_us)
        )
    if not real:
        raise ValueError(
            f"{period!r} is not a {reset.name.lower()} period;"
            " build periods with period_of or parse_label"
        )
    return reset


def _date_of(day: int) -> date:
    """The calendar date of a day number (0 is 1970-01-01)."""
    return date.fromordinal(day + _EPOCH_ORDINAL)


def _day_of(when: date) -> int:
    return when.toordinal() - _EPOCH_ORDINAL


def _index(reset: Reset, t_us: int) -> int:
    """The number of the (uncut) period holding ``t_us``.

    Days and weeks are counted from the ones holding 1970-01-01;
    months are ``year * 12 + month - 1``.
    """
    day = t_us // _DAY_US
    if reset == Reset.DAILY:
        return day
    if reset == Reset.WEEKLY:
        return (day + _DAYS_AFTER_MONDAY) // 7
    if reset == Reset.MONTHLY:
        when = _date_of(day)
        return when.year * 12 + when.month - 1
    return 0


def _start_us(reset: Reset, index: int) -> int:
    """Where period ``index`` starts, cut to ``[0, LIMIT_US]``."""
    if index > _LAST[reset]:
        return LIMIT_US
    if reset == Reset.DAILY:
        day = index
    elif reset == Reset.WEEKLY:
        day = index * 7 - _DAYS_AFTER_MONDAY
    else:
        year, month = divmod(index, 12)
        day = _day_of(date(year, month + 1, 1))
    return max(day, 0) * _DAY_US


def _nth(reset: Reset, index: int) -> Period:
    start = _start_us(reset, index)
    return Period(reset, start, _start_us(reset, index + 1))


_PERIODIC = (Reset.DAILY, Reset.WEEKLY, Reset.MONTHLY)
_FIRST = {reset: _index(reset, 0) for reset in _PERIODIC}
_LAST = {reset: _index(reset, LIMIT_US - 1) for reset in _PERIODIC}


def _parse_day(reset: Reset, label: str) -> Period:
    """A daily or weekly label, ``YYYY-MM-DD``."""
    kind = reset.name.lower()
    found = _DAY_LABEL.fullmatch(label)
    if not found:
        raise InvalidArgument(
            f"{kind} label {label!r} must be a UTC date written"
            " YYYY-MM-DD, e.g. '2026-03-02'"
        )
    year, month, day = (int(part) for part in found.groups())
    when = _real_date(kind, label, year, month, day)

    period = period_of(reset, _day_of(when) * _DAY_US)
    if period.label != label:
        raise InvalidArgument(
            f"weekly label {label!r} is a {_WEEKDAYS[when.weekday()]};"
            " weeks start on Monday, and the week holding it is"
            f" labelled {period.label!r}"
        )
    return period


def _parse_month(label: str) -> Period:
    """A monthly label, ``YYYY-MM``."""
    found = _MONTH_LABEL.fullmatch(label)
    if not found:
        raise InvalidArgument(
            f"monthly label {label!r} must be a UTC month written"
            " YYYY-MM, e.g. '2026-03'"
        )
    year, month = (int(part) for part in found.groups())
    when = _real_date("monthly", label, year, month, 1)
    return period_of(Reset.MONTHLY, _day_of(when) * _DAY_US)


def _real_date(kind: str, label: str, year: int, month: int, day: int) -> date:
    """The date the label's fields name, if it exists and is in range."""
    problem = _date_problem(year, month, day)
    if problem:
        raise InvalidArgument(f"{kind} label {label!r} {problem}")
    return date(year, month, day)


def _date_problem(year: int, month: int, day: int) -> str:
    """What is wrong with a date, or "" if it exists and is in range."""
    if not 1970 <= year <= 9999:
        return "is outside the supported years, 1970 to 9999"
    if not 1 <= month <= 12:
        return f"has month {month:02d}; months run from 01 to 12"

    last = calendar.monthrange(year, month)[1]
    if not 1 <= day <= last:
        days = f"{year:04d}-{month:02d} has days 01 to {last}"
        return f"has day {day:02d}, but {days}"
    return ""
