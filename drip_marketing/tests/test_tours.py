"""Tours of the backend as its users see it (issue 9), in headless Chromium.

- ``test_admin_tour`` / ``test_admin_tour_zh_cn``: the store admin, from the app menu,
  creates a template and previews it for a customer, builds the cart-abandoned journey
  (1 h reminder, then a second one 24 h later if no order, exit on order), test-runs it,
  starts it and opens its messages and the message analysis (pivot, graph); the second
  run is the same with the admin in Simplified Chinese, asserting Chinese labels.
- ``test_sales_rep_tour``: a User-only rep reads a customer's timeline in time order,
  pauses the customer in a running journey, and finds no way to create or edit journeys
  and templates; forcing it through the ORM is refused with an AccessError.
- ``test_integrator_tour``: Settings > Redis URL > Test the connection against a real
  ``redis-server`` (workers and queue depths), the OpenAPI link, a new API key.
"""
import os
import shutil
import socket
import subprocess
import time
import unittest
from datetime import timedelta

from odoo import Command, fields
from odoo.exceptions import AccessError
from odoo.tests import HttpCase, new_test_user, tagged


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@tagged("post_install", "-at_install")
class TestTours(HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # English must be there even in a database created in another language.
        cls.env["res.lang"]._activate_lang("en_US")
        cls.ada = cls.env["res.partner"].create(
            {"name": "Ada Tourist", "email": "ada.tourist@example.com"})

    def _admin_tour(self, tour):
        journey_count = self.env["drip.journey"].search_count([])
        self.start_tour("/odoo", tour, login="admin", timeout=240)
        journey = self.env["drip.journey"].search([("name", "=", "Tour cart rescue")])
        self.assertEqual(self.env["drip.journey"].search_count([]), journey_count + 1)
        self.assertEqual(journey.trigger, "cart_abandoned")
        self.assertEqual(journey.goal_type, "order")
        self.assertEqual(journey.state, "running")
        first, second = journey.step_ids.sorted("id")
        self.assertEqual((first.step_type, first.delay_value, first.delay_unit, first.parent_id),
                         ("send", 1, "hours", self.env["drip.step"]))
        self.assertEqual((second.parent_id, second.step_trigger, second.delay_value),
                         (first, "not_ordered", 24))

    def _set_admin_lang(self, lang):
        self.env.ref("base.user_admin").lang = lang
        self.env.registry.clear_cache()  # the user's context is cached

    def test_admin_tour(self):
        self._set_admin_lang("en_US")
        self._admin_tour("drip_admin_tour")

    def test_admin_tour_zh_cn(self):
        self.env["base.language.install"].create(
            {"lang_ids": [Command.set(self.env.ref("base.lang_zh_CN").ids)],
             "overwrite": False}).lang_install()
        self._set_admin_lang("zh_CN")
        self._admin_tour("drip_admin_tour_zh")

    def test_sales_rep_tour(self):
        env = self.env
        rep = new_test_user(env, login="drip_tour_rep", password="drip_tour_rep", lang="en_US",
                            groups="base.group_user,sales_team.group_sale_salesman,"
                                   "drip_marketing.drip_marketing_group_user")
        now = fields.Datetime.now().replace(microsecond=0)
        at = {n: now - timedelta(days=n) for n in range(1, 8)}
        bea = env["res.partner"].create(
            {"name": "Bea Rep-Customer", "email": "bea@example.com", "user_id": rep.id})
        template = env["drip.template"].create(
            {"name": "Rep tour template", "channel": "email", "subject": "Hi",
             "body_html": "<p>x</p>"})
        journey = env["drip.journey"].create(
            {"name": "Rep tour journey", "trigger": "partner_created"})
        step = env["drip.step"].create(
            {"journey_id": journey.id, "name": "Rep tour reminder", "step_type": "send",
             "channel": "email", "template_id": template.id})
        journey.action_start()
        enrollment = env["drip.enrollment"].create(
            {"journey_id": journey.id, "partner_id": bea.id, "entered_at": at[5]})
        env["drip.message"].create(
            {"enrollment_id": enrollment.id, "step_id": step.id, "channel": "email",
             "scheduled_at": at[4], "state": "skipped", "skip_reason": "no_consent"})
        bea._drip_set_consent("email", "opted_in", "backend")
        env.flush_all()
        env.cr.execute("UPDATE drip_consent_event SET create_date = %s WHERE partner_id = %s",
                       [at[3], bea.id])
        env["drip.event"].create(
            {"name": "Tag added: Tour VIP", "partner_id": bea.id,
             "event_type_id": env.ref("drip_marketing.event_type_tag_added").id,
             "call_type": "internal", "occurred_at": at[2]})
        product = env["product.product"].create({"name": "Tour mug", "type": "consu"})
        order = env["sale.order"].create(
            {"partner_id": bea.id, "name": "S-TOUR-1",
             "order_line": [Command.create({"product_id": product.id, "price_unit": 9})]})
        order.action_confirm()
        order.date_order = at[1]
        env.flush_all()

        self.start_tour(f"/odoo/action-base.action_partner_form/{bea.id}", "drip_sales_rep_tour",
                        login="drip_tour_rep", timeout=180)
        self.assertEqual(enrollment.state, "paused")
        # Forced through the ORM, the refusal is a clear AccessError.
        with self.assertRaisesRegex(AccessError, "not allowed|allowed to"):
            journey.with_user(rep).write({"name": "Hacked"})
        with self.assertRaisesRegex(AccessError, "not allowed|allowed to"):
            env["drip.template"].with_user(rep).create(
                {"name": "Rogue", "channel": "email", "subject": "x"})

    def test_integrator_tour(self):
        import redis
        import rq

        binary = shutil.which("redis-server")
        if not binary:
            raise unittest.SkipTest("redis-server is not installed")
        port = _free_port()
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(server.wait, 10)
        self.addCleanup(server.terminate)
        url = f"redis://127.0.0.1:{port}/0"
        connection = redis.Redis.from_url(url)
        for _attempt in range(50):
            try:
                connection.ping()
                break
            except redis.exceptions.ConnectionError:
                time.sleep(0.1)
        rq.Worker(["drip_transactional", "drip_bulk"], connection=connection,
                  name="tour-worker").register_birth()
        rq.Queue("drip_bulk", connection=connection).enqueue(os.getcwd)
        self.env["ir.config_parameter"].set_param("drip_marketing.tour_redis_url", url)
        self._set_admin_lang("en_US")

        self.start_tour("/odoo/action-drip_marketing.res_config_settings_action",
                        "drip_integrator_tour", login="admin", timeout=180)
        self.assertTrue(self.env["res.users.apikeys"].sudo().search(
            [("name", "=", "Shop event feed"),
             ("user_id", "=", self.env.ref("base.user_admin").id)]))
