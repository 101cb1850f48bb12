"""The ready-made journeys as shipped, end to end on real services.

Each test switches on one journey of ``data/drip_ready_journeys.xml`` unchanged, builds the
history that should (and should not) trigger it, and drives the real entry points on a
moved clock: the trigger scan and the due-step runner take ``now``; records get their
timestamps by SQL, as they would have them had they happened then. Sends go through a real
RQ worker into the aiosmtpd sink, and the assertions read the emails that arrived.

The session database is shared with the other integration tests: assertions look at this
test's own customers and their mail only, never at global counts.
"""

import os
from datetime import timedelta
from email.header import decode_header, make_header
from zoneinfo import ZoneInfo

import pytest
import requests

pytestmark = pytest.mark.slow


def _subject(message):
    return str(make_header(decode_header(message["Subject"])))


def _html(message):
    return message.get_body(("html",)).get_content()


class Clock:
    """One test's journey, customers and moved clock on top of the ``delivery`` helper."""

    def __init__(self, delivery, xmlid):
        self.delivery = delivery
        self.token = os.urandom(3).hex()
        with delivery.db.env() as env:
            shipped = env.ref(f"drip_marketing.{xmlid}")
            assert shipped.state == "draft", "shipped switched off"
            # A copy (steps, templates and settings as shipped): the shipped record stays
            # a draft for the next test, as a stopped journey cannot be started again.
            journey = shipped.copy()
            assert [s.name for s in journey.step_ids] == [s.name for s in shipped.step_ids]
            journey.action_start()
            self.journey_id = journey.id
            self.start = journey.activated_at
        delivery.journeys.append(self.journey_id)

    def at(self, **delta):
        return self.start + timedelta(**delta)

    # -- data
    def partner(self, name, **values):
        with self.delivery.db.env() as env:
            partner = env["res.partner"].create(dict({
                "name": f"{name} {self.token}",
                "email": f"{name.lower().replace(' ', '.')}.{self.token}@example.com",
                "lang": "en_US", "tz": "UTC",
            }, **values))
            return partner.id

    def product(self, name, price=20.0, **values):
        with self.delivery.db.env() as env:
            return env["product.product"].create(dict({
                "name": f"{name} {self.token}", "list_price": price, "sale_ok": True,
            }, **values)).id

    def order(self, partner_id, product_id, at, confirm=True, cart=False, qty=1):
        """An order (or a cart) as if made at ``at``: its dates are set by SQL."""
        with self.delivery.db.env() as env:
            order = env["sale.order"].create({
                "partner_id": partner_id, "drip_is_cart": cart,
                "order_line": [(0, 0, {"product_id": product_id, "product_uom_qty": qty})],
            })
            if confirm:
                order.action_confirm()
            env.flush_all()
            env.cr.execute(
                "UPDATE sale_order SET date_order = %(at)s, create_date = %(at)s,"
                " drip_cart_activity_at = CASE WHEN drip_is_cart THEN %(at)s END"
                " WHERE id = %(id)s",
                {"at": at, "id": order.id},
            )
            self.delivery.orders.append(order.id)
            return order.id

    def created_at(self, model, record_id, at):
        table = model.replace(".", "_")
        with self.delivery.db.env() as env:
            env.cr.execute(f"UPDATE {table} SET create_date = %s WHERE id = %s",  # noqa: S608
                           [at, record_id])

    # -- the engine on the moved clock
    def scan(self, now, carts=False):
        """The trigger cron at ``now``: returns the partner ids that entered."""
        with self.delivery.db.env() as env:
            if carts:
                env["sale.order"]._drip_mark_abandoned_carts(now=now)
            entered = env["drip.journey"].browse(self.journey_id)._scan_triggers(now=now)
            return set(entered.partner_id.ids)

    def run(self, now):
        """The minute cron at ``now`` (due steps run, sends staged), then a worker."""
        with self.delivery.db.env() as env:
            env["drip.message"]._run_due(now=now)
        self.delivery.work()

    # -- reading
    def mail_to(self, partner_id):
        with self.delivery.db.env() as env:
            email = env["res.partner"].browse(partner_id).email
        return [m for m in self.delivery.sink.messages
                if m["To"].addresses[0].addr_spec == email]

    def messages(self, partner_id):
        with self.delivery.db.env() as env:
            env.cr.execute(
                """
                SELECT m.id, s.name->>'en_US' AS step, m.state, m.skip_reason,
                       m.scheduled_at, m.sent_at, m.opened_at, m.clicked_at, m.revenue,
                       m.conversion_order_id
                  FROM drip_message m JOIN drip_step s ON s.id = m.step_id
                 WHERE m.journey_id = %s AND m.partner_id = %s ORDER BY m.id
                """,
                [self.journey_id, partner_id],
            )
            names = [d[0] for d in env.cr.description]
            return [dict(zip(names, row, strict=True)) for row in env.cr.fetchall()]

    def enrollment(self, partner_id):
        with self.delivery.db.env() as env:
            env.cr.execute(
                "SELECT state, exit_reason, revenue, conversion_order_id FROM drip_enrollment"
                " WHERE journey_id = %s AND partner_id = %s ORDER BY id DESC LIMIT 1",
                [self.journey_id, partner_id],
            )
            return dict(zip(("state", "exit_reason", "revenue", "conversion_order_id"),
                            env.cr.fetchone(), strict=True))


