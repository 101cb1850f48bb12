from odoo import api, fields, models

# Set while consent itself edits a blacklist, so the entries it writes are not read
# back as "blacklisted elsewhere".
BLACKLIST_SYNC_CONTEXT_KEY = "drip_blacklist_sync"


class DripBlacklistSync(models.AbstractModel):
    """Keeps one of Odoo's blacklists and one consent channel of drip_marketing in step.

    * An opt-out adds (or re-activates) the address here, flagged ``drip_opt_out``.
    * An entry made anywhere else in Odoo (mass mailing unsubscribe, an admin, an
      import) turns every customer with that address to *opted out*, with a ledger row
      of source ``blacklist``; archiving or deleting it turns those customers back to
      *unknown*, again with a ledger row.

    A blacklist model mixes this in and names its address field and consent channel.
    """

    _name = "drip.blacklist.sync"
    _description = "Blacklist and consent kept in step"

    _drip_address_field = None  # "email" on mail.blacklist, "number" on phone.blacklist
    _drip_channel = None  # the consent channel the blacklist stands for

    drip_opt_out = fields.Boolean(
        string="Added by a marketing opt-out",
        readonly=True,
        copy=False,
        help="Made by a Drip Marketing opt-out: a later opt-in of the same customer lifts it.",
    )

    @api.model
    def _drip_normalize(self, addresses):
        return set(addresses) - {False, None, ""}

    @api.model_create_multi
    def create(self, vals_list):
        records = super().create(vals_list)
        records.filtered("active")._drip_notify_partners(blocked=True)
        return records

    def write(self, vals):
        field = self._drip_address_field
        if "active" not in vals and field not in vals:
            return super().write(vals)
        before = {record: (record.active, record[field]) for record in self}
        result = super().write(vals)
        lifted = {address for record, (active, address) in before.items()
                  if active and (not record.active or record[field] != address)}
        blocked = self.filtered(lambda record: record.active and (
            not before[record][0] or before[record][1] != record[field]))
        self._drip_notify_partners(blocked=False, addresses=lifted)
        blocked._drip_notify_partners(blocked=True)
        return result

    def unlink(self):
        lifted = set(self.filtered("active").mapped(self._drip_address_field))
        result = super().unlink()
        self._drip_notify_partners(blocked=False, addresses=lifted)
        return result

    def _drip_notify_partners(self, blocked, addresses=None):
        if self.env.context.get(BLACKLIST_SYNC_CONTEXT_KEY):
            return
        if addresses is None:
            addresses = self.mapped(self._drip_address_field)
        addresses = [address for address in addresses if address]
        if addresses:
            self.env["res.partner"]._drip_sync_from_blacklist(
                self._drip_channel, addresses, blocked
            )

    @api.model
    def _drip_block(self, addresses):
        """Blacklist these addresses for an opt-out (set-based form of ``_add``)."""
        field = self._drip_address_field
        addresses = self._drip_normalize(addresses)
        if not addresses:
            return self.browse()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        existing = records.search([(field, "in", list(addresses))])
        # An entry this opt-out activates is ours to lift; an active one made elsewhere
        # keeps its origin.
        existing.filtered(lambda record: not record.active).write(
            {"active": True, "drip_opt_out": True}
        )
        created = records.create([
            {field: address, "drip_opt_out": True}
            for address in addresses - set(existing.mapped(field))
        ])
        return existing | created

    @api.model
    def _drip_unblock(self, addresses, include_foreign=False):
        """Lift the entries of an opt-in; those made elsewhere only if ``include_foreign``.

        ``include_foreign`` is for requests of the customers themselves (preference page,
        double opt-in confirmation), as Odoo's own mass-mailing page lets customers take
        their address off the blacklist. Returns the addresses still blacklisted.
        """
        field = self._drip_address_field
        addresses = self._drip_normalize(addresses)
        if not addresses:
            return set()
        records = self.sudo().with_context(active_test=False, **{BLACKLIST_SYNC_CONTEXT_KEY: True})
        active = records.search([(field, "in", list(addresses)), ("active", "=", True)])
        lifted = active if include_foreign else active.filtered("drip_opt_out")
        lifted.write({"active": False, "drip_opt_out": False})
        return set((active - lifted).mapped(field))
