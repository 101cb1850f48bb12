"""Send-time arithmetic: examples around real DST changes, plus property tests.

The property tests compare the engine with brute-force oracles that walk the clock minute
by minute. Inputs are on whole minutes and every zone used changes offset on a whole
minute, so the oracle's answer is exact, not approximate.
"""

from datetime import datetime, time, timedelta, timezone
from functools import cache
from zoneinfo import ZoneInfo

import pytest
from dateutil.relativedelta import relativedelta
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from engine.schedule import (
    DELAY_UNITS,
    QuietHours,
    add_delay,
    at_time_of_day,
    best_time_in_window,
    compute_send_time,
    hour_of_week,
    is_quiet,
    next_allowed,
    resolve_tz,
    to_local,
    to_naive_utc,
)

ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "America/New_York",
    "America/Sao_Paulo",
    "America/St_Johns",
    "Australia/Lord_Howe",
    "Asia/Shanghai",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Pacific/Apia",
)
# Years with DST changes in the zones above (Shanghai only had DST 1986-1991, Apia skipped
# 30 December 2011 and dropped DST in 2021).
TRANSITION_YEARS = (1988, 1991, 2011, 2012, 2024, 2025, 2031)
MINUTE = timedelta(minutes=1)
UTC = timezone.utc  # noqa: UP017 - keep Python 3.10 compatible like the engine


def dt(*args):
    return datetime(*args)


def utc_of(local_naive, tz, fold=0):
    """Naive UTC of an existing local wall time (test helper)."""
    aware = local_naive.replace(tzinfo=ZoneInfo(tz), fold=fold)
    return aware.astimezone(UTC).replace(tzinfo=None)


@cache
def transitions(tz):
    """Naive-UTC instants (to the minute) at which ``tz`` changes offset."""
    zone = ZoneInfo(tz)

    def offset(instant):
        return instant.replace(tzinfo=UTC).astimezone(zone).utcoffset()

    found = []
    for year in TRANSITION_YEARS:
        day = datetime(year, 1, 1)
        while day.year == year:
            following = day + timedelta(days=1)
            if offset(day) != offset(following):
                low, high = day, following
                while high - low > MINUTE:
                    middle = low + (high - low) // 2
                    middle = middle.replace(second=0, microsecond=0)
                    if middle == low:
                        break
                    if offset(middle) == offset(low):
                        low = middle
                    else:
                        high = middle
                found.append(high)
            day = following
    return tuple(found)


ALL_TRANSITIONS = tuple((tz, moment) for tz in ZONES for moment in transitions(tz))


def test_zones_have_transitions_to_exercise():
    # Guards the strategies below: without transitions they would test little.
    assert len(transitions("Europe/Berlin")) >= 8
    assert transitions("Australia/Lord_Howe")
    assert transitions("Pacific/Chatham")
    assert transitions("Asia/Shanghai")
    assert not transitions("UTC")


zones = st.sampled_from(ZONES)


@st.composite
def zone_and_instant(draw, whole_minutes=True):
    """A zone and a naive-UTC instant, often within three days of one of its DST changes."""
    if draw(st.booleans()):
        tz, moment = draw(st.sampled_from(ALL_TRANSITIONS))
        instant = moment + timedelta(minutes=draw(st.integers(-72 * 60, 72 * 60)))
    else:
        tz = draw(zones)
        instant = draw(st.datetimes(min_value=dt(1985, 1, 1), max_value=dt(2060, 1, 1)))
        instant = instant.replace(second=0, microsecond=0)
    if not whole_minutes:
        instant += timedelta(microseconds=draw(st.integers(0, 59_999_999)))
    return tz, instant


quarter_hours = st.integers(0, 96).map(lambda quarters: quarters / 4)


@st.composite
def quiet_hours(draw):
    start, end = draw(quarter_hours), draw(quarter_hours)
    assume(not (start == 0 and end == 24))
    return QuietHours(start, end)


def local_minute_of_day(instant, tz):
    local = to_local(instant, tz)
    return local.hour * 60 + local.minute


