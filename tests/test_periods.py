"""Reset periods follow UTC calendar boundaries, whatever the local zone.

The seeded random tests compare against a plain ``datetime`` oracle
written here, which shares no code with the module under test.
"""

from __future__ import annotations

import calendar
import json
import os
import random
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta

import pytest

import chronoscore._periods as periods
from chronoscore._periods import (
    FOREVER_US,
    LIMIT_US,
    Period,
    Reset,
    oldest_kept,
    parse_label,
    period_of,
    previous,
    shift,
)
from chronoscore.errors import InvalidArgument

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
DAY_US = 86_400_000_000
PERIODIC = [Reset.DAILY, Reset.WEEKLY, Reset.MONTHLY]


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> int:
    """Microseconds since the epoch of a UTC date and time."""
    moment = datetime(year, month, day, hour, minute, tzinfo=UTC)
    return (moment - EPOCH) // ONE_US


def utc(t_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=t_us)


def random_times(rng: random.Random, count: int) -> list[int]:
    """Times over the whole range, near now, and next to midnights."""
    times = []
    for _ in range(count):
        pick = rng.random()
        if pick < 0.4:
            times.append(rng.randrange(LIMIT_US))
        elif pick < 0.7:
            times.append(rng.randrange(us(2020, 1, 1), us(2040, 1, 1)))
        else:
            midnight = rng.randrange(1, LIMIT_US // DAY_US) * DAY_US
            times.append(midnight + rng.choice([-1, 0, 1]))
    return times


# -- the oracle ---------------------------------------------------------


def oracle(reset: Reset, t_us: int) -> tuple[int, int, str]:
    """(start_us, end_us, label), computed plainly with datetime."""
    if reset == Reset.NONE:
        return 0, FOREVER_US, ""
    day = utc(t_us).date()
    if reset == Reset.DAILY:
        start, days = day, 1
    elif reset == Reset.WEEKLY:
        start, days = day - timedelta(days=day.weekday()), 7
    else:
        start = day.replace(day=1)
        days = calendar.monthrange(day.year, day.month)[1]

    # Counted in microseconds, as date() cannot go past 9999-12-31.
    start_us = oracle_us(start)
    end_us = min(start_us + days * DAY_US, LIMIT_US)
    start_us = max(start_us, 0)
    return start_us, end_us, oracle_label(reset, utc(start_us).date())


def oracle_us(day: date) -> int:
    return (day - date(1970, 1, 1)).days * DAY_US


def oracle_label(reset: Reset, day: date) -> str:
    if reset == Reset.MONTHLY:
        return day.strftime("%Y-%m")
    return day.strftime("%Y-%m-%d")


@pytest.mark.parametrize("reset", list(Reset))
def test_matches_the_datetime_oracle(reset: Reset) -> None:
    rng = random.Random(f"oracle-{reset.name}")
    for t_us in random_times(rng, 3000):
        period = period_of(reset, t_us)
        expected = oracle(reset, t_us)

        assert (period.start_us, period.end_us, period.label) == expected
        assert period.reset == reset
        assert period.start_us <= t_us < period.end_us
        check_shape(period)


def check_shape(period: Period) -> None:
    """Starts at UTC midnight on the weekday or day the reset names."""
    if period.reset == Reset.NONE:
        assert (period.start_us, period.end_us) == (0, FOREVER_US)
        return
    start = utc(period.start_us)
    assert start.time() == datetime.min.time()
    assert 0 <= period.start_us < period.end_us <= LIMIT_US
    days = (period.end_us - period.start_us) // DAY_US
    assert period.end_us % DAY_US == 0

    if period.reset == Reset.DAILY:
        assert days == 1
    elif period.reset == Reset.WEEKLY and period.start_us == 0:
        assert days == 4
    elif period.reset == Reset.WEEKLY:
        assert start.weekday() == 0
        assert days == 7 or period.end_us == LIMIT_US
    else:
        assert start.day == 1
        assert days in (28, 29, 30, 31)


# -- boundaries ---------------------------------------------------------


@pytest.mark.parametrize(
    ("midnight", "before", "after"),
    [
        (us(2026, 3, 5), "2026-03-04", "2026-03-05"),
        (us(2024, 2, 29), "2024-02-28", "2024-02-29"),
        (us(2024, 3, 1), "2024-02-29", "2024-03-01"),
        (us(2027, 1, 1), "2026-12-31", "2027-01-01"),
        (us(1970, 1, 2), "1970-01-01", "1970-01-02"),
        (us(9999, 12, 31), "9999-12-30", "9999-12-31"),
    ],
)
def test_daily_boundary(midnight: int, before: str, after: str) -> None:
    last = period_of(Reset.DAILY, midnight - 1)
    first = period_of(Reset.DAILY, midnight)

    assert utc(midnight - 1).time().isoformat() == "23:59:59.999999"
    assert (last.label, first.label) == (before, after)
    assert last.end_us == first.start_us == midnight
    assert last.start_us == midnight - DAY_US
    assert first.end_us == midnight + DAY_US


@pytest.mark.parametrize(
    ("monday", "before", "after"),
    [
        (us(2026, 3, 2), "2026-02-23", "2026-03-02"),
        (us(2024, 12, 30), "2024-12-23", "2024-12-30"),
        (us(2025, 1, 6), "2024-12-30", "2025-01-06"),
        (us(2024, 3, 4), "2024-02-26", "2024-03-04"),
    ],
)
def test_weekly_boundary(monday: int, before: str, after: str) -> None:
    sunday_last = period_of(Reset.WEEKLY, monday - 1)
    monday_first = period_of(Reset.WEEKLY, monday)

    sunday = utc(monday - 1).strftime("%A %H:%M:%S.%f")
    assert sunday == "Sunday 23:59:59.999999"
    assert (sunday_last.label, monday_first.label) == (before, after)
    assert sunday_last.end_us == monday_first.start_us == monday
    assert monday_first.end_us - monday_first.start_us == 7 * DAY_US

    # A week crossing New Year keeps the label of its Monday.
    assert period_of(Reset.WEEKLY, us(2025, 1, 1, 12)).label == "2024-12-30"


@pytest.mark.parametrize(
    ("first_day", "before", "after", "days_before"),
    [
        (us(2024, 3, 1), "2024-02", "2024-03", 29),
        (us(2026, 3, 1), "2026-02", "2026-03", 28),
        (us(2024, 2, 1), "2024-01", "2024-02", 31),
        (us(2026, 5, 1), "2026-04", "2026-05", 30),
        (us(2027, 1, 1), "2026-12", "2027-01", 31),
        (us(2000, 3, 1), "2000-02", "2000-03", 29),
        (us(2100, 3, 1), "2100-02", "2100-03", 28),
    ],
)
def test_monthly_boundary(
    first_day: int, before: str, after: str, days_before: int
) -> None:
    last = period_of(Reset.MONTHLY, first_day - 1)
    first = period_of(Reset.MONTHLY, first_day)

    assert (last.label, first.label) == (before, after)
    assert last.end_us == first.start_us == first_day
    assert last.end_us - last.start_us == days_before * DAY_US
    assert parse_label(Reset.MONTHLY, before) == last


def test_the_epoch() -> None:
    assert period_of(Reset.DAILY, 0) == Period(Reset.DAILY, 0, DAY_US)
    assert period_of(Reset.MONTHLY, 0) == Period(Reset.MONTHLY, 0, 31 * DAY_US)
    assert period_of(Reset.MONTHLY, 0).label == "1970-01"

    # 1970-01-01 was a Thursday. Its week would start on 1969-12-29,
    # before the range, so the first weekly period is cut to start at
    # the epoch and is named by that date.
    first_week = period_of(Reset.WEEKLY, 0)
    assert date(1970, 1, 1).weekday() == 3
    assert first_week == Period(Reset.WEEKLY, 0, us(1970, 1, 5))
    assert first_week.label == "1970-01-01"
    assert period_of(Reset.WEEKLY, us(1970, 1, 5) - 1) == first_week
    assert parse_label(Reset.WEEKLY, "1970-01-01") == first_week

    second_week = period_of(Reset.WEEKLY, us(1970, 1, 5))
    assert second_week == Period(Reset.WEEKLY, us(1970, 1, 5), us(1970, 1, 12))
    assert previous(Reset.WEEKLY, second_week) == first_week
    assert shift(Reset.WEEKLY, first_week, 1) == second_week


def test_the_end_of_the_range() -> None:
    assert utc(LIMIT_US - 1) == datetime(9999, 12, 31, 23, 59, 59, 999999, UTC)
    assert LIMIT_US == periods.LIMIT_US == 253_402_300_800_000_000

    last_day = period_of(Reset.DAILY, LIMIT_US - 1)
    assert (last_day.label, last_day.end_us) == ("9999-12-31", LIMIT_US)

    # 9999-12-27 is a Monday; its week is cut short at the limit.
    last_week = period_of(Reset.WEEKLY, LIMIT_US - 1)
    assert last_week == Period(Reset.WEEKLY, us(9999, 12, 27), LIMIT_US)
    assert parse_label(Reset.WEEKLY, "9999-12-27") == last_week

    last_month = period_of(Reset.MONTHLY, LIMIT_US - 1)
    assert last_month == Period(Reset.MONTHLY, us(9999, 12, 1), LIMIT_US)
    assert last_month.label == "9999-12"


@pytest.mark.parametrize("reset", PERIODIC)
def test_shifting_out_of_the_range_raises(reset: Reset) -> None:
    first = period_of(reset, 0)
    last = period_of(reset, LIMIT_US - 1)

    with pytest.raises(ValueError, match="1970-01-01 to 9999-12-31"):
        previous(reset, first)
    with pytest.raises(ValueError, match="supported range"):
        shift(reset, last, 1)
    with pytest.raises(ValueError, match="supported range"):
        shift(reset, last, -(10**9))
    assert shift(reset, first, 0) == first


def test_none_has_one_period() -> None:
    everything = Period(Reset.NONE, 0, FOREVER_US)
    assert FOREVER_US == 2**63 - 1

    for t_us in [0, 1, us(2026, 3, 4), LIMIT_US - 1]:
        assert period_of(Reset.NONE, t_us) == everything
    assert everything.label == ""
    assert parse_label(Reset.NONE, "") == everything
    assert shift(Reset.NONE, everything, 0) == everything

    with pytest.raises(ValueError, match="never resets"):
        previous(Reset.NONE, everything)
    with pytest.raises(ValueError, match="never resets"):
        shift(Reset.NONE, everything, 2)


# -- time zone independence ----------------------------------------------

_ZONE_PROGRAM = """
import json, sys, time
from chronoscore._periods import Reset, period_of, parse_label
time.tzset()
times = json.load(sys.stdin)
out = {"offset": time.localtime(1_700_000_000).tm_gmtoff, "periods": []}
for reset in Reset:
    for t in times:
        p = period_of(reset, t)
        assert parse_label(reset, p.label) == p
        out["periods"].append([p.start_us, p.end_us, p.label])
print(json.dumps(out))
"""


def periods_in_zone(zone: str, times: list[int]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _ZONE_PROGRAM],
        input=json.dumps(times),
        env={**os.environ, "TZ": zone},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize(
    ("zone", "offset"),
    [
        ("UTC", 0),
        ("America/Los_Angeles", -8 * 3600),
        ("Asia/Kathmandu", 5 * 3600 + 45 * 60),
        # A POSIX rule, so this case holds even without a zoneinfo db.
        ("XST-13:45", 13 * 3600 + 45 * 60),
    ],
)
def test_periods_ignore_the_local_zone(zone: str, offset: int) -> None:
    times = random_times(random.Random("zones"), 300)
    times += [0, LIMIT_US - 1, us(2026, 3, 8, 10), us(2026, 11, 1, 9)]
    here = [
        [p.start_us, p.end_us, p.label]
        for reset in Reset
        for p in (period_of(reset, t) for t in times)
    ]

    there = periods_in_zone(zone, times)
    # The offset proves the zone really took effect in the child.
    assert there["offset"] == offset
    assert there["periods"] == here


# -- round trips --------------------------------------------------------


@pytest.mark.parametrize("reset", list(Reset))
def test_label_round_trip(reset: Reset) -> None:
    rng = random.Random(f"labels-{reset.name}")
    for t_us in random_times(rng, 2000):
        period = period_of(reset, t_us)
        assert parse_label(reset, period.label) == period


@pytest.mark.parametrize("reset", PERIODIC)
def test_shift_round_trip(reset: Reset) -> None:
    rng = random.Random(f"shift-{reset.name}")
    for t_us in random_times(rng, 2000):
        period = period_of(reset, t_us)
        n = rng.choice([rng.randrange(-5, 6), rng.randrange(-5000, 5001)])
        try:
            moved = shift(reset, period, n)
        except ValueError:
            continue
        assert shift(reset, moved, -n) == period
        if n > 0:
            assert moved.start_us >= period.end_us
        elif n < 0:
            assert moved.end_us <= period.start_us


@pytest.mark.parametrize("reset", PERIODIC)
def test_shift_equals_repeated_steps(reset: Reset) -> None:
    rng = random.Random(f"steps-{reset.name}")
    for t_us in random_times(rng, 200):
        # Kept far enough from the ends that 40 steps stay in range.
        t_us = min(max(t_us, us(1980, 1, 1)), us(9990, 1, 1))
        period = period_of(reset, t_us)
        n = rng.randrange(-40, 41)
        stepped = period
        for _ in range(abs(n)):
            step = 1 if n > 0 else -1
            stepped = shift(reset, stepped, step)
        assert shift(reset, period, n) == stepped


@pytest.mark.parametrize("reset", PERIODIC)
def test_neighbours_touch(reset: Reset) -> None:
    rng = random.Random(f"touch-{reset.name}")
    for t_us in random_times(rng, 2000):
        period = period_of(reset, t_us)
        if period.start_us > 0:
            before = previous(reset, period)
            assert before.end_us == period.start_us
            assert period_of(reset, period.start_us - 1) == before
        if period.end_us < LIMIT_US:
            after = shift(reset, period, 1)
            assert after.start_us == period.end_us
            assert period_of(reset, period.end_us) == after


# -- labels -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reset", "label"),
    [
        (Reset.DAILY, "2024-02-29"),
        (Reset.DAILY, "1970-01-01"),
        (Reset.DAILY, "9999-12-31"),
        (Reset.WEEKLY, "2026-03-02"),
        (Reset.WEEKLY, "1970-01-05"),
        (Reset.MONTHLY, "2026-02"),
        (Reset.MONTHLY, "1970-01"),
        (Reset.MONTHLY, "9999-12"),
    ],
)
def test_good_labels(reset: Reset, label: str) -> None:
    period = parse_label(reset, label)
    assert period.label == label
    assert period_of(reset, period.start_us) == period
    assert utc(period.start_us).date().isoformat().startswith(label)


