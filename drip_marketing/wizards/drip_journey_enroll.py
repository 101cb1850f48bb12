from odoo import _, fields, models
from odoo.exceptions import UserError


class DripJourneyEnroll(models.TransientModel):
    """A user adds customers to a running journey by hand (the journey's rules apply)."""

    _name = "drip.journey.enroll"
    _description = "Drip Marketing: add customers to a journey"

    journey_id = fields.Many2one(
        "drip.journey", required=True, domain="[('state', '=', 'running')]"
    )
    partner_ids = fields.Many2many(
        "res.partner", string="Customers", required=True,
        default=lambda self: self._default_partners(),
    )

    def _default_partners(self):
        if self.env.context.get("active_model") == "res.partner":
            return [(6, 0, self.env.context.get("active_ids", []))]
        return []

    def action_enroll(self):
        self.ensure_one()
        if self.journey_id.state != "running":
            raise UserError(_("Customers can only be added to a running journey."))
        entered = self.journey_id._enroll_partners(self.partner_ids)
        skipped = len(self.partner_ids) - len(entered)
        message = _("%(count)s customer(s) entered '%(journey)s'.", count=len(entered),
                    journey=self.journey_id.name)
        if skipped:
            message += " " + _(
                "%s were already in it or do not match its entry filter.", skipped)
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {"message": message, "type": "success" if entered else "warning",
                       "next": {"type": "ir.actions.act_window_close"}},
        }
