from odoo import _, api, fields, models
from odoo.exceptions import ValidationError


class DripStep(models.Model):
    _inherit = "drip.step"

    coupon_program_id = fields.Many2one(
        "loyalty.program",
        string="Coupon program",
        domain="[('program_type', '=', 'coupons'), ('company_id', 'in', (company_id, False))]",
        ondelete="restrict",
        help="Give each participant a personal single-use code of this coupon program with "
        "this message, shown by the template as {{ coupon.code }} and "
        "{{ coupon.expires_at | date }}. A participant gets one code per step, even when "
        "the message is retried.",
    )
    coupon_validity_days = fields.Integer(
        string="Coupon valid for (days)",
        default=7,
        help="The code expires this many days after the message is sent.",
    )
    coupon_count = fields.Integer(compute="_compute_coupon_statistics", string="Coupons issued")
    coupon_redeemed_count = fields.Integer(
        compute="_compute_coupon_statistics", string="Coupons redeemed"
    )

    _sql_constraints = [
        (
            "coupon_validity_positive",
            "CHECK(coupon_validity_days > 0)",
            "A coupon must be valid for at least one day.",
        ),
    ]

    def _compute_coupon_statistics(self):
        rows = self.env["drip.coupon"]._read_group(
            [("step_id", "in", self.ids)], ["step_id"], ["__count", "redeemed_at:count"]
        )
        stats = {step.id: (total, redeemed) for step, total, redeemed in rows}
        for step in self:
            step.coupon_count, step.coupon_redeemed_count = stats.get(step.id, (0, 0))

    @api.constrains("coupon_program_id", "step_type", "journey_id")
    def _check_coupon_program(self):
        for step in self.filtered("coupon_program_id"):
            program = step.coupon_program_id
            if step.step_type != "send":
                raise ValidationError(
                    _("Only a send step can hand out coupons (step '%s').", step.name)
                )
            if program.program_type != "coupons":
                raise ValidationError(
                    _("Step '%(step)s': '%(program)s' is not a coupon program.",
                      step=step.name, program=program.name)
                )
            if program.company_id and program.company_id != step.journey_id.company_id:
                raise ValidationError(
                    _("Step '%(step)s': the coupon program belongs to another company.",
                      step=step.name)
                )