def _local(utc, tz):
    return utc.replace(tzinfo=ZoneInfo("UTC")).astimezone(ZoneInfo(tz))


def test_abandoned_cart_reminds_once_then_stops_on_the_order_with_revenue_attributed(
        delivery, odoo_http):
    """The issue's end-to-end case: cart abandoned → reminder received → customer buys
    → no more reminders, and the order's revenue is attributed to the journey."""
    delivery.company(drip_cart_abandon_delay=1.0, drip_attribution_window_days=5)
    clock = Clock(delivery, "journey_abandoned_cart")
    tea = clock.product("Tea pot", price=30.0)
    buyer = clock.partner("Buyer")
    opted_out = clock.partner("Opted out")
    no_lines = clock.partner("Empty cart")
    with delivery.db.env() as env:
        env["mail.blacklist"]._add(env["res.partner"].browse(opted_out).email)
        public = env.ref("base.public_partner").id
    cart = clock.order(buyer, tea, clock.at(minutes=5), confirm=False, cart=True, qty=2)
    clock.order(opted_out, tea, clock.at(minutes=5), confirm=False, cart=True)
    public_cart = clock.order(public, tea, clock.at(minutes=5), confirm=False, cart=True)
    with delivery.db.env() as env:
        empty = env["sale.order"].create({"partner_id": no_lines, "drip_is_cart": True})
        env.flush_all()
        env.cr.execute("UPDATE sale_order SET drip_cart_activity_at = %s WHERE id = %s",
                       [clock.at(minutes=5), empty.id])
        delivery.orders.append(empty.id)

    assert clock.scan(clock.at(minutes=40), carts=True) == set(), "idle 35 min < 1 h"
    entered = clock.scan(clock.at(minutes=70), carts=True)
    assert {buyer, opted_out} <= entered
    assert not entered & {no_lines, public}, "no public-user cart, no empty cart"
    with delivery.db.env() as env:
        assert not env["drip.enrollment"].search_count([("order_id", "=", public_cart)])

    clock.run(clock.at(minutes=70))
    received = clock.mail_to(buyer)
    assert len(received) == 1
    reminder = received[0]
    assert _subject(reminder) == "Buyer, you left something in your cart"
    html = _html(reminder)
    assert f"Tea pot {clock.token}" in html and "× 2" in html
    assert "Return to my cart" in html and "/drip/c/" in html  # the cart link, tracked
    assert clock.mail_to(opted_out) == []
    first, = clock.messages(opted_out)
    assert first["state"] == "skipped" and first["skip_reason"]

    # The customer clicks "Return to my cart" (a real request to the tracking route).
    cart_link = next(
        part.split('"', 1)[0].replace("&amp;", "&")
        for part in html.split('href="')[1:]
        if "/drip/c/" in part.split('"', 1)[0] and "Return to my cart" in part.split("</a>")[0]
    )
    response = requests.get(cart_link, allow_redirects=False, timeout=30)
    assert response.status_code in (301, 302, 303), response.text[:300]

    clock.run(clock.at(hours=3))
    assert len(clock.mail_to(buyer)) == 1, "the last reminder waits 24 hours"
    rows = clock.messages(buyer)
    assert [(r["step"], r["state"]) for r in rows] == [
        ("Cart reminder", "sent"), ("Last reminder", "scheduled")]
    # The last reminder is timed from when the first one really went out.
    assert rows[1]["scheduled_at"] == rows[0]["sent_at"] + timedelta(hours=24)
    assert rows[0]["clicked_at"]

    with delivery.db.env() as env:
        order = env["sale.order"].browse(cart)
        order.action_confirm()
        amount = order.amount_untaxed
        assert order.drip_attributed_message_id.id == rows[0]["id"]
    clock.run(clock.at(hours=26))
    assert len(clock.mail_to(buyer)) == 1, "ordered: no more reminders"
    rows = clock.messages(buyer)
    assert rows[1]["state"] == "cancelled"
    assert rows[0]["revenue"] == pytest.approx(amount) and amount == pytest.approx(60.0)
    assert rows[0]["conversion_order_id"] == cart
    enrollment = clock.enrollment(buyer)
    assert enrollment["revenue"] == pytest.approx(amount)
    assert enrollment["conversion_order_id"] == cart
    assert enrollment["state"] == "exited" and enrollment["exit_reason"] == "goal_reached"


