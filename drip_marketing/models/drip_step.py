from odoo import _, api, fields, models
from odoo.exceptions import ValidationError

from ..engine import journey as journey_engine
from ..engine.schedule import DELAY_UNITS
from .domain_tools import checked_domain

STEP_TYPES = [
    ("send", "Send a message"),
    ("wait", "Wait"),
    ("condition", "Condition (yes / no)"),
    ("split", "A/B split"),
    ("tag_add", "Add a tag"),
    ("tag_remove", "Remove a tag"),
    ("activity", "Activity for the salesperson"),
    ("webhook", "Call a webhook"),
    ("exit", "Exit the journey"),
]

# Relative to the parent step (or to the entry for a first step).
STEP_TRIGGERS = [
    ("after", "After the previous step"),
    ("opened", "Opened"),
    ("not_opened", "Not opened within the delay"),
    ("clicked", "Clicked"),
    ("not_clicked", "Not clicked within the delay"),
    ("replied", "Replied"),
    ("ordered", "Order placed"),
    ("not_ordered", "No order within the delay"),
    ("yes", "Condition met"),
    ("no", "Condition not met"),
    ("branch", "A/B branch"),
]
ENGAGEMENT_TRIGGERS = {"opened", "not_opened", "clicked", "not_clicked", "replied"}
CHANNELS = [
    ("email", "Email"),
    ("sms", "SMS"),
    ("webhook", "Messaging gateway (webhook)"),
    ("note", "Note on the customer"),
]


