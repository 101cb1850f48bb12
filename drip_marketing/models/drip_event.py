from odoo import fields, models
from odoo.tools.sql import create_index


class DripEvent(models.Model):
    """A behavior event: from the API, from Odoo itself, or Segment-format calls."""

    _name = "drip.event"
    _description = "Drip Marketing Event"
    _order = "occurred_at desc, id desc"
    _rec_name = "name"

    name = fields.Char(required=True, help="The event's name as received.")
    event_type_id = fields.Many2one("drip.event.type", index=True, ondelete="restrict")
    partner_id = fields.Many2one("res.partner", index="btree_not_null", ondelete="cascade")
    # Not indexed alone: company filters use the idempotency unique index, which
    # starts with company_id (see init()).
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company
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
    anonymous_id = fields.Char()
    external_user_id = fields.Char(string="User id")
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
        # Every index costs each ingested row, so drip_event keeps only those a query
        # reads: the primary key (journey scans by id range); (company_id,
        # idempotency_key) (replays); partner_id (timeline, erasure cascade); occurred_at
        # (browse abandonment, backtest, engagement); event_type_id (deleting a type
        # checks ON DELETE RESTRICT); write_date (engagement, drip_prediction); and the two
        # partial indexes below, which stitching reads and which events of known
        # customers (most of them) never enter.
        cr = self.env.cr
        cr.execute(
            """
            -- read by no query (the scan follows an id watermark) and never emptied
            DROP INDEX IF EXISTS drip_event_unprocessed_idx;
            DROP INDEX IF EXISTS drip_event__processed_index;
            -- redundant with the unique index (company_id, idempotency_key)
            DROP INDEX IF EXISTS drip_event__company_id_index;
            -- replaced by the partial indexes on events without a customer
            DROP INDEX IF EXISTS drip_event__anonymous_id_index;
            DROP INDEX IF EXISTS drip_event__external_user_id_index;
            """
        )
        for name, column in (("drip_event_unattached_anonymous_idx", "anonymous_id"),
                             ("drip_event_unattached_user_idx", "external_user_id")):
            create_index(cr, name, "drip_event", ["company_id", column],
                         where=f"partner_id IS NULL AND {column} IS NOT NULL")
