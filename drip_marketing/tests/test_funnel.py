from datetime import datetime, timedelta

from odoo.tests import freeze_time, tagged

from .common import DripCase

NOW = datetime(2026, 3, 10, 12, 0, 0)
DAY1 = datetime(2026, 3, 5, 9, 0, 0)
DAY2 = DAY1 + timedelta(days=1)

MEASURES = ["entered:sum", "holdout:sum", "scheduled:sum", "sent:sum", "delivered:sum",
            "opened:sum", "clicked:sum", "unsubscribed:sum", "skipped:sum", "converted:sum",
            "revenue:sum"]
NAMES = [m.split(":")[0] for m in MEASURES]


@tagged("post_install", "-at_install")
@freeze_time(NOW)
class TestFunnel(DripCase):
    """Funnel counts on a hand-built ledger: four entrants, two steps, every outcome."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env["res.lang"]._activate_lang("fr_FR")
        cls.product = cls.env.ref("product.product_product_4")
        Partner = cls.env["res.partner"]
        cls.ann = Partner.create({"name": "Ann", "email": "ann@example.com", "lang": "en_US"})
        cls.bea = Partner.create({"name": "Bea", "email": "bea@example.com", "lang": "fr_FR"})
        cls.cid = Partner.create({"name": "Cid", "email": "cid@example.com", "lang": "en_US"})
        cls.dan = Partner.create({"name": "Dan", "email": "dan@example.com", "lang": "en_US"})
        cls.env.flush_all()
        cls.env.cr.execute("UPDATE res_partner SET drip_rfm_segment = 'champions' WHERE id = %s",
                           [cls.ann.id])
        cls.ann.invalidate_recordset(["drip_rfm_segment"])
        cls.enrollments = {
            partner: cls.env["drip.enrollment"].create({
                "journey_id": cls.journey.id, "partner_id": partner.id, "entered_at": DAY1,
                "is_holdout": partner == cls.dan})
            for partner in (cls.ann, cls.bea, cls.cid, cls.dan)
        }
        first, second = cls.step_first, cls.step_second
        sent_at = DAY1 + timedelta(hours=1)
        cls.ann_first = cls.message(cls.ann, first, state="sent", sent_at=sent_at,
                                    opened_at=sent_at + timedelta(hours=1),
                                    clicked_at=sent_at + timedelta(hours=1))
        cls.message(cls.bea, first, state="sent", sent_at=sent_at,
                    bounced_at=sent_at + timedelta(minutes=5))
        cls.message(cls.cid, first, state="sent", sent_at=sent_at,
                    opened_at=sent_at + timedelta(hours=3),
                    unsubscribed_at=sent_at + timedelta(hours=3))
        cls.message(cls.dan, first, state="skipped", skip_reason="holdout")
        cls.message(cls.ann, first, state="sent", sent_at=sent_at, is_test=True,
                    idempotency_key="test-send")
        cls.ann_second = cls.message(cls.ann, second, state="scheduled", scheduled_at=DAY2)
        cls.message(cls.cid, second, state="cancelled", scheduled_at=DAY2)
        # Ann orders after her click: the real attribution gives the order to her message.
        with freeze_time(DAY1 + timedelta(days=1, hours=3)):
            order = cls.env["sale.order"].create({
                "partner_id": cls.ann.id,
                "order_line": [(0, 0, {"product_id": cls.product.id, "product_uom_qty": 2,
                                       "price_unit": 60.0, "tax_id": [(5, 0, 0)]})],
            })
            order.action_confirm()
        cls.Report = cls.env["drip.funnel.report"]

    @classmethod
    def message(cls, partner, step, **values):
        return cls.env["drip.message"].create(dict({
            "enrollment_id": cls.enrollments[partner].id, "step_id": step.id,
            "scheduled_at": DAY1 + timedelta(hours=1),
        }, **values))

    def totals(self, domain=(), groupby=()):
        rows = self.Report._read_group(
            [("journey_id", "=", self.journey.id), *domain], list(groupby), MEASURES)
        return {tuple(row[:len(groupby)]): dict(zip(NAMES, row[len(groupby):]))
                for row in rows}

    def test_attribution_reached_the_ledger(self):
        self.assertAlmostEqual(self.ann_first.revenue, 120.0)
        self.assertTrue(self.ann_first.converted_at)

    def test_funnel_per_step(self):
        self.assertTrue(self.Report._refresh())
        by_step = self.totals(groupby=["step_id"])
        entry = by_step[(self.env["drip.step"],)]
        self.assertEqual((entry["entered"], entry["holdout"], entry["scheduled"]), (4, 1, 0))
        first = by_step[(self.step_first,)]
        self.assertEqual(
            {name: first[name] for name in NAMES if name != "revenue"},
            {"entered": 0, "holdout": 0, "scheduled": 4, "sent": 3, "delivered": 2,
             "opened": 2, "clicked": 1, "unsubscribed": 1, "skipped": 1, "converted": 1},
            "the test send is left out; the bounce is sent but not delivered",
        )
        self.assertAlmostEqual(first["revenue"], 120.0)
        second = by_step[(self.step_second,)]
        self.assertEqual((second["scheduled"], second["sent"]), (2, 0))

    def test_per_day_language_segment_and_channel(self):
        self.Report._refresh()
        by_day = self.totals(domain=[("step_id", "!=", False)], groupby=["date:day"])
        self.assertEqual(by_day[(DAY1.date(),)]["scheduled"], 4)
        self.assertEqual(by_day[(DAY2.date(),)]["scheduled"], 2)
        by_lang = self.totals(domain=[("step_id", "=", self.step_first.id)], groupby=["lang"])
        self.assertEqual(by_lang[("fr_FR",)]["sent"], 1)
        self.assertEqual(by_lang[("fr_FR",)]["delivered"], 0)
        self.assertEqual(by_lang[("en_US",)]["sent"], 2)
        champions = self.totals(domain=[("rfm_segment", "=", "champions")])[()]
        self.assertEqual((champions["entered"], champions["sent"], champions["converted"]),
                         (1, 1, 1))
        email = self.totals(domain=[("channel", "=", "email")])[()]
        self.assertEqual(email["scheduled"], 6)
        by_week = self.totals(groupby=["date:week"])
        self.assertEqual(sum(row["scheduled"] for row in by_week.values()), 6)

    def test_incremental_refresh_updates_without_duplicates(self):
        self.Report._refresh()
        self.ann_second.write({"state": "sent", "sent_at": DAY2, "opened_at": DAY2})
        self.Report._refresh()
        second = self.totals(domain=[("step_id", "=", self.step_second.id)])[()]
        self.assertEqual((second["scheduled"], second["sent"], second["opened"]), (2, 1, 1))
        self.assertEqual(self.totals()[()]["entered"], 4)

    def test_rows_older_than_the_window_are_kept_and_rebuilt_in_full(self):
        old = self.message(self.bea, self.step_second, state="sent",
                           scheduled_at=NOW - timedelta(days=100),
                           sent_at=NOW - timedelta(days=100))
        self.Report._refresh()
        self.assertEqual(self.totals()[()]["sent"], 3, "outside the 35-day window")
        self.Report._refresh(full=True)
        self.assertEqual(self.totals()[()]["sent"], 4)
        self.Report._refresh()
        self.assertEqual(self.totals()[()]["sent"], 4, "an incremental pass keeps old rows")
        self.assertTrue(old)

    def test_only_the_journey_is_refreshed_from_its_button(self):
        other = self.env["drip.journey"].create(
            {"name": "Other", "trigger": "partner_created"})
        other_enrollment = self.env["drip.enrollment"].create(
            {"journey_id": other.id, "partner_id": self.ann.id, "entered_at": DAY1})
        action = self.journey.action_view_funnel()
        self.assertEqual(action["res_model"], "drip.funnel.report")
        self.assertEqual(action["domain"], [("journey_id", "in", self.journey.ids)])
        self.assertEqual(self.totals()[()]["entered"], 4)
        self.assertFalse(self.Report.search([("journey_id", "=", other.id)]),
                         "the other journey waits for the scheduled refresh")
        self.assertTrue(other_enrollment)
        step_action = self.step_first.action_view_funnel()
        self.assertEqual(step_action["domain"], [("step_id", "in", self.step_first.ids)])

    def test_reps_read_the_funnel(self):
        self.Report._refresh()
        rows = self.Report.with_user(self.rep)._read_group(
            [("journey_id", "=", self.journey.id)], [], ["sent:sum"])
        self.assertEqual(rows[0][0], 3)