def wall_reached(previous_local, current_local, target_minutes):
    """Whether the wall clock jumped forward over ``target_minutes`` (minutes of day)."""
    probe = previous_local.replace(hour=0, minute=0, second=0, microsecond=0)
    probe += timedelta(minutes=target_minutes)
    for candidate in (probe, probe + timedelta(days=1)):
        if previous_local < candidate <= current_local:
            return True
    return False


# --------------------------------------------------------------------------- resolve_tz
@pytest.mark.parametrize(
    ("name", "default", "expected"),
    [
        ("Europe/Berlin", "UTC", "Europe/Berlin"),
        ("  Asia/Shanghai ", "UTC", "Asia/Shanghai"),
        (None, "America/New_York", "America/New_York"),
        (False, "America/New_York", "America/New_York"),
        ("", "Europe/Paris", "Europe/Paris"),
        ("Mars/Olympus_Mons", "Europe/Paris", "Europe/Paris"),
        ("Europe", "Asia/Tokyo", "Asia/Tokyo"),
        ("../../etc/passwd", "Asia/Tokyo", "Asia/Tokyo"),
        ("Nope/Nope", "Also/Not", "UTC"),
        (None, None, "UTC"),
        (42, 17, "UTC"),
    ],
)
def test_resolve_tz_falls_back_and_never_raises(name, default, expected):
    assert resolve_tz(name, default) == expected


def test_unknown_zone_in_arithmetic_behaves_as_default_utc():
    start = dt(2024, 3, 29, 9)
    assert add_delay(start, 3, "days", "Not/AZone") == dt(2024, 4, 1, 9)
    assert hour_of_week(dt(2024, 1, 1, 5), None) == 5


def test_to_naive_utc_converts_aware_and_rejects_non_datetimes():
    aware = datetime(2024, 6, 1, 12, tzinfo=ZoneInfo("Europe/Berlin"))
    assert to_naive_utc(aware) == dt(2024, 6, 1, 10)
    assert to_naive_utc(dt(2024, 6, 1, 10)) == dt(2024, 6, 1, 10)
    with pytest.raises(TypeError, match="expected a datetime"):
        to_naive_utc("2024-06-01")


# --------------------------------------------------------------------------- add_delay
def test_absolute_units_are_plain_durations_across_dst():
    # 01:30 UTC on the Berlin spring-forward day; 1 h later is 02:30 UTC whatever the zone.
    start = dt(2024, 3, 31, 0, 30)
    assert add_delay(start, 1, "hours", "Europe/Berlin") == dt(2024, 3, 31, 1, 30)
    assert add_delay(start, 90, "minutes", "Europe/Berlin") == dt(2024, 3, 31, 2, 0)


def test_days_keep_local_wall_clock_over_spring_forward():
    start = utc_of(dt(2024, 3, 29, 10), "Europe/Berlin")  # Friday 10:00 CET = 09:00 UTC
    result = add_delay(start, 3, "days", "Europe/Berlin")
    assert result == dt(2024, 4, 1, 8)  # Monday 10:00 CEST
    assert to_local(result, "Europe/Berlin") == dt(2024, 4, 1, 10)
    assert result - start == timedelta(hours=71)


def test_days_keep_local_wall_clock_over_fall_back():
    start = utc_of(dt(2024, 10, 31, 18), "America/New_York")
    result = add_delay(start, 1, "weeks", "America/New_York")
    assert to_local(result, "America/New_York") == dt(2024, 11, 7, 18)
    assert result - start == timedelta(days=7, hours=1)


def test_day_landing_in_spring_forward_gap_moves_to_gap_end():
    start = utc_of(dt(2024, 3, 30, 2, 30), "Europe/Berlin")
    result = add_delay(start, 1, "days", "Europe/Berlin")
    # 02:30 does not exist on 31 March; the clock jumps from 02:00 CET to 03:00 CEST.
    assert to_local(result, "Europe/Berlin") == dt(2024, 3, 31, 3, 0)
    assert result == dt(2024, 3, 31, 1, 0)


