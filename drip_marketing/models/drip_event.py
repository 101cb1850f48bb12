from odoo import fields, models


class DripEvent(models.Model):
    """A behavior event: from the API, from Odoo itself, or Segment-format calls."""

    _name = "drip.event"
    _description = "Drip Marketing Event"
    _order = "occurred_at desc, id desc"
    _rec_name = "name"

    name = fields.Char(required=True, help="The event's name as received.")
    event_type_id = fields.Many2one("drip.event.type", index=True, ondelete="restrict")
    partner_id = fields.Many2one("res.partner", index="btree_not_null", ondelete="cascade")
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    source_id = fields.Many2one("drip.source", ondelete="set null")
    call_type = fields.Selection(
        [
            ("track", "Track"),
            ("identify", "Identify"),
            ("page", "Page"),
            ("screen", "Screen"),
            ("alias", "Alias"),
            ("internal", "Recorded by Odoo"),
        ],
        default="track",
        required=True,
    )
    anonymous_id = fields.Char(index="btree_not_null")
    external_user_id = fields.Char(string="User id", index="btree_not_null")
    idempotency_key = fields.Char(
        help="Client-given key (Segment messageId); a replay with the same key in the "
        "same company is ignored."
    )
    occurred_at = fields.Datetime(required=True, index=True, default=fields.Datetime.now)
    received_at = fields.Datetime(default=fields.Datetime.now, required=True)
    product_id = fields.Many2one("product.product", ondelete="set null")
    order_id = fields.Many2one("sale.order", ondelete="set null")
    payload = fields.Json(help="Event properties as received.")
    context_data = fields.Json(string="Context", help="IP, user agent, page, campaign.")
    source_ip = fields.Char(
        string="Sender IP", help="Address the event was posted from (the API client)."
    )
    processed = fields.Boolean(
        help="Journeys listening to this event type have evaluated it."
    )

    _sql_constraints = [
        (
            "idempotency_unique",
            "UNIQUE(company_id, idempotency_key)",
            "This event was already received (same idempotency key).",
        ),
    ]

    def init(self):
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS drip_event_unprocessed_idx
                ON drip_event (id) WHERE processed IS NOT TRUE;
            """
        )
