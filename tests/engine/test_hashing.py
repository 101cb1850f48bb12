"""Deterministic holdout and split assignment."""

import hashlib
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine import hashing
from engine.hashing import in_holdout, pick_branch, stable_fraction, validate_weights

PARTNERS = range(1, 20001)
# The directory that makes ``engine`` importable, wherever this test file lives.
ADDON = Path(hashing.__file__).resolve().parents[1]


def within_binomial(count, trials, share, sigmas=5):
    """``count`` is within ``sigmas`` standard deviations of a Binomial(trials, share)."""
    mean = trials * share
    spread = math.sqrt(trials * share * (1 - share))
    return abs(count - mean) <= sigmas * spread + 1


# --------------------------------------------------------------------------- stable_fraction
def test_stable_fraction_is_pinned():
    # Pinned values: a change here would reshuffle every running A/B test and holdout.
    assert stable_fraction("journey-7", 42) == 0.9333988925764438
    assert stable_fraction("holdout", "j", 1) == 0.6351909043883698


def test_stable_fraction_is_sha256_of_length_prefixed_parts():
    digest = hashlib.sha256(b"9:journey-7;2:42;").digest()
    expected = (int.from_bytes(digest[:8], "big") >> 11) / 2**53
    assert stable_fraction("journey-7", 42) == expected


def test_stable_fraction_same_in_a_fresh_process_with_other_hash_seed():
    code = "from engine.hashing import stable_fraction; print(repr(stable_fraction('x', 1, 2.5)))"
    env = dict(os.environ, PYTHONPATH=str(ADDON), PYTHONHASHSEED="12345")
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert float(output) == stable_fraction("x", 1, 2.5)


def test_stable_fraction_parts_do_not_run_together():
    assert stable_fraction("ab", "c") != stable_fraction("a", "bc")
    assert stable_fraction("a;", "b") != stable_fraction("a", ";b")
    # Ids may come as int or str: same answer on purpose.
    assert stable_fraction("j", 1) == stable_fraction("j", "1")


@given(st.lists(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False)), max_size=5))
def test_stable_fraction_range_and_determinism(parts):
    value = stable_fraction(*parts)
    assert 0.0 <= value < 1.0
    assert stable_fraction(*parts) == value


def test_stable_fraction_is_roughly_uniform():
    buckets = [0] * 10
    for partner in PARTNERS:
        buckets[int(stable_fraction("uniform", partner) * 10)] += 1
    for count in buckets:
        assert within_binomial(count, len(PARTNERS), 0.1)


# --------------------------------------------------------------------------- holdout
@pytest.mark.parametrize("percent", [1, 10, 33.3, 50, 90])
def test_holdout_share_matches_percentage(percent):
    held = sum(in_holdout("journey-1", partner, percent) for partner in PARTNERS)
    assert within_binomial(held, len(PARTNERS), percent / 100)


def test_holdout_extremes():
    assert not any(in_holdout("j", partner, 0) for partner in range(2000))
    assert all(in_holdout("j", partner, 100) for partner in range(2000))


@given(st.text(max_size=20), st.integers(0, 10**9), st.floats(0, 100), st.floats(0, 100))
def test_holdout_is_stable_and_monotonic_in_percentage(journey, partner, low, high):
    low, high = sorted((low, high))
    assert in_holdout(journey, partner, low) == in_holdout(journey, partner, low)
    # Raising the holdout only adds partners to it.
    if in_holdout(journey, partner, low):
        assert in_holdout(journey, partner, high)


def test_holdout_differs_between_journeys():
    first = {p for p in range(5000) if in_holdout("journey-a", p, 20)}
    second = {p for p in range(5000) if in_holdout("journey-b", p, 20)}
    overlap = len(first & second)
    # Independent draws overlap about 20 % x 20 % = 4 % of 5000 = 200.
    assert within_binomial(overlap, 5000, 0.04)


@pytest.mark.parametrize("percent", [-1, 100.5, "10", None, True, float("nan")])
def test_holdout_rejects_bad_percentage(percent):
    with pytest.raises(ValueError, match="holdout percentage must be between 0 and 100"):
        in_holdout("j", 1, percent)


# --------------------------------------------------------------------------- splits
def test_pick_branch_is_pinned_and_deterministic():
    picks = [pick_branch("j", "s", partner, [50, 30, 20]) for partner in range(10)]
    assert picks == [0, 2, 0, 1, 2, 0, 1, 0, 0, 1]
    assert picks == [pick_branch("j", "s", partner, [50, 30, 20]) for partner in range(10)]


def test_pick_branch_is_proportional():
    weights = [50, 30, 15, 5]
    counts = [0] * len(weights)
    for partner in PARTNERS:
        counts[pick_branch("journey-3", "split-9", partner, weights)] += 1
    for count, weight in zip(counts, weights, strict=True):
        assert within_binomial(count, len(PARTNERS), weight / 100)


def test_pick_branch_never_picks_zero_weight():
    picks = {pick_branch("j", "s", partner, [0, 70, 0, 30, 0]) for partner in range(5000)}
    assert picks == {1, 3}


def test_pick_branch_independent_of_holdout_and_other_splits():
    held = [p for p in PARTNERS if in_holdout("journey-x", p, 50)]
    first_branch = sum(pick_branch("journey-x", "s1", p, [50, 50]) == 0 for p in held)
    assert within_binomial(first_branch, len(held), 0.5)
    agree = sum(
        pick_branch("journey-x", "s1", p, [50, 50]) == pick_branch("journey-x", "s2", p, [50, 50])
        for p in PARTNERS
    )
    assert within_binomial(agree, len(PARTNERS), 0.5)


@settings(max_examples=300)
@given(
    st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=6).filter(
        lambda weights: sum(weights) > 0
    ),
    st.integers(0, 10**9),
)
def test_pick_branch_returns_positive_weight_index(weights, partner):
    index = pick_branch("j", "s", partner, weights)
    assert 0 <= index < len(weights)
    assert weights[index] > 0
    assert pick_branch("j", "s", partner, weights) == index


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([], "at least one branch"),
        ([0, 0], "positive sum"),
        ([50, -10, 60], "cannot be negative"),
        ([50, "50"], "must be numbers"),
        ([float("inf"), 1], "must be numbers"),
    ],
)
def test_pick_branch_rejects_bad_weights(weights, message):
    with pytest.raises(ValueError, match=message):
        pick_branch("j", "s", 1, weights)


# --------------------------------------------------------------------------- validate_weights
@pytest.mark.parametrize(
    "weights", [[100], [50, 50], [33.3333333, 33.3333333, 33.3333334], [0, 100]]
)
def test_validate_weights_accepts_sums_of_100(weights):
    assert validate_weights(weights) is None


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ([50, 40], r"split weights must sum to 100 \(they sum to 90\)"),
        ([60, 50], r"split weights must sum to 100 \(they sum to 110\)"),
        ([100.001], "split weights must sum to 100"),
        ([120, -20], "split weights cannot be negative"),
        ([], "at least one branch"),
    ],
)
def test_validate_weights_rejects(weights, message):
    with pytest.raises(ValueError, match=message):
        validate_weights(weights)
