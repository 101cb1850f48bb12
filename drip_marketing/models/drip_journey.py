from datetime import timedelta

from odoo import _, api, fields, models
from odoo.exceptions import UserError, ValidationError
from odoo.tools import SQL

from ..engine import hashing
from ..engine import journey as journey_engine
from .domain_tools import checked_domain

# Which record a journey's entrants come from: drives the source of an enrollment and
# which goals make sense.
ORDER_TRIGGERS = ("order_confirmed", "cart_abandoned")
SCAN_OVERLAP = timedelta(minutes=15)
EVENT_ID_OVERLAP = 1000

TRIGGERS = [
    ("partner_created", "Customer created or signed up"),
    ("order_confirmed", "Order confirmed"),
    ("cart_abandoned", "Cart abandoned"),
    ("browse_abandoned", "Product viewed, not bought"),
    ("tag_added", "Tag added to the customer"),
    ("segment_entered", "Customer entered a segment"),
    ("rfm_segment_changed", "RFM segment changed"),
    ("partner_date", "Date on the customer (birthday, anniversary)"),
    ("inactivity", "No order for a number of days"),
    ("replenishment", "Repurchase of a product due"),
    ("score_crossed", "Engagement score crossed a threshold"),
    ("event", "Event received through the API"),
]


class DripJourney(models.Model):
    _name = "drip.journey"
    _description = "Drip Marketing Journey"
    _inherit = ["mail.thread", "mail.activity.mixin"]
    _order = "priority desc, sequence, id"

    name = fields.Char(required=True, tracking=True, translate=True)
    active = fields.Boolean(default=True)
    sequence = fields.Integer(default=10)
    color = fields.Integer()
    description = fields.Text(translate=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    state = fields.Selection(
        [
            ("draft", "Draft"),
            ("running", "Running"),
            ("paused", "Paused"),
            ("stopped", "Stopped"),
        ],
        default="draft",
        required=True,
        tracking=True,
        copy=False,
        index=True,
    )
    trigger = fields.Selection(TRIGGERS, required=True, default="partner_created", tracking=True)
    trigger_model = fields.Selection(
        [("res.partner", "Customer"), ("sale.order", "Order")],
        compute="_compute_trigger_model",
        store=True,
        help="Entrants come from this kind of record; each enrollment points to one.",
    )
    trigger_tag_id = fields.Many2one("res.partner.category", string="Tag")
    trigger_segment_id = fields.Many2one("drip.segment", string="Segment")
    trigger_rfm_segment = fields.Selection(
        "_selection_rfm_segment",
        string="Into RFM segment",
        help="Empty: any change of RFM segment.",
    )
    trigger_date_field = fields.Selection(
        [("drip_birthday", "Birthday"), ("create_date", "Customer since (anniversary)")],
        string="Date",
        default="drip_birthday",
    )
    trigger_event_type_id = fields.Many2one("drip.event.type", string="Event type")
    trigger_days = fields.Integer(
        string="Days",
        default=90,
        help="Inactivity: days without a confirmed order. Replenishment: days before the "
        "predicted repurchase date.",
    )
    trigger_use_rhythm = fields.Boolean(
        string="Use each customer's own rhythm",
        default=True,
        help="Inactivity: a customer with at least three orders lapses after twice their "
        "median time between orders, if that is longer than the days above.",
    )
    trigger_hours = fields.Integer(
        string="Hours",
        default=4,
        help="Browse abandonment: hours after the product view without an order.",
    )
    trigger_score_threshold = fields.Float(string="Score threshold", default=50.0)
    entry_domain = fields.Char(
        string="Entry filter",
        default="[]",
        help="Only customers matching this filter enter the journey.",
    )
    reentry_policy = fields.Selection(
        [
            ("once", "Once ever"),
            ("per_source", "Once per source record (e.g. each cart)"),
            ("cooldown", "Again after a cool-down"),
        ],
        default="once",
        required=True,
        string="Re-entry",
    )
    reentry_cooldown_days = fields.Integer(string="Cool-down (days)", default=30)
    goal_type = fields.Selection(
        [
            ("none", "No goal"),
            ("order", "Customer places an order"),
            ("domain", "Customer matches a filter"),
        ],
        string="Exit goal",
        default="none",
        required=True,
        tracking=True,
        help="Participants leave the journey, and pending messages are cancelled, as soon "
        "as the goal is met. For cart journeys 'places an order' means that cart is "
        "confirmed.",
    )
    goal_domain = fields.Char(string="Goal filter", default="[]")
    priority = fields.Integer(
        default=10,
        tracking=True,
        help="When frequency caps allow fewer messages than are due, the journey with the "
        "higher priority sends first.",
    )
    transactional = fields.Boolean(
        help="Time-critical messages (cart reminders) go to the transactional queue and are "
        "exempt from frequency caps; they still respect consent and quiet hours."
    )
    holdout_percent = fields.Float(
        string="Holdout (%)",
        default=0.0,
        tracking=True,
        help="A random, stable share of entrants who receive no message, kept to measure "
        "the journey's lift.",
    )
    cart_lookback_hours = fields.Integer(
        string="Look-back on activation (hours)",
        default=0,
        help="Cart journeys: carts that went idle up to this many hours before activation "
        "also enter. 0: only carts that go idle after activation.",
    )
    activated_at = fields.Datetime(readonly=True, copy=False)
    # Where the trigger scan stopped: time for time-based triggers, the last drip.event
    # id for event-based ones (events may arrive with an old occurred_at).
    scan_watermark = fields.Datetime(readonly=True, copy=False)
    event_watermark = fields.Integer(readonly=True, copy=False)
    event_floor = fields.Integer(
        readonly=True, copy=False, help="Last event id before activation: never replayed."
    )
    step_ids = fields.One2many("drip.step", "journey_id", string="Steps")
    root_step_ids = fields.One2many(
        "drip.step", "journey_id", domain=[("parent_id", "=", False)], string="First steps"
    )
    enrollment_ids = fields.One2many("drip.enrollment", "journey_id", string="Participants")
    message_ids_count = fields.Integer(compute="_compute_statistics", string="Ledger rows")
    enrollment_count = fields.Integer(compute="_compute_statistics", string="Participant count")
    active_enrollment_count = fields.Integer(compute="_compute_statistics", string="In progress")
    sent_count = fields.Integer(compute="_compute_statistics", string="Sent")
    opened_count = fields.Integer(compute="_compute_statistics", string="Opened")
    clicked_count = fields.Integer(compute="_compute_statistics", string="Clicked")
    converted_count = fields.Integer(compute="_compute_statistics", string="Converted")
    currency_id = fields.Many2one(related="company_id.currency_id")
    revenue = fields.Monetary(compute="_compute_statistics", currency_field="currency_id")
    diagram_data = fields.Json(
        compute="_compute_diagram_data",
        help="The step tree with branch labels and live counts, drawn by the journey "
        "diagram widget.",
    )

    _sql_constraints = [
        (
            "holdout_range",
            "CHECK(holdout_percent >= 0 AND holdout_percent <= 100)",
            "The holdout percentage must be between 0 and 100.",
        ),
        (
            "cooldown_positive",
            "CHECK(reentry_cooldown_days >= 0 AND trigger_days >= 0 AND trigger_hours >= 0 "
            "AND cart_lookback_hours >= 0)",
            "Days and hours cannot be negative.",
        ),
    ]

    @api.model
    def _selection_rfm_segment(self):
        return self.env["res.partner"]._fields["drip_rfm_segment"].selection

    @api.depends("trigger")
    def _compute_trigger_model(self):
        for journey in self:
            journey.trigger_model = (
                "sale.order" if journey.trigger in ORDER_TRIGGERS else "res.partner"
            )

    def _compute_statistics(self):
        # One grouped query per measure family, never a loop over messages.
        enrollments = {
            (journey.id, state): count
            for journey, state, count in self.env["drip.enrollment"]._read_group(
                [("journey_id", "in", self.ids)], ["journey_id", "state"], ["__count"]
            )
        }
        messages = {
            journey.id: values
            for journey, *values in self.env["drip.message"]._read_group(
                [("journey_id", "in", self.ids), ("is_test", "=", False)],
                ["journey_id"],
                [
                    "__count",
                    "sent_at:count",
                    "opened_at:count",
                    "clicked_at:count",
                    "converted_at:count",
                    "revenue:sum",
                ],
            )
        }
        for journey in self:
            counts = {s: enrollments.get((journey.id, s), 0) for s in ("active", "paused")}
            journey.enrollment_count = sum(
                count for (jid, _state), count in enrollments.items() if jid == journey.id
            )
            journey.active_enrollment_count = counts["active"] + counts["paused"]
            total, sent, opened, clicked, converted, revenue = messages.get(
                journey.id, (0, 0, 0, 0, 0, 0.0)
            )
            journey.message_ids_count = total
            journey.sent_count = sent
            journey.opened_count = opened
            journey.clicked_count = clicked
            journey.converted_count = converted
            journey.revenue = revenue

    @api.depends("step_ids", "step_ids.parent_id", "step_ids.name", "step_ids.step_type",
                 "step_ids.step_trigger", "step_ids.delay_value", "step_ids.delay_unit",
                 "step_ids.split_weight", "step_ids.template_id", "step_ids.channel")
    def _compute_diagram_data(self):
        triggers = dict(self.env["drip.step"]._fields["step_trigger"]._description_selection(
            self.env))
        types = dict(self.env["drip.step"]._fields["step_type"]._description_selection(self.env))
        for journey in self:
            steps = journey.step_ids.sorted(lambda s: (s.sequence, s._origin.id or 0))
            # Steps being edited in the form have no database id yet: key them by position.
            keys = {step: step._origin.id or f"new-{index}" for index, step in enumerate(steps)}
            journey.diagram_data = {
                "trigger": dict(self._fields["trigger"]._description_selection(self.env)).get(
                    journey.trigger, ""),
                "goal": dict(self._fields["goal_type"]._description_selection(self.env)).get(
                    journey.goal_type, ""),
                "nodes": [
                    {
                        "id": keys[step],
                        "parent_id": keys.get(step.parent_id, step.parent_id._origin.id or False),
                        "name": step.name or "",
                        "type": step.step_type,
                        "type_label": types.get(step.step_type, ""),
                        "branch": step._branch_label(triggers),
                        "delay": step._delay_label(),
                        "template": step.template_id.name or "",
                        "channel": step.channel if step.step_type == "send" else "",
                        "counts": step._origin._diagram_counts() if step._origin else {},
                    }
                    for step in steps
                ],
            }

    @api.constrains("entry_domain", "goal_domain", "goal_type")
    def _check_domains(self):
        for journey in self:
            journey._parse_partner_domain(journey.entry_domain, _("Entry filter"))
            if journey.goal_type == "domain":
                journey._parse_partner_domain(journey.goal_domain, _("Goal filter"))

    @api.constrains("trigger", "trigger_tag_id", "trigger_segment_id", "trigger_event_type_id")
    def _check_trigger_parameters(self):
        required = {
            "tag_added": ("trigger_tag_id", _("Choose the tag that starts the journey.")),
            "segment_entered": ("trigger_segment_id", _("Choose the segment to watch.")),
            "event": ("trigger_event_type_id", _("Choose the event type to listen to.")),
        }
        for journey in self:
            field_name, message = required.get(journey.trigger, (None, None))
            if field_name and not journey[field_name]:
                raise ValidationError(message)
            if journey.trigger == "inactivity" and journey.trigger_days <= 0:
                raise ValidationError(_("Inactivity needs a number of days above zero."))

    def _parse_partner_domain(self, domain_text, label):
        return checked_domain(
            self.env, "res.partner", domain_text, _("%(label)s of journey '%(journey)s'",
                                                    label=label, journey=self.name)
        )

    def write(self, vals):
        # Changing what the journey listens to while it runs would silently re-target it.
        frozen = {"trigger", "trigger_model", "company_id"}
        if frozen & set(vals) and self.filtered(lambda j: j.state in ("running", "paused")):
            raise UserError(
                _("Stop the journey before changing its trigger or company; running "
                  "participants would otherwise be re-targeted.")
            )
        return super().write(vals)

    def copy(self, default=None):
        new_journeys = super().copy(default=default)
        for old, new in zip(self, new_journeys, strict=True):
            old.root_step_ids._copy_tree(new, parent=None)
        return new_journeys

    def copy_data(self, default=None):
        vals_list = super().copy_data(default=default)
        if default and "name" in default:
            return vals_list
        return [
            dict(vals, name=self.env._("%s (copy)", journey.name))
            for journey, vals in zip(self, vals_list, strict=True)
        ]

    def action_start(self):
        for journey in self:
            if journey.state not in ("draft", "stopped"):
                raise UserError(_("Only a draft or stopped journey can be started."))
            journey._check_startable()
        now = fields.Datetime.now()
        self.env["drip.event"].flush_model()
        self.env.cr.execute("SELECT COALESCE(max(id), 0) FROM drip_event")
        last_event = self.env.cr.fetchone()[0]
        # Start listening from now: switching a journey on never replays the past
        # (except the cart look-back an admin opts into).
        self.write({"state": "running", "activated_at": now, "scan_watermark": now,
                    "event_watermark": last_event, "event_floor": last_event})
        return True

    def action_pause(self):
        if self.filtered(lambda j: j.state != "running"):
            raise UserError(_("Only a running journey can be paused."))
        self.write({"state": "paused"})
        return True

    def action_resume(self):
        if self.filtered(lambda j: j.state != "paused"):
            raise UserError(_("Only a paused journey can be resumed."))
        self._check_startable()
        self.write({"state": "running"})
        return True

    def action_stop(self):
        if self.filtered(lambda j: j.state not in ("running", "paused")):
            raise UserError(_("Only a running or paused journey can be stopped."))
        self.write({"state": "stopped"})
        self.env["drip.enrollment"].search(
            [("journey_id", "in", self.ids), ("state", "in", ("active", "paused"))]
        )._exit("journey_stopped")
        return True

    def _check_startable(self):
        self.ensure_one()
        if not self.step_ids.filtered(lambda s: s.step_type == "send" and s.template_id):
            raise UserError(
                _("Journey '%s' has no step that sends a message: add a 'Send' step with a "
                  "template before starting it.", self.name)
            )
        self._check_domains()
        self.step_ids._check_step_tree()

    def action_view_enrollments(self):
        return self._action_for("drip_marketing.drip_enrollment_action")

    def action_view_messages(self):
        return self._action_for("drip_marketing.drip_message_action")

    def _action_for(self, xmlid):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(xmlid)
        action["domain"] = [("journey_id", "=", self.id)]
        action["context"] = {"default_journey_id": self.id}
        return action

    # ------------------------------------------------------------------ enrollment
    def _journey_key(self):
        """Stable key for holdout draws and A/B branches (survives renames)."""
        self.ensure_one()
        return f"drip.journey,{self.id}"

    def _enroll(self, candidates, now=None):
        """Enroll the rows of the SQL ``candidates`` set-based; return new enrollments.

        ``candidates`` selects ``partner_id``, ``order_id`` (or NULL) and ``source_ref``.
        The entry filter, the company, the re-entry policy and the unique key apply in
        the same INSERT … SELECT … ON CONFLICT DO NOTHING, so a 100k-partner segment
        enters in one statement and a candidate seen twice enters once.
        """
        self.ensure_one()
        now = now or fields.Datetime.now()
        partners = self.env["res.partner"].with_context(active_test=False)
        entry = partners._search(
            self._parse_partner_domain(self.entry_domain, _("Entry filter"))
            + [("company_id", "in", (False, self.company_id.id))]
        )
        source_ref = (
            SQL("c.source_ref")
            if self.reentry_policy == "per_source"
            else SQL("'res.partner,' || c.partner_id")
        )
        cooldown = SQL(
            "OR (%s = 'cooldown' AND p.last_entered <= %s - make_interval(days => %s))",
            self.reentry_policy, now, self.reentry_cooldown_days,
        )
        self.env.flush_all()
        self.env.cr.execute(SQL(
            """
            WITH candidates AS (%(candidates)s),
            keyed AS (
                SELECT DISTINCT ON (c.partner_id, %(source_ref)s)
                       c.partner_id, c.order_id, %(source_ref)s AS source_ref,
                       c.source_ref AS trigger_ref
                  FROM candidates c
                 WHERE c.partner_id IN %(entry)s
                 ORDER BY c.partner_id, %(source_ref)s, c.order_id DESC NULLS LAST
            )
            INSERT INTO drip_enrollment (
                journey_id, partner_id, company_id, source_ref, trigger_ref, order_id, cycle,
                state, entered_at, is_holdout, revenue,
                create_uid, create_date, write_uid, write_date)
            SELECT %(journey)s, k.partner_id, %(company)s, k.source_ref, k.trigger_ref, k.order_id,
                   COALESCE(p.last_cycle + 1, 0), 'active', %(now)s, FALSE, 0,
                   %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM keyed k
              LEFT JOIN LATERAL (
                    SELECT max(e.cycle) AS last_cycle, max(e.entered_at) AS last_entered
                      FROM drip_enrollment e
                     WHERE e.journey_id = %(journey)s AND e.partner_id = k.partner_id
                       AND e.source_ref = k.source_ref
                   ) p ON TRUE
             WHERE p.last_cycle IS NULL %(cooldown)s
            ON CONFLICT (journey_id, partner_id, source_ref, cycle) DO NOTHING
            RETURNING id, partner_id
            """,
            candidates=candidates, source_ref=source_ref, entry=entry.subselect(),
            journey=self.id, company=self.company_id.id, now=now, uid=self.env.uid,
            cooldown=cooldown,
        ))
        rows = self.env.cr.fetchall()
        enrollments = self.env["drip.enrollment"].browse([row[0] for row in rows])
        if not rows:
            return enrollments
        if self.holdout_percent:
            key = self._journey_key()
            held = [eid for eid, pid in rows if hashing.in_holdout(key, pid, self.holdout_percent)]
            if held:
                self.env.cr.execute(
                    "UPDATE drip_enrollment SET is_holdout = TRUE WHERE id = ANY(%s)", [held]
                )
        self.env["drip.enrollment"].invalidate_model()
        self.env["drip.message"]._schedule_steps(
            [(eid, None, now) for eid, _pid in rows], self.root_step_ids
        )
        return enrollments

    def _tree(self):
        self.ensure_one()
        return journey_engine.JourneyTree.from_steps([step._spec() for step in self.step_ids])

    def _enroll_partners(self, partners, now=None):
        """Enroll given partners (manual enroll, tests); the journey's rules apply."""
        return self._enroll(
            SQL(
                "SELECT id AS partner_id, NULL::int AS order_id, 'res.partner,' || id AS "
                "source_ref FROM res_partner WHERE id = ANY(%s)",
                partners.ids,
            ),
            now=now,
        )

    # ------------------------------------------------------------------ triggers
    # Each ``_candidates_<trigger>`` returns SQL selecting (partner_id, order_id,
    # source_ref) of what happened between the watermark and ``now``; ``_enroll`` does
    # the rest. All of them read indexed columns or the event table by id.
    def _scan_since(self):
        """Where this scan starts: the watermark minus an overlap.

        Rows are stamped with their transaction's time but only become visible at
        commit; re-reading a margin catches a long transaction that committed after
        the previous scan, and the enrollment's unique key drops what was seen.
        """
        return self.scan_watermark - SCAN_OVERLAP

    def _candidates_partner_created(self, now):
        return SQL(
            """
            SELECT p.id AS partner_id, NULL::int AS order_id, 'res.partner,' || p.id AS source_ref
              FROM res_partner p
             WHERE p.create_date > %s AND p.create_date <= %s AND p.active
               AND NOT EXISTS (SELECT 1 FROM res_users u WHERE u.partner_id = p.id AND NOT u.share)
            """,
            self._scan_since(), now,
        )

    def _candidates_order_confirmed(self, now):
        return SQL(
            """
            SELECT o.partner_id, o.id AS order_id, 'sale.order,' || o.id AS source_ref
              FROM sale_order o
             WHERE o.state = 'sale' AND o.date_order > %s AND o.date_order <= %s
               AND o.company_id = %s
            """,
            self._scan_since(), now, self.company_id.id,
        )

    def _candidates_cart_abandoned(self, now):
        # Carts found idle by the cart scan; only those that went idle after the
        # journey was switched on (minus the look-back the admin opted into).
        delay_hours = self.company_id.drip_cart_abandon_delay
        return SQL(
            """
            SELECT o.partner_id, o.id AS order_id, 'sale.order,' || o.id AS source_ref
              FROM sale_order o
             WHERE o.state = 'draft' AND o.drip_abandoned_at > %(since)s
               AND o.drip_abandoned_at <= %(now)s AND o.company_id = %(company)s
               AND o.drip_cart_activity_at + make_interval(secs => %(delay)s)
                   >= %(activated)s - make_interval(hours => %(lookback)s)
            """,
            since=self.scan_watermark, now=now, company=self.company_id.id,
            delay=delay_hours * 3600, activated=self.activated_at,
            lookback=self.cart_lookback_hours,
        )

    def _candidates_browse_abandoned(self, now):
        # Views that reach their delay in this scan, with no confirmed order of that
        # product since the view.
        window = SQL("make_interval(hours => %s)", self.trigger_hours)
        return SQL(
            """
            SELECT ev.partner_id, NULL::int AS order_id, 'drip.event,' || ev.id AS source_ref
              FROM drip_event ev
              JOIN drip_event_type t ON t.id = ev.event_type_id AND t.code = 'product_viewed'
             WHERE ev.partner_id IS NOT NULL AND ev.company_id = %(company)s
               AND ev.occurred_at > %(since)s - %(window)s
               AND ev.occurred_at <= %(now)s - %(window)s
               AND NOT EXISTS (
                   SELECT 1 FROM sale_order o JOIN sale_order_line l ON l.order_id = o.id
                    WHERE o.partner_id = ev.partner_id AND o.state = 'sale'
                      AND l.product_id = ev.product_id AND o.date_order >= ev.occurred_at)
            """,
            company=self.company_id.id, since=self.scan_watermark, now=now, window=window,
        )

    def _candidates_partner_date(self, now):
        # Once a year per customer, on the date in the customer's own time zone (so a
        # 09:00 step is still ahead when the day starts there); 29 February is
        # celebrated on 28 February otherwise. Unknown zone names fall back to the
        # company's default rather than failing the scan.
        field_sql = SQL.identifier("p", self.trigger_date_field)
        return SQL(
            """
            WITH zones AS (SELECT name FROM pg_timezone_names),
            local AS (
                SELECT p.id, %(field)s AS day,
                       (%(now)s::timestamp AT TIME ZONE 'UTC')
                           AT TIME ZONE COALESCE(z.name, %(default_tz)s) AS at
                  FROM res_partner p LEFT JOIN zones z ON z.name = p.tz
                 WHERE p.active AND %(field)s IS NOT NULL
            )
            SELECT l.id AS partner_id, NULL::int AS order_id,
                   'res.partner,' || l.id || ',' || extract(year FROM l.at)::int AS source_ref
              FROM local l
             WHERE to_char(l.day, 'MM-DD') = to_char(l.at, 'MM-DD')
                OR (to_char(l.day, 'MM-DD') = '02-29' AND to_char(l.at, 'MM-DD') = '02-28'
                    AND extract(day FROM date_trunc('year', l.at)
                                + interval '2 months' - interval '1 day') = 28)
            """,
            field=field_sql, now=now, default_tz=self.company_id.drip_default_tz or "UTC",
        )

    def _candidates_inactivity(self, now):
        # Customers whose last confirmed order crossed N days ago since the last scan;
        # the source is that last order, so a customer who buys again can lapse again.
        return SQL(
            """
            SELECT last.partner_id, last.order_id, 'sale.order,' || last.order_id AS source_ref
              FROM (SELECT DISTINCT ON (o.partner_id) o.partner_id, o.id AS order_id,
                           o.date_order
                      FROM sale_order o
                     WHERE o.state = 'sale' AND o.company_id = %(company)s
                     ORDER BY o.partner_id, o.date_order DESC) last
               LEFT JOIN LATERAL (
                    -- the customer's own rhythm: twice the median gap between orders
                    SELECT CASE WHEN %(rhythm)s AND count(*) >= 2
                                THEN 2 * percentile_cont(0.5) WITHIN GROUP (ORDER BY g.gap)
                           END AS lapse
                      FROM (SELECT o2.date_order - lag(o2.date_order) OVER (ORDER BY o2.date_order)
                                   AS gap
                              FROM sale_order o2
                             WHERE o2.partner_id = last.partner_id AND o2.state = 'sale'
                               AND o2.company_id = %(company)s) g
                     WHERE g.gap IS NOT NULL
                   ) own ON TRUE
             WHERE last.date_order + GREATEST(make_interval(days => %(days)s),
                                              COALESCE(own.lapse, interval '0')) > %(since)s
               AND last.date_order + GREATEST(make_interval(days => %(days)s),
                                              COALESCE(own.lapse, interval '0')) <= %(now)s
            """,
            company=self.company_id.id, days=self.trigger_days, since=self.scan_watermark,
            now=now, rhythm=self.trigger_use_rhythm,
        )

    def _candidates_replenishment(self, now):
        # Per customer and product bought at least twice: the next purchase is due one
        # median interval after the last one. The customer enters ``trigger_days``
        # before that date; the source is the last order, so each cycle enters once.
        lead = SQL("make_interval(days => %s)", self.trigger_days)
        return SQL(
            """
            WITH purchases AS (
                SELECT o.partner_id, l.product_id, o.id AS order_id, o.date_order,
                       o.date_order - lag(o.date_order) OVER w AS gap,
                       row_number() OVER (PARTITION BY o.partner_id, l.product_id
                                          ORDER BY o.date_order DESC) AS recency
                  FROM sale_order o JOIN sale_order_line l ON l.order_id = o.id
                 WHERE o.state = 'sale' AND o.company_id = %(company)s
                       AND l.product_id IS NOT NULL AND l.display_type IS NULL
                WINDOW w AS (PARTITION BY o.partner_id, l.product_id ORDER BY o.date_order)
            ), rhythm AS (
                SELECT partner_id, product_id,
                       percentile_cont(0.5) WITHIN GROUP (ORDER BY gap) AS median_gap
                  FROM purchases WHERE gap IS NOT NULL AND gap > interval '0'
                 GROUP BY partner_id, product_id
            )
            SELECT p.partner_id, p.order_id,
                   'sale.order,' || p.order_id || ',product,' || p.product_id AS source_ref
              FROM purchases p JOIN rhythm r USING (partner_id, product_id)
             WHERE p.recency = 1
               AND p.date_order + r.median_gap - %(lead)s > %(since)s
               AND p.date_order + r.median_gap - %(lead)s <= %(now)s
            """,
            company=self.company_id.id, lead=lead, since=self.scan_watermark, now=now,
        )

    def _event_candidates(self, max_event_id, type_code=None, type_id=None, payload=None):
        # Ids are taken at insert but become visible at commit: re-read a margin of ids
        # below the watermark (never before activation) so a late commit is not skipped;
        # the enrollment's unique key drops what was already seen.
        since_id = max(self.event_watermark - EVENT_ID_OVERLAP, self.event_floor)
        conditions = [SQL("ev.id > %s AND ev.id <= %s", since_id, max_event_id),
                      SQL("ev.partner_id IS NOT NULL")]
        if type_code:
            conditions.append(SQL("t.code = %s", type_code))
        if type_id:
            conditions.append(SQL("ev.event_type_id = %s", type_id))
        for key, value in (payload or {}).items():
            conditions.append(SQL("ev.payload ->> %s = %s", key, str(value)))
        return SQL(
            """
            SELECT ev.partner_id, ev.order_id, 'drip.event,' || ev.id AS source_ref
              FROM drip_event ev JOIN drip_event_type t ON t.id = ev.event_type_id
             WHERE %s
            """,
            SQL(" AND ").join(conditions),
        )

    def _trigger_candidates(self, now, max_event_id):
        """SQL of this journey's new entrants since the last scan, or None."""
        self.ensure_one()
        trigger = self.trigger
        if trigger == "event":
            return self._event_candidates(max_event_id, type_id=self.trigger_event_type_id.id)
        if trigger == "tag_added":
            return self._event_candidates(
                max_event_id, "tag_added", payload={"tag_id": self.trigger_tag_id.id}
            )
        if trigger == "segment_entered":
            return self._event_candidates(
                max_event_id, "segment_entered", payload={"segment_id": self.trigger_segment_id.id}
            )
        if trigger == "rfm_segment_changed":
            payload = {"new": self.trigger_rfm_segment} if self.trigger_rfm_segment else None
            return self._event_candidates(max_event_id, "rfm_segment_changed", payload=payload)
        if trigger == "score_crossed":
            return self._event_candidates(max_event_id, "score_crossed")
        method = getattr(self, f"_candidates_{trigger}", None)
        return method(now) if method else None

    def _scan_triggers(self, now=None):
        """Enroll what happened since each journey's watermark, then move the mark."""
        now = now or fields.Datetime.now()
        # Candidate queries read partners, orders and events in raw SQL.
        self.env.flush_all()
        self.env.cr.execute("SELECT COALESCE(max(id), 0) FROM drip_event")
        max_event_id = self.env.cr.fetchone()[0]
        entered = self.env["drip.enrollment"]
        for journey in self.filtered(lambda j: j.state == "running"):
            candidates = journey._trigger_candidates(now, max_event_id)
            if candidates is not None:
                entered |= journey._enroll(candidates, now=now)
            journey.write({"scan_watermark": now, "event_watermark": max_event_id})
        return entered

    @api.model
    def _cron_scan_triggers(self):
        self.env["sale.order"]._drip_mark_abandoned_carts()
        journeys = self.search([("state", "=", "running")])
        entered = journeys._scan_triggers()
        self.env["ir.cron"]._notify_progress(done=len(entered), remaining=0)

    # ================================================================================
    # Measured result (issue 10): funnel, holdout lift and backtest. Kept together at
    # the end of the model; the statistics are engine.stats, the funnel is
    # drip.funnel.report, the backtest is the drip.journey.backtest wizard.
    # ================================================================================
    lift_min_sample = fields.Integer(
        string="Minimum per group",
        default=100,
        help="Lift is shown only once both the treated group and the holdout have at "
        "least this many entrants whose conversion window is over; below it the journey "
        "says 'not enough data yet'. Hundreds per group are needed for the revenue "
        "interval to be trustworthy.",
    )
    lift_window_days = fields.Integer(
        string="Conversion window (days)",
        default=7,
        help="An entrant converts when the customer confirms an order within this many "
        "days after entering. Only entrants whose window is over are counted.",
    )
    lift_state = fields.Selection(
        [("no_holdout", "No holdout"), ("not_enough", "Not enough data yet"),
         ("measured", "Measured")],
        string="Lift", compute="_compute_lift",
    )
    lift_treated_count = fields.Integer(string="Treated entrants", compute="_compute_lift")
    lift_holdout_count = fields.Integer(string="Holdout entrants", compute="_compute_lift")
    lift_treated_rate = fields.Float(string="Treated conversion", compute="_compute_lift")
    lift_holdout_rate = fields.Float(string="Holdout conversion", compute="_compute_lift")
    lift_rate_diff = fields.Float(
        string="Conversion lift",
        compute="_compute_lift",
        help="Treated minus holdout conversion rate, with its 95 % two-proportion "
        "z-interval (Wald): p1 - p2 ± 1.96·√(p1(1-p1)/n1 + p2(1-p2)/n2). Assumes entrants "
        "are independent, a random holdout (the draw is a stable hash of the customer), "
        "and at least ~10 conversions and ~10 non-conversions per group.",
    )
    lift_rate_low = fields.Float(string="Conversion lift, low", compute="_compute_lift")
    lift_rate_high = fields.Float(string="Conversion lift, high", compute="_compute_lift")
    lift_treated_rpe = fields.Monetary(
        string="Treated revenue per entrant", compute="_compute_lift",
        currency_field="currency_id",
    )
    lift_holdout_rpe = fields.Monetary(
        string="Holdout revenue per entrant", compute="_compute_lift",
        currency_field="currency_id",
    )
    lift_rpe_diff = fields.Monetary(
        string="Revenue lift per entrant",
        compute="_compute_lift",
        currency_field="currency_id",
        help="Treated minus holdout revenue per entrant (untaxed, company currency, "
        "orders within the conversion window), with its 95 % Welch t-interval: "
        "m1 - m2 ± t(df)·√(s1²/n1 + s2²/n2), Welch–Satterthwaite df. Assumes independent "
        "entrants and enough of them for the mean to be near-normal although revenue is "
        "skewed and mostly zero.",
    )
    lift_rpe_low = fields.Monetary(
        string="Revenue lift, low", compute="_compute_lift", currency_field="currency_id"
    )
    lift_rpe_high = fields.Monetary(
        string="Revenue lift, high", compute="_compute_lift", currency_field="currency_id"
    )
    lift_summary = fields.Char(compute="_compute_lift")

    @api.constrains("lift_min_sample", "lift_window_days")
    def _check_lift_settings(self):
        if self.filtered(lambda j: j.lift_min_sample < 2 or j.lift_window_days < 1):
            raise ValidationError(_("Lift needs at least 2 entrants per group and a "
                                    "conversion window of at least one day."))

    def _lift_groups(self, now=None):
        """{(journey id, is_holdout): (n, converted, revenue sum, revenue sum of squares)}.

        One grouped query: per entrant whose window is over, the confirmed orders of the
        customer in (entered_at, entered_at + window], untaxed in company currency (as the
        attribution does).
        """
        if not self.ids:
            return {}
        for model in ("drip.enrollment", "sale.order", "drip.journey"):
            self.env[model].flush_model()
        self.env.cr.execute(SQL(
            """
            SELECT e.journey_id, e.is_holdout, count(*), count(*) FILTER (WHERE r.orders > 0),
                   COALESCE(sum(r.revenue), 0), COALESCE(sum(r.revenue * r.revenue), 0)
              FROM drip_enrollment e
              JOIN drip_journey j ON j.id = e.journey_id
             CROSS JOIN LATERAL (
                   SELECT count(o.id) AS orders,
                          COALESCE(sum(o.amount_untaxed
                                       / CASE WHEN COALESCE(o.currency_rate, 0) = 0 THEN 1
                                              ELSE o.currency_rate END), 0) AS revenue
                     FROM sale_order o
                    WHERE o.partner_id = e.partner_id AND o.state = 'sale'
                      AND o.company_id = e.company_id
                      AND o.date_order > e.entered_at
                      AND o.date_order <= e.entered_at + make_interval(days => j.lift_window_days)
                   ) r
             WHERE e.journey_id = ANY(%(ids)s)
               AND e.entered_at + make_interval(days => j.lift_window_days) <= %(now)s
             GROUP BY e.journey_id, e.is_holdout
            """,
            ids=self.ids, now=now or fields.Datetime.now(),
        ))
        return {(jid, bool(held)): (n, x, float(total), float(squares))
                for jid, held, n, x, total, squares in self.env.cr.fetchall()}

    def _compute_lift(self):
        from ..engine import stats  # the section is appended: its import stays local

        groups = self._lift_groups() if self.ids else {}
        for journey in self:
            values = dict.fromkeys(
                ("lift_treated_rate", "lift_holdout_rate", "lift_rate_diff", "lift_rate_low",
                 "lift_rate_high", "lift_treated_rpe", "lift_holdout_rpe", "lift_rpe_diff",
                 "lift_rpe_low", "lift_rpe_high"), 0.0)
            treated = groups.get((journey._origin.id, False), (0, 0, 0.0, 0.0))
            holdout = groups.get((journey._origin.id, True), (0, 0, 0.0, 0.0))
            values.update(lift_treated_count=treated[0], lift_holdout_count=holdout[0])
            if not journey.holdout_percent and not holdout[0]:
                values.update(lift_state="no_holdout", lift_summary=_(
                    "Set a holdout percentage to measure what this journey earns."))
            elif not stats.enough_data(treated[0], holdout[0], journey.lift_min_sample):
                values.update(lift_state="not_enough", lift_summary=_(
                    "Not enough data yet: %(treated)s treated and %(holdout)s holdout entrants "
                    "have finished their %(days)s-day window; %(minimum)s per group needed.",
                    treated=treated[0], holdout=holdout[0], days=journey.lift_window_days,
                    minimum=journey.lift_min_sample))
            else:
                rate = stats.two_proportion_diff_ci(treated[1], treated[0],
                                                    holdout[1], holdout[0])
                revenue = stats.welch_diff_ci(*_mean_var(treated), *_mean_var(holdout))
                values.update(
                    lift_state="measured",
                    lift_treated_rate=rate.estimate1, lift_holdout_rate=rate.estimate2,
                    lift_rate_diff=rate.diff, lift_rate_low=rate.low, lift_rate_high=rate.high,
                    lift_treated_rpe=revenue.estimate1, lift_holdout_rpe=revenue.estimate2,
                    lift_rpe_diff=revenue.diff, lift_rpe_low=revenue.low,
                    lift_rpe_high=revenue.high,
                    lift_summary=journey._lift_sentence(rate, revenue),
                )
            journey.update(values)

    def _lift_sentence(self, rate, revenue):
        self.ensure_one()
        if rate.low > 0:
            verdict = _("The journey raises conversion (the interval is above zero).")
        elif rate.high < 0:
            verdict = _("The journey lowers conversion (the interval is below zero).")
        else:
            verdict = _("No conversion difference can be told apart from chance yet.")
        return _(
            "Conversion %(treated).1f %% treated vs %(holdout).1f %% holdout: "
            "%(diff)+.1f points (95 %% CI %(low)+.1f to %(high)+.1f). Revenue per entrant "
            "%(rpe_diff)+.2f (95 %% CI %(rpe_low)+.2f to %(rpe_high)+.2f). %(verdict)s",
            treated=rate.estimate1 * 100, holdout=rate.estimate2 * 100, diff=rate.diff * 100,
            low=rate.low * 100, high=rate.high * 100, rpe_diff=revenue.diff,
            rpe_low=revenue.low, rpe_high=revenue.high, verdict=verdict,
        )

    def action_view_funnel(self):
        return self.env["drip.funnel.report"]._action_open(
            self, domain=[("journey_id", "in", self.ids)],
            context={"search_default_filter_last_90_days": 1, "search_default_group_by_step": 1},
        )

    def action_open_backtest(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": _("Backtest"),
            "res_model": "drip.journey.backtest",
            "view_mode": "form",
            "target": "new",
            "context": {"default_journey_id": self.id},
        }


def _mean_var(group):
    """(mean, sample variance, n) of a group from (n, _, sum, sum of squares)."""
    n, _converted, total, squares = group
    mean = total / n
    var = max(0.0, (squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return mean, var, n
