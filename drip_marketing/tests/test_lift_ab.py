import math
from datetime import datetime, timedelta
from statistics import NormalDist

from odoo.tests import freeze_time, tagged

from .common import DripCase

NOW = datetime(2026, 3, 10, 12, 0, 0)
Z95 = NormalDist().inv_cdf(0.975)


@tagged("post_install", "-at_install")
@freeze_time(NOW)
class TestLift(DripCase):
    """Holdout lift on synthetic entrants with a known effect, and with none."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.journey.write({"holdout_percent": 50, "lift_min_sample": 100,
                           "lift_window_days": 7})
        cls.crowd = cls.env["res.partner"].create(
            [{"name": f"Entrant {i}", "email": f"e{i}@example.com"} for i in range(800)])
        cls.order_template = cls.env["sale.order"].create({"partner_id": cls.customer.id})
        cls.env.flush_all()

    def build(self, treated_rate, holdout_rate, amount=100.0, n=400, journey=None,
              entered_at=NOW - timedelta(days=20)):
        """``n`` treated and ``n`` holdout entrants; the first ``rate * n`` of each group
        confirm one order of ``amount`` three days after entering."""
        journey = journey or self.journey
        treated, holdout = self.crowd[:n], self.crowd[n:2 * n]
        buyers = []
        for group, rate, held in ((treated, treated_rate, False), (holdout, holdout_rate, True)):
            self.env["drip.enrollment"].create([
                {"journey_id": journey.id, "partner_id": p.id, "entered_at": entered_at,
                 "is_holdout": held} for p in group])
            buyers += group[:round(rate * n)].ids
        self.orders(buyers, entered_at + timedelta(days=3), amount)
        return treated, holdout

    def orders(self, partner_ids, when, amount):
        """Confirmed orders in one INSERT (copies of an ORM-made order)."""
        cr = self.env.cr
        cr.execute("SELECT column_name FROM information_schema.columns "
                   "WHERE table_name = 'sale_order' AND column_name <> 'id'")
        columns = [row[0] for row in cr.fetchall()]
        overrides = {"partner_id": "p", "partner_invoice_id": "p", "partner_shipping_id": "p",
                     "name": "'LIFT' || p", "state": "'sale'", "date_order": "%(when)s",
                     "amount_untaxed": "%(amount)s", "amount_total": "%(amount)s",
                     "currency_rate": "1"}
        cr.execute(
            f"""
            INSERT INTO sale_order ({', '.join(f'"{c}"' for c in columns)})
            SELECT {', '.join(overrides.get(c, f't."{c}"') for c in columns)}
              FROM sale_order t, unnest(%(partners)s::int[]) AS p
             WHERE t.id = %(template)s
            """,
            {"partners": partner_ids, "when": when, "amount": amount,
             "template": self.order_template.id},
        )
        self.env["sale.order"].invalidate_model()

    def test_known_effect(self):
        self.build(0.30, 0.10)
        journey = self.journey
        self.assertEqual(journey.lift_state, "measured")
        self.assertEqual((journey.lift_treated_count, journey.lift_holdout_count), (400, 400))
        self.assertAlmostEqual(journey.lift_treated_rate, 0.30)
        self.assertAlmostEqual(journey.lift_holdout_rate, 0.10)
        self.assertAlmostEqual(journey.lift_rate_diff, 0.20)
        # Independently: the Wald interval by hand.
        half = Z95 * math.sqrt(0.3 * 0.7 / 400 + 0.1 * 0.9 / 400)
        self.assertAlmostEqual(journey.lift_rate_low, 0.20 - half, places=6)
        self.assertAlmostEqual(journey.lift_rate_high, 0.20 + half, places=6)
        self.assertGreater(journey.lift_rate_low, 0, "a real effect: the interval excludes 0")
        # Revenue per entrant: 30 vs 10; Welch with sample variances of 0/100 data.
        self.assertAlmostEqual(journey.lift_treated_rpe, 30.0)
        self.assertAlmostEqual(journey.lift_holdout_rpe, 10.0)
        self.assertAlmostEqual(journey.lift_rpe_diff, 20.0)
        var_t = 100 ** 2 * 0.3 * 0.7 * 400 / 399
        var_h = 100 ** 2 * 0.1 * 0.9 * 400 / 399
        se = math.sqrt(var_t / 400 + var_h / 400)
        self.assertTrue(journey.lift_rpe_low < 20.0 < journey.lift_rpe_high)
        # df ≈ 690 here: t(0.975) is within 0.01 of z.
        self.assertAlmostEqual(journey.lift_rpe_high - 20.0, 1.963 * se, delta=0.01 * se + 0.01)
        self.assertGreater(journey.lift_rpe_low, 0)
        self.assertIn("raises conversion", journey.lift_summary)

    def test_no_effect(self):
        self.build(0.20, 0.20)
        journey = self.journey
        self.assertEqual(journey.lift_state, "measured")
        self.assertAlmostEqual(journey.lift_rate_diff, 0.0)
        self.assertLess(journey.lift_rate_low, 0)
        self.assertGreater(journey.lift_rate_high, 0)
        self.assertLess(journey.lift_rpe_low, 0)
        self.assertGreater(journey.lift_rpe_high, 0)
        self.assertIn("chance", journey.lift_summary)

    def test_not_enough_data_below_the_minimum(self):
        self.journey.lift_min_sample = 500
        self.build(0.30, 0.10)
        self.assertEqual(self.journey.lift_state, "not_enough")
        self.assertIn("Not enough data yet", self.journey.lift_summary)
        self.assertFalse(self.journey.lift_rate_diff)

    def test_entrants_still_in_their_window_wait(self):
        self.build(0.30, 0.10, entered_at=NOW - timedelta(days=2))
        self.assertEqual(self.journey.lift_state, "not_enough")
        self.assertEqual(self.journey.lift_treated_count, 0)

    def test_orders_after_the_window_do_not_count(self):
        self.journey.lift_window_days = 2  # orders come 3 days after entry
        self.build(0.30, 0.10)
        self.assertEqual(self.journey.lift_state, "measured")
        self.assertAlmostEqual(self.journey.lift_treated_rate, 0.0)

    def test_no_holdout(self):
        journey = self.env["drip.journey"].create(
            {"name": "No holdout", "trigger": "partner_created"})
        self.assertEqual(journey.lift_state, "no_holdout")


@tagged("post_install", "-at_install")
@freeze_time(NOW)
class TestABWinner(DripCase):
    """An A/B split promotes its best branch only past the minimum and when significant."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.write({"drip_quiet_hours_start": 0, "drip_quiet_hours_end": 0})
        Step = cls.env["drip.step"]
        cls.ab = cls.env["drip.journey"].create(
            {"name": "Welcome A/B", "trigger": "partner_created"})
        cls.split = Step.create({"journey_id": cls.ab.id, "name": "Subject test",
                                 "step_type": "split", "split_metric": "click",
                                 "split_min_sample": 50})
        cls.branch_a, cls.branch_b = [
            Step.create({"journey_id": cls.ab.id, "name": name, "parent_id": cls.split.id,
                         "step_type": "send", "step_trigger": "branch", "split_weight": 50,
                         "template_id": cls.template.id, "channel": "email"})
            for name in ("Subject A", "Subject B")
        ]
        cls.ab.action_start()
        cls.people = cls.env["res.partner"].create(
            [{"name": f"AB {i}", "email": f"ab{i}@example.com"} for i in range(300)])

    def participants(self, branch, people, clicks=0, revenue=None):
        """``people`` reached ``branch`` (one sent message each); the first ``clicks``
        clicked, with an attributed ``revenue`` on those if given."""
        sent = NOW - timedelta(days=2)
        enrollments = self.env["drip.enrollment"].create([
            {"journey_id": self.ab.id, "partner_id": p.id, "entered_at": sent} for p in people])
        values = []
        for index, enrollment in enumerate(enrollments):
            clicked = index < clicks
            values.append({
                "enrollment_id": enrollment.id, "step_id": branch.id, "state": "sent",
                "scheduled_at": sent, "sent_at": sent,
                "clicked_at": sent + timedelta(hours=1) if clicked else False,
                "opened_at": sent + timedelta(hours=1) if clicked else False,
                "converted_at": sent + timedelta(days=1) if clicked and revenue else False,
                "revenue": revenue if clicked and revenue else 0.0,
            })
        self.env["drip.message"].create(values)

    def test_no_promotion_below_the_minimum_sample(self):
        self.participants(self.branch_a, self.people[:40], clicks=30)
        self.participants(self.branch_b, self.people[40:80], clicks=2)
        self.env["drip.step"]._cron_promote_ab_winners()
        self.assertFalse(self.split.split_winner_id, "40 per branch < 50: wait")
        self.assertEqual(self.split._promote_ab_winner().status, "not_enough")

    def test_no_promotion_without_significance(self):
        self.participants(self.branch_a, self.people[:60], clicks=12)
        self.participants(self.branch_b, self.people[60:120], clicks=10)
        self.env["drip.step"]._cron_promote_ab_winners()
        self.assertFalse(self.split.split_winner_id)
        verdict = self.split._promote_ab_winner()
        self.assertEqual(verdict.status, "not_significant")
        self.assertEqual(verdict.best, self.branch_a.id)

    def test_promotion_then_routing_then_undo(self):
        self.participants(self.branch_a, self.people[:60], clicks=30)
        self.participants(self.branch_b, self.people[60:120], clicks=6)
        self.env["drip.step"]._cron_promote_ab_winners()
        self.assertEqual(self.split.split_winner_id, self.branch_a)
        self.assertTrue(self.split.split_promoted_at)
        reason = self.split.split_winner_reason
        self.assertIn("50.0 %", reason)
        self.assertIn("10.0 %", reason)
        self.assertIn("z-test", reason)
        chatter = self.ab.message_ids.mapped("body")
        self.assertTrue(any("promoted" in body and "Subject A" in body for body in chatter))
        # New entrants all take the winner (the engine's _run_split reads split_winner_id).
        newcomers = self.people[200:230]
        self.ab._enroll_partners(newcomers, now=NOW)
        self.env["drip.message"]._run_due(limit=1000, now=NOW)
        branch_rows = self.env["drip.message"].search(
            [("partner_id", "in", newcomers.ids), ("step_id", "in",
                                                   (self.branch_a | self.branch_b).ids)])
        self.assertEqual(len(branch_rows), 30)
        self.assertEqual(branch_rows.step_id, self.branch_a)
        # Undo: weights again, and the cron does not promote it back.
        self.split.action_undo_winner()
        self.assertFalse(self.split.split_winner_id)
        self.assertFalse(self.split.split_auto_promote)
        self.env["drip.step"]._cron_promote_ab_winners()
        self.assertFalse(self.split.split_winner_id)
        self.assertTrue(any("undone" in body for body in self.ab.message_ids.mapped("body")))
        later = self.people[230:290]
        self.ab._enroll_partners(later, now=NOW)
        self.env["drip.message"]._run_due(limit=1000, now=NOW)
        taken = self.env["drip.message"].search(
            [("partner_id", "in", later.ids), ("step_id", "in",
                                               (self.branch_a | self.branch_b).ids)]).step_id
        self.assertEqual(taken, self.branch_a | self.branch_b, "split by weight again")

    def test_revenue_metric_uses_welch(self):
        self.split.split_metric = "revenue"
        self.participants(self.branch_a, self.people[:80], clicks=40, revenue=50.0)
        self.participants(self.branch_b, self.people[80:160], clicks=10, revenue=50.0)
        verdict = self.split._promote_ab_winner()
        self.assertEqual(verdict.status, "winner")
        self.assertEqual(self.split.split_winner_id, self.branch_a)
        self.assertIn("Welch", self.split.split_winner_reason)
        comparison = verdict.comparisons[0]
        self.assertAlmostEqual(comparison.interval.estimate1, 25.0)
        self.assertAlmostEqual(comparison.interval.estimate2, 6.25)

    def test_holdout_participants_are_left_out(self):
        self.participants(self.branch_a, self.people[:60], clicks=30)
        self.participants(self.branch_b, self.people[60:120], clicks=6)
        self.env["drip.enrollment"].search([("journey_id", "=", self.ab.id)]).write(
            {"is_holdout": True})
        self.assertEqual(self.split._promote_ab_winner().status, "not_enough")
