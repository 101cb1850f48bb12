import base64
import json

from odoo.exceptions import AccessError
from odoo.tests import TransactionCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestMergePrivacy(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.env.company.drip_double_opt_in = False
        cls.manager = new_test_user(
            cls.env, login="privacy_manager",
            groups="base.group_user,drip_marketing.drip_marketing_group_manager",
        )
        cls.rep = new_test_user(
            cls.env, login="privacy_rep",
            groups="base.group_user,drip_marketing.drip_marketing_group_user",
        )
        template = cls.env["drip.template"].create(
            {"name": "News", "channel": "email", "subject": "News", "body_html": "<p>x</p>"}
        )
        cls.journeys = cls.env["drip.journey"].create([
            {"name": "Welcome", "trigger": "partner_created"},
            {"name": "Win-back", "trigger": "partner_created"},
        ])
        cls.steps = cls.env["drip.step"].create([
            {"journey_id": journey.id, "name": "Hello", "step_type": "send", "channel": "email",
             "template_id": template.id}
            for journey in cls.journeys
        ])
        cls.keep = cls.env["res.partner"].create({"name": "Lea", "email": "lea@example.com"})
        cls.gone = cls.env["res.partner"].create({"name": "Lea M.", "email": "lea@example.com"})

    def participate(self, partner, journey, step, **values):
        enrollment = self.env["drip.enrollment"].create(
            {"journey_id": journey.id, "partner_id": partner.id, **values}
        )
        message = self.env["drip.message"].create({
            "enrollment_id": enrollment.id, "step_id": step.id, "channel": "email",
            "scheduled_at": "2030-01-01 10:00:00",
        })
        return enrollment, message

    def test_merge_keeps_everything_and_the_strictest_consent(self):
        welcome, winback = self.journeys
        self.keep._drip_set_consent("email", "opted_in", "backend")
        self.gone._drip_set_consent("messaging", "opted_out", "api")
        self.gone._drip_set_consent("sms", "pending", "backend")
        kept_enrollment, kept_message = self.participate(self.keep, welcome, self.steps[0])
        gone_enrollment, gone_message = self.participate(self.gone, welcome, self.steps[0])
        other_enrollment, _other = self.participate(self.gone, winback, self.steps[1])
        identity = self.env["drip.identity"].create(
            {"partner_id": self.gone.id, "kind": "anonymous_id", "value": "anon-42"}
        )
        gone_ledger = self.env["drip.consent.event"].search([("partner_id", "=", self.gone.id)])
        self.assertEqual(len(gone_ledger), 2)
        gone_id = self.gone.id

        self.env["base.partner.merge.automatic.wizard"]._merge(
            (self.keep | self.gone).ids, self.keep
        )
        self.env.invalidate_all()
        self.assertFalse(self.env["res.partner"].browse(gone_id).exists())
        # Consent: the most restrictive state per channel, recorded as a merge.
        self.assertEqual(self.keep.drip_consent_email, "opted_in")
        self.assertEqual(self.keep.drip_consent_messaging, "opted_out")
        self.assertEqual(self.keep.drip_consent_sms, "pending")
        ledger = self.env["drip.consent.event"].search([("partner_id", "=", self.keep.id)])
        self.assertLessEqual(gone_ledger, ledger, "the merged contact's history moved over")
        merge_rows = ledger.filtered(lambda row: row.source == "merge")
        self.assertEqual(sorted(merge_rows.mapped("channel")), ["messaging", "sms"])
        self.assertIn(f"#{gone_id}", merge_rows[0].proof)
        # Enrollments and messages moved; the duplicate participation is not lost but
        # stops, so the person does not get the Welcome journey twice.
        enrollments = self.keep.drip_enrollment_ids
        self.assertEqual(enrollments, kept_enrollment | gone_enrollment | other_enrollment)
        self.assertEqual(set(enrollments.mapped("source_ref")), {f"res.partner,{self.keep.id}"})
        self.assertEqual(
            sorted(enrollments.filtered(lambda e: e.journey_id == welcome).mapped("cycle")),
            [0, 1],
        )
        self.assertEqual(kept_enrollment.state, "active")
        self.assertEqual(gone_enrollment.state, "exited")
        self.assertEqual(gone_message.state, "cancelled")
        self.assertEqual(kept_message.state, "scheduled")
        self.assertEqual(other_enrollment.state, "active")
        self.assertEqual((kept_message | gone_message).partner_id, self.keep)
        self.assertEqual(identity.partner_id, self.keep)

    def test_export_is_for_managers_and_complete(self):
        self.keep._drip_set_consent("email", "opted_out", "unsubscribe", ip_address="203.0.113.5")
        self.participate(self.keep, self.journeys[0], self.steps[0])
        self.env["drip.event"].create({
            "name": "Product Viewed", "partner_id": self.keep.id,
            "event_type_id": self.env.ref("drip_marketing.event_type_product_viewed").id,
            "payload": {"sku": "MUG-1"},
        })
        with self.assertRaises(AccessError):
            self.keep.with_user(self.rep).action_drip_export_data()
        action = self.keep.with_user(self.manager).action_drip_export_data()
        attachment_id = int(action["url"].split("/web/content/")[1].split("?")[0])
        attachment = self.env["ir.attachment"].browse(attachment_id)
        data = json.loads(base64.b64decode(attachment.datas))
        self.assertEqual(data["customer"]["email"], "lea@example.com")
        self.assertEqual(data["consent"]["email"]["state"], "opted_out")
        self.assertEqual(data["consent_history"][0]["ip_address"], "203.0.113.5")
        self.assertEqual(data["journeys"][0]["journey"], "Welcome")
        self.assertEqual(len(data["messages"]), 1)
        self.assertEqual(data["events"][0]["payload"], {"sku": "MUG-1"})

    def test_erasure_anonymises_and_keeps_counts(self):
        self.keep._drip_set_consent("email", "opted_in", "preferences", is_public_request=True,
                                    ip_address="203.0.113.5", user_agent="Browser")
        enrollment, message = self.participate(self.keep, self.journeys[0], self.steps[0])
        message.write({"subject": "Hello Lea", "recipient": "lea@example.com"})
        self.env["drip.event"].create({"name": "Product Viewed", "partner_id": self.keep.id})
        self.env["drip.identity"].create(
            {"partner_id": self.keep.id, "kind": "email", "value": "lea@example.com"}
        )
        self.keep.drip_birthday = "1990-05-01"
        self.keep.with_user(self.manager).action_drip_export_data()

        with self.assertRaises(AccessError):
            self.keep.with_user(self.rep).action_drip_erase_marketing_data()
        self.keep.with_user(self.manager).action_drip_erase_marketing_data()
        self.env.invalidate_all()

        self.assertFalse(self.env["drip.event"].search([("partner_id", "=", self.keep.id)]))
        self.assertFalse(self.keep.drip_identity_ids)
        self.assertFalse(self.keep.drip_birthday)
        self.assertEqual(self.env["drip.message"].search_count(
            [("partner_id", "=", self.keep.id)]), 1, "counts stay")
        self.assertFalse(message.subject or message.recipient)
        self.assertEqual(enrollment.exit_reason, "erased")
        ledger = self.env["drip.consent.event"].search([("partner_id", "=", self.keep.id)])
        self.assertFalse(any(ledger.mapped("ip_address")) or any(ledger.mapped("user_agent")))
        self.assertEqual(ledger.filtered(lambda r: r.source == "preferences").new_state,
                         "opted_in", "the consent history itself is kept")
        for channel in ("email", "sms", "messaging"):
            self.assertEqual(self.keep[f"drip_consent_{channel}"], "opted_out")
        self.assertTrue(self.keep.is_blacklisted, "kept as a suppression entry")
        self.assertFalse(self.env["ir.attachment"].search([
            ("res_model", "=", "res.partner"), ("res_id", "=", self.keep.id),
            ("description", "=", "drip_marketing_export"),
        ]))
