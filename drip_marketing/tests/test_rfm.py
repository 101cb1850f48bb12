import random
from datetime import timedelta

from odoo import Command, fields
from odoo.tests import TransactionCase, tagged

from ..engine import rfm

LAST_RUN = "drip_marketing.rfm_last_run"


@tagged("post_install", "-at_install")
class TestRfm(TransactionCase):
    """RFM on a dataset small enough to check by hand (see the comments)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.now = fields.Datetime.now().replace(microsecond=0)
        usd = cls.env.ref("base.USD")
        cls.eur = cls.env.ref("base.EUR")
        cls.eur.active = True
        # Each company scores against its own customers: demo orders of the main company
        # cannot disturb these populations.
        cls.company_a = cls.env["res.company"].create(
            {"name": "RFM Store A", "currency_id": usd.id, "drip_rfm_window_days": 365}
        )
        cls.company_b = cls.env["res.company"].create(
            {"name": "RFM Store B", "currency_id": usd.id, "drip_rfm_window_days": 30}
        )
        cls.env.user.company_ids |= cls.company_a | cls.company_b
        # 1 USD = 2 EUR in store A: a 400 EUR order is worth 200 USD there.
        cls.env["res.currency.rate"].create({
            "currency_id": cls.eur.id, "rate": 2.0, "name": "2000-01-01",
            "company_id": cls.company_a.id,
        })
        cls.eur_pricelist = cls.env["product.pricelist"].create({
            "name": "EUR", "currency_id": cls.eur.id, "company_id": cls.company_a.id,
        })
        cls.product = cls.env["product.product"].create(
            {"name": "Tea", "type": "service", "list_price": 1.0, "taxes_id": False}
        )
        Partner = cls.env["res.partner"]
        cls.a, cls.b, cls.c, cls.d, cls.e, cls.f, cls.x, cls.y, cls.s = Partner.create([
            {"name": name} for name in ("A", "B", "C", "D", "E", "F", "X", "Y", "S")
        ])
        cls.e.company_id = cls.company_a
        cls.g = Partner.create({"name": "G Ltd", "is_company": True})
        cls.g_contact = Partner.create({"name": "G buyer", "parent_id": cls.g.id})

        order = cls._order
        # Store A (window 365 days), five scored customers:
        #            recency  frequency  monetary (USD)
        #   A        10       2          300    (+ an order 400 days ago, outside)
        #   B        10       1          300
        #   C        200      1          50     (+ a cancelled order, a quotation)
        #   D        30       1          200    (400 EUR at 2 EUR per USD)
        #   E        100      4          100
        order(cls.a, 100, 10)
        order(cls.a, 200, 50)
        order(cls.a, 1000, 400)
        order(cls.b, 300, 10)
        order(cls.c, 50, 200)
        order(cls.c, 999, 5, state="cancel")
        order(cls.c, 999, 5, state="draft")
        order(cls.d, 400, 30, pricelist=cls.eur_pricelist)
        for days in (100, 120, 150, 180):
            order(cls.e, 25, days)
        order(cls.f, 500, 3, state="cancel")  # F: only a cancelled order, no score
        # Store B (window 30 days): X only outside the window; G through its contact;
        # S also bought in store A (60 days ago) but last in B, so is scored in B.
        order(cls.x, 100, 40, company=cls.company_b)
        order(cls.g_contact, 100, 5, company=cls.company_b)
        order(cls.g_contact, 100, 10, company=cls.company_b)
        order(cls.y, 50, 20, company=cls.company_b)
        order(cls.s, 500, 60)
        order(cls.s, 70, 3, company=cls.company_b)

    @classmethod
    def _order(cls, partner, amount, days_ago, company=None, pricelist=None, state="sale"):
        company = company or cls.company_a
        vals = {
            "partner_id": partner.id,
            "company_id": company.id,
            "order_line": [Command.create({
                "product_id": cls.product.id, "product_uom_qty": 1, "price_unit": amount,
                "tax_id": False,
            })],
        }
        if pricelist:
            vals["pricelist_id"] = pricelist.id
        order = cls.env["sale.order"].with_company(company).create(vals)
        if state == "sale":
            order.action_confirm()
        elif state == "cancel":
            order._action_cancel()
        order.date_order = cls.now - timedelta(days=days_ago)
        return order

    def recompute(self):
        return self.env["res.partner"]._drip_recompute_rfm(now=self.now)

    def scores(self, partner):
        return (partner.drip_rfm_r, partner.drip_rfm_f, partner.drip_rfm_m,
                partner.drip_rfm_score, partner.drip_rfm_segment)

    def test_hand_checked_scores(self):
        # A stale score of a customer who no longer has orders in the window is cleared.
        self.env.cr.execute(
            "UPDATE res_partner SET drip_rfm_r = 5, drip_rfm_f = 5, drip_rfm_m = 5, "
            "drip_rfm_score = '555', drip_rfm_segment = 'champions' WHERE id = %s",
            [self.x.id],
        )
        self.env["res.partner"].invalidate_model()
        self.recompute()
        # Store A. Recency (days, fewer is better): 10,10,30,100,200 — a value scores
        # 1 + 5 * (values strictly worse) // (n - 1): A,B 4, D 3, E 2, C 1 (ties share).
        # Frequency 2,1,1,1,4: A 4, B/C/D 1, E 5. Monetary 300,300,50,200,100: A/B 4,
        # D 3, E 2, C 1. Segments from R and FM = (F + M + 1) // 2.
        self.assertEqual(self.scores(self.a), (4, 4, 4, "444", "loyal"))
        self.assertEqual(self.scores(self.b), (4, 1, 4, "414", "potential_loyalist"))
        self.assertEqual(self.scores(self.c), (1, 1, 1, "111", "lost"))
        self.assertEqual(self.scores(self.d), (3, 1, 3, "313", "about_to_sleep"))
        self.assertEqual(self.scores(self.e), (2, 5, 2, "252", "at_risk"))
        # Store B (30 days): recency S 3, G 5, Y 20 → 5, 3, 1; frequency S 1, G 2, Y 1
        # → 1, 5, 1; monetary S 70, G 200, Y 50 → 3, 5, 1.
        self.assertEqual(self.scores(self.s), (5, 1, 3, "513", "potential_loyalist"))
        self.assertEqual(self.scores(self.g), (3, 5, 5, "355", "loyal"))
        self.assertEqual(self.scores(self.y), (1, 1, 1, "111", "lost"))
        # No confirmed order in the window: no score at all, not 1-1-1.
        for partner in (self.f, self.x, self.g_contact):
            self.assertEqual(self.scores(partner), (0, 0, 0, False, False), partner.name)
            self.assertFalse(partner.drip_last_order_date)
        # Aggregates: company currency, confirmed orders of the window only.
        self.assertEqual(self.a.drip_order_count, 2)
        self.assertAlmostEqual(self.a.drip_revenue, 300.0)
        self.assertAlmostEqual(self.d.drip_revenue, 200.0)
        self.assertEqual(self.c.drip_order_count, 1)
        self.assertEqual(self.g.drip_order_count, 2)
        self.assertEqual(self.s.drip_order_count, 1, "only store B's order")
        self.assertAlmostEqual(self.s.drip_revenue, 70.0)
        self.assertEqual(self.a.drip_rfm_recency_days, 10)
        self.assertEqual(self.c.drip_rfm_recency_days, 200)
        self.assertEqual(self.a.drip_rfm_computed_at, self.now)

    def test_recency_days_search(self):
        self.recompute()
        Partner = self.env["res.partner"]
        ours = [("id", "in", (self.a | self.b | self.c | self.d | self.e | self.f).ids)]
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", ">", 30)]),
                         self.c | self.e)
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", ">=", 30)]),
                         self.c | self.d | self.e)
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", "<", 30)]),
                         self.a | self.b)
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", "<=", 30)]),
                         self.a | self.b | self.d)
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", "=", 10)]),
                         self.a | self.b)
        self.assertEqual(Partner.search(ours + [("drip_rfm_recency_days", "!=", 10)]),
                         self.c | self.d | self.e | self.f)

    def test_rerun_writes_only_changes_and_records_segment_changes(self):
        params = self.env["ir.config_parameter"].sudo()
        params.set_param(LAST_RUN, False)
        events = self.env["drip.event"].search_count
        rfm_type = self.env.ref("drip_marketing.event_type_rfm_segment_changed")
        ours = self.a | self.b | self.c | self.d | self.e | self.s | self.g | self.y
        self.assertGreaterEqual(self.recompute(), len(ours))
        self.assertEqual(
            events([("event_type_id", "=", rfm_type.id), ("partner_id", "in", ours.ids)]), 0,
            "the first run records no segment events: everyone would change at once",
        )
        self.assertTrue(params.get_param(LAST_RUN))
        self.assertEqual(self.recompute(), 0, "nothing changed, nothing written")

        before = {partner: partner.drip_rfm_segment for partner in ours}
        self._order(self.c, 80, 1)  # C buys again: recent now, and spends more
        changed = self.recompute()
        self.assertGreater(changed, 0)
        moved = {p for p in ours if p.drip_rfm_segment != before[p]}
        self.assertIn(self.c, moved)
        recorded = self.env["drip.event"].search(
            [("event_type_id", "=", rfm_type.id), ("partner_id", "in", ours.ids)]
        )
        self.assertEqual(set(recorded.partner_id), moved)
        event_c = recorded.filtered(lambda ev: ev.partner_id == self.c)
        self.assertEqual(event_c.payload["old"], "lost")
        self.assertEqual(event_c.payload["new"], self.c.drip_rfm_segment)
        self.assertEqual(event_c.call_type, "internal")
        self.assertEqual(event_c.company_id, self.company_a)

    def test_cron_reports_progress(self):
        cron = self.env.ref("drip_marketing.ir_cron_recompute_rfm")
        self.assertEqual(cron.code, "model._cron_recompute_rfm()")
        self.env["res.partner"]._cron_recompute_rfm()
        self.assertEqual(self.a.drip_rfm_score, "444")


@tagged("post_install", "-at_install")
class TestRfmMatchesEngine(TransactionCase):
    """The SQL scores equal engine.rfm.score_partners on random data with many ties."""

    def test_random_data(self):
        rng = random.Random(20261123)
        now = fields.Datetime.now().replace(microsecond=0)
        company = self.env["res.company"].create(
            {"name": "Random Store", "drip_rfm_window_days": 180}
        )
        partners = self.env["res.partner"].create(
            [{"name": f"Random {n}"} for n in range(60)]
        )
        orders, expected = [], {}
        for partner in partners:
            rows = [(rng.choice([0, 1, 1, 7, 30, 30, 90, 179, 200]),
                     rng.choice([10, 20, 20, 35.5, 100, 250]))
                    for _n in range(rng.randint(1, 5))]
            window = [(days, amount) for days, amount in rows if days <= 179]
            if window:
                expected[partner.id] = (min(d for d, _a in window), len(window),
                                        sum(a for _d, a in window))
            orders += [(partner, days, amount) for days, amount in rows]
        records = self.env["sale.order"].with_company(company).create([
            {"partner_id": partner.id, "company_id": company.id, "state": "sale",
             "date_order": now - timedelta(days=days)}
            for partner, days, _amount in orders
        ])
        self.env.flush_all()
        self.env.cr.execute(
            "UPDATE sale_order o SET amount_untaxed = v.amount, currency_rate = 1 "
            "FROM unnest(%s::int[], %s::numeric[]) AS v(id, amount) WHERE o.id = v.id",
            [records.ids, [amount for _p, _d, amount in orders]],
        )
        self.env.invalidate_all()
        self.env["res.partner"]._drip_recompute_rfm(now=now)

        reference = rfm.score_partners(
            (pid, rec, freq, mon) for pid, (rec, freq, mon) in expected.items()
        )
        for partner in partners:
            with self.subTest(partner=partner.name):
                if partner.id not in reference:
                    self.assertFalse(partner.drip_rfm_segment)
                    continue
                r, f, m = reference[partner.id]
                self.assertEqual(
                    (partner.drip_rfm_r, partner.drip_rfm_f, partner.drip_rfm_m), (r, f, m)
                )
                self.assertEqual(partner.drip_rfm_segment, rfm.segment_for(r, f, m))
                self.assertEqual(partner.drip_rfm_score, f"{r}{f}{m}")
                self.assertEqual(partner.drip_order_count, expected[partner.id][1])
                self.assertAlmostEqual(partner.drip_revenue, expected[partner.id][2])
