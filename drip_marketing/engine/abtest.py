"""Choosing the winner of an A/B split from per-branch counts.

Plain data in, a verdict out; the maths is :mod:`.stats`. The rule:

1. Every branch needs at least ``minimum`` participants (``stats.enough_data``), else
   the verdict is ``not_enough`` and nothing is promoted.
2. The best branch by the metric (click rate, conversion rate, or revenue per
   participant) is compared with every other branch: the two-proportion z-test for rates,
   Welch's t-test for revenue. With ``k`` branches each of the ``k - 1`` comparisons must
   have a p-value below ``alpha / (k - 1)`` (Bonferroni), so looking at several branches
   does not inflate the chance of promoting a branch that is not better.
3. Only then is the best branch the ``winner``; otherwise ``not_significant``.

The verdict carries the numbers (rates or means, the 95 % interval of each difference,
p-values) so the caller can record *why*.
"""

from dataclasses import dataclass, field

from . import stats

ALPHA = 0.05
METRICS = ("click", "conversion", "revenue")


@dataclass(frozen=True)
class BranchCounts:
    """What one branch's participants did: counts and revenue sums."""

    key: object
    n: int
    clicks: int = 0
    conversions: int = 0
    revenue: float = 0.0
    revenue_squares: float = 0.0

    def successes(self, metric):
        return self.clicks if metric == "click" else self.conversions

    def value(self, metric):
        """The metric for this branch: a rate, or the revenue per participant."""
        if not self.n:
            return 0.0
        if metric == "revenue":
            return self.revenue / self.n
        return self.successes(metric) / self.n

    def mean_var_n(self):
        """(mean, sample variance, n) of revenue per participant."""
        mean = self.revenue / self.n
        var = (self.revenue_squares - self.n * mean * mean) / (self.n - 1) if self.n > 1 else 0.0
        return mean, max(0.0, var), self.n


@dataclass(frozen=True)
class Comparison:
    """The best branch against one other: difference interval (best - other) and p-value."""

    other: object
    interval: stats.DiffInterval
    p_value: float


@dataclass(frozen=True)
class Verdict:
    status: str  # "not_enough" | "not_significant" | "winner" | "single_branch"
    best: object = None
    winner: object = None
    threshold: float = ALPHA
    comparisons: list = field(default_factory=list)


def decide(branches, metric, minimum, alpha=ALPHA, confidence=0.95):
    """The :class:`Verdict` for ``branches`` (a list of :class:`BranchCounts`)."""
    if metric not in METRICS:
        raise ValueError(f"unknown A/B metric {metric!r}; expected one of {METRICS}")
    branches = list(branches)
    if len(branches) < 2:
        return Verdict("single_branch")
    if not all(stats.enough_data(b.n, b.n, minimum) for b in branches):
        return Verdict("not_enough")
    # Ties go to the first branch (the caller's order: sequence, id).
    best = max(branches, key=lambda b: b.value(metric))
    threshold = alpha / (len(branches) - 1)
    comparisons = []
    for other in branches:
        if other is best:
            continue
        if metric == "revenue":
            interval = stats.welch_diff_ci(*best.mean_var_n(), *other.mean_var_n(),
                                           confidence=confidence)
            p_value = stats.welch_t_test(*best.mean_var_n(), *other.mean_var_n())
        else:
            x1, x2 = best.successes(metric), other.successes(metric)
            interval = stats.two_proportion_diff_ci(x1, best.n, x2, other.n,
                                                    confidence=confidence)
            p_value = stats.z_test_two_proportions(x1, best.n, x2, other.n)
        comparisons.append(Comparison(other.key, interval, p_value))
    significant = all(c.p_value < threshold and c.interval.diff > 0 for c in comparisons)
    return Verdict(
        "winner" if significant else "not_significant",
        best=best.key,
        winner=best.key if significant else None,
        threshold=threshold,
        comparisons=comparisons,
    )


__all__ = ["ALPHA", "METRICS", "BranchCounts", "Comparison", "Verdict", "decide"]