def test_day_landing_in_fall_back_fold_takes_first_occurrence():
    start = utc_of(dt(2024, 10, 26, 2, 30), "Europe/Berlin")
    result = add_delay(start, 1, "days", "Europe/Berlin")
    assert result == dt(2024, 10, 27, 0, 30)  # 02:30 CEST, not 02:30 CET (01:30 UTC)


def test_lord_howe_half_hour_gap():
    # Lord Howe jumps from 02:00 (+10:30) to 02:30 (+11) on 6 October 2024.
    start = utc_of(dt(2024, 10, 5, 2, 15), "Australia/Lord_Howe")
    result = add_delay(start, 1, "days", "Australia/Lord_Howe")
    assert to_local(result, "Australia/Lord_Howe") == dt(2024, 10, 6, 2, 30)
    assert result - start == timedelta(hours=23, minutes=45)


def test_months_clamp_to_month_end_and_keep_local_time():
    start = utc_of(dt(2024, 1, 31, 9, 15), "Asia/Shanghai")
    assert to_local(add_delay(start, 1, "months", "Asia/Shanghai"), "Asia/Shanghai") == dt(
        2024, 2, 29, 9, 15
    )
    start = utc_of(dt(2024, 2, 15, 9), "Europe/Berlin")
    expected = utc_of(dt(2024, 4, 15, 9), "Europe/Berlin")
    assert add_delay(start, 2, "months", "Europe/Berlin") == expected


def test_zero_delay_is_identity_even_in_a_fold():
    second_occurrence = dt(2024, 10, 27, 1, 30)  # 02:30 CET, the second 02:30 in Berlin
    for unit in DELAY_UNITS:
        assert add_delay(second_occurrence, 0, unit, "Europe/Berlin") == second_occurrence


def test_apia_skipped_day_never_goes_backwards():
    # Samoa skipped 30 December 2011 (UTC-10 → UTC+14).
    start = utc_of(dt(2011, 12, 29, 10), "Pacific/Apia")
    result = add_delay(start, 1, "days", "Pacific/Apia")
    assert result >= start
    assert to_local(result, "Pacific/Apia") >= dt(2011, 12, 31)


@pytest.mark.parametrize(
    ("value", "unit", "message"),
    [
        (-1, "days", "whole number >= 0"),
        (1.5, "days", "whole number >= 0"),
        (True, "days", "whole number >= 0"),
        ("3", "days", "whole number >= 0"),
        (None, "days", "whole number >= 0"),
        (3, "fortnights", "delay unit must be one of minutes, hours, days, weeks, months"),
        (3, "Days", "delay unit must be one of"),
        (3, None, "delay unit must be one of"),
    ],
)
def test_add_delay_rejects_bad_input_clearly(value, unit, message):
    with pytest.raises(ValueError, match=message):
        add_delay(dt(2024, 1, 1), value, unit, "UTC")


@settings(max_examples=300)
@given(zone_and_instant(whole_minutes=False), st.integers(0, 400), st.sampled_from(DELAY_UNITS))
def test_add_delay_moves_forward_and_is_monotonic(zone_instant, value, unit):
    tz, start = zone_instant
    result = add_delay(start, value, unit, tz)
    assert result >= start
    assert add_delay(start, value + 1, unit, tz) >= result
    if unit in ("minutes", "hours"):
        assert result == start + timedelta(**{unit: value})


@settings(max_examples=300)
@given(zone_and_instant(), st.integers(1, 60), st.sampled_from(("days", "weeks", "months")))
def test_calendar_delay_keeps_wall_time_or_ends_the_gap(zone_instant, value, unit):
    tz, start = zone_instant
    result = add_delay(start, value, unit, tz)
    wanted = to_local(start, tz) + relativedelta(**{unit: value})
    first = utc_of(wanted, tz, fold=0)
    if to_local(first, tz) == wanted:
        # The wall time exists: it is kept, at its first occurrence.
        assert result == first
    else:
        # Skipped by a gap: the result is the instant the clock jumps past it.
        assert to_local(result, tz) > wanted
        assert to_local(result - timedelta(microseconds=1), tz) < wanted


