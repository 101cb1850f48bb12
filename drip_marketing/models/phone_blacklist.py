from odoo import api, fields, models

from .mail_blacklist import BLACKLIST_SYNC_CONTEXT_KEY


class PhoneBlacklist(models.Model):
    """Odoo's phone blacklist and the SMS consent stay in step (see ``mail.blacklist``).

    Numbers here are E.164; customers are matched on ``res.partner.drip_phone_sanitized``.
    """

    _inherit = "phone.blacklist"

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
        if "active" not in vals and "number" not in vals:
            return super().write(vals)
        before = {record: (record.active, record.number) for record in self}
        result = super().write(vals)
        lifted = {number for record, (active, number) in before.items()
                  if active and (not record.active or record.number != number)}
        blocked = self.filtered(lambda record: record.active and (
            not before[record][0] or before[record][1] != record.number))
        self._drip_notify_partners(blocked=False, numbers=lifted)
        blocked._drip_notify_partners(blocked=True)
        return result

    def unlink(self):
        lifted = set(self.filtered("active").mapped("number"))
        result = super().unlink()
        self._drip_notify_partners(blocked=False, numbers=lifted)
        return result

    def _drip_notify_partners(self, blocked, numbers=None):
        if self.env.context.get(BLACKLIST_SYNC_CONTEXT_KEY):
            return
        numbers = [number for number in (numbers if numbers is not None
                                         else self.mapped("number")) if number]
        if numbers:
            self.env["res.partner"]._drip_sync_from_blacklist("sms", numbers, blocked)

    @api.model
    def _drip_block(self, numbers):
        """Blacklist these E.164 numbers for an opt-out (set-based form of ``_add``)."""
        numbers = set(numbers) - {False, None, ""}
        if not numbers:
            return self.browse()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        existing = records.search([("number", "in", list(numbers))])
        existing.filtered(lambda record: not record.active).write(
            {"active": True, "drip_opt_out": True}
        )
        created = records.create([
            {"number": number, "drip_opt_out": True}
            for number in numbers - set(existing.mapped("number"))
        ])
        return existing | created

    @api.model
    def _drip_unblock(self, numbers, include_foreign=False):
        """Lift the entries of an opt-in (see ``mail.blacklist._drip_unblock``)."""
        numbers = set(numbers) - {False, None, ""}
        if not numbers:
            return set()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        active = records.search([("number", "in", list(numbers)), ("active", "=", True)])
        lifted = active if include_foreign else active.filtered("drip_opt_out")
        lifted.write({"active": False, "drip_opt_out": False})
        return set((active - lifted).mapped("number"))
