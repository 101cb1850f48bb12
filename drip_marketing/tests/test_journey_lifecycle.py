from odoo.exceptions import UserError
from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestJourneyLifecycle(DripCase):
    def test_no_start_without_a_sending_step(self):
        journey = self.env["drip.journey"].create({"name": "Empty", "trigger": "partner_created"})
        self.env["drip.step"].create(
            {"journey_id": journey.id, "name": "Wait", "step_type": "wait"}
        )
        with self.assertRaisesRegex(UserError, "no step that sends a message"):
            journey.action_start()
        self.assertEqual(journey.state, "draft")

    def test_start_pause_resume_stop(self):
        self.journey.action_start()
        self.assertEqual(self.journey.state, "running")
        self.assertTrue(self.journey.activated_at)
        with self.assertRaisesRegex(UserError, "Only a paused journey"):
            self.journey.action_resume()
        self.journey.action_pause()
        self.assertEqual(self.journey.state, "paused")
        self.journey.action_resume()
        self.assertEqual(self.journey.state, "running")
        self.journey.action_stop()
        self.assertEqual(self.journey.state, "stopped")
        with self.assertRaisesRegex(UserError, "Only a running journey"):
            self.journey.action_pause()

    def test_stop_exits_participants_and_cancels_pending_messages(self):
        self.journey.action_start()
        enrollment = self.enroll()
        pending = self.env["drip.message"].create(
            {
                "enrollment_id": enrollment.id,
                "step_id": self.step_first.id,
                "scheduled_at": "2030-01-01 10:00:00",
            }
        )
        sent = self.env["drip.message"].create(
            {
                "enrollment_id": enrollment.id,
                "step_id": self.step_second.id,
                "scheduled_at": "2026-01-01 10:00:00",
                "state": "sent",
                "sent_at": "2026-01-01 10:00:01",
            }
        )
        self.journey.action_stop()
        self.assertEqual(enrollment.state, "exited")
        self.assertEqual(enrollment.exit_reason, "journey_stopped")
        self.assertEqual(pending.state, "cancelled")
        self.assertIn("Journey stopped", pending.reason)
        self.assertEqual(sent.state, "sent", "what was sent stays sent")

    def test_trigger_frozen_while_running(self):
        self.journey.action_start()
        with self.assertRaisesRegex(UserError, "Stop the journey before changing its trigger"):
            self.journey.trigger = "partner_created"
        self.journey.priority = 50  # other fields stay editable
        self.assertEqual(self.journey.trigger, "cart_abandoned")

    def test_statistics_from_the_ledger(self):
        enrollment = self.enroll()
        self.env["drip.message"].create(
            [
                {
                    "enrollment_id": enrollment.id,
                    "step_id": self.step_first.id,
                    "scheduled_at": "2026-01-01 10:00:00",
                    "state": "sent",
                    "sent_at": "2026-01-01 10:00:01",
                    "opened_at": "2026-01-01 11:00:00",
                    "clicked_at": "2026-01-01 11:01:00",
                    "converted_at": "2026-01-02 09:00:00",
                    "revenue": 120.0,
                },
                {
                    "enrollment_id": enrollment.id,
                    "step_id": self.step_second.id,
                    "scheduled_at": "2026-01-02 10:00:00",
                },
            ]
        )
        journey = self.journey
        self.assertEqual(
            (
                journey.enrollment_count,
                journey.message_ids_count,
                journey.sent_count,
                journey.opened_count,
                journey.clicked_count,
                journey.converted_count,
            ),
            (1, 2, 1, 1, 1, 1),
        )
        self.assertEqual(journey.revenue, 120.0)
        self.assertEqual((self.step_first.sent_count, self.step_second.scheduled_count), (1, 1))
        self.assertEqual(self.customer.drip_enrollment_count, 1)
        self.assertEqual(self.customer.drip_message_count, 2)

    def test_retry_only_failed_messages(self):
        enrollment = self.enroll()
        message = self.env["drip.message"].create(
            {
                "enrollment_id": enrollment.id,
                "step_id": self.step_first.id,
                "scheduled_at": "2026-01-01 10:00:00",
                "state": "failed",
                "error": "SMTP 451",
            }
        )
        message.action_retry()
        self.assertEqual(message.state, "scheduled")
        self.assertFalse(message.error)
        with self.assertRaisesRegex(UserError, "Only failed messages"):
            message.action_retry()

    def test_copy_keeps_steps_as_draft(self):
        self.journey.action_start()
        copy = self.journey.copy()
        self.assertEqual(copy.state, "draft")
        self.assertIn("(copy)", copy.name)
        self.assertEqual(len(copy.step_ids), 2)