class DripStep(models.Model):
    _name = "drip.step"
    _description = "Drip Marketing Journey Step"
    _order = "journey_id, sequence, id"
    _parent_name = "parent_id"

    name = fields.Char(required=True, translate=True)
    active = fields.Boolean(default=True)
    journey_id = fields.Many2one(
        "drip.journey", required=True, ondelete="cascade", index=True
    )
    company_id = fields.Many2one(related="journey_id.company_id", store=True, index=True)
    sequence = fields.Integer(default=10)
    parent_id = fields.Many2one(
        "drip.step",
        string="After step",
        ondelete="cascade",
        index=True,
        domain="[('journey_id', '=', journey_id), ('id', '!=', id)]",
    )
    child_ids = fields.One2many("drip.step", "parent_id", string="Next steps")
    step_type = fields.Selection(STEP_TYPES, required=True, default="send")
    step_trigger = fields.Selection(
        STEP_TRIGGERS, string="Runs when", required=True, default="after"
    )
    delay_value = fields.Integer(string="Delay", default=0)
    delay_unit = fields.Selection(
        [(unit, unit.capitalize()) for unit in DELAY_UNITS], default="hours", required=True
    )
    time_of_day = fields.Float(
        string="At local time",
        help="Optional time of day in the customer's time zone, e.g. 10:00. Leave at "
        "00:00 and untick the option to send as soon as the delay is over.",
    )
    use_time_of_day = fields.Boolean(string="At a time of day")
    use_best_time = fields.Boolean(
        string="At the customer's best time",
        help="Send within the window below at the hour this customer is most likely to "
        "engage, learned from their opens, clicks and orders.",
    )
    best_time_window_hours = fields.Integer(string="Best-time window (hours)", default=24)
    channel = fields.Selection(CHANNELS, default="email")
    template_id = fields.Many2one(
        "drip.template", domain="[('channel', '=', channel)]", ondelete="restrict"
    )
    condition_model = fields.Selection(
        [("res.partner", "Customer"), ("source", "Source record (e.g. the cart)")],
        default="res.partner",
    )
    condition_domain = fields.Char(default="[]")
    split_weight = fields.Float(
        string="Branch weight (%)", help="Share of participants taking this A/B branch."
    )
    split_metric = fields.Selection(
        [
            ("click", "Click rate"),
            ("conversion", "Conversion rate"),
            ("revenue", "Revenue per recipient"),
        ],
        string="Winner by",
        default="conversion",
    )
    split_min_sample = fields.Integer(string="Minimum per branch", default=100)
    split_winner_id = fields.Many2one("drip.step", string="Promoted branch", copy=False)
    split_winner_reason = fields.Text(copy=False, readonly=True)
    tag_id = fields.Many2one("res.partner.category", string="Tag")
    activity_type_id = fields.Many2one("mail.activity.type")
    activity_summary = fields.Char(translate=True)
    activity_days = fields.Integer(string="Activity due in (days)", default=1)
    webhook_url = fields.Char()
    webhook_secret = fields.Char(
        groups="drip_marketing.drip_marketing_group_manager",
        help="Shared secret for the HMAC-SHA256 signature header of the request.",
    )
    scheduled_count = fields.Integer(compute="_compute_statistics")
    sent_count = fields.Integer(compute="_compute_statistics")
    opened_count = fields.Integer(compute="_compute_statistics")
    clicked_count = fields.Integer(compute="_compute_statistics")
    converted_count = fields.Integer(compute="_compute_statistics")

    _sql_constraints = [
        ("delay_positive", "CHECK(delay_value >= 0)", "A delay cannot be negative."),
        (
            "split_weight_range",
            "CHECK(split_weight >= 0 AND split_weight <= 100)",
            "A branch weight is a percentage between 0 and 100.",
        ),
        (
            "time_of_day_range",
            "CHECK(time_of_day >= 0 AND time_of_day < 24)",
            "The time of day must be between 00:00 and 23:59.",
        ),
        (
            "best_time_window_positive",
            "CHECK(best_time_window_hours > 0 AND activity_days >= 0)",
            "The best-time window must be at least one hour.",
        ),
    ]

    def _compute_statistics(self):
        rows = self.env["drip.message"]._read_group(
            [("step_id", "in", self.ids), ("is_test", "=", False)],
            ["step_id"],
            ["__count", "sent_at:count", "opened_at:count", "clicked_at:count",
             "converted_at:count"],
        )
        stats = {step.id: values for step, *values in rows}
        for step in self:
            total, sent, opened, clicked, converted = stats.get(step.id, (0, 0, 0, 0, 0))
            step.scheduled_count = total
            step.sent_count = sent
            step.opened_count = opened
            step.clicked_count = clicked
            step.converted_count = converted

    @api.constrains("parent_id", "journey_id")
    def _check_parent(self):
        if self._has_cycle():
            raise ValidationError(_("Steps cannot form a cycle."))
        for step in self:
            if step.parent_id and step.parent_id.journey_id != step.journey_id:
                raise ValidationError(
                    _("Step '%s' must follow a step of the same journey.", step.name)
                )

    @api.constrains("condition_domain", "condition_model", "step_type")
    def _check_condition_domain(self):
        for step in self.filtered(lambda s: s.step_type == "condition"):
            model = "res.partner" if step.condition_model == "res.partner" else (
                step.journey_id.trigger_model
            )
            checked_domain(
                self.env, model, step.condition_domain,
                _("The condition of step '%s'", step.name),
            )

    @api.constrains(
        "step_type", "step_trigger", "parent_id", "template_id", "channel", "split_weight",
        "tag_id", "webhook_url",
    )
    def _check_step_settings(self):
        (self | self.parent_id)._check_step_tree(complete=False)

    def _check_step_tree(self, complete=True):
        """Structural rules, on save and (``complete``) before a journey starts.

        Split weights may add up to less than 100 % while the admin is still adding
        branches one by one; a journey only starts once they add up to exactly 100 %.
        """
        for step in self:
            parent = step.parent_id
            if step.step_type == "send" and not step.template_id:
                raise ValidationError(_("Send step '%s' needs a template.", step.name))
            if step.template_id and step.template_id.channel != step.channel:
                raise ValidationError(
                    _("Step '%s' sends on another channel than its template.", step.name)
                )
            if step.step_type in ("tag_add", "tag_remove") and not step.tag_id:
                raise ValidationError(_("Tag step '%s' needs a tag.", step.name))
            if step.step_type == "webhook" and not (step.webhook_url or "").startswith(
                ("https://", "http://")
            ):
                raise ValidationError(
                    _("Webhook step '%s' needs an http(s) URL.", step.name)
                )
            if step.step_type == "exit" and step.child_ids:
                raise ValidationError(_("Nothing can follow the exit step '%s'.", step.name))
            expected = self._allowed_triggers(parent)
            if step.step_trigger not in expected:
                labels = dict(STEP_TRIGGERS)
                raise ValidationError(
                    _("Step '%(step)s' cannot run on '%(trigger)s' here; allowed: %(allowed)s",
                      step=step.name, trigger=labels[step.step_trigger],
                      allowed=", ".join(labels[t] for t in sorted(expected)))
                )
            if step.step_type == "split":
                total = sum(step.child_ids.mapped("split_weight"))
                incomplete = complete and step.child_ids and abs(total - 100.0) > 1e-6
                if total > 100.0 + 1e-6 or incomplete:
                    raise ValidationError(
                        _("The branches of split '%(step)s' must weigh 100%% together "
                          "(now %(total)s%%).", step=step.name, total=total)
                    )

    @api.model
    def _allowed_triggers(self, parent):
        if not parent:
            return {"after"}
        if parent.step_type == "condition":
            return {"yes", "no"}
        if parent.step_type == "split":
            return {"branch"}
        if parent.step_type == "send":
            return {"after", "ordered", "not_ordered"} | ENGAGEMENT_TRIGGERS
        return {"after", "ordered", "not_ordered"}

    def unlink(self):
        """Steps that already ran are archived with their sub-steps, not deleted: the
        ledger keeps pointing at them. Pending messages are cancelled with the reason.
        """
        steps = self.with_context(active_test=False)
        ledger = self.env["drip.message"].with_context(active_test=False)
        to_archive = self.browse()
        for step in steps:
            branch = steps.search([("id", "child_of", step.id)])
            ledger.search([("step_id", "in", branch.ids)])._cancel(
                _("The step was removed from the journey.")
            )
            if ledger.search_count([("step_id", "in", branch.ids)], limit=1):
                to_archive |= branch
        to_archive.write({"active": False})
        return super(DripStep, self - to_archive).unlink()

    def _copy_tree(self, journey, parent):
        """Copy these steps and their sub-steps under ``parent`` of ``journey``."""
        for step in self:
            new = step.copy({"journey_id": journey.id, "parent_id": parent.id if parent else False})
            step.child_ids._copy_tree(journey, new)

    def _spec(self):
        """The step as plain data for the engine."""
        self.ensure_one()
        return journey_engine.StepSpec(
            id=self.id,
            parent_id=self.parent_id.id or None,
            step_type=self.step_type,
            trigger=self.step_trigger,
            delay_value=self.delay_value,
            delay_unit=self.delay_unit,
            time_of_day=self.time_of_day if self.use_time_of_day else None,
            use_best_time=self.use_best_time,
            best_time_window_hours=self.best_time_window_hours,
            split_weight=self.split_weight,
            sequence=self.sequence,
            name=self.name,
        )

    def _branch_label(self, trigger_labels):
        """How the diagram labels the edge from the parent: yes/no, A/B weight, outcome."""
        self.ensure_one()
        if self.step_trigger == "branch":
            return _("%(name)s · %(weight)s%%", name=self.name, weight=f"{self.split_weight:g}")
        if self.step_trigger == "after":
            return ""
        return trigger_labels.get(self.step_trigger, "")

    def _delay_label(self):
        self.ensure_one()
        if not self.delay_value:
            return _("immediately")
        units = dict(self._fields["delay_unit"]._description_selection(self.env))
        return _("after %(value)s %(unit)s", value=self.delay_value,
                 unit=units.get(self.delay_unit, self.delay_unit).lower())

    def _diagram_counts(self):
        self.ensure_one()
        return {
            "scheduled": self.scheduled_count,
            "sent": self.sent_count,
            "opened": self.opened_count,
            "clicked": self.clicked_count,
            "converted": self.converted_count,
        }

    # ================================================================================
    # A/B winners and the step funnel (issue 10), kept together at the end of the model.
    # The split's branches are compared from the ledger in one query per split; the
    # verdict is engine.abtest (statistics from engine.stats); ``_run_split`` already
    # routes new entrants to ``split_winner_id``.
    # ================================================================================
    split_auto_promote = fields.Boolean(
        string="Promote the winner automatically",
        default=True,
        copy=False,
        help="Once every branch has the minimum number of participants and the best one "
        "is better than each other with significance (p below 5 % split between the "
        "comparisons), new entrants all take the best branch. Undoing a promotion turns "
        "this off for the split.",
    )
    split_promoted_at = fields.Datetime(string="Promoted on", readonly=True, copy=False)

    def _ab_branches(self):
        self.ensure_one()
        return self.child_ids.filtered(lambda s: s.step_trigger == "branch").sorted(
            lambda s: (s.sequence, s.id))

    def _ab_counts(self):
        """Per branch of this split: participants (holdout excluded) and what they did.

        A participant belongs to the branch whose step they reached; their clicks,
        attributed conversions and attributed revenue are those of the messages of
        that branch's sub-tree. One grouped query over the ledger.
        """
        from ..engine import abtest  # the section is appended: its import stays local

        self.ensure_one()
        branches = self._ab_branches()
        steps = self.with_context(active_test=False)
        pairs = [(sub.id, branch.id) for branch in branches
                 for sub in steps.search([("id", "child_of", branch.id)])]
        if not pairs:
            return []
        for model in ("drip.message", "drip.enrollment"):
            self.env[model].flush_model()
        self.env.cr.execute(
            """
            WITH subtree AS (
                SELECT * FROM unnest(%(steps)s::int[], %(branches)s::int[])
                       AS t(step_id, branch_id)
            ), reached AS (
                SELECT DISTINCT m.enrollment_id, m.step_id AS branch_id
                  FROM drip_message m JOIN drip_enrollment e ON e.id = m.enrollment_id
                 WHERE m.step_id = ANY(%(branch_ids)s) AND m.is_test IS NOT TRUE
                   AND m.state <> 'cancelled' AND e.is_holdout IS NOT TRUE
            ), per_participant AS (
                SELECT r.branch_id, r.enrollment_id,
                       bool_or(m.clicked_at IS NOT NULL) AS clicked,
                       bool_or(m.converted_at IS NOT NULL) AS converted,
                       COALESCE(sum(m.revenue), 0) AS revenue
                  FROM reached r
                  JOIN subtree t ON t.branch_id = r.branch_id
                  LEFT JOIN drip_message m ON m.enrollment_id = r.enrollment_id
                       AND m.step_id = t.step_id AND m.is_test IS NOT TRUE
                 GROUP BY r.branch_id, r.enrollment_id
            )
            SELECT branch_id, count(*), count(*) FILTER (WHERE clicked),
                   count(*) FILTER (WHERE converted), sum(revenue), sum(revenue * revenue)
              FROM per_participant GROUP BY branch_id
            """,
            {"steps": [s for s, _b in pairs], "branches": [b for _s, b in pairs],
             "branch_ids": branches.ids},
        )
        rows = {row[0]: row[1:] for row in self.env.cr.fetchall()}
        counts = []
        for branch in branches:
            n, clicks, conversions, revenue, squares = rows.get(branch.id, (0, 0, 0, 0, 0))
            counts.append(abtest.BranchCounts(branch.id, n, clicks, conversions,
                                              float(revenue), float(squares)))
        return counts

    def _promote_ab_winner(self):
        """Decide this split; promote and record why when a branch wins. Returns the
        engine's verdict."""
        from ..engine import abtest  # the section is appended: its import stays local

        self.ensure_one()
        verdict = abtest.decide(self._ab_counts(), self.split_metric or "conversion",
                                self.split_min_sample)
        if verdict.status == "winner":
            winner = self.browse(verdict.winner)
            reason = self._ab_reason(verdict)
            self.write({"split_winner_id": winner.id, "split_winner_reason": reason,
                        "split_promoted_at": fields.Datetime.now()})
            self.journey_id.message_post(body=_(
                "A/B split '%(split)s': branch '%(branch)s' promoted for new entrants. "
                "%(reason)s", split=self.name, branch=winner.name, reason=reason))
        return verdict

    def _ab_reason(self, verdict):
        """Why the winner won, in words, with the numbers."""
        metric = dict(self._fields["split_metric"]._description_selection(self.env)).get(
            self.split_metric, self.split_metric)
        names = {step.id: step.name for step in self._ab_branches()}

        def show(value):
            return (f"{value:.2f}" if self.split_metric == "revenue"
                    else f"{value * 100:.1f} %")

        parts = []
        for comparison in verdict.comparisons:  # a loop: _() reads self from its frame
            parts.append(_(
                "%(metric)s: '%(best)s' %(value)s vs '%(other)s' %(other_value)s "
                "(difference %(low)s to %(high)s at 95 %%, p = %(p).4f)",
                metric=metric, best=names[verdict.best],
                value=show(comparison.interval.estimate1), other=names[comparison.other],
                other_value=show(comparison.interval.estimate2),
                low=show(comparison.interval.low), high=show(comparison.interval.high),
                p=comparison.p_value))
        test = _("Welch t-test") if self.split_metric == "revenue" else _("two-proportion z-test")
        return _("%(parts)s. Significant by %(test)s at p < %(threshold).4f, each branch with "
                 "at least %(minimum)s participants.", parts="; ".join(parts), test=test,
                 threshold=verdict.threshold, minimum=self.split_min_sample)

    def action_undo_winner(self):
        """New entrants are split by weight again; automatic promotion stops for the split."""
        for step in self.filtered("split_winner_id"):
            step.journey_id.message_post(body=_(
                "A/B split '%(split)s': promotion of '%(branch)s' undone by %(user)s. New "
                "entrants are split by weight again; automatic promotion is off for this "
                "split.", split=step.name, branch=step.split_winner_id.name,
                user=self.env.user.name))
        self.write({"split_winner_id": False, "split_winner_reason": False,
                    "split_promoted_at": False, "split_auto_promote": False})
        return True

    def action_view_funnel(self):
        return self.env["drip.funnel.report"]._action_open(
            self.journey_id, domain=[("step_id", "in", self.ids)])

    @api.model
    def _cron_promote_ab_winners(self):
        splits = self.search([
            ("step_type", "=", "split"), ("split_winner_id", "=", False),
            ("split_auto_promote", "=", True), ("journey_id.state", "=", "running"),
        ])
        promoted = 0
        for split in splits:  # one grouped query per split; splits are few
            promoted += split._promote_ab_winner().status == "winner"
        self.env["ir.cron"]._notify_progress(done=promoted, remaining=0)
