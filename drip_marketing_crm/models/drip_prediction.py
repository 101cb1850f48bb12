from odoo import _, api, models


class DripPrediction(models.AbstractModel):
    _inherit = "drip.prediction"

    @api.model
    def _handoff(self, items):
        """With CRM, an engaged customer becomes an opportunity for their salesperson.

        A customer (or their company) who already has an open opportunity gets the reason
        posted on it instead of a second one. Without a salesperson the opportunity is
        left unassigned for the sales team to pick up.
        """
        if not items:
            return self.env["crm.lead"]
        Lead = self.env["crm.lead"].sudo().with_context(mail_create_nosubscribe=True)
        partners = self.env["res.partner"].browse([item["partner"].id for item in items])
        commercial = partners.commercial_partner_id
        open_by_commercial = {}
        for lead in Lead.search(
            [("type", "=", "opportunity"), ("partner_id", "child_of", commercial.ids),
             ("probability", "<", 100)],
            order="id desc",
        ):
            open_by_commercial.setdefault(lead.partner_id.commercial_partner_id.id, lead)
        source = self.env.ref("drip_marketing_crm.utm_source_drip_engagement",
                              raise_if_not_found=False)
        created = Lead.browse()
        for item in items:
            partner = item["partner"]
            note = self._handoff_note(item)
            existing = open_by_commercial.get(partner.commercial_partner_id.id)
            if existing:
                existing.message_post(body=note, subtype_xmlid="mail.mt_note")
                continue
            user = partner.user_id or partner.commercial_partner_id.user_id
            lead = Lead.create({
                "name": _("%s: engaged customer", partner.display_name),
                "type": "opportunity",
                "partner_id": partner.id,
                "user_id": user.id or False,
                "description": note,
                "source_id": source.id if source else False,
            })
            open_by_commercial[partner.commercial_partner_id.id] = lead
            created |= lead
        return created
