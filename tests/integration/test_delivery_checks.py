"""Send-time checks in a real worker: consent, blacklist, goal, caps, quiet hours."""

from datetime import datetime, timedelta


def test_opt_out_between_scheduling_and_sending_skips(delivery):
    delivery.cart_journey()
    partner_ids, _orders = delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    assert delivery.states(ids) == ["queued"] * 2
    with delivery.db.env() as env:
        env["res.partner"].browse(partner_ids[0])._drip_set_consent(
            "email", "opted_out", source="unsubscribe")
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["skipped", "sent"]
    assert rows[0]["skip_reason"] == "no_consent"
    assert "send time" in rows[0]["reason"]
    assert delivery.sink.count() == 1


def test_blacklisted_address_is_skipped(delivery):
    delivery.cart_journey()
    partner_ids, _orders = delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    with delivery.db.env() as env:
        email = env["res.partner"].browse(partner_ids[1]).email
        env["mail.blacklist"].sudo()._add(email)
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["sent", "skipped"]
    assert rows[1]["skip_reason"] in ("blacklisted", "no_consent")
    assert delivery.sink.count() == 1


def test_order_confirmed_before_sending_skips_for_the_goal(delivery):
    delivery.cart_journey()
    _partners, order_ids = delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    with delivery.db.env() as env:
        env["sale.order"].browse(order_ids[0]).action_confirm()
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["skipped", "sent"]
    assert rows[0]["skip_reason"] == "goal_reached"
    assert delivery.sink.count() == 1


def test_goal_checked_at_send_time(delivery):
    """A goal no hook notices (a domain) is checked by the worker itself: exit + skip."""
    journey_id = delivery.cart_journey()
    partner_ids, _orders = delivery.carts(2)
    with delivery.db.env() as env:
        tag = env["res.partner.category"].create({"name": "Bought elsewhere"})
        env["drip.journey"].browse(journey_id).write({
            "goal_type": "domain", "goal_domain": f"[('category_id', 'in', [{tag.id}])]"})
    ids = delivery.enroll_due()
    delivery.process_due()
    with delivery.db.env() as env:
        env["res.partner"].browse(partner_ids[0]).category_id = [(4, tag.id)]
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["skipped", "sent"]
    assert rows[0]["skip_reason"] == "goal_reached"
    with delivery.db.env() as env:
        enrollment = env["drip.message"].browse(ids[0]).enrollment_id
        assert enrollment.state == "exited" and enrollment.exit_reason == "goal_reached"
    assert delivery.sink.count() == 1


def test_frequency_cap_defers_the_lower_priority_message(delivery):
    """Two marketing journeys, one message each for the same customer, 1 message / 24 h:
    the higher priority goes out, the other is deferred to the next slot with the reason."""
    delivery.company(drip_cap_per_day=1, drip_cap_per_week=3)
    try:
        delivery.cart_journey(name="Important", transactional=False, priority=20)
        delivery.cart_journey(name="Less important", transactional=False, priority=5)
        delivery.carts(1)
        ids = delivery.enroll_due()
        assert len(ids) == 2
        delivery.process_due()
        delivery.work()
        rows = delivery.rows(ids)
        assert [r["state"] for r in rows] == ["sent", "scheduled"]
        deferred = rows[1]
        assert deferred["deferred_count"] == 1
        assert "frequency cap" in deferred["reason"]
        assert deferred["scheduled_at"] > datetime.utcnow() + timedelta(hours=23)
        assert delivery.sink.count() == 1
        # The next tick does not pick it up before its slot.
        delivery.process_due()
        assert delivery.states(ids[1:]) == ["scheduled"]
    finally:
        delivery.company(drip_cap_per_day=0, drip_cap_per_week=0)


def test_frequency_cap_holds_across_jobs(delivery):
    """The second job sees the first one's send (history from the ledger)."""
    delivery.company(drip_cap_per_day=1)
    try:
        first = delivery.cart_journey(name="First", transactional=False)
        partner_ids, _orders = delivery.carts(1)
        ids_first = delivery.enroll_due()
        delivery.process_due()
        delivery.work()
        assert delivery.states(ids_first) == ["sent"]
        delivery.journeys.remove(first)
        delivery.cart_journey(name="Second", transactional=False)
        ids_second = delivery.enroll_due()
        assert len(ids_second) == 1
        delivery.process_due()
        delivery.work()
        row = delivery.rows(ids_second)[0]
        assert row["state"] == "scheduled" and "frequency cap" in row["reason"]
        assert delivery.sink.count() == 1
    finally:
        delivery.company(drip_cap_per_day=0)


def test_transactional_is_exempt_from_caps(delivery):
    delivery.company(drip_cap_per_day=1)
    try:
        delivery.cart_journey(name="Reminder A", transactional=True)
        delivery.cart_journey(name="Reminder B", transactional=True)
        delivery.carts(1)
        ids = delivery.enroll_due()
        delivery.process_due()
        delivery.work()
        assert delivery.states(ids) == ["sent", "sent"]
    finally:
        delivery.company(drip_cap_per_day=0)


def test_quiet_hours_at_send_time_defer(delivery):
    """Queued before quiet hours began, picked up during them: deferred to their end."""
    delivery.cart_journey()
    delivery.carts(1)
    ids = delivery.enroll_due()
    delivery.process_due()
    now = datetime.utcnow()
    start = (now.hour - 1) % 24
    end = (now.hour + 2) % 24
    delivery.company(drip_quiet_hours_start=float(start), drip_quiet_hours_end=float(end))
    try:
        delivery.work()
    finally:
        delivery.company(drip_quiet_hours_start=0.0, drip_quiet_hours_end=0.0)
    row = delivery.rows(ids)[0]
    assert row["state"] == "scheduled"
    assert "Quiet hours" in row["reason"]
    expected = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
    assert row["scheduled_at"] == expected
    assert delivery.sink.count() == 0
