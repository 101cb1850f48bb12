from datetime import datetime, timedelta

from odoo.tests import TransactionCase, freeze_time, tagged

NOW = datetime(2026, 3, 10, 12, 0)


@tagged("post_install", "-at_install")
class TestWebsiteCarts(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.website = cls.env["website"].search([], limit=1) or cls.env["website"].create(
            {"name": "Shop"})
        cls.website.company_id.write({"drip_cart_abandon_delay": 1.0,
                                      "drip_quiet_hours_start": 0, "drip_quiet_hours_end": 0})
        cls.customer = cls.env["res.partner"].create(
            {"name": "Mei", "email": "mei@example.com"})
        cls.product = cls.env.ref("product.product_product_4")
        template = cls.env["drip.template"].create(
            {"name": "Cart", "channel": "email", "subject": "Cart", "body_html": "<p>x</p>"})
        with freeze_time(NOW):
            cls.journey = cls.env["drip.journey"].create(
                {"name": "Carts", "trigger": "cart_abandoned", "reentry_policy": "per_source",
                 "company_id": cls.website.company_id.id})
            cls.env["drip.step"].create({"journey_id": cls.journey.id, "name": "Remind",
                                         "step_type": "send", "template_id": template.id})
            cls.journey.action_start()

    def website_cart(self, **values):
        with freeze_time(NOW + timedelta(minutes=1)):
            return self.env["sale.order"].create(dict({
                "partner_id": self.customer.id, "website_id": self.website.id,
                "order_line": [(0, 0, {"product_id": self.product.id, "product_uom_qty": 1})],
            }, **values))

    def test_website_cart_enters_and_is_claimed_from_odoo_reminder(self):
        cart = self.website_cart()
        self.assertTrue(cart.drip_is_cart)
        at = NOW + timedelta(hours=2)
        self.env["sale.order"]._drip_mark_abandoned_carts(now=at)
        entered = self.journey._scan_triggers(now=at)
        self.assertEqual(entered.order_id, cart)
        self.assertTrue(cart.cart_recovery_email_sent,
                        "website_sale's own recovery cron now skips this cart")
        self.assertNotIn(cart, self.env["sale.order"].search([
            ("is_abandoned_cart", "=", True), ("cart_recovery_email_sent", "=", False)]))

    def test_cart_odoo_already_reminded_never_enters(self):
        cart = self.website_cart(cart_recovery_email_sent=True)
        at = NOW + timedelta(hours=2)
        self.env["sale.order"]._drip_mark_abandoned_carts(now=at)
        self.assertFalse(cart.drip_abandoned_at)
        self.assertFalse(self.journey._scan_triggers(now=at))

    def test_known_visitor_product_view_becomes_an_event(self):
        visitor = self.env["website.visitor"].create(
            # A logged-in visitor's access token is their partner id (website module).
            {"access_token": str(self.customer.id), "website_id": self.website.id})
        self.assertEqual(visitor.partner_id, self.customer)
        visitor._add_viewed_product(self.product.id)
        visitor._add_viewed_product(self.product.id)  # same day: one event
        events = self.env["drip.event"].search([("partner_id", "=", self.customer.id),
                                               ("product_id", "=", self.product.id)])
        self.assertEqual(len(events), 1)
        self.assertEqual(events.event_type_id,
                         self.env.ref("drip_marketing.event_type_product_viewed"))
