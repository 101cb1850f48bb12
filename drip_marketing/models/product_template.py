from odoo import fields, models


class ProductTemplate(models.Model):
    _inherit = "product.template"

    drip_repeat_purchase = fields.Selection(
        [
            ("auto", "From purchase history"),
            ("yes", "Yes"),
            ("no", "No"),
        ],
        string="Bought again (recommendations)",
        default="auto",
        required=True,
        help="May marketing recommendations show this product to customers who already "
        "bought it? 'From purchase history': when enough of its customers bought it in "
        "two or more orders (see drip_marketing.reco_repeat_rate), e.g. coffee or "
        "printer ink, not a sofa.",
    )
