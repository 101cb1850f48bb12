"""Public consent pages: one-click unsubscribe, preferences, double opt-in confirmation.

Every route is reached through a signed token (``engine.tokens`` with the database
secret, see ``res.partner._drip_token``). A tampered, expired or unknown token gets the
same error page with status 403 and changes nothing; the pages only ever show the
customer of the token, and only their own masked address.
"""

import logging

from odoo import _, fields, http
from odoo.http import request

from ..engine import tokens
from ..models.res_partner import CONSENT_FIELDS

_logger = logging.getLogger(__name__)

ONE_CLICK_BODY = ("List-Unsubscribe", "One-Click")  # RFC 8058, section 3.1
PREFERENCE_CHOICES = {"in": "opted_in", "out": "opted_out"}


def _masked(email):
    """``l***@example.com``: enough for the customer to recognise, little to harvest."""
    if not email or "@" not in email:
        return ""
    local, domain = email.split("@", 1)
    return f"{local[:1]}***@{domain}"


class DripConsentController(http.Controller):

    # ------------------------------------------------------------- helpers
    def _drip_partner(self, token, purpose):
        """``(partner, payload)`` for a valid token, else ``(None, None)``."""
        try:
            return request.env["res.partner"].sudo()._drip_from_token(token, purpose)
        except tokens.InvalidToken as error:
            _logger.info("Refused a %s link: %s", purpose, error.reason)
            return None, None

    def _drip_render(self, template, partner, values=None, status=200):
        if partner and partner.lang:
            installed = dict(request.env["res.lang"].get_installed())
            if partner.lang in installed:
                request.update_context(lang=partner.lang)
        company = (partner.company_id if partner else None) or request.env.company
        return request.render(
            template, dict(values or {}, company=company.sudo()), status=status
        )

    def _drip_invalid(self):
        return self._drip_render("drip_marketing.consent_page_invalid", None, status=403)

    def _drip_proof(self, what):
        httprequest = request.httprequest
        return {
            "is_public_request": True,
            "ip_address": httprequest.remote_addr,
            "user_agent": (httprequest.headers.get("User-Agent") or "")[:512],
            "proof": what,
        }

    def _drip_channels(self, partner):
        """Channels shown on the preference page: those the customer can be reached on."""
        labels = dict(request.env["drip.consent.event"]._fields["channel"]
                      ._description_selection(request.env))
        shown = []
        for channel, fname in CONSENT_FIELDS.items():
            reachable = {
                "email": bool(partner.email_normalized),
                "sms": bool(partner.drip_phone_sanitized),
            }.get(channel, bool(partner.drip_identity_ids))
            if reachable or partner[fname] != "unknown":
                shown.append({"code": channel, "label": labels[channel],
                              "state": partner[fname]})
        return shown

    # ---------------------------------------------------------- unsubscribe
    @http.route("/drip/unsubscribe/<string:token>", type="http", auth="public",
                methods=["GET"], sitemap=False)
    def drip_unsubscribe_page(self, token, **kwargs):
        partner, payload = self._drip_partner(token, "unsubscribe")
        if not partner:
            return self._drip_invalid()
        return self._drip_render("drip_marketing.consent_page_unsubscribe", partner, {
            "token": token,
            "channel_label": self._drip_channel_label(payload.get("c")),
            "address": _masked(partner.email_normalized),
            "done": partner[CONSENT_FIELDS.get(payload.get("c"), "drip_consent_email")]
            == "opted_out",
            "preferences_url": partner._drip_preferences_url(),
        })

    # No CSRF token: mail clients post RFC 8058 one-click requests without a session.
    # The signed token is the authorisation.
    @http.route("/drip/unsubscribe/<string:token>", type="http", auth="public",
                methods=["POST"], csrf=False, sitemap=False)
    def drip_unsubscribe(self, token, **post):
        partner, payload = self._drip_partner(token, "unsubscribe")
        if not partner:
            return self._drip_invalid()
        one_click = post.get(ONE_CLICK_BODY[0]) == ONE_CLICK_BODY[1]
        if not one_click and not post.get("confirm"):
            return self._drip_render("drip_marketing.consent_page_invalid", partner, status=400)
        channel = payload.get("c") if payload.get("c") in CONSENT_FIELDS else "email"
        message = request.env["drip.message"].sudo().browse(payload.get("m") or []).exists()
        message = message.filtered(lambda m: m.partner_id == partner)
        partner._drip_set_consent(
            channel, "opted_out", source="one_click" if one_click else "unsubscribe",
            **self._drip_proof(f"message #{message.id}" if message else "link"),
        )
        if message and not message.unsubscribed_at:
            message.unsubscribed_at = fields.Datetime.now()
            message.enrollment_id._exit("unsubscribed")
        return self._drip_render("drip_marketing.consent_page_unsubscribed", partner, {
            "channel_label": self._drip_channel_label(channel),
            "preferences_url": partner._drip_preferences_url(),
        })

    def _drip_channel_label(self, channel):
        labels = dict(request.env["drip.consent.event"]._fields["channel"]
                      ._description_selection(request.env))
        return labels.get(channel) or labels["email"]

    # ----------------------------------------------------------- preferences
    @http.route("/drip/preferences/<string:token>", type="http", auth="public",
                methods=["GET", "POST"], sitemap=False)
    def drip_preferences(self, token, **post):
        partner, _payload = self._drip_partner(token, "preferences")
        if not partner:
            return self._drip_invalid()
        saved = False
        if request.httprequest.method == "POST":
            for channel in CONSENT_FIELDS:
                choice = PREFERENCE_CHOICES.get(post.get(f"consent_{channel}"))
                current = partner[CONSENT_FIELDS[channel]]
                if not choice or current == choice or (choice == "opted_in"
                                                       and current == "pending"):
                    continue
                partner._drip_set_consent(
                    channel, choice, source="preferences",
                    **self._drip_proof(_("Preference page: %s", choice)),
                )
            saved = True
        return self._drip_render("drip_marketing.consent_page_preferences", partner, {
            "token": token,
            "address": _masked(partner.email_normalized),
            "channels": self._drip_channels(partner),
            "saved": saved,
        })

    # ------------------------------------------------------ double opt-in
    # Confirming takes a POST: mail scanners open (GET) every link of a message, and must
    # not confirm a subscription in the customer's place.
    @http.route("/drip/confirm/<string:token>", type="http", auth="public",
                methods=["GET", "POST"], csrf=False, sitemap=False)
    def drip_confirm(self, token, **post):
        partner, _payload = self._drip_partner(token, "confirm")
        if not partner:
            return self._drip_invalid()
        pending = partner.drip_consent_email == "pending"
        confirmed = False
        if request.httprequest.method == "POST" and pending:
            confirmed = bool(partner._drip_set_consent(
                "email", "opted_in", source="double_opt_in",
                **self._drip_proof(_("Double opt-in confirmation link")),
            ))
        return self._drip_render("drip_marketing.consent_page_confirm", partner, {
            "token": token,
            "address": _masked(partner.email_normalized),
            "pending": pending and not confirmed,
            "confirmed": confirmed or partner.drip_consent_email == "opted_in",
        })
