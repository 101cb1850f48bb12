from odoo import _, api, fields, models
from odoo.exceptions import ValidationError

from ..engine import scoring

SCORING_KINDS = [
    ("open", "Email opened"),
    ("click", "Link clicked"),
    ("product_view", "Product viewed"),
    ("cart_add", "Added to cart"),
    ("order", "Order confirmed"),
    ("reply", "Replied"),
    ("unsubscribe", "Unsubscribed"),
    ("bounce", "Bounced"),
]


class DripScoringRule(models.Model):
    """Points a kind of fact adds to the engagement score (negative ones remove)."""

    _name = "drip.scoring.rule"
    _description = "Drip Marketing Scoring Rule"
    _order = "sequence, id"

    sequence = fields.Integer(default=10)
    kind = fields.Selection(SCORING_KINDS, string="When the customer", required=True)
    points = fields.Float(
        required=True,
        default=1.0,
        digits=(16, 1),
        help="Added to the score for each such fact; negative values lower it. The "
        "points then halve every half-life (Settings).",
    )
    company_id = fields.Many2one(
        "res.company",
        index=True,
        help="Empty: the rule applies to every company without a rule of its own for "
        "this kind.",
    )
    active = fields.Boolean(default=True)

    @api.depends("kind", "points")
    def _compute_display_name(self):
        labels = dict(SCORING_KINDS)
        for rule in self:
            rule.display_name = f"{labels.get(rule.kind, '')} ({rule.points:+g})"

    @api.constrains("kind", "company_id", "active")
    def _check_one_rule_per_kind(self):
        for rule in self.filtered("active"):
            clash = self.search_count([
                ("id", "!=", rule.id),
                ("kind", "=", rule.kind),
                ("company_id", "=", rule.company_id.id),
                ("active", "=", True),
            ], limit=1)
            if clash:
                raise ValidationError(
                    _("There is already a scoring rule for '%(kind)s'%(where)s: change its "
                      "points instead.",
                      kind=dict(SCORING_KINDS)[rule.kind],
                      where=_(" in %s", rule.company_id.name) if rule.company_id else "")
                )

    @api.model
    def _points_by_company(self, companies):
        """``{company_id: {kind: points}}``: a company's own rules, else the shared ones.

        A kind without any active rule is worth nothing.
        """
        rules = self.sudo().search([("company_id", "in", companies.ids + [False])])
        shared = {rule.kind: rule.points for rule in rules if not rule.company_id}
        result = {}
        for company in companies:
            points = dict.fromkeys(scoring.KINDS, 0.0)
            points.update(shared)
            points.update(
                {rule.kind: rule.points for rule in rules if rule.company_id == company}
            )
            result[company.id] = points
        return result
