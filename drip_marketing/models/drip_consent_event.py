from odoo import _, api, fields, models
from odoo.exceptions import AccessError

from odoo.addons.base.models.ir_model import MODULE_UNINSTALL_FLAG

CONSENT_CHANNELS = [("email", "Email"), ("sms", "SMS"), ("messaging", "Messaging apps")]
CONSENT_STATES = [
    ("unknown", "Unknown"),
    ("pending", "Pending double opt-in"),
    ("opted_in", "Opted in"),
    ("opted_out", "Opted out"),
]
CONSENT_SOURCES = [
    ("backend", "Backend"),
    ("preferences", "Preference page"),
    ("unsubscribe", "Unsubscribe link"),
    ("one_click", "One-click unsubscribe"),
    ("double_opt_in", "Double opt-in confirmation"),
    ("api", "Event API"),
    ("import", "Import"),
    ("blacklist", "Odoo blacklist"),
    ("merge", "Customer merge"),
    ("erasure", "Erasure"),
]
# The only context key that lets the erasure routine touch the ledger.
ERASURE_CONTEXT_KEY = "drip_consent_erasure"


class DripConsentEvent(models.Model):
    """Append-only ledger of every consent change: who, when, how, proof."""

    _name = "drip.consent.event"
    _description = "Drip Marketing Consent Change"
    _order = "create_date desc, id desc"
    _rec_name = "partner_id"

    partner_id = fields.Many2one(
        "res.partner", string="Customer", required=True, ondelete="cascade", index=True
    )
    company_id = fields.Many2one(related="partner_id.company_id", store=True)
    channel = fields.Selection(CONSENT_CHANNELS, required=True)
    old_state = fields.Selection(CONSENT_STATES, required=True, default="unknown")
    new_state = fields.Selection(CONSENT_STATES, required=True)
    source = fields.Selection(CONSENT_SOURCES, required=True, default="backend")
    user_id = fields.Many2one(
        "res.users", default=lambda self: self.env.user, string="Changed by"
    )
    is_public_request = fields.Boolean(
        help="Made by the customer through a public page, not by a user."
    )
    ip_address = fields.Char(string="IP address")
    user_agent = fields.Char()
    proof = fields.Text(help="Evidence: form text, message id, request details.")

    def write(self, vals):
        if not self.env.context.get(ERASURE_CONTEXT_KEY):
            raise AccessError(_("The consent ledger is append-only: entries cannot be changed."))
        return super().write(vals)

    def unlink(self):
        # Uninstalling the module removes its demo entries before dropping the table.
        if not self.env.context.get(ERASURE_CONTEXT_KEY) and not self.env.context.get(
            MODULE_UNINSTALL_FLAG
        ):
            raise AccessError(_("The consent ledger is append-only: entries cannot be deleted."))
        return super().unlink()

    @api.model
    def _log(self, rows):
        """Append many changes at once; ``rows`` are dicts of this model's fields."""
        return self.sudo().create(rows) if rows else self.browse()
