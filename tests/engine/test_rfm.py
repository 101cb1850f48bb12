"""RFM scoring semantics, the segment map, and their SQL twins (evaluated in SQLite)."""

import itertools
import math
import sqlite3

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import rfm
from engine.rfm import (
    SEGMENT_GRID,
    SEGMENT_RULES_SQL,
    SEGMENTS,
    score_dimension,
    score_partners,
    score_sql,
    segment_for,
    segment_sql,
)

CODES = [code for code, _label in SEGMENTS]
ALL_SCORES = list(itertools.product(range(1, 6), repeat=3))

values_lists = st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=60)


# --------------------------------------------------------------------------- scoring


def test_hand_checked_monetary_with_ties():
    # ranks 1,2,2,4,5 of 5 -> percent ranks 0, .25, .25, .75, 1
    assert score_dimension([10, 20, 20, 30, 40]) == [1, 2, 2, 4, 5]
    # order of the input does not matter
    assert score_dimension([40, 20, 10, 30, 20]) == [5, 2, 1, 4, 2]


def test_hand_checked_recency_fewer_days_is_better():
    # descending days: 400 -> rank 1, 30 -> 2, 5/5 -> 3, 1 -> 5
    assert score_dimension([1, 5, 5, 30, 400], higher_is_better=False) == [5, 3, 3, 2, 1]


def test_single_order_customers_share_the_bottom_bucket():
    assert score_dimension([1, 1, 1, 1, 2]) == [1, 1, 1, 1, 5]
    assert score_dimension([1, 1, 1, 2, 2, 3]) == [1, 1, 1, 4, 4, 5]


def test_no_spread_gives_the_neutral_score():
    assert score_dimension([]) == []
    assert score_dimension([7]) == [3]
    assert score_dimension([7], higher_is_better=False) == [3]
    assert score_dimension([2.5, 2.5, 2.5]) == [3, 3, 3]


def test_two_customers():
    assert score_dimension([1, 2]) == [1, 5]
    assert score_dimension([1, 2], higher_is_better=False) == [5, 1]


def test_score_partners():
    rows = [
        (11, 3, 5, 900.0),   # recent, frequent, big spender
        (12, 200, 1, 20.0),  # long ago, once, small
        (13, 40, 2, 150.0),
    ]
    assert score_partners(rows) == {11: (5, 5, 5), 12: (1, 1, 1), 13: (3, 3, 3)}
    assert score_partners([(5, 10, 1, 10.0)]) == {5: (3, 3, 3)}
    assert score_partners([]) == {}


def test_score_partners_rejects_duplicates():
    with pytest.raises(ValueError):
        score_partners([(1, 3, 1, 1.0), (1, 4, 2, 2.0)])


@given(values_lists, st.booleans())
def test_scores_are_in_range_and_ties_share_a_bucket(values, higher):
    scores = score_dimension(values, higher_is_better=higher)
    assert len(scores) == len(values)
    assert all(1 <= s <= 5 for s in scores)
    by_value = {}
    for value, score in zip(values, scores):
        assert by_value.setdefault(value, score) == score


@given(values_lists)
def test_scores_are_monotonic(values):
    up = score_dimension(values)
    down = score_dimension(values, higher_is_better=False)
    for (a, sa, da), (b, sb, db) in itertools.combinations(zip(values, up, down), 2):
        if a < b:
            assert sa <= sb and da >= db
        elif a > b:
            assert sa >= sb and da <= db


@given(values_lists)
def test_extremes(values):
    scores = score_dimension(values)
    if min(values) == max(values):
        assert set(scores) == {3}
        return
    assert scores[values.index(min(values))] == 1
    if values.count(max(values)) == 1:
        assert scores[values.index(max(values))] == 5


@given(values_lists)
def test_lower_is_better_mirrors_negation(values):
    assert score_dimension(values, higher_is_better=False) == score_dimension(
        [-v for v in values]
    )


@given(values_lists)
def test_matches_floating_point_percent_rank(values):
    """What SQL's ``LEAST(5, 1 + floor(5 * percent_rank()))`` would give."""
    n = len(values)
    if min(values) == max(values):
        return
    expected = []
    for value in values:
        rank = 1 + sum(1 for other in values if other < value)
        percent_rank = (rank - 1) / (n - 1)
        expected.append(min(5, 1 + math.floor(5 * percent_rank)))
    assert score_dimension(values) == expected


def _sqlite():
    connection = sqlite3.connect(":memory:")
    if sqlite3.sqlite_version_info < (3, 25):  # pragma: no cover
        pytest.skip("SQLite without window functions")
    return connection


