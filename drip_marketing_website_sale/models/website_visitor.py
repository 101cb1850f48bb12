from odoo import fields, models


class WebsiteVisitor(models.Model):
    _inherit = "website.visitor"

    def _add_viewed_product(self, product_id):
        result = super()._add_viewed_product(product_id)
        if self.partner_id and product_id:
            self._drip_record_product_view(product_id)
        return result

    def _drip_record_product_view(self, product_id):
        """A known visitor's product view becomes a 'product viewed' behavior event.

        One event per visitor, product and day (the key makes repeated views a no-op),
        so browse-abandonment journeys see website_sale's own tracking.
        """
        event_type = self.env.ref("drip_marketing.event_type_product_viewed")
        now = fields.Datetime.now()
        key = f"website-view:{self.id}:{product_id}:{now.date().isoformat()}"
        events = self.env["drip.event"].sudo()
        company = self.website_id.company_id or self.env.company
        if events.search_count([("company_id", "=", company.id), ("idempotency_key", "=", key)],
                               limit=1):
            return
        events.create({
            "name": "Product Viewed",
            "event_type_id": event_type.id,
            "partner_id": self.partner_id.id,
            "product_id": product_id,
            "company_id": company.id,
            "call_type": "page",
            "idempotency_key": key,
            "occurred_at": now,
            "context_data": {"source": "website_sale", "website_id": self.website_id.id},
        })
