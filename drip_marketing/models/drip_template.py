from odoo import _, api, fields, models
from odoo.exceptions import ValidationError

from ..engine import render
from .drip_step import CHANNELS

# Which template parts each channel uses, and whether the part is HTML.
CHANNEL_PARTS = {
    "email": (("subject", False), ("body_html", True), ("body_text", False)),
    "sms": (("body_text", False),),
    "webhook": (("subject", False), ("body_text", False)),
    "note": (("body_html", True),),
}


class DripTemplate(models.Model):
    _name = "drip.template"
    _description = "Drip Marketing Template"
    _inherit = ["mail.thread"]
    _order = "name, id"

    name = fields.Char(required=True, tracking=True, translate=True)
    active = fields.Boolean(default=True)
    company_id = fields.Many2one(
        "res.company", required=True, default=lambda self: self.env.company, index=True
    )
    channel = fields.Selection(CHANNELS, required=True, default="email", tracking=True)
    email_from = fields.Char(
        help="Sender address; empty: the company's email through Odoo's outgoing server."
    )
    reply_to = fields.Char()
    subject = fields.Char(translate=False, help="Jinja2, e.g. {{ partner.first_name }}")
    body_html = fields.Text(
        string="HTML body", help="Jinja2 template of the HTML part (autoescaped)."
    )
    body_text = fields.Text(
        string="Text body", help="Jinja2 template of the plain-text part, or the SMS text."
    )
    variant_ids = fields.One2many(
        "drip.template.variant", "template_id", string="Language variants", copy=True
    )
    step_ids = fields.One2many("drip.step", "template_id", string="Used in steps")
    preview_partner_id = fields.Many2one("res.partner", string="Preview for customer")
    preview_order_id = fields.Many2one(
        "sale.order",
        string="Preview with order",
        domain="[('partner_id', '=', preview_partner_id)]",
    )
    preview_lang = fields.Char(compute="_compute_preview")
    preview_subject = fields.Char(compute="_compute_preview")
    preview_body_html = fields.Html(compute="_compute_preview", sanitize=False)
    preview_body_text = fields.Text(compute="_compute_preview")
    preview_error = fields.Text(compute="_compute_preview")

    @api.constrains("subject", "body_html", "body_text", "channel")
    def _check_syntax(self):
        for template in self:
            template._validate_parts(template, template.name)

    @api.model
    def _validate_parts(self, record, label):
        for part, html in CHANNEL_PARTS[self._channel_of(record)]:
            try:
                render.validate(record[part] or "", html=html)
            except render.TemplateProblem as problem:
                raise ValidationError(
                    _("Template '%(name)s', %(part)s: %(problem)s",
                      name=label, part=record._fields[part].string, problem=problem)
                ) from problem

    @api.model
    def _channel_of(self, record):
        return record.channel if record._name == self._name else record.template_id.channel

    @api.depends(
        "preview_partner_id", "preview_order_id", "subject", "body_html", "body_text",
        "variant_ids.subject", "variant_ids.body_html", "variant_ids.body_text",
    )
    def _compute_preview(self):
        for template in self:
            template.update(
                {
                    "preview_lang": False,
                    "preview_subject": False,
                    "preview_body_html": False,
                    "preview_body_text": False,
                    "preview_error": False,
                }
            )
            partner = template.preview_partner_id
            if not partner:
                continue
            lang = partner.lang or self.env.lang or "en_US"
            try:
                rendered = template._render_for(partner, template.preview_order_id, lang)
            except render.TemplateProblem as problem:
                template.preview_error = str(problem)
                continue
            template.update(
                {
                    "preview_lang": lang,
                    "preview_subject": rendered.get("subject"),
                    "preview_body_html": rendered.get("body_html"),
                    "preview_body_text": rendered.get("body_text"),
                }
            )

    def _parts_for_lang(self, lang):
        """Source of each part in ``lang``: the variant's where it has one."""
        self.ensure_one()
        variant = self.variant_ids.filtered(lambda v: v.lang == lang)[:1]
        return {
            part: (variant[part] if variant and variant[part] else self[part]) or ""
            for part, _html in CHANNEL_PARTS[self.channel]
        }

    def _render_for(self, partner, order, lang):
        context = self.env["drip.delivery"]._render_context(partner, order, lang)
        return render.render_message(self._parts_for_lang(lang), context, lang)


class DripTemplateVariant(models.Model):
    _name = "drip.template.variant"
    _description = "Drip Marketing Template Language Variant"
    _order = "template_id, lang"
    _rec_name = "lang"

    template_id = fields.Many2one("drip.template", required=True, ondelete="cascade")
    lang = fields.Selection("_lang_get", string="Language", required=True)
    subject = fields.Char()
    body_html = fields.Text(string="HTML body")
    body_text = fields.Text(string="Text body")

    _sql_constraints = [
        (
            "template_lang_unique",
            "UNIQUE(template_id, lang)",
            "A template has at most one variant per language.",
        )
    ]

    @api.model
    def _lang_get(self):
        # Every known language, active or not: a variant may be written before the
        # language is activated (e.g. shipped zh_CN variants).
        langs = self.env["res.lang"].with_context(active_test=False).search([])
        return [(lang.code, lang.name) for lang in langs]

    @api.constrains("subject", "body_html", "body_text")
    def _check_syntax(self):
        for variant in self:
            self.env["drip.template"]._validate_parts(
                variant, f"{variant.template_id.name} ({variant.lang})"
            )
