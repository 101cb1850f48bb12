"""Frequency caps and priority arbitration: examples and property tests.

The properties are checked with an independent oracle that counts sends in every rolling
window by brute force, rather than with the engine's own span arithmetic.
"""

import random
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.caps import DEFER, SEND, Candidate, CapRule, Decision, arbitrate

NOW = datetime(2026, 11, 23, 9, 0)
DAY_CAP = CapRule(1, 24)
WEEK_CAP = CapRule(3, 168)


def hours_ago(hours):
    return NOW - timedelta(hours=hours)


def candidate(message_id, partner_id=1, priority=10, scheduled=None, transactional=False):
    return Candidate(
        message_id=message_id,
        partner_id=partner_id,
        scheduled_at=scheduled or NOW - timedelta(minutes=message_id),
        priority=priority,
        transactional=transactional,
    )


def by_id(decisions):
    return {decision.message_id: decision for decision in decisions}


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("max_messages", "period_hours", "field"),
    [
        (0, 24, "max_messages"),
        (1, 0, "period_hours"),
        (1.5, 24, "max_messages"),
        (True, 24, "max_messages"),
        (1, None, "period_hours"),
        (-3, 24, "max_messages"),
    ],
)
def test_cap_rule_validation(max_messages, period_hours, field):
    with pytest.raises(ValueError, match=f"frequency cap {field} must be a whole number >= 1"):
        CapRule(max_messages, period_hours)


def test_cap_rule_describe():
    assert DAY_CAP.describe() == "1 message per 24 h"
    assert WEEK_CAP.describe() == "3 messages per 168 h"


def test_decision_validation():
    with pytest.raises(ValueError, match="action must be one of"):
        Decision(1, "drop")
    with pytest.raises(ValueError, match="needs an 'until'"):
        Decision(1, DEFER)


def test_rules_must_be_cap_rules():
    with pytest.raises(TypeError, match="CapRule"):
        arbitrate([candidate(1)], {}, [(1, 24)], NOW)


# --------------------------------------------------------------------------- examples
def test_no_rules_sends_everything():
    decisions = arbitrate([candidate(i) for i in range(5)], {}, [], NOW)
    assert [d.action for d in decisions] == [SEND] * 5


def test_daily_cap_defers_with_readable_reason():
    history = {1: [datetime(2026, 11, 22, 9, 0) + timedelta(hours=1)]}  # yesterday 10:00
    (decision,) = arbitrate([candidate(7)], history, [DAY_CAP, WEEK_CAP], NOW)
    assert decision == Decision(
        7,
        DEFER,
        until=datetime(2026, 11, 23, 10, 0),
        reason="frequency cap: 1 message per 24 h reached (next slot 2026-11-23 10:00 UTC)",
    )


def test_send_exactly_one_period_later_is_allowed():
    history = {1: [hours_ago(24)]}
    (decision,) = arbitrate([candidate(1)], history, [DAY_CAP], NOW)
    assert decision.action == SEND


def test_higher_priority_wins_and_the_rest_wait_for_the_same_slot():
    cands = [candidate(1, priority=5), candidate(2, priority=50), candidate(3, priority=20)]
    decisions = by_id(arbitrate(cands, {}, [DAY_CAP], NOW))
    assert decisions[2].action == SEND
    assert decisions[1].action == decisions[3].action == DEFER
    assert decisions[1].until == decisions[3].until == NOW + timedelta(hours=24)
    assert "next slot 2026-11-24 09:00 UTC" in decisions[1].reason


def test_ties_broken_by_scheduled_time_then_message_id():
    early = candidate(9, scheduled=NOW - timedelta(hours=2))
    late = candidate(3, scheduled=NOW - timedelta(hours=1))
    assert by_id(arbitrate([late, early], {}, [DAY_CAP], NOW))[9].action == SEND
    same_a = candidate(4, scheduled=NOW)
    same_b = candidate(2, scheduled=NOW)
    assert by_id(arbitrate([same_a, same_b], {}, [DAY_CAP], NOW))[2].action == SEND


