"""A segment as a hashed audience file for ad platforms' look-alike tools.

Customer Match (Google Ads) and Custom Audiences (Meta) take lists of SHA-256 digests of
normalised identifiers; the platforms hash their own users the same way and match. The
file has two columns, ``email_sha256`` and ``phone_sha256``, one row per customer:

* the email is normalised by ``engine.identity.normalize_email`` (trimmed, lower-cased,
  Unicode NFKC, IDNA domain) and hashed by ``hash_identifier``;
* the phone is the customer's number in E.164 (``drip_phone_sanitized``: mobile, else
  phone, read in the customer's country) — hashed as ``+8613812345678`` for Google, and
  without the ``+`` (``8613812345678``) for Meta, as each platform specifies;
* consent per identifier, through ``res.partner._drip_consent_filter``: the email only
  when marketing email is allowed (not opted out, not pending double opt-in, not on Odoo's
  email blacklist), the phone only when SMS is allowed (same rules, phone blacklist);
  with *Only explicit opt-ins*, an identifier is exported only when its channel's consent
  is *opted in*. A customer with neither identifier is not in the file at all.

The file is stored as an attachment of the segment and downloaded at once; nothing else
leaves the database (no clear-text identifier is ever written to it).
"""

import csv
import io

from odoo import _, fields, models
from odoo.exceptions import UserError

from ..engine.identity import hash_identifier, normalize_email, normalize_phone

PLATFORMS = [
    ("google", "Google Ads (Customer Match)"),
    ("meta", "Meta (Custom Audiences)"),
]
COLUMNS = ("email_sha256", "phone_sha256")


def audience_email(value):
    """The hashed audience form of an email address, or ``None``."""
    return hash_identifier(normalize_email(value))


def audience_phone(value, platform="google", default_region=None):
    """The hashed audience form of a phone number, or ``None``.

    Google hashes E.164 (``+8613812345678``); Meta the same digits without ``+``.
    """
    e164 = normalize_phone(value, default_region)
    if e164 and platform == "meta":
        e164 = e164.lstrip("+")
    return hash_identifier(e164)


class DripAudienceExport(models.TransientModel):
    _name = "drip.audience.export"
    _description = "Drip Marketing Audience Export"

    segment_id = fields.Many2one("drip.segment", required=True, ondelete="cascade")
    platform = fields.Selection(PLATFORMS, required=True, default="google",
                                help="Decides how phone numbers are written before hashing.")
    include_email = fields.Boolean(string="Emails", default=True)
    include_phone = fields.Boolean(string="Phone numbers", default=True)
    require_opt_in = fields.Boolean(
        string="Only explicit opt-ins",
        help="Export an identifier only when the customer opted in on its channel; by "
        "default, customers who may receive marketing on that channel are exported.",
    )
    state = fields.Selection([("draft", "Draft"), ("done", "Done")], default="draft")
    exported_count = fields.Integer(string="Customers exported", readonly=True)
    excluded_count = fields.Integer(
        string="Customers left out", readonly=True,
        help="Customers of the segment without an identifier they consented to share.",
    )
    attachment_id = fields.Many2one("ir.attachment", readonly=True)

    def action_export(self):
        self.ensure_one()
        if not (self.include_email or self.include_phone):
            raise UserError(_("Choose emails, phone numbers or both."))
        segment = self.segment_id
        partners = self.env["res.partner"].search(segment._partner_domain())
        rows = self._audience_rows(partners)
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        writer.writerows(rows)
        name = f"audience-{segment.name}-{fields.Date.context_today(self)}-{self.platform}.csv"
        attachment = self.env["ir.attachment"].create({
            "name": name.replace("/", "-"),
            "raw": buffer.getvalue().encode("utf-8"),
            "mimetype": "text/csv",
            "res_model": "drip.segment",
            "res_id": segment.id,
        })
        self.write({
            "state": "done",
            "attachment_id": attachment.id,
            "exported_count": len(rows),
            "excluded_count": len(partners) - len(rows),
        })
        return {
            "type": "ir.actions.act_url",
            "url": f"/web/content/{attachment.id}?download=true",
            "target": "download",
        }

    def _audience_rows(self, partners):
        """``[(email_sha256, phone_sha256)]`` of the customers whose consent allows it,
        without duplicates; an identifier they did not consent to share is empty."""
        company = self.segment_id.company_id
        allowed = {}
        for channel, wanted in (("email", self.include_email), ("sms", self.include_phone)):
            if not wanted or not partners:
                allowed[channel] = set()
                continue
            ok, _reasons = partners._drip_consent_filter(channel, company=company)
            if self.require_opt_in:
                field = "drip_consent_email" if channel == "email" else "drip_consent_sms"
                ok = ok.filtered(lambda p, f=field: p[f] == "opted_in")
            allowed[channel] = set(ok.ids)
        partners.fetch(["email", "drip_phone_sanitized"])
        seen, rows = set(), []
        for partner in partners:
            email = audience_email(partner.email) if partner.id in allowed["email"] else None
            phone = (audience_phone(partner.drip_phone_sanitized, self.platform)
                     if partner.id in allowed["sms"] else None)
            row = (email or "", phone or "")
            if row == ("", "") or row in seen:
                continue
            seen.add(row)
            rows.append(row)
        return rows