# --------------------------------------------------------------------------- QuietHours
@pytest.mark.parametrize(
    ("start", "end", "inside", "outside"),
    [
        (21, 8, [21, 23.99, 0, 7.99], [8, 12, 20.99]),
        (21.5, 7.25, [21.5, 3, 7.2], [21.49, 7.25, 7.5]),
        (1, 5, [1, 4.99], [0.99, 5, 23]),
        (22, 24, [22, 23.99], [0, 21.99]),
        (0, 6, [0, 5.99], [6, 23.99]),
    ],
)
def test_quiet_hours_contains_half_open(start, end, inside, outside):
    quiet = QuietHours(start, end)
    assert quiet.active
    for hour in inside:
        assert quiet.contains(hour), hour
    for hour in outside:
        assert not quiet.contains(hour), hour


def test_quiet_hours_accepts_time_objects():
    quiet = QuietHours(21, 8)
    assert quiet.contains(time(23, 59, 59, 999999))
    assert not quiet.contains(time(8, 0))
    assert quiet.contains(time(7, 59, 59))


@pytest.mark.parametrize(("start", "end"), [(0, 0), (8, 8), (24, 24), (24, 0), (23.5, 23.5)])
def test_equal_bounds_mean_no_quiet_hours(start, end):
    quiet = QuietHours(start, end)
    assert not quiet.active
    assert not any(quiet.contains(hour / 4) for hour in range(96))
    when = dt(2024, 1, 1, 3)
    assert next_allowed(when, "Europe/Berlin", quiet) == when
    assert not is_quiet(when, "Europe/Berlin", quiet)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-1, 8, "start must be between 0 and 24"),
        (21, 24.5, "end must be between 0 and 24"),
        (0, 24, "cannot cover the whole day"),
        ("21", 8, "start must be a number of hours"),
        (21, None, "end must be a number of hours"),
        (float("nan"), 8, "start must be a number of hours"),
        (True, 8, "start must be a number of hours"),
    ],
)
def test_quiet_hours_validation(start, end, message):
    with pytest.raises(ValueError, match=message):
        QuietHours(start, end)


def test_quiet_hours_is_frozen_and_hashable():
    quiet = QuietHours(21, 8)
    assert quiet == QuietHours(21.0, 8.0)
    assert hash(quiet) == hash(QuietHours(21, 8))
    with pytest.raises(AttributeError):
        quiet.start = 3


# --------------------------------------------------------------------------- next_allowed
def test_next_allowed_moves_to_local_end_of_quiet_night():
    quiet = QuietHours(21, 8)
    when = utc_of(dt(2024, 6, 3, 22, 10), "Europe/Berlin")
    result = next_allowed(when, "Europe/Berlin", quiet)
    assert to_local(result, "Europe/Berlin") == dt(2024, 6, 4, 8)
    allowed = utc_of(dt(2024, 6, 3, 12), "Europe/Berlin")
    assert next_allowed(allowed, "Europe/Berlin", quiet) == allowed


def test_next_allowed_over_fall_back_night_is_one_hour_longer():
    quiet = QuietHours(21, 8)
    when = utc_of(dt(2024, 10, 26, 21), "Europe/Berlin")
    result = next_allowed(when, "Europe/Berlin", quiet)
    assert to_local(result, "Europe/Berlin") == dt(2024, 10, 27, 8)
    assert result - when == timedelta(hours=12)


def test_next_allowed_when_fall_back_returns_clock_to_before_quiet_start():
    # Quiet 02:30-05:00; at 03:00 CEST the clock goes back to 02:00 CET, outside the
    # quiet hours for half an hour: that is the first allowed instant.
    quiet = QuietHours(2.5, 5)
    when = utc_of(dt(2024, 10, 27, 2, 40), "Europe/Berlin")
    result = next_allowed(when, "Europe/Berlin", quiet)
    assert result == dt(2024, 10, 27, 1, 0)
    assert to_local(result, "Europe/Berlin") == dt(2024, 10, 27, 2, 0)