def test_weekly_cap_reason_and_slot():
    history = {1: [hours_ago(100), hours_ago(50), hours_ago(30)]}
    (decision,) = arbitrate([candidate(1)], history, [DAY_CAP, WEEK_CAP], NOW)
    assert decision.action == DEFER
    # The oldest of the three leaves the 168 h window 68 h from now.
    assert decision.until == NOW + timedelta(hours=68)
    assert decision.reason.startswith("frequency cap: 3 messages per 168 h reached")


def test_both_caps_named_when_both_reached():
    history = {1: [hours_ago(100), hours_ago(50), hours_ago(2)]}
    (decision,) = arbitrate([candidate(1)], history, [DAY_CAP, WEEK_CAP], NOW)
    assert decision.reason.startswith(
        "frequency cap: 1 message per 24 h and 3 messages per 168 h reached"
    )
    assert decision.until == NOW + timedelta(hours=68)


def test_caps_are_per_partner():
    cands = [candidate(1, partner_id=1), candidate(2, partner_id=2), candidate(3, partner_id=1)]
    decisions = by_id(arbitrate(cands, {2: [hours_ago(1)]}, [DAY_CAP], NOW))
    # Partner 1: message 3 was due first, so it takes the day's slot.
    assert decisions[3].action == SEND
    assert decisions[1].action == DEFER
    # Partner 2's own history blocks only partner 2.
    assert decisions[2].action == DEFER
    assert decisions[2].until == NOW + timedelta(hours=23)


def test_transactional_is_exempt_but_counts():
    cands = [candidate(1, transactional=True, priority=0), candidate(2, priority=99)]
    decisions = by_id(arbitrate(cands, {1: [hours_ago(3)]}, [DAY_CAP], NOW))
    assert decisions[1].action == SEND
    assert decisions[1].reason == "transactional: exempt from frequency caps"
    assert decisions[2].action == DEFER
    # The cart reminder sent now pushes the next marketing slot to tomorrow 09:00.
    assert decisions[2].until == NOW + timedelta(hours=24)


def test_transactional_can_be_left_out_of_counting():
    cands = [candidate(1, transactional=True), candidate(2)]
    decisions = by_id(arbitrate(cands, {}, [DAY_CAP], NOW, count_transactional=False))
    assert decisions[1].action == decisions[2].action == SEND


def test_future_dated_history_is_respected():
    # A send recorded 2 h ahead (clock skew between workers) still blocks now.
    (decision,) = arbitrate([candidate(1)], {1: [NOW + timedelta(hours=2)]}, [DAY_CAP], NOW)
    assert decision.action == DEFER
    assert decision.until == NOW + timedelta(hours=26)


def test_old_history_is_ignored_and_none_history_is_empty():
    decisions = arbitrate([candidate(1)], {1: [hours_ago(1000)]}, [WEEK_CAP], NOW)
    assert decisions[0].action == SEND
    assert arbitrate([candidate(1)], None, [WEEK_CAP], NOW)[0].action == SEND


def test_aware_inputs_are_normalised():
    from datetime import timezone

    aware_now = NOW.replace(tzinfo=timezone.utc)  # noqa: UP017
    (decision,) = arbitrate([candidate(1)], {1: [hours_ago(1)]}, [DAY_CAP], aware_now)
    assert decision.until == NOW + timedelta(hours=23)
    assert decision.until.tzinfo is None


def test_decisions_follow_input_order():
    cands = [candidate(i, partner_id=i % 3, priority=i % 4) for i in range(30)]
    decisions = arbitrate(cands, {}, [WEEK_CAP], NOW)
    assert [d.message_id for d in decisions] == list(range(30))


# --------------------------------------------------------------------------- properties
RULE_SETS = st.lists(
    st.sampled_from([CapRule(1, 24), CapRule(3, 168), CapRule(2, 1), CapRule(2, 48)]),
    max_size=3,
    unique=True,
)


