from odoo import fields, models


class DripEnrollment(models.Model):
    _inherit = "drip.enrollment"

    coupon_ids = fields.One2many("drip.coupon", "enrollment_id", string="Coupons",
                                 readonly=True)
    coupon_discount = fields.Monetary(
        currency_field="currency_id", string="Coupon discount", readonly=True,
        help="Discount this participant got with the journey's coupons, in the company's "
        "currency, next to the revenue attributed to the journey.",
    )
