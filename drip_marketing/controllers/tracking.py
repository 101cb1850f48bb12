"""Engagement tracking: the open pixel and the click redirect of sent messages.

Both links carry a token signed with the database secret (``engine.tokens``), so they
cannot be forged or pointed at another message, and both are idempotent: the first open
or click stamps the message and starts the steps waiting for it
(``drip.message._on_outcome``); later ones change nothing. A bad token still gets a
pixel (nothing is revealed) or a plain 404 (never a redirect to an unknown address).
Clicks are also counted on Odoo's own ``link.tracker`` of the URL, so link statistics
and UTM parameters work as for any Odoo mailing.
"""

import base64
import logging
import time

from odoo import http
from odoo.http import request

from ..engine import tokens

_logger = logging.getLogger(__name__)

# The smallest transparent GIF.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")
NO_CACHE = [
    ("Content-Type", "image/gif"),
    ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0"),
    ("Pragma", "no-cache"),
]


class DripTrackingController(http.Controller):

    def _drip_tracked(self, token, purpose):
        """``(message, payload)`` of a valid token, else ``(None, None)``."""
        env = request.env
        try:
            payload = tokens.verify(
                env["ir.config_parameter"].sudo().get_param("database.secret"),
                token, now=time.time(), purpose=purpose,
            )
        except tokens.InvalidToken as error:
            _logger.info("drip: refused a %s token (%s)", purpose, error.reason)
            return None, None
        message_id = payload.get("m")
        if not isinstance(message_id, int) or isinstance(message_id, bool):
            return None, None
        message = env["drip.message"].sudo().browse(message_id).exists()
        return (message or None), payload

    @http.route("/drip/o/<string:token>.gif", type="http", auth="public", methods=["GET"],
                sitemap=False, save_session=False)
    def drip_open(self, token, **kwargs):
        message, _payload = self._drip_tracked(token, "drip.open")
        if message and message.state == "sent":
            message._on_outcome("opened")
        return request.make_response(PIXEL, headers=NO_CACHE)

    @http.route("/drip/c/<string:token>", type="http", auth="public", methods=["GET"],
                sitemap=False, save_session=False)
    def drip_click(self, token, **kwargs):
        message, payload = self._drip_tracked(token, "drip.click")
        if payload is None:
            return request.not_found()
        target = payload.get("u")
        link = request.env["link.tracker"].sudo().browse(payload.get("l") or []).exists()
        if link:
            target = link.redirected_url or link.url
            Click = request.env["link.tracker.click"].sudo()
            values = Click._prepare_click_values_from_route(
                ip=request.httprequest.remote_addr,
                country_code=request.geoip.country_code,
            )
            Click.create(dict(values, link_id=link.id))
        if not target or not target.startswith(("http://", "https://")):
            return request.not_found()
        if message and message.state == "sent":
            message._on_outcome("clicked")
        return request.redirect(target, code=302, local=False)
