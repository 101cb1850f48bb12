from odoo import models


class SaleOrder(models.Model):
    _inherit = "sale.order"

    def _drip_attribute(self):
        # A redeemed drip coupon is the strongest evidence: its message gets the order
        # before the last-touch attribution looks at opens and clicks.
        self.env["drip.coupon"].sudo()._record_redemptions(self)
        return super()._drip_attribute()