def test_abandoned_cart_timer_restarts_on_change_and_a_change_ends_the_reminders(delivery):
    delivery.company(drip_cart_abandon_delay=1.0)
    clock = Clock(delivery, "journey_abandoned_cart")
    tea = clock.product("Tea pot")
    shopper = clock.partner("Shopper")
    cart = clock.order(shopper, tea, clock.at(minutes=5), confirm=False, cart=True)
    # A change 40 minutes later: the hour runs from there, not from the cart's creation.
    with delivery.db.env() as env:
        env["sale.order"].browse(cart).order_line.product_uom_qty = 3
        env.flush_all()
        env.cr.execute("UPDATE sale_order SET drip_cart_activity_at = %s WHERE id = %s",
                       [clock.at(minutes=45), cart])
    assert shopper not in clock.scan(clock.at(minutes=70), carts=True)
    assert shopper in clock.scan(clock.at(minutes=110), carts=True)
    clock.run(clock.at(minutes=110))
    assert len(clock.mail_to(shopper)) == 1
    # Changed again after the reminder: the journey ends, the last reminder never goes.
    with delivery.db.env() as env:
        env["sale.order"].browse(cart).order_line.product_uom_qty = 4
    assert clock.enrollment(shopper)["exit_reason"] == "cart_changed"
    clock.run(clock.at(hours=30))
    assert len(clock.mail_to(shopper)) == 1
    assert [r["state"] for r in clock.messages(shopper)] == ["sent", "cancelled"]


