from odoo import api, models
from odoo.tools import email_normalize


class MailBlacklist(models.Model):
    """Odoo's email blacklist and the email consent stay in step (``drip.blacklist.sync``)."""

    _name = "mail.blacklist"
    _inherit = ["mail.blacklist", "drip.blacklist.sync"]
    _drip_address_field = "email"
    _drip_channel = "email"

    @api.model
    def _drip_normalize(self, addresses):
        return {email_normalize(address) for address in addresses} - {False, None}
