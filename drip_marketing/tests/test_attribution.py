from datetime import timedelta

from odoo import fields
from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestAttribution(DripCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.product = cls.env.ref("product.product_product_4")
        cls.enrollment = cls.env["drip.enrollment"].create(
            {"journey_id": cls.journey.id, "partner_id": cls.customer.id}
        )

    def touched(self, step, **stamps):
        return self.env["drip.message"].create(
            dict(
                {
                    "enrollment_id": self.enrollment.id,
                    "step_id": step.id,
                    "state": "sent",
                    "scheduled_at": fields.Datetime.now() - timedelta(days=10),
                    "sent_at": fields.Datetime.now() - timedelta(days=10),
                },
                **stamps,
            )
        )

    def confirmed_order(self, **values):
        order = self.env["sale.order"].create(
            dict(
                {
                    "partner_id": self.customer.id,
                    "order_line": [
                        (
                            0,
                            0,
                            {
                                "product_id": self.product.id,
                                "product_uom_qty": 2,
                                "price_unit": 50.0,
                                "tax_id": [(5, 0, 0)],
                            },
                        )
                    ],
                },
                **values,
            )
        )
        order.action_confirm()
        return order

    def test_last_touch_within_the_window_gets_the_order_once(self):
        now = fields.Datetime.now()
        older = self.touched(self.step_first, opened_at=now - timedelta(days=3))
        latest = self.touched(
            self.step_second, clicked_at=now - timedelta(days=1), opened_at=now - timedelta(days=1)
        )
        order = self.confirmed_order()
        self.assertEqual(order.drip_attributed_message_id, latest)
        self.assertEqual(latest.conversion_order_id, order)
        self.assertAlmostEqual(latest.revenue, 100.0)
        self.assertFalse(older.revenue)
        self.assertAlmostEqual(self.enrollment.revenue, 100.0)
        order._drip_attribute()  # a second pass never counts it twice
        self.assertAlmostEqual(latest.revenue, 100.0)
        self.assertEqual(order.drip_attributed_journey_id, self.journey)

    def test_touch_outside_the_window_gets_nothing(self):
        self.company.drip_attribution_window_days = 5
        stale = self.touched(self.step_first, clicked_at=fields.Datetime.now() - timedelta(days=6))
        order = self.confirmed_order()
        self.assertFalse(order.drip_attributed_message_id)
        self.assertFalse(stale.converted_at)

    def test_revenue_in_company_currency(self):
        other = self.env["res.currency"].create(
            {"name": "DRP", "symbol": "Ð", "rounding": 0.01, "active": True}
        )
        self.env["res.currency.rate"].create(
            {
                "currency_id": other.id,
                "rate": 2.0,
                "name": fields.Date.today() - timedelta(days=1),
                "company_id": self.company.id,
            }
        )
        pricelist = self.env["product.pricelist"].create(
            {"name": "Other currency", "currency_id": other.id}
        )
        message = self.touched(
            self.step_first, opened_at=fields.Datetime.now() - timedelta(hours=2)
        )
        order = self.confirmed_order(pricelist_id=pricelist.id)
        self.assertEqual(order.currency_id, other)
        self.assertEqual(order.drip_attributed_message_id, message)
        self.assertAlmostEqual(message.revenue, order.amount_untaxed / order.currency_rate)
        self.assertAlmostEqual(message.revenue, 50.0)

    def test_confirmation_exits_journeys_whose_goal_it_meets(self):
        self.journey.action_start()
        order = self.confirmed_order()
        self.assertEqual(self.enrollment.state, "exited")
        self.assertEqual(self.enrollment.exit_reason, "goal_reached")
        self.assertTrue(order)
