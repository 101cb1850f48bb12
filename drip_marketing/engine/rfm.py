"""RFM scoring: the reference semantics that the set-based SQL recompute mirrors.

Scores
------
Each dimension is scored 1..5 against the other customers of the same company:

* ``percent_rank = (rank - 1) / (n - 1)`` where ``rank`` is SQL's ``RANK()`` (ties share
  the lowest rank of their group) in the order *worst → best*: ascending for frequency
  and monetary, **descending days for recency** (fewer days since the last order is
  better);
* ``score = min(5, 1 + floor(5 * percent_rank))`` — so ties always land in one bucket,
  the worst value scores 1 and a unique best value scores 5;
* **no spread, no information**: when every customer has the same value on a dimension
  (which includes a single customer), everybody scores the neutral **3** on it. Ranking
  identical values says nothing, and the alternative (SQL's ``percent_rank`` gives 0 → 1)
  would label a store's only customer, who ordered yesterday, as "Lost".

Customers without a confirmed order in the window get no score at all (not 1-1-1); the
caller leaves them out. :func:`score_sql` writes the same rule as a PostgreSQL window
expression, in integer arithmetic: ``1 + 5 * (rank - 1) / (n - 1)`` with integer
division equals ``1 + floor(5 * percent_rank())`` exactly, since a quotient ``k/5`` is
never mis-rounded across an integer by floating point.

Segments
--------
The segment comes from a grid of recency ``R`` against ``FM``, the rounded-up mean of
frequency and monetary: ``FM = (F + M + 1) // 2`` (half rounds up, in integers, so SQL
and Python agree without ``ROUND`` semantics).

=====  ==================  ==================  ==================  ===============  ===============
R \\ FM  1                   2                   3                   4                5
=====  ==================  ==================  ==================  ===============  ===============
5      New customers       Potential loyalist  Potential loyalist  Champions        Champions
4      Promising           Potential loyalist  Potential loyalist  Loyal            Champions
3      About to sleep      About to sleep      Need attention      Loyal            Loyal
2      Hibernating         Hibernating         At risk             At risk          Can't lose them
1      Lost                Hibernating         At risk             At risk          Can't lose them
=====  ==================  ==================  ==================  ===============  ===============

:func:`segment_for` and :data:`SEGMENT_RULES_SQL` are both generated from that one table.
"""

from bisect import bisect_left, bisect_right

__all__ = [
    "SEGMENTS",
    "SEGMENT_GRID",
    "SEGMENT_RULES_SQL",
    "fm_score",
    "score_dimension",
    "score_partners",
    "score_sql",
    "segment_for",
    "segment_sql",
]

NEUTRAL_SCORE = 3

SEGMENTS = [
    ("champions", "Champions"),
    ("loyal", "Loyal"),
    ("potential_loyalist", "Potential loyalist"),
    ("new", "New customers"),
    ("promising", "Promising"),
    ("need_attention", "Need attention"),
    ("about_to_sleep", "About to sleep"),
    ("at_risk", "At risk"),
    ("cannot_lose", "Can't lose them"),
    ("hibernating", "Hibernating"),
    ("lost", "Lost"),
]

