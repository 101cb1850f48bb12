from collections import Counter
from datetime import datetime, timedelta

from odoo.tests import freeze_time, tagged

from .common import DripCase

START = datetime(2026, 3, 2, 0, 0, 0)  # a Monday; quiet hours 21:00-08:00 UTC
END = START + timedelta(days=4)
HOUR = timedelta(hours=1)


def at(hours):
    return START + timedelta(hours=hours)


@tagged("post_install", "-at_install")
class TestBacktest(DripCase):
    """A backtest predicts what the live engine then does over the same history."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.write({
            "drip_quiet_hours_start": 21, "drip_quiet_hours_end": 8, "drip_default_tz": "UTC",
            "drip_cap_per_day": 1, "drip_cap_per_week": 3, "drip_cart_abandon_delay": 1,
        })
        cls.product = cls.env.ref("product.product_product_4")
        # The cart journey of DripCase: reminder 1 h after abandonment, a second one a day
        # later unless the customer ordered; goal: the cart is confirmed.
        cls.journey.write({"reentry_policy": "per_source", "transactional": False})
        cls.people = cls.env["res.partner"].create(
            [{"name": f"Shopper {i}", "email": f"shopper{i}@example.com", "tz": "UTC"}
             for i in range(18)])
        cls.people[5]._drip_set_consent("email", "opted_out")
        # Delivery needs an outgoing server record to pick; in tests Odoo never connects.
        cls.env["ir.mail_server"].create({"name": "Local", "smtp_host": "localhost"})

    # ------------------------------------------------------------------ history
    def history(self):
        """(instant, callable) in time order: carts, confirmations, other orders."""
        p = self.people
        events = []

        def cart(person, hours, confirm_at=None):
            holder = {}

            def create():
                holder["cart"] = self.env["sale.order"].create({
                    "partner_id": person.id, "drip_is_cart": True,
                    "order_line": [(0, 0, {"product_id": self.product.id,
                                           "product_uom_qty": 1})],
                })
            events.append((at(hours), create))
            if confirm_at is not None:
                events.append((at(confirm_at), lambda: holder["cart"].action_confirm()))

        def other_order(person, hours):
            def create():
                order = self.env["sale.order"].create({
                    "partner_id": person.id,
                    "order_line": [(0, 0, {"product_id": self.product.id,
                                           "product_uom_qty": 1})],
                })
                order.action_confirm()
            events.append((at(hours), create))

        cart(p[1], 9)                      # reminder Mon 11:00, second one Tue 11:00
        cart(p[2], 19)                     # reminder due 21:00: quiet, goes Tue 08:00
        cart(p[3], 9, confirm_at=10.5)     # confirmed before the reminder: goal
        cart(p[4], 9, confirm_at=15)       # confirmed between the two reminders: goal
        cart(p[5], 10)                     # opted out: consent skip
        cart(p[6], 9)                      # two carts of one customer: frequency caps
        cart(p[6], 13)
        cart(p[7], 9)                      # another order after the reminder: no second one
        other_order(p[7], 18)
        cart(p[8], 9, confirm_at=9.5)      # confirmed before going idle: never enters
        cart(p[9], -3)                     # idle before activation: never enters
        for index, hours in enumerate((30, 40, 50, 60, 70, 75, 80, 90)):
            cart(p[10 + index], hours)
        return sorted(events, key=lambda item: item[0])

    def replay_history(self, events, until):
        while events and events[0][0] <= until:
            instant, action = events.pop(0)
            with freeze_time(instant):
                action()

    def live_tick(self, tick):
        """One minute-cron run at ``tick``: cart scan, trigger scan, due steps, delivery.

        The engine takes ``now`` as an argument; only delivery reads the clock, so the
        clock is frozen just around it (freezing it costs a third of a second)."""
        Message = self.env["drip.message"]
        self.env["sale.order"]._drip_mark_abandoned_carts(now=tick)
        self.journey._scan_triggers(now=tick)
        for _round in range(10):
            Message._run_due(limit=1000, now=tick)
            queued = Message.search([("journey_id", "=", self.journey.id),
                                     ("state", "=", "queued")])
            if not queued:
                break
            # No Redis and no commit in a test: deliver inline as the cron would.
            with freeze_time(tick):
                self.env["drip.delivery"]._deliver(queued.ids, auto_commit=False)

    def run_live(self, events):
        with freeze_time(START):
            self.journey.action_start()
        tick = START + HOUR
        while tick <= END:
            self.replay_history(events, tick)
            self.live_tick(tick)
            tick += HOUR

    def live_counts(self):
        messages = self.env["drip.message"].search([("journey_id", "=", self.journey.id)])
        enrollments = self.env["drip.enrollment"].search([("journey_id", "=", self.journey.id)])
        sent = messages.filtered(lambda m: m.state == "sent" and m.sent_at <= END)
        skipped = messages.filtered(lambda m: m.state == "skipped")
        return {
            "entrants": len(enrollments),
            "sent_per_day_step": Counter((m.sent_at.date().isoformat(), m.step_id.id)
                                         for m in sent),
            "consent": len(skipped.filtered(
                lambda m: m.skip_reason in ("no_consent", "blacklisted", "no_address"))),
            "holdout": len(skipped.filtered(lambda m: m.skip_reason == "holdout")),
            "condition_skip": len(skipped.filtered(lambda m: m.skip_reason == "condition")),
            "deferrals": sum(messages.mapped("deferred_count")),
            "goal": len(enrollments.filtered(lambda e: e.exit_reason == "goal_reached")),
            "first_day": (len(enrollments.filtered(lambda e: e.entered_at < START + timedelta(
                days=1))), len(sent.filtered(lambda m: m.sent_at < START + timedelta(days=1)))),
        }

    def backtest(self, **values):
        wizard = self.env["drip.journey.backtest"].create(dict(
            {"journey_id": self.journey.id, "days": 4, "end_at": END,
             "scan_interval_minutes": 60}, **values))
        wizard.action_run()
        return wizard, wizard.result_json

    def backtest_counts(self, result):
        totals = result["totals"]
        return {
            "entrants": result["entrants"],
            "sent_per_day_step": Counter({(row["day"], row["step_id"]): row["sent"]
                                          for row in result["per_day"] if row.get("sent")}),
            "consent": totals["consent"],
            "holdout": totals["holdout"],
            "condition_skip": totals["condition_skip"],
            "deferrals": totals["cap_deferrals"] + totals["quiet_deferrals"],
            "goal": totals["goal"],
            "first_day": (result["activation_day"]["entrants"],
                          result["activation_day"]["sent"]),
        }

    # ------------------------------------------------------------------ tests
    def test_backtest_agrees_with_the_live_run(self):
        self.run_live(self.history())
        live = self.live_counts()
        journeys_before = self.env["drip.journey"].with_context(active_test=False).search_count([])
        enrollments_before = self.env["drip.enrollment"].search_count([])
        wizard, result = self.backtest()
        self.assertEqual(self.backtest_counts(result), live)
        # What this scenario exercises, in both runs.
        self.assertEqual(live["entrants"], 16)
        self.assertEqual(live["consent"], 1)
        self.assertEqual(live["goal"], 2)
        self.assertEqual(live["condition_skip"], 1)
        self.assertEqual(live["deferrals"], 3, "the second cart of one customer: caps")
        self.assertEqual(sum(live["sent_per_day_step"].values()), wizard.sent_count)
        self.assertGreaterEqual(wizard.pending_count, 1)
        # Nothing of the replay survives.
        self.assertEqual(
            self.env["drip.journey"].with_context(active_test=False).search_count([]),
            journeys_before)
        self.assertEqual(self.env["drip.enrollment"].search_count([]), enrollments_before)
        self.assertIn("o_drip_backtest", wizard.result_html)

    def test_backtest_agrees_with_a_holdout(self):
        self.journey.holdout_percent = 50
        self.run_live(self.history())
        live = self.live_counts()
        _wizard, result = self.backtest()
        self.assertEqual(self.backtest_counts(result), live)
        self.assertEqual(result["holdout_entrants"],
                         len(self.env["drip.enrollment"].search(
                             [("journey_id", "=", self.journey.id), ("is_holdout", "=", True)])))

    def test_backtest_sends_nothing_and_saves_nothing(self):
        events = self.history()
        self.replay_history(events, END)
        carts = self.env["sale.order"].search([("drip_is_cart", "=", True)])
        self.assertFalse(any(carts.mapped("drip_abandoned_at")))
        # The demo data has a delivery history: count what the backtest would add.
        messages = self.env["drip.message"].search_count([])
        enrollments = self.env["drip.enrollment"].search_count([])
        wizard, result = self.backtest()
        self.assertEqual(result["entrants"], 16, "all but the cart confirmed before going idle")
        carts.invalidate_recordset()
        self.assertFalse(any(carts.mapped("drip_abandoned_at")), "stamps rolled back")
        self.assertEqual(set(carts.mapped("state")), {"draft", "sale"})
        self.assertEqual(self.env["drip.message"].search_count([]), messages)
        self.assertEqual(self.env["drip.enrollment"].search_count([]), enrollments)
        self.assertEqual(self.journey.state, "draft")
        self.assertGreater(wizard.sent_count, 0)
        self.env.cr.execute("SELECT to_regclass('pg_temp.drip_enrollment'), "
                            "to_regclass('pg_temp.sale_order')")
        self.assertEqual(self.env.cr.fetchone(), (None, None), "private copies dropped")


@tagged("post_install", "-at_install")
class TestBacktestActivationDay(DripCase):
    """10,000 old carts: activation only takes carts idle after it, plus the look-back."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.write({"drip_quiet_hours_start": 0, "drip_quiet_hours_end": 0,
                           "drip_cart_abandon_delay": 1, "drip_default_tz": "UTC"})
        cls.journey.write({"reentry_policy": "per_source", "transactional": True})
        product = cls.env.ref("product.product_product_4")
        template_partner = cls.env["res.partner"].create(
            {"name": "Old shopper", "email": "old@example.com"})
        template_cart = cls.env["sale.order"].create({
            "partner_id": template_partner.id, "drip_is_cart": True,
            "order_line": [(0, 0, {"product_id": product.id, "product_uom_qty": 1})],
        })
        cls.env.flush_all()
        cls.start = START
        cr = cls.env.cr
        partner_ids = cls.clone(cr, "res_partner", template_partner.id,
                                "generate_series(1, 10000) g", {
                                    "name": "'Old shopper ' || g",
                                    "complete_name": "'Old shopper ' || g",
                                    "email": "'old' || g || '@example.com'",
                                    "email_normalized": "'old' || g || '@example.com'",
                                    "commercial_partner_id": "NULL"})
        cr.execute("UPDATE res_partner SET commercial_partner_id = id "
                   "WHERE commercial_partner_id IS NULL")
        # Idle from 1 hour to 9 days before activation, spread evenly.
        cls.cart_ids = cls.clone(
            cr, "sale_order", template_cart.id,
            "unnest(%s::int[]) WITH ORDINALITY AS p(pid, i)", {
                "name": "'OLD' || p.i", "partner_id": "p.pid", "partner_invoice_id": "p.pid",
                "partner_shipping_id": "p.pid",
                "drip_cart_activity_at": "%s::timestamp - make_interval(mins => 60 + "
                                         "(p.i::int * 7919) %% (9 * 24 * 60))",
                "date_order": "%s::timestamp - make_interval(mins => 60 + "
                              "(p.i::int * 7919) %% (9 * 24 * 60))",
                "drip_abandoned_at": "NULL"},
            [START, START, partner_ids])
        line = template_cart.order_line
        cr.execute("SELECT column_name FROM information_schema.columns "
                   "WHERE table_name = 'sale_order_line' AND column_name <> 'id'")
        columns = [row[0] for row in cr.fetchall()]
        cr.execute(
            f"""
            INSERT INTO sale_order_line ({', '.join(f'"{c}"' for c in columns)})
            SELECT {', '.join('o.id' if c == 'order_id' else f't."{c}"' for c in columns)}
              FROM sale_order_line t, sale_order o WHERE t.id = %s AND o.id = ANY(%s)
            """,
            [line.id, cls.cart_ids],
        )
        cr.execute("UPDATE sale_order SET state = 'cancel' WHERE id = %s", [template_cart.id])
        cls.env.invalidate_all()
        # A few fresh carts during the first day after activation.
        cls.fresh = cls.env["res.partner"].create(
            [{"name": f"New shopper {i}", "email": f"new{i}@example.com"} for i in range(5)])
        for index, partner in enumerate(cls.fresh):
            with freeze_time(START + timedelta(hours=2 + 3 * index)):
                cls.env["sale.order"].create({
                    "partner_id": partner.id, "drip_is_cart": True,
                    "order_line": [(0, 0, {"product_id": product.id, "product_uom_qty": 1})],
                })

    @classmethod
    def clone(cls, cr, table, template_id, source, overrides, params=()):
        cr.execute("SELECT column_name FROM information_schema.columns "
                   "WHERE table_name = %s AND column_name <> 'id'", [table])
        columns = [row[0] for row in cr.fetchall()]
        cr.execute(
            f"""
            INSERT INTO {table} ({', '.join(f'"{c}"' for c in columns)})
            SELECT {', '.join(overrides.get(c, f't."{c}"') for c in columns)}
              FROM {table} t, {source} WHERE t.id = %s
            RETURNING id
            """,
            [*params, template_id],
        )
        return [row[0] for row in cr.fetchall()]

    def run_backtest(self, lookback):
        self.journey.cart_lookback_hours = lookback
        wizard = self.env["drip.journey.backtest"].create(
            {"journey_id": self.journey.id, "days": 2, "end_at": START + timedelta(days=2)})
        wizard.action_run()
        return wizard

    def expected_old(self, lookback):
        self.env.cr.execute(
            """
            SELECT count(*) FROM sale_order
             WHERE id = ANY(%s)
               AND drip_cart_activity_at + interval '1 hour' >= %s - make_interval(hours => %s)
            """,
            [self.cart_ids, START, lookback],
        )
        return self.env.cr.fetchone()[0]

    def test_activation_day_without_look_back(self):
        wizard = self.run_backtest(0)
        self.assertEqual(wizard.activation_entrant_count, 5, "old carts never flood it")
        self.assertEqual(wizard.activation_sent_count, 5)
        self.assertEqual(wizard.entrant_count, 5)

    def test_activation_day_with_look_back(self):
        old = self.expected_old(48)
        self.assertTrue(1000 < old < 10000, old)
        wizard = self.run_backtest(48)
        self.assertEqual(wizard.activation_entrant_count, old + 5)
        self.assertEqual(wizard.activation_sent_count, old + 5)
        self.env.cr.execute("SELECT count(*) FROM sale_order WHERE drip_abandoned_at IS NOT NULL")
        self.assertEqual(self.env.cr.fetchone()[0], 0, "the cart scan's stamps were rolled back")


