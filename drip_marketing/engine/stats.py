"""Plain, documented statistics for lift and A/B tests (journey reports).

Group 1 is the treated group (or branch A), group 2 the holdout (or branch B); every
difference is ``group 1 - group 2``, so a positive difference means the journey (or A)
does better.

Conversion rates — two-proportion z methods
    ``two_proportion_diff_ci`` is the Wald interval
    ``p1 - p2 ± z * sqrt(p1(1-p1)/n1 + p2(1-p2)/n2)``; ``z_test_two_proportions`` is the
    two-sided z-test with the pooled rate. Assumptions: entrants are independent, each
    converts at most once, and each group has at least ~10 conversions and ~10
    non-conversions (normal approximation). Below that the Wald interval is too narrow;
    :func:`enough_data` with a sensible minimum keeps reports from showing it.

Revenue per entrant — Welch interval
    ``welch_diff_ci`` is ``mean1 - mean2 ± t(df) * sqrt(var1/n1 + var2/n2)`` with the
    Welch–Satterthwaite ``df``; variances are sample variances (``n - 1`` denominator).
    Assumptions: independent entrants, unequal variances allowed, and enough entrants for
    the mean to be near-normal (the central limit theorem) even though revenue is skewed
    and mostly zero — hundreds per group rather than dozens. ``t`` comes from SciPy when
    installed, else from a Cornish–Fisher expansion of the normal quantile (within 0.01
    of the exact value for confidence up to 95 % from 3 degrees of freedom up; exact for
    1 and 2).

Results are named tuples, so ``p1, p2, diff, lo, hi = two_proportion_diff_ci(...)`` works.
"""

import math
from collections import namedtuple
from statistics import NormalDist, fmean, variance

try:  # SciPy is optional: exact t quantiles when present.
    from scipy.stats import t as _student_t
except ImportError:  # pragma: no cover - exercised by patching in tests
    _student_t = None

__all__ = [
    "DiffInterval",
    "enough_data",
    "t_quantile",
    "two_proportion_diff_ci",
    "welch_diff_ci",
    "welch_diff_ci_from_samples",
    "welch_t_test",
    "z_test_two_proportions",
]

DiffInterval = namedtuple("DiffInterval", "estimate1 estimate2 diff low high")
DiffInterval.__doc__ = "Two group estimates, their difference (1 - 2) and its interval."

_STANDARD_NORMAL = NormalDist()


def _check_confidence(confidence):
    if not 0 < confidence < 1:
        raise ValueError("confidence must be strictly between 0 and 1")


def _check_counts(x, n):
    if n <= 0 or not 0 <= x <= n:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {x}/{n}")


def _z(confidence):
    return _STANDARD_NORMAL.inv_cdf(0.5 + confidence / 2)


def t_quantile(p, df):
    """Quantile ``p`` of Student's t with ``df`` degrees of freedom (``df`` may be real).

    SciPy's exact value when available; otherwise the closed form for 1 and 2 degrees of
    freedom and the Cornish–Fisher expansion in ``1/df`` (Abramowitz & Stegun 26.7.5).
    """
    if not 0 < p < 1 or df <= 0:
        raise ValueError("need 0 < p < 1 and df > 0")
    if math.isinf(df):
        return _STANDARD_NORMAL.inv_cdf(p)
    if _student_t is not None:
        return float(_student_t.ppf(p, df))
    # Closed forms where the expansion is poor (Cauchy, and t with 2 df).
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2 * p - 1) / math.sqrt(2 * p * (1 - p))
    z = _STANDARD_NORMAL.inv_cdf(p)
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def _t_two_sided_p(t_stat, df):
    if _student_t is not None and not math.isinf(df):
        return float(2 * _student_t.sf(abs(t_stat), df))
    # Without SciPy: the normal approximation, fine at the sample sizes A/B tests need.
    return 2 * (1 - _STANDARD_NORMAL.cdf(abs(t_stat)))


def two_proportion_diff_ci(x1, n1, x2, n2, confidence=0.95):
    """Rates ``x1/n1`` and ``x2/n2``, their difference and its Wald z-interval.

    Returns ``DiffInterval(p1, p2, diff, low, high)``.
    """
    _check_counts(x1, n1)
    _check_counts(x2, n2)
    _check_confidence(confidence)
    p1, p2 = x1 / n1, x2 / n2
    diff = p1 - p2
    half = _z(confidence) * math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    return DiffInterval(p1, p2, diff, diff - half, diff + half)


def z_test_two_proportions(x1, n1, x2, n2):
    """Two-sided p-value of "both groups convert at the same rate" (pooled z-test).

    When nobody or everybody converted in both groups there is no evidence of a
    difference and the p-value is 1.
    """
    _check_counts(x1, n1)
    _check_counts(x2, n2)
    pooled = (x1 + x2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (x1 / n1 - x2 / n2) / se
    return min(1.0, 2 * (1 - _STANDARD_NORMAL.cdf(abs(z))))


def _welch_parts(var1, n1, var2, n2):
    if n1 < 2 or n2 < 2:
        raise ValueError("each group needs at least 2 observations")
    if var1 < 0 or var2 < 0:
        raise ValueError("variances cannot be negative")
    a, b = var1 / n1, var2 / n2
    se = math.sqrt(a + b)
    if se == 0:
        return 0.0, math.inf
    # Welch–Satterthwaite (a + b)^2 / (a^2/(n1-1) + b^2/(n2-1)), written with the
    # shares of each group so tiny variances cannot underflow to 0/0.
    wa, wb = a / (a + b), b / (a + b)
    df = 1 / (wa**2 / (n1 - 1) + wb**2 / (n2 - 1))
    return se, df


def welch_diff_ci(mean1, var1, n1, mean2, var2, n2, confidence=0.95):
    """Difference of two means and its Welch t-interval, from summary statistics.

    ``var1``/``var2`` are sample variances (``n - 1`` denominator). Returns
    ``DiffInterval(mean1, mean2, diff, low, high)``; two constant groups give a
    zero-width interval.
    """
    _check_confidence(confidence)
    se, df = _welch_parts(var1, n1, var2, n2)
    diff = mean1 - mean2
    half = t_quantile(0.5 + confidence / 2, df) * se if se else 0.0
    return DiffInterval(mean1, mean2, diff, diff - half, diff + half)


def welch_diff_ci_from_samples(sample1, sample2, confidence=0.95):
    """:func:`welch_diff_ci` computed from raw observations (e.g. revenue per entrant)."""
    sample1, sample2 = list(sample1), list(sample2)
    if len(sample1) < 2 or len(sample2) < 2:
        raise ValueError("each group needs at least 2 observations")
    return welch_diff_ci(
        fmean(sample1), variance(sample1), len(sample1),
        fmean(sample2), variance(sample2), len(sample2),
        confidence,
    )


def welch_t_test(mean1, var1, n1, mean2, var2, n2):
    """Two-sided p-value of "both groups have the same mean" (Welch's t-test)."""
    se, df = _welch_parts(var1, n1, var2, n2)
    if se == 0:
        return 1.0 if mean1 == mean2 else 0.0
    return min(1.0, _t_two_sided_p((mean1 - mean2) / se, df))


def enough_data(n1, n2, minimum):
    """Whether both groups reached ``minimum`` observations (reports say "not enough
    data yet" otherwise)."""
    return min(n1, n2) >= max(minimum, 1)
