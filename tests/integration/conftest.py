"""Fixtures of the delivery integration tests.

Real services only: a throw-away Odoo database (cloned from a cached template with
drip_marketing installed), a ``redis-server`` per test on a free loopback port, an
``aiosmtpd`` SMTP sink per test, RQ workers in this process or as ``odoo-bin
drip-worker`` subprocesses. Each test commits (workers need committed rows) and the
``delivery`` fixture cleans up what it created, so tests do not see each other's data;
the database itself is dropped at the end of the session.

Run: ``pytest tests/integration`` (with the harness environment, ``scripts/test``).
"""

import os
import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).parent))

from services import (  # noqa: E402
    OdooDatabase,
    RedisServer,
    SmtpSink,
    run_worker_in_process,
    wait_until,
)

# The tests decide which Redis each piece talks to; an exported one would leak in.
os.environ.pop("DRIP_REDIS_URL", None)


@pytest.fixture(scope="session")
def odoo_db(tmp_path_factory):
    database = OdooDatabase(tmp_path_factory.mktemp("odoo")).create()
    try:
        database.open_registry()
        with database.env() as env:
            company = env.company
            company.write({
                "email": "shop@example.com",
                "drip_quiet_hours_start": 0.0,
                "drip_quiet_hours_end": 0.0,
                "drip_cap_per_day": 0,
                "drip_cap_per_week": 0,
                "drip_default_tz": "UTC",
            })
            env["ir.config_parameter"].set_param("web.base.url",
                                                 f"http://127.0.0.1:{database.http_port}")
            env["ir.mail_server"].search([]).write({"active": False})
            env["ir.mail_server"].create({
                "name": "Test sink", "smtp_host": "127.0.0.1", "smtp_port": 25,
                "smtp_encryption": "none", "sequence": 1,
            })
            # Stop the cron threads' jobs from interfering: tests run the steps themselves.
            env["ir.cron"].search([]).write({"active": False})
        yield database
    finally:
        database.drop()


@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def smtp_sink():
    sink = SmtpSink().start()
    yield sink
    sink.stop()


