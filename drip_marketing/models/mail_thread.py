from odoo import api, models


class MailThread(models.AbstractModel):
    """Bounces and replies of drip emails, through Odoo's own incoming-mail routing.

    Every drip email's Message-ID is also the ``message_id`` of its chatter entry on the
    customer, so Odoo's gateway threads a reply onto the customer and finds the bounced
    message; these hooks stamp the ``drip.message`` carrying that Message-ID.
    """

    _inherit = "mail.thread"

    @api.model
    def _routing_handle_bounce(self, email_message, message_dict):
        result = super()._routing_handle_bounce(email_message, message_dict)
        self.env["drip.delivery"].sudo()._on_bounce(message_dict)
        return result

    @api.model
    def _message_route_process(self, message, message_dict, routes):
        result = super()._message_route_process(message, message_dict, routes)
        if not message_dict.get("is_bounce"):
            self.env["drip.delivery"].sudo()._on_reply(message, message_dict)
        return result