@st.composite
def batches(draw):
    partners = draw(st.integers(1, 3))
    cands = []
    for message_id in range(draw(st.integers(0, 12))):
        cands.append(
            Candidate(
                message_id=message_id,
                partner_id=draw(st.integers(1, partners)),
                scheduled_at=NOW - timedelta(minutes=draw(st.integers(0, 600))),
                priority=draw(st.integers(0, 3)),
                transactional=draw(st.integers(0, 4)) == 0,
            )
        )
    history = {
        partner: [
            NOW + timedelta(minutes=draw(st.integers(-200 * 60, 3 * 60)))
            for _ in range(draw(st.integers(0, 5)))
        ]
        for partner in range(1, partners + 1)
    }
    return cands, history, draw(RULE_SETS), draw(st.booleans())


def window_counts_ok(times, instant, rule):
    """Oracle: every rolling window (start, start + period] holding ``instant`` is within cap."""
    period = rule.period
    for start in {t - period for t in times} | {instant - period}:
        if start < instant <= start + period:
            inside = sum(1 for t in times if start < t <= start + period)
            if inside > rule.max_messages:
                return False
    return True


def counted_after(cands, decisions, history, partner, count_transactional):
    times = list(history.get(partner, []))
    for cand, decision in zip(cands, decisions, strict=True):
        if cand.partner_id != partner or decision.action != SEND:
            continue
        if cand.transactional and not count_transactional:
            continue
        times.append(NOW)
    return times


@settings(max_examples=500)
@given(batches())
def test_arbitration_properties(batch):
    cands, history, rules, count_transactional = batch
    decisions = arbitrate(cands, history, rules, NOW, count_transactional=count_transactional)

    # One decision per candidate, in order.
    assert [d.message_id for d in decisions] == [c.message_id for c in cands]

    for partner in {c.partner_id for c in cands}:
        mine = [(c, d) for c, d in zip(cands, decisions, strict=True) if c.partner_id == partner]
        marketing = [(c, d) for c, d in mine if not c.transactional]
        times = counted_after(cands, decisions, history, partner, count_transactional)

        # Transactional messages always go out.
        assert all(d.action == SEND for c, d in mine if c.transactional)

        # No window holding a granted marketing send is over its cap.
        if any(d.action == SEND for _, d in marketing):
            for rule in rules:
                assert window_counts_ok(times, NOW, rule)

        # A higher priority never waits while a lower one of the same partner is sent.
        for c_high, d_high in marketing:
            for c_low, d_low in marketing:
                if c_high.priority > c_low.priority and d_low.action == SEND:
                    assert d_high.action == SEND

        # Deferrals: strictly later, one more send fits then, and not a moment earlier.
        for _, decision in marketing:
            if decision.action != DEFER:
                continue
            until = decision.until
            assert until > NOW
            assert decision.reason.startswith("frequency cap: ")
            assert f"next slot {until:%Y-%m-%d %H:%M} UTC" in decision.reason
            assert all(window_counts_ok([*times, until], until, rule) for rule in rules)
            probes = [until - timedelta(microseconds=1)]
            probes += [NOW + (until - NOW) * k / 16 for k in range(16)]
            for probe in probes:
                if probe > NOW:
                    assert not all(
                        window_counts_ok([*times, probe], probe, rule) for rule in rules
                    ), probe


@settings(max_examples=200)
@given(batches(), st.randoms(use_true_random=False))
def test_arbitration_is_deterministic_and_order_independent(batch, rnd):
    cands, history, rules, _ = batch
    first = by_id(arbitrate(cands, history, rules, NOW))
    shuffled = list(cands)
    rnd.shuffle(shuffled)
    history_shuffled = {p: rnd.sample(times, len(times)) for p, times in history.items()}
    assert by_id(arbitrate(shuffled, history_shuffled, rules, NOW)) == first


def test_large_batch_sends_one_per_partner_under_daily_cap():
    rng = random.Random(7)
    cands = [
        Candidate(
            i, rng.randrange(2000), NOW - timedelta(minutes=rng.randrange(600)), rng.randrange(5)
        )
        for i in range(20000)
    ]
    decisions = arbitrate(cands, {}, [DAY_CAP, WEEK_CAP], NOW)
    pairs = zip(cands, decisions, strict=True)
    sent_partners = [c.partner_id for c, d in pairs if d.action == SEND]
    # With a 1-per-day cap and empty history, exactly one send per partner present.
    assert len(sent_partners) == len(set(sent_partners)) == len({c.partner_id for c in cands})
