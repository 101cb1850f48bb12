from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from odoo import fields
from odoo.exceptions import ValidationError
from odoo.tests import tagged

from ..engine import besttime, scoring
from ..engine.schedule import hour_of_week
from .common import DripCase


def berlin(day, hour, minute=0):
    """Naive UTC of ``hour:minute`` on ``day`` in Berlin (summer or winter time)."""
    local = datetime(day.year, day.month, day.day, hour, minute, tzinfo=ZoneInfo("Europe/Berlin"))
    return local.astimezone(timezone.utc).replace(tzinfo=None)


def crm_bridge_installed(env):
    module = env["ir.module.module"].search([("name", "=", "drip_marketing_crm")])
    return module.state == "installed"


@tagged("post_install", "-at_install")
class TestPredictions(DripCase):
    """Engagement score, hand-off, BG/NBD churn risk and best time, refreshed set-based.

    Times are relative to the test transaction's timestamp ``T``: that is the
    ``write_date`` of every record created here, so a refresh "at T - 2 days" sees them
    as recorded after it, as facts arriving between two passes would be.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.T = cls.env.cr.now().replace(microsecond=0)
        cls.Prediction = cls.env["drip.prediction"]
        cls.company.write({
            "drip_score_half_life_days": 30.0,
            "drip_handoff_threshold": 40.0,
        })
        # The shipped rules, made explicit so the test does not depend on edits to them.
        Rule = cls.env["drip.scoring.rule"].with_context(active_test=False)
        Rule.search([]).write({"active": False})
        cls.points = dict(scoring.DEFAULT_POINTS)
        Rule.create([{"kind": kind, "points": value} for kind, value in cls.points.items()])
        cls.salesperson = cls.rep
        cls.hot = cls.env["res.partner"].create({
            "name": "Hot Lead", "email": "hot@example.com", "user_id": cls.salesperson.id,
            "tz": "Europe/Berlin",
        })
        cls.cold = cls.env["res.partner"].create({"name": "Cold", "email": "cold@example.com"})
        cls.product = cls.env["product.product"].create({"name": "Espresso beans"})
        cls.view_type = cls.env.ref("drip_marketing.event_type_product_viewed")
        cls._message_seq = 0

    # ------------------------------------------------------------------ helpers
    def message(self, partner, **stamps):
        """A ledger row of ``partner`` with engagement stamps (opened_at=…, clicked_at=…)."""
        type(self)._message_seq += 1
        enrollment = self.enroll(partner=partner, source_ref=f"test,{self._message_seq}")
        return self.env["drip.message"].create(dict({
            "enrollment_id": enrollment.id,
            "step_id": self.step_first.id,
            "scheduled_at": self.T - timedelta(days=60),
            "state": "sent",
            "subject": "Spring sale",
            "idempotency_key": f"test-prediction-{self._message_seq}",
        }, **stamps))

    def view(self, partner, at):
        return self.env["drip.event"].create({
            "name": "product_viewed", "event_type_id": self.view_type.id,
            "partner_id": partner.id, "occurred_at": at, "product_id": self.product.id,
        })

    def orders(self, partner, dates):
        return self.env["sale.order"].create([
            {"partner_id": partner.id, "date_order": when, "state": "sale"} for when in dates
        ])

    def refresh(self, now, **kwargs):
        self.Prediction._refresh_engagement(now=now, **kwargs)

    def expected_score(self, facts, now):
        return scoring.score([scoring.Fact(kind, at) for kind, at in facts], now, 30.0,
                             self.points)

    def crossed_events(self, partner):
        return self.env["drip.event"].search([
            ("partner_id", "=", partner.id), ("event_type_id.code", "=", "score_crossed"),
        ])

    # ------------------------------------------------------------------ scoring
    def test_scoring_rules_and_decay(self):
        # First pass well after the facts were recorded (beyond the watermark overlap):
        # the later pass finds nothing new and takes the closed-form decay path.
        t0 = self.T + timedelta(minutes=30)
        self.message(self.cold, opened_at=t0 - timedelta(days=20),
                     clicked_at=t0 - timedelta(days=19))
        self.view(self.cold, t0 - timedelta(days=5))
        self.orders(self.cold, [t0 - timedelta(days=40)])
        facts = [("open", t0 - timedelta(days=20)), ("click", t0 - timedelta(days=19)),
                 ("product_view", t0 - timedelta(days=5)), ("order", t0 - timedelta(days=40))]
        self.refresh(t0, full=True)
        self.assertAlmostEqual(self.cold.drip_engagement_score, self.expected_score(facts, t0), 1)
        self.assertEqual(self.cold.drip_engagement_at, t0)
        # Thirty days later without a fact, the score has halved (the decay-only path:
        # nothing of this customer was recorded since the first pass).
        state = self.Prediction._get_state("engagement")
        self.assertNotIn(self.cold.id, self.Prediction._dirty_partners(
            0, 10**9, t0, state["event_id"], t0 + timedelta(days=30)))
        self.refresh(t0 + timedelta(days=30))
        self.assertAlmostEqual(
            self.cold.drip_engagement_score, self.expected_score(facts, t0) / 2, 1
        )
        # An unscored, then a company-specific rule: the next pass recomputes in full.
        self.env["drip.scoring.rule"].create(
            {"kind": "order", "points": 50, "company_id": self.company.id}
        )
        self.refresh(t0 + timedelta(days=30))
        self.points["order"] = 50
        self.assertAlmostEqual(
            self.cold.drip_engagement_score,
            self.expected_score(facts, t0 + timedelta(days=30)), 1,
        )

    def test_new_facts_are_picked_up_incrementally(self):
        first = self.T - timedelta(days=2)
        self.refresh(first, full=True)
        # Recorded after the first pass (write_date T), happened a day before T.
        self.message(self.cold, opened_at=self.T - timedelta(days=1))
        self.refresh(self.T)
        self.assertAlmostEqual(
            self.cold.drip_engagement_score,
            self.expected_score([("open", self.T - timedelta(days=1))], self.T), 2,
        )

    def test_unsubscribe_floors_the_score_at_zero(self):
        t0 = self.T - timedelta(days=1)
        self.message(self.cold, opened_at=t0 - timedelta(days=3),
                     unsubscribed_at=t0 - timedelta(days=2))
        self.refresh(t0, full=True)
        self.assertEqual(self.cold.drip_engagement_score, 0.0)

    def test_one_rule_per_kind_and_company(self):
        with self.assertRaises(ValidationError):
            self.env["drip.scoring.rule"].create({"kind": "open", "points": 2})
        # A company's own rule next to the shared one is fine.
        self.env["drip.scoring.rule"].create(
            {"kind": "open", "points": 2, "company_id": self.company.id}
        )
        points = self.env["drip.scoring.rule"]._points_by_company(self.company)
        self.assertEqual(points[self.company.id]["open"], 2)
        self.assertEqual(points[self.company.id]["click"], 3)

    def test_settings_are_validated(self):
        with self.assertRaises(ValidationError):
            self.company.drip_score_half_life_days = 0
        with self.assertRaises(ValidationError):
            self.company.write({"drip_churn_lapsed_below": 0.6, "drip_churn_at_risk_below": 0.5})

    # ------------------------------------------------------------------ crossing and hand-off
    def hot_facts(self, at):
        """1 + 3 + 2 + 4 x 10 = 46 points, above the hand-off threshold of 40."""
        self.message(self.hot, opened_at=at, clicked_at=at)
        self.view(self.hot, at)
        self.orders(self.hot, [at - timedelta(hours=h) for h in range(4)])

    def test_threshold_crossing_hands_off_once(self):
        t0 = self.T - timedelta(days=3)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.hot_facts(t0 - timedelta(hours=3))
        self.refresh(t0)
        score = self.hot.drip_engagement_score
        self.assertGreaterEqual(score, 40)
        events = self.crossed_events(self.hot)
        self.assertEqual(len(events), 1)
        self.assertEqual(events.payload["threshold"], 40.0)
        self.assertAlmostEqual(events.payload["score"], score, 1)
        self.assertEqual(events.call_type, "internal")
        if not crm_bridge_installed(self.env):
            activity = self.env["mail.activity"].search([
                ("res_model", "=", "res.partner"), ("res_id", "=", self.hot.id),
                ("activity_type_id", "=",
                 self.env.ref("drip_marketing.mail_activity_type_drip_handoff").id),
            ])
            self.assertEqual(activity.user_id, self.salesperson)
            # The reason names what weighs most in the score.
            self.assertIn("Order confirmed: S", activity.note)
            self.assertIn("Link clicked: Spring sale", activity.note)
        # Nothing new, a day later: no second crossing.
        self.refresh(t0 + timedelta(days=1))
        self.assertEqual(len(self.crossed_events(self.hot)), 1)
        # Months later it has fallen below; new facts raise it again: fires again.
        later = t0 + timedelta(days=90)
        self.refresh(later - timedelta(days=1))
        self.assertLess(self.hot.drip_engagement_score, 40)
        self.orders(self.hot, [later - timedelta(hours=1), later - timedelta(hours=2),
                               later - timedelta(hours=3), later - timedelta(hours=4)])
        self.refresh(later, full=True)
        self.assertEqual(len(self.crossed_events(self.hot)), 2)

    def test_fact_labels(self):
        event = self.view(self.cold, self.T)
        order = self.orders(self.cold, [self.T])
        labels = self.Prediction._fact_labels([
            (self.cold.id, "product_view", self.T, "drip.event", event.id, 2, 2),
            (self.cold.id, "order", self.T, "sale.order", order.id, 10, 10),
        ])
        self.assertEqual(labels[("drip.event", event.id, "product_view")],
                         "Product viewed: Espresso beans")
        self.assertEqual(labels[("sale.order", order.id, "order")],
                         f"Order confirmed: {order.name}")

    def test_no_salesperson_no_activity(self):
        t0 = self.T - timedelta(days=1)
        self.hot.user_id = False
        self.refresh(t0 - timedelta(days=1), full=True)
        self.hot_facts(t0 - timedelta(hours=3))
        activities = self.env["mail.activity"].search_count([])
        self.refresh(t0)
        self.assertEqual(len(self.crossed_events(self.hot)), 1)
        if not crm_bridge_installed(self.env):
            self.assertEqual(self.env["mail.activity"].search_count([]), activities)

    def test_score_crossed_journey_trigger_enrolls(self):
        journey = self.env["drip.journey"].create({
            "name": "Engaged", "trigger": "score_crossed", "trigger_score_threshold": 20.0,
        })
        self.env["drip.step"].create({
            "journey_id": journey.id, "name": "Thanks", "step_type": "send",
            "channel": "email", "template_id": self.template.id,
        })
        journey.action_start()
        t0 = self.T - timedelta(days=1)
        self.refresh(t0 - timedelta(days=1), full=True)
        self.orders(self.cold, [t0 - timedelta(hours=1), t0 - timedelta(hours=2),
                                t0 - timedelta(hours=3)])
        self.refresh(t0)
        events = self.crossed_events(self.cold)
        self.assertEqual(sorted(events.mapped(lambda e: e.payload["threshold"])), [20.0])
        journey._scan_triggers()
        self.assertIn(self.cold, journey.enrollment_ids.partner_id)

    def test_batches_and_cron_progress(self):
        """Small batches give the same scores as one pass, reporting what remains."""
        t0 = self.T - timedelta(days=1)
        self.hot_facts(t0 - timedelta(days=2))
        self.orders(self.cold, [t0 - timedelta(days=3)])
        done, remaining = self.Prediction._refresh_engagement_step(now=t0, full=True,
                                                                  batch_size=self.cold.id)
        self.assertGreater(remaining, 0)
        self.assertTrue(self.Prediction._get_state("engagement")["pass"])
        while remaining:
            done, remaining = self.Prediction._refresh_engagement_step(batch_size=self.cold.id)
        self.assertFalse(self.Prediction._get_state("engagement")["pass"])
        batched = (self.hot.drip_engagement_score, self.cold.drip_engagement_score)
        self.refresh(t0, full=True)
        self.assertEqual((self.hot.drip_engagement_score, self.cold.drip_engagement_score),
                         batched)
        self.Prediction._cron_refresh_engagement()  # no progress context: plain call

    # ------------------------------------------------------------------ buy till you die
    def test_churn_risk_and_next_order(self):
        now = self.T - timedelta(days=1)
        Partner = self.env["res.partner"]
        regulars = Partner.create([{"name": f"Regular {i}"} for i in range(15)])
        lapsed = Partner.create([{"name": f"Lapsed {i}"} for i in range(15)])
        once = Partner.create([{"name": f"Once {i}"} for i in range(15)])
        for i, partner in enumerate(regulars):
            self.orders(partner, [now - timedelta(days=3 + i % 5 + 21 * k) for k in range(25)])
        for i, partner in enumerate(lapsed):
            self.orders(partner, [now - timedelta(days=400 + i + 21 * k) for k in range(15)])
        for i, partner in enumerate(once):
            self.orders(partner, [now - timedelta(days=500 + 3 * i)])
        self.Prediction._refresh_btyd(now=now)
        params = self.company.drip_btyd_params
        self.assertTrue(params and params["n"] >= 45)
        self.assertTrue(self.env["res.config.settings"].create({}).drip_btyd_summary)
        self.assertEqual(set(regulars.mapped("drip_churn_risk")), {"low"})
        self.assertEqual(set(lapsed.mapped("drip_churn_risk")), {"lapsed"})
        self.assertLess(max(once.mapped("drip_expected_orders_90d")),
                        min(regulars.mapped("drip_expected_orders_90d")))
        for partner in regulars:
            self.assertGreater(partner.drip_p_alive, 0.8)
            self.assertGreater(partner.drip_expected_orders_90d, 2)
            self.assertTrue(now.date() < partner.drip_next_order_date
                            <= now.date() + timedelta(days=40))
        for partner in lapsed:
            self.assertLess(partner.drip_p_alive, 0.1)
            self.assertLess(partner.drip_expected_orders_90d, 0.2)
            self.assertFalse(partner.drip_next_order_date)
        # BG/NBD: a single order cannot have dropped out; its churn risk comes from the
        # low chance of an order within the horizon.
        self.assertEqual(set(once.mapped("drip_p_alive")), {1.0})
        # Cancelled history: predictions go away.
        self.env["sale.order"].search([("partner_id", "=", once[0].id)]).write(
            {"state": "cancel"})
        self.Prediction._refresh_btyd(now=now)
        self.assertFalse(once[0].drip_churn_risk)
        # The admin's thresholds decide the classes.
        self.company.drip_churn_lapsed_below = 0.0
        self.company.drip_churn_at_risk_below = 0.0
        self.Prediction._refresh_btyd(now=now)
        self.assertEqual(set(lapsed.mapped("drip_churn_risk")), {"low"})

    # ------------------------------------------------------------------ best time
    def test_best_time_rich_thin_and_none(self):
        now = self.T - timedelta(days=1)
        # Rich: ten Tuesdays at 19:15 Berlin time, on both sides of a DST change.
        tuesday = now - timedelta(days=(now.weekday() - 1) % 7 + 7)
        for week in range(10):
            self.message(self.hot, opened_at=berlin(tuesday - timedelta(weeks=week), 19, 15))
        # Thin: one order at 03:00 UTC on a Saturday, customer in UTC.
        thin = self.env["res.partner"].create({"name": "Thin", "tz": "UTC"})
        saturday = now - timedelta(days=(now.weekday() - 5) % 7 + 7)
        self.orders(thin, [saturday.replace(hour=3, minute=0, second=0)])
        self.Prediction._refresh_best_time(now=now)
        self.assertEqual(self.hot.drip_best_hour_of_week, 24 + 19)
        self.assertEqual(self.hot.drip_best_time_label, "Tuesday 19:00")
        self.assertEqual(self.cold.drip_best_hour_of_week, -1)
        self.assertEqual(self.cold.drip_best_time_label, "Store's usual time")
        self.assertTrue(thin.drip_best_time_histogram)
        pattern = self.company.drip_best_time_pattern
        self.assertEqual(len(pattern), 168)
        self.assertAlmostEqual(sum(pattern), 1.0, 4)
        # Scheduling weights: the thin customer's are close to the store's, the
        # customer without history gets exactly the store's.
        weights = self.Prediction._best_time_weights(thin | self.cold | self.hot)
        self.assertEqual(weights[self.cold.id][1], besttime.weights_for({}, pattern))
        thin_weights = weights[thin.id][1]
        distance = sum(abs(a - b) for a, b in zip(thin_weights, pattern)) / 2
        self.assertLessEqual(distance, 1 / (1 + besttime.DEFAULT_PRIOR_STRENGTH) + 1e-9)
        self.assertEqual(weights[self.hot.id][0], "Europe/Berlin")

    def test_send_step_goes_out_at_the_best_time(self):
        now = self.T - timedelta(days=1)
        tuesday = now - timedelta(days=(now.weekday() - 1) % 7 + 7)
        for week in range(6):
            self.message(self.hot, opened_at=berlin(tuesday - timedelta(weeks=week), 19, 5))
        self.Prediction._refresh_best_time(now=now)
        tag = self.env["res.partner.category"].create({"name": "VIP"})
        journey = self.env["drip.journey"].create(
            {"name": "Best time", "trigger": "tag_added", "trigger_tag_id": tag.id}
        )
        step = self.env["drip.step"].create({
            "journey_id": journey.id, "name": "Hello", "step_type": "send", "channel": "email",
            "template_id": self.template.id, "use_best_time": True,
            "best_time_window_hours": 168,
        })
        journey.action_start()
        entered = fields.Datetime.now()
        journey._enroll_partners(self.hot)
        message = self.env["drip.message"].search([("step_id", "=", step.id)])
        self.assertEqual(hour_of_week(message.scheduled_at, "Europe/Berlin"), 24 + 19)
        self.assertLessEqual(message.scheduled_at, entered + timedelta(hours=168, minutes=1))