# SEGMENT_GRID[r][fm - 1]: the single source of truth of the segment map.
SEGMENT_GRID = {
    5: ("new", "potential_loyalist", "potential_loyalist", "champions", "champions"),
    4: ("promising", "potential_loyalist", "potential_loyalist", "loyal", "champions"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cannot_lose"),
    1: ("lost", "hibernating", "at_risk", "at_risk", "cannot_lose"),
}


def score_dimension(values, higher_is_better=True):
    """Score each value 1..5 by its percent rank among ``values`` (see module docstring).

    Returns a list aligned with ``values``. Equal values always get equal scores; when
    all values are equal (or there is only one) every score is 3.
    """
    values = list(values)
    n = len(values)
    if n == 0:
        return []
    if min(values) == max(values):
        return [NEUTRAL_SCORE] * n
    ordered = sorted(values)
    scores = []
    for value in values:
        if higher_is_better:
            worse = bisect_left(ordered, value)  # values strictly below
        else:
            worse = n - bisect_right(ordered, value)  # values strictly above
        # rank - 1 == number of strictly worse values (RANK() semantics for ties).
        scores.append(min(5, 1 + 5 * worse // (n - 1)))
    return scores


def score_partners(rows):
    """Score ``(partner_id, recency_days, frequency, monetary)`` rows.

    Returns ``{partner_id: (r, f, m)}``; recency is better when smaller. Raises
    ``ValueError`` when a partner appears twice (one row per partner is expected).
    """
    rows = list(rows)
    ids = [row[0] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("each partner must appear once")
    recency = score_dimension((row[1] for row in rows), higher_is_better=False)
    frequency = score_dimension(row[2] for row in rows)
    monetary = score_dimension(row[3] for row in rows)
    return {pid: (r, f, m) for pid, r, f, m in zip(ids, recency, frequency, monetary)}


def fm_score(f, m):
    """The combined frequency-monetary score: mean of ``f`` and ``m``, half rounded up."""
    return (f + m + 1) // 2


def segment_for(r, f, m):
    """The segment code of scores ``r``, ``f``, ``m`` (each 1..5) from :data:`SEGMENT_GRID`."""
    for name, value in (("r", r), ("f", f), ("m", m)):
        if not isinstance(value, int) or not 1 <= value <= 5:
            raise ValueError(f"{name} must be an integer from 1 to 5, got {value!r}")
    return SEGMENT_GRID[r][fm_score(f, m) - 1]


def segment_sql(r="r", f="f", m="m"):
    """A SQL ``CASE`` expression yielding :func:`segment_for`'s code for the given columns.

    The arguments are trusted SQL expressions (column names chosen by the code, never
    user input). Scores outside 1..5 or NULL give NULL. ``FM <= k`` is written as
    ``f + m <= 2k``, which needs no division and so works for integer or numeric columns.
    """
    branches = []
    for r_value in sorted(SEGMENT_GRID, reverse=True):
        row = SEGMENT_GRID[r_value]
        # One WHEN per run of equal codes along the row: FM <= k  <=>  f + m <= 2k.
        inner = " ".join(
            f"WHEN {f} + {m} <= {2 * fm} THEN '{code}'"
            for fm, code in enumerate(row, start=1)
            if fm == len(row) or row[fm] != code
        )
        branches.append(
            f"WHEN {r_value} THEN CASE WHEN {f} NOT BETWEEN 1 AND 5"
            f" OR {m} NOT BETWEEN 1 AND 5 THEN NULL {inner} END"
        )
    return f"(CASE {r} {' '.join(branches)} END)"


SEGMENT_RULES_SQL = segment_sql()


def score_sql(expr, higher_is_better=True, partition_by=None):
    """A PostgreSQL window expression scoring ``expr`` exactly as :func:`score_dimension`.

    ``partition_by`` (e.g. ``"company_id"``) scores each partition separately. Rows
    whose ``expr`` is NULL must be filtered out beforehand. Integer arithmetic only, so
    the result does not depend on floating point.
    """
    over = f"PARTITION BY {partition_by} " if partition_by else ""
    order = "ASC" if higher_is_better else "DESC"
    rank = f"RANK() OVER ({over}ORDER BY {expr} {order})"
    count = f"COUNT(*) OVER ({over.strip()})"
    return (
        f"(CASE WHEN MIN({expr}) OVER ({over.strip()}) = MAX({expr}) OVER ({over.strip()})"
        f" THEN {NEUTRAL_SCORE}"
        f" WHEN {rank} = {count} THEN 5"
        f" ELSE 1 + 5 * ({rank} - 1) / ({count} - 1) END)"
    )
