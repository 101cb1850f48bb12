"""Backtest: replay a journey over the store's last days, sending nothing.

The replay reuses the live engine, piece by piece:

1. **Who enters, when.** A shadow copy of the journey (no steps, no holdout, activated at
   the start of the window) is scanned on a simulated clock, every ``scan interval``,
   with the journey's own trigger SQL (``_trigger_candidates``) and its own enrollment
   statement (``_enroll``: entry filter, company, re-entry policy, unique key). Cart
   journeys also get the live cart scan (``sale.order._drip_mark_abandoned_carts``) at
   each tick, so the activation guard and the look-back behave as on the day the
   journey is switched on. All of this happens inside a SAVEPOINT that is rolled back,
   on session-private temporary copies of the enrollment table and the carts: no live
   row is written or locked, and nothing survives (see :meth:`_private_copies`).
2. **What each entrant would get.** ``engine.journey.simulate`` walks the real step tree
   for every entrant, with an ``evaluate`` callback that applies, at each step's time,
   the checks delivery makes at send time: the exit goal (orders as they happened),
   consent and blacklists (``res.partner._drip_consent_filter``), quiet hours
   (``engine.schedule``) and frequency caps (``engine.caps.arbitrate`` over this
   journey's simulated sends plus what the other journeys really sent), holdout,
   conditions and promoted A/B winners.

Known differences with a live run, all small and stated in the result: entry times are
rounded up to the scan interval (the live scan runs every minute); the trigger SQL and
conditions read today's rows (a cart is "draft" again only if it was confirmed after
going idle, which the replay restores); consent is today's consent; the children of a
message deferred by caps are timed from its due time, not from the deferred send; and
nobody opens or clicks (steps waiting for an open or a click never start).
"""

import time
from bisect import bisect_left, bisect_right
from collections import Counter, defaultdict
from dataclasses import replace
from datetime import timedelta
from functools import lru_cache

from markupsafe import Markup

from odoo import _, api, fields, models
from odoo.exceptions import ValidationError
from odoo.tools import SQL

from ..engine import caps as caps_engine
from ..engine import hashing, schedule
from ..engine import journey as journey_engine
from ..models.domain_tools import checked_domain

# Event-based triggers read drip.event by id: the replay needs the last id seen per tick.
EVENT_TRIGGERS = {"event", "tag_added", "segment_entered", "rfm_segment_changed",
                  "score_crossed"}
# Triggers whose SQL scans the whole order history: a daily scan is enough for them
# (their candidates are days, not minutes, apart).
DAILY_TRIGGERS = {"inactivity", "replenishment", "partner_date"}
MAX_DEFERRALS = 50
COUNTERS = ("sent", "holdout", "consent", "cap_deferrals", "quiet_deferrals", "goal", "ran",
            "condition_skip")


