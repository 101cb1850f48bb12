"""Deterministic pseudo-random assignment: holdout groups and A/B split branches.

Python's ``hash()`` is salted per process, so it cannot decide anything that must be the
same tomorrow, in another worker or after an upgrade. SHA-256 of a canonical encoding is.
"""

import hashlib
import math
from numbers import Real

_WEIGHT_TOLERANCE = 1e-6


def stable_fraction(*parts):
    """A float in [0, 1) derived from SHA-256 of ``parts`` (stable across processes).

    Each part is turned into text with ``str()`` and length-prefixed, so ("ab", "c") and
    ("a", "bc") differ. ``1`` and ``"1"`` are the same part on purpose: ids may arrive
    either way.
    """
    encoded = "".join(f"{len(text)}:{text};" for text in map(str, parts)).encode("utf-8")
    digest = hashlib.sha256(encoded).digest()
    # 53 bits fill a double's mantissa exactly, so the result can never round up to 1.0.
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


def in_holdout(journey_key, partner_id, holdout_percent):
    """Whether ``partner_id`` is in the journey's holdout group (gets no messages).

    A partner's answer never changes for a given ``journey_key``; over many partners the
    share is ``holdout_percent`` (0-100). Raising the percentage only adds partners to the
    holdout, it never swaps anyone out.
    """
    if (
        isinstance(holdout_percent, bool)
        or not isinstance(holdout_percent, Real)
        or not 0 <= holdout_percent <= 100
    ):
        raise ValueError(f"holdout percentage must be between 0 and 100, got {holdout_percent!r}")
    return stable_fraction("holdout", journey_key, partner_id) * 100 < holdout_percent


def _checked_weights(weights):
    values = list(weights)
    if not values:
        raise ValueError("split needs at least one branch weight")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            raise ValueError(f"split weights must be numbers, got {value!r}")
        if value < 0:
            raise ValueError(f"split weights cannot be negative, got {value!r}")
    return [float(value) for value in values]


def validate_weights(weights):
    """Raise ``ValueError`` unless ``weights`` are non-negative and sum to 100 (±1e-6)."""
    values = _checked_weights(weights)
    total = sum(values)
    if abs(total - 100) > _WEIGHT_TOLERANCE:
        raise ValueError(f"split weights must sum to 100 (they sum to {total:g})")


def pick_branch(journey_key, step_key, partner_id, weights):
    """Index of the branch ``partner_id`` takes at a split, proportional to ``weights``.

    Deterministic per (journey, step, partner), independent of the holdout draw and of
    other splits. Weights must be non-negative with a positive sum (they need not sum to
    100 here); a zero-weight branch is never picked.
    """
    values = _checked_weights(weights)
    total = sum(values)
    if total <= 0:
        raise ValueError("split weights must have a positive sum")
    point = stable_fraction("split", journey_key, step_key, partner_id) * total
    cumulative = 0.0
    for index, value in enumerate(values):
        cumulative += value
        if point < cumulative:
            return index
    # Float rounding can leave ``point`` a hair above the running sum: last real branch.
    return max(index for index, value in enumerate(values) if value > 0)


__all__ = ["in_holdout", "pick_branch", "stable_fraction", "validate_weights"]
