from odoo import api, models
from odoo.tools import SQL


class SaleOrder(models.Model):
    _inherit = "sale.order"

    @api.model_create_multi
    def create(self, vals_list):
        # website_sale's carts are the shop's carts, whoever creates them.
        for vals in vals_list:
            if vals.get("website_id"):
                vals.setdefault("drip_is_cart", True)
        return super().create(vals_list)

    @api.model
    def _drip_cart_scan_filter(self):
        # A cart Odoo already reminded (or decided not to) is never ours to remind.
        return SQL(
            "%s AND c.cart_recovery_email_sent IS NOT TRUE", super()._drip_cart_scan_filter()
        )
