"""The send path end to end, on real PostgreSQL, Redis, RQ workers and an SMTP sink."""

from email.header import decode_header, make_header


def _header(message, name):
    return str(make_header(decode_header(message[name])))


def test_cart_journey_delivers_through_a_worker_exactly_once(delivery):
    """Cart abandoned → due → staged (queued, job id) → worker → one email, headers right."""
    delivery.cart_journey()
    partner_ids, order_ids = delivery.carts(3)
    ids = delivery.enroll_due()
    assert len(ids) == 3
    assert delivery.states(ids) == ["scheduled"] * 3

    delivery.process_due()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["queued"] * 3
    assert delivery.redis.client().llen("rq:queue:drip_transactional") == 1  # one job

    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["sent"] * 3
    assert all(r["attempt_count"] == 1 for r in rows)
    assert delivery.sink.count() == 3
    by_id = {m["Message-ID"]: m for m in delivery.sink.messages}
    for row in rows:
        message = by_id[row["message_id_header"]]
        assert row["message_id_header"].startswith("<drip-")
        assert message["To"].addresses[0].addr_spec == row["recipient"]
        subject = _header(message, "Subject")
        assert subject.startswith("您的购物车还在等您, Customer")
        assert subject == row["subject"]
        unsubscribe = message["List-Unsubscribe"]
        assert "<mailto:" in unsubscribe and "/drip/unsubscribe/" in unsubscribe
        assert unsubscribe.split("<http", 1)[1].startswith(("://", "s://"))
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        html = message.get_body(("html",)).get_content()
        assert "/drip/o/" in html  # open pixel
        assert "/drip/c/" in html and "shop.example.com" not in html  # tracked link
        assert "茶壶 Tea pot" in html
    # Every send is logged on the customer's chatter, with the email's Message-ID.
    with delivery.db.env() as env:
        notes = env["mail.message"].search([
            ("model", "=", "res.partner"), ("res_id", "in", partner_ids),
            ("message_id", "in", [r["message_id_header"] for r in rows]),
        ])
        assert len(notes) == 3

    # A second worker run finds nothing left to do: nothing is sent twice.
    delivery.enqueue_duplicate(ids)
    delivery.work()
    assert delivery.sink.count() == 3


def test_duplicate_enqueue_sends_once(delivery):
    delivery.cart_journey()
    delivery.carts(4)
    ids = delivery.enroll_due()
    delivery.process_due()
    for _ in range(3):
        delivery.enqueue_duplicate(ids)
    delivery.work()
    assert delivery.states(ids) == ["sent"] * 4
    assert delivery.sink.count() == 4
    assert set(delivery.sink.by_message_id().values()) == {1}


def test_two_workers_racing_send_once(delivery):
    """Two worker processes, the same ids in several jobs each: one email per message."""
    delivery.cart_journey()
    delivery.carts(40)
    ids = delivery.enroll_due()
    delivery.process_due()  # one job of 40 ids
    for _ in range(5):  # and the same ids again in 5 more jobs, as small batches
        for start in range(0, len(ids), 10):
            delivery.enqueue_duplicate(ids[start:start + 10])
    workers = [delivery.worker_process(), delivery.worker_process()]
    for process in workers:
        assert process.wait(180) == 0, delivery.log_of(process)()
    assert delivery.states(ids) == ["sent"] * 40, (
        delivery.rows(ids), [delivery.log_of(p)() for p in workers])
    assert delivery.sink.count() == 40
    assert set(delivery.sink.by_message_id().values()) == {1}
    logs = [open(p.log_path).read() for p in workers]
    assert all("Traceback" not in log for log in logs), logs


def test_transactional_and_bulk_use_separate_queues(delivery):
    delivery.cart_journey(name="Reminder", transactional=True)
    delivery.cart_journey(name="Campaign", transactional=False)
    delivery.carts(2)
    ids = delivery.enroll_due()
    assert len(ids) == 4
    delivery.process_due()
    client = delivery.redis.client()
    assert client.llen("rq:queue:drip_transactional") == 1
    assert client.llen("rq:queue:drip_bulk") == 1
    delivery.work(queues=["drip_transactional"])  # a dedicated transactional worker
    assert delivery.sink.count() == 2
    delivery.work(queues=["drip_bulk"])
    assert delivery.sink.count() == 4


def test_inline_delivery_without_redis(delivery_inline):
    """No Redis configured: the scheduled action delivers right after its commit."""
    delivery = delivery_inline
    delivery.cart_journey()
    delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    assert delivery.states(ids) == ["sent"] * 2
    assert delivery.sink.count() == 2
    rows = delivery.rows(ids)
    assert {m["Message-ID"] for m in delivery.sink.messages} == {
        r["message_id_header"] for r in rows}


def test_worker_cli_runs_jobs(delivery):
    """``odoo-bin drip-worker`` (discovered from the addon) delivers in burst mode."""
    delivery.cart_journey()
    delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    process = delivery.worker_process(workers=2)
    log = delivery.log_of(process)
    assert process.wait(180) == 0, log()
    assert delivery.states(ids) == ["sent"] * 2, (delivery.rows(ids), log())
    assert delivery.sink.count() == 2
