"""Send-time arithmetic: delays, time of day, quiet hours and best-time windows.

Conventions (shared by every function here):

* Instants are **naive UTC** ``datetime`` objects, as Odoo stores them. An aware datetime is
  accepted and converted; results are always naive UTC.
* Time zones are IANA names (``"Europe/Berlin"``). A missing or unknown name falls back to
  the given default, then to ``"UTC"``: a bad ``res.partner.tz`` must never stop a send.
* Times of day are float hours as Odoo's ``float_time`` widget stores them (``21.5`` is
  21:30), rounded to the second.

Local wall-clock times that do not exist or exist twice are resolved the same way
everywhere:

* **Gap** (spring forward, e.g. 02:30 on the night Berlin jumps from 02:00 to 03:00): the
  time resolves to the instant the gap ends (03:00 local) -- the first moment the wall
  clock has passed the wanted time, so nothing is ever scheduled earlier than asked.
* **Fold** (fall back, e.g. 02:30 happens twice): the first occurrence is taken, except
  where a search must return an instant at or after a given one and only the second
  occurrence qualifies.
"""

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone
from functools import lru_cache
from numbers import Real
from zoneinfo import ZoneInfo

from dateutil.relativedelta import relativedelta

DELAY_UNITS = ("minutes", "hours", "days", "weeks", "months")
HOURS_PER_WEEK = 168

# datetime.UTC needs Python 3.11; Odoo 18 still supports 3.10.
_UTC = timezone.utc  # noqa: UP017
_DAY = timedelta(days=1)
_TINY = timedelta(microseconds=1)
# Each loop step below crosses one quiet interval or one offset change; a handful is
# always enough, the bound only guards against a corrupt time-zone database.
_MAX_STEPS = 64


# --------------------------------------------------------------------------- time zones
@lru_cache(maxsize=2048)
def _load_zone(name):
    try:
        return ZoneInfo(name)
    except (ValueError, KeyError, OSError, TypeError, UnicodeError):
        # ZoneInfoNotFoundError is a KeyError; malformed keys raise ValueError and
        # directory names (e.g. "Europe") an OSError.
        return None


def _valid_tz_name(name):
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    return name if _load_zone(name) is not None else None


def resolve_tz(name, default="UTC"):
    """Return ``name`` if it is a valid IANA time zone, else ``default`` if valid, else "UTC".

    Never raises: partners often have no or an outdated time zone.
    """
    return _valid_tz_name(name) or _valid_tz_name(default) or "UTC"


def _zone(tz):
    if isinstance(tz, ZoneInfo):
        return tz
    # Without any tz database even "UTC" cannot load; the fixed UTC tzinfo is equivalent.
    return _load_zone(resolve_tz(tz)) or _UTC


def to_naive_utc(when):
    """``when`` as a naive UTC datetime (aware values are converted, naive ones kept)."""
    if not isinstance(when, datetime):
        raise TypeError(f"expected a datetime, got {type(when).__name__}: {when!r}")
    if when.tzinfo is not None and when.utcoffset() is not None:
        return when.astimezone(_UTC).replace(tzinfo=None)
    return when.replace(tzinfo=None)


def _offset(instant, zone):
    """UTC offset of ``zone`` at the naive-UTC ``instant``."""
    return instant.replace(tzinfo=_UTC).astimezone(zone).utcoffset()


def to_local(when, tz):
    """The naive local wall-clock time in ``tz`` of the naive-UTC instant ``when``."""
    when = to_naive_utc(when)
    return when + _offset(when, _zone(tz))


def _time_of_day(local):
    return local - local.replace(hour=0, minute=0, second=0, microsecond=0)


def _next_change(start, stop, zone):
    """First instant in (start, stop] where the offset differs from the one at ``start``.

    ``None`` when the offset at ``stop`` equals the one at ``start``: offset changes are
    months apart, and callers never look further than about a day ahead.
    """
    if stop <= start:
        return None
    before = _offset(start, zone)
    if _offset(stop, zone) == before:
        return None
    low, high = start, stop
    while high - low > _TINY:
        middle = low + (high - low) // 2
        if _offset(middle, zone) == before:
            low = middle
        else:
            high = middle
    return high


def _wall_to_utc(local, zone):
    """Naive UTC instant of the naive local wall time ``local`` (gap → its end, fold → first)."""
    first = local.replace(tzinfo=zone, fold=0).astimezone(_UTC).replace(tzinfo=None)
    if first + _offset(first, zone) == local:
        return first
    # In a gap fold=0 and fold=1 map to instants on either side of the transition.
    second = local.replace(tzinfo=zone, fold=1).astimezone(_UTC).replace(tzinfo=None)
    low, high = min(first, second), max(first, second)
    return _next_change(low, high, zone) or high


