"""Engagement score: points per fact, exponential decay with a half-life, thresholds.

The reference semantics that the set-based SQL refresh (``drip.prediction``) mirrors.

Definition
----------
Every *fact* (an open, a click, a product view, a cart add, an order, a reply, an
unsubscribe, a bounce) is worth the points its scoring rule gives its kind, and its
weight halves every ``half_life_days``. The score at ``as_of`` is::

    score(as_of) = max(0, sum(points(f) * 0.5 ** (age_days(f, as_of) / half_life)))

over the facts that happened at or before ``as_of`` (later facts have not happened yet).

Because every fact decays with the same half-life, the sum is ``C * 0.5 ** (t / h)`` for
a constant ``C`` between two facts: a positive score only ever falls toward 0, a negative
sum rises toward 0 but is floored at 0. Hence **a score never rises without a new fact**,
and between facts it can be advanced in closed form from any earlier value
(:func:`decay`) — the refresh recomputes from the history only the customers with new
facts and decays everybody else analytically, without drift.

Thresholds
----------
A threshold ``T`` is *crossed* when the score before the new facts, decayed to now, was
below ``T`` and the score with them is at or above it (:func:`crossed`). Since a score
without new facts never rises, the crossing fires once and cannot fire again until the
score has fallen below ``T`` (:class:`ThresholdWatch` states it over a whole sequence).
"""

import math
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "DEFAULT_POINTS",
    "KINDS",
    "Contribution",
    "Fact",
    "ThresholdWatch",
    "contributions",
    "crossed",
    "crossings",
    "decay",
    "decay_factor",
    "raw_score",
    "score",
]

SECONDS_PER_DAY = 86400.0

# Kinds of fact, in the order the settings show them, with the points shipped as the
# default scoring rules (data/drip_scoring_rule_data.xml mirrors these).
KINDS = (
    "open",
    "click",
    "product_view",
    "cart_add",
    "order",
    "reply",
    "unsubscribe",
    "bounce",
)
DEFAULT_POINTS = {
    "open": 1.0,
    "click": 3.0,
    "product_view": 2.0,
    "cart_add": 5.0,
    "order": 10.0,
    "reply": 8.0,
    "unsubscribe": -20.0,
    "bounce": -5.0,
}


@dataclass(frozen=True)
class Fact:
    """Something a customer did: ``kind`` at ``at`` (naive UTC)."""

    kind: str
    at: datetime
    label: str = ""


@dataclass(frozen=True)
class Contribution:
    """What one fact adds to the score now (its points, decayed)."""

    fact: Fact
    points: float
    value: float


def _check_half_life(half_life_days):
    if (
        isinstance(half_life_days, bool)
        or not isinstance(half_life_days, (int, float))
        or not math.isfinite(half_life_days)
        or half_life_days <= 0
    ):
        raise ValueError(
            f"the half-life must be a positive number of days, got {half_life_days!r}"
        )


def age_days(at, as_of):
    """Days from ``at`` to ``as_of`` (negative when ``at`` is later)."""
    return (as_of - at).total_seconds() / SECONDS_PER_DAY


def decay_factor(elapsed_days, half_life_days):
    """Share of a fact's points left after ``elapsed_days`` (1 for a zero or negative age)."""
    _check_half_life(half_life_days)
    if elapsed_days <= 0:
        return 1.0
    return 0.5 ** (elapsed_days / half_life_days)


def decay(score_value, elapsed_days, half_life_days):
    """A score ``elapsed_days`` later, without new facts (never higher, never below 0)."""
    return max(0.0, score_value) * decay_factor(elapsed_days, half_life_days)


def contributions(facts, as_of, half_life_days, points):
    """Each fact's decayed value at ``as_of``; facts after ``as_of`` are left out.

    ``points`` maps a kind to its points; a kind without a rule is worth 0.
    """
    result = []
    for fact in facts:
        if fact.at > as_of:
            continue
        value = points.get(fact.kind, 0.0)
        factor = decay_factor(age_days(fact.at, as_of), half_life_days)
        result.append(Contribution(fact, value, value * factor))
    return result


def raw_score(facts, as_of, half_life_days, points):
    """The decayed sum before the floor at 0 (may be negative)."""
    return math.fsum(c.value for c in contributions(facts, as_of, half_life_days, points))


def score(facts, as_of, half_life_days, points):
    """The engagement score at ``as_of``: the decayed sum floored at 0."""
    return max(0.0, raw_score(facts, as_of, half_life_days, points))


def crossed(previous, current, threshold):
    """Whether going from ``previous`` to ``current`` crosses ``threshold`` upward.

    ``previous`` is the score before the new facts, decayed to the same moment as
    ``current``: it was below the threshold and now is at or above it.
    """
    return previous < threshold <= current


def crossings(previous, current, thresholds):
    """The thresholds crossed upward, ascending."""
    return sorted(t for t in set(thresholds) if crossed(previous, current, t))


class ThresholdWatch:
    """Follows one customer's score over time and says when a threshold fires.

    Fires when the score reaches ``threshold`` while armed; disarms; re-arms only once
    the score has fallen below ``threshold - rearm_margin`` (``rearm_margin`` 0: below
    the threshold itself). The refresh uses margin 0, where the state is simply
    "previous score < threshold" and no state needs storing.
    """

    def __init__(self, threshold, rearm_margin=0.0, initial=0.0):
        if rearm_margin < 0:
            raise ValueError("the re-arm margin cannot be negative")
        self.threshold = threshold
        self.rearm_margin = rearm_margin
        self.armed = initial < threshold

    def observe(self, value):
        """Feed the next observed score; return True when the threshold fires now."""
        if self.armed and value >= self.threshold:
            self.armed = False
            return True
        if not self.armed and value < self.threshold - self.rearm_margin:
            self.armed = True
        return False
