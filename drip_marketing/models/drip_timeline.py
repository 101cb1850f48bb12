from odoo import _, api, fields, models, tools
from odoo.exceptions import UserError
from odoo.tools import SQL

TIMELINE_KINDS = [
    ("order", "Order"),
    ("message", "Message"),
    ("opened", "Opened"),
    ("clicked", "Clicked"),
    ("journey_entered", "Entered a journey"),
    ("journey_exited", "Left a journey"),
    ("consent", "Consent change"),
    ("rfm", "RFM segment change"),
    ("tag", "Tag added"),
    ("event", "Event"),
]
# Row ids are ``source id * 16 + kind number``: stable across queries (a record of this
# view is browsed again by id), unique across the branches.
_KIND_NUMBER = {kind: number for number, (kind, _label) in enumerate(TIMELINE_KINDS, 1)}


class DripTimeline(models.Model):
    """One chronological view of every touch with a customer (SQL view, read-only).

    Messages (with their opens and clicks), journey entries and exits, consent changes,
    behavior events (RFM segment changes and tags added among them) and confirmed
    orders. Each branch filters on its own indexed ``partner_id``, so reading one
    customer's timeline stays proportional to that customer's history.
    """

    _name = "drip.timeline"
    _description = "Drip Marketing Customer Timeline"
    _auto = False
    _order = "date desc, id desc"
    _rec_name = "summary"
    # Pending ORM writes to these columns are flushed before the view is read.
    _depends = {
        "drip.message": ["partner_id", "sent_at", "scheduled_at", "state", "channel",
                         "journey_id", "company_id", "step_type", "is_test", "opened_at",
                         "clicked_at"],
        "drip.enrollment": ["partner_id", "entered_at", "exited_at", "state", "exit_reason",
                            "journey_id", "company_id"],
        "drip.consent.event": ["partner_id", "create_date", "new_state", "channel",
                               "company_id"],
        "drip.event": ["partner_id", "occurred_at", "event_type_id", "company_id"],
        "drip.event.type": ["code"],
        "sale.order": ["partner_id", "date_order", "state", "company_id"],
        "res.partner": ["user_id", "commercial_partner_id"],
    }

    partner_id = fields.Many2one("res.partner", string="Customer", readonly=True)
    date = fields.Datetime(readonly=True)
    kind = fields.Selection(TIMELINE_KINDS, readonly=True)
    state = fields.Char(readonly=True, help="State, exit reason or new consent, by kind.")
    channel = fields.Char(readonly=True)
    journey_id = fields.Many2one("drip.journey", readonly=True)
    res_model = fields.Char(string="Document model", readonly=True)
    res_id = fields.Many2oneReference(string="Document", model_field="res_model", readonly=True)
    company_id = fields.Many2one("res.company", readonly=True)
    user_id = fields.Many2one(
        "res.users", string="Salesperson", readonly=True,
        help="The customer's salesperson (of the commercial entity if the contact has none).",
    )
    summary = fields.Char(compute="_compute_summary")
    visible_to_all_reps = fields.Boolean(
        compute="_compute_visible_to_all_reps",
        search="_search_visible_to_all_reps",
        help="Technical: false when the current company restricts sales reps to the "
        "timelines of their own customers.",
    )

    @property
    def _table_query(self):
        return SQL(
            """
            SELECT t.id, t.partner_id, t.date, t.kind, t.state, t.channel, t.journey_id,
                   t.res_model, t.res_id, t.company_id,
                   COALESCE(p.user_id, cp.user_id) AS user_id
              FROM (
                SELECT m.id * 16 + %(k_message)s AS id, m.partner_id,
                       COALESCE(m.sent_at, m.scheduled_at) AS date, 'message' AS kind,
                       m.state::varchar AS state, m.channel::varchar AS channel, m.journey_id,
                       'drip.message' AS res_model, m.id AS res_id, m.company_id
                  FROM drip_message m
                 WHERE m.step_type = 'send' AND m.is_test IS NOT TRUE
                   AND m.state IN ('sent', 'failed', 'skipped')
                UNION ALL
                SELECT m.id * 16 + %(k_opened)s, m.partner_id, m.opened_at, 'opened',
                       NULL, m.channel, m.journey_id, 'drip.message', m.id, m.company_id
                  FROM drip_message m
                 WHERE m.opened_at IS NOT NULL AND m.is_test IS NOT TRUE
                UNION ALL
                SELECT m.id * 16 + %(k_clicked)s, m.partner_id, m.clicked_at, 'clicked',
                       NULL, m.channel, m.journey_id, 'drip.message', m.id, m.company_id
                  FROM drip_message m
                 WHERE m.clicked_at IS NOT NULL AND m.is_test IS NOT TRUE
                UNION ALL
                SELECT e.id * 16 + %(k_journey_entered)s, e.partner_id, e.entered_at,
                       'journey_entered', e.state, NULL, e.journey_id, 'drip.enrollment', e.id,
                       e.company_id
                  FROM drip_enrollment e
                UNION ALL
                SELECT e.id * 16 + %(k_journey_exited)s, e.partner_id, e.exited_at,
                       'journey_exited', e.exit_reason, NULL, e.journey_id, 'drip.enrollment',
                       e.id, e.company_id
                  FROM drip_enrollment e
                 WHERE e.exited_at IS NOT NULL
                UNION ALL
                SELECT c.id * 16 + %(k_consent)s, c.partner_id, c.create_date, 'consent',
                       c.new_state, c.channel, NULL, 'drip.consent.event', c.id, c.company_id
                  FROM drip_consent_event c
                UNION ALL
                SELECT ev.id * 16 + CASE et.code WHEN 'rfm_segment_changed' THEN %(k_rfm)s
                                                 WHEN 'tag_added' THEN %(k_tag)s
                                                 ELSE %(k_event)s END,
                       ev.partner_id, ev.occurred_at,
                       CASE et.code WHEN 'rfm_segment_changed' THEN 'rfm'
                                    WHEN 'tag_added' THEN 'tag' ELSE 'event' END,
                       NULL, NULL, NULL, 'drip.event', ev.id, ev.company_id
                  FROM drip_event ev
                  LEFT JOIN drip_event_type et ON et.id = ev.event_type_id
                 WHERE ev.partner_id IS NOT NULL
                UNION ALL
                SELECT o.id * 16 + %(k_order)s, o.partner_id, o.date_order, 'order',
                       o.state, NULL, NULL, 'sale.order', o.id, o.company_id
                  FROM sale_order o
                 WHERE o.state = 'sale'
              ) t
              JOIN res_partner p ON p.id = t.partner_id
              LEFT JOIN res_partner cp ON cp.id = p.commercial_partner_id
            """,
            **{f"k_{kind}": number for kind, number in _KIND_NUMBER.items()},
        )

    @api.depends("kind", "res_model", "res_id")
    def _compute_summary(self):
        # The row passed the timeline's record rules; its document is read as superuser,
        # one query per document model for the whole page.
        by_model = {}
        for line in self:
            if line.res_model:
                by_model.setdefault(line.res_model, set()).add(line.res_id)
        documents = {
            model: self.env[model].sudo().browse(ids).exists()
            for model, ids in by_model.items()
        }
        for line in self:
            record = self.env[line.res_model].sudo().browse(line.res_id) if line.res_model else None
            if record is None or record not in documents.get(line.res_model, ()):
                line.summary = ""
                continue
            line.summary = getattr(self, f"_summary_{line.kind}")(line, record)

    def _compute_visible_to_all_reps(self):
        restricted = self.env.company.drip_timeline_own_customers_only
        for line in self:
            line.visible_to_all_reps = not restricted

    def _search_visible_to_all_reps(self, operator, value):
        # Read at query time, not when the record rule is cached: switching the setting
        # takes effect at once, for every user.
        if operator not in ("=", "!="):
            raise UserError(_("Unsupported search on visible_to_all_reps."))
        visible = not self.env.company.sudo().drip_timeline_own_customers_only
        wanted = bool(value) if operator == "=" else not value
        return [(1, "=", 1)] if visible == wanted else [(0, "=", 1)]

    def action_open_document(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "res_model": self.res_model,
            "res_id": self.res_id,
            "view_mode": "form",
            "target": "current",
        }

    # ------------------------------------------------------------ summaries
    def _selection_label(self, record, fname):
        return dict(record._fields[fname]._description_selection(self.env)).get(record[fname], "")

    def _summary_order(self, line, order):
        amount = tools.format_amount(self.env, order.amount_total, order.currency_id)
        return _("Order %(name)s confirmed: %(amount)s", name=order.name, amount=amount)

    def _summary_message(self, line, message):
        label = message.step_id.name or message.journey_id.name
        state = self._selection_label(message, "state")
        if message.state == "skipped" and message.skip_reason:
            state = _("%(state)s (%(reason)s)", state=state,
                      reason=self._selection_label(message, "skip_reason"))
        text = _("%(journey)s › %(step)s: %(state)s", journey=message.journey_id.name,
                 step=label, state=state)
        return f"{text} — {message.subject}" if message.subject else text

    def _summary_opened(self, line, message):
        return _("Opened %(journey)s › %(step)s", journey=message.journey_id.name,
                 step=message.step_id.name)

    def _summary_clicked(self, line, message):
        return _("Clicked in %(journey)s › %(step)s", journey=message.journey_id.name,
                 step=message.step_id.name)

    def _summary_journey_entered(self, line, enrollment):
        return _("Entered journey %s", enrollment.journey_id.name)

    def _summary_journey_exited(self, line, enrollment):
        return _("Left journey %(journey)s: %(reason)s", journey=enrollment.journey_id.name,
                 reason=self._selection_label(enrollment, "exit_reason"))

    def _summary_consent(self, line, change):
        return _(
            "%(channel)s consent: %(old)s → %(new)s (%(how)s)",
            channel=self._selection_label(change, "channel"),
            old=self._selection_label(change, "old_state"),
            new=self._selection_label(change, "new_state"),
            how=self._selection_label(change, "source"),
        )

    def _summary_rfm(self, line, event):
        payload = event.payload or {}
        segments = dict(self.env["res.partner"]._fields["drip_rfm_segment"]
                        ._description_selection(self.env))
        return _(
            "RFM segment: %(old)s → %(new)s",
            old=segments.get(payload.get("old"), payload.get("old") or _("none")),
            new=segments.get(payload.get("new"), payload.get("new") or _("none")),
        )

    def _summary_tag(self, line, event):
        return event.name

    def _summary_event(self, line, event):
        return event.event_type_id.name or event.name
