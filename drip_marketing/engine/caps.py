"""Frequency caps and priority arbitration across all journeys.

Caps are **rolling windows**: "1 message per 24 h" means no two counted sends less than
24 hours apart, whatever the calendar. Rolling windows are simple to reason about, need no
time zone (a calendar day would depend on the customer's), and cannot be gamed by a burst
around midnight. A window is half-open, so sends exactly ``period_hours`` apart do not
share one.

``arbitrate`` is the only decision point: the delivery worker collects the due messages
of a batch, asks for one ``Decision`` each, and writes them back. All instants are naive
UTC (see ``engine.schedule``).
"""

from bisect import bisect_right, insort
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta
from numbers import Real
from typing import Any

from .schedule import to_naive_utc

SEND = "send"
DEFER = "defer"
ACTIONS = (SEND, DEFER)


@dataclass(frozen=True)
class CapRule:
    """At most ``max_messages`` counted sends per partner in any ``period_hours`` window."""

    max_messages: int
    period_hours: int

    def __post_init__(self):
        for name in ("max_messages", "period_hours"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"frequency cap {name} must be a whole number >= 1, got {value!r}")

    @property
    def period(self):
        """The window length as a ``timedelta``."""
        return timedelta(hours=self.period_hours)

    def describe(self):
        """Human wording, e.g. "3 messages per 168 h"."""
        noun = "message" if self.max_messages == 1 else "messages"
        return f"{self.max_messages} {noun} per {self.period_hours} h"


@dataclass(frozen=True)
class Candidate:
    """A message due for a partner, competing for that partner's cap budget."""

    message_id: Any
    partner_id: Any
    scheduled_at: datetime
    priority: float
    transactional: bool = False


@dataclass(frozen=True)
class Decision:
    """What to do with one candidate now: ``send``, or ``defer`` until an instant."""

    message_id: Any
    action: str
    until: datetime | None = None
    reason: str = ""

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"decision action must be one of {ACTIONS}, got {self.action!r}")
        if self.action == DEFER and self.until is None:
            raise ValueError("a deferral needs an 'until' instant")


def _fits(counted, instant, rule):
    """Whether one more send at ``instant`` keeps every ``rule`` window within its cap.

    ``counted`` is sorted. A window is violated by ``max + 1`` sends spanning less than the
    period; only groups that contain the new send need checking.
    """
    position = bisect_right(counted, instant)
    combined = [*counted[:position], instant, *counted[position:]]
    size = rule.max_messages
    period = rule.period
    for first in range(max(0, position - size), position + 1):
        last = first + size
        if last < len(combined) and combined[last] - combined[first] < period:
            return False
    return True


def _fits_all(counted, instant, rules):
    return all(_fits(counted, instant, rule) for rule in rules)


def _next_slot(counted, now, rules):
    """The earliest instant after ``now`` at which every rule allows one more send.

    The blocked instants form a union of open intervals, each ending one period after some
    counted send, so the answer is one of ``send + period``.
    """
    slots = sorted({sent + rule.period for sent in counted for rule in rules} - {now})
    for slot in slots:
        if slot > now and _fits_all(counted, slot, rules):
            return slot
    # Unreachable: one longest period after the last counted send always fits.
    return max(counted) + max(rule.period for rule in rules)


def _check_rules(rules):
    rules = tuple(rules or ())
    for rule in rules:
        if not isinstance(rule, CapRule):
            raise TypeError(f"frequency caps must be CapRule instances, got {rule!r}")
    return rules


def _order_key(candidate):
    priority = candidate.priority
    if isinstance(priority, bool) or not isinstance(priority, Real):
        raise TypeError(f"candidate priority must be a number, got {priority!r}")
    return (-priority, to_naive_utc(candidate.scheduled_at), candidate.message_id)


def arbitrate(candidates, sent_history, rules, now, *, count_transactional=True):
    """One ``Decision`` per candidate (same order), enforcing ``rules`` per partner.

    ``sent_history`` maps partner_id to the instants of sends already made to that partner.
    A granted send happens at ``now`` (candidates are due messages).

    Per partner:

    * Transactional candidates (e.g. a cart reminder) are always sent: they are exempt
      from caps. They still *count* toward the caps of marketing messages, because the
      customer's inbox sees them; so the caller should include transactional sends in
      ``sent_history``. With ``count_transactional=False`` they count nowhere (pass
      marketing-only history then).
    * Marketing candidates are considered by priority (highest first), then
      ``scheduled_at``, then ``message_id``. Each one sent counts toward the windows of the
      next. Since every grant happens at ``now``, the first candidate that does not fit
      blocks all later ones, so a higher priority never waits while a lower one is sent.
    * A deferred candidate gets ``until`` = the earliest instant at which every rule allows
      one more send given the history and this batch's grants, with a readable reason.

    Pure and deterministic; O(n log n) in the batch size (plus the partner's history).
    """
    now = to_naive_utc(now)
    rules = _check_rules(rules)
    candidates = list(candidates)
    sent_history = sent_history or {}
    longest = max((rule.period for rule in rules), default=timedelta(0))
    by_partner = defaultdict(list)
    for index, candidate in enumerate(candidates):
        by_partner[candidate.partner_id].append(index)

    decisions = [None] * len(candidates)
    for partner_id, indexes in by_partner.items():
        # Sends a full longest period ago cannot share a window with anything from now on.
        counted = sorted(
            sent
            for sent in map(to_naive_utc, sent_history.get(partner_id, ()) or ())
            if sent > now - longest
        )
        ordered = sorted(indexes, key=lambda i: _order_key(candidates[i]))
        marketing = []
        for index in ordered:
            candidate = candidates[index]
            if not candidate.transactional:
                marketing.append(index)
                continue
            decisions[index] = Decision(
                candidate.message_id, SEND, reason="transactional: exempt from frequency caps"
            )
            if count_transactional and rules:
                insort(counted, now)

        blocked = None
        for index in marketing:
            candidate = candidates[index]
            if blocked is None and _fits_all(counted, now, rules):
                decisions[index] = Decision(
                    candidate.message_id, SEND, reason="within frequency caps"
                )
                if rules:
                    insort(counted, now)
                continue
            if blocked is None:
                until = _next_slot(counted, now, rules)
                reached = " and ".join(
                    rule.describe() for rule in rules if not _fits(counted, now, rule)
                )
                reason = f"frequency cap: {reached} reached (next slot {until:%Y-%m-%d %H:%M} UTC)"
                blocked = (until, reason)
            decisions[index] = Decision(
                candidate.message_id, DEFER, until=blocked[0], reason=blocked[1]
            )
    return decisions


__all__ = ["ACTIONS", "DEFER", "SEND", "Candidate", "CapRule", "Decision", "arbitrate"]