@given(
    st.lists(
        st.tuples(st.integers(1, 3), st.integers(0, 20)), min_size=1, max_size=40
    ),
    st.booleans(),
)
def test_score_sql_matches_python(rows, higher):
    connection = _sqlite()
    connection.execute("CREATE TABLE t (id INTEGER, company INTEGER, v INTEGER)")
    connection.executemany(
        "INSERT INTO t VALUES (?, ?, ?)", [(i, c, v) for i, (c, v) in enumerate(rows)]
    )
    expression = score_sql("v", higher_is_better=higher, partition_by="company")
    got = dict(connection.execute(f"SELECT id, {expression} FROM t"))
    for company in {c for c, _v in rows}:
        ids = [i for i, (c, _v) in enumerate(rows) if c == company]
        expected = score_dimension([rows[i][1] for i in ids], higher_is_better=higher)
        assert [got[i] for i in ids] == expected


def test_score_sql_without_partition():
    connection = _sqlite()
    connection.execute("CREATE TABLE t (id INTEGER, v INTEGER)")
    connection.executemany("INSERT INTO t VALUES (?, ?)", enumerate([1, 5, 5, 30, 400]))
    expression = score_sql("v", higher_is_better=False)
    got = [s for _i, s in connection.execute(f"SELECT id, {expression} FROM t ORDER BY id")]
    assert got == [5, 3, 3, 2, 1]


# --------------------------------------------------------------------------- segments


def test_segment_list():
    assert SEGMENTS == [
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


def test_grid_covers_every_segment_and_only_known_codes():
    used = {code for row in SEGMENT_GRID.values() for code in row}
    assert used == set(CODES)
    assert sorted(SEGMENT_GRID) == [1, 2, 3, 4, 5]
    assert all(len(row) == 5 for row in SEGMENT_GRID.values())


@pytest.mark.parametrize(
    ("scores", "code"),
    [
        ((5, 5, 5), "champions"),
        ((1, 1, 1), "lost"),
        ((5, 1, 1), "new"),
        ((4, 1, 1), "promising"),
        ((3, 3, 3), "need_attention"),
        ((1, 5, 5), "cannot_lose"),
        ((2, 4, 3), "at_risk"),
        ((3, 1, 2), "about_to_sleep"),
        ((2, 1, 1), "hibernating"),
        ((4, 4, 4), "loyal"),
        ((5, 1, 5), "potential_loyalist"),  # FM = 3: one big order, recently
        ((4, 5, 4), "champions"),  # FM = (5 + 4 + 1) // 2 = 5
    ],
)
def test_segment_examples(scores, code):
    assert segment_for(*scores) == code


def test_fm_rounds_half_up():
    assert [rfm.fm_score(f, m) for f, m in [(1, 1), (1, 2), (2, 2), (2, 3), (4, 5), (5, 5)]] \
        == [1, 2, 2, 3, 5, 5]


@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5))
def test_segment_for_is_total_and_sane(r, f, m):
    code = segment_for(r, f, m)
    assert code in CODES
    if r >= 4:
        assert code not in {"lost", "hibernating", "at_risk", "cannot_lose", "about_to_sleep"}
    if r <= 2:
        assert code not in {"champions", "loyal", "potential_loyalist", "new", "promising",
                            "need_attention"}


@pytest.mark.parametrize("bad", [(0, 1, 1), (1, 6, 1), (1, 1, None), (2.0, 1, 1)])
def test_segment_for_rejects_invalid_scores(bad):
    with pytest.raises(ValueError):
        segment_for(*bad)


def test_segment_sql_matches_python_everywhere():
    connection = _sqlite()
    connection.execute("CREATE TABLE s (r INTEGER, f INTEGER, m INTEGER)")
    connection.executemany("INSERT INTO s VALUES (?, ?, ?)", ALL_SCORES)
    got = {
        (r, f, m): code
        for r, f, m, code in connection.execute(f"SELECT r, f, m, {SEGMENT_RULES_SQL} FROM s")
    }
    assert got == {scores: segment_for(*scores) for scores in ALL_SCORES}


def test_segment_sql_is_null_without_valid_scores():
    connection = _sqlite()
    for row in [(None, None, None), (5, None, 5), (0, 1, 1), (5, 6, 1), (5, 0, 2)]:
        (code,) = connection.execute(
            f"SELECT {SEGMENT_RULES_SQL} FROM (SELECT ? AS r, ? AS f, ? AS m)", row
        ).fetchone()
        assert code is None


def test_segment_sql_with_other_columns():
    connection = _sqlite()
    expression = segment_sql("p.drip_rfm_r", "p.drip_rfm_f", "p.drip_rfm_m")
    (code,) = connection.execute(
        f"SELECT {expression} FROM (SELECT 5 AS drip_rfm_r, 1 AS drip_rfm_f,"
        " 1 AS drip_rfm_m) AS p"
    ).fetchone()
    assert code == "new"
