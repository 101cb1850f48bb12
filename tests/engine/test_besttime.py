"""Best time: per-customer hour-of-week preference shrunk toward the store's pattern."""

from datetime import datetime, timedelta

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import besttime
from engine.schedule import QuietHours, best_time_in_window, hour_of_week, is_quiet, to_local

MONDAY = datetime(2026, 1, 5)  # a Monday


def how(day, hour):
    """Hour of the week: day 0 = Monday."""
    return day * 24 + hour


def store_peaked_at(hour):
    """A store whose customers engage most at ``hour``, as stores do: spread over the
    week, the best hour holding a few per cent of the facts."""
    counts = np.ones(168)
    counts[hour] += 12
    return besttime.store_pattern(counts)


STORE = store_peaked_at(how(2, 10))  # Wednesday 10:00


def test_smoothing_preserves_mass_and_spreads_to_neighbours():
    matrix = besttime.smoothing_matrix()
    assert matrix.sum(axis=1) == pytest.approx(np.ones(168))
    spread = besttime.smooth(besttime.histogram([how(1, 19)]))
    assert spread.sum() == pytest.approx(1.0)
    assert spread[how(1, 19)] == spread.max()
    assert spread[how(1, 18)] == pytest.approx(spread[how(1, 20)])
    assert spread[how(1, 18)] > spread[how(1, 16)] > 0
    # Day pooling: the same hour on another day gets something, a distant hour nothing.
    assert spread[how(4, 19)] > 0
    assert spread[how(4, 7)] == 0
    # The week wraps: Sunday 23:00 neighbours Monday 00:00.
    assert besttime.smooth(besttime.histogram([167]))[0] > 0
    with pytest.raises(ValueError):
        besttime.smoothing_matrix(day_pooling=1.5)


def test_no_history_uses_the_store_pattern():
    empty = np.zeros(168)
    assert besttime.best_hour(empty, STORE) == -1
    assert besttime.posterior(empty, STORE) == pytest.approx(STORE)
    assert besttime.weights_for({}, STORE) == pytest.approx(tuple(STORE))
    # A store without any history either: no preference at all.
    assert besttime.weights_for({}, None) is None
    uniform = besttime.store_pattern(empty)
    assert uniform == pytest.approx(np.full(168, 1 / 168))


def test_rich_history_wins_over_the_store():
    counts = besttime.histogram([how(1, 19)] * 30 + [how(3, 19)] * 10 + [how(5, 11)] * 5)
    assert besttime.best_hour(counts, STORE) == how(1, 19)


def test_thin_history_is_shrunk_toward_the_store():
    one = besttime.histogram([how(5, 23)])
    weights = besttime.posterior(one, STORE)
    kappa = besttime.DEFAULT_PRIOR_STRENGTH
    # Total variation from the store's pattern is at most the customer's share 1/(1+kappa).
    assert 0.5 * np.abs(weights - STORE).sum() <= 1 / (1 + kappa) + 1e-12
    # The more facts, the more the customer's own hour weighs.
    shares = [
        besttime.posterior(besttime.histogram([how(5, 23)] * n), STORE)[how(5, 23)]
        for n in (1, 3, 10, 100)
    ]
    assert shares == sorted(shares) and shares[-1] > 0.2
    # Weak evidence for an hour the store already likes keeps the store's best hour.
    assert besttime.best_hour(besttime.histogram([how(2, 10)]), STORE) == how(2, 10)


def test_prior_strength_governs_shrinkage():
    counts = besttime.histogram([how(0, 7)] * 2)
    weak = besttime.posterior(counts, STORE, prior_strength=0.5)
    strong = besttime.posterior(counts, STORE, prior_strength=50)
    assert weak[how(0, 7)] > strong[how(0, 7)]
    assert np.argmax(strong) == how(2, 10)
    with pytest.raises(ValueError):
        besttime.posterior(counts, STORE, prior_strength=0)


def test_stacked_histories():
    stack = np.stack([np.zeros(168), besttime.histogram([how(6, 9)] * 20)])
    assert besttime.best_hour(stack, STORE).tolist() == [-1, how(6, 9)]
    assert besttime.posterior(stack, STORE).sum(axis=1) == pytest.approx([1, 1])


def test_sparse_round_trip_and_bad_input():
    counts = besttime.histogram([3, 3, 100], weights=[1.0, 0.5, 2.0])
    stored = besttime.sparse(counts)
    assert stored == {"3": 1.5, "100": 2.0}
    assert besttime.dense(stored) == pytest.approx(counts)
    assert besttime.dense({"x": 1, "500": 2, "4": "nan", "5": -1, "6": None}).sum() == 0
    assert besttime.dense(None).sum() == 0
    with pytest.raises(ValueError):
        besttime.histogram([168])


