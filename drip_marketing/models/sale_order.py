from datetime import timedelta

from odoo import api, fields, models
from odoo.tools import SQL


class SaleOrder(models.Model):
    _inherit = "sale.order"

    drip_is_cart = fields.Boolean(
        string="Shop cart",
        copy=False,
        index=True,
        help="A cart filled by the customer (shop, portal, event API), as opposed to a "
        "quotation a salesperson prepares: only carts can be 'abandoned'.",
    )
    drip_cart_activity_at = fields.Datetime(
        string="Cart last changed",
        copy=False,
        help="Last change of the cart's lines; idleness is measured from here, not from "
        "the order date.",
    )
    drip_abandoned_at = fields.Datetime(
        string="Cart abandoned at",
        copy=False,
        readonly=True,
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
            CREATE INDEX IF NOT EXISTS sale_order_drip_idle_cart2_idx
                ON sale_order (drip_cart_activity_at)
             WHERE state = 'draft' AND drip_abandoned_at IS NULL AND drip_is_cart
                   AND drip_cart_activity_at IS NOT NULL;
            """
        )

    @api.model_create_multi
    def create(self, vals_list):
        now = fields.Datetime.now()
        # Orders customers create themselves (portal/public users) are carts.
        by_customer = self.env.user.share
        for vals in vals_list:
            if by_customer:
                vals.setdefault("drip_is_cart", True)
            if vals.get("order_line"):
                vals.setdefault("drip_cart_activity_at", now)
        return super().create(vals_list)

    def _drip_touch_cart(self):
        """A cart changed: restart its idle timer and end its running reminders."""
        drafts = self.filtered(lambda order: order.state == "draft" and order.drip_is_cart)
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
        public_partners = (
            self.env.ref("base.group_public")
            .sudo()
            .with_context(active_test=False)
            .users.partner_id.ids
        )
        stamped = 0
        for company in self.env["res.company"].sudo().search([]):
            idle_before = now - timedelta(hours=company.drip_cart_abandon_delay)
            self.env.cr.execute(
                SQL(
                    """
                UPDATE sale_order o SET drip_abandoned_at = %(now)s
                 WHERE o.id IN (
                       SELECT c.id FROM sale_order c
                        WHERE c.state = 'draft' AND c.drip_abandoned_at IS NULL AND c.drip_is_cart
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
                    now=now,
                    idle_before=idle_before,
                    company=company.id,
                    public=public_partners or [0],
                    limit=limit,
                    extra=self._drip_cart_scan_filter(),
                )
            )
            stamped += self.env.cr.rowcount
        self.invalidate_model(["drip_abandoned_at"])
        return stamped

    @api.model
    def _drip_cart_scan_filter(self):
        """Extra SQL conditions on the cart alias ``c`` (website_sale's flag, …)."""
        return SQL()

    def action_confirm(self):
        result = super().action_confirm()
        self._drip_on_confirmed()
        return result

    def _drip_on_confirmed(self):
        """Attribute each order to its last touch and let journeys react, set-based."""
        confirmed = self.filtered(lambda order: order.state == "sale")
        if not confirmed:
            return
        confirmed._drip_attribute()
        enrollments = (
            self.env["drip.enrollment"]
            .sudo()
            .search(
                [
                    ("partner_id", "in", confirmed.partner_id.ids),
                    ("state", "in", ("active", "paused")),
                ]
            )
        )
        enrollments._goal_reached()._exit("goal_reached")
        # Steps waiting for "order placed" after a recent message start now.
        for company, orders in confirmed.grouped("company_id").items():
            since = fields.Datetime.now() - timedelta(days=company.drip_attribution_window_days)
            self.env["drip.message"].sudo().search(
                [
                    ("partner_id", "in", orders.partner_id.ids),
                    ("state", "=", "sent"),
                    ("channel", "!=", "action"),
                    ("sent_at", ">=", since),
                    ("enrollment_id.state", "in", ("active", "completed")),
                ]
            )._on_outcome("ordered")

    def _drip_attribute(self):
        """Last touch: the latest message opened or clicked within the company's window
        before confirmation gets the order, its revenue in company currency (untaxed,
        like the RFM), and a conversion on its participant. An order counts once."""
        self.env.flush_all()
        self.env.cr.execute(
            """
            WITH touch AS (
                SELECT DISTINCT ON (o.id) o.id AS order_id, m.id AS message_id,
                       m.enrollment_id, o.date_order,
                       o.amount_untaxed / CASE WHEN COALESCE(o.currency_rate, 0) = 0 THEN 1
                                               ELSE o.currency_rate END AS revenue
                  FROM sale_order o
                  JOIN res_company c ON c.id = o.company_id
                  JOIN drip_message m ON m.partner_id = o.partner_id
                       AND m.is_test IS NOT TRUE AND m.company_id = o.company_id
                       AND GREATEST(m.opened_at, m.clicked_at) <= o.date_order
                       AND GREATEST(m.opened_at, m.clicked_at)
                           >= o.date_order - make_interval(days => c.drip_attribution_window_days)
                 WHERE o.id = ANY(%(orders)s) AND o.drip_attributed_message_id IS NULL
                 ORDER BY o.id, GREATEST(m.opened_at, m.clicked_at) DESC, m.id DESC
            ), orders AS (
                UPDATE sale_order o SET drip_attributed_message_id = t.message_id
                  FROM touch t WHERE o.id = t.order_id
            ), messages AS (
                UPDATE drip_message m
                   SET converted_at = COALESCE(m.converted_at, t.date_order),
                       conversion_order_id = COALESCE(m.conversion_order_id, t.order_id),
                       revenue = COALESCE(m.revenue, 0) + t.revenue
                  FROM (SELECT message_id, min(date_order) AS date_order, min(order_id) AS order_id,
                               sum(revenue) AS revenue
                          FROM touch GROUP BY message_id) t
                 WHERE m.id = t.message_id
            )
            UPDATE drip_enrollment e
               SET converted_at = COALESCE(e.converted_at, t.date_order),
                   conversion_order_id = COALESCE(e.conversion_order_id, t.order_id),
                   revenue = COALESCE(e.revenue, 0) + t.revenue
              FROM (SELECT enrollment_id, min(date_order) AS date_order,
                           min(order_id) AS order_id, sum(revenue) AS revenue
                      FROM touch GROUP BY enrollment_id) t
             WHERE e.id = t.enrollment_id
            """,
            {"orders": self.ids},
        )
        self.invalidate_model(["drip_attributed_message_id"])
        self.env["drip.message"].invalidate_model(
            ["converted_at", "conversion_order_id", "revenue"]
        )
        self.env["drip.enrollment"].invalidate_model(
            ["converted_at", "conversion_order_id", "revenue"]
        )
