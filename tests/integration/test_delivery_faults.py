"""Crashes, lost Redis, refusing SMTP servers: nothing lost, nothing sent twice."""

import os
import signal
import socket
import threading
import time

import pytest
from services import wait_until


def _past_lease(seconds):
    """Leases are stored to the second (Odoo datetimes): wait a full second more."""
    time.sleep(seconds + 1.2)


def _kill(process):
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(10)


class BlackHole:
    """A TCP server that accepts connections and never says a word (a hung SMTP server)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.connections = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                connection, _addr = self.sock.accept()
            except OSError:
                return
            self.connections.append(connection)
            self.accepted.set()

    def close(self):
        for connection in self.connections:
            connection.close()
        self.sock.close()


def _point_mail_server(delivery, port):
    with delivery.db.env() as env:
        env["ir.mail_server"].search([("name", "=", "Test sink")]).smtp_port = port


@pytest.mark.slow
def test_worker_killed_before_handing_off_loses_nothing(delivery):
    """SIGKILL after the claim (rows 'sending'), before any hand-off: all queued again."""
    delivery.configure(lease_seconds=2)
    delivery.cart_journey()
    delivery.carts(5)
    ids = delivery.enroll_due()
    delivery.process_due()
    hole = BlackHole()
    try:
        _point_mail_server(delivery, hole.port)
        worker = delivery.worker_process()
        assert hole.accepted.wait(120), open(worker.log_path).read()[-3000:]
        assert delivery.states(ids) == ["sending"] * 5
        _kill(worker)
    finally:
        hole.close()
    _point_mail_server(delivery, delivery.sink.port)
    _past_lease(2)
    delivery.reap()
    assert delivery.states(ids) == ["queued"] * 5
    delivery.work()
    assert delivery.states(ids) == ["sent"] * 5
    assert sorted(delivery.sink.by_message_id().values()) == [1] * 5


@pytest.mark.slow
def test_worker_killed_mid_batch_no_double_no_silent_loss(delivery):
    """SIGKILL while the SMTP server holds message 3 of 6.

    1-2 were accepted (recorded): finished by the reaper, not resent. 3 is the documented
    window: failed "delivery unknown", not resent. 4-6 were never handed off: queued
    again and delivered once.
    """
    delivery.configure(lease_seconds=2)
    delivery.cart_journey()
    delivery.carts(6)
    ids = delivery.enroll_due()
    delivery.process_due()
    delivery.sink.stall_at(3)
    worker = delivery.worker_process()
    assert delivery.sink.stalled.wait(120), open(worker.log_path).read()[-3000:]
    _kill(worker)
    delivery.sink.release()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["sending"] * 6
    assert [bool(r["sent_at"]) for r in rows] == [True, True, False, False, False, False]
    assert [bool(r["message_id_header"]) for r in rows] == [True, True, True] + [False] * 3

    _past_lease(2)
    delivery.reap()
    states = delivery.states(ids)
    assert states[:3] == ["sent", "sent", "failed"]
    assert states[3:] == ["queued"] * 3
    unknown = delivery.rows(ids[2:3])[0]
    assert "Delivery unknown" in unknown["error"]
    assert unknown["message_id_header"] in unknown["error"]

    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["sent", "sent", "failed", "sent", "sent", "sent"]
    received = delivery.sink.by_message_id()
    assert set(received.values()) == {1}  # nothing twice
    assert rows[2]["message_id_header"] not in received
    assert {r["message_id_header"] for r in rows if r["state"] == "sent"} == set(received)


def test_redis_down_while_staging_then_back(delivery):
    """Redis stopped while the cron stages: rows stay scheduled; later delivered once."""
    delivery.cart_journey()
    delivery.carts(3)
    ids = delivery.enroll_due()
    delivery.redis.stop()
    delivery.process_due()
    assert delivery.states(ids) == ["scheduled"] * 3
    delivery.redis.start()  # an empty Redis: whatever it had is gone
    delivery.process_due()
    assert delivery.states(ids) == ["queued"] * 3
    delivery.work()
    assert delivery.states(ids) == ["sent"] * 3
    assert sorted(delivery.sink.by_message_id().values()) == [1] * 3


def test_redis_loses_queued_jobs_reaper_requeues(delivery):
    """Redis restarts empty after staging: past the lease the reaper enqueues again."""
    delivery.configure(lease_seconds=1)
    delivery.cart_journey()
    delivery.carts(3)
    ids = delivery.enroll_due()
    delivery.process_due()
    assert delivery.states(ids) == ["queued"] * 3
    delivery.redis.stop()
    delivery.redis.start()
    _past_lease(1)
    delivery.reap()
    assert delivery.redis.client().llen("rq:queue:drip_transactional") == 1
    delivery.work()
    assert delivery.states(ids) == ["sent"] * 3
    assert sorted(delivery.sink.by_message_id().values()) == [1] * 3


def test_reaper_leaves_live_jobs_alone(delivery):
    """A long backlog is not a lost job: the reaper extends the lease, enqueues nothing."""
    delivery.configure(lease_seconds=1)
    delivery.cart_journey()
    delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    _past_lease(1)
    delivery.reap()
    assert delivery.redis.client().llen("rq:queue:drip_transactional") == 1
    assert delivery.states(ids) == ["queued"] * 2
    delivery.work()
    assert delivery.sink.count() == 2


def test_smtp_refusing_then_accepting_delivers_once(delivery):
    """451 for the first two messages: RQ retries the job, each mail arrives once."""
    delivery.configure(retry_intervals="1")
    delivery.cart_journey()
    delivery.carts(3)
    ids = delivery.enroll_due()
    delivery.process_due()
    delivery.sink.refuse(2, "451 4.7.1 Greylisted, try again")
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["queued", "queued", "sent"]
    assert "Greylisted" in rows[0]["error"]

    def retried():
        time.sleep(0.5)
        delivery.work()  # burst: the scheduler moves the due retry back into the queue
        return delivery.states(ids) == ["sent"] * 3

    wait_until(retried, 30, what="the retry")
    rows = delivery.rows(ids)
    assert [r["attempt_count"] for r in rows] == [2, 2, 1]
    assert sorted(delivery.sink.by_message_id().values()) == [1] * 3


def test_smtp_permanent_refusal_fails_with_the_reason(delivery):
    delivery.cart_journey()
    delivery.carts(2)
    ids = delivery.enroll_due()
    delivery.process_due()
    delivery.sink.refuse(1, "550 5.1.1 No such user here")
    delivery.work()
    rows = delivery.rows(ids)
    assert [r["state"] for r in rows] == ["failed", "sent"]
    assert "550" in rows[0]["error"] and "No such user" in rows[0]["error"]
    assert delivery.sink.count() == 1


def test_smtp_down_then_up_after_retries(delivery):
    """Connection refused is transient; after the last attempt the message fails visibly."""
    delivery.configure(retry_intervals="1", max_attempts=2)
    delivery.cart_journey()
    delivery.carts(1)
    ids = delivery.enroll_due()
    delivery.process_due()
    _point_mail_server(delivery, 1)  # nothing listens there
    delivery.work()
    assert delivery.states(ids) == ["queued"]

    def retried():
        time.sleep(0.5)
        delivery.work()
        return delivery.states(ids) == ["failed"]

    wait_until(retried, 30, what="the last attempt")
    assert "Gave up after 2 attempts" in delivery.rows(ids)[0]["error"]
    assert delivery.sink.count() == 0
