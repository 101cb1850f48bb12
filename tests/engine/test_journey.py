"""The step-tree walk shared by live runs, test runs and backtests."""

from datetime import datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.journey import JourneyTree, StepSpec, due_at, negative_check_passes, simulate
from engine.schedule import QuietHours

T0 = datetime(2026, 3, 10, 12, 0)


def cart_tree():
    return JourneyTree.from_steps([
        StepSpec(1, None, "send", delay_value=1, delay_unit="hours", name="First reminder"),
        StepSpec(2, 1, "send", trigger="not_ordered", delay_value=24, name="Second reminder"),
        StepSpec(3, 1, "tag_add", trigger="clicked", name="Tag clicker"),
        StepSpec(4, 2, "exit", name="Exit"),
    ])


def test_children_by_outcome():
    tree = cart_tree()
    assert [s.id for s in tree.roots()] == [1]
    assert [s.id for s in tree.starting_after(1, "done")] == [2]
    assert [s.id for s in tree.starting_after(1, "clicked")] == [3]
    assert tree.starting_after(1, "opened") == []
    with pytest.raises(ValueError, match="unknown step outcome"):
        tree.starting_after(1, "teleported")


def test_condition_and_split_children():
    tree = JourneyTree.from_steps([
        StepSpec(1, None, "condition"),
        StepSpec(2, 1, "send", trigger="yes"),
        StepSpec(3, 1, "exit", trigger="no"),
        StepSpec(4, 2, "split"),
        StepSpec(5, 4, "send", trigger="branch", split_weight=50),
        StepSpec(6, 4, "send", trigger="branch", split_weight=50),
    ])
    assert [s.id for s in tree.starting_after(1, "yes")] == [2]
    assert [s.id for s in tree.starting_after(1, "no")] == [3]
    assert [s.id for s in tree.starting_after(4, "branch:6")] == [6]
    assert not tree.has_cycle()


def test_cycle_detection():
    tree = JourneyTree.from_steps([StepSpec(1, 2, "wait"), StepSpec(2, 1, "wait")])
    assert tree.has_cycle()


def test_negative_checks():
    step = StepSpec(2, 1, "send", trigger="not_ordered")
    assert negative_check_passes(step, set())
    assert negative_check_passes(step, {"opened", "clicked"})
    assert not negative_check_passes(step, {"ordered"})
    assert negative_check_passes(StepSpec(3, 1, "wait"), {"ordered"})


def test_internal_steps_ignore_quiet_hours():
    quiet = QuietHours(21, 8)
    night = datetime(2026, 3, 10, 22, 0)
    assert due_at(StepSpec(1, None, "wait"), night, "UTC", quiet) == night
    assert due_at(StepSpec(1, None, "send"), night, "UTC", quiet) == datetime(2026, 3, 11, 8, 0)


def test_simulated_cart_journey_without_orders():
    lines = simulate(cart_tree(), T0, tz="UTC")
    assert [(line.name, line.at) for line in lines] == [
        ("First reminder", T0 + timedelta(hours=1)),
        ("Second reminder", T0 + timedelta(hours=25)),
        ("Exit", T0 + timedelta(hours=25)),
    ]


def test_simulated_order_skips_the_second_reminder():
    lines = simulate(cart_tree(), T0, tz="UTC", outcomes={"ordered"})
    second = next(line for line in lines if line.name == "Second reminder")
    assert second.action == "skip"
    assert "ordered" in second.reason
    assert all(line.name != "Exit" for line in lines)


def test_simulated_click_starts_the_click_branch():
    lines = simulate(cart_tree(), T0, tz="UTC", outcomes={"clicked"})
    assert "Tag clicker" in [line.name for line in lines]


def test_simulation_stops_at_exit_and_respects_evaluate():
    def refuse_second(step, at):
        return ("skip", "no consent") if step.id == 2 else ("run", "")

    lines = simulate(cart_tree(), T0, tz="UTC", evaluate=refuse_second)
    assert [line.action for line in lines] == ["run", "skip"]
    assert lines[1].reason == "no consent"


@given(st.integers(min_value=1, max_value=10_000), st.integers(min_value=0, max_value=100))
def test_split_branch_is_stable(partner_id, weight_a):
    tree = JourneyTree.from_steps([
        StepSpec(1, None, "split"),
        StepSpec(2, 1, "wait", trigger="branch", split_weight=weight_a, name="A"),
        StepSpec(3, 1, "wait", trigger="branch", split_weight=100 - weight_a, name="B"),
    ])
    if weight_a in (0, 100):
        first = simulate(tree, T0, journey_key="j", partner_id=partner_id)
        expected = "A" if weight_a == 100 else "B"
        assert first[1].name == expected
    runs = {tuple(line.name for line in simulate(tree, T0, journey_key="j",
                                                 partner_id=partner_id)) for _ in range(3)}
    assert len(runs) == 1
