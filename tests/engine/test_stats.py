"""Lift and A/B statistics: formulas, invariants and coverage on simulated data."""

import math
import random
import statistics

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import stats
from engine.stats import (
    enough_data,
    t_quantile,
    two_proportion_diff_ci,
    welch_diff_ci,
    welch_diff_ci_from_samples,
    welch_t_test,
    z_test_two_proportions,
)

counts = st.integers(min_value=1, max_value=5000).flatmap(
    lambda n: st.tuples(st.integers(0, n), st.just(n))
)
confidences = st.floats(min_value=0.5, max_value=0.999)


@pytest.fixture
def without_scipy(monkeypatch):
    monkeypatch.setattr(stats, "_student_t", None)


# --------------------------------------------------------------------------- proportions


def test_two_proportion_hand_computed():
    p1, p2, diff, lo, hi = two_proportion_diff_ci(120, 1000, 90, 1000)
    assert (p1, p2) == (0.12, 0.09)
    assert diff == pytest.approx(0.03)
    se = math.sqrt(0.12 * 0.88 / 1000 + 0.09 * 0.91 / 1000)
    assert lo == pytest.approx(0.03 - 1.959964 * se, abs=1e-6)
    assert hi == pytest.approx(0.03 + 1.959964 * se, abs=1e-6)
    result = two_proportion_diff_ci(120, 1000, 90, 1000)
    assert (result.estimate1, result.diff, result.high) == (p1, diff, hi)


def test_two_proportion_rejects_bad_input():
    for args in [(1, 0, 1, 10), (11, 10, 1, 10), (-1, 10, 1, 10)]:
        with pytest.raises(ValueError):
            two_proportion_diff_ci(*args)
    with pytest.raises(ValueError):
        two_proportion_diff_ci(1, 10, 1, 10, confidence=1.0)


@given(counts, counts, confidences)
def test_interval_contains_the_estimate(group1, group2, confidence):
    p1, p2, diff, lo, hi = two_proportion_diff_ci(*group1, *group2, confidence=confidence)
    assert lo <= diff <= hi
    assert diff == pytest.approx(p1 - p2)
    assert -1 - 1e-9 <= diff <= 1 + 1e-9


@given(counts, counts, confidences, confidences)
def test_interval_widens_with_confidence(group1, group2, c1, c2):
    low_c, high_c = sorted([c1, c2])
    narrow = two_proportion_diff_ci(*group1, *group2, confidence=low_c)
    wide = two_proportion_diff_ci(*group1, *group2, confidence=high_c)
    assert wide.low <= narrow.low + 1e-12 and wide.high >= narrow.high - 1e-12


def test_z_test_hand_computed():
    # pooled p = 0.105, se = sqrt(.105 * .895 * 2 / 1000), z = 0.03 / se = 2.1924...
    pooled = 0.105
    z = 0.03 / math.sqrt(pooled * (1 - pooled) * 2 / 1000)
    expected = 2 * (1 - statistics.NormalDist().cdf(z))
    assert z_test_two_proportions(120, 1000, 90, 1000) == pytest.approx(expected)
    assert 0.02 < expected < 0.04
    assert z_test_two_proportions(0, 100, 0, 100) == 1.0
    assert z_test_two_proportions(100, 100, 50, 50) == 1.0
    assert z_test_two_proportions(50, 100, 50, 100) == pytest.approx(1.0)


@given(counts, counts)
def test_z_test_is_a_symmetric_probability(group1, group2):
    p = z_test_two_proportions(*group1, *group2)
    assert 0 <= p <= 1
    assert p == pytest.approx(z_test_two_proportions(*group2, *group1))


def test_coverage_with_a_known_effect():
    rng = random.Random(20240501)
    n, p_treated, p_holdout = 2000, 0.13, 0.10
    covered = 0
    for _ in range(2000):
        x1 = sum(rng.random() < p_treated for _ in range(n))
        x2 = sum(rng.random() < p_holdout for _ in range(n))
        _p1, _p2, _d, lo, hi = two_proportion_diff_ci(x1, n, x2, n)
        covered += lo <= p_treated - p_holdout <= hi
    assert 0.935 <= covered / 2000 <= 0.965


def test_coverage_of_zero_without_effect_and_test_size():
    rng = random.Random(7)
    n, p = 1500, 0.08
    covered = significant = 0
    for _ in range(2000):
        x1 = sum(rng.random() < p for _ in range(n))
        x2 = sum(rng.random() < p for _ in range(n))
        _p1, _p2, _d, lo, hi = two_proportion_diff_ci(x1, n, x2, n)
        covered += lo <= 0 <= hi
        significant += z_test_two_proportions(x1, n, x2, n) < 0.05
    assert 0.935 <= covered / 2000 <= 0.965
    assert 0.035 <= significant / 2000 <= 0.065


# --------------------------------------------------------------------------- Welch


def test_welch_hand_computed():
    # group 1: mean 10, var 4, n 50; group 2: mean 8, var 9, n 40
    result = welch_diff_ci(10.0, 4.0, 50, 8.0, 9.0, 40)
    a, b = 4 / 50, 9 / 40
    se = math.sqrt(a + b)
    df = (a + b) ** 2 / (a**2 / 49 + b**2 / 39)
    assert df == pytest.approx(65.11, abs=0.01)
    half = t_quantile(0.975, df) * se
    assert result == pytest.approx((10.0, 8.0, 2.0, 2.0 - half, 2.0 + half))
    assert half == pytest.approx(1.9971 * se, abs=0.002)  # t(0.975, 65.1) ~ 1.9971


