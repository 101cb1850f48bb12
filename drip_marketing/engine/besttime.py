"""Each customer's best hour of the week to receive a message.

Learned from when the customer engaged (opens, clicks, orders), in the customer's own time
zone, as a distribution over the 168 hours of the week (0 = Monday 00:00-00:59, as
``schedule.hour_of_week``).

Model
-----
1. **Histogram**: the customer's engagement facts counted per local hour of the week,
   weighted by kind (:data:`KIND_WEIGHTS`: an open or a click says "I read mail now"; an
   order says "I am around now", more loosely).
2. **Smoothing** (:func:`smoothing_matrix`): each fact also speaks for its neighbours —
   a circular Gaussian of ``sigma_hours`` (default 1 h) over the week, and a share
   ``day_pooling`` (default 0.3) spread over the same hour of the other days (who reads
   at 8:00 on Tuesdays probably does on Wednesdays too). The mass is preserved.
3. **Shrinkage** toward the store: the store's pattern is the smoothed histogram of all
   its customers, in their local times, normalised. A customer's weights are the
   posterior mean of a Dirichlet prior centred on that pattern with **prior strength**
   ``kappa`` (:data:`DEFAULT_PRIOR_STRENGTH` = 25 pseudo-facts)::

       weights = (smoothed_counts + kappa * store_pattern) / (n + kappa)

   A customer without history gets the store's pattern; with ``n = kappa`` facts their own
   habits weigh as much as the store's; with many facts the store hardly matters. Because
   a store's pattern is spread over many hours (its best hour holds a few per cent of the
   mass), even a handful of a customer's own facts decides their *best* hour; the prior
   mostly shapes the rest of the week, which matters when the send window excludes that
   hour. The benchmark (``bench/predictions.py``) sweeps ``kappa`` (0.5 … 100) and the
   smoothing on held-out opens: 25 ranked first on both sizes run, ahead of 5 and 10 by
   about two standard errors, and 100 clearly worse.

The refresh stores each customer's weighted histogram (sparse, a few numbers) and the
store's pattern; weights are rebuilt from them when a step is scheduled, and
``schedule.best_time_in_window`` picks the best non-quiet hour of the window from them.
"""

import math

import numpy as np

from .schedule import HOURS_PER_WEEK, hour_of_week

__all__ = [
    "DEFAULT_DAY_POOLING",
    "DEFAULT_PRIOR_STRENGTH",
    "DEFAULT_SIGMA_HOURS",
    "HISTORY_DAYS",
    "KIND_WEIGHTS",
    "best_hour",
    "dense",
    "histogram",
    "histogram_from_times",
    "posterior",
    "smooth",
    "smoothing_matrix",
    "sparse",
    "store_pattern",
    "weights_for",
]

HOURS = HOURS_PER_WEEK
KIND_WEIGHTS = {"open": 1.0, "click": 1.0, "order": 0.5}
DEFAULT_PRIOR_STRENGTH = 25.0
DEFAULT_SIGMA_HOURS = 1.0
DEFAULT_DAY_POOLING = 0.3
# Habits change: only facts of the last year count.
HISTORY_DAYS = 365

_MATRICES = {}


def smoothing_matrix(sigma_hours=DEFAULT_SIGMA_HOURS, day_pooling=DEFAULT_DAY_POOLING):
    """168 x 168 matrix ``M``: ``counts @ M`` is the smoothed histogram (rows sum to 1)."""
    if sigma_hours < 0 or not 0 <= day_pooling <= 1:
        raise ValueError("sigma must be >= 0 and day pooling between 0 and 1")
    key = (float(sigma_hours), float(day_pooling))
    if key in _MATRICES:
        return _MATRICES[key]
    offsets = np.arange(HOURS)
    distance = np.minimum(offsets, HOURS - offsets)
    if sigma_hours > 0:
        kernel = np.exp(-0.5 * (distance / sigma_hours) ** 2)
        kernel[distance > math.ceil(3 * sigma_hours)] = 0.0
    else:
        kernel = (distance == 0).astype(float)
    kernel /= kernel.sum()
    # Circulant: row j is the kernel centred on hour j.
    gaussian = np.stack([np.roll(kernel, j) for j in range(HOURS)])
    same_hour = (offsets[:, None] % 24 == offsets[None, :] % 24).astype(float) / 7.0
    matrix = (1 - day_pooling) * gaussian + day_pooling * same_hour @ gaussian
    matrix.setflags(write=False)
    _MATRICES[key] = matrix
    return matrix