def _hours_to_timedelta(hours, what):
    if isinstance(hours, bool) or not isinstance(hours, Real) or not math.isfinite(hours):
        raise ValueError(f"{what} must be a number of hours, got {hours!r}")
    return timedelta(seconds=round(float(hours) * 3600))


# --------------------------------------------------------------------------- delays
def add_delay(start, value, unit, tz="UTC"):
    """``start`` plus ``value`` ``unit`` (naive UTC in, naive UTC out).

    ``minutes`` and ``hours`` are absolute durations. ``days``, ``weeks`` and ``months``
    are calendar steps that keep the local wall-clock time in ``tz``: "3 days" after
    Friday 10:00 is Monday 10:00 local even across a DST change (months clamp to the
    month's last day, as ``relativedelta`` does). A wall time skipped by a DST gap moves
    forward to the end of the gap; a repeated one takes its first occurrence.

    Raises ``ValueError`` unless ``value`` is an int >= 0 and ``unit`` is in DELAY_UNITS.
    """
    start = to_naive_utc(start)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"delay must be a whole number >= 0, got {value!r}")
    if unit not in DELAY_UNITS:
        raise ValueError(f"delay unit must be one of {', '.join(DELAY_UNITS)}; got {unit!r}")
    if value == 0:
        return start
    if unit in ("minutes", "hours"):
        return start + timedelta(**{unit: value})
    zone = _zone(tz)
    local = start + _offset(start, zone)
    result = _wall_to_utc(local + relativedelta(**{unit: value}), zone)
    # Calendar steps only move forward; the guard covers zones whose offset once jumped
    # by a whole day (Pacific/Apia, 2011), where "1 day later" is otherwise ambiguous.
    return max(result, start)