def test_next_allowed_when_quiet_end_is_skipped_by_gap():
    quiet = QuietHours(23, 2.5)
    when = utc_of(dt(2024, 3, 31, 1, 0), "Europe/Berlin")
    result = next_allowed(when, "Europe/Berlin", quiet)
    # 02:30 never happens that night: sending resumes when the clock jumps to 03:00.
    assert result == dt(2024, 3, 31, 1, 0)
    assert to_local(result, "Europe/Berlin") == dt(2024, 3, 31, 3, 0)


def test_next_allowed_when_gap_swallows_the_only_allowed_slot():
    # Allowed only 02:00-02:15; on 27 March 1988 Berlin skipped 02:00-03:00.
    quiet = QuietHours(2.25, 2.0)
    when = utc_of(dt(1988, 3, 26, 23, 0), "Europe/Berlin")
    result = next_allowed(when, "Europe/Berlin", quiet)
    assert to_local(result, "Europe/Berlin") == dt(1988, 3, 28, 2, 0)


def test_next_allowed_chatham_quarter_hour_offset():
    quiet = QuietHours(21, 8)
    when = utc_of(dt(2024, 4, 6, 23), "Pacific/Chatham")
    result = next_allowed(when, "Pacific/Chatham", quiet)
    assert to_local(result, "Pacific/Chatham") == dt(2024, 4, 7, 8)


def test_next_allowed_without_quiet_hours_is_identity():
    when = dt(2024, 1, 1, 3, 4, 5, 6)
    assert next_allowed(when, "Europe/Berlin", None) == when
    assert not is_quiet(when, "Europe/Berlin", None)


def oracle_next_allowed(when, tz, quiet):
    moment = when
    for _ in range(3 * 24 * 60):
        if not quiet.contains(local_minute_of_day(moment, tz) / 60):
            return moment
        moment += MINUTE
    raise AssertionError("no allowed minute within three days")


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(zone_and_instant(), quiet_hours())
def test_next_allowed_matches_minute_by_minute_oracle(zone_instant, quiet):
    tz, when = zone_instant
    assert next_allowed(when, tz, quiet) == oracle_next_allowed(when, tz, quiet)


@settings(max_examples=400)
@given(zone_and_instant(whole_minutes=False), quiet_hours())
def test_next_allowed_invariants(zone_instant, quiet):
    tz, when = zone_instant
    result = next_allowed(when, tz, quiet)
    assert result >= when
    assert not is_quiet(result, tz, quiet)
    assert next_allowed(result, tz, quiet) == result
    if not is_quiet(when, tz, quiet):
        assert result == when
    else:
        # The first allowed instant: just before it, it was still quiet.
        assert is_quiet(result - timedelta(microseconds=1), tz, quiet)
        # Under a day, unless a DST gap swallowed the only allowed slot of a night.
        assert result - when < timedelta(days=2, hours=2)


# --------------------------------------------------------------------------- at_time_of_day
def test_at_time_of_day_same_day_or_next():
    tz = "America/New_York"
    morning = utc_of(dt(2024, 6, 3, 7, 0), tz)
    assert to_local(at_time_of_day(morning, 9.5, tz), tz) == dt(2024, 6, 3, 9, 30)
    evening = utc_of(dt(2024, 6, 3, 18, 0), tz)
    assert to_local(at_time_of_day(evening, 9.5, tz), tz) == dt(2024, 6, 4, 9, 30)
    exact = utc_of(dt(2024, 6, 3, 9, 30), tz)
    assert at_time_of_day(exact, 9.5, tz) == exact


def test_at_time_of_day_in_gap_returns_gap_end():
    result = at_time_of_day(dt(2024, 3, 30, 12), 2.5, "Europe/Berlin")
    assert result == dt(2024, 3, 31, 1, 0)
    assert to_local(result, "Europe/Berlin") == dt(2024, 3, 31, 3, 0)


def test_at_time_of_day_in_fold():
    tz = "Europe/Berlin"
    # From before the fold: first occurrence of 02:30.
    assert at_time_of_day(dt(2024, 10, 26, 22), 2.5, tz) == dt(2024, 10, 27, 0, 30)
    # From between the two occurrences: the second one is the first at or after ``when``.
    assert at_time_of_day(dt(2024, 10, 27, 0, 45), 2.5, tz) == dt(2024, 10, 27, 1, 30)