def histogram(hours, weights=None):
    """Weighted count of facts per hour of the week (``hours`` in 0..167)."""
    hours = np.asarray(hours, dtype=int)
    if hours.size and (hours.min() < 0 or hours.max() >= HOURS):
        raise ValueError("hours of the week are 0..167")
    weights = np.ones(hours.shape) if weights is None else np.asarray(weights, dtype=float)
    return np.bincount(hours, weights=weights, minlength=HOURS).astype(float)


def histogram_from_times(facts, tz):
    """Histogram of ``(kind, naive UTC datetime)`` facts, in the local time of ``tz``."""
    hours, weights = [], []
    for kind, when in facts:
        weight = KIND_WEIGHTS.get(kind, 0.0)
        if weight:
            hours.append(hour_of_week(when, tz))
            weights.append(weight)
    return histogram(hours, weights)


def smooth(counts, sigma_hours=DEFAULT_SIGMA_HOURS, day_pooling=DEFAULT_DAY_POOLING):
    """Counts spread over neighbouring hours and the same hour of other days."""
    return np.asarray(counts, dtype=float) @ smoothing_matrix(sigma_hours, day_pooling)


def store_pattern(total_counts, sigma_hours=DEFAULT_SIGMA_HOURS, day_pooling=DEFAULT_DAY_POOLING):
    """The store's overall pattern (sums to 1); uniform when the store has no history."""
    smoothed = smooth(total_counts, sigma_hours, day_pooling)
    total = smoothed.sum()
    if total <= 0:
        return np.full(HOURS, 1.0 / HOURS)
    return smoothed / total


def posterior(
    counts,
    pattern,
    prior_strength=DEFAULT_PRIOR_STRENGTH,
    sigma_hours=DEFAULT_SIGMA_HOURS,
    day_pooling=DEFAULT_DAY_POOLING,
):
    """Customer weights over the week (sum to 1): own habits shrunk toward ``pattern``.

    ``counts`` is one histogram (168,) or a stack of them (n, 168).
    """
    if prior_strength <= 0:
        raise ValueError("the prior strength must be positive")
    counts = np.asarray(counts, dtype=float)
    pattern = np.asarray(pattern, dtype=float)
    own = smooth(counts, sigma_hours, day_pooling)
    n = counts.sum(axis=-1, keepdims=True)
    return (own + prior_strength * pattern) / (n + prior_strength)


def best_hour(counts, pattern, **kwargs):
    """The hour of the week with the highest posterior weight; -1 without any history.

    Ties go to the earliest hour. ``counts`` may be a stack (n, 168): returns an array.
    """
    counts = np.asarray(counts, dtype=float)
    hours = np.argmax(posterior(counts, pattern, **kwargs), axis=-1)
    return np.where(counts.sum(axis=-1) > 0, hours, -1)


def sparse(counts, digits=3):
    """A histogram as a small JSON-able dict ``{"hour": count}`` of its non-zero hours."""
    counts = np.asarray(counts, dtype=float)
    return {str(int(h)): round(float(counts[h]), digits) for h in np.flatnonzero(counts)}


def dense(values):
    """The inverse of :func:`sparse` (unknown or malformed entries are ignored)."""
    counts = np.zeros(HOURS)
    for hour, value in (values or {}).items():
        try:
            hour, value = int(hour), float(value)
        except (TypeError, ValueError):
            continue
        if 0 <= hour < HOURS and math.isfinite(value) and value > 0:
            counts[hour] += value
    return counts


def weights_for(sparse_counts, pattern, **kwargs):
    """Weights for ``schedule.best_time_in_window`` from a stored sparse histogram.

    Returns a tuple (hashable, so identical customers share a cached schedule), or
    ``None`` when there is neither customer nor store history (no preference at all).
    """
    pattern = np.asarray(pattern, dtype=float) if pattern is not None else None
    counts = dense(sparse_counts)
    if pattern is None or pattern.shape != (HOURS,) or pattern.sum() <= 0:
        if not counts.sum():
            return None
        pattern = np.full(HOURS, 1.0 / HOURS)
    return tuple(float(v) for v in posterior(counts, pattern, **kwargs))
