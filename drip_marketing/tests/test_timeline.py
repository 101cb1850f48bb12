from datetime import timedelta

from odoo import Command, fields
from odoo.exceptions import AccessError
from odoo.tests import TransactionCase, new_test_user, tagged


@tagged("post_install", "-at_install")
class TestTimeline(TransactionCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        groups = "base.group_user,drip_marketing.drip_marketing_group_user"
        cls.rep_1 = new_test_user(cls.env, login="timeline_rep_1", groups=groups)
        cls.rep_2 = new_test_user(cls.env, login="timeline_rep_2", groups=groups)
        cls.manager = new_test_user(
            cls.env, login="timeline_manager",
            groups="base.group_user,drip_marketing.drip_marketing_group_manager",
        )
        cls.customer = cls.env["res.partner"].create(
            {"name": "Mia", "email": "mia@example.com", "user_id": cls.rep_1.id}
        )
        cls.other_customer = cls.env["res.partner"].create(
            {"name": "Noah", "email": "noah@example.com", "user_id": cls.rep_2.id}
        )
        cls.now = fields.Datetime.now().replace(microsecond=0)
        cls.at = {n: cls.now - timedelta(days=n) for n in range(1, 11)}

        product = cls.env["product.product"].create({"name": "Mug", "type": "consu"})
        cls.order = cls.env["sale.order"].create({
            "partner_id": cls.customer.id,
            "order_line": [Command.create({"product_id": product.id, "price_unit": 12.5})],
        })
        cls.order.action_confirm()
        cls.order.date_order = cls.at[10]
        template = cls.env["drip.template"].create(
            {"name": "Tips", "channel": "email", "subject": "Tips", "body_html": "<p>x</p>"}
        )
        cls.journey = cls.env["drip.journey"].create(
            {"name": "Onboarding", "trigger": "partner_created"}
        )
        step = cls.env["drip.step"].create({
            "journey_id": cls.journey.id, "name": "First tips", "step_type": "send",
            "channel": "email", "template_id": template.id,
        })
        cls.enrollment = cls.env["drip.enrollment"].create({
            "journey_id": cls.journey.id, "partner_id": cls.customer.id,
            "entered_at": cls.at[9],
        })
        cls.message = cls.env["drip.message"].create({
            "enrollment_id": cls.enrollment.id, "step_id": step.id, "channel": "email",
            "scheduled_at": cls.at[9], "state": "sent", "sent_at": cls.at[8],
            "subject": "Three tips for your mug", "opened_at": cls.at[7], "clicked_at": cls.at[6],
        })
        cls.enrollment.write(
            {"state": "exited", "exit_reason": "goal_reached", "exited_at": cls.at[5]}
        )
        cls.customer._drip_set_consent("email", "opted_in", "backend")
        cls.env.flush_all()
        cls.env.cr.execute("UPDATE drip_consent_event SET create_date = %s WHERE partner_id = %s",
                           [cls.at[4], cls.customer.id])
        Event = cls.env["drip.event"]
        ref = cls.env.ref
        Event.create([
            {"name": "RFM segment changed", "partner_id": cls.customer.id,
             "event_type_id": ref("drip_marketing.event_type_rfm_segment_changed").id,
             "call_type": "internal", "occurred_at": cls.at[3],
             "payload": {"old": "lost", "new": "champions"}},
            {"name": "Tag added: VIP", "partner_id": cls.customer.id,
             "event_type_id": ref("drip_marketing.event_type_tag_added").id,
             "call_type": "internal", "occurred_at": cls.at[2]},
            {"name": "Product Viewed", "partner_id": cls.customer.id,
             "event_type_id": ref("drip_marketing.event_type_product_viewed").id,
             "occurred_at": cls.at[1]},
        ])
        cls.other_customer._drip_set_consent("email", "opted_out", "backend")
        cls.env.invalidate_all()

    def test_each_kind_in_order(self):
        lines = self.env["drip.timeline"].search([("partner_id", "=", self.customer.id)])
        self.assertEqual(lines.mapped("kind"), [
            "event", "tag", "rfm", "consent", "journey_exited", "clicked", "opened", "message",
            "journey_entered", "order",
        ])
        self.assertEqual(lines.mapped("date"), [self.at[n] for n in range(1, 11)])
        by_kind = {line.kind: line for line in lines}
        self.assertEqual(by_kind["rfm"].summary, "RFM segment: Lost → Champions")
        self.assertEqual(by_kind["tag"].summary, "Tag added: VIP")
        self.assertEqual(by_kind["event"].summary, "Product viewed")
        self.assertIn("Unknown → Opted in", by_kind["consent"].summary)
        self.assertIn("Goal reached", by_kind["journey_exited"].summary)
        self.assertIn("Three tips for your mug", by_kind["message"].summary)
        self.assertIn(self.order.name, by_kind["order"].summary)
        self.assertEqual(by_kind["message"].journey_id, self.journey)
        self.assertEqual((by_kind["order"].res_model, by_kind["order"].res_id),
                         ("sale.order", self.order.id))
        self.assertEqual(by_kind["order"].action_open_document()["res_id"], self.order.id)
        self.assertEqual(set(lines.user_id), {self.rep_1})
        # The same timeline on the customer form, through the one2many.
        self.assertEqual(self.customer.drip_timeline_ids, lines)
        action = self.customer.action_drip_view_timeline()
        self.assertEqual(self.env["drip.timeline"].search(action["domain"]), lines)

    def test_reps_see_every_timeline_unless_restricted(self):
        Timeline = self.env["drip.timeline"]
        both = [("partner_id", "in", (self.customer | self.other_customer).ids)]
        self.env.company.drip_timeline_own_customers_only = False
        self.assertEqual(set(Timeline.with_user(self.rep_1).search(both).partner_id),
                         {self.customer, self.other_customer})

        self.env.company.drip_timeline_own_customers_only = True
        self.assertEqual(set(Timeline.with_user(self.rep_1).search(both).partner_id),
                         {self.customer})
        self.assertEqual(set(Timeline.with_user(self.rep_2).search(both).partner_id),
                         {self.other_customer})
        self.assertFalse(self.other_customer.with_user(self.rep_1).drip_timeline_ids)
        foreign = Timeline.search([("partner_id", "=", self.other_customer.id)])
        self.assertTrue(foreign)
        with self.assertRaises(AccessError):
            foreign.with_user(self.rep_1).read(["summary"])
        self.assertEqual(set(Timeline.with_user(self.manager).search(both).partner_id),
                         {self.customer, self.other_customer}, "managers see every customer")

        # A contact of a company customer follows the company's salesperson.
        contact = self.env["res.partner"].create(
            {"name": "Mia's colleague", "parent_id": self.customer.id}
        )
        contact._drip_set_consent("sms", "opted_out", "backend")
        self.assertTrue(Timeline.with_user(self.rep_1).search([("partner_id", "=", contact.id)]))
        self.assertFalse(Timeline.with_user(self.rep_2).search([("partner_id", "=", contact.id)]))

        # Switching the setting off takes effect at once (no cached rule).
        self.env.company.drip_timeline_own_customers_only = False
        self.assertTrue(foreign.with_user(self.rep_1).read(["summary"]))

    def test_other_companies_stay_hidden(self):
        other_company = self.env["res.company"].create({"name": "Other shop"})
        self.customer.company_id = other_company
        self.assertFalse(self.env["drip.timeline"].with_user(self.rep_1).search(
            [("partner_id", "=", self.customer.id), ("kind", "=", "consent")]
        ))