def test_at_time_of_day_float_time_rounding():
    # float_time stores 08:20 as 8.333333…; it must mean 08:20:00 exactly.
    result = at_time_of_day(dt(2024, 1, 1), 8 + 1 / 3, "UTC")
    assert result == dt(2024, 1, 1, 8, 20)


@pytest.mark.parametrize("hour", [-0.5, 24, 25, float("inf"), "9", None])
def test_at_time_of_day_rejects_bad_hour(hour):
    with pytest.raises(ValueError, match="time of day"):
        at_time_of_day(dt(2024, 1, 1), hour, "UTC")


def oracle_at_time_of_day(when, minutes, tz):
    moment = when
    previous = None
    for _ in range(3 * 24 * 60):
        local = to_local(moment, tz)
        if local.hour * 60 + local.minute == minutes:
            return moment
        jumped = previous is not None and local - previous > MINUTE
        if jumped and wall_reached(previous, local, minutes):
            return moment
        previous = local
        moment += MINUTE
    raise AssertionError("time of day not reached within three days")


@settings(max_examples=250, suppress_health_check=[HealthCheck.too_slow])
@given(zone_and_instant(), st.integers(0, 24 * 4 - 1))
def test_at_time_of_day_matches_oracle(zone_instant, quarters):
    tz, when = zone_instant
    hour = quarters / 4
    assert at_time_of_day(when, hour, tz) == oracle_at_time_of_day(when, quarters * 15, tz)


# --------------------------------------------------------------------------- compute_send_time
def test_compute_send_time_pipeline_example():
    tz = "Europe/Berlin"
    base = utc_of(dt(2024, 3, 29, 20, 0), tz)  # Friday 20:00 CET
    quiet = QuietHours(21, 8)
    # 1 day → Saturday 20:00, at 22:00 → Saturday 22:00 (quiet) → Sunday 08:00 CEST.
    result = compute_send_time(base, 1, "days", tz, time_of_day=22, quiet=quiet)
    assert to_local(result, tz) == dt(2024, 3, 31, 8, 0)
    assert result == dt(2024, 3, 31, 6, 0)


def test_compute_send_time_odoo_false_time_of_day_means_none():
    base = dt(2024, 1, 1, 10)
    assert compute_send_time(base, 2, "hours", "UTC", time_of_day=False) == dt(2024, 1, 1, 12)
    assert compute_send_time(base, 2, "hours", "UTC", time_of_day=0) == dt(2024, 1, 2, 0)


@settings(max_examples=400)
@given(
    zone_and_instant(whole_minutes=False),
    st.integers(0, 100),
    st.sampled_from(DELAY_UNITS),
    st.none() | st.integers(0, 95).map(lambda quarters: quarters / 4),
    st.none() | quiet_hours(),
)
def test_compute_send_time_invariants(zone_instant, value, unit, time_of_day, quiet):
    tz, base = zone_instant
    result = compute_send_time(base, value, unit, tz, time_of_day=time_of_day, quiet=quiet)
    assert result >= base
    assert result >= add_delay(base, value, unit, tz)
    if unit in ("minutes", "hours"):
        assert result >= base + timedelta(**{unit: value})
    assert not is_quiet(result, tz, quiet)
    assert next_allowed(result, tz, quiet) == result
    assert compute_send_time(base, value, unit, tz, time_of_day=time_of_day, quiet=quiet) == result


# --------------------------------------------------------------------------- best time
def test_hour_of_week_is_local():
    assert hour_of_week(dt(2024, 1, 1, 0), "UTC") == 0  # Monday
    assert hour_of_week(dt(2024, 1, 7, 23, 59), "UTC") == 167  # Sunday 23:59
    # Monday 00:30 UTC is still Sunday 19:30 in New York.
    assert hour_of_week(dt(2024, 1, 1, 0, 30), "America/New_York") == 6 * 24 + 19
    assert hour_of_week(dt(2024, 1, 1, 0, 30), "Asia/Kolkata") == 6  # 06:00 IST


