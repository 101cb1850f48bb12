"""Engagement score: decay with a half-life, the floor at 0, threshold crossings."""

from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.scoring import (
    DEFAULT_POINTS,
    KINDS,
    Fact,
    ThresholdWatch,
    contributions,
    crossed,
    crossings,
    decay,
    decay_factor,
    raw_score,
    score,
)

T0 = datetime(2026, 1, 1)
POINTS = dict(DEFAULT_POINTS)


def days(n):
    return timedelta(days=n)


def test_half_life_halves():
    assert decay_factor(0, 30) == 1.0
    assert decay_factor(30, 30) == pytest.approx(0.5)
    assert decay_factor(90, 30) == pytest.approx(0.125)
    assert decay(40.0, 15, 15) == pytest.approx(20.0)
    # A zero or negative age does not grow a score.
    assert decay_factor(-5, 30) == 1.0


@pytest.mark.parametrize("half_life", [0, -1, float("nan"), float("inf"), True, "30"])
def test_half_life_must_be_positive(half_life):
    with pytest.raises(ValueError, match="half-life"):
        decay_factor(1, half_life)


def test_score_sums_decayed_points():
    facts = [Fact("click", T0), Fact("order", T0 + days(30)), Fact("open", T0 + days(60))]
    as_of = T0 + days(60)
    expected = 3 * 0.25 + 10 * 0.5 + 1
    assert score(facts, as_of, 30, POINTS) == pytest.approx(expected)


def test_future_facts_and_unknown_kinds_do_not_count():
    facts = [Fact("order", T0 + days(1)), Fact("mystery", T0)]
    assert score(facts, T0, 30, POINTS) == 0.0
    assert [c.points for c in contributions(facts, T0 + days(1), 30, POINTS)] == [10.0, 0.0]


def test_negative_points_floor_at_zero():
    facts = [Fact("click", T0), Fact("unsubscribe", T0 + days(1))]
    as_of = T0 + days(1)
    assert raw_score(facts, as_of, 30, POINTS) < 0
    assert score(facts, as_of, 30, POINTS) == 0.0


def test_every_kind_has_default_points():
    assert set(DEFAULT_POINTS) == set(KINDS)
    assert DEFAULT_POINTS["unsubscribe"] < 0 and DEFAULT_POINTS["bounce"] < 0


def test_decay_matches_recomputation():
    """Advancing a score analytically equals recomputing it from the history."""
    facts = [Fact("click", T0), Fact("product_view", T0 + days(3)), Fact("order", T0 + days(4))]
    at = T0 + days(5)
    later = at + days(17.5)
    assert decay(score(facts, at, 21, POINTS), 17.5, 21) == pytest.approx(
        score(facts, later, 21, POINTS)
    )


def test_crossing():
    assert crossed(49.9, 50.0, 50)
    assert not crossed(50.0, 60.0, 50)  # already above: no second firing
    assert not crossed(10.0, 49.9, 50)
    assert crossings(10.0, 75.0, [50, 70, 80, 50]) == [50, 70]


facts_strategy = st.lists(
    st.tuples(st.sampled_from(KINDS), st.floats(min_value=0, max_value=400)),
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(
    facts=facts_strategy,
    half_life=st.floats(min_value=0.5, max_value=365),
    t1=st.floats(min_value=0, max_value=500),
    gap=st.floats(min_value=0, max_value=500),
)
def test_score_never_rises_without_a_fact(facts, half_life, t1, gap):
    """Between t1 and t2 with no fact in (t1, t2], the score does not go up."""
    t2 = t1 + gap
    history = [Fact(kind, T0 + days(at)) for kind, at in facts if not t1 < at <= t2]
    before = score(history, T0 + days(t1), half_life, POINTS)
    after = score(history, T0 + days(t2), half_life, POINTS)
    assert after <= before + 1e-9
    assert after >= 0.0


@settings(max_examples=300, deadline=None)
@given(
    facts=facts_strategy,
    half_life=st.floats(min_value=0.5, max_value=365),
    threshold=st.floats(min_value=0.5, max_value=60),
    step=st.floats(min_value=0.25, max_value=30),
)
def test_crossing_fires_once_until_falling_below(facts, half_life, threshold, step):
    """Observed on a time grid, a threshold fires only after a fall below it (or at start).

    The refresh's rule ``crossed(previous decayed, current)`` and the stateful watch agree.
    """
    history = sorted((Fact(kind, T0 + days(at)) for kind, at in facts), key=lambda f: f.at)
    watch = ThresholdWatch(threshold)
    previous = 0.0
    fell_below_since_fire = True
    now = T0
    end = T0 + days(420)
    while now <= end:
        current = score(history, now, half_life, POINTS)
        fired = watch.observe(current)
        assert fired == crossed(previous, current, threshold)
        if fired:
            assert fell_below_since_fire
            fell_below_since_fire = False
        if current < threshold:
            fell_below_since_fire = True
        previous = current
        now += days(step)


def test_rearm_margin_needs_a_deeper_fall():
    watch = ThresholdWatch(50, rearm_margin=10)
    assert [watch.observe(v) for v in (55, 45, 52, 39, 51)] == [True, False, False, False, True]
    with pytest.raises(ValueError):
        ThresholdWatch(50, rearm_margin=-1)