@tagged("post_install", "-at_install")
class TestBacktestTriggers(DripCase):
    """Sign-ups and API events replay through the journey's own trigger SQL."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.company.write({"drip_quiet_hours_start": 0, "drip_quiet_hours_end": 0,
                           "drip_default_tz": "UTC"})
        cls.people = cls.env["res.partner"].create(
            [{"name": f"Signup {i}", "email": f"signup{i}@example.com"} for i in range(6)])

    def journey_on(self, trigger, **values):
        journey = self.env["drip.journey"].create(dict({"name": trigger, "trigger": trigger},
                                                       **values))
        self.env["drip.step"].create({"journey_id": journey.id, "name": "Hello",
                                      "step_type": "send", "template_id": self.template.id,
                                      "channel": "email", "delay_value": 2})
        return journey

    def backtest(self, journey):
        wizard = self.env["drip.journey.backtest"].create(
            {"journey_id": journey.id, "days": 2, "end_at": START + timedelta(days=2)})
        wizard.action_run()
        return wizard

    def test_partner_created(self):
        journey = self.journey_on("partner_created")
        self.env.flush_all()
        # Five sign-ups inside the window, one before it.
        for index, person in enumerate(self.people):
            self.env.cr.execute("UPDATE res_partner SET create_date = %s WHERE id = %s",
                                [at(-5 if index == 5 else 3 + 7 * index), person.id])
        wizard = self.backtest(journey)
        self.assertEqual(wizard.entrant_count, 5)
        self.assertEqual(wizard.sent_count, 5)
        per_day = wizard.result_json["entered_per_day"]
        self.assertEqual(per_day, {"2026-03-02": 3, "2026-03-03": 2})

    def test_api_events(self):
        quiz = self.env["drip.event.type"].create({"name": "Quiz done", "code": "quiz_done"})
        journey = self.journey_on("event", trigger_event_type_id=quiz.id,
                                  reentry_policy="per_source")
        events = self.env["drip.event"].create([
            {"name": "quiz_done", "event_type_id": quiz.id, "partner_id": person.id}
            for person in self.people[:4]])
        self.env.flush_all()
        for index, event in enumerate(events):
            self.env.cr.execute("UPDATE drip_event SET create_date = %s WHERE id = %s",
                                [at(-1 if index == 0 else 10 * index), event.id])
        wizard = self.backtest(journey)
        self.assertEqual(wizard.entrant_count, 3, "the event recorded before the window is old")
        self.assertEqual(wizard.activation_entrant_count, 2)