BAD_LABELS = [
    # Malformed.
    (Reset.DAILY, "", "YYYY-MM-DD"),
    (Reset.DAILY, "2026-3-02", "YYYY-MM-DD"),
    (Reset.DAILY, "2026/03/02", "YYYY-MM-DD"),
    (Reset.DAILY, "20260302", "YYYY-MM-DD"),
    (Reset.DAILY, " 2026-03-02", "YYYY-MM-DD"),
    (Reset.DAILY, "2026-03-02\n", "YYYY-MM-DD"),
    (Reset.DAILY, "2026-03-02T00:00", "YYYY-MM-DD"),
    (Reset.DAILY, "2026-03", "YYYY-MM-DD"),
    (Reset.DAILY, "\uff12\uff10\uff12\uff16-03-02", "YYYY-MM-DD"),
    (Reset.DAILY, "+2026-03-02", "YYYY-MM-DD"),
    (Reset.WEEKLY, "2026-W10", "YYYY-MM-DD"),
    (Reset.MONTHLY, "2026-03-01", "YYYY-MM"),
    (Reset.MONTHLY, "2026-3", "YYYY-MM"),
    (Reset.MONTHLY, "", "YYYY-MM"),
    # Dates that do not exist.
    (Reset.DAILY, "2026-02-30", "2026-02 has days 01 to 28"),
    (Reset.DAILY, "2026-02-29", "2026-02 has days 01 to 28"),
    (Reset.WEEKLY, "2024-02-30", "2024-02 has days 01 to 29"),
    (Reset.DAILY, "2026-04-31", "2026-04 has days 01 to 30"),
    (Reset.DAILY, "2026-01-00", "has day 00"),
    (Reset.DAILY, "2026-13-01", "months run from 01 to 12"),
    (Reset.MONTHLY, "2026-00", "months run from 01 to 12"),
    (Reset.MONTHLY, "2026-13", "months run from 01 to 12"),
    # Outside 1970..9999.
    (Reset.DAILY, "1969-12-31", "1970 to 9999"),
    (Reset.WEEKLY, "1969-12-29", "1970 to 9999"),
    (Reset.MONTHLY, "1969-12", "1970 to 9999"),
    (Reset.DAILY, "0000-01-01", "1970 to 9999"),
    (Reset.DAILY, "10000-01-01", "YYYY-MM-DD"),
    # Weekly labels name a Monday.
    (Reset.WEEKLY, "2026-03-04", "is a Wednesday"),
    (Reset.WEEKLY, "2026-03-08", "is a Sunday"),
    (Reset.WEEKLY, "1970-01-02", "labelled '1970-01-01'"),
    # A leaderboard that never resets has only "".
    (Reset.NONE, "2026-03-02", "labelled ''"),
    (Reset.NONE, " ", "labelled ''"),
]


