from odoo import _, api, fields, models
from odoo.tools import SQL

from .domain_tools import checked_domain


class DripSegment(models.Model):
    """A named customer filter; membership is materialised so 'entered' is detectable."""

    _name = "drip.segment"
    _description = "Drip Marketing Segment"
    _order = "name"

    name = fields.Char(required=True, translate=True)
    active = fields.Boolean(default=True)
    description = fields.Text(translate=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    domain = fields.Char(string="Filter", default="[]", required=True)
    partner_count = fields.Integer(string="Customers now", compute="_compute_partner_count")
    member_ids = fields.Many2many(
        "res.partner",
        "drip_segment_member_rel",
        "segment_id",
        "partner_id",
        string="Members at last refresh",
        readonly=True,
        copy=False,
    )
    refreshed_at = fields.Datetime(readonly=True, copy=False)

    @api.constrains("domain")
    def _check_domain(self):
        for segment in self:
            segment._partner_domain()

    def _partner_domain(self):
        self.ensure_one()
        domain = checked_domain(
            self.env, "res.partner", self.domain, _("The filter of segment '%s'", self.name)
        )
        return domain + [("company_id", "in", (False, self.company_id.id))]

    @api.depends("domain")
    def _compute_partner_count(self):
        for segment in self:
            segment.partner_count = self.env["res.partner"].search_count(
                segment._partner_domain()
            )

    def action_view_partners(self):
        self.ensure_one()
        return {
            "type": "ir.actions.act_window",
            "name": self.name,
            "res_model": "res.partner",
            "view_mode": "list,form",
            "domain": self._partner_domain(),
        }

    def _refresh_members(self, now=None):
        """Materialise membership; newcomers get a 'segment entered' event.

        Set-based: one INSERT and one DELETE against the filter's subquery. The first
        refresh of a segment records no events: everyone "entering" at once would
        otherwise trigger journeys for the whole existing audience.
        """
        now = now or fields.Datetime.now()
        event_type = self.env.ref("drip_marketing.event_type_segment_entered")
        self.env["res.partner"].flush_model()
        self.env["drip.event"].flush_model()
        for segment in self:
            members = self.env["res.partner"]._search(segment._partner_domain()).subselect()
            self.env.cr.execute(SQL(
                """
                WITH entered AS (
                    INSERT INTO drip_segment_member_rel (segment_id, partner_id)
                    SELECT %(segment)s, p.id FROM res_partner p
                     WHERE p.id IN %(members)s
                       AND NOT EXISTS (SELECT 1 FROM drip_segment_member_rel r
                                        WHERE r.segment_id = %(segment)s AND r.partner_id = p.id)
                    RETURNING partner_id
                ), gone AS (
                    DELETE FROM drip_segment_member_rel r
                     WHERE r.segment_id = %(segment)s AND r.partner_id NOT IN %(members)s
                )
                INSERT INTO drip_event (name, event_type_id, partner_id, company_id, call_type,
                                        occurred_at, received_at, payload, processed,
                                        create_uid, create_date, write_uid, write_date)
                SELECT %(name)s, %(type)s, entered.partner_id, %(company)s, 'internal',
                       %(now)s, %(now)s, jsonb_build_object('segment_id', %(segment)s),
                       TRUE, %(uid)s, %(now)s, %(uid)s, %(now)s
                  FROM entered
                 WHERE %(emit)s
                """,
                segment=segment.id, members=members, name=f"Entered segment {segment.name}",
                type=event_type.id, company=segment.company_id.id, now=now, uid=self.env.uid,
                emit=bool(segment.refreshed_at),
            ))
        self.write({"refreshed_at": now})
        self.invalidate_model(["member_ids"])
        self.env["drip.event"].invalidate_model()

    @api.model
    def _cron_refresh_members(self):
        segments = self.search([])
        segments._refresh_members()
        self.env["ir.cron"]._notify_progress(done=len(segments), remaining=0)
