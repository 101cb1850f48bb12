"""BG/NBD: likelihood, fit on grouped triples, P(alive), expectations, next order."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special

from engine import btyd
from engine.btyd import BGNBDParams

# Daily-unit parameters of a plausible store: a typical active customer orders every
# couple of months, with a fair chance to drop out after each order.
TRUE = BGNBDParams(r=0.8, alpha=60.0, a=0.9, b=4.0)


def paper_likelihood(params, x, t_x, T):
    """Eq. (3) of Fader, Hardie & Lee (2005), written out directly."""
    r, alpha, a, b = params.r, params.alpha, params.a, params.b
    beta = special.beta
    first = beta(a, b + x) / beta(a, b) * math.gamma(r + x) * alpha**r / (
        math.gamma(r) * (alpha + T) ** (r + x)
    )
    second = 0.0
    if x > 0:
        second = beta(a + 1, b + x - 1) / beta(a, b) * math.gamma(r + x) * alpha**r / (
            math.gamma(r) * (alpha + t_x) ** (r + x)
        )
    return first + second


@pytest.mark.parametrize("triple", [(0, 0, 100), (1, 30, 100), (4, 80.5, 300), (12, 290, 300)])
def test_log_likelihood_is_the_paper_formula(triple):
    x, t_x, T = triple
    expected = math.log(paper_likelihood(TRUE, x, t_x, T))
    assert btyd.log_likelihood(TRUE, [x], [t_x], [T]) == pytest.approx(expected, rel=1e-10)


def test_grouped_and_ungrouped_likelihoods_agree():
    rng = np.random.default_rng(7)
    T = rng.integers(10, 400, 500).astype(float)
    x, t_x = btyd.simulate(TRUE, T, rng)
    t_x = np.floor(t_x)
    gx, gt, gT, counts = btyd.group_triples(x, t_x, T)
    assert counts.sum() == 500 and len(gx) < 500
    assert btyd.log_likelihood(TRUE, gx, gt, gT, counts) == pytest.approx(
        btyd.log_likelihood(TRUE, x, t_x, T)
    )


def test_fit_recovers_known_parameters():
    """Customers simulated with known parameters: the fit finds them again."""
    rng = np.random.default_rng(2005)
    T = rng.uniform(30, 730, 30000).round()
    x, t_x = btyd.simulate(TRUE, T, rng)
    fitted = btyd.fit(*btyd.group_triples(x, np.floor(t_x), T))
    assert fitted.converged and fitted.n == 30000
    assert fitted.r == pytest.approx(TRUE.r, rel=0.1)
    assert fitted.alpha == pytest.approx(TRUE.alpha, rel=0.15)
    assert fitted.a == pytest.approx(TRUE.a, rel=0.2)
    assert fitted.b == pytest.approx(TRUE.b, rel=0.25)
    # The fitted parameters explain the data at least as well as the true ones.
    gx, gt, gT, counts = btyd.group_triples(x, np.floor(t_x), T)
    assert fitted.loglik >= btyd.log_likelihood(TRUE, gx, gt, gT, counts) - 1e-6


def test_fit_recovers_a_second_parameter_set():
    truth = BGNBDParams(r=2.5, alpha=200.0, a=2.0, b=12.0)
    rng = np.random.default_rng(11)
    T = rng.uniform(60, 900, 30000).round()
    x, t_x = btyd.simulate(truth, T, rng)
    fitted = btyd.fit(*btyd.group_triples(x, np.floor(t_x), T))
    # r and alpha are correlated; their ratio (the mean rate) is pinned down tightly.
    assert fitted.r / fitted.alpha == pytest.approx(truth.r / truth.alpha, rel=0.05)
    assert fitted.r == pytest.approx(truth.r, rel=0.25)
    assert fitted.a / (fitted.a + fitted.b) == pytest.approx(truth.a / (truth.a + truth.b), rel=0.2)


def test_fit_needs_customers():
    with pytest.raises(ValueError, match="at least one customer"):
        btyd.fit([], [], [])


@pytest.mark.parametrize(
    "x, t_x, T", [([-1], [0], [10]), ([1.5], [1], [10]), ([2], [11], [10]), ([1], [-1], [3])]
)
def test_invalid_triples(x, t_x, T):
    with pytest.raises(ValueError):
        btyd.p_alive(TRUE, x, t_x, T)


def test_parameters_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        BGNBDParams(r=0.0, alpha=1.0, a=1.0, b=1.0)
    assert BGNBDParams.from_dict(TRUE.as_dict()) == TRUE


# Constructed histories, ages in days: one order, a regular buyer, an irregular one and a
# lapsed one (frequent buyer who has been silent for a long time).
HISTORIES = {
    "one_order": (0, 0, 200),
    "regular": (12, 360, 365),
    "irregular": (5, 300, 365),
    "lapsed": (12, 120, 365),
}


def predict(name, t=90.0):
    x, t_x, T = ([v] for v in HISTORIES[name])
    return (
        float(btyd.p_alive(TRUE, x, t_x, T)[0]),
        float(btyd.expected_purchases(TRUE, t, x, t_x, T)[0]),
        float(btyd.median_days_to_next(TRUE, x, T)[0]),
    )


def test_constructed_histories():
    one, regular, irregular, lapsed = (predict(n) for n in HISTORIES)
    # P(alive): a single order cannot have dropped out in BG/NBD; a regular buyer who
    # ordered days ago is almost surely active; a frequent buyer silent for 8 months is not.
    assert one[0] == 1.0
    assert regular[0] > 0.9  # bounded by the chance of dropping out right after an order
    assert 0.5 < irregular[0] < regular[0]
    assert lapsed[0] < 0.05
    # Expected orders in 90 days follow activity and pace.
    assert regular[1] > irregular[1] > one[1] > lapsed[1] > 0
    assert regular[1] == pytest.approx(12 / 365 * 90, rel=0.35)
    # Next order: the regular buyer's typical gap is a month; a one-time buyer's is long.
    assert 10 < regular[2] < 40
    assert one[2] > 3 * regular[2]


def test_p_alive_falls_with_silence_and_rises_with_recency():
    T = np.array([100, 200, 400, 800.0])
    alive = btyd.p_alive(TRUE, 4, 90, T)
    assert np.all(np.diff(alive) < 0)
    alive_recent = btyd.p_alive(TRUE, 4, np.array([10, 50, 90, 99.0]), 100)
    assert np.all(np.diff(alive_recent) > 0)


def test_new_customer_expectation_is_the_population_one():
    """At age 0 the conditional expectation of eq. (10) reduces to eq. (9)."""
    t = np.array([7.0, 30, 90, 365])
    conditional = btyd.expected_purchases(TRUE, t, 0, 0, 0)
    assert conditional == pytest.approx(btyd.expected_purchases_population(TRUE, t), rel=1e-9)


def test_population_expectation_matches_simulation():
    rng = np.random.default_rng(3)
    T = np.full(200000, 180.0)
    x, _t_x = btyd.simulate(TRUE, T, rng)
    expected = float(btyd.expected_purchases_population(TRUE, 180.0))
    assert x.mean() == pytest.approx(expected, rel=0.03)


def test_conditional_expectation_matches_simulation():
    """Simulate many customers to T, then T + 90 days: among those with a given history
    bucket, the mean number of orders in the 90 days matches the prediction."""
    rng = np.random.default_rng(5)
    n = 400000
    T = np.full(n, 300.0)
    lam = rng.gamma(TRUE.r, 1 / TRUE.alpha, n)
    p = rng.beta(TRUE.a, TRUE.b, n)
    # Inline simulation that continues past T to count the holdout orders.
    now = np.zeros(n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    future = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    while alive.any():
        idx = np.flatnonzero(alive)
        nxt = now[idx] + rng.exponential(1 / lam[idx])
        gone = nxt > T[idx] + 90
        alive[idx[gone]] = False
        idx, nxt = idx[~gone], nxt[~gone]
        now[idx] = nxt
        calibration = nxt <= T[idx]
        x[idx[calibration]] += 1
        t_x[idx[calibration]] = nxt[calibration]
        future[idx[~calibration]] += 1
        alive[idx[rng.random(idx.size) < p[idx]]] = False
    for lo, hi, xs in ((0, 0.5, 0), (250, 300, 3), (30, 120, 3)):
        rows = (x == xs) & (t_x >= lo) & (t_x <= hi)
        assert rows.sum() > 1000
        predicted = btyd.expected_purchases(TRUE, 90, x[rows], t_x[rows], T[rows]).mean()
        assert future[rows].mean() == pytest.approx(predicted, rel=0.08)
        observed_any = (future[rows] > 0).mean()
        assert observed_any == pytest.approx(
            btyd.p_purchase_within(TRUE, 90, x[rows], t_x[rows], T[rows]).mean(), rel=0.08
        )


def test_closed_form_agrees_with_quadrature_near_a_equal_one():
    near_one = BGNBDParams(r=0.8, alpha=60.0, a=1.0 + 1e-9, b=4.0)
    x = np.array([0, 2, 9.0])
    T = np.array([50, 200, 400.0])
    t = np.full(3, 90.0)
    below = btyd.expected_purchases(BGNBDParams(0.8, 60.0, 0.98, 4.0), t, x, x * 10, T)
    above = btyd.expected_purchases(BGNBDParams(0.8, 60.0, 1.02, 4.0), t, x, x * 10, T)
    at = btyd.expected_purchases(near_one, t, x, x * 10, T)
    assert np.all(np.isfinite(at))
    low, high = np.minimum(below, above), np.maximum(below, above)
    assert np.all((low <= at * 1.001) & (at <= high * 1.001))


def test_median_next_order_is_the_median():
    x, T = 3.0, 120.0
    median = float(btyd.median_days_to_next(TRUE, x, T))
    survival = ((TRUE.alpha + T) / (TRUE.alpha + T + median)) ** (TRUE.r + x)
    assert survival == pytest.approx(0.5)


@settings(max_examples=200, deadline=None)
@given(
    r=st.floats(0.05, 20),
    alpha=st.floats(0.5, 2000),
    a=st.floats(0.05, 20),
    b=st.floats(0.05, 50),
    x=st.integers(0, 200),
    recency=st.floats(0, 1),
    T=st.floats(0, 3000),
    t=st.floats(0, 730),
)
def test_predictions_stay_in_range(r, alpha, a, b, x, recency, T, t):
    params = BGNBDParams(r, alpha, a, b)
    t_x = 0.0 if x == 0 else recency * T
    alive = float(btyd.p_alive(params, [x], [t_x], [T])[0])
    expected = float(btyd.expected_purchases(params, t, [x], [t_x], [T])[0])
    within = float(btyd.p_purchase_within(params, t, [x], [t_x], [T])[0])
    assert 0.0 <= alive <= 1.0
    assert 0.0 <= within <= alive + 1e-12
    ceiling = alive * (r + x) / (alpha + T) * t
    assert -1e-9 <= expected <= ceiling * 1.001 + 1e-9
    # At least one order is no likelier than the expected count allows.
    assert within <= expected + 1e-6


def test_weak_prior_keeps_tiny_stores_sane_and_big_ones_unchanged():
    # Three customers: plain maximum likelihood runs to the bounds, the prior does not.
    tiny = btyd.fit([0, 1, 2], [0, 30, 90], [100, 120, 200], prior=btyd.TYPICAL, prior_weight=1)
    assert 1e-3 < tiny.r < 1e3 and 1e-1 < tiny.alpha < 1e4
    rng = np.random.default_rng(9)
    T = rng.uniform(30, 730, 20000).round()
    x, t_x = btyd.simulate(TRUE, T, rng)
    triples = btyd.group_triples(x, np.floor(t_x), T)
    plain = btyd.fit(*triples)
    with_prior = btyd.fit(*triples, prior=btyd.TYPICAL, prior_weight=1)
    assert with_prior.r == pytest.approx(plain.r, rel=0.01)
    assert with_prior.b == pytest.approx(plain.b, rel=0.01)
    with pytest.raises(ValueError, match="prior"):
        btyd.fit([0], [0], [1], prior_weight=1)
