from odoo import models


class PhoneBlacklist(models.Model):
    """Odoo's phone blacklist and the SMS consent stay in step (``drip.blacklist.sync``).

    Numbers here are E.164; customers are matched on ``res.partner.drip_phone_sanitized``.
    """

    _name = "phone.blacklist"
    _inherit = ["phone.blacklist", "drip.blacklist.sync"]
    _drip_address_field = "number"
    _drip_channel = "sms"