@pytest.mark.parametrize(("reset", "label", "says"), BAD_LABELS)
def test_bad_labels_raise(reset: Reset, label: str, says: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_label(reset, label)
    message = str(caught.value)
    assert says in message
    assert repr(label) in message


def test_a_weekly_label_off_monday_names_its_monday() -> None:
    with pytest.raises(InvalidArgument) as caught:
        parse_label(Reset.WEEKLY, "2026-03-04")
    assert str(caught.value) == (
        "weekly label '2026-03-04' is a Wednesday; weeks start on Monday,"
        " and the week holding it is labelled '2026-03-02'"
    )


# -- retention ----------------------------------------------------------

NOW = us(2026, 3, 4, 12, 30)


@pytest.mark.parametrize(
    ("reset", "keep", "oldest"),
    [
        (Reset.NONE, 0, 0),
        (Reset.NONE, 1, 0),
        (Reset.NONE, 3, 0),
        (Reset.DAILY, 0, us(2026, 3, 4)),
        (Reset.DAILY, 1, us(2026, 3, 3)),
        (Reset.DAILY, 3, us(2026, 3, 1)),
        (Reset.WEEKLY, 0, us(2026, 3, 2)),
        (Reset.WEEKLY, 1, us(2026, 2, 23)),
        (Reset.WEEKLY, 3, us(2026, 2, 9)),
        (Reset.MONTHLY, 0, us(2026, 3, 1)),
        (Reset.MONTHLY, 1, us(2026, 2, 1)),
        (Reset.MONTHLY, 3, us(2025, 12, 1)),
    ],
)
def test_oldest_kept(reset: Reset, keep: int, oldest: int) -> None:
    current = period_of(reset, NOW)
    assert oldest_kept(reset, current, keep) == oldest
    if reset != Reset.NONE:
        assert oldest == shift(reset, current, -keep).start_us


@pytest.mark.parametrize("reset", PERIODIC)
def test_oldest_kept_stops_at_the_epoch(reset: Reset) -> None:
    second = shift(reset, period_of(reset, 0), 1)
    assert oldest_kept(reset, second, 1) == 0
    assert oldest_kept(reset, second, 3) == 0
    assert oldest_kept(reset, second, 0) == second.start_us


def test_oldest_kept_rejects_negative_keep() -> None:
    with pytest.raises(ValueError, match="keep must be 0 or more"):
        oldest_kept(Reset.DAILY, period_of(Reset.DAILY, NOW), -1)


# -- misuse -------------------------------------------------------------


@pytest.mark.parametrize("reset", list(Reset))
@pytest.mark.parametrize("t_us", [-1, -(10**18), LIMIT_US, FOREVER_US])
def test_times_outside_the_range_raise(reset: Reset, t_us: int) -> None:
    with pytest.raises(ValueError, match="outside the supported range"):
        period_of(reset, t_us)


@pytest.mark.parametrize("t_us", [1.5, 0.0, True, "0", None])
def test_times_must_be_ints(t_us: object) -> None:
    with pytest.raises(TypeError, match="t_us must be an int"):
        period_of(Reset.DAILY, t_us)  # type: ignore[arg-type]


def test_periods_must_belong_to_the_reset() -> None:
    week = period_of(Reset.WEEKLY, NOW)
    wrong = "expected a daily period, got a weekly one"
    with pytest.raises(ValueError, match=wrong):
        previous(Reset.DAILY, week)

    for fake in [
        Period(Reset.DAILY, 5, DAY_US),
        Period(Reset.DAILY, 0, 2 * DAY_US),
        Period(Reset.WEEKLY, us(2026, 3, 4), us(2026, 3, 11)),
        Period(Reset.MONTHLY, -DAY_US, 0),
        Period(Reset.NONE, 0, LIMIT_US),
    ]:
        with pytest.raises(ValueError, match="build periods with"):
            shift(fake.reset, fake, 1)
        with pytest.raises(ValueError, match="build periods with"):
            oldest_kept(fake.reset, fake, 1)


def test_reset_values_and_public_names() -> None:
    assert [(r.name, int(r)) for r in Reset] == [
        ("NONE", 0),
        ("DAILY", 1),
        ("WEEKLY", 2),
        ("MONTHLY", 3),
    ]
    weekly = period_of(2, 0)  # type: ignore[arg-type]
    assert weekly == period_of(Reset.WEEKLY, 0)
    with pytest.raises(ValueError):
        period_of(4, 0)  # type: ignore[arg-type]
    assert sorted(periods.__all__) == [
        "FOREVER_US",
        "LIMIT_US",
        "Period",
        "Reset",
        "oldest_kept",
        "parse_label",
        "period_of",
        "previous",
        "shift",
    ]