def weights_peaking_at(*hours, value=10.0):
    weights = [1.0] * 168
    for hour in hours:
        weights[hour] = value
    return weights


def test_best_time_picks_highest_weight_hour_start():
    due = dt(2024, 1, 1, 9, 17)  # Monday 09:17 UTC
    weights = weights_peaking_at(1 * 24 + 14)  # Tuesday 14:00
    assert best_time_in_window(due, 48, "UTC", weights) == dt(2024, 1, 2, 14, 0)


def test_best_time_outside_window_keeps_due_hour_on_ties():
    due = dt(2024, 1, 1, 9, 17)
    weights = weights_peaking_at(3 * 24 + 14)  # Thursday: outside a 24 h window
    assert best_time_in_window(due, 24, "UTC", weights) == due


def test_best_time_ties_go_to_earliest():
    due = dt(2024, 1, 1, 6)
    weights = weights_peaking_at(10, 20, 24 + 10)
    assert best_time_in_window(due, 48, "UTC", weights) == dt(2024, 1, 1, 10)


def test_best_time_uses_local_hours_with_half_hour_offset():
    tz = "Asia/Kolkata"  # +05:30: local hour boundaries are at :30 UTC
    due = dt(2024, 1, 1, 0, 0)  # Monday 05:30 IST
    result = best_time_in_window(due, 24, tz, weights_peaking_at(12))
    assert result == dt(2024, 1, 1, 6, 30)
    assert to_local(result, tz) == dt(2024, 1, 1, 12, 0)


def test_best_time_skips_quiet_peak():
    quiet = QuietHours(21, 8)
    due = dt(2024, 1, 1, 18)
    weights = weights_peaking_at(22, value=50.0)  # Monday 22:00 is quiet
    weights[24 + 9] = 20.0  # Tuesday 09:00
    result = best_time_in_window(due, 24, "UTC", weights, quiet=quiet)
    assert result == dt(2024, 1, 2, 9)


def test_best_time_fully_quiet_window_falls_back_to_next_allowed():
    quiet = QuietHours(21, 8)
    due = dt(2024, 1, 1, 22)
    result = best_time_in_window(due, 3, "UTC", weights_peaking_at(23), quiet=quiet)
    assert result == dt(2024, 1, 2, 8)


def test_best_time_without_weights_is_due():
    due = dt(2024, 1, 1, 22, 5)
    assert best_time_in_window(due, 24, "UTC", None) == due


def test_best_time_rejects_bad_weights_and_window():
    with pytest.raises(ValueError, match="168 values"):
        best_time_in_window(dt(2024, 1, 1), 24, "UTC", [1.0] * 24)
    with pytest.raises(ValueError, match="finite numbers"):
        best_time_in_window(dt(2024, 1, 1), 24, "UTC", [float("nan")] * 168)
    with pytest.raises(ValueError, match="window"):
        best_time_in_window(dt(2024, 1, 1), -1, "UTC", [1.0] * 168)


def oracle_best_time(due, window_hours, tz, weights, quiet):
    stop = due + timedelta(hours=window_hours)
    best = None
    moment = due
    while moment <= stop:
        allowed = quiet is None or not is_quiet(moment, tz, quiet)
        if allowed:
            weight = weights[hour_of_week(moment, tz)]
            if best is None or weight > best[1]:
                best = (moment, weight)
        moment += MINUTE
    return best[0] if best else next_allowed(due, tz, quiet)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    zone_and_instant(),
    st.integers(0, 30),
    st.lists(st.integers(0, 5).map(float), min_size=168, max_size=168),
    st.none() | quiet_hours(),
)
def test_best_time_matches_oracle(zone_instant, window_hours, weights, quiet):
    tz, due = zone_instant
    result = best_time_in_window(due, window_hours, tz, weights, quiet=quiet)
    assert result == oracle_best_time(due, window_hours, tz, weights, quiet)
    assert not is_quiet(result, tz, quiet)
    assert result >= due
