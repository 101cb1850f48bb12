"""The per-step funnel: the delivery ledger aggregated per day, refreshed incrementally.

Why a table and not a view: a view would aggregate the whole ledger (millions of rows on
a large store) on every pivot request, and a pivot sends several grouped reads per
screen. The table holds one row per day × journey × step × channel × language × RFM
segment (a few hundred thousand rows at most), so the pivot reads that instead. It is
``_auto = False``: :meth:`init` creates it without the foreign keys and per-column
indexes the ORM would add (they tripled the cost of a rebuild, for a table nobody
writes but :meth:`_refresh`: one ``DELETE`` + one ``INSERT … SELECT … GROUP BY`` over the
last days of the ledger).

Refreshing: the scheduled action re-aggregates a rolling window (default the last 35
days, ``drip_marketing.funnel_refresh_days``) every few minutes. A message's row key
never changes — its day is when its step first became due (``due_at``, not moved by
deferrals) — so re-aggregating the window is exact for everything in it: opens, clicks,
unsubscribes and attributions happen days after sending, not months. Rows older than
the window are final; ``action_rebuild`` (or ``_refresh(full=True)``) re-aggregates all.
"""

from datetime import timedelta

from odoo import _, api, fields, models
from odoo.tools import SQL

from odoo.addons.base.models.res_partner import _lang_get

from ..engine import rfm
from ..models.drip_step import CHANNELS, STEP_TYPES

# pg advisory lock key ("DRFU"): one refresh at a time; a second one skips.
REFRESH_LOCK = 0x44524655
DEFAULT_REFRESH_DAYS = 35

ATTRIBUTION_RULE = (
    "Attribution (last touch): an order confirmed within the company's attribution "
    "window (default 5 days) after an open or click of a message is attributed to the "
    "latest such message, with its untaxed amount in the company currency; an order is "
    "attributed once, to one message."
)


