from odoo import api, fields, models


class DripMessage(models.Model):
    _inherit = "drip.message"

    coupon_ids = fields.One2many("drip.coupon", "message_id", string="Coupons", readonly=True)
    coupon_code = fields.Char(compute="_compute_coupon_code")
    coupon_discount = fields.Monetary(
        currency_field="currency_id", string="Coupon discount", readonly=True,
        help="Discount the customer got with this message's coupon, in the company's "
        "currency: read it next to the attributed revenue.",
    )

    @api.depends("coupon_ids.code")
    def _compute_coupon_code(self):
        for message in self:
            message.coupon_code = message.coupon_ids[:1].code or False
