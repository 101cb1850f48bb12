from odoo import api, models


class SaleOrderLine(models.Model):
    _inherit = "sale.order.line"

    @api.model_create_multi
    def create(self, vals_list):
        lines = super().create(vals_list)
        lines.order_id._drip_touch_cart()
        return lines

    def write(self, vals):
        result = super().write(vals)
        if {"product_id", "product_uom_qty"} & set(vals):
            self.order_id._drip_touch_cart()
        return result

    def unlink(self):
        orders = self.order_id
        result = super().unlink()
        orders.exists()._drip_touch_cart()
        return result
