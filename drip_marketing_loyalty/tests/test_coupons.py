from datetime import date, datetime

from odoo import Command, fields
from odoo.exceptions import ValidationError
from odoo.tests import freeze_time, tagged

from odoo.addons.drip_marketing.tests.common import DripCase


@tagged("post_install", "-at_install")
class TestCoupons(DripCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.program = cls.env["loyalty.program"].create({
            "name": "Come back: 10 %",
            "program_type": "coupons",
            "trigger": "with_code",
            "applies_on": "current",
            "rule_ids": [Command.clear()],
            "reward_ids": [Command.clear(), Command.create({
                "reward_type": "discount", "discount_mode": "percent", "discount": 10,
                "discount_applicability": "order", "required_points": 1,
            })],
        })
        cls.coupon_template = cls.env["drip.template"].create({
            "name": "Here is a coupon",
            "channel": "note",
            "body_html": "<p>{% if coupon %}Code {{ coupon.code }} until "
                         "{{ coupon.expires_at | date('yyyy-MM-dd') }}{% else %}no coupon"
                         "{% endif %}</p>",
        })
        cls.offer_journey = cls.env["drip.journey"].create(
            {"name": "Win back", "trigger": "inactivity", "goal_type": "none"})
        cls.coupon_step = cls.env["drip.step"].create({
            "journey_id": cls.offer_journey.id, "name": "Coupon", "step_type": "send",
            "channel": "note", "template_id": cls.coupon_template.id,
            "coupon_program_id": cls.program.id, "coupon_validity_days": 5,
        })
        cls.customer.tz = "Asia/Shanghai"
        cls.product = cls.env["product.product"].create(
            {"name": "Tea set", "list_price": 200.0, "type": "consu",
             "taxes_id": [Command.clear()]})

    def make_message(self, step=None, partner=None, state="scheduled"):
        enrollment = self.enroll(journey=self.offer_journey, partner=partner)
        return self.env["drip.message"].create({
            "enrollment_id": enrollment.id, "step_id": (step or self.coupon_step).id,
            "scheduled_at": fields.Datetime.now(), "channel": "note", "state": state,
        })

    def offers(self, messages):
        items = [(m.id, m.partner_id, m.order_id, "en_US", m.journey_id, m.step_id, m)
                 for m in messages]
        return self.env["drip.offer"]._offers_for(items)

    def redeem(self, code, partner=None):
        order = self.env["sale.order"].create({
            "partner_id": (partner or self.customer).id,
            "order_line": [Command.create({"product_id": self.product.id,
                                           "product_uom_qty": 1})],
        })
        result = order._try_apply_code(code)
        if "error" in result:
            return order, result
        for card, rewards in result.items():
            order._apply_program_reward(rewards[:1], card)
        return order, result

    # ------------------------------------------------------------------ issue
    @freeze_time("2026-03-10 18:30:00")
    def test_issue(self):
        message = self.make_message()
        coupon = self.offers(message)[message.id]["coupon"]
        issued = self.env["drip.coupon"].search([("message_id", "=", message.id)])
        self.assertEqual(coupon, {"code": issued.code, "expires_at": issued.expires_on})
        card = issued.card_id
        self.assertEqual((card.program_id, card.partner_id, card.points),
                         (self.program, self.customer, 1.0))
        # 18:30 UTC is already the 11th in Shanghai: 5 days from the customer's today.
        self.assertEqual(card.expiration_date, date(2026, 3, 16))
        self.assertEqual(issued.state, "issued")
        self.assertEqual(card.history_ids.issued, 1.0)
        self.assertIn("Win back", card.history_ids.description)
        self.assertFalse(self.env["mail.mail"].search([("model", "=", "loyalty.card"),
                                                       ("res_id", "=", card.id)]),
                         "the code travels in our message, not in a loyalty email")

    def test_no_coupon_without_program_or_live_message(self):
        plain = self.env["drip.step"].create({
            "journey_id": self.offer_journey.id, "name": "Plain", "step_type": "send",
            "channel": "note", "template_id": self.coupon_template.id,
        })
        without = self.make_message(step=plain)
        cancelled = self.make_message(partner=self.env["res.partner"].create({"name": "X"}),
                                      state="cancelled")
        skipped = self.make_message(partner=self.env["res.partner"].create({"name": "Y"}),
                                    state="skipped")
        offers = self.offers(without | cancelled | skipped)
        self.assertEqual([offers[m.id]["coupon"] for m in (without, cancelled, skipped)],
                         [None, None, None])
        self.assertFalse(self.env["loyalty.card"].search([("program_id", "=", self.program.id)]))
        self.assertFalse(self.env["drip.coupon"].search([]))

    def test_idempotent_under_retry(self):
        message = self.make_message()
        first = self.offers(message)[message.id]["coupon"]
        # rendered again (worker retry after an SMTP failure, re-queued by the reaper…)
        self.assertEqual(self.offers(message)[message.id]["coupon"], first)
        message.write({"state": "failed"})
        message.action_retry()
        self.assertEqual(self.offers(message)[message.id]["coupon"], first)
        self.assertEqual(self.env["drip.coupon"].search_count(
            [("enrollment_id", "=", message.enrollment_id.id)]), 1)
        self.assertEqual(self.env["loyalty.card"].search_count(
            [("program_id", "=", self.program.id)]), 1)
        coupon = self.env["drip.coupon"].search([("message_id", "=", message.id)])
        # Even a second ledger row for the same participant and step cannot get another.
        card = self.env["loyalty.card"].create({"program_id": self.program.id, "points": 1})
        twin = message.copy({"idempotency_key": "twin", "state": "scheduled"})
        self.assertSqlConstraint(
            lambda: coupon.copy({"card_id": card.id, "message_id": twin.id}),
            "A participant gets one coupon per step.",
        )
        self.assertEqual(self.offers(twin)[twin.id]["coupon"], first)

    def test_batch_issues_one_per_participant(self):
        partners = self.env["res.partner"].create(
            [{"name": f"P{i}", "email": f"p{i}@example.com"} for i in range(3)])
        messages = self.env["drip.message"]
        for partner in partners:
            messages |= self.make_message(partner=partner)
        offers = self.offers(messages)
        codes = {offers[m.id]["coupon"]["code"] for m in messages}
        self.assertEqual(len(codes), 3)
        cards = self.env["loyalty.card"].search([("code", "in", list(codes))])
        self.assertEqual(cards.partner_id, partners)

    # ----------------------------------------------------------------- expiry
    def test_expiry(self):
        with freeze_time("2026-03-10 08:00:00"):
            message = self.make_message()
            code = self.offers(message)[message.id]["coupon"]["code"]
        coupon = self.env["drip.coupon"].search([("message_id", "=", message.id)])
        with freeze_time("2026-03-15 08:00:00"):
            _order, result = self.redeem(code)
            self.assertNotIn("error", result, "valid through its last day")
        with freeze_time("2026-03-16 08:00:00"):
            coupon.invalidate_recordset(["state"])
            self.assertEqual(coupon.state, "expired")
            self.assertEqual(self.env["drip.coupon"].search([("state", "=", "expired")]), coupon)
            _order, result = self.redeem(code)
            self.assertEqual(result.get("error"), "This coupon is expired.")

    # ------------------------------------------------------------- redemption
    def test_redemption_is_a_conversion(self):
        message = self.make_message()
        message.write({"state": "sent", "sent_at": fields.Datetime.now()})
        code = self.offers(message.with_context())[message.id]["coupon"]
        self.assertIsNone(code, "a message already sent is not given a coupon afterwards")
        message = self.make_message(partner=self.env["res.partner"].create(
            {"name": "Mei", "email": "mei@example.com"}))
        code = self.offers(message)[message.id]["coupon"]["code"]
        order, result = self.redeem(code, partner=message.partner_id)
        self.assertNotIn("error", result)
        self.assertAlmostEqual(order.amount_untaxed, 180.0, msg="the cart applied 10 % off")
        order.action_confirm()
        coupon = self.env["drip.coupon"].search([("message_id", "=", message.id)])
        self.assertEqual(coupon.state, "redeemed")
        self.assertEqual(coupon.order_id, order)
        self.assertAlmostEqual(coupon.discount, 20.0)
        enrollment = message.enrollment_id
        for record in (message, enrollment):
            self.assertTrue(record.converted_at)
            self.assertEqual(record.conversion_order_id, order)
            self.assertAlmostEqual(record.revenue, 180.0)
            self.assertAlmostEqual(record.coupon_discount, 20.0)
        self.assertEqual(order.drip_attributed_message_id, message)
        self.assertEqual(sorted(coupon.card_id.history_ids.mapped("used")), [0.0, 1.0])
        # single use
        _again, result = self.redeem(code, partner=message.partner_id)
        self.assertEqual(result.get("error"), "This coupon has already been used.")

    # ------------------------------------------------------------ settings
    def test_step_settings(self):
        with self.assertRaises(ValidationError):
            self.env["drip.step"].create({
                "journey_id": self.offer_journey.id, "name": "Wait", "step_type": "wait",
                "coupon_program_id": self.program.id,
            })
        promotion = self.env["loyalty.program"].create(
            {"name": "Promo", "program_type": "promotion"})
        with self.assertRaises(ValidationError):
            self.coupon_step.coupon_program_id = promotion

    # -------------------------------------------------------------- delivery
    def test_delivery_shows_the_coupon(self):
        """End to end through drip.delivery: the note carries the code, issued once."""
        self.offer_journey.write({"state": "running", "activated_at": datetime(2026, 1, 1)})
        message = self.make_message()
        self.env["drip.delivery"]._deliver(message.ids, auto_commit=False)
        coupon = self.env["drip.coupon"].search([("message_id", "=", message.id)])
        self.assertEqual(message.state, "sent", message.error or message.reason)
        self.assertTrue(coupon)
        body = self.customer.message_ids[:1].body
        self.assertIn(coupon.code, body)
