from odoo import api, models


class DripOffer(models.AbstractModel):
    _inherit = "drip.offer"

    @api.model
    def _coupons_for(self, messages):
        """Issue (once) and return the coupons of the steps that hand one out."""
        result = super()._coupons_for(messages)
        coupons = self.env["drip.coupon"].sudo()._issue(messages)
        result.update({mid: coupon._as_context() for mid, coupon in coupons.items()})
        return result
