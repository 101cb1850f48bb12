"""Delivery logic inside one transaction (nothing committed, no SMTP in test mode).

Real Redis, RQ workers, SMTP, crashes and HTTP tracking are covered by the integration
suite in ``tests/integration`` (they need committed rows and real services).
"""

import email
import email.policy
import os
from datetime import datetime, timedelta
from email.header import decode_header, make_header
from unittest.mock import patch

from odoo.tests import freeze_time, tagged

from ..engine import tokens
from .common import DripCase

NOW = datetime(2026, 3, 10, 12, 0, 0)  # a Tuesday noon UTC


@tagged("post_install", "-at_install")
@freeze_time(NOW)
class TestDelivery(DripCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.write({
            "drip_quiet_hours_start": 0, "drip_quiet_hours_end": 0, "drip_default_tz": "UTC",
            "drip_cap_per_day": 0, "drip_cap_per_week": 0, "email": "shop@example.com",
        })
        cls.env["ir.config_parameter"].sudo().set_param("drip_marketing.redis_url", "")
        cls.template.write({"subject": "您好 {{ partner.first_name }}，购物车在等您",
                            "body_html": '<p>Hi {{ partner.name }} <a href="https://shop.'
                                         'example.com/x">shop</a></p>'})
        cls.customers = cls.env["res.partner"].create([
            {"name": f"Zhang {i}", "email": f"zhang{i}@example.com", "tz": "UTC"}
            for i in range(3)
        ])
        cls.journey.action_start()

    def setUp(self):
        super().setUp()
        # The harness may export DRIP_REDIS_URL; these tests choose the mode themselves.
        patcher = patch.dict(os.environ, {}, clear=False)
        patcher.start()
        os.environ.pop("DRIP_REDIS_URL", None)
        self.addCleanup(patcher.stop)

    def due_messages(self, partners=None, step=None):
        enrollments = self.env["drip.enrollment"].create([
            {"journey_id": self.journey.id, "partner_id": partner.id}
            for partner in (partners or self.customers)
        ])
        return self.env["drip.message"].create([
            {"enrollment_id": enrollment.id, "step_id": (step or self.step_first).id,
             "channel": "email", "queue": "transactional", "scheduled_at": NOW}
            for enrollment in enrollments
        ])

    def deliver(self, messages):
        return self.env["drip.delivery"]._deliver(messages.ids, auto_commit=False)

    # ------------------------------------------------------------------ staging
    def test_stage_without_redis_queues_in_one_batch_and_delivers_after_commit(self):
        messages = self.due_messages()
        before = len(self.env.cr.postcommit._funcs)
        self.env["drip.delivery"]._stage(messages)
        self.assertEqual(set(messages.mapped("state")), {"queued"})
        self.assertEqual(len(set(messages.mapped("job_id"))), 1)
        self.assertTrue(all(m.lease_until > NOW for m in messages))
        hooks = list(self.env.cr.postcommit._funcs)[before:]
        self.assertEqual([hook.func.__name__ for hook in hooks],
                         ["_deliver_inline_after_commit"])

    def test_stage_with_redis_batches_jobs_per_queue(self):
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.job_batch_size", "2")
        self.env["ir.config_parameter"].sudo().set_param(
            "drip_marketing.redis_url", "redis://127.0.0.1:1/0")
        messages = self.due_messages()
        messages[:1].queue = "bulk"
        before = len(self.env.cr.postcommit._funcs)
        jobs = self.env["drip.delivery"]._queue_rows(
            [(m.id, m.queue) for m in messages], from_states=("scheduled",))
        self.assertEqual(sorted((kind, len(ids)) for kind, _jid, ids in jobs),
                         [("bulk", 1), ("transactional", 2)])
        hooks = list(self.env.cr.postcommit._funcs)[before:]
        self.assertEqual(hooks[0].func.__name__, "_enqueue_after_commit")
        self.assertEqual(hooks[0].args[2], {"transactional": "drip_transactional",
                                            "bulk": "drip_bulk"})

    def test_stage_ignores_rows_not_scheduled(self):
        messages = self.due_messages()
        messages[0].state = "sent"
        self.env["drip.delivery"]._stage(messages)
        self.assertEqual(messages.mapped("state"), ["sent", "queued", "queued"])

    # ------------------------------------------------------------------ sending
    def test_deliver_sends_marks_sent_logs_and_starts_next_steps(self):
        messages = self.due_messages()
        self.env["drip.delivery"]._stage(messages)
        summary = self.deliver(messages)
        self.assertEqual(messages.mapped("state"), ["sent"] * 3, messages.mapped("reason"))
        self.assertEqual(summary["sent"], 3)
        self.assertEqual(set(messages.mapped("attempt_count")), {1})
        first = messages[0]
        self.assertEqual(first.recipient, "zhang0@example.com")
        self.assertEqual(first.subject, "您好 Zhang，购物车在等您")
        self.assertRegex(first.message_id_header, r"^<drip-\d+\.\d+-[0-9a-f]{8}@example\.com>$")
        # The not-ordered reminder follows the sent first reminder.
        children = self.env["drip.message"].search([("parent_message_id", "in", messages.ids)])
        self.assertEqual(children.step_id, self.step_second)
        note = self.env["mail.message"].search([("message_id", "=", first.message_id_header)])
        self.assertEqual((note.model, note.res_id), ("res.partner", self.customers[0].id))
        self.assertIn("First reminder", note.body)

    def test_deliver_twice_sends_once(self):
        messages = self.due_messages()
        self.env["drip.delivery"]._stage(messages)
        self.deliver(messages)
        summary = self.deliver(messages)
        self.assertFalse(summary.get("claimed"))
        self.assertEqual(set(messages.mapped("attempt_count")), {1})

    def test_email_headers(self):
        message = self.due_messages(self.customers[:1])
        Delivery = self.env["drip.delivery"]
        plan, _immediate = Delivery._prepare(message, NOW, {})
        mime = Delivery._build_email(self.env["ir.mail_server"], plan[0])
        # What goes on the wire, read back as a receiving mail client would.
        built = email.message_from_bytes(mime.as_bytes(), policy=email.policy.default)
        self.assertEqual(built["Message-Id"], plan[0]["message_id"])
        self.assertEqual(str(make_header(decode_header(mime["Subject"]))),
                         "您好 Zhang，购物车在等您")
        self.assertEqual(str(built["Subject"]), "您好 Zhang，购物车在等您")
        self.assertEqual(built["To"].addresses[0].display_name, "Zhang 0")
        self.assertEqual(built.get_body(("plain",)).get_content().strip(), "Hi Zhang 0")
        unsubscribe = built["List-Unsubscribe"]
        self.assertIn("<mailto:", unsubscribe)
        self.assertIn("/drip/unsubscribe/", unsubscribe)
        self.assertEqual(built["List-Unsubscribe-Post"], "List-Unsubscribe=One-Click")
        html = built.get_body(("html",)).get_content()
        self.assertIn("/drip/o/", html)
        self.assertNotIn("https://shop.example.com/x", html)
        token = html.split("/drip/c/", 1)[1].split('"', 1)[0]
        payload = tokens.verify(Delivery._secret(), token, now=0, purpose="drip.click")
        self.assertEqual(payload["m"], message.id)
        link = self.env["link.tracker"].browse(payload["l"])
        self.assertEqual(link.url, "https://shop.example.com/x")

    def test_email_wire_format_is_safe_and_matches_odoos_builder(self):
        message = self.due_messages(self.customers[:1])
        Delivery = self.env["drip.delivery"]
        plan, _immediate = Delivery._prepare(message, NOW, {})
        item = dict(plan[0], subject="Cart\r\nBcc: intruder@example.com")
        raw = Delivery._build_email(self.env["ir.mail_server"], item).as_bytes()
        built = email.message_from_bytes(raw, policy=email.policy.default)
        # A line break in a rendered subject cannot add a header.
        self.assertIsNone(built["Bcc"])
        self.assertEqual(str(built["Subject"]), "Cart Bcc: intruder@example.com")
        self.assertTrue(all(len(line) <= 998 for line in raw.splitlines()))
        # The same parts and headers as Odoo's own build_email.
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.mime_builder", "odoo")
        odoo_built = email.message_from_bytes(
            Delivery._build_email(self.env["ir.mail_server"], plan[0]).as_bytes(),
            policy=email.policy.default)
        ours = email.message_from_bytes(
            Delivery._build_email(self.env["ir.mail_server"], plan[0], "fast").as_bytes(),
            policy=email.policy.default)
        self.assertEqual(ours.get_content_type(), odoo_built.get_content_type())
        for name in ("Message-Id", "Subject", "To", "List-Unsubscribe",
                     "List-Unsubscribe-Post", "X-Drip-Message"):
            # Folding whitespace aside (each builder folds long headers its own way).
            self.assertEqual(" ".join(str(ours[name]).split()),
                             " ".join(str(odoo_built[name]).split()), name)
        for subtype in ("plain", "html"):
            self.assertEqual(ours.get_body((subtype,)).get_content().strip(),
                             odoo_built.get_body((subtype,)).get_content().strip())

    # ------------------------------------------------------------- send-time checks
    def test_opted_out_and_blacklisted_are_skipped_with_reason(self):
        messages = self.due_messages()
        self.customers[0]._drip_set_consent("email", "opted_out", source="backend")
        self.env["mail.blacklist"].sudo()._add("zhang1@example.com")
        self.deliver(messages)
        self.assertEqual(messages.mapped("state"), ["skipped", "skipped", "sent"])
        self.assertEqual(messages[0].skip_reason, "no_consent")
        self.assertIn(messages[1].skip_reason, ("blacklisted", "no_consent"))
        self.assertTrue(messages[0].reason)

    def test_missing_address_is_skipped(self):
        self.customers[2].email = False
        messages = self.due_messages(self.customers[2:])
        self.deliver(messages)
        self.assertEqual((messages.state, messages.skip_reason), ("skipped", "no_address"))

    def test_bad_template_fails_only_its_message(self):
        other = self.template.copy({"name": "Broken",
                                    "body_html": "<p>{{ partner.nickname }}</p>"})
        step = self.env["drip.step"].create({
            "journey_id": self.journey.id, "name": "Broken step", "step_type": "send",
            "channel": "email", "template_id": other.id, "parent_id": self.step_first.id,
            "step_trigger": "opened",
        })
        broken = self.due_messages(self.customers[:1], step=step)
        fine = self.due_messages(self.customers[1:2])
        self.deliver(broken | fine)
        self.assertEqual(broken.state, "failed")
        self.assertEqual(broken.skip_reason, "render_error")
        self.assertIn("nickname", broken.error)
        self.assertIn("Broken", broken.error)
        self.assertEqual(fine.state, "sent")

    def test_quiet_hours_defer_to_their_end(self):
        self.company.write({"drip_quiet_hours_start": 11, "drip_quiet_hours_end": 14})
        message = self.due_messages(self.customers[:1])
        self.deliver(message)
        self.assertEqual(message.state, "scheduled")
        self.assertEqual(message.scheduled_at, NOW.replace(hour=14))
        self.assertEqual(message.deferred_count, 1)
        self.assertEqual(message.attempt_count, 0)
        self.assertIn("Quiet hours", message.reason)

    def test_quiet_hours_in_the_customer_time_zone(self):
        # Noon UTC is 20:00 in Shanghai: inside 19:00-08:00 quiet hours there.
        self.company.write({"drip_quiet_hours_start": 19, "drip_quiet_hours_end": 8})
        self.customers[0].tz = "Asia/Shanghai"
        message = self.due_messages(self.customers[:2])
        self.deliver(message)
        self.assertEqual(message.mapped("state"), ["scheduled", "sent"])
        self.assertEqual(message[0].scheduled_at, datetime(2026, 3, 11, 0, 0))

    def test_caps_defer_marketing_but_not_transactional(self):
        self.company.drip_cap_per_day = 1
        campaign = self.env["drip.journey"].create({
            "name": "Campaign", "trigger": "partner_created", "priority": 1})
        self.env["drip.step"].create({
            "journey_id": campaign.id, "name": "Promo", "step_type": "send",
            "channel": "email", "template_id": self.template.id})
        campaign.action_start()
        partner = self.customers[0]
        # Sent 2 hours ago by another journey.
        earlier = self.due_messages(partner)
        earlier.write({"state": "sent", "sent_at": NOW - timedelta(hours=2)})
        promo = self.env["drip.message"].create({
            "enrollment_id": self.env["drip.enrollment"].create(
                {"journey_id": campaign.id, "partner_id": partner.id}).id,
            "step_id": campaign.step_ids.id, "channel": "email", "queue": "bulk",
            "scheduled_at": NOW,
        })
        self.journey.transactional = True
        reminder = self.env["drip.message"].create({
            "enrollment_id": earlier.enrollment_id.id, "step_id": self.step_second.id,
            "channel": "email", "queue": "transactional", "scheduled_at": NOW})
        self.deliver(promo | reminder)
        self.assertEqual(reminder.state, "sent")
        self.assertEqual(promo.state, "scheduled")
        self.assertIn("frequency cap", promo.reason)
        # The reminder sent now counts too (caps count every message the inbox sees).
        self.assertEqual(promo.scheduled_at, NOW + timedelta(hours=24))

    def test_goal_reached_skips_and_exits(self):
        self.journey.write({"goal_type": "domain",
                            "goal_domain": "[('email', '=', 'zhang0@example.com')]"})
        messages = self.due_messages(self.customers[:2])
        self.deliver(messages)
        self.assertEqual(messages.mapped("state"), ["skipped", "sent"])
        self.assertEqual(messages[0].skip_reason, "goal_reached")
        self.assertEqual(messages[0].enrollment_id.state, "exited")

    def test_paused_journey_waits(self):
        messages = self.due_messages(self.customers[:1])
        self.env["drip.delivery"]._stage(messages)
        self.journey.action_pause()
        self.deliver(messages)
        self.assertEqual(messages.state, "scheduled")
        self.assertFalse(messages.job_id)

    def test_note_channel_posts_on_the_chatter(self):
        note_template = self.env["drip.template"].create({
            "name": "Note", "channel": "note", "body_html": "<p>Call {{ partner.name }}</p>"})
        step = self.env["drip.step"].create({
            "journey_id": self.journey.id, "name": "Note step", "step_type": "send",
            "channel": "note", "template_id": note_template.id,
            "parent_id": self.step_first.id, "step_trigger": "clicked"})
        message = self.due_messages(self.customers[:1], step=step)
        message.channel = "note"
        self.deliver(message)
        self.assertEqual(message.state, "sent")
        note = self.env["mail.message"].search([
            ("model", "=", "res.partner"), ("res_id", "=", self.customers[0].id),
            ("body", "ilike", "Call Zhang 0")])
        self.assertTrue(note)

    def test_sms_without_the_sms_app_fails_readably(self):
        if "sms.sms" in self.env:
            self.skipTest("Odoo's SMS app is installed here")
        sms_template = self.env["drip.template"].create({
            "name": "SMS", "channel": "sms", "body_text": "Hi {{ partner.first_name }}"})
        step = self.env["drip.step"].create({
            "journey_id": self.journey.id, "name": "SMS step", "step_type": "send",
            "channel": "sms", "template_id": sms_template.id,
            "parent_id": self.step_first.id, "step_trigger": "clicked"})
        self.customers[0].mobile = "+86 138 0013 8000"
        message = self.due_messages(self.customers[:1], step=step)
        message.channel = "sms"
        self.deliver(message)
        self.assertEqual(message.state, "failed")
        self.assertIn("SMS app", message.error)

    # ------------------------------------------------------------------ reaper
    def test_reaper_resolves_each_kind_of_stuck_row(self):
        messages = self.due_messages()
        accepted, unknown, untouched = messages
        self.env["drip.delivery"]._stage(messages)
        lease = NOW - timedelta(minutes=1)
        accepted.write({"state": "sending", "lease_until": lease, "attempt_count": 1,
                        "message_id_header": "<a@x>", "sent_at": NOW - timedelta(minutes=5)})
        unknown.write({"state": "sending", "lease_until": lease, "attempt_count": 1,
                       "message_id_header": "<b@x>"})
        untouched.write({"state": "sending", "lease_until": lease, "attempt_count": 1})
        self.env["drip.delivery"]._recover_sending(now=NOW)
        self.assertEqual(accepted.state, "sent")
        self.assertTrue(self.env["drip.message"].search(
            [("parent_message_id", "=", accepted.id)]))
        self.assertEqual(unknown.state, "failed")
        self.assertIn("Delivery unknown", unknown.error)
        self.assertIn("<b@x>", unknown.error)
        self.assertEqual(untouched.state, "queued")
        self.assertFalse(untouched.message_id_header)

    def test_reaper_gives_up_on_a_message_that_keeps_killing_workers(self):
        message = self.due_messages(self.customers[:1])
        message.write({"state": "sending", "lease_until": NOW - timedelta(minutes=1),
                       "attempt_count": 4})
        self.env["drip.delivery"]._recover_sending(now=NOW)
        self.assertEqual(message.state, "failed")
        self.assertIn("stopped 4 times", message.error)

    def test_reaper_requeues_lost_queued_rows_inline(self):
        messages = self.due_messages(self.customers[:1])
        self.env["drip.delivery"]._stage(messages)
        job = messages.job_id
        messages.lease_until = NOW - timedelta(minutes=1)
        self.env["drip.delivery"]._requeue_lost(now=NOW)
        self.assertEqual(messages.state, "queued")
        self.assertNotEqual(messages.job_id, job)
        self.assertGreater(messages.lease_until, NOW)

    # ----------------------------------------------------------- bounce / reply
    def test_bounce_and_reply_stamp_the_message(self):
        message = self.due_messages(self.customers[:1])
        self.deliver(message)
        Delivery = self.env["drip.delivery"]
        Delivery._on_bounce({"bounced_msg_ids": [message.message_id_header]})
        self.assertEqual(message.bounced_at, NOW)
        replied = Delivery._on_reply(None, {"in_reply_to": message.message_id_header,
                                            "references": ""})
        self.assertEqual(replied, message)
        self.assertEqual(message.replied_at, NOW)
