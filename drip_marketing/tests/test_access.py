from odoo.exceptions import AccessError
from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestAccess(DripCase):
    def test_rep_reads_but_cannot_create_or_write_journeys(self):
        journey = self.journey.with_user(self.rep)
        self.assertEqual(journey.name, "Cart recovery")
        with self.assertRaises(AccessError):
            self.env["drip.journey"].with_user(self.rep).create(
                {"name": "Rogue", "trigger": "partner_created"}
            )
        with self.assertRaises(AccessError):
            journey.write({"name": "Renamed"})
        with self.assertRaises(AccessError):
            journey.action_start()
        with self.assertRaises(AccessError):
            self.step_first.with_user(self.rep).write({"delay_value": 5})

    def test_rep_cannot_create_or_write_templates(self):
        with self.assertRaises(AccessError):
            self.env["drip.template"].with_user(self.rep).create(
                {"name": "Rogue", "channel": "sms", "body_text": "hi"}
            )
        with self.assertRaises(AccessError):
            self.template.with_user(self.rep).write({"subject": "Changed"})
        self.assertEqual(
            self.template.with_user(self.rep).subject, "Hello {{ partner.first_name }}"
        )

    def test_manager_creates_and_edits(self):
        template = (
            self.env["drip.template"]
            .with_user(self.manager)
            .create(
                {"name": "Welcome", "channel": "email", "subject": "Hi", "body_html": "<p>x</p>"}
            )
        )
        journey = (
            self.env["drip.journey"]
            .with_user(self.manager)
            .create({"name": "Welcome", "trigger": "partner_created"})
        )
        self.env["drip.step"].with_user(self.manager).create(
            {
                "journey_id": journey.id,
                "name": "Send",
                "step_type": "send",
                "template_id": template.id,
            }
        )
        journey.action_start()
        self.assertEqual(journey.state, "running")

    def test_rep_pauses_a_customer_in_a_journey(self):
        enrollment = self.enroll().with_user(self.rep)
        enrollment.action_pause()
        self.assertEqual(enrollment.state, "paused")
        enrollment.action_resume()
        self.assertEqual(enrollment.state, "active")
        with self.assertRaises(AccessError):
            enrollment.unlink()

    def test_other_company_cannot_read_journeys(self):
        journeys = self.env["drip.journey"].with_user(self.other_manager)
        self.assertNotIn(self.journey, journeys.search([]))
        with self.assertRaises(AccessError):
            self.journey.with_user(self.other_manager).read(["name"])
        own = journeys.create({"name": "Other store welcome", "trigger": "partner_created"})
        self.assertEqual(own.company_id, self.other_company)
        self.assertNotIn(own, self.env["drip.journey"].with_user(self.manager).search([]))

    def test_rep_cannot_read_write_keys(self):
        source = self.env["drip.source"].create({"name": "Shop"})
        self.assertTrue(source.write_key)
        with self.assertRaises(AccessError):
            source.with_user(self.rep).read(["write_key"])
        self.assertEqual(
            source.with_user(self.manager).read(["write_key"])[0]["write_key"], source.write_key
        )

    def test_consent_ledger_is_append_only_for_everyone(self):
        event = (
            self.env["drip.consent.event"]
            .with_user(self.rep)
            .create({"partner_id": self.customer.id, "channel": "email", "new_state": "opted_in"})
        )
        self.assertEqual(event.user_id, self.rep)
        for user in (self.rep, self.manager):
            with self.assertRaises(AccessError):
                event.with_user(user).write({"new_state": "opted_out"})
            with self.assertRaises(AccessError):
                event.with_user(user).unlink()
        with self.assertRaisesRegex(AccessError, "append-only"):
            event.sudo().write({"new_state": "opted_out"})
        self.assertEqual(event.new_state, "opted_in")

    def test_rep_sees_messages_but_cannot_forge_them(self):
        enrollment = self.enroll()
        message = self.env["drip.message"].create(
            {
                "enrollment_id": enrollment.id,
                "step_id": self.step_first.id,
                "scheduled_at": "2026-11-23 10:00:00",
            }
        )
        self.assertEqual(message.with_user(self.rep).state, "scheduled")
        with self.assertRaises(AccessError):
            message.with_user(self.rep).write({"state": "sent"})
        with self.assertRaises(AccessError):
            message.with_user(self.manager).unlink()

    def test_rep_adds_a_customer_to_a_running_journey(self):
        self.journey.action_start()
        wizard = (
            self.env["drip.journey.enroll"]
            .with_user(self.rep)
            .with_context(active_model="res.partner", active_ids=self.customer.ids)
            .create({"journey_id": self.journey.id})
        )
        self.assertEqual(wizard.partner_ids, self.customer)
        result = wizard.action_enroll()
        self.assertIn("1 customer(s) entered", result["params"]["message"])
        enrollment = self.env["drip.enrollment"].search(
            [("journey_id", "=", self.journey.id), ("partner_id", "=", self.customer.id)]
        )
        self.assertEqual(len(enrollment), 1)
        self.assertEqual(enrollment.message_ids.step_id, self.step_first)
        again = (
            self.env["drip.journey.enroll"]
            .with_user(self.rep)
            .create({"journey_id": self.journey.id, "partner_ids": [(6, 0, self.customer.ids)]})
        )
        self.assertIn("already in it", again.action_enroll()["params"]["message"])
