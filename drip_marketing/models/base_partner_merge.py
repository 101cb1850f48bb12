from odoo import _, api, models
from odoo.tools import SQL

from .res_partner import CONSENT_FIELDS, CONSENT_RESTRICTIVENESS


class BasePartnerMergeAutomaticWizard(models.TransientModel):
    """Odoo's contact merge keeps the survivor's marketing data complete.

    Odoo's generic foreign-key update already moves the consent ledger, messages,
    events and identities (none of their unique keys contains the customer). Two things
    need care:

    * enrollments: the key ``(journey, customer, source, cycle)`` and the per-customer
      source ``res.partner,<id>``. Odoo's update would *delete* every enrollment of a
      merged contact as soon as one row collides (and their messages with them). They
      are moved here first, with the source rewritten to the survivor (so "once ever"
      journeys still know the person took part) and colliding cycles renumbered after
      the survivor's; when the survivor ends up twice in progress in one journey for
      one source, only one participation goes on (the survivor's own, else the oldest).
    * consent: per channel the most restrictive state wins (opted out > pending double
      opt-in > opted in > unknown), written through the ledger with source ``merge``.
    """

    _inherit = "base.partner.merge.automatic.wizard"

    @api.model
    def _update_foreign_keys(self, src_partners, dst_partner):
        self._drip_move_enrollments(src_partners, dst_partner)
        result = super()._update_foreign_keys(src_partners, dst_partner)
        self._drip_after_move(dst_partner)
        return result

    @api.model
    def _update_values(self, src_partners, dst_partner):
        partners = src_partners | dst_partner
        strictest = {
            channel: max(partners.mapped(fname), key=CONSENT_RESTRICTIVENESS.__getitem__)
            for channel, fname in CONSENT_FIELDS.items()
        }
        result = super()._update_values(src_partners, dst_partner)
        proof = _("Merged with %s", ", ".join(
            f"{partner.display_name} (#{partner.id})" for partner in src_partners
        ))
        for channel, state in strictest.items():
            if dst_partner[CONSENT_FIELDS[channel]] != state:
                dst_partner._drip_set_consent(channel, state, source="merge", proof=proof)
        return result

    @api.model
    def _drip_move_enrollments(self, src_partners, dst_partner):
        self.env["drip.enrollment"].flush_model()
        self.env.cr.execute(SQL(
            """
            WITH moved AS (
                SELECT e.id, e.journey_id, e.entered_at,
                       regexp_replace(e.source_ref, '^res\\.partner,' || e.partner_id || '(,|$)',
                                      'res.partner,' || %(dst)s || '\\1') AS new_ref
                  FROM drip_enrollment e
                 WHERE e.partner_id = ANY(%(src)s)
            ), numbered AS (
                SELECT m.id, m.new_ref,
                       COALESCE((SELECT max(d.cycle) FROM drip_enrollment d
                                  WHERE d.partner_id = %(dst)s AND d.journey_id = m.journey_id
                                    AND d.source_ref = m.new_ref), -1)
                       + row_number() OVER (PARTITION BY m.journey_id, m.new_ref
                                            ORDER BY m.entered_at, m.id) AS cycle
                  FROM moved m
            )
            UPDATE drip_enrollment e
               SET partner_id = %(dst)s, source_ref = n.new_ref, cycle = n.cycle
              FROM numbered n
             WHERE e.id = n.id
            """,
            src=src_partners.ids, dst=dst_partner.id,
        ))
        self.env["drip.enrollment"].invalidate_model()

    @api.model
    def _drip_after_move(self, dst_partner):
        self.env.cr.execute(SQL(
            """
            SELECT e.id FROM (
                -- moved participations were numbered after the survivor's own, in
                -- order of entry: the lowest cycle is the one that goes on
                SELECT e.id, row_number() OVER (PARTITION BY e.journey_id, e.source_ref
                                                ORDER BY e.cycle, e.id) AS n
                  FROM drip_enrollment e
                 WHERE e.partner_id = %(dst)s AND e.state IN ('active', 'paused')
            ) e WHERE e.n > 1
            """,
            dst=dst_partner.id,
        ))
        duplicates = self.env["drip.enrollment"].browse([row[0] for row in self.env.cr.fetchall()])
        duplicates._exit("merged")
        self.env["drip.identity.conflict"].invalidate_model()
        self.env["drip.identity.conflict"].sudo().search([
            ("partner_id", "=", dst_partner.id), ("other_partner_id", "=", dst_partner.id),
            ("state", "=", "open"),
        ]).write({"state": "merged"})