class DripJourneyBacktest(models.TransientModel):
    """What a journey would have done over the last days, on the store's own history."""

    _name = "drip.journey.backtest"
    _description = "Drip Marketing Journey Backtest"

    journey_id = fields.Many2one("drip.journey", required=True, ondelete="cascade")
    days = fields.Integer(string="Replay the last (days)", default=30, required=True)
    end_at = fields.Datetime(string="Until", default=fields.Datetime.now, required=True)
    scan_interval_minutes = fields.Integer(
        string="Scan every (minutes)",
        help="How often the simulated clock scans for new entrants. Empty: hourly, daily "
        "for triggers that look at whole days (birthdays, inactivity, replenishment). The "
        "live scan runs every minute; a coarser replay only rounds entry times up.",
    )
    state = fields.Selection([("draft", "Draft"), ("done", "Done")], default="draft")
    entrant_count = fields.Integer(string="Entrants", readonly=True)
    holdout_count = fields.Integer(string="In holdout", readonly=True)
    sent_count = fields.Integer(string="Messages", readonly=True)
    consent_skip_count = fields.Integer(string="Skipped for consent", readonly=True)
    cap_deferral_count = fields.Integer(string="Deferred by caps", readonly=True)
    quiet_deferral_count = fields.Integer(string="Deferred by quiet hours", readonly=True)
    goal_exit_count = fields.Integer(string="Reached the goal", readonly=True)
    pending_count = fields.Integer(
        string="Still pending", readonly=True,
        help="Steps that would fall due after the end of the window.",
    )
    activation_entrant_count = fields.Integer(string="Entrants on the first day", readonly=True)
    activation_sent_count = fields.Integer(
        string="Messages on the first day", readonly=True,
        help="What switching the journey on would send in its first 24 hours: for cart "
        "journeys only carts that go idle after activation, plus those of the look-back.",
    )
    duration_seconds = fields.Float(string="Computed in (s)", readonly=True, digits=(16, 2))
    result_json = fields.Json(readonly=True)
    result_html = fields.Html(readonly=True, sanitize=False)

    def init(self):
        # The cart trigger selects draft carts by the instant they were found abandoned,
        # at every scan (each minute live, each simulated tick here): without this index
        # that is a scan of every draft order. It serves sale_order's cart trigger and
        # belongs with sale_order's own indexes; created here until it moves there.
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS sale_order_drip_abandoned_at_idx
                ON sale_order (drip_abandoned_at)
             WHERE state = 'draft' AND drip_abandoned_at IS NOT NULL;
            """
        )

    @api.constrains("days", "scan_interval_minutes")
    def _check_window(self):
        for backtest in self:
            if not 1 <= backtest.days <= 366:
                raise ValidationError(_("Replay between 1 and 366 days."))
            if backtest.scan_interval_minutes and not (
                    1 <= backtest.scan_interval_minutes <= 1440):
                raise ValidationError(_("Scan between every minute and once a day."))

    # ------------------------------------------------------------------ actions
    def action_run(self):
        self.ensure_one()
        started = time.perf_counter()
        result = self._backtest()
        totals = result["totals"]
        self.write({
            "state": "done",
            "entrant_count": result["entrants"],
            "holdout_count": result["holdout_entrants"],
            "sent_count": totals["sent"],
            "consent_skip_count": totals["consent"],
            "cap_deferral_count": totals["cap_deferrals"],
            "quiet_deferral_count": totals["quiet_deferrals"],
            "goal_exit_count": totals["goal"],
            "pending_count": result["pending"],
            "activation_entrant_count": result["activation_day"]["entrants"],
            "activation_sent_count": result["activation_day"]["sent"],
            "duration_seconds": time.perf_counter() - started,
            "result_json": result,
            "result_html": self._render(result),
        })
        return {
            "type": "ir.actions.act_window",
            "res_model": self._name,
            "res_id": self.id,
            "view_mode": "form",
            "target": "new",
        }

    # ------------------------------------------------------------------ the replay
    def _interval(self):
        minutes = self.scan_interval_minutes or (
            1440 if self.journey_id.trigger in DAILY_TRIGGERS else 60)
        return timedelta(minutes=minutes)

    def _backtest(self):
        """The replay as plain data (also what tests and the benchmark read)."""
        self.ensure_one()
        journey = self.journey_id
        end = self.end_at
        start = end - timedelta(days=self.days)
        interval = self._interval()
        ticks = []
        tick = start + interval
        while tick <= end:
            ticks.append(tick)
            tick += interval
        timings = {}
        clock = time.perf_counter()
        entrants = self._replay_entries(journey, start, ticks)
        timings["entries"] = round(time.perf_counter() - clock, 3)
        clock = time.perf_counter()
        result = self._replay_steps(journey, entrants, start, end)
        timings["steps"] = round(time.perf_counter() - clock, 3)
        result.update(
            start=fields.Datetime.to_string(start), end=fields.Datetime.to_string(end),
            scan_interval_minutes=int(interval.total_seconds() // 60), ticks=len(ticks),
            timings=timings,
        )
        return result

    def _replay_entries(self, journey, start, ticks):
        """[(partner_id, order_id, entered_at)] as the live scan would have enrolled them.

        Inside a SAVEPOINT that is always rolled back: a shadow journey (inactive, no
        steps, no holdout) is created, and :meth:`_private_copies` gives this session
        its own temporary ``drip_enrollment`` (and, for carts, ``sale_order`` holding the
        carts) that the live statements then read and write instead of the shared
        tables. So the replay takes no lock on live rows and the rollback drops it all.
        For cart journeys the live cart scan stamps carts at each tick, and carts
        confirmed after going idle are put back to draft first (the trigger then sees
        them as the live scan did at the time).
        """
        self.env.flush_all()
        cr = self.env.cr
        savepoint = cr.savepoint(flush=False)
        try:
            shadow = self._shadow_journey(journey, start)
            marks = self._event_marks(journey, start, ticks)
            carts = journey.trigger == "cart_abandoned"
            self._private_copies(journey, start, carts)
            if carts:
                self._restore_idle_carts(journey, start, ticks[-1] if ticks else start)
            Order = self.env["sale.order"].sudo()
            active = self._active_ticks(journey, start, ticks)
            # The cart scan only has work where a cart not yet stamped goes idle.
            marking = self._active_ticks(journey, start, ticks, unstamped=True) if carts else ()
            cache = self.env.cache
            watermark_fields = [shadow._fields[name]
                                for name in ("scan_watermark", "event_watermark")]
            for index, (tick, mark) in enumerate(zip(ticks, marks)):
                if active is not None and index not in active:
                    continue  # nothing can have happened since the last scan that ran
                if carts and index in marking:
                    Order._drip_mark_abandoned_carts(limit=10**9, now=tick)
                candidates = shadow._trigger_candidates(tick, mark)
                if candidates is not None:
                    shadow._enroll(candidates, now=tick)
                # Move the marks where the trigger SQL reads them (the shadow's cache):
                # a row write per tick would cost two statements for nothing.
                for field, value in zip(watermark_fields, (tick, mark)):
                    cache.set(shadow, field, value)
            cr.execute(
                """
                SELECT partner_id, order_id, entered_at FROM drip_enrollment
                 WHERE journey_id = %s ORDER BY entered_at, id
                """,
                [shadow.id],
            )
            entrants = cr.fetchall()
            # Anything the ORM still holds goes into the savepoint, to be undone with it.
            self.env.flush_all()
        finally:
            savepoint.close(rollback=True)
            self.env.transaction.clear()
        return entrants

    def _private_copies(self, journey, start, carts):
        """Session-private copies of the tables the replay writes, inside the savepoint.

        PostgreSQL resolves an unqualified table name in the session's temporary schema
        first, so ``_enroll`` and the cart scan, unchanged, write to these copies: no
        foreign-key checks, no WAL, no lock on a live row, and nothing left once the
        savepoint is rolled back (a temporary table created in it is dropped with it).
        Nothing else runs on this cursor until then. The cart copy holds only the carts
        that can matter in the window: not stamped before it, and draft or confirmed
        within it.
        """
        cr = self.env.cr
        cr.execute("CREATE TEMPORARY TABLE drip_enrollment "
                   "(LIKE public.drip_enrollment INCLUDING DEFAULTS INCLUDING INDEXES)")
        if carts:
            cr.execute("CREATE TEMPORARY TABLE sale_order "
                       "(LIKE public.sale_order INCLUDING DEFAULTS INCLUDING INDEXES)")
            cr.execute(
                """
                INSERT INTO pg_temp.sale_order
                SELECT * FROM public.sale_order
                 WHERE drip_is_cart AND (drip_abandoned_at IS NULL OR drip_abandoned_at > %s)
                   AND (state = 'draft' OR date_order > %s)
                """,
                [start, start],
            )
            cr.execute("ANALYZE pg_temp.sale_order")

    def _shadow_journey(self, journey, start):
        # The journey's own settings (trigger, entry filter, re-entry policy, company…):
        # every copyable stored field but the steps, participants and chatter.
        vals = {
            name: field.convert_to_write(journey[name], journey)
            for name, field in journey._fields.items()
            if field.copy and field.store and field.type != "one2many"
            and name not in models.MAGIC_COLUMNS
        }
        cr = self.env.cr
        cr.execute("SELECT COALESCE(max(id), 0) FROM drip_event WHERE create_date <= %s",
                   [start])
        last_event = cr.fetchone()[0]
        vals.update(
            name=_("Backtest of %s", journey.name), active=False, state="running",
            activated_at=start, scan_watermark=start, event_watermark=last_event,
            event_floor=last_event,
            holdout_percent=0.0, goal_type="none",
        )
        return self.env["drip.journey"].sudo().with_context(
            tracking_disable=True, mail_create_nolog=True, mail_notrack=True,
        ).create(vals)

    def _event_marks(self, journey, start, ticks):
        """The last drip.event id recorded by each tick (event-based triggers read by id)."""
        if journey.trigger not in EVENT_TRIGGERS or not ticks:
            return [0] * len(ticks)
        step = (ticks[0] - start).total_seconds()
        self.env["drip.event"].flush_model()
        self.env.cr.execute(
            """
            SELECT GREATEST(-1, ceil(extract(epoch FROM create_date - %(start)s) / %(step)s)
                   - 1)::int AS k, max(id)
              FROM drip_event WHERE create_date <= %(end)s GROUP BY 1
            """,
            {"start": start, "step": step, "end": ticks[-1]},
        )
        by_tick = dict(self.env.cr.fetchall())
        marks, last = [], by_tick.get(-1, 0)
        for index in range(len(ticks)):
            last = max(last, by_tick.get(index, 0))
            marks.append(last)
        return marks

    def _active_ticks(self, journey, start, ticks, unstamped=False):
        """Indexes of the ticks after which something the trigger reads may have
        happened (a superset), or None to scan at every tick.

        A scan between two such ticks finds nothing; skipping it and letting the next
        scan cover the gap (its watermark is the last scan that ran) changes nothing.
        With ``unstamped``: the ticks where a cart not stamped yet goes idle (where the
        cart scan has something to stamp).
        """
        if not ticks:
            return set()
        step = (ticks[0] - start).total_seconds()
        company = journey.company_id
        idle = SQL(
            """
            SELECT drip_cart_activity_at + make_interval(secs => %s) FROM sale_order
             WHERE drip_is_cart AND drip_cart_activity_at IS NOT NULL %s
            """,
            company.drip_cart_abandon_delay * 3600,
            SQL("AND drip_abandoned_at IS NULL") if unstamped else SQL(),
        )
        instants = {
            "cart_abandoned": idle if unstamped else SQL(
                "%s UNION ALL SELECT drip_abandoned_at FROM sale_order "
                "WHERE drip_abandoned_at IS NOT NULL", idle),
            "order_confirmed": SQL("SELECT date_order FROM sale_order WHERE state = 'sale'"),
            "partner_created": SQL("SELECT create_date FROM res_partner"),
            "browse_abandoned": SQL(
                "SELECT occurred_at + make_interval(hours => %s) FROM drip_event",
                journey.trigger_hours),
        }.get(journey.trigger)
        if instants is None and journey.trigger in EVENT_TRIGGERS:
            instants = SQL("SELECT create_date FROM drip_event")
        if instants is None:
            return None
        self.env.flush_all()
        self.env.cr.execute(SQL(
            """
            SELECT DISTINCT GREATEST(0, ceil(extract(epoch FROM i.at - %(start)s) / %(step)s)
                                        - 1)::int
              FROM (%(instants)s) AS i(at)
             WHERE i.at > %(start)s AND i.at <= %(end)s
            """,
            start=start, step=step, end=ticks[-1], instants=instants,
        ))
        # The first scan also sees what happened before the window (look-back, carts
        # that went idle earlier): it always runs.
        return {row[0] for row in self.env.cr.fetchall()} | {0}

    def _restore_idle_carts(self, journey, start, end):
        """Carts confirmed after they went idle were abandoned carts at the time: back
        to draft in the private copy, so the live cart scan and trigger see them."""
        company = journey.company_id
        self.env["sale.order"].flush_model()
        self.env.cr.execute(
            """
            UPDATE sale_order o SET state = 'draft'
             WHERE o.id IN (
                   SELECT c.id FROM sale_order c
                    WHERE c.drip_is_cart AND c.state = 'sale' AND c.company_id = %(company)s
                      AND c.date_order > %(start)s AND c.date_order <= %(end)s
                      AND c.drip_cart_activity_at IS NOT NULL
                      AND c.drip_cart_activity_at + make_interval(secs => %(delay)s)
                          < c.date_order)
            """,
            {"company": company.id, "start": start, "end": end,
             "delay": company.drip_cart_abandon_delay * 3600},
        )
        self.env["sale.order"].invalidate_model(["state"])

    # ------------------------------------------------------------------ the walk
    def _replay_steps(self, journey, entrants, start, end):
        """Walk the step tree for every entrant; count per day and step."""
        company = journey.company_id
        quiet = company._drip_quiet_hours()
        key = journey._journey_key()
        tree = self._tree_with_winners(journey)
        facts = _Facts(self, journey, entrants, start, end, tree)
        day_one = start + timedelta(days=1)
        per_day = defaultdict(Counter)  # (day, step id) -> counters
        entered_per_day = Counter()
        sends = defaultdict(list)  # partner -> this journey's simulated sends, in order
        pending = holdout_entrants = 0
        activation = Counter()
        consent_reasons = Counter()
        priority, transactional = journey.priority, journey.transactional
        steps_by_id = tree.steps
        longest = max((rule.period for rule in facts.rules), default=timedelta(0))

        # The engine's answers are pure functions of these arguments, and the same ones
        # come back for thousands of entrants (entries fall on scan ticks): memoised.
        @lru_cache(maxsize=65536)
        def quiet_until(when, tz):
            """None outside quiet hours, else when sending may resume."""
            if schedule.is_quiet(when, tz, quiet):
                return schedule.next_allowed(when, tz, quiet)
            return None

        @lru_cache(maxsize=65536)
        def arbitrate(recent, when):
            decision = caps_engine.arbitrate(
                [caps_engine.Candidate(0, 0, when, priority, transactional)], {0: recent},
                facts.rules, when,
            )[0]
            return decision.until if decision.action == caps_engine.DEFER else None

        def cap_until(history, when):
            """None when the caps allow a send at ``when``, else the next slot. Only the
            sends of the longest window before ``when`` matter (as in ``arbitrate``)."""
            end_index = bisect_right(history, when)
            start_index = bisect_right(history, when - longest, 0, end_index)
            return arbitrate(tuple(history[start_index:end_index]), when)

        for partner_id, order_id, entered_at in entrants:
            entered_per_day[entered_at.date()] += 1
            if entered_at < day_one:
                activation["entrants"] += 1
            holdout = facts.holdout(partner_id)
            holdout_entrants += holdout
            tz = facts.tz(partner_id)
            ran_at = {}
            exited = []

            def evaluate(step, at, partner_id=partner_id, order_id=order_id,
                         entered_at=entered_at, holdout=holdout, tz=tz, ran_at=ran_at,
                         exited=exited):
                nonlocal pending
                if exited:
                    return "skip", "exited"
                if at > end:
                    pending += 1
                    return "skip", "after the window"
                if facts.goal_reached(partner_id, order_id, entered_at, at):
                    exited.append(at)
                    per_day[at.date(), step.id]["goal"] += 1
                    return "skip", "goal"
                parent_at = ran_at.get(step.parent_id)
                if (step.trigger == "not_ordered" and parent_at is not None
                        and facts.ordered_between(partner_id, parent_at, at)):
                    per_day[at.date(), step.id]["condition_skip"] += 1
                    return "skip", "ordered"
                if step.step_type == "condition":
                    answer = facts.condition(step.id, partner_id, order_id)
                    per_day[at.date(), step.id]["ran"] += 1
                    ran_at[step.id] = at
                    return answer, ""
                if step.step_type != "send":
                    per_day[at.date(), step.id]["ran"] += 1
                    ran_at[step.id] = at
                    return "run", ""
                if holdout:
                    per_day[at.date(), step.id]["holdout"] += 1
                    ran_at[step.id] = at
                    return "run", "holdout"
                refusal = facts.refusal(step.id, partner_id)
                if refusal:
                    per_day[at.date(), step.id]["consent"] += 1
                    consent_reasons[refusal] += 1
                    return "skip", "consent"
                if facts.channel.get(step.id) == "note":
                    # Notes on the customer: no quiet hours, no caps (as delivery does).
                    per_day[at.date(), step.id]["sent"] += 1
                    activation["sent"] += at < day_one
                    ran_at[step.id] = at
                    return "send", ""
                when = at
                history = facts.sent_history(partner_id, sends[partner_id])
                for _attempt in range(MAX_DEFERRALS):
                    if when > end:
                        pending += 1
                        return "skip", "deferred past the window"
                    if when > at and facts.goal_reached(partner_id, order_id, entered_at,
                                                        when):
                        exited.append(when)
                        per_day[when.date(), step.id]["goal"] += 1
                        return "skip", "goal"
                    until = quiet_until(when, tz)
                    if until:
                        per_day[when.date(), step.id]["quiet_deferrals"] += 1
                        when = until
                        continue
                    if facts.rules:
                        until = cap_until(history, when)
                        if until:
                            per_day[when.date(), step.id]["cap_deferrals"] += 1
                            when = until
                            continue
                    break
                if when > at:
                    # Deferred: walk this step's sub-tree again from the instant it goes
                    # out, as delivery starts the next steps only once it is sent.
                    journey_engine.simulate(
                        facts.subtree(step.id), when, tz=tz, quiet=quiet, journey_key=key,
                        partner_id=partner_id, evaluate=evaluate,
                    )
                    return "skip", "deferred"
                per_day[when.date(), step.id]["sent"] += 1
                if when < day_one:
                    activation["sent"] += 1
                own = sends[partner_id]
                own.insert(bisect_left(own, when), when)
                ran_at[step.id] = when
                return "send", ""

            journey_engine.simulate(
                tree, entered_at, tz=tz, quiet=quiet, journey_key=key, partner_id=partner_id,
                evaluate=evaluate,
            )

        totals = Counter()
        for counters in per_day.values():
            totals.update(counters)
        names = {step_id: step.name for step_id, step in steps_by_id.items()}
        return {
            "journey_id": journey.id,
            "entrants": len(entrants),
            "holdout_entrants": holdout_entrants,
            "pending": pending,
            "totals": {name: totals[name] for name in COUNTERS},
            "activation_day": {"entrants": activation["entrants"], "sent": activation["sent"]},
            "steps": {str(step_id): name for step_id, name in names.items()},
            "entered_per_day": {day.isoformat(): n for day, n in sorted(entered_per_day.items())},
            "per_day": [
                dict({"day": day.isoformat(), "step_id": step_id}, **dict(counters))
                for (day, step_id), counters in sorted(per_day.items())
            ],
            "consent_reasons": dict(consent_reasons),
        }

    def _tree_with_winners(self, journey):
        """The journey's tree, a promoted A/B winner taking all of its split's weight
        (``_run_split`` sends every new entrant there)."""
        specs = []
        winners = {step.split_winner_id.id for step in journey.step_ids if step.split_winner_id}
        losers = {child.id for step in journey.step_ids if step.split_winner_id
                  for child in step.child_ids if child != step.split_winner_id}
        for step in journey.step_ids:
            spec = step._spec()
            if spec.id in winners:
                spec = replace(spec, split_weight=100.0)
            elif spec.id in losers:
                spec = replace(spec, split_weight=0.0)
            specs.append(spec)
        return journey_engine.JourneyTree.from_steps(specs)

    # ------------------------------------------------------------------ rendering
    def _render(self, result):
        steps = result["steps"]
        by_day = defaultdict(dict)
        for row in result["per_day"]:
            by_day[row["day"]][row["step_id"]] = row
        step_ids = [int(sid) for sid in steps]
        head = Markup("").join(Markup("<th class='text-end'>%s</th>") % steps[str(sid)]
                               for sid in step_ids)
        body = Markup("")
        days = sorted(set(by_day) | set(result["entered_per_day"]))
        for day in days:
            cells = Markup("").join(
                Markup("<td class='text-end'>%s</td>") % self._cell(by_day[day].get(sid))
                for sid in step_ids
            )
            body += Markup("<tr><td>%s</td><td class='text-end'>%s</td>%s</tr>") % (
                day, result["entered_per_day"].get(day, 0), cells)
        if not days:
            body = Markup("<tr><td colspan='%s'>%s</td></tr>") % (
                len(step_ids) + 2, _("Nobody would have entered in this window."))
        notes = Markup("<p class='text-muted small'>%s</p>") % _(
            "Per day and step: messages sent (and, in brackets, skipped for consent · "
            "deferred by caps · deferred by quiet hours · goal reached). Replayed from %(start)s "
            "to %(end)s UTC with a scan every %(minutes)s minutes; nothing was sent or "
            "saved. Consent and conditions are today's; nobody is assumed to open or click.",
            start=result["start"], end=result["end"], minutes=result["scan_interval_minutes"])
        return Markup(
            "<table class='table table-sm o_drip_backtest'><thead><tr><th>%s</th>"
            "<th class='text-end'>%s</th>%s</tr></thead><tbody>%s</tbody></table>%s"
        ) % (_("Day (UTC)"), _("Entered"), head, body, notes)

    def _cell(self, row):
        if not row:
            return ""
        main = row.get("sent", 0) or row.get("ran", 0)
        extra = [row.get(name, 0) for name in ("consent", "cap_deferrals", "quiet_deferrals",
                                                "goal")]
        return f"{main} ({' · '.join(map(str, extra))})" if any(extra) else str(main)


class _Facts:
    """Everything the walk asks about entrants, read set-based before it starts."""

    def __init__(self, wizard, journey, entrants, start, end, tree):
        env = wizard.env
        self.env = env
        self.tree = tree
        self._subtrees = {}
        self.company = company = journey.company_id
        partner_ids = sorted({row[0] for row in entrants})
        order_ids = sorted({row[1] for row in entrants if row[1]})
        self.partners = env["res.partner"].with_context(active_test=False).browse(partner_ids)
        cr = env.cr
        env["res.partner"].flush_model(["tz"])
        cr.execute("SELECT id, tz FROM res_partner WHERE id = ANY(%s)", [partner_ids])
        default_tz = company.drip_default_tz or "UTC"
        self._tz = {pid: schedule.resolve_tz(tz or default_tz) for pid, tz in cr.fetchall()}
        self.holdout_percent = journey.holdout_percent
        self.key = journey._journey_key()
        self._holdout = {}
        # Consent per channel of the sending steps, as delivery checks it.
        self._refused = {}
        self.channel = {}
        by_channel = {}
        for step in journey.step_ids.filtered(lambda s: s.step_type == "send"):
            self.channel[step.id] = step.channel
            if step.channel not in by_channel:
                _allowed, reasons = self.partners._drip_consent_filter(step.channel,
                                                                        company=company)
                by_channel[step.channel] = reasons
            self._refused[step.id] = by_channel[step.channel]
        # Orders as they happened: the goal and the "no order within…" checks.
        env["sale.order"].flush_model(["partner_id", "state", "date_order"])
        cr.execute(
            """
            SELECT partner_id, array_agg(date_order ORDER BY date_order) FROM sale_order
             WHERE partner_id = ANY(%s) AND state = 'sale' AND date_order >= %s
             GROUP BY partner_id
            """,
            [partner_ids, start - timedelta(days=1)],
        )
        self._orders = dict(cr.fetchall())
        self._order_confirmed = {}
        self._carts = set()
        if order_ids:
            # An entry for an order already confirmed (post-purchase, win-back) waits
            # for another order, like an entry without one: only carts are looked up.
            cr.execute("SELECT id, state = 'sale', date_order FROM sale_order "
                       "WHERE id = ANY(%s) AND drip_is_cart", [order_ids])
            for order_id, confirmed, date_order in cr.fetchall():
                self._carts.add(order_id)
                if confirmed:
                    self._order_confirmed[order_id] = date_order
        self.goal_type = journey.goal_type
        self._goal_partners = set()
        if self.goal_type == "domain":
            goal = journey._parse_partner_domain(journey.goal_domain, _("Goal filter"))
            self._goal_partners = set(self.partners.filtered_domain(goal).ids)
        # Conditions, evaluated once on today's data.
        self._conditions = {}
        for step in journey.step_ids.filtered(lambda s: s.step_type == "condition"):
            if step.condition_model == "res.partner":
                records = self.partners
            else:
                records = env["sale.order"].with_context(active_test=False).browse(order_ids)
            domain = checked_domain(env, records._name, step.condition_domain, step.name)
            self._conditions[step.id] = (step.condition_model == "res.partner",
                                         set(records.filtered_domain(domain).ids))
        # Frequency caps: the company's rules and what the other journeys really sent.
        self.rules = [
            caps_engine.CapRule(count, hours)
            for count, hours in ((company.drip_cap_per_day, 24),
                                 (company.drip_cap_per_week, 24 * 7))
            if count
        ]
        self._history = {}
        if self.rules:
            longest = max(rule.period for rule in self.rules)
            env["drip.message"].flush_model()
            cr.execute(SQL(
                """
                SELECT partner_id, array_agg(sent_at ORDER BY sent_at) FROM drip_message
                 WHERE partner_id = ANY(%s) AND journey_id <> %s AND sent_at IS NOT NULL
                   AND state = 'sent' AND step_type = 'send' AND channel <> 'note'
                   AND is_test IS NOT TRUE AND sent_at > %s AND sent_at <= %s
                 GROUP BY partner_id
                """,
                partner_ids, journey.id, start - longest, end,
            ))
            self._history = dict(cr.fetchall())

    def subtree(self, step_id):
        """The tree of ``step_id`` and its descendants, the step as a root due at once."""
        if step_id not in self._subtrees:
            tree = self.tree
            specs = [replace(tree.steps[step_id], parent_id=None, delay_value=0,
                             time_of_day=None, use_best_time=False)]
            todo = [step_id]
            while todo:
                children = tree.children(todo.pop())
                specs += children
                todo += [child.id for child in children]
            self._subtrees[step_id] = journey_engine.JourneyTree.from_steps(specs)
        return self._subtrees[step_id]

    def tz(self, partner_id):
        return self._tz.get(partner_id, "UTC")

    def holdout(self, partner_id):
        if not self.holdout_percent:
            return False
        if partner_id not in self._holdout:
            self._holdout[partner_id] = hashing.in_holdout(self.key, partner_id,
                                                           self.holdout_percent)
        return self._holdout[partner_id]

    def refusal(self, step_id, partner_id):
        """The skip reason (no_consent, blacklisted, no_address) or None."""
        return self._refused.get(step_id, {}).get(partner_id)

    def goal_reached(self, partner_id, order_id, entered_at, at):
        """As ``drip.enrollment._ordered_since_entry`` decides, with orders as of ``at``."""
        if self.goal_type == "domain":
            return partner_id in self._goal_partners
        if self.goal_type != "order":
            return False
        if order_id in self._carts:
            confirmed = self._order_confirmed.get(order_id)
            return confirmed is not None and confirmed <= at
        return self.ordered_between(partner_id, entered_at, at)

    def ordered_between(self, partner_id, since, until):
        dates = self._orders.get(partner_id)
        if not dates:
            return False
        index = bisect_left(dates, since)
        return index < len(dates) and dates[index] <= until

    def condition(self, step_id, partner_id, order_id):
        on_partner, matching = self._conditions.get(step_id, (True, set()))
        return "yes" if (partner_id if on_partner else order_id) in matching else "no"

    def sent_history(self, partner_id, own):
        """Sorted send instants of the customer: other journeys' real ones and ours."""
        others = self._history.get(partner_id)
        if not others:
            return own
        return sorted([*others, *own])
