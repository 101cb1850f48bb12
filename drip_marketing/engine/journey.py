"""Walking a journey's step tree: which steps start when, and when they are due.

The live engine (crons and workers), the *Test run* button and the backtest all call
these functions, so a simulated walk and a real one cannot disagree.

A step starts relative to its parent (or to the entry, for a first step):

========================  ==============================================================
step trigger              the step is created when …
========================  ==============================================================
``after``                 the parent has run (or the participant entered)
``not_opened`` etc.       the parent has run; when due, it only runs if the parent's
                          message was *not* opened / clicked / followed by an order
``opened`` etc.           the parent's message is opened / clicked / replied / an
                          order is placed — the delay runs from that moment
``yes`` / ``no``          the parent condition evaluated to that answer
``branch``                the parent A/B split picked this branch
========================  ==============================================================
"""

from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache

from . import hashing
from .schedule import QuietHours, best_time_in_window, compute_send_time

# Steps a customer notices: quiet hours and caps apply to them.
CUSTOMER_FACING = frozenset({"send"})
# Children of a finished step that are created at once (the "not …" ones re-check later).
ON_DONE = frozenset({"after", "not_opened", "not_clicked", "not_ordered"})
# Children created only when the outcome happens.
ON_OUTCOME = frozenset({"opened", "clicked", "replied", "ordered"})
NEGATIVE_CHECKS = {"not_opened": "opened", "not_clicked": "clicked", "not_ordered": "ordered"}


@dataclass(frozen=True)
class StepSpec:
    """The scheduling-relevant part of a step, as plain data."""

    id: int
    parent_id: int | None
    step_type: str
    trigger: str = "after"
    delay_value: int = 0
    delay_unit: str = "hours"
    time_of_day: float | None = None
    use_best_time: bool = False
    best_time_window_hours: int = 24
    split_weight: float = 0.0
    sequence: int = 10
    name: str = ""