def test_local_time_of_the_customer():
    # 01:30 UTC on a Tuesday is 09:30 on Tuesday in Shanghai and 20:30 Monday in New York.
    when = MONDAY + timedelta(days=1, hours=1, minutes=30)
    shanghai = besttime.histogram_from_times([("open", when)], "Asia/Shanghai")
    new_york = besttime.histogram_from_times([("open", when)], "America/New_York")
    assert np.flatnonzero(shanghai).tolist() == [how(1, 9)]
    assert np.flatnonzero(new_york).tolist() == [how(0, 20)]
    # Kinds have weights; unknown kinds count for nothing.
    mixed = besttime.histogram_from_times(
        [("order", when), ("click", when), ("bounce", when)], "UTC"
    )
    assert mixed.sum() == pytest.approx(1.5)


def test_dst_keeps_the_local_hour():
    """A Berlin customer opening at 08:00 local in winter (07:00 UTC) and in summer (06:00
    UTC) has one habit, and is scheduled at 08:00 local on both sides of the change."""
    winter = [("open", datetime(2026, 3, d, 7, 5)) for d in (2, 9, 16, 23)]  # Mondays, CET
    summer = [("open", datetime(2026, 3, 30, 6, 5)), ("open", datetime(2026, 4, 6, 6, 5))]  # CEST
    counts = besttime.histogram_from_times(winter + summer, "Europe/Berlin")
    assert np.flatnonzero(counts).tolist() == [how(0, 8)]
    weights = besttime.weights_for(besttime.sparse(counts), STORE)
    # Due Sunday 29 March 2026 12:00 UTC, the day Berlin springs forward; 48 h window.
    due = datetime(2026, 3, 29, 12, 0)
    chosen = best_time_in_window(due, 48, "Europe/Berlin", weights)
    assert chosen == datetime(2026, 3, 30, 6, 0)
    assert to_local(chosen, "Europe/Berlin").hour == 8
    # And in autumn, when the clocks go back: 08:00 local is 07:00 UTC again.
    due = datetime(2026, 10, 25, 0, 30)
    chosen = best_time_in_window(due, 48, "Europe/Berlin", weights)
    assert chosen == datetime(2026, 10, 26, 7, 0)


def test_best_time_respects_quiet_hours():
    """A late reader's favourite hour is inside the store's quiet hours: the message goes
    at their best allowed hour of the window, never in quiet hours."""
    counts = besttime.histogram(
        [how(d, 22) for d in range(7)] * 4 + [how(d, 20) for d in range(7)] * 2
    )
    weights = besttime.weights_for(besttime.sparse(counts), STORE)
    quiet = QuietHours(21, 8)
    due = MONDAY + timedelta(hours=9)  # Monday 09:00 UTC
    unconstrained = best_time_in_window(due, 24, "UTC", weights)
    assert unconstrained == MONDAY + timedelta(hours=22)
    chosen = best_time_in_window(due, 24, "UTC", weights, quiet=quiet)
    assert not is_quiet(chosen, "UTC", quiet)
    assert chosen == MONDAY + timedelta(hours=20)
    # A customer whose every habit is quiet falls back to the store's pattern.
    owl = besttime.weights_for(besttime.sparse(besttime.histogram([how(0, 2)] * 30)), STORE)
    assert best_time_in_window(due, 24, "UTC", owl, quiet=quiet) == MONDAY + timedelta(hours=10)


@settings(max_examples=150, deadline=None)
@given(
    hours=st.lists(st.integers(0, 167), max_size=40),
    start_hour=st.integers(0, 24 * 14),
    window=st.integers(1, 72),
    tz=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai",
                        "Australia/Sydney"]),
)
def test_chosen_time_is_in_window_and_allowed(hours, start_hour, window, tz):
    weights = besttime.weights_for(besttime.sparse(besttime.histogram(hours)), STORE)
    quiet = QuietHours(21, 8)
    due = datetime(2026, 3, 20) + timedelta(hours=start_hour)
    chosen = best_time_in_window(due, window, tz, weights, quiet=quiet)
    assert chosen >= due
    if chosen <= due + timedelta(hours=window):
        assert not is_quiet(chosen, tz, quiet)
        # No allowed hour of the window weighs more than the chosen one.
        best_weight = weights[hour_of_week(chosen, tz)]
        probe = due
        while probe <= due + timedelta(hours=window):
            if not is_quiet(probe, tz, quiet):
                assert weights[hour_of_week(probe, tz)] <= best_weight + 1e-12
            probe += timedelta(minutes=30)
