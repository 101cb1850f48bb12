"""A/B winner selection: minimum sample, significance, Bonferroni, metrics."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import abtest, stats
from engine.abtest import BranchCounts, decide


def test_not_enough_below_the_minimum_even_when_obvious():
    verdict = decide([BranchCounts("a", 99, clicks=90), BranchCounts("b", 200, clicks=1)],
                     "click", 100)
    assert verdict.status == "not_enough"
    assert verdict.winner is None


def test_clear_winner_by_click_rate():
    verdict = decide([BranchCounts("a", 500, clicks=50), BranchCounts("b", 500, clicks=100)],
                     "click", 100)
    assert verdict.status == "winner"
    assert verdict.winner == "b"
    (comparison,) = verdict.comparisons
    assert comparison.other == "a"
    assert comparison.interval.diff == pytest.approx(0.10)
    assert comparison.interval.low > 0
    assert comparison.p_value == stats.z_test_two_proportions(100, 500, 50, 500)


def test_equal_branches_are_not_significant():
    verdict = decide([BranchCounts("a", 1000, conversions=80),
                      BranchCounts("b", 1000, conversions=80)], "conversion", 100)
    assert verdict.status == "not_significant"
    assert verdict.best == "a", "ties go to the first branch"
    assert verdict.winner is None


def test_bonferroni_with_three_branches():
    # p ≈ 0.03 against each other branch: significant for two branches, not for three.
    two = decide([BranchCounts("a", 1000, clicks=100), BranchCounts("b", 1000, clicks=128)],
                 "click", 100)
    assert two.status == "winner"
    assert 0.025 < two.comparisons[0].p_value < 0.05
    three = decide([BranchCounts("a", 1000, clicks=100), BranchCounts("b", 1000, clicks=128),
                    BranchCounts("c", 1000, clicks=100)], "click", 100)
    assert three.threshold == pytest.approx(0.025)
    assert three.status == "not_significant"


def test_revenue_uses_welch():
    rng = random.Random(7)
    high = [rng.choice([0, 0, 0, 60]) for _ in range(400)]
    low = [rng.choice([0, 0, 0, 0, 0, 0, 30]) for _ in range(400)]

    def counts(key, values):
        return BranchCounts(key, len(values), revenue=sum(values),
                            revenue_squares=sum(v * v for v in values))

    verdict = decide([counts("low", low), counts("high", high)], "revenue", 100)
    assert verdict.winner == "high"
    interval = verdict.comparisons[0].interval
    expected = stats.welch_diff_ci_from_samples(high, low)
    assert interval.diff == pytest.approx(expected.diff)
    assert interval.low == pytest.approx(expected.low)
    assert interval.high == pytest.approx(expected.high)


def test_unknown_metric_and_single_branch():
    with pytest.raises(ValueError):
        decide([BranchCounts("a", 10), BranchCounts("b", 10)], "opens", 1)
    assert decide([BranchCounts("a", 1000, clicks=10)], "click", 1).status == "single_branch"


@given(st.integers(2, 400), st.integers(0, 400), st.integers(2, 400), st.integers(0, 400),
       st.integers(1, 300))
def test_a_winner_always_has_the_minimum_and_the_best_rate(n1, x1, n2, x2, minimum):
    x1, x2 = min(x1, n1), min(x2, n2)
    verdict = decide([BranchCounts("a", n1, clicks=x1), BranchCounts("b", n2, clicks=x2)],
                     "click", minimum)
    if verdict.winner is not None:
        assert min(n1, n2) >= minimum
        rates = {"a": x1 / n1, "b": x2 / n2}
        assert rates[verdict.winner] > min(rates.values())
        assert all(c.p_value < abtest.ALPHA for c in verdict.comparisons)


def test_false_promotions_stay_rare_without_an_effect():
    rng = random.Random(11)
    promoted = 0
    for _trial in range(400):
        a = sum(rng.random() < 0.1 for _ in range(300))
        b = sum(rng.random() < 0.1 for _ in range(300))
        promoted += decide([BranchCounts("a", 300, clicks=a), BranchCounts("b", 300, clicks=b)],
                           "click", 100).winner is not None
    assert promoted / 400 < 0.09, "about 5 % of A/A tests promote a branch by chance"