def test_welch_from_samples_matches_summary():
    s1 = [0, 0, 12.5, 0, 40, 0, 3]
    s2 = [0, 5, 0, 0, 0, 1]
    expected = welch_diff_ci(
        statistics.fmean(s1), statistics.variance(s1), 7,
        statistics.fmean(s2), statistics.variance(s2), 6, 0.9,
    )
    assert welch_diff_ci_from_samples(s1, s2, confidence=0.9) == pytest.approx(expected)


def test_welch_edge_cases():
    assert welch_diff_ci(5, 0, 10, 3, 0, 10) == (5, 3, 2, 2, 2)
    assert welch_t_test(5, 0, 10, 5, 0, 10) == 1.0
    assert welch_t_test(5, 0, 10, 3, 0, 10) == 0.0
    with pytest.raises(ValueError):
        welch_diff_ci(1, 1, 1, 1, 1, 10)
    with pytest.raises(ValueError):
        welch_diff_ci(1, -1, 10, 1, 1, 10)
    with pytest.raises(ValueError):
        welch_diff_ci_from_samples([1], [1, 2])


def test_welch_t_test_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    s1 = [rng.gauss(10, 3) for _ in range(30)]
    s2 = [rng.gauss(11.5, 5) for _ in range(25)]
    expected = scipy_stats.ttest_ind(s1, s2, equal_var=False).pvalue
    got = welch_t_test(
        statistics.fmean(s1), statistics.variance(s1), 30,
        statistics.fmean(s2), statistics.variance(s2), 25,
    )
    assert got == pytest.approx(expected, rel=1e-9)


@given(
    st.floats(-1e4, 1e4), st.floats(0, 1e6), st.integers(2, 10_000),
    st.floats(-1e4, 1e4), st.floats(0, 1e6), st.integers(2, 10_000),
    confidences, confidences,
)
def test_welch_interval_invariants(m1, v1, n1, m2, v2, n2, c1, c2):
    low_c, high_c = sorted([c1, c2])
    narrow = welch_diff_ci(m1, v1, n1, m2, v2, n2, confidence=low_c)
    wide = welch_diff_ci(m1, v1, n1, m2, v2, n2, confidence=high_c)
    assert narrow.low <= narrow.diff <= narrow.high
    assert wide.low <= narrow.low + 1e-9 and wide.high >= narrow.high - 1e-9
    p = welch_t_test(m1, v1, n1, m2, v2, n2)
    assert 0 <= p <= 1


def _revenue_per_entrant(rng, n, conversion, mean_order):
    # zero-inflated, skewed: most entrants buy nothing, buyers spend log-normally
    sigma = 0.8
    mu = math.log(mean_order) - sigma**2 / 2
    return [rng.lognormvariate(mu, sigma) if rng.random() < conversion else 0.0
            for _ in range(n)]


def test_welch_coverage_with_a_known_effect():
    rng = random.Random(11)
    n = 1000
    truth = 0.12 * 50 - 0.10 * 50  # revenue per entrant: treated 6.0, holdout 5.0
    covered = 0
    for _ in range(2000):
        treated = _revenue_per_entrant(rng, n, 0.12, 50)
        holdout = _revenue_per_entrant(rng, n, 0.10, 50)
        _m1, _m2, _d, lo, hi = welch_diff_ci_from_samples(treated, holdout)
        covered += lo <= truth <= hi
    assert 0.935 <= covered / 2000 <= 0.965


def test_welch_coverage_of_zero_without_effect():
    rng = random.Random(12)
    covered = 0
    for _ in range(2000):
        treated = _revenue_per_entrant(rng, 1000, 0.1, 80)
        holdout = _revenue_per_entrant(rng, 1000, 0.1, 80)
        _m1, _m2, _d, lo, hi = welch_diff_ci_from_samples(treated, holdout)
        covered += lo <= 0 <= hi
    assert 0.935 <= covered / 2000 <= 0.965


# --------------------------------------------------------------------------- t quantiles


@pytest.mark.parametrize("p", [0.9, 0.95, 0.975])
@pytest.mark.parametrize("df", [1, 2, 3, 4.5, 7, 15, 30, 120, 5000])
def test_t_quantile_fallback_is_close_to_scipy(p, df, monkeypatch):
    scipy_stats = pytest.importorskip("scipy.stats")
    exact = scipy_stats.t.ppf(p, df)
    assert t_quantile(p, df) == pytest.approx(exact, rel=1e-12)
    monkeypatch.setattr(stats, "_student_t", None)
    assert t_quantile(p, df) == pytest.approx(exact, abs=0.01)


def test_t_quantile_known_values_without_scipy(without_scipy):
    assert t_quantile(0.975, 1) == pytest.approx(12.7062, abs=1e-4)
    assert t_quantile(0.975, 2) == pytest.approx(4.3027, abs=1e-4)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-3)
    assert t_quantile(0.975, math.inf) == pytest.approx(1.959964, abs=1e-6)
    assert t_quantile(0.025, 10) == pytest.approx(-2.2281, abs=1e-3)
    with pytest.raises(ValueError):
        t_quantile(1.0, 10)


def test_welch_without_scipy_is_close(without_scipy):
    lo_hi = welch_diff_ci(10.0, 4.0, 50, 8.0, 9.0, 40)[3:]
    se = math.sqrt(4 / 50 + 9 / 40)
    assert lo_hi[0] == pytest.approx(2 - 1.9971 * se, abs=1e-3)
    assert 0 < welch_t_test(10.0, 4.0, 50, 8.0, 9.0, 40) < 0.001


# --------------------------------------------------------------------------- minimum


def test_enough_data():
    assert enough_data(100, 100, 100)
    assert not enough_data(100, 99, 100)
    assert not enough_data(0, 0, 0)  # never "enough" with nobody in a group
    assert enough_data(1, 5, 0)
