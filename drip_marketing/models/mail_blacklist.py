from odoo import api, fields, models
from odoo.tools import email_normalize

# Set while consent itself edits the blacklist, so the entries it writes are not read
# back as "blacklisted elsewhere".
BLACKLIST_SYNC_CONTEXT_KEY = "drip_blacklist_sync"


class MailBlacklist(models.Model):
    """Odoo's email blacklist and the email consent of drip_marketing stay in step.

    * An opt-out adds (or re-activates) the address here, flagged ``drip_opt_out``.
    * An entry made anywhere else in Odoo (mass mailing unsubscribe, an admin, an
      import) turns every customer with that address to *opted out*, with a ledger row
      of source ``blacklist``; archiving or deleting it turns those customers back to
      *unknown*, again with a ledger row.
    """

    _inherit = "mail.blacklist"

    drip_opt_out = fields.Boolean(
        string="Added by a marketing opt-out",
        readonly=True,
        copy=False,
        help="Made by a Drip Marketing opt-out: a later opt-in of the same customer lifts it.",
    )

    @api.model_create_multi
    def create(self, vals_list):
        records = super().create(vals_list)
        records.filtered("active")._drip_notify_partners(blocked=True)
        return records

    def write(self, vals):
        if "active" not in vals and "email" not in vals:
            return super().write(vals)
        before = {record: (record.active, record.email) for record in self}
        result = super().write(vals)
        lifted = {email for record, (active, email) in before.items()
                  if active and (not record.active or record.email != email)}
        blocked = self.filtered(lambda record: record.active and (
            not before[record][0] or before[record][1] != record.email))
        self._drip_notify_partners(blocked=False, emails=lifted)
        blocked._drip_notify_partners(blocked=True)
        return result

    def unlink(self):
        lifted = set(self.filtered("active").mapped("email"))
        result = super().unlink()
        self._drip_notify_partners(blocked=False, emails=lifted)
        return result

    def _drip_notify_partners(self, blocked, emails=None):
        if self.env.context.get(BLACKLIST_SYNC_CONTEXT_KEY):
            return
        emails = [email for email in (emails if emails is not None else self.mapped("email"))
                  if email]
        if emails:
            self.env["res.partner"]._drip_sync_from_blacklist("email", emails, blocked)

    @api.model
    def _drip_block(self, emails):
        """Blacklist these addresses for an opt-out (set-based form of ``_add``)."""
        emails = {email_normalize(email) for email in emails} - {False, None}
        if not emails:
            return self.browse()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        existing = records.search([("email", "in", list(emails))])
        # An entry this opt-out activates is ours to lift; an active one made elsewhere
        # keeps its origin.
        existing.filtered(lambda record: not record.active).write(
            {"active": True, "drip_opt_out": True}
        )
        created = records.create([
            {"email": email, "drip_opt_out": True}
            for email in emails - set(existing.mapped("email"))
        ])
        return existing | created

    @api.model
    def _drip_unblock(self, emails, include_foreign=False):
        """Lift the entries of an opt-in; those made elsewhere only if ``include_foreign``.

        ``include_foreign`` is for requests of the customers themselves (preference page,
        double opt-in confirmation), as Odoo's own mass-mailing page lets customers take
        their address off the blacklist. Returns the addresses still blacklisted.
        """
        emails = {email_normalize(email) for email in emails} - {False, None}
        if not emails:
            return set()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        active = records.search([("email", "in", list(emails)), ("active", "=", True)])
        lifted = active if include_foreign else active.filtered("drip_opt_out")
        lifted.write({"active": False, "drip_opt_out": False})
        return set((active - lifted).mapped("email"))
