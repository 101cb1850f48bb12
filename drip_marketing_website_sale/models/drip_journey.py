from odoo import models


class DripJourney(models.Model):
    _inherit = "drip.journey"

    def _enroll(self, candidates, now=None):
        enrollments = super()._enroll(candidates, now=now)
        if self.trigger == "cart_abandoned" and enrollments:
            # Claim the carts: website_sale's hourly cron skips flagged carts, so the
            # customer gets our reminder and never Odoo's as well.
            enrollments.order_id.sudo().write({"cart_recovery_email_sent": True})
        return enrollments
