from datetime import datetime

from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestJourneyTestRun(DripCase):
    def test_walks_the_tree_without_sending(self):
        self.company.write({"drip_quiet_hours_start": 21, "drip_quiet_hours_end": 8,
                            "drip_default_tz": "UTC"})
        self.customer.write({"tz": "UTC", "drip_consent_email": "opted_in"})
        wizard = self.env["drip.journey.test.run"].create({
            "journey_id": self.journey.id, "partner_id": self.customer.id,
            "start_at": datetime(2026, 3, 10, 19, 30),
        })
        wizard.action_run()
        html = str(wizard.result_html)
        self.assertIn("First reminder", html)
        self.assertIn("Second reminder", html)
        # 19:30 + 1 h = 20:30 (allowed); 20:30 + 24 h = 20:30 next day.
        self.assertIn("2026-03-10 20:30", html)
        self.assertIn("2026-03-11 20:30", html)
        self.assertIn("would send", html)
        self.assertFalse(self.env["drip.message"].search([("partner_id", "=", self.customer.id)]))

    def test_opted_out_customer_is_shown_as_skipped(self):
        self.customer.drip_consent_email = "opted_out"
        wizard = self.env["drip.journey.test.run"].create(
            {"journey_id": self.journey.id, "partner_id": self.customer.id})
        wizard.action_run()
        self.assertIn("would skip", str(wizard.result_html))

    def test_assumed_order_skips_the_second_reminder(self):
        self.customer.drip_consent_email = "opted_in"
        wizard = self.env["drip.journey.test.run"].create(
            {"journey_id": self.journey.id, "partner_id": self.customer.id,
             "assume_ordered": True})
        wizard.action_run()
        html = str(wizard.result_html)
        self.assertIn("parent message got", html)