class Delivery:
    """What a test needs: data builders and the cron / worker steps, on real services."""

    QUEUES = ("drip_transactional", "drip_bulk")

    def __init__(self, db, redis, sink):
        self.db = db
        self.redis = redis
        self.sink = sink
        self.journeys = []
        self.orders = []
        self.processes = []

    # -- settings
    def configure(self, redis=True, **params):
        values = {
            "drip_marketing.redis_url": self.redis.url if (redis and self.redis) else "",
            "drip_marketing.queue_transactional": self.QUEUES[0],
            "drip_marketing.queue_bulk": self.QUEUES[1],
            "drip_marketing.retry_intervals": "1",
            "drip_marketing.lease_seconds": "600",
            "drip_marketing.job_batch_size": "100",
        }
        values.update({f"drip_marketing.{k}": str(v) for k, v in params.items()})
        with self.db.env() as env:
            for key, value in values.items():
                env["ir.config_parameter"].set_param(key, value)
            server = env["ir.mail_server"].search([("name", "=", "Test sink")])
            server.smtp_port = self.sink.port if self.sink else 1

    def company(self, **values):
        with self.db.env() as env:
            env.company.write(values)

    # -- data
    def cart_journey(self, name="Cart recovery", subject=None, transactional=True,
                     priority=10, body=None):
        with self.db.env() as env:
            template = env["drip.template"].create({
                "name": f"{name} template",
                "channel": "email",
                "subject": subject or "您的购物车还在等您, {{ partner.first_name }} 🛒",
                "body_html": body or (
                    "<p>Hi {{ partner.name }},</p><ul>{% for line in cart.lines %}"
                    "<li>{{ line.product_name }} × {{ line.quantity | number }}</li>"
                    "{% endfor %}</ul><p><a href=\"https://shop.example.com/cart?x=1&amp;y=2\">"
                    "Back to your cart</a> — <a href=\"{{ unsubscribe_url }}\">"
                    "Unsubscribe</a></p>"
                ),
                "body_text": "Hi {{ partner.name }}, your cart is waiting.",
            })
            journey = env["drip.journey"].create({
                "name": name,
                "trigger": "cart_abandoned",
                "goal_type": "order",
                "transactional": transactional,
                "priority": priority,
                "reentry_policy": "per_source",
                "cart_lookback_hours": 48,
            })
            env["drip.step"].create({
                "journey_id": journey.id,
                "name": "First reminder",
                "step_type": "send",
                "channel": "email",
                "template_id": template.id,
                "delay_value": 1,
                "delay_unit": "hours",
            })
            journey.action_start()
            past = journey.activated_at - timedelta(minutes=10)
            env.flush_all()
            env.cr.execute(
                "UPDATE drip_journey SET activated_at = %s, scan_watermark = %s WHERE id = %s",
                [past, past, journey.id],
            )
            self.journeys.append(journey.id)
            return journey.id

    def carts(self, count=1, prefix="Customer", **partner_values):
        """Draft orders with one line, idle for 3 hours; returns (partner_ids, order_ids)."""
        with self.db.env() as env:
            product = env["product.product"].search([("default_code", "=", "DRIP-TEA")],
                                                    limit=1) or env["product.product"].create(
                {"name": "茶壶 Tea pot", "default_code": "DRIP-TEA", "list_price": 30.0})
            token = os.urandom(3).hex()
            partners = env["res.partner"].create([
                dict({"name": f"{prefix} {token} {i}",
                      "email": f"customer.{token}.{i}@example.com", "lang": "en_US"},
                     **partner_values)
                for i in range(count)
            ])
            orders = env["sale.order"].create([
                {"partner_id": partner.id, "drip_is_cart": True,
                 "order_line": [(0, 0, {"product_id": product.id, "product_uom_qty": 2})]}
                for partner in partners
            ])
            env.flush_all()
            env.cr.execute(
                "UPDATE sale_order SET drip_cart_activity_at = now() AT TIME ZONE 'UTC' "
                "- interval '3 hours' WHERE id = ANY(%s)", [orders.ids])
            self.orders += orders.ids
            return partners.ids, orders.ids

    def enroll_due(self):
        """The trigger scan enrolls the idle carts; their first reminder is made due."""
        with self.db.env() as env:
            env["drip.journey"]._cron_scan_triggers()
        with self.db.env() as env:
            env.flush_all()
            # The reminder waits 1 hour after abandonment: move the clock, not the code.
            env.cr.execute(
                """
                UPDATE drip_message SET scheduled_at = scheduled_at - interval '2 hours'
                 WHERE state = 'scheduled' AND journey_id = ANY(%s)
                """,
                [self.journeys],
            )
            env.cr.execute(
                "SELECT id FROM drip_message WHERE journey_id = ANY(%s) ORDER BY id",
                [self.journeys],
            )
            return [row[0] for row in env.cr.fetchall()]

    def process_due(self):
        """The minute cron: runs due steps and stages sends (enqueued after commit)."""
        with self.db.env() as env:
            env["drip.message"]._cron_process_due()

    def reap(self):
        with self.db.env() as env:
            env["drip.delivery"]._cron_reap()

    # -- workers
    def work(self, queues=None):
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return run_worker_in_process(self.redis.url, list(queues or self.QUEUES))
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)

    def worker_process(self, **kwargs):
        process = self.db.worker_process(self.redis.url, self.QUEUES, **kwargs)
        self.processes.append(process)
        return process

    @staticmethod
    def log_of(process):
        return lambda: open(process.log_path).read()[-4000:]

    def enqueue_duplicate(self, ids, queue=None):
        """A second job for the same ids, as a retry, a reaper or a bug could make."""
        from rq import Queue

        Queue(queue or self.QUEUES[0], connection=self.redis.client()).enqueue(
            "odoo.addons.drip_marketing.jobs.deliver", self.db.dbname, list(ids))

    # -- reading
    def rows(self, ids):
        with self.db.env() as env:
            env.cr.execute(
                """
                SELECT id, state, skip_reason, reason, error, attempt_count, deferred_count,
                       message_id_header, recipient, subject, scheduled_at, sent_at
                  FROM drip_message WHERE id = ANY(%s) ORDER BY id
                """,
                [list(ids)],
            )
            names = [d[0] for d in env.cr.description]
            return [dict(zip(names, row, strict=True)) for row in env.cr.fetchall()]

    def states(self, ids):
        return [row["state"] for row in self.rows(ids)]

    def wait_states(self, ids, states=("sent",), timeout=60):
        return wait_until(lambda: all(s in states for s in self.states(ids)), timeout,
                          interval=0.2, what=f"messages {list(ids)[:5]} to be {states}")

    # -- cleanup
    def cleanup(self):
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
        with self.db.env() as env:
            if self.journeys:
                journeys = env["drip.journey"].browse(self.journeys).exists()
                journeys.filtered(lambda j: j.state in ("running", "paused")).action_stop()
            env.cr.execute(
                "UPDATE drip_message SET state = 'cancelled' "
                "WHERE state IN ('scheduled', 'queued', 'sending')"
            )
            # Carts of this test must not enter the next test's journeys.
            env.cr.execute("UPDATE sale_order SET state = 'cancel' WHERE id = ANY(%s)",
                           [self.orders])
            env["ir.config_parameter"].set_param("drip_marketing.redis_url", "")


@pytest.fixture
def delivery(odoo_db, redis_server, smtp_sink):
    helper = Delivery(odoo_db, redis_server, smtp_sink)
    helper.configure()
    yield helper
    helper.cleanup()


@pytest.fixture
def delivery_inline(odoo_db, smtp_sink):
    helper = Delivery(odoo_db, None, smtp_sink)
    helper.configure(redis=False)
    yield helper
    helper.cleanup()


@pytest.fixture(scope="session")
def odoo_http(odoo_db):
    """The Odoo HTTP server of the test database, as a subprocess."""
    process = subprocess.Popen(
        odoo_db.odoo_cmd("-c", str(odoo_db.conf), "-d", odoo_db.dbname,
                         f"--db-filter=^{odoo_db.dbname}$", "--max-cron-threads=0",
                         f"--http-port={odoo_db.http_port}"),
        env=odoo_db.env_vars(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{odoo_db.http_port}"

    def up():
        try:
            return requests.get(f"{base}/web/webclient/version_info", timeout=2,
                                json={}).status_code < 500
        except requests.RequestException:
            return False

    try:
        wait_until(up, 120, interval=0.5, what="the Odoo HTTP server")
        yield base
    finally:
        process.terminate()
        process.wait(30)