def test_browse_abandonment_after_four_hours_unless_bought(delivery):
    clock = Clock(delivery, "journey_browse_abandonment")
    lamp = clock.product("Lamp", price=45.0)
    browser = clock.partner("Browser")
    buyer = clock.partner("Quick buyer")
    with delivery.db.env() as env:
        viewed = env.ref("drip_marketing.event_type_product_viewed").id
        env["drip.event"].create([
            {"name": "Product Viewed", "event_type_id": viewed, "partner_id": partner,
             "product_id": lamp, "occurred_at": clock.at(minutes=10)}
            for partner in (browser, buyer)
        ])
    clock.order(buyer, lamp, clock.at(hours=1))  # bought what was viewed
    assert clock.scan(clock.at(hours=2)) & {browser, buyer} == set(), "4 hours not up"
    entered = clock.scan(clock.at(hours=5))
    assert browser in entered and buyer not in entered
    clock.run(clock.at(hours=5))
    mail, = clock.mail_to(browser)
    assert f"Lamp {clock.token}" in _html(mail)
    assert clock.mail_to(buyer) == []
    # Viewed again the next day: the weekly cool-down keeps it to one email.
    with delivery.db.env() as env:
        env["drip.event"].create({
            "name": "Product Viewed", "event_type_id": viewed, "partner_id": browser,
            "product_id": lamp, "occurred_at": clock.at(hours=24)})
    assert browser not in clock.scan(clock.at(hours=30))
    clock.run(clock.at(hours=30))
    assert len(clock.mail_to(browser)) == 1


def test_welcome_series_day_0_3_7_stops_on_first_order(delivery):
    clock = Clock(delivery, "journey_welcome")
    newcomer = clock.partner("Newcomer")
    quick = clock.partner("Quick starter")
    no_email = clock.partner("No email", email=False)
    before = clock.partner("Old contact")
    for partner in (newcomer, quick, no_email):
        clock.created_at("res.partner", partner, clock.at(minutes=5))
    clock.created_at("res.partner", before, clock.at(minutes=-30))
    entered = clock.scan(clock.at(minutes=10))
    assert {newcomer, quick} <= entered
    assert not entered & {no_email, before}, "entry filter (an email) and activation guard"

    clock.run(clock.at(minutes=10))
    assert [len(clock.mail_to(p)) for p in (newcomer, quick)] == [1, 1]
    clock.run(clock.at(days=2, hours=23))
    assert len(clock.mail_to(newcomer)) == 1, "day 3 is not yet"
    clock.order(quick, clock.product("Tea"), clock.at(days=2))  # the quick starter buys
    clock.run(clock.at(days=3, minutes=11))
    clock.run(clock.at(days=7, minutes=12))
    subjects = [_subject(m) for m in clock.mail_to(newcomer)]
    assert len(subjects) == 3 and len(set(subjects)) == 3
    assert len(clock.mail_to(quick)) == 1, "an order ends the series"
    assert clock.enrollment(quick)["exit_reason"] == "goal_reached"
    sent = clock.messages(newcomer)
    # Each step is timed from when its parent really went out.
    assert [r["scheduled_at"] - p["sent_at"] for p, r in zip(sent, sent[1:])] == [
        timedelta(days=3), timedelta(days=4)]


def test_post_purchase_thanks_then_cross_sell_at_ten_local_time(delivery):
    clock = Clock(delivery, "journey_post_purchase")
    cup = clock.product("Cup", price=8.0)  # the teapot's optional product
    teapot = clock.product("Teapot", price=40.0)
    with delivery.db.env() as env:
        env["product.product"].browse(teapot).product_tmpl_id.optional_product_ids = [
            (6, 0, [cup])]
    shanghai = clock.partner("Shanghai buyer", tz="Asia/Shanghai")
    order = clock.order(shanghai, teapot, clock.at(minutes=5))
    assert shanghai in clock.scan(clock.at(minutes=10))
    clock.run(clock.at(minutes=10))
    thanks, = clock.mail_to(shanghai)
    rows = clock.messages(shanghai)
    cross_sell = rows[1]
    local = _local(cross_sell["scheduled_at"], "Asia/Shanghai")
    assert (local.hour, local.minute) == (10, 0)
    assert timedelta(days=7) <= cross_sell["scheduled_at"] - rows[0]["scheduled_at"] \
        < timedelta(days=8)
    clock.run(cross_sell["scheduled_at"] - timedelta(minutes=1))
    assert len(clock.mail_to(shanghai)) == 1, "not before 10:00 local"
    clock.run(cross_sell["scheduled_at"])
    assert len(clock.mail_to(shanghai)) == 2
    assert f"Cup {clock.token}" in _html(clock.mail_to(shanghai)[1])
    assert clock.enrollment(shanghai)["state"] == "completed"
    assert shanghai not in clock.scan(clock.at(days=8)), "once per order"
    with delivery.db.env() as env:
        assert env["drip.enrollment"].search(
            [("journey_id", "=", clock.journey_id), ("partner_id", "=", shanghai)]
        ).order_id.id == order