@dataclass
class JourneyTree:
    """Steps indexed by parent, children in (sequence, id) order."""

    steps: dict[int, StepSpec]
    _children: dict[int | None, list[StepSpec]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_steps(cls, steps):
        tree = cls({step.id: step for step in steps})
        for step in sorted(steps, key=lambda s: (s.sequence, s.id)):
            tree._children.setdefault(step.parent_id, []).append(step)
        return tree

    def roots(self):
        return list(self._children.get(None, []))

    def children(self, step_id):
        return list(self._children.get(step_id, []))

    def starting_after(self, step_id, outcome):
        """Children of ``step_id`` that start when it ends with ``outcome``.

        ``outcome`` is ``"done"`` (the step ran), ``"yes"``/``"no"`` (condition), a
        child id picked by a split (as ``"branch:<id>"``), or an engagement outcome of a
        sent message (``"opened"``, ``"clicked"``, ``"replied"``, ``"ordered"``).
        """
        children = self.children(step_id)
        if outcome == "done":
            return [c for c in children if c.trigger in ON_DONE]
        if outcome in ("yes", "no"):
            return [c for c in children if c.trigger == outcome]
        if outcome.startswith("branch:"):
            chosen = int(outcome.split(":", 1)[1])
            return [c for c in children if c.id == chosen and c.trigger == "branch"]
        if outcome in ON_OUTCOME:
            return [c for c in children if c.trigger == outcome]
        raise ValueError(f"unknown step outcome {outcome!r}")

    def has_cycle(self):
        for start in self.steps:
            seen = set()
            current = self.steps.get(start)
            while current is not None and current.parent_id is not None:
                if current.id in seen:
                    return True
                seen.add(current.id)
                current = self.steps.get(current.parent_id)
        return False


def due_at(step, base, tz, quiet=None, hour_weights=None):
    """When ``step`` is due if its clock starts at ``base`` (naive UTC).

    Quiet hours and the best-time window only apply to steps a customer notices.
    """
    facing = step.step_type in CUSTOMER_FACING
    when = compute_send_time(
        base,
        step.delay_value,
        step.delay_unit,
        tz,
        time_of_day=step.time_of_day,
        quiet=quiet if facing else None,
    )
    if facing and step.use_best_time and hour_weights:
        when = best_time_in_window(
            when, step.best_time_window_hours, tz, hour_weights, quiet=quiet
        )
    return when


def negative_check_passes(step, parent_facts):
    """A ``not_…`` step runs only if its parent's message did not get that outcome.

    ``parent_facts`` is the set of outcomes the parent's message got so far.
    """
    needed = NEGATIVE_CHECKS.get(step.trigger)
    return needed is None or needed not in parent_facts


def pick_branch(journey_key, split, branches, partner_id):
    """The branch of an A/B split this partner takes (stable, weighted)."""
    if not branches:
        return None
    index = hashing.pick_branch(
        journey_key, split.id, partner_id, [b.split_weight for b in branches]
    )
    return branches[index]


@dataclass(frozen=True)
class SimulatedStep:
    """One line of a Test run: what the step would do, when, and why."""

    step_id: int
    name: str
    at: datetime
    action: str
    reason: str = ""


def simulate(tree, entered_at, *, tz="UTC", quiet=None, journey_key="", partner_id=0,
             evaluate=None, outcomes=(), horizon_steps=200):
    """Walk the tree for one participant on a simulated clock, sending nothing.

    ``evaluate(step, at)`` answers what the live engine would decide when the step is
    due: ``("run", reason)``, ``("skip", reason)`` or ``("yes"|"no", reason)`` for
    conditions; the Odoo side passes a function that checks consent, caps, quiet hours,
    goal and condition domains against the database. ``outcomes`` are the engagement
    outcomes assumed for every sent message (e.g. ``{"opened"}``); by default nobody
    opens, clicks or orders. Returns a list of :class:`SimulatedStep` in time order.
    """
    quiet = quiet or QuietHours(0, 0)
    outcomes = frozenset(outcomes)
    evaluate = evaluate or (lambda step, at: ("run", ""))
    pending = [(due_at(step, entered_at, tz, quiet), step) for step in tree.roots()]
    lines = []
    while pending and len(lines) < horizon_steps:
        pending.sort(key=lambda item: (item[0], item[1].sequence, item[1].id))
        at, step = pending.pop(0)
        parent = tree.steps.get(step.parent_id)
        if parent is not None and not negative_check_passes(step, outcomes):
            lines.append(SimulatedStep(step.id, step.name, at, "skip",
                                       f"parent message got '{NEGATIVE_CHECKS[step.trigger]}'"))
            continue
        decision, reason = evaluate(step, at)
        if step.step_type == "split":
            branch = pick_branch(journey_key, step, tree.children(step.id), partner_id)
            outcome = f"branch:{branch.id}" if branch else "done"
            lines.append(SimulatedStep(step.id, step.name, at, "branch",
                                       f"takes '{branch.name}'" if branch else "no branch"))
        elif step.step_type == "condition":
            outcome = decision if decision in ("yes", "no") else "no"
            lines.append(SimulatedStep(step.id, step.name, at, outcome, reason))
        elif decision == "skip":
            lines.append(SimulatedStep(step.id, step.name, at, "skip", reason))
            continue
        else:
            lines.append(SimulatedStep(step.id, step.name, at, decision, reason))
            outcome = "done"
        if step.step_type == "exit":
            break
        next_steps = tree.starting_after(step.id, outcome)
        if step.step_type == "send":
            for assumed in sorted(outcomes & ON_OUTCOME):
                next_steps += tree.starting_after(step.id, assumed)
        pending.extend((due_at(child, at, tz, quiet), child) for child in next_steps)
    return lines


# ------------------------------------------------------------------------------------
# Memoised due times (added for the backtest, issue 10). ``due_at`` is pure, and the same
# (step, start, time zone, quiet hours) comes back for every participant who enters in
# the same scan: the live scheduler and the backtest's thousands of walks share the
# answers. ``simulate`` looks the name up at call time, so it uses this version too.
# Unhashable arguments (a list of weights) skip the cache.
_due_at_uncached = due_at


@lru_cache(maxsize=65536)
def _due_at_cached(step, base, tz, quiet, hour_weights):
    return _due_at_uncached(step, base, tz, quiet, hour_weights)


def due_at(step, base, tz, quiet=None, hour_weights=None):  # noqa: F811 - memoised above
    try:
        hash((step, base, tz, quiet, hour_weights))
    except TypeError:
        return _due_at_uncached(step, base, tz, quiet, hour_weights)
    return _due_at_cached(step, base, tz, quiet, hour_weights)


due_at.__doc__ = _due_at_uncached.__doc__