class DripFunnelReport(models.Model):
    """One row per day × journey × step × channel × language × RFM segment."""

    _name = "drip.funnel.report"
    _description = "Drip Marketing Funnel"
    _order = "date desc, journey_id, step_id"
    _auto = False
    _log_access = False
    _rec_name = "journey_id"

    date = fields.Date(
        string="Day",
        readonly=True,
        help="Messages count on the day their step became due (UTC, before deferrals); "
        "participants on the day they entered.",
    )
    journey_id = fields.Many2one("drip.journey", readonly=True)
    step_id = fields.Many2one(
        "drip.step", readonly=True,
        help="Empty on the rows counting participants entering the journey.",
    )
    step_type = fields.Selection(STEP_TYPES, readonly=True)
    channel = fields.Selection(
        CHANNELS + [("action", "Action")], readonly=True,
        help="'Action' rows are steps that send nothing (wait, condition, tag…).",
    )
    lang = fields.Selection(_lang_get, string="Language", readonly=True)
    rfm_segment = fields.Selection(rfm.SEGMENTS, string="RFM segment", readonly=True)
    company_id = fields.Many2one("res.company", readonly=True)
    currency_id = fields.Many2one(related="company_id.currency_id", readonly=True)
    entered = fields.Integer(readonly=True, help="Participants who entered the journey.")
    holdout = fields.Integer(
        string="In holdout", readonly=True,
        help="Entrants drawn into the holdout group: they receive no message.",
    )
    scheduled = fields.Integer(
        string="Reached", readonly=True,
        help="Ledger rows: participants who reached the step (scheduled, whatever "
        "happened next).",
    )
    sent = fields.Integer(
        readonly=True, help="Messages handed to the mail server, SMS or messaging gateway."
    )
    delivered = fields.Integer(readonly=True, help="Sent and not bounced.")
    opened = fields.Integer(readonly=True, help="Messages opened (a click counts as an open).")
    clicked = fields.Integer(readonly=True, help="Messages with at least one tracked click.")
    unsubscribed = fields.Integer(
        readonly=True, help="Messages from which the customer unsubscribed."
    )
    skipped = fields.Integer(
        readonly=True,
        help="Rows skipped: no consent, blacklisted, no address, goal reached, holdout, "
        "condition, other A/B branch, template error.",
    )
    converted = fields.Integer(readonly=True, help="Messages an order is attributed to. "
                               + ATTRIBUTION_RULE)
    revenue = fields.Monetary(
        string="Attributed revenue", readonly=True, currency_field="currency_id",
        help=ATTRIBUTION_RULE,
    )

    def init(self):
        cr = self.env.cr
        columns = {
            "date": "date", "journey_id": "int4", "step_id": "int4", "step_type": "varchar",
            "channel": "varchar", "lang": "varchar", "rfm_segment": "varchar",
            "company_id": "int4", "revenue": "numeric",
            **dict.fromkeys(("entered", "holdout", "scheduled", "sent", "delivered", "opened",
                             "clicked", "unsubscribed", "skipped", "converted"), "int4"),
        }
        cr.execute("CREATE TABLE IF NOT EXISTS drip_funnel_report (id SERIAL PRIMARY KEY)")
        for name, kind in columns.items():  # also adds the columns a new version brings
            cr.execute(SQL("ALTER TABLE drip_funnel_report ADD COLUMN IF NOT EXISTS %s %s",
                           SQL.identifier(name), SQL(kind)))
        # A first version let the ORM manage the table: drop what it added.
        for name in ("journey_id", "step_id", "company_id"):
            cr.execute(SQL("ALTER TABLE drip_funnel_report DROP CONSTRAINT IF EXISTS %s",
                           SQL.identifier(f"drip_funnel_report_{name}_fkey")))
        for name in ("date", "journey_id", "step_id"):
            cr.execute(SQL("DROP INDEX IF EXISTS %s",
                           SQL.identifier(f"drip_funnel_report__{name}_index")))
        # The refresh reads the last weeks of the ledger by these never-updated columns,
        # so their indexes cost no HOT updates.
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS drip_message_due_at_idx ON drip_message (due_at);
            CREATE INDEX IF NOT EXISTS drip_enrollment_entered_at_idx
                ON drip_enrollment (entered_at);
            """
        )
        # One row per key. With the upsert below, two refreshes that overlap (a button
        # and the cron, in snapshots taken before the other committed) end in a
        # serialization failure that Odoo retries, never in counted-twice rows.
        self.env.cr.execute(
            """
            CREATE UNIQUE INDEX IF NOT EXISTS drip_funnel_report_key_idx
                ON drip_funnel_report (date, journey_id, step_id, channel, lang, rfm_segment,
                                       company_id) NULLS NOT DISTINCT;
            """
        )

    # ------------------------------------------------------------------ refresh
    @api.model
    def _refresh_days(self):
        value = self.env["ir.config_parameter"].sudo().get_param(
            "drip_marketing.funnel_refresh_days")
        try:
            return max(1, int(value)) if value else DEFAULT_REFRESH_DAYS
        except ValueError:
            return DEFAULT_REFRESH_DAYS

    @api.model
    def _refresh(self, full=False, now=None, journeys=None):
        """Re-aggregate the ledger of the last days (everything with ``full``), of all
        journeys or only of ``journeys`` (smart buttons refresh just theirs).

        One DELETE and one INSERT … SELECT … GROUP BY, in the caller's transaction.
        Returns False without doing anything when another refresh holds the lock.
        """
        cr = self.env.cr
        cr.execute("SELECT pg_try_advisory_xact_lock(%s)", [REFRESH_LOCK])
        if not cr.fetchone()[0]:
            return False
        for model in ("drip.message", "drip.enrollment", "res.partner", self._name):
            self.env[model].flush_model()
        if full:
            since = None
        else:
            today = (now or fields.Datetime.now()).date()
            since = fields.Datetime.to_datetime(today - timedelta(days=self._refresh_days()))
        only = SQL()
        if journeys is not None:
            only = SQL("AND journey_id = ANY(%s)", journeys.ids)
        # The GROUP BY sorts a few weeks (or all) of the ledger: in memory, not on disk.
        cr.execute("SET LOCAL work_mem = '128MB'")
        cr.execute(SQL(
            "DELETE FROM drip_funnel_report WHERE %s %s",
            SQL("date >= %s", since.date()) if since else SQL("TRUE"), only,
        ))
        cr.execute(self._refresh_query(since, journeys))
        cr.execute("RESET work_mem")
        self.invalidate_model()
        return True

    @api.model
    def _refresh_query(self, since, journeys=None):
        message_since = SQL("AND m.due_at >= %s", since) if since else SQL()
        entry_since = SQL("AND e.entered_at >= %s", since) if since else SQL()
        if journeys is not None:
            message_since = SQL("%s AND m.journey_id = ANY(%s)", message_since, journeys.ids)
            entry_since = SQL("%s AND e.journey_id = ANY(%s)", entry_since, journeys.ids)
        return SQL(
            """
            INSERT INTO drip_funnel_report (
                date, journey_id, step_id, step_type, channel, lang, rfm_segment, company_id,
                entered, holdout, scheduled, sent, delivered, opened, clicked, unsubscribed,
                skipped, converted, revenue)
            SELECT f.day, f.journey_id, f.step_id, f.step_type, f.channel, p.lang,
                   p.drip_rfm_segment, f.company_id,
                   sum(f.entered), sum(f.holdout), sum(f.scheduled), sum(f.sent),
                   sum(f.delivered), sum(f.opened), sum(f.clicked), sum(f.unsubscribed),
                   sum(f.skipped), sum(f.converted), sum(f.revenue)
              FROM (
                    SELECT e.entered_at::date AS day, e.journey_id, NULL::int AS step_id,
                           NULL::varchar AS step_type, NULL::varchar AS channel,
                           e.company_id, e.partner_id,
                           1 AS entered, e.is_holdout::int AS holdout, 0 AS scheduled,
                           0 AS sent, 0 AS delivered, 0 AS opened, 0 AS clicked,
                           0 AS unsubscribed, 0 AS skipped, 0 AS converted,
                           0::numeric AS revenue
                      FROM drip_enrollment e
                     WHERE TRUE %(entry_since)s
                    UNION ALL
                    SELECT COALESCE(m.due_at, m.scheduled_at)::date, m.journey_id, m.step_id,
                           m.step_type, m.channel, m.company_id, m.partner_id,
                           0, 0, 1,
                           (m.state = 'sent' AND m.channel <> 'action')::int,
                           (m.state = 'sent' AND m.channel <> 'action'
                            AND m.bounced_at IS NULL)::int,
                           (m.opened_at IS NOT NULL)::int,
                           (m.clicked_at IS NOT NULL)::int,
                           (m.unsubscribed_at IS NOT NULL)::int,
                           (m.state = 'skipped')::int,
                           (m.converted_at IS NOT NULL)::int,
                           COALESCE(m.revenue, 0)
                      FROM drip_message m
                     WHERE m.is_test IS NOT TRUE %(message_since)s
                   ) f
              LEFT JOIN res_partner p ON p.id = f.partner_id
             GROUP BY f.day, f.journey_id, f.step_id, f.step_type, f.channel, p.lang,
                      p.drip_rfm_segment, f.company_id
            ON CONFLICT (date, journey_id, step_id, channel, lang, rfm_segment, company_id)
            DO UPDATE SET entered = EXCLUDED.entered, holdout = EXCLUDED.holdout,
                          scheduled = EXCLUDED.scheduled, sent = EXCLUDED.sent,
                          delivered = EXCLUDED.delivered, opened = EXCLUDED.opened,
                          clicked = EXCLUDED.clicked, unsubscribed = EXCLUDED.unsubscribed,
                          skipped = EXCLUDED.skipped, converted = EXCLUDED.converted,
                          revenue = EXCLUDED.revenue
            """,
            entry_since=entry_since, message_since=message_since,
        )

    @api.model
    def _cron_refresh(self):
        self._refresh()

    @api.model
    def action_rebuild(self):
        """Re-aggregate the whole ledger (managers; after a data import or a restore)."""
        if not self._refresh(full=True):
            return {
                "type": "ir.actions.client",
                "tag": "display_notification",
                "params": {"message": _("Another refresh is running; try again in a moment."),
                           "type": "warning"},
            }
        return {"type": "ir.actions.client", "tag": "soft_reload"}

    @api.model
    def _action_open(self, journeys, domain=None, context=None):
        """The funnel of ``journeys`` (smart buttons): their rows refreshed first."""
        self._refresh(journeys=journeys)
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "drip_marketing.drip_funnel_report_action")
        if domain:
            action["domain"] = domain
        if context:
            action["context"] = dict(context)
        return action