def test_win_back_after_ninety_days_or_the_customer_rhythm(delivery):
    clock = Clock(delivery, "journey_win_back")
    tea = clock.product("Tea")
    lapsed = clock.partner("Lapsed", tz="Europe/Berlin")
    recent = clock.partner("Recent")
    slow = clock.partner("Slow rhythm")
    # Lapsed: one order 90 days before (plus an hour after) activation.
    clock.order(lapsed, tea, clock.at(days=-90, hours=1))
    clock.order(recent, tea, clock.at(days=-10))
    # Slow: orders every 60 days; 90 days is normal for them, 120 is not.
    for days in (-210, -150, -89):
        clock.order(slow, tea, clock.at(days=days, hours=1))
    entered = clock.scan(clock.at(hours=2))
    assert lapsed in entered and not entered & {recent, slow}
    row, = clock.messages(lapsed)
    local = _local(row["scheduled_at"], "Europe/Berlin")
    assert (local.hour, local.minute) == (10, 0)
    clock.run(row["scheduled_at"])
    assert len(clock.mail_to(lapsed)) == 1 and clock.mail_to(recent) == []
    assert slow in clock.scan(clock.at(days=32, hours=2)), "twice its 60-day rhythm"


def test_birthday_at_nine_local_time_once_a_year(delivery):
    clock = Clock(delivery, "journey_birthday")
    tokyo_today = _local(clock.start, "Asia/Tokyo").date()
    birthday = clock.partner("Birthday", tz="Asia/Tokyo",
                             drip_birthday=tokyo_today.replace(year=1990).isoformat())
    other_day = clock.partner("Other day",
                              drip_birthday=(tokyo_today + timedelta(days=40))
                              .replace(year=1985).isoformat())
    entered = clock.scan(clock.at(minutes=1))
    assert birthday in entered and other_day not in entered
    row, = clock.messages(birthday)
    local = _local(row["scheduled_at"], "Asia/Tokyo")
    assert (local.hour, local.minute) == (9, 0)
    clock.run(row["scheduled_at"])
    assert len(clock.mail_to(birthday)) == 1
    assert birthday not in clock.scan(clock.at(hours=5)), "once a year"


def test_replenishment_three_days_before_the_predicted_reorder(delivery):
    clock = Clock(delivery, "journey_replenishment")
    beans = clock.product("Coffee beans", price=12.0)
    regular = clock.partner("Regular")
    once = clock.partner("Bought once")
    # Every 30 days; the last order 27 days before activation (plus an hour): the next
    # is predicted 30 days after it, and the journey enters 3 days before, just now.
    for days in (-87, -57, -27):
        clock.order(regular, beans, clock.at(days=days, hours=1))
    clock.order(once, beans, clock.at(days=-27, hours=1))
    entered = clock.scan(clock.at(hours=2))
    assert regular in entered and once not in entered, "a rhythm needs two orders"
    row, = clock.messages(regular)
    clock.run(row["scheduled_at"])
    mail, = clock.mail_to(regular)
    assert f"Coffee beans {clock.token}" in _html(mail)
    assert (row["scheduled_at"].hour, row["scheduled_at"].minute) == (10, 0)  # UTC customer
