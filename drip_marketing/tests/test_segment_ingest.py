"""Segment's HTTP Tracking API, end to end with the official SDKs against the test server.

``segment-analytics-python`` and ``rudder-sdk-python`` (requirements/dev.txt) post to the
Odoo test server's real HTTP port, exactly as a store's backend would.
"""

import base64
import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from unittest import SkipTest
from unittest.mock import patch

from werkzeug.exceptions import ServiceUnavailable

from odoo import fields
from odoo.tests import HttpCase, tagged
from odoo.tools import mute_logger

from ..controllers.segment import DripSegmentController

try:
    from rudderstack.analytics import Client as RudderClient
    from segment.analytics import Client as SegmentClient
    from segment.analytics.request import APIError as SegmentAPIError
except ImportError:  # pragma: no cover - dev requirements missing
    SegmentClient = RudderClient = SegmentAPIError = None

SDK_LOGGERS = ("segment", "rudderstack", "backoff")


@tagged("post_install", "-at_install")
class TestSegmentIngest(HttpCase):
    @classmethod
    def setUpClass(cls):
        if SegmentClient is None:
            raise SkipTest("segment-analytics-python / rudder-sdk-python missing: "
                           "pip install -r requirements/dev.txt")
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.env.company.drip_double_opt_in = False
        cls.source = cls.env["drip.source"].create({"name": "Storefront"})
        cls.write_key = cls.source.sudo().write_key
        cls.product = cls.env["product.product"].create(
            {"name": "Standing desk", "default_code": "DESK-1"})
        cls.viewed = cls.env.ref("drip_marketing.event_type_product_viewed")
        cls.page_viewed = cls.env.ref("drip_marketing.event_type_page_viewed")
        for name in SDK_LOGGERS:
            logging.getLogger(name).setLevel(logging.CRITICAL)

    def setUp(self):
        super().setUp()
        self.errors = []
        self.clients = []

    def tearDown(self):
        for client in self.clients:
            if client.consumers:
                client.shutdown()
        super().tearDown()

    # ------------------------------------------------------------------ helpers
    @property
    def host(self):
        return f"{self.base_url()}/drip/segment"

    def segment(self, **options):
        client = SegmentClient(self.write_key, host=self.host,
                               on_error=lambda error, batch: self.errors.append(error),
                               **dict({"sync_mode": True}, **options))
        self.clients.append(client)
        return client

    def rudder(self, **options):
        client = RudderClient(self.write_key, host=self.host,
                              on_error=lambda error, batch: self.errors.append(error),
                              **dict({"sync_mode": True}, **options))
        self.clients.append(client)
        return client

    def events(self, **domain):
        self.env.invalidate_all()
        return self.env["drip.event"].search(
            [(name, "=", value) for name, value in domain.items()], order="id")

    def partner_of(self, user_id):
        self.env.invalidate_all()
        return self.env["drip.identity"].search(
            [("kind", "=", "user_id"), ("value", "=", user_id)]).partner_id

    def counts(self):
        self.env.invalidate_all()
        return {model: self.env[model].sudo().with_context(active_test=False).search_count([])
                for model in ("drip.event", "drip.identity", "res.partner",
                              "drip.identity.conflict")}

    def post(self, path, body, write_key=None, headers=None, raw=False):
        data = body if raw else json.dumps(body)
        all_headers = {"Content-Type": "application/json"}
        if write_key is not False:
            token = base64.b64encode(f"{write_key or self.write_key}:".encode()).decode()
            all_headers["Authorization"] = f"Basic {token}"
        all_headers.update(headers or {})
        return self.url_open(f"/drip/segment/v1/{path}", data=data, headers=all_headers)

    def message(self, **values):
        return dict({"type": "track", "event": "Product Viewed", "userId": "u-raw",
                     "messageId": values.pop("messageId", None) or f"m-{id(values)}",
                     "timestamp": datetime.now(UTC).isoformat()}, **values)

    def assertRejected(self, response, status, code):
        self.assertEqual(response.status_code, status, response.text)
        body = response.json()
        self.assertEqual((body["success"], body["code"]), (False, code), body)
        self.assertTrue(body["message"])
        return body

    def assertStoresNothing(self, response_factory, status, code):
        before = self.counts()
        body = self.assertRejected(response_factory(), status, code)
        self.assertEqual(self.counts(), before, "a rejected request stores nothing")
        return body

    # ------------------------------------------------------------------ SDK calls
    def test_segment_sdk_identify_track_page_screen_alias(self):
        analytics = self.segment()
        analytics.identify("u-1", {"email": "Mei.Chen@Example.com", "name": "Mei Chen",
                                   "birthday": "1992-02-29", "phone": "+86 138 0013 8000"},
                           anonymous_id="browser-1")
        analytics.track("u-1", "Product Viewed", {"sku": "DESK-1", "price": 499},
                        context={"ip": "203.0.113.9", "userAgent": "Mozilla/5.0",
                                 "campaign": {"name": "spring", "source": "newsletter"},
                                 "page": {"url": "https://shop.example.com/desk"}})
        analytics.page("u-1", "Shop", "Desk", {"path": "/shop/desk"})
        analytics.screen("u-1", "App", "Cart")
        analytics.alias("browser-2", "u-1")
        self.assertFalse(self.errors)
        mei = self.partner_of("u-1")
        self.assertRecordValues(mei, [{"name": "Mei Chen", "email": "mei.chen@example.com",
                                       "phone": "+8613800138000"}])
        identify, track, page, screen, alias = self.events(partner_id=mei.id)
        self.assertEqual([e.call_type for e in (identify, track, page, screen, alias)],
                         ["identify", "track", "page", "screen", "alias"])
        self.assertRecordValues(track, [{
            "name": "Product Viewed", "event_type_id": self.viewed.id,
            "product_id": self.product.id, "external_user_id": "u-1",
            "source_id": self.source.id, "company_id": self.env.company.id,
            "payload": {"sku": "DESK-1", "price": 499},
        }])
        self.assertEqual(track.context_data["campaign"], {"name": "spring",
                                                          "source": "newsletter"})
        self.assertEqual(track.context_data["ip"], "203.0.113.9")
        self.assertEqual(track.context_data["library"]["name"], "analytics-python")
        self.assertEqual((page.name, page.event_type_id), ("Desk", self.page_viewed))
        self.assertEqual(page.payload["path"], "/shop/desk")
        self.assertTrue(track.idempotency_key, "the SDK's messageId is the idempotency key")
        kinds = self.env["drip.identity"].search([("partner_id", "=", mei.id)]).mapped("kind")
        self.assertEqual(sorted(kinds), ["anonymous_id", "anonymous_id", "email", "phone",
                                         "user_id"])

    def test_segment_sdk_batches_gzip_and_retries_after_a_5xx(self):
        calls = []
        original = DripSegmentController._drip_segment

        def flaky(controller, endpoint):
            calls.append(endpoint)
            if len(calls) == 1:
                raise ServiceUnavailable("maintenance")  # test-only: a mock, not a switch
            return original(controller, endpoint)

        analytics = self.segment(sync_mode=False, gzip=True, upload_size=100,
                                 upload_interval=0.5, max_retries=3)
        with patch.object(DripSegmentController, "_drip_segment", flaky), \
                mute_logger("odoo.http", "werkzeug"):
            for i in range(30):
                analytics.track("u-batch", "Cart Updated", {"item": i})
            analytics.flush()
        self.assertFalse(self.errors)
        self.assertEqual(calls, ["batch", "batch"], "one batch, refused once, sent again")
        self.assertEqual(len(self.events(external_user_id="u-batch")), 30,
                         "the retry stored the batch exactly once")

    def test_rudder_sdk(self):
        rudder = self.rudder()  # gzip by default
        rudder.identify("u-r", {"email": "ru@example.com", "firstName": "Ru", "lastName": "Dd"},
                        anonymous_id="device-r")
        rudder.track("u-r", "Product Viewed", {"product_id": str(self.product.id)},
                     anonymous_id="device-r")
        rudder.page("u-r", name="Home")
        rudder.alias("device-old", "u-r")
        self.assertFalse(self.errors)
        ru = self.partner_of("u-r")
        self.assertRecordValues(ru, [{"name": "Ru Dd", "email": "ru@example.com"}])
        track = self.events(partner_id=ru.id, call_type="track")
        self.assertEqual(track.product_id, self.product)
        batched = self.rudder(sync_mode=False, upload_size=50, upload_interval=0.5)
        for i in range(20):
            batched.track("u-r", "Checkout Started", {"step": i})
        batched.flush()
        self.assertFalse(self.errors)
        self.assertEqual(len(self.events(name="Checkout Started", partner_id=ru.id)), 20)

    def test_rudder_sdk_retries_after_a_5xx(self):
        calls = []
        original = DripSegmentController._drip_segment

        def flaky(controller, endpoint):
            calls.append(endpoint)
            if len(calls) == 1:
                raise ServiceUnavailable()
            return original(controller, endpoint)

        rudder = self.rudder(sync_mode=False, upload_interval=0.2, max_retries=3)
        with patch.object(DripSegmentController, "_drip_segment", flaky), \
                mute_logger("odoo.http", "werkzeug"):
            rudder.track("u-retry", "Product Viewed", {"sku": "DESK-1"})
            rudder.flush()
        self.assertEqual(len(calls), 2)
        self.assertEqual(len(self.events(external_user_id="u-retry")), 1)

    def test_message_id_replays_store_nothing_new(self):
        analytics = self.segment()
        analytics.track("u-dup", "Product Viewed", message_id="same-id")
        before = self.counts()
        analytics.track("u-dup", "Product Viewed", {"changed": True}, message_id="same-id")
        self.assertFalse(self.errors)
        self.assertEqual(self.counts(), before)
        body = {"batch": [self.message(messageId="batch-1"), self.message(messageId="batch-2")]}
        self.assertEqual(self.post("batch", body).json(), {"success": True})
        before = self.counts()
        self.assertEqual(self.post("batch", body).json(), {"success": True},
                         "a replayed batch succeeds, so the SDK stops retrying")
        self.assertEqual(self.counts(), before)

    def test_sdk_gets_segment_like_errors(self):
        wrong = SegmentClient("not-a-write-key", host=self.host, sync_mode=True)
        with mute_logger(*SDK_LOGGERS), self.assertRaises(SegmentAPIError) as caught:
            wrong.track("u-x", "Product Viewed")
        self.assertEqual((caught.exception.status, caught.exception.code),
                         (401, "invalid_write_key"))

    # ------------------------------------------------------------------ conventions
    def test_clock_skew_correction(self):
        # The device's clock is 1 hour ahead: timestamp and sentAt are both shifted.
        device_now = datetime.now(UTC) + timedelta(hours=1)
        body = {"batch": [self.message(messageId="skew-1",
                                       timestamp=(device_now - timedelta(minutes=5)).isoformat())],
                "sentAt": device_now.isoformat()}
        self.assertEqual(self.post("batch", body).status_code, 200)
        event = self.events(idempotency_key="skew-1")
        expected = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=5)
        self.assertLess(abs(event.occurred_at - expected), timedelta(minutes=1))
        # Without sentAt the timestamp is taken as is; never later than receipt.
        body = {"batch": [self.message(messageId="skew-2", timestamp="2026-01-02T03:04:05Z")]}
        self.post("batch", body)
        self.assertEqual(self.events(idempotency_key="skew-2").occurred_at,
                         datetime(2026, 1, 2, 3, 4, 5))
        future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
        self.post("batch", {"batch": [self.message(messageId="skew-3", timestamp=future)]})
        self.assertLessEqual(self.events(idempotency_key="skew-3").occurred_at,
                             datetime.now(UTC).replace(tzinfo=None))

    def test_single_calls_browser_style_and_cors(self):
        response = self.post("track", self.message(type=None, messageId="single-1"))
        self.assertEqual(response.json(), {"success": True})
        # analytics.js: text/plain (no CORS preflight), writeKey in the body, short path.
        body = {"batch": [self.message(messageId="browser-1", userId=None,
                                       anonymousId="ajs-1")],
                "writeKey": self.write_key}
        response = self.post("b", body, write_key=False, headers={"Content-Type": "text/plain"})
        self.assertEqual(response.json(), {"success": True})
        self.assertEqual(response.headers["Access-Control-Allow-Origin"], "*")
        self.assertEqual(len(self.events(idempotency_key="browser-1")), 1)
        preflight = self.opener.options(f"{self.base_url()}/drip/segment/v1/batch",
                                         headers={"Origin": "https://shop.example.com"})
        self.assertEqual(preflight.status_code, 204)
        self.assertIn("Authorization", preflight.headers["Access-Control-Allow-Headers"])
        # group calls are accepted and ignored.
        self.assertEqual(self.post("group", {"userId": "u-g", "groupId": "acme"}).status_code,
                         200)

    # ------------------------------------------------------------------ bad input
    def test_every_bad_input_gets_its_error_and_stores_nothing(self):
        good = self.message(messageId="ok-in-bad-batch")
        self.assertStoresNothing(lambda: self.post("batch", '{"batch": [', raw=True), 400,
                                 "malformed_json")
        self.assertStoresNothing(lambda: self.post("batch", {"batch": [good]},
                                                   write_key="wrong"), 401, "invalid_write_key")
        self.assertStoresNothing(lambda: self.post("batch", {"batch": [good]}, write_key=False),
                                 401, "missing_write_key")
        self.source.active = False
        self.assertStoresNothing(lambda: self.post("batch", {"batch": [good]}), 401,
                                 "invalid_write_key")
        self.source.active = True
        big = {"batch": [self.message(messageId=f"big-{i}", properties={"x": "y" * 20000})
                         for i in range(30)]}
        self.assertStoresNothing(lambda: self.post("batch", big), 413, "body_too_large")
        self.assertStoresNothing(
            lambda: self.post("track", self.message(properties={"x": "y" * 40000})), 413,
            "body_too_large")
        body = self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(
                messageId="huge", properties={"x": "y" * 40000})]}),
            400, "message_too_large")
        self.assertIn("batch[1]", body["message"])
        body = self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(type="purchase")]}),
            400, "unknown_call_type")
        self.assertIn("batch[1]", body["message"])
        self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(userId=None)]}),
            400, "missing_identifier")
        self.assertStoresNothing(
            lambda: self.post("alias", {"userId": "u-1", "messageId": "al"}), 400,
            "missing_identifier")
        self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(event="")]}),
            400, "missing_event")
        self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(timestamp="soon")]}),
            400, "invalid_timestamp")
        self.assertStoresNothing(
            lambda: self.post("batch", {"batch": [good, self.message(properties=[1])]}),
            400, "invalid_properties")
        self.assertStoresNothing(
            lambda: self.post("batch", b"\x1f\x8bnot gzip", raw=True,
                              headers={"Content-Encoding": "gzip"}), 400, "invalid_gzip")
        self.assertStoresNothing(
            lambda: self.post("batch", "<batch/>", raw=True,
                              headers={"Content-Type": "application/xml"}),
            415, "unsupported_media_type")
        self.assertStoresNothing(lambda: self.post("purchase", good), 404, "not_found")
        self.assertStoresNothing(lambda: self.post("batch", {"events": [good]}), 400,
                                 "invalid_body")
        # The good message alone goes through: the batches above were rejected whole.
        self.assertEqual(self.post("batch", {"batch": [good]}).status_code, 200)
        self.assertEqual(len(self.events(idempotency_key="ok-in-bad-batch")), 1)

    def test_gzip_raw_and_rate_limit(self):
        body = gzip.compress(json.dumps({"batch": [self.message(messageId="gz-1")]}).encode())
        response = self.post("batch", body, raw=True, headers={"Content-Encoding": "gzip"})
        self.assertEqual(response.status_code, 200)
        self.source.write({"rate_limit": 1, "rate_burst": 1000})
        full = {"batch": [self.message(messageId=f"rl-{i}") for i in range(1000)]}
        self.assertEqual(self.post("batch", full).status_code, 200)
        again = {"batch": [self.message(messageId=f"rl2-{i}") for i in range(1000)]}
        response = self.post("batch", again)
        self.assertRejected(response, 429, "rate_limited")
        self.assertGreaterEqual(int(response.headers["Retry-After"]), 1)
        self.assertFalse(self.events(idempotency_key="rl2-0"))

    # ------------------------------------------------------------------ identities
    def test_anonymous_visitor_is_stitched_on_identify(self):
        analytics = self.segment()
        analytics.page(anonymous_id="visitor-9", name="Home")
        analytics.track(anonymous_id="visitor-9", event="Product Viewed",
                        properties={"sku": "DESK-1"})
        early = self.events(anonymous_id="visitor-9")
        self.assertEqual(len(early), 2)
        self.assertFalse(early.partner_id)
        analytics.identify("u-9", {"email": "nine@example.com"}, anonymous_id="visitor-9")
        nine = self.partner_of("u-9")
        self.assertTrue(nine)
        self.assertEqual(self.events(anonymous_id="visitor-9").partner_id, nine)
        self.env.invalidate_all()
        timeline = self.env["drip.event"].search([("partner_id", "=", nine.id)],
                                                 order="occurred_at")
        self.assertEqual(timeline.mapped("call_type"), ["page", "track", "identify"])

    def test_trait_rules_over_the_sdk(self):
        analytics = self.segment()
        analytics.identify("u-t", {"name": "Tao", "email": "tao@example.com"})
        tao = self.partner_of("u-t")
        analytics.identify("u-t", {"name": "Tao Wang", "birthday": "1990-05-17"})
        self.env.invalidate_all()
        self.assertEqual((tao.name, str(tao.drip_birthday)), ("Tao Wang", "1990-05-17"))
        tao.name = "Tao WANG (VIP)"  # a sales rep corrects it in the backend
        self.env.flush_all()  # (committed, for the server)
        analytics.identify("u-t", {"name": "tao"})
        self.env.invalidate_all()
        self.assertEqual(tao.name, "Tao WANG (VIP)", "a user's value is never overwritten")

    @mute_logger("odoo.addons.drip_marketing.models.drip_ingest")
    def test_conflicting_identities(self):
        analytics = self.segment()
        analytics.identify("u-a", {"email": "a@example.com"})
        analytics.identify("u-b", {"email": "b@example.com"})
        analytics.identify("u-b", {"email": "a@example.com"})  # B claims A's email
        a, b = self.partner_of("u-a"), self.partner_of("u-b")
        self.assertNotEqual(a, b)
        conflict = self.env["drip.identity.conflict"].search([("value", "=", "a@example.com")])
        self.assertRecordValues(conflict, [{"kind": "email", "partner_id": a.id,
                                            "other_partner_id": b.id, "state": "open"}])
        self.assertEqual(b.email, "b@example.com", "nothing of A moved to B")

    # ------------------------------------------------------------------ journeys
    def test_product_viewed_enters_browse_abandonment(self):
        template = self.env["drip.template"].create({
            "name": "Still thinking?", "channel": "email", "subject": "Still thinking?",
            "body_html": "<p>Hi {{ partner.name }}</p>"})
        journey = self.env["drip.journey"].create({
            "name": "Browse abandonment", "trigger": "browse_abandoned", "trigger_hours": 4})
        self.env["drip.step"].create({"journey_id": journey.id, "name": "Reminder",
                                      "step_type": "send", "channel": "email",
                                      "template_id": template.id})
        journey.action_start()
        analytics = self.segment()
        analytics.identify("u-shopper", {"email": "shopper@example.com", "name": "Shopper"})
        analytics.track("u-shopper", "Product Viewed", {"sku": "DESK-1"})
        self.assertFalse(self.errors)
        shopper = self.partner_of("u-shopper")
        now = fields.Datetime.now()
        self.assertFalse(journey._scan_triggers(now=now + timedelta(hours=1)),
                         "not before the delay")
        entered = journey._scan_triggers(now=now + timedelta(hours=5))
        mine = entered.filtered(lambda enrollment: enrollment.partner_id == shopper)
        self.assertEqual(len(mine), 1, "the shopper entered the journey once")
        self.assertEqual(mine.journey_id, journey)
