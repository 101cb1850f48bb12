import secrets

from odoo import api, fields, models
from odoo.exceptions import ValidationError

# Most events one request of the event API may carry (controllers/events.py).
MAX_BATCH_EVENTS = 1000
# What ingestion does with an event of a person it does not know yet (see
# drip.ingest and docs/integrators.md, "Unknown people").
UNKNOWN_PARTNER_POLICIES = [
    ("create", "Create a customer for any identified person"),
    ("contact", "Create a customer only with an email or phone"),
    ("never", "Never create customers: keep their events unattached"),
]


class DripSource(models.Model):
    """A sender of events (storefront, app, mini-program) with its own write key."""

    _name = "drip.source"
    _description = "Drip Marketing Event Source"
    _order = "name"

    name = fields.Char(required=True)
    active = fields.Boolean(default=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    write_key = fields.Char(
        required=True,
        copy=False,
        readonly=True,
        default=lambda self: secrets.token_urlsafe(24),
        groups="drip_marketing.drip_marketing_group_manager",
        help="Secret the SDK sends as the Basic-auth user name.",
    )
    event_ids = fields.One2many("drip.event", "source_id")
    last_event_at = fields.Datetime(readonly=True)
    is_event_api = fields.Boolean(
        string="Event API",
        readonly=True,
        copy=False,
        help="The source of events posted to /drip/api/v1/events with an Odoo API key; "
        "its rate limit and unknown-customer rule apply to that API.",
    )
    unknown_partner_policy = fields.Selection(
        UNKNOWN_PARTNER_POLICIES,
        string="Unknown people",
        default="create",
        required=True,
        help="An event whose identifiers (user id, external id, email, phone, WeChat ids) "
        "match no customer: create one, create one only when an email or phone is "
        "known, or keep the event unattached until the person is identified (its "
        "anonymous id or user id then links it to the customer).",
    )
    rate_limit = fields.Integer(
        string="Rate limit (events/s)",
        default=10000,
        required=True,
        help="Sustained events per second accepted per write key (per API key for the "
        "event API). Above it, requests get HTTP 429 with Retry-After.",
    )
    rate_burst = fields.Integer(
        string="Burst (events)",
        default=20000,
        required=True,
        help="Events a key may send at once after being idle (token bucket size).",
    )

    _sql_constraints = [
        ("write_key_unique", "UNIQUE(write_key)", "Write keys must be unique."),
        (
            "rate_limit_positive",
            "CHECK(rate_limit > 0 AND rate_burst > 0)",
            "The rate limit and the burst must be above zero.",
        ),
    ]

    @api.constrains("rate_burst")
    def _check_rate_burst(self):
        # A batch larger than the bucket could never be accepted.
        for source in self:
            if source.rate_burst < MAX_BATCH_EVENTS:
                raise ValidationError(self.env._(
                    "The burst must allow at least one full batch (%s events).",
                    MAX_BATCH_EVENTS,
                ))

    def action_rotate_write_key(self):
        for source in self:
            source.write_key = secrets.token_urlsafe(24)
        return True

    @api.model
    def _event_api_source(self, company):
        """The source standing for the event API in ``company``, created on first use."""
        source = self.sudo().with_context(active_test=False).search_fetch(
            [("is_event_api", "=", True), ("company_id", "=", company.id)],
            ["company_id", "rate_limit", "rate_burst", "unknown_partner_policy"], limit=1,
        )
        if not source:
            source = self.sudo().create(
                {"name": self.env._("Event API"), "is_event_api": True,
                 "company_id": company.id}
            )
        return source
