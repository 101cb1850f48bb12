from datetime import timedelta
from unittest.mock import patch

from odoo import fields
from odoo.sql_db import Cursor
from odoo.tests import tagged

from .common import DripCase


class RecommendationCase(DripCase):
    """A small shop with real co-purchase structure (see the comments on the orders)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        set_param = cls.env["ir.config_parameter"].sudo().set_param
        set_param("drip_marketing.reco_min_support", "2")
        set_param("drip_marketing.reco_repeat_rate", "0.25")
        set_param("drip_marketing.reco_repeat_min_customers", "4")
        cls.Affinity = cls.env["drip.product.affinity"]
        # A shop of its own: statistics are per company, so demo orders stay out.
        cls.shop = cls.env["res.company"].create(
            {"name": "Coffee & Co", "currency_id": cls.env.ref("base.USD").id})
        cls.env = cls.env(context=dict(
            cls.env.context, allowed_company_ids=[cls.shop.id, cls.company.id]))
        cls.kitchen = cls.env["product.category"].create({"name": "Kitchen"})
        cls.furniture = cls.env["product.category"].create({"name": "Furniture"})

        def product(name, price, categ, **values):
            vals = {"name": name, "list_price": price, "categ_id": categ.id, "sale_ok": True,
                    "type": "consu"}
            if "is_published" in cls.env["product.template"]._fields:
                vals["is_published"] = True
            vals.update(values)
            return cls.env["product.product"].create(vals)

        cls.espresso = product("Espresso beans", 10, cls.kitchen)
        cls.grinder = product("Grinder", 50, cls.kitchen)
        cls.cup = product("Cup", 5, cls.kitchen)
        cls.kettle = product("Kettle", 40, cls.kitchen)
        cls.sofa = product("Sofa", 500, cls.furniture)
        cls.lamp = product("Lamp", 60, cls.furniture)
        cls.rug = product("Rug", 120, cls.furniture)
        cls.c = {
            i: cls.env["res.partner"].create({"name": f"Customer {i}",
                                              "email": f"c{i}@example.com"})
            for i in range(1, 9)
        }
        cls.viewer = cls.env["res.partner"].create({"name": "Viewer", "email": "v@example.com"})
        day = fields.Datetime.now() - timedelta(days=30)
        baskets = [
            # espresso + grinder twice: the grinder sells only with espresso (high lift)
            (1, [cls.espresso, cls.grinder]), (2, [cls.espresso, cls.grinder]),
            # espresso + cup four times, but the cup sells everywhere (low lift)
            (3, [cls.espresso, cls.cup]), (4, [cls.espresso, cls.cup]),
            (5, [cls.espresso, cls.cup]), (6, [cls.espresso, cls.cup, cls.lamp]),
            # espresso + kettle once: below the minimum support of 2
            (1, [cls.espresso, cls.kettle]),
            # the cup is bought again and again: a repeat-purchase product
            (7, [cls.cup]), (7, [cls.cup]), (7, [cls.cup, cls.rug]),
            (8, [cls.cup]), (8, [cls.cup]), (8, [cls.cup]),
            # furniture, bought on its own
            (2, [cls.lamp]), (2, [cls.sofa]), (3, [cls.sofa]), (4, [cls.sofa]), (5, [cls.sofa]),
        ]
        cls.orders = cls.env["sale.order"]
        for index, (customer, products) in enumerate(baskets):
            cls.orders |= cls.make_order(cls.c[customer], products, day + timedelta(hours=index))

    @classmethod
    def make_order(cls, partner, products, when, state="sale", company=None):
        # Confirmed by a plain write: no pickings (they would pin the stock settings of
        # the products), the statistics only read the state.
        order = cls.env["sale.order"].create({
            "partner_id": partner.id,
            "company_id": (company or cls.shop).id,
            "order_line": [(0, 0, {"product_id": p.id, "product_uom_qty": 1}) for p in products],
        })
        order.write({"state": state, "date_order": when})
        return order

    def recommend(self, partner, seeds=None, limit=4):
        ranked = self.Affinity._recommend_ids(
            [(partner.id, self.shop.id, (seeds or self.env["product.product"]).ids)],
            limit=limit,
        )
        return ranked[(partner.id, self.shop.id)]

    def ids(self, ranked, source=None):
        return [pid for pid, origin in ranked if source is None or origin == source]


@tagged("post_install", "-at_install")
class TestRecommendations(RecommendationCase):
    def setUp(self):
        super().setUp()
        self.Affinity._rebuild()

    # ------------------------------------------------------------- statistics
    def test_counts_and_lift(self):
        pair = self.Affinity.search([("product_a_id", "=", self.espresso.id),
                                     ("product_b_id", "=", self.grinder.id)])
        self.assertEqual(pair.support, 2)
        # lift = support × orders / (orders with espresso × orders with grinder)
        self.assertAlmostEqual(pair.lift, 2 * 18 / (7 * 2), places=3)
        cup = self.env["drip.product.stat"].search([("product_id", "=", self.cup.id)])
        self.assertEqual((cup.order_count, cup.customer_count, cup.repeat_customer_count),
                         (10, 6, 2))
        self.assertAlmostEqual(cup.repeat_rate, 2 / 6)
        self.assertEqual(cup.categ_id, self.kitchen)

    def test_incremental_equals_rebuild(self):
        snapshot = self._snapshot()
        later = fields.Datetime.now()
        new = self.make_order(self.c[1], [self.espresso, self.grinder, self.cup], later)
        self.make_order(self.c[7], [self.cup, self.kettle], later)
        self.make_order(self.c[8], [self.sofa], later, state="draft")  # not confirmed
        counted, remaining = self.Affinity._update_from_orders()
        self.assertEqual((counted, remaining), (2, 0))
        self.assertEqual(self.Affinity._update_from_orders(), (0, 0), "counted once")
        incremental = self._snapshot()
        self.assertNotEqual(incremental, snapshot)
        self.Affinity._rebuild()
        self.assertEqual(self._snapshot(), incremental)
        self.assertTrue(self.env["drip.product.affinity.order"].search_count(
            [("order_id", "=", new.id)]))

    def test_incremental_in_batches(self):
        self.Affinity._rebuild()
        full = self._snapshot()
        # A first run on an existing history: nothing counted yet.
        self.env["ir.config_parameter"].sudo().search(
            [("key", "=like", "drip_marketing.affinity_%")]).unlink()
        self.env.cr.execute("DELETE FROM drip_product_affinity; DELETE FROM drip_product_stat; "
                            "DELETE FROM drip_product_affinity_order")
        rounds = 0
        while True:
            rounds += 1
            _counted, remaining = self.Affinity._update_from_orders(limit=4)
            if not remaining:
                break
        self.assertGreater(rounds, 2)
        self.assertEqual(self._snapshot(), full, "batches add up to the full count")

    def test_weekly_recount_forgets_cancelled_orders(self):
        full = self._snapshot()
        self.orders[0].write({"state": "cancel"})  # espresso + grinder of customer 1
        self.Affinity._cron_rebuild()
        params = self.env["ir.config_parameter"].sudo()
        self.assertFalse(params.get_param("drip_marketing.affinity_rebuild_started"),
                         "done in one call: fewer orders than a batch")
        pairs, stats = self._snapshot()
        self.assertNotEqual((pairs, stats), full)
        grinder = next(row for row in stats if row[0] == self.grinder.id)
        self.assertEqual(grinder[1:], (1, 1, 0))
        self.assertEqual(self.Affinity._update_from_orders(), (0, 0))

    def _snapshot(self):
        self.env.cr.execute(
            "SELECT product_a_id, product_b_id, support, round(lift::numeric, 6) "
            "FROM drip_product_affinity ORDER BY 1, 2")
        pairs = self.env.cr.fetchall()
        self.env.cr.execute(
            "SELECT product_id, order_count, customer_count, repeat_customer_count "
            "FROM drip_product_stat ORDER BY 1")
        return pairs, self.env.cr.fetchall()

    # ---------------------------------------------------------------- ranking
    def test_ranked_by_lift_with_min_support(self):
        ranked = self.recommend(self.viewer, self.espresso)
        # The grinder (lift 2.6) before the cup (lift 1.03, more support); the kettle,
        # bought with espresso once, is below the minimum support: it only comes as a
        # best seller of the category; then the store's best seller completes the list.
        self.assertEqual(ranked, [
            (self.grinder.id, "bought_together"),
            (self.cup.id, "bought_together"),
            (self.kettle.id, "category_best_seller"),
            (self.sofa.id, "best_seller"),
        ])
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.reco_min_support", "1")
        ranked = self.recommend(self.viewer, self.espresso)
        # Now the kettle's lift (2.6, as high as the grinder's) puts it before the cup.
        self.assertEqual(set(self.ids(ranked, "bought_together")[:2]),
                         {self.grinder.id, self.kettle.id})

    def test_history_and_favourite_categories(self):
        # Customer 2 bought espresso, grinder, sofa, lamp: bought-together with those,
        # then the best sellers of Kitchen/Furniture not bought yet.
        ranked = self.recommend(self.c[2], limit=6)
        ids = self.ids(ranked)
        self.assertNotIn(self.grinder.id, ids)
        self.assertNotIn(self.sofa.id, ids)
        self.assertIn(self.cup.id, ids)
        self.assertIn(self.rug.id, ids, "completed by a best seller of a favourite category")
        self.assertEqual(len(ids), len(set(ids)))

    def test_no_history_gets_best_sellers(self):
        ranked = self.recommend(self.viewer, limit=3)
        self.assertEqual(ranked, [(self.cup.id, "best_seller"), (self.espresso.id, "best_seller"),
                                  (self.sofa.id, "best_seller")])

    # ------------------------------------------------------------- exclusions
    def test_excludes_archived_and_unsellable(self):
        self.grinder.active = False
        self.assertNotIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))
        self.grinder.active = True
        self.grinder.product_tmpl_id.sale_ok = False
        self.assertNotIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))
        self.grinder.product_tmpl_id.sale_ok = True
        # (Odoo refuses moving a product sold by this company to another one: SQL.)
        self.env.cr.execute("UPDATE product_template SET company_id = %s WHERE id = %s",
                            [self.other_company.id, self.grinder.product_tmpl_id.id])
        self.assertNotIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))

    def test_excludes_unpublished(self):
        if "is_published" not in self.env["product.template"]._fields:
            self.skipTest("website_sale is not installed: products have no published flag")
        self.grinder.product_tmpl_id.is_published = False
        self.assertNotIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))
        self.grinder.product_tmpl_id.is_published = True
        self.assertIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))

    def test_excludes_out_of_stock_when_tracked(self):
        if "stock.quant" not in self.env:
            self.skipTest("stock is not installed: no stock is tracked")
        template = self.grinder.product_tmpl_id
        template.is_storable = True
        self.assertNotIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)),
                         "tracked and nothing in stock")
        warehouse = self.env["stock.warehouse"].search(
            [("company_id", "=", self.shop.id)], limit=1) or self.env["stock.warehouse"].create(
            {"name": "Coffee & Co", "code": "CC", "company_id": self.shop.id})
        self.env["stock.quant"]._update_available_quantity(
            self.grinder, warehouse.lot_stock_id, 3)
        self.assertIn(self.grinder.id, self.ids(self.recommend(self.viewer, self.espresso)))
        self.assertIn(self.kettle.id, self.ids(self.recommend(self.viewer, self.espresso)),
                      "stock not tracked: always offered")

    def test_excludes_bought_unless_repeat_purchase(self):
        # Customer 1 bought espresso, grinder and kettle (none bought again by enough
        # customers): none of them is offered again; the cup is.
        ids = self.ids(self.recommend(self.c[1], limit=8))
        for product in (self.espresso, self.grinder, self.kettle):
            self.assertNotIn(product.id, ids)
        self.assertIn(self.cup.id, ids)
        # Customer 3 bought the cup: a third of its customers buy it again → offered.
        self.assertIn(self.cup.id, self.ids(self.recommend(self.c[3], limit=8)))
        self.cup.product_tmpl_id.drip_repeat_purchase = "no"
        self.assertNotIn(self.cup.id, self.ids(self.recommend(self.c[3], limit=8)))
        self.grinder.product_tmpl_id.drip_repeat_purchase = "yes"
        self.assertIn(self.grinder.id, self.ids(self.recommend(self.c[1], limit=8)))
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.reco_repeat_rate", "0.5")
        self.cup.product_tmpl_id.drip_repeat_purchase = "auto"
        self.assertNotIn(self.cup.id, self.ids(self.recommend(self.c[3], limit=8)),
                         "below the configured repeat rate")

    def test_excludes_the_seed_product(self):
        ids = self.ids(self.recommend(self.viewer, self.cup, limit=8))
        self.assertNotIn(self.cup.id, ids)

    def test_other_company_statistics_stay_apart(self):
        other = self.company  # the test database's own company
        self.make_order(self.c[1], [self.lamp, self.rug], fields.Datetime.now(), company=other)
        self.make_order(self.c[2], [self.lamp, self.rug], fields.Datetime.now(), company=other)
        self.Affinity._update_from_orders()
        ranked = self.recommend(self.viewer, self.lamp, limit=8)
        self.assertNotIn(self.rug.id, self.ids(ranked, "bought_together"))
        elsewhere = self.Affinity._recommend_ids([(self.viewer.id, other.id, self.lamp.ids)])
        self.assertIn((self.rug.id, "bought_together"), elsewhere[(self.viewer.id, other.id)])

    # ------------------------------------------------------------ plain data
    def test_price_in_customer_pricelist_and_currency(self):
        eur = self.env.ref("base.EUR")
        eur.active = True
        company = self.shop
        self.env["res.currency.rate"].search(
            [("currency_id", "in", (eur | company.currency_id).ids)]).unlink()
        self.env["res.currency.rate"].create({
            "currency_id": eur.id, "company_id": company.id, "rate": 2.0,
            "name": fields.Date.today() - timedelta(days=1),
        })
        pricelist = self.env["product.pricelist"].create({
            "name": "Euro customers, 20 % off",
            "sequence": 1000,
            "currency_id": eur.id,
            "company_id": company.id,
            "item_ids": [(0, 0, {"applied_on": "3_global", "compute_price": "percentage",
                                 "percent_price": 20})],
        })
        self.viewer.with_company(company).property_product_pricelist = pricelist
        offers = self.Affinity._recommend(self.viewer | self.c[5], limit=4,
                                          seed_products=self.espresso, company=company)
        grinder = next(o for o in offers[self.viewer.id] if o["id"] == self.grinder.id)
        # 50 USD list price, 20 % off, 2 EUR per USD
        self.assertAlmostEqual(grinder["price"], 80.0)
        self.assertEqual(grinder["currency"], {"name": "EUR", "symbol": eur.symbol,
                                               "position": eur.position,
                                               "decimals": eur.decimal_places})
        self.assertEqual(grinder["name"], "Grinder")
        self.assertTrue(grinder["url"].startswith("http"))
        self.assertTrue(grinder["image_url"].endswith(f"/{self.grinder.id}/image_256"))
        other = offers[self.c[5].id]
        self.assertTrue(other)
        self.assertTrue(all(o["currency"]["name"] == company.currency_id.name for o in other))

    # -------------------------------------------------------------- batching
    def test_one_read_per_batch(self):
        """The recommendation read is ONE statement for a whole batch, and a batch of
        six customers costs the same number of queries as a batch of one."""
        partners = self.viewer | self.c[1] | self.c[2] | self.c[3] | self.c[7] | self.c[8]
        statements = []
        original = Cursor.execute

        def spy(cr, query, params=None, log_exceptions=True):
            statements.append(str(getattr(query, "code", query)))
            return original(cr, query, params, log_exceptions)

        def count(batch):
            self.env.invalidate_all()
            self.env.flush_all()
            before = self.env.cr.sql_log_count
            with patch.object(Cursor, "execute", spy):
                result = self.Affinity._recommend(batch, limit=4, seed_products=self.espresso,
                                                  company=self.shop)
            self.assertTrue(all(result[p.id] for p in batch))
            return self.env.cr.sql_log_count - before

        count(partners)  # warm-up (pricelist rules, currency, ...)
        statements.clear()
        many = count(partners)
        reads = [q for q in statements if "drip_product_affinity" in q]
        self.assertEqual(len(reads), 1, "one read of the pair table for the whole batch")
        one = count(self.viewer)
        self.assertEqual(many, one, "the cost does not grow with the batch")
        with self.assertQueryCount(__system__=16):
            self.env.invalidate_all()
            self.Affinity._recommend(partners, limit=4, seed_products=self.espresso,
                                     company=self.shop)


@tagged("post_install", "-at_install")
class TestOffers(RecommendationCase):
    """The render context gets recommendations, the product and ``coupon`` (None here)."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.browse_journey = cls.env["drip.journey"].create({
            "name": "Viewed, not bought", "trigger": "browse_abandoned", "goal_type": "order",
            "company_id": cls.shop.id,
        })
        cls.browse_step = cls.env["drip.step"].create({
            "journey_id": cls.browse_journey.id, "name": "Reminder", "step_type": "send",
            "channel": "email",
            "template_id": cls.env.ref("drip_marketing.template_browse").copy(
                {"company_id": cls.shop.id}).id,
        })
        cls.plain_step = cls.env["drip.step"].create({
            "journey_id": cls.browse_journey.id, "name": "Plain", "step_type": "send",
            "channel": "email", "template_id": cls.template.id,
            "parent_id": cls.browse_step.id,
        })
        cls.view = cls.env["drip.event"].create({
            "name": "Product Viewed", "partner_id": cls.viewer.id,
            "product_id": cls.espresso.id, "company_id": cls.shop.id,
            "event_type_id": cls.env.ref("drip_marketing.event_type_product_viewed").id,
        })

    def setUp(self):
        super().setUp()
        self.env["drip.product.affinity"]._rebuild()

    def message(self, partner, source_ref, step=None):
        enrollment = self.env["drip.enrollment"].create({
            "journey_id": self.browse_journey.id, "partner_id": partner.id,
            "source_ref": source_ref,
        })
        return self.env["drip.message"].create({
            "enrollment_id": enrollment.id, "step_id": (step or self.browse_step).id,
            "scheduled_at": fields.Datetime.now(), "channel": "email",
        })

    def items(self, messages):
        return [(m.id, m.partner_id, m.order_id, "en_US", m.journey_id, m.step_id, m)
                for m in messages]

    def test_browse_abandonment_offer(self):
        message = self.message(self.viewer, f"drip.event,{self.view.id}")
        offer = self.env["drip.offer"]._offers_for(self.items(message))[message.id]
        self.assertEqual(offer["product"]["id"], self.espresso.id)
        self.assertEqual(offer["product"]["name"], "Espresso beans")
        self.assertAlmostEqual(offer["product"]["price"], 10.0)
        self.assertEqual([r["id"] for r in offer["recommendations"]],
                         [self.grinder.id, self.cup.id, self.kettle.id, self.sofa.id])
        self.assertEqual(offer["recommendations"][0]["source"], "bought_together")
        self.assertIsNone(offer["coupon"], "no coupon program on the step")

    def test_replenishment_product_and_batch(self):
        order = self.orders.filtered(lambda o: o.partner_id == self.c[7])[:1]
        replenish = self.message(self.c[7], f"sale.order,{order.id},product,{self.cup.id}")
        viewed = self.message(self.viewer, f"drip.event,{self.view.id}")
        plain = self.message(self.c[1], f"res.partner,{self.c[1].id}", step=self.plain_step)
        offers = self.env["drip.offer"]._offers_for(self.items(replenish | viewed | plain))
        self.assertEqual(offers[replenish.id]["product"]["id"], self.cup.id)
        self.assertNotIn(self.cup.id, [r["id"] for r in offers[replenish.id]["recommendations"]])
        self.assertEqual(offers[viewed.id]["product"]["id"], self.espresso.id)
        self.assertEqual(offers[plain.id], {"recommendations": [], "product": None,
                                            "coupon": None},
                         "a template that shows no recommendations does not pay for them")

    def test_template_renders_without_coupon(self):
        """Without the loyalty bridge (or without a program on the step), ``coupon`` is
        None and the shipped templates render without it."""
        from ..engine import render

        message = self.message(self.viewer, f"drip.event,{self.view.id}")
        delivery = self.env["drip.delivery"]
        items = self.items(message)
        contexts = delivery._build_contexts(items)
        self.env["drip.offer"]._add_offers(items, contexts)
        context = contexts[message.id]
        self.assertIsNone(context["coupon"])
        template = self.browse_step.template_id
        rendered = render.render_message(template._parts_for_lang("en_US"), context, "en_US")
        self.assertIn("Espresso beans", rendered["subject"])
        self.assertIn("Grinder", rendered["body_html"])
        self.assertNotIn("valid until", rendered["body_html"])

    def test_delivery_context_has_offers(self):
        """``drip.delivery`` calls the hook: every message context has the offer keys."""
        message = self.message(self.viewer, f"drip.event,{self.view.id}")
        context = self.env["drip.delivery"]._render_contexts(message)[message.id]
        self.assertIn("coupon", context)
        self.assertEqual(context["product"]["id"], self.espresso.id)
        self.assertTrue(context["recommendations"])
