from datetime import timedelta

from odoo.tests import tagged

from odoo.addons.drip_marketing.tests.common import DripCase


@tagged("post_install", "-at_install")
class TestHandoffCrm(DripCase):
    """With CRM installed, a hand-off opens an opportunity instead of an activity."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.T = cls.env.cr.now().replace(microsecond=0)
        cls.company.write({"drip_score_half_life_days": 30.0, "drip_handoff_threshold": 25.0})
        cls.salesperson = cls.rep
        cls.hot = cls.env["res.partner"].create(
            {"name": "Hot Lead", "email": "hot@example.com", "user_id": cls.salesperson.id}
        )
        cls.activity_type = cls.env.ref("drip_marketing.mail_activity_type_drip_handoff")

    def raise_score(self, partner, at):
        """Three orders (the shipped rules give 10 points each): above 25."""
        self.env["sale.order"].create([
            {"partner_id": partner.id, "date_order": at - timedelta(hours=h), "state": "sale"}
            for h in range(3)
        ])

    def opportunities(self, partner):
        return self.env["crm.lead"].search(
            [("partner_id", "=", partner.id), ("type", "=", "opportunity")]
        )

    def refresh(self, now, **kwargs):
        self.env["drip.prediction"]._refresh_engagement(now=now, **kwargs)

    def test_crossing_opens_an_opportunity(self):
        t0 = self.T - timedelta(days=2)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.raise_score(self.hot, t0 - timedelta(hours=1))
        self.refresh(t0)
        lead = self.opportunities(self.hot)
        self.assertEqual(len(lead), 1)
        self.assertEqual(lead.user_id, self.salesperson)
        self.assertEqual(lead.source_id,
                         self.env.ref("drip_marketing_crm.utm_source_drip_engagement"))
        self.assertIn("Order confirmed", lead.description)
        self.assertIn("hand-off threshold 25", lead.description)
        # No activity on the customer: the opportunity replaces it.
        self.assertFalse(self.env["mail.activity"].search([
            ("res_model", "=", "res.partner"), ("res_id", "=", self.hot.id),
            ("activity_type_id", "=", self.activity_type.id),
        ]))

    def test_open_opportunity_gets_a_note_instead_of_a_twin(self):
        existing = self.env["crm.lead"].create(
            {"name": "Big deal", "type": "opportunity", "partner_id": self.hot.id}
        )
        t0 = self.T - timedelta(days=2)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.raise_score(self.hot, t0 - timedelta(hours=1))
        self.refresh(t0)
        self.assertEqual(self.opportunities(self.hot), existing)
        self.assertTrue(existing.message_ids.filtered(
            lambda m: "reached the hand-off threshold" in (m.body or "")))

    def test_unassigned_customer_still_reaches_sales(self):
        cold = self.env["res.partner"].create({"name": "No rep"})
        t0 = self.T - timedelta(days=2)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.raise_score(cold, t0 - timedelta(hours=1))
        self.refresh(t0)
        lead = self.opportunities(cold)
        self.assertEqual(len(lead), 1)
        self.assertFalse(lead.user_id)

    def test_contact_of_a_company_with_an_opportunity(self):
        company = self.env["res.partner"].create(
            {"name": "Acme", "is_company": True, "user_id": self.salesperson.id}
        )
        contact = self.env["res.partner"].create({"name": "Ann", "parent_id": company.id})
        existing = self.env["crm.lead"].create(
            {"name": "Acme renewal", "type": "opportunity", "partner_id": company.id}
        )
        t0 = self.T - timedelta(days=2)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.raise_score(contact, t0 - timedelta(hours=1))
        self.refresh(t0)
        self.assertFalse(self.opportunities(contact))
        self.assertEqual(len(existing.message_ids.filtered(
            lambda m: "hand-off threshold" in (m.body or ""))), 1)