# --------------------------------------------------------------------------- quiet hours
@dataclass(frozen=True)
class QuietHours:
    """Local hours during which nothing customer-facing is sent.

    ``start`` and ``end`` are float hours in [0, 24] (21.5 = 21:30). The interval is
    half-open, [start, end): at ``end`` sending resumes. ``start > end`` wraps midnight
    (21 → 8 is the night); ``start == end`` means no quiet hours. A span covering the whole
    day (0 → 24) is rejected: nothing could ever be sent.
    """

    start: float
    end: float

    def __post_init__(self):
        for name in ("start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise ValueError(f"quiet hours {name} must be a number of hours, got {value!r}")
            if not 0 <= value <= 24:
                raise ValueError(
                    f"quiet hours {name} must be between 0 and 24 (00:00-24:00), got {value!r}"
                )
        start = _hours_to_timedelta(self.start, "quiet hours start")
        end = _hours_to_timedelta(self.end, "quiet hours end")
        if start == end:
            span = timedelta(0)
        else:
            span = end - start if end > start else end - start + _DAY
        if span >= _DAY:
            raise ValueError("quiet hours cannot cover the whole day: nothing could be sent")
        # Derived values, computed once (the dataclass is frozen, hence object.__setattr__).
        object.__setattr__(self, "_start_td", start % _DAY)
        object.__setattr__(self, "_end_td", end % _DAY)
        object.__setattr__(self, "_span_td", span)

    @property
    def active(self):
        """True when the quiet interval is not empty."""
        return self._span_td > timedelta(0)

    def _contains_td(self, time_of_day):
        return (time_of_day - self._start_td) % _DAY < self._span_td

    def contains(self, local_time_of_day):
        """Whether a local time of day (float hours or ``datetime.time``) is quiet."""
        if isinstance(local_time_of_day, time):
            t = local_time_of_day
            value = timedelta(
                hours=t.hour, minutes=t.minute, seconds=t.second, microseconds=t.microsecond
            )
        else:
            value = _hours_to_timedelta(local_time_of_day, "time of day") % _DAY
        return self._contains_td(value)


def is_quiet(when, tz, quiet):
    """Whether the naive-UTC instant ``when`` falls in ``quiet`` hours local to ``tz``."""
    if quiet is None or not quiet.active:
        return False
    return quiet._contains_td(_time_of_day(to_local(when, tz)))


def next_allowed(when, tz, quiet):
    """The first instant >= ``when`` outside ``quiet`` hours in ``tz`` (``when`` if allowed).

    DST-safe: the search walks constant-offset stretches, so a quiet night that a DST
    change shortens, lengthens or interrupts ends exactly when the local clock leaves it.
    """
    when = to_naive_utc(when)
    if quiet is None or not quiet.active:
        return when
    zone = _zone(tz)
    end = quiet._end_td
    current = when
    for _step in range(_MAX_STEPS):
        offset = _offset(current, zone)
        time_of_day = _time_of_day(current + offset)
        if not quiet._contains_td(time_of_day):
            return current
        # At a constant offset the clock reads ``end`` after this wait; an offset change
        # before then restarts the reasoning at the change.
        leave = current + (end - time_of_day) % _DAY
        current = _next_change(current, leave, zone) or leave
    return current


def at_time_of_day(when, hour, tz):
    """The first instant >= ``when`` at which the local clock in ``tz`` reads ``hour``.

    ``hour`` is a float in [0, 24). If a DST gap skips that time, the end of the gap is
    returned (the moment the clock passes it).
    """
    when = to_naive_utc(when)
    target = _hours_to_timedelta(hour, "time of day")
    if not timedelta(0) <= target < _DAY:
        raise ValueError(f"time of day must be in [0, 24), got {hour!r}")
    zone = _zone(tz)
    current = when
    for _step in range(_MAX_STEPS):
        offset = _offset(current, zone)
        wait = (target - _time_of_day(current + offset)) % _DAY
        reach = current + wait
        change = _next_change(current, reach, zone)
        if change is None:
            return reach
        jump = _offset(change, zone) - offset
        # A forward jump whose landing wall time is at or past the wanted one skipped it.
        if jump > timedelta(0) and change + jump >= reach:
            return change
        current = change
    return current


def compute_send_time(base, delay_value, delay_unit, tz, *, time_of_day=None, quiet=None):
    """When a step scheduled from ``base`` should go out (naive UTC).

    ``add_delay`` first, then (if ``time_of_day`` is set) the next moment the local clock
    shows that time, then the first moment outside ``quiet`` hours. Each stage only
    moves forward, so the result is never before ``base`` plus the delay.
    """
    tz = resolve_tz(tz)
    when = add_delay(base, delay_value, delay_unit, tz)
    # Odoo returns False for an empty float field; treat it like None, not like midnight.
    if time_of_day is not None and time_of_day is not False:
        when = at_time_of_day(when, time_of_day, tz)
    return next_allowed(when, tz, quiet)


# --------------------------------------------------------------------------- best time
def hour_of_week(when, tz):
    """Local hour of the week of ``when`` in ``tz``: 0 = Monday 00:00-00:59 … 167."""
    local = to_local(when, tz)
    return local.weekday() * 24 + local.hour


def _validated_weights(weights):
    values = list(weights)
    if len(values) != HOURS_PER_WEEK:
        raise ValueError(f"hour-of-week weights need {HOURS_PER_WEEK} values, got {len(values)}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"hour-of-week weights must be finite numbers, got {value!r}")
    return values


def best_time_in_window(due, window_hours, tz, hour_of_week_weights, quiet=None):
    """The best instant in [due, due + window_hours] to send (naive UTC).

    Best means the local hour of the week (see ``hour_of_week``) with the highest weight;
    ties go to the earliest. The instant returned is the earliest non-quiet moment of that
    hour inside the window. Without weights, or when the whole window is quiet, the answer
    is ``next_allowed(due)``.
    """
    due = to_naive_utc(due)
    if hour_of_week_weights is None:
        return next_allowed(due, tz, quiet)
    weights = _validated_weights(hour_of_week_weights)
    if (
        isinstance(window_hours, bool)
        or not isinstance(window_hours, Real)
        or not math.isfinite(window_hours)
        or window_hours < 0
    ):
        raise ValueError(f"best-time window must be a number of hours >= 0, got {window_hours!r}")
    tz = resolve_tz(tz)
    zone = _zone(tz)
    stop = due + timedelta(hours=window_hours)
    best, best_weight = None, None
    piece = due
    # Walk the window one local hour (or up to an offset change) at a time: within such a
    # piece the hour of the week is constant, so its earliest allowed instant represents it.
    while piece <= stop:
        local = piece + _offset(piece, zone)
        next_hour = local.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        boundary = piece + (next_hour - local)
        piece_end = _next_change(piece, boundary, zone) or boundary
        candidate = next_allowed(piece, tz, quiet)
        if candidate < piece_end and candidate <= stop:
            weight = weights[hour_of_week(candidate, zone)]
            if best is None or weight > best_weight:
                best, best_weight = candidate, weight
        piece = piece_end
    return best if best is not None else next_allowed(due, tz, quiet)


__all__ = [
    "DELAY_UNITS",
    "HOURS_PER_WEEK",
    "QuietHours",
    "add_delay",
    "at_time_of_day",
    "best_time_in_window",
    "compute_send_time",
    "hour_of_week",
    "is_quiet",
    "next_allowed",
    "resolve_tz",
    "to_local",
    "to_naive_utc",
]
