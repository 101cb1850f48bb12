from datetime import timedelta

from odoo import api, fields, models
from odoo.tools import SQL


class SaleOrder(models.Model):
    _inherit = "sale.order"

    drip_cart_activity_at = fields.Datetime(
        string="Cart last changed",
        copy=False,
        help="Last change of the cart's lines; idleness is measured from here, not from "
        "the order date.",
    )
    drip_abandoned_at = fields.Datetime(
        string="Cart abandoned at", copy=False, readonly=True,
        help="When the cart was found idle past the company's delay.",
    )
    drip_attributed_message_id = fields.Many2one(
        "drip.message", string="Attributed to message", copy=False, readonly=True
    )
    drip_attributed_journey_id = fields.Many2one(
        related="drip_attributed_message_id.journey_id", string="Attributed to journey"
    )

    def init(self):
        # The abandoned-cart scan looks only at idle, not yet handled draft carts: a
        # partial index keeps it proportional to the due carts, not to all orders.
        self.env.cr.execute(
            """
            CREATE INDEX IF NOT EXISTS sale_order_drip_idle_cart_idx
                ON sale_order (drip_cart_activity_at)
             WHERE state = 'draft' AND drip_abandoned_at IS NULL
                   AND drip_cart_activity_at IS NOT NULL;
            """
        )

    @api.model_create_multi
    def create(self, vals_list):
        now = fields.Datetime.now()
        for vals in vals_list:
            if vals.get("order_line"):
                vals.setdefault("drip_cart_activity_at", now)
        return super().create(vals_list)

    def _drip_touch_cart(self):
        """A cart changed: restart its idle timer and end its running reminders."""
        drafts = self.filtered(lambda order: order.state == "draft")
        if not drafts:
            return
        drafts.write({"drip_cart_activity_at": fields.Datetime.now(), "drip_abandoned_at": False})
        running = self.env["drip.enrollment"].search(
            [("order_id", "in", drafts.ids), ("state", "in", ("active", "paused"))]
        )
        emptied = running.filtered(lambda e: not e.order_id.order_line)
        emptied._exit("cart_emptied")
        (running - emptied)._exit("cart_changed")

    @api.model
    def _drip_mark_abandoned_carts(self, limit=5000, now=None):
        """Stamp carts idle past their company's delay; return how many were stamped.

        One UPDATE per company over the partial index on idle draft carts, so the cost
        follows the number of due carts, not the size of the order table.
        """
        now = now or fields.Datetime.now()
        self.flush_model()
        public_partners = self.env.ref("base.group_public").sudo().with_context(
            active_test=False).users.partner_id.ids
        stamped = 0
        for company in self.env["res.company"].sudo().search([]):
            idle_before = now - timedelta(hours=company.drip_cart_abandon_delay)
            self.env.cr.execute(SQL(
                """
                UPDATE sale_order o SET drip_abandoned_at = %(now)s
                 WHERE o.id IN (
                       SELECT c.id FROM sale_order c
                        WHERE c.state = 'draft' AND c.drip_abandoned_at IS NULL
                          AND c.drip_cart_activity_at IS NOT NULL
                          AND c.drip_cart_activity_at <= %(idle_before)s
                          AND c.company_id = %(company)s
                          AND c.partner_id <> ALL(%(public)s)
                          AND EXISTS (SELECT 1 FROM sale_order_line l
                                       WHERE l.order_id = c.id AND l.display_type IS NULL)
                          %(extra)s
                        ORDER BY c.drip_cart_activity_at
                        LIMIT %(limit)s
                          FOR UPDATE SKIP LOCKED)
                """,
                now=now, idle_before=idle_before, company=company.id,
                public=public_partners or [0], limit=limit, extra=self._drip_cart_scan_filter(),
            ))
            stamped += self.env.cr.rowcount
        self.invalidate_model(["drip_abandoned_at"])
        return stamped

    @api.model
    def _drip_cart_scan_filter(self):
        """Extra SQL conditions on the cart alias ``c`` (website_sale's flag, …)."""
        return SQL()
