"""The event API over real HTTP: the good path and every bad input (which stores nothing)."""

import gzip
import json
import shutil
import socket
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged
from odoo.tools import mute_logger

from ..controllers.events import MAX_BODY_BYTES, check_api_key

SPEC = Path(__file__).resolve().parents[1] / "static" / "openapi" / "drip_events.yaml"
URL = "/drip/api/v1/events"


@tagged("post_install", "-at_install")
class TestEventApi(HttpCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.integrator = new_test_user(
            cls.env, login="drip_integrator",
            groups="base.group_user,drip_marketing.drip_marketing_group_manager",
        )
        cls.rep = new_test_user(
            cls.env, login="drip_api_rep",
            groups="base.group_user,drip_marketing.drip_marketing_group_user",
        )
        Keys = cls.env["res.users.apikeys"]
        cls.key = Keys.with_user(cls.integrator).sudo()._generate(None, "shop", None)
        cls.scoped_key = Keys.with_user(cls.integrator).sudo()._generate(
            "drip_marketing.events", "shop events only", None)
        cls.other_scope_key = Keys.with_user(cls.integrator).sudo()._generate(
            "some_other_scope", "other", None)
        cls.rep_key = Keys.with_user(cls.rep).sudo()._generate(None, "rep", None)
        cls.customer = cls.env["res.partner"].create(
            {"name": "Lin Wei", "email": "lin.wei@api-test.example"})
        cls.product = cls.env["product.product"].create(
            {"name": "Standing desk", "default_code": "DESK-1"})
        cls.order = cls.env["sale.order"].create({"partner_id": cls.customer.id})
        cls.viewed = cls.env.ref("drip_marketing.event_type_product_viewed")
        cls.cart = cls.env.ref("drip_marketing.event_type_cart_updated")

    # ------------------------------------------------------------------ helpers
    def post(self, body, key=None, headers=None, raw=False):
        data = body if raw else json.dumps(body)
        all_headers = {"Content-Type": "application/json"}
        if key is not False:
            all_headers["Authorization"] = f"Bearer {key or self.key}"
        all_headers.update(headers or {})
        return self.url_open(URL, data=data, headers=all_headers)

    def counts(self):
        self.env.invalidate_all()
        return {model: self.env[model].sudo().with_context(active_test=False).search_count([])
                for model in ("drip.event", "drip.identity", "res.partner",
                              "drip.identity.conflict")}

    def assertRejected(self, response, status, code, field=None, index=None):
        self.assertEqual(response.status_code, status, response.text)
        error = response.json()["error"]
        self.assertEqual(error["code"], code, error)
        self.assertEqual(error["status"], status)
        if field is not None or index is not None:
            self.assertIn({"index": index, "field": field},
                          [{"index": e["index"], "field": e["field"]} for e in error["errors"]],
                          error)
        return error

    def assertStoresNothing(self, response_factory, status, code, field=None, index=None):
        before = self.counts()
        error = self.assertRejected(response_factory(), status, code, field, index)
        self.assertEqual(self.counts(), before, "a rejected request stores nothing")
        return error

    def events(self, *overrides):
        return {"events": [dict({"type": "product_viewed", "idempotency_key": f"k-{i}",
                                 "email": "lin.wei@api-test.example"}, **values)
                           for i, values in enumerate(overrides)]}

    # ------------------------------------------------------------------ good path
    def test_good_path(self):
        before = self.counts()
        occurred = "2026-11-23T18:15:00+08:00"
        response = self.post({"events": [
            {"type": "product_viewed", "idempotency_key": "view-1", "occurred_at": occurred,
             "email": " Lin.Wei@API-Test.example ", "product_id": self.product.id,
             "properties": {"url": "/shop/desk"}},
            {"type": "Cart Updated", "idempotency_key": "cart-1", "partner_id": self.customer.id,
             "order_id": self.order.id},
            {"type": "product_viewed", "idempotency_key": "view-2",
             "email": "new.person@example.com", "phone": "+86 138 0013 8000",
             "traits": {"name": "New Person", "language": "en-US"}},
            {"type": "product_viewed", "idempotency_key": "view-3", "anonymous_id": "dev-1"},
        ]})
        self.assertEqual(response.status_code, 200, response.text)
        body = response.json()
        self.assertEqual(body["accepted"], 4)
        events = self.env["drip.event"].browse([e["id"] for e in body["events"]])
        self.assertEqual([e["index"] for e in body["events"]], [0, 1, 2, 3])
        newcomer = self.env["res.partner"].search([("email", "=", "new.person@example.com")])
        self.assertRecordValues(events, [
            {"event_type_id": self.viewed.id, "partner_id": self.customer.id,
             "product_id": self.product.id, "order_id": False,
             "occurred_at": datetime(2026, 11, 23, 10, 15), "company_id": self.env.company.id,
             "call_type": "track", "idempotency_key": "view-1", "payload": {"url": "/shop/desk"},
             "source_ip": "127.0.0.1"},
            {"event_type_id": self.cart.id, "partner_id": self.customer.id, "product_id": False,
             "order_id": self.order.id, "occurred_at": events[1].occurred_at,
             "company_id": self.env.company.id, "call_type": "track",
             "idempotency_key": "cart-1", "payload": False, "source_ip": "127.0.0.1"},
            {"event_type_id": self.viewed.id, "partner_id": newcomer.id, "product_id": False,
             "order_id": False, "occurred_at": events[2].occurred_at,
             "company_id": self.env.company.id, "call_type": "track",
             "idempotency_key": "view-2", "payload": False, "source_ip": "127.0.0.1"},
            {"event_type_id": self.viewed.id, "partner_id": False, "product_id": False,
             "order_id": False, "occurred_at": events[3].occurred_at,
             "company_id": self.env.company.id, "call_type": "track",
             "idempotency_key": "view-3", "payload": False, "source_ip": "127.0.0.1"},
        ])
        self.assertRecordValues(newcomer, [{"name": "New Person", "phone": "+8613800138000",
                                            "lang": "en_US", "company_id": self.env.company.id}])
        self.assertTrue(abs(events[1].occurred_at - datetime.now(UTC).replace(tzinfo=None))
                        < timedelta(minutes=5), "occurred_at defaults to the time of receipt")
        self.assertEqual(events.source_id.is_event_api, True)
        self.assertEqual(events.create_uid, self.integrator)
        after = self.counts()
        self.assertEqual(after["drip.event"], before["drip.event"] + 4)
        self.assertEqual(after["res.partner"], before["res.partner"] + 1)
        identities = self.env["drip.identity"].search([("partner_id", "=", newcomer.id)])
        self.assertEqual(sorted(identities.mapped("kind")), ["email", "phone"])

    def test_gzip_and_scoped_key(self):
        body = gzip.compress(json.dumps(self.events({})).encode())
        response = self.post(body, key=self.scoped_key, raw=True,
                             headers={"Content-Encoding": "gzip"})
        self.assertEqual(response.status_code, 200, response.text)

    def test_openapi_spec(self):
        from openapi_spec_validator import validate
        from openapi_spec_validator.readers import read_from_filename

        spec, _base = read_from_filename(str(SPEC))
        validate(spec)
        response = self.url_open("/drip/api/v1/openapi.json")
        self.assertEqual(response.status_code, 200)
        self.assertEqual(response.json(), json.loads(json.dumps(spec, default=str)))
        self.assertEqual(self.url_open("/drip/api/v1/openapi.yaml").text,
                         SPEC.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ bad input
    def test_authentication(self):
        self.assertStoresNothing(lambda: self.post(self.events({}), key=False), 401,
                                 "missing_api_key")
        response = self.post(self.events({}), key="0" * 40)
        self.assertRejected(response, 401, "invalid_api_key")
        self.assertIn("Bearer", response.headers["WWW-Authenticate"])
        self.assertStoresNothing(lambda: self.post(self.events({}), key=self.other_scope_key),
                                 401, "invalid_api_key")
        self.assertStoresNothing(lambda: self.post(self.events({}), key=self.rep_key), 403,
                                 "forbidden")
        basic = {"Authorization": "Basic " + "YWRtaW46YWRtaW4="}
        self.assertStoresNothing(lambda: self.post(self.events({}), key=False, headers=basic),
                                 401, "missing_api_key")

    def test_revoked_key_stops_at_once(self):
        self.assertEqual(self.post(self.events({})).status_code, 200)  # verified, memoised
        self.assertTrue(check_api_key(self.env.cr, self.key))
        self.env["res.users.apikeys"].sudo().search(
            [("user_id", "=", self.integrator.id), ("name", "=", "shop")])._remove()
        self.assertIsNone(check_api_key(self.env.cr, self.key))
        self.assertStoresNothing(lambda: self.post(self.events({"idempotency_key": "x"})),
                                 401, "invalid_api_key")

    def test_expired_key_and_archived_user_stop_at_once(self):
        # The memo only skips the PBKDF2 verification of a key already verified; the
        # key's row is read on every request, so expiry and the user's state apply at once.
        self.assertEqual(self.post(self.events({"idempotency_key": "e-1"})).status_code, 200)
        self.env.cr.execute(
            "UPDATE res_users_apikeys SET expiration_date = "
            "(now() AT TIME ZONE 'utc') - interval '1 minute' "
            "WHERE user_id = %s AND name = 'shop'", [self.integrator.id])
        self.assertIsNone(check_api_key(self.env.cr, self.key))
        self.assertStoresNothing(lambda: self.post(self.events({"idempotency_key": "e-2"})),
                                 401, "invalid_api_key")
        self.env.cr.execute(
            "UPDATE res_users_apikeys SET expiration_date = NULL "
            "WHERE user_id = %s AND name = 'shop'", [self.integrator.id])
        self.assertEqual(self.post(self.events({"idempotency_key": "e-3"})).status_code, 200)
        self.integrator.active = False
        self.env.flush_all()
        self.assertStoresNothing(lambda: self.post(self.events({"idempotency_key": "e-4"})),
                                 401, "invalid_api_key")

    def test_media_type_and_encoding(self):
        self.assertStoresNothing(
            lambda: self.post("events=1", raw=True,
                              headers={"Content-Type": "application/x-www-form-urlencoded"}),
            415, "unsupported_media_type")
        self.assertStoresNothing(
            lambda: self.post(json.dumps(self.events({})), raw=True,
                              headers={"Content-Encoding": "br"}),
            415, "unsupported_media_type")
        self.assertStoresNothing(
            lambda: self.post(b"\x1f\x8b not gzip", raw=True, headers={"Content-Encoding": "gzip"}),
            400, "invalid_gzip")

    def test_malformed_json(self):
        error = self.assertStoresNothing(lambda: self.post('{"events": [', raw=True), 400,
                                         "malformed_json")
        self.assertIn("line 1 column", error["message"])
        self.assertStoresNothing(
            lambda: self.post('{"events": [{"type": "product_viewed", "idempotency_key": "n",'
                              ' "email": "lin.wei@api-test.example", "properties": {"x": NaN}}]}',
                              raw=True), 400, "malformed_json")
        self.assertStoresNothing(
            lambda: self.post(self.events({"properties": {"note": "a\u0000b"}})), 400,
            "malformed_json")
        self.assertStoresNothing(lambda: self.post(b"\xff\xfe\x00garbage", raw=True), 400,
                                 "malformed_json")
        self.assertStoresNothing(lambda: self.post([1, 2]), 400, "invalid_body")
        self.assertStoresNothing(lambda: self.post({"events": []}), 400, "invalid_body")
        self.assertStoresNothing(lambda: self.post({"events": [], "extra": 1}), 400,
                                 "invalid_body")

    def test_oversized(self):
        too_many = {"events": [{"type": "product_viewed", "idempotency_key": f"m{i}",
                                "anonymous_id": "d"} for i in range(1001)]}
        self.assertStoresNothing(lambda: self.post(too_many), 413, "too_many_events")
        huge = json.dumps(self.events({"properties": {"blob": "x" * MAX_BODY_BYTES}}))
        self.assertStoresNothing(lambda: self.post(huge, raw=True), 413, "body_too_large")
        bomb = gzip.compress(b'{"events": [' + b" " * (2 * MAX_BODY_BYTES) + b"]}")
        self.assertStoresNothing(
            lambda: self.post(bomb, raw=True, headers={"Content-Encoding": "gzip"}), 413,
            "body_too_large")

    def test_invalid_events_name_index_and_field(self):
        internal = self.env.ref("drip_marketing.event_type_order_confirmed")
        cases = [
            ({"type": "no_such_type"}, "type", "unknown_event_type"),
            ({"type": internal.code}, "type", "internal_event_type"),
            ({"type": ""}, "type", "required"),
            ({"idempotency_key": ""}, "idempotency_key", "required"),
            ({"email": "not-an-email"}, "email", "invalid_email"),
            ({"phone": "12"}, "phone", "invalid_phone"),
            ({"occured_at": "2026-11-23T10:00:00Z"}, "occured_at", "unknown_field"),
            ({"occurred_at": "yesterday"}, "occurred_at", "invalid_datetime"),
            ({"occurred_at": (datetime.now(UTC) + timedelta(days=3)).isoformat()},
             "occurred_at", "in_future"),
            ({"product_id": 999999999}, "product_id", "unknown_product"),
            ({"product_id": "12"}, "product_id", "invalid_id"),
            ({"order_id": 999999999}, "order_id", "unknown_order"),
            ({"partner_id": 999999999, "email": None}, "partner_id", "unknown_partner"),
            ({"properties": [1, 2]}, "properties", "invalid_object"),
            ({"properties": {"x": "y" * 40000}}, "properties", "too_large"),
            ({"traits": {"shoe_size": 42}}, "traits.shoe_size", "unknown_trait"),
            ({"traits": {"birthday": "17/05/1990"}}, "traits.birthday", "invalid_date"),
            ({"traits": {"email_consent": "yes"}}, "traits.email_consent", "invalid_boolean"),
        ]
        for values, field, code in cases:
            with self.subTest(field=field, code=code):
                body = self.events({}, values)  # the bad event is the second one
                body["events"][1] = {k: v for k, v in body["events"][1].items() if v is not None}
                error = self.assertStoresNothing(lambda body=body: self.post(body), 422,
                                                 "invalid_events", field=field, index=1)
                codes = {(e["index"], e["field"]): e["code"] for e in error["errors"]}
                self.assertEqual(codes[1, field], code)
                self.assertIn(f"events[1].{field}", error["errors"][0]["message"])
        missing = {"events": [{"type": "product_viewed", "idempotency_key": "who"}]}
        self.assertStoresNothing(lambda: self.post(missing), 422, "invalid_events", field=None,
                                 index=0)
        twice = self.events({"idempotency_key": "same"}, {"idempotency_key": "same"})
        self.assertStoresNothing(lambda: self.post(twice), 422, "invalid_events",
                                 field="idempotency_key", index=1)

    def test_replay(self):
        first = self.post(self.events({"idempotency_key": "r-1"}, {"idempotency_key": "r-2"}))
        self.assertEqual(first.status_code, 200)
        before = self.counts()
        replay = self.events({"idempotency_key": "r-3"}, {"idempotency_key": "r-2"},
                             {"idempotency_key": "r-4"})
        error = self.assertRejected(self.post(replay), 409, "duplicate_idempotency_key",
                                    field="idempotency_key", index=1)
        self.assertEqual([e["index"] for e in error["errors"]], [1])
        self.assertEqual(self.counts(), before, "nothing of a partly replayed batch is stored")
        del replay["events"][1]
        self.assertEqual(self.post(replay).status_code, 200, "the others are then accepted")

    def test_replay_with_newcomers_creates_nobody(self):
        # Replays are detected by the INSERT itself, after the batch's new customers and
        # identities were created: all of it is undone.
        self.assertEqual(self.post(self.events({"idempotency_key": "rn-1"})).status_code, 200)
        before = self.counts()
        batch = self.events({"idempotency_key": "rn-2", "email": "newcomer@api-test.example",
                             "traits": {"name": "New Comer"}},
                            {"idempotency_key": "rn-3", "anonymous_id": "rn-device",
                             "user_id": "rn-user"},
                            {"idempotency_key": "rn-1"})
        self.assertStoresNothing(lambda: self.post(batch), 409, "duplicate_idempotency_key",
                                 field="idempotency_key", index=2)
        self.assertEqual(self.counts(), before)
        self.assertFalse(self.env["res.partner"].search(
            [("email", "=", "newcomer@api-test.example")]))
        del batch["events"][2]
        response = self.post(batch)
        self.assertEqual(response.status_code, 200, response.text)
        newcomer = self.env["drip.event"].browse(response.json()["events"][0]["id"]).partner_id
        self.assertEqual(newcomer.name, "New Comer")

    def test_rate_limit_per_key(self):
        source = self.env["drip.source"]._event_api_source(self.env.company)
        source.write({"rate_limit": 1, "rate_burst": 1000})
        batch = {"events": [{"type": "product_viewed", "idempotency_key": f"rl-{i}",
                             "anonymous_id": "d"} for i in range(1000)]}
        self.assertEqual(self.post(batch).status_code, 200)
        before = self.counts()
        # The bucket refills by 1 event per second: another 1,000 cannot pass yet.
        again = {"events": [dict(event, idempotency_key=f"rl2-{i}")
                            for i, event in enumerate(batch["events"])]}
        response = self.post(again)
        self.assertRejected(response, 429, "rate_limited")
        self.assertGreaterEqual(int(response.headers["Retry-After"]), 1)
        self.assertEqual(self.counts(), before)
        # Another key has its own bucket.
        self.assertEqual(self.post(self.events({"idempotency_key": "rl-other"}),
                                   key=self.scoped_key).status_code, 200)

    @mute_logger("odoo.addons.drip_marketing.models.drip_ingest")
    def test_conflicting_identifiers_are_recorded(self):
        other = self.env["res.partner"].create({"name": "Other", "email": "other@example.com"})
        self.env["drip.identity"].create({"partner_id": other.id, "kind": "external",
                                          "value": "crm-1"})
        response = self.post(self.events({"external_id": "crm-1",
                                          "email": "lin.wei@api-test.example"}))
        self.assertEqual(response.status_code, 200)
        event = self.env["drip.event"].browse(response.json()["events"][0]["id"])
        self.assertEqual(event.partner_id, other, "the external id outranks the email")
        conflict = self.env["drip.identity.conflict"].search([("event_id", "=", event.id)])
        self.assertRecordValues(conflict, [{"kind": "email", "value": "lin.wei@api-test.example",
                                            "partner_id": self.customer.id,
                                            "other_partner_id": other.id}])


@tagged("post_install", "-at_install")
class TestSourceContext(TransactionCase):
    """The source of a request and its phone region, read in one query."""

    def test_event_api_source_and_region(self):
        Ingest = self.env["drip.ingest"]
        company = self.env["res.company"].create({"name": "Drip FR shop"})
        self.assertEqual(Ingest._source_context(company_id=company.id), (None, "CN"),
                         "no source yet; no country: phone numbers read as Chinese")
        company.partner_id.country_id = self.env.ref("base.fr")
        source = self.env["drip.source"]._event_api_source(company)
        source.write({"rate_limit": 7, "rate_burst": 1000, "unknown_partner_policy": "never"})
        self.env.invalidate_all()
        found, region = Ingest._source_context(company_id=company.id)
        self.assertEqual((found, region), (source, "FR"))
        with self.assertQueryCount(0):  # the fields ingestion reads came with the row
            self.assertEqual((found.company_id, found.rate_limit, found.rate_burst,
                              found.unknown_partner_policy), (company, 7, 1000, "never"))
        source.active = False  # the event API's source serves archived or not
        self.assertEqual(Ingest._source_context(company_id=company.id)[0], source)

    def test_write_key_source(self):
        Ingest = self.env["drip.ingest"]
        source = self.env["drip.source"].create({"name": "App"})
        self.assertEqual(Ingest._source_context(write_key=source.sudo().write_key)[0], source)
        self.assertIsNone(Ingest._source_context(write_key="no such key")[0])
        source.active = False
        self.assertIsNone(Ingest._source_context(write_key=source.sudo().write_key)[0],
                          "an archived source's key is refused")


@tagged("post_install", "-at_install")
class TestRateLimiter(TransactionCase):
    """The token bucket, in PostgreSQL and in a real Redis (when redis-server exists)."""

    def assertBucket(self, bucket):
        Ingest = self.env["drip.ingest"]
        self.assertEqual(Ingest._rate_limit(bucket, 10, rate=2, burst=10), (True, 0.0))
        allowed, retry_after = Ingest._rate_limit(bucket, 4, rate=2, burst=10)
        self.assertFalse(allowed, "the burst is spent")
        self.assertTrue(1.0 < retry_after <= 2.0, retry_after)
        self.assertTrue(Ingest._rate_limit("other-bucket", 4, rate=2, burst=10)[0])

    def test_postgresql_bucket(self):
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.redis_url", False)
        self.assertBucket("pg-bucket")
        self.env.cr.execute("SELECT tokens FROM drip_rate_bucket WHERE key = 'pg-bucket'")
        self.assertLess(self.env.cr.fetchone()[0], 1)

    def test_redis_bucket_and_fallback(self):
        binary = shutil.which("redis-server")
        if not binary:
            self.skipTest("redis-server is not installed")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(server.wait)
        self.addCleanup(server.terminate)
        import redis

        client = redis.Redis(port=port)
        for _attempt in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        url = f"redis://127.0.0.1:{port}/0"
        self.env["ir.config_parameter"].sudo().set_param("drip_marketing.redis_url", url)
        self.assertBucket("redis-bucket")
        self.assertTrue(client.exists(f"drip:rate:{self.env.cr.dbname}:redis-bucket"))
        self.env.cr.execute("SELECT 1 FROM drip_rate_bucket WHERE key = 'redis-bucket'")
        self.assertFalse(self.env.cr.fetchall(), "Redis configured: nothing in PostgreSQL")
        server.terminate()
        server.wait()
        with mute_logger("odoo.addons.drip_marketing.models.drip_ingest"):
            self.assertBucket("redis-down-bucket")  # PostgreSQL takes over
