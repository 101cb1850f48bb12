"""The event API: ``POST /drip/api/v1/events`` (a JSON batch, Odoo API key).

A request is validated completely before anything is written, so a rejected request
stores nothing; every error names the event index and the field. The machine-readable
contract is ``static/openapi/drip_events.yaml`` (served at ``/drip/api/v1/openapi.json``
and ``…/openapi.yaml``); ``docs/integrators.md`` has the curl example.

Status codes, checked in this order:

* 415 ``unsupported_media_type``: not ``application/json``, or an unknown
  ``Content-Encoding`` (``gzip`` is accepted);
* 401 ``missing_api_key`` / ``invalid_api_key`` (``Authorization: Bearer <key>``, an
  Odoo API key of scope ``drip_marketing.events`` or a global one); 403 ``forbidden``
  when its user may not create events (Drip Marketing / Manager);
* 413 ``body_too_large`` (1 MiB, after decompression) / ``too_many_events`` (1,000);
* 400 ``malformed_json``, ``invalid_gzip``, ``invalid_body``;
* 429 ``rate_limited`` with ``Retry-After`` (token bucket per API key, in events);
* 422 ``invalid_events``: the list of bad fields (type, unknown event type, email…);
* 409 ``duplicate_idempotency_key``: keys already stored (the indexes are listed:
  re-send the others).
"""

import functools
import hashlib
import json
import logging
import math
import re
import threading
import zlib
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from pathlib import Path

from odoo import http
from odoo.http import request

from odoo.addons.base.models.res_users import INDEX_SIZE, KEY_CRYPT_CONTEXT

from ..engine import identity as identity_engine
from ..models.drip_source import MAX_BATCH_EVENTS

_logger = logging.getLogger(__name__)

API_SCOPE = "drip_marketing.events"
MAX_BODY_BYTES = 1 << 20
MAX_PROPERTIES_BYTES = 32 << 10
MAX_KEY_LENGTH = 255
MAX_FUTURE = timedelta(hours=24)
PG_INT_MAX = 2**31 - 1
OPENAPI_FILE = Path(__file__).resolve().parent.parent / "static" / "openapi" / "drip_events.yaml"

# Request field -> identity kind.
ID_FIELDS = {
    "email": "email",
    "phone": "phone",
    "user_id": "user_id",
    "external_id": "external",
    "anonymous_id": "anonymous_id",
    "wechat_unionid": "wechat_unionid",
    "wechat_openid": "wechat_openid",
}
EVENT_FIELDS = {
    "type", "idempotency_key", "occurred_at", "partner_id", "product_id", "order_id",
    "properties", "traits", *ID_FIELDS,
}
TRAIT_KEYS = {"name", "first_name", "last_name", "firstName", "lastName", "language",
              "locale", "lang", "birthday", "email_consent", "sms_consent"}
# A JSON string escape that decodes to NUL or a UTF-16 surrogate (lone ones break
# PostgreSQL): look closer only when the raw body has one.
_SUSPECT_ESCAPE = re.compile(rb"\\u(0000|[dD][89abAB])")


# ---------------------------------------------------------------------- helpers
class ApiError(Exception):
    """An HTTP error answered as JSON; nothing of the request is stored."""

    def __init__(self, status, code, message, errors=None, headers=None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.errors, self.headers = errors, headers or []

    def body(self):
        error = {"status": self.status, "code": self.code, "message": self.message}
        if self.errors:
            error["errors"] = self.errors
        return {"error": error}


def json_response(data, status=200, headers=None):
    body = json.dumps(data, default=str).encode()  # ASCII: Content-Length is exact
    return request.make_response(
        body,
        headers=[("Content-Type", "application/json; charset=utf-8"),
                 ("Cache-Control", "no-store"), *(headers or [])],
        status=status,
    )


def read_body(httprequest, limit, error=ApiError):
    """The request body, un-gzipped, at most ``limit`` bytes; raises ``error`` otherwise.

    ``error(status, code, message)`` builds the exception (Segment answers in its own
    format). The body is cached on the request, so a retry after a serialization
    failure reads it again.
    """
    length = httprequest.content_length
    if length is not None and length > limit:
        raise error(413, "body_too_large", f"The body is {length} bytes; at most {limit}.")
    data = httprequest.get_data(cache=True)
    if len(data) > limit:
        raise error(413, "body_too_large", f"The body is over {limit} bytes.")
    encoding = (httprequest.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        decoder = zlib.decompressobj(16 + zlib.MAX_WBITS if "gzip" in encoding else zlib.MAX_WBITS)
        try:
            data = decoder.decompress(data, limit + 1)
            if not decoder.eof and len(data) <= limit:
                raise zlib.error("truncated stream")
        except zlib.error as exc:
            raise error(400, "invalid_gzip",
                        f"The body is not valid {encoding} data: {exc}.") from None
        if len(data) > limit:
            raise error(413, "body_too_large",
                        f"The decompressed body is over {limit} bytes.")
    elif encoding != "identity":
        raise error(415, "unsupported_media_type",
                    f"Content-Encoding '{encoding}' is not supported; use gzip or none.")
    return data


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text):
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text} is out of range")
    return value


def parse_json(data, error=ApiError):
    """Decode strict JSON (no NaN / Infinity) or raise ``error`` 400 ``malformed_json``."""
    try:
        value = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise error(400, "malformed_json",
                    f"Malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}.") from None
    except UnicodeDecodeError:
        raise error(400, "malformed_json", "The body is not UTF-8 encoded JSON.") from None
    except (ValueError, RecursionError) as exc:
        raise error(400, "malformed_json", f"Malformed JSON: {exc}.") from None
    if _SUSPECT_ESCAPE.search(data) and (path := find_bad_string(value)):
        raise error(400, "malformed_json",
                    f"{path}: text must not contain NUL characters or lone surrogates.")
    return value


def find_bad_string(value, path="body"):
    """The path of the first string (or key) with a NUL or a lone surrogate, or None."""
    if isinstance(value, str):
        if "\x00" in value or any(0xD800 <= ord(ch) <= 0xDFFF for ch in value):
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = find_bad_string(key, path) or find_bad_string(item, f"{path}.{key}")
            if found:
                return found
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found = find_bad_string(item, f"{path}[{position}]")
            if found:
                return found
    return None


def parse_time(value):
    """Naive UTC datetime of an ISO 8601 string (no offset means UTC), else None."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    return _parse_time(value)


@functools.lru_cache(maxsize=4096)  # the events of a batch often share their timestamp
def _parse_time(value):
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


_SIZE_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)


def json_size(value):
    """Bytes of ``value`` as compact ASCII JSON: how the SDKs measure a message."""
    return len(_SIZE_ENCODER.encode(value))


@functools.lru_cache(maxsize=65536)
def _normalize_cached(kind, value, region):
    return identity_engine.normalize_identity(kind, value, region)


def normalize_identity(kind, value, region="CN"):
    """The engine's normalisation, memoised for strings (the same people come back)."""
    if isinstance(value, str) and len(value) <= 320:
        return _normalize_cached(kind, value, region)
    return identity_engine.normalize_identity(kind, value, region)


def is_id(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= PG_INT_MAX


# ------------------------------------------------------------------ API keys
_KEY_CACHE_LOCK = threading.Lock()
_KEY_CACHE = OrderedDict()
_KEY_CACHE_SIZE = 1024


def check_api_key(cr, key):
    """``(user id, key id, company id)`` of a valid API key, else None.

    Odoo's own check (``res.users.apikeys._check_credentials``) plus the key's id, for a
    rate limit per key. The query runs every time, so a revoked or expired key stops at
    once; only the slow PBKDF2 verification is remembered, per (key row, stored hash,
    SHA-256 of the presented key).
    """
    if not isinstance(key, str) or not INDEX_SIZE < len(key) <= 256:
        return None
    cr.execute(
        """
        SELECT k.id, k.user_id, u.company_id, k.key
          FROM res_users_apikeys k JOIN res_users u ON u.id = k.user_id
         WHERE u.active AND k.index = %s AND (k.scope IS NULL OR k.scope = %s)
           AND (k.expiration_date IS NULL OR k.expiration_date >= now() at time zone 'utc')
        """,
        [key[:INDEX_SIZE], API_SCOPE],
    )
    digest = hashlib.sha256(key.encode()).hexdigest()
    for key_id, user_id, company_id, hashed in cr.fetchall():
        memo = (key_id, hashed, digest)
        with _KEY_CACHE_LOCK:
            if memo in _KEY_CACHE:
                _KEY_CACHE.move_to_end(memo)
                return user_id, key_id, company_id
        if KEY_CRYPT_CONTEXT.verify(key, hashed):
            with _KEY_CACHE_LOCK:
                _KEY_CACHE[memo] = True
                while len(_KEY_CACHE) > _KEY_CACHE_SIZE:
                    _KEY_CACHE.popitem(last=False)
            return user_id, key_id, company_id
    return None


# ------------------------------------------------------------------ validation
def validate_events(body, now, region):
    """Check the shape of a request body. Pure: no database.

    Returns ``(events, errors)``: one dict per event (``index``, ``type``, ``ids``…)
    and the list of errors ``{index, field, code, message}``.
    """
    if not isinstance(body, dict) or not isinstance(body.get("events"), list):
        raise ApiError(400, "invalid_body",
                       'The body must be a JSON object {"events": [ ... ]}.')
    unknown = set(body) - {"events"}
    if unknown:
        raise ApiError(400, "invalid_body",
                       f"Unknown top-level field(s): {', '.join(sorted(unknown))}.")
    items = body["events"]
    if not items:
        raise ApiError(400, "invalid_body", "The batch is empty: send 1 to "
                       f"{MAX_BATCH_EVENTS} events.")
    if len(items) > MAX_BATCH_EVENTS:
        raise ApiError(413, "too_many_events",
                       f"The batch has {len(items)} events; at most {MAX_BATCH_EVENTS}.")
    events, errors, keys = [], [], {}

    def fail(index, field, code, message):
        errors.append({"index": index, "field": field, "code": code,
                       "message": f"events[{index}].{field}: {message}" if field
                       else f"events[{index}]: {message}"})

    for index, item in enumerate(items):
        if not isinstance(item, dict):
            fail(index, None, "invalid_event", "each event must be a JSON object.")
            continue
        if unknown_fields := item.keys() - EVENT_FIELDS:
            for field in sorted(unknown_fields):
                fail(index, field, "unknown_field", "unknown field (see the OpenAPI spec).")
        event = {"index": index, "ids": {}}
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.strip() or len(kind) > 128:
            fail(index, "type", "required", "the event type is required (e.g. product_viewed).")
        else:
            event["type"] = kind.strip()
        key = item.get("idempotency_key")
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_LENGTH:
            fail(index, "idempotency_key", "required",
                 f"a non-empty string of at most {MAX_KEY_LENGTH} characters is required.")
        elif key in keys:
            fail(index, "idempotency_key", "duplicate_in_batch",
                 f"same key as events[{keys[key]}].")
        else:
            keys[key] = index
            event["idempotency_key"] = key
        occurred = item.get("occurred_at")
        if occurred is None:
            event["occurred_at"] = now
        elif (moment := parse_time(occurred)) is None:
            fail(index, "occurred_at", "invalid_datetime",
                 "an ISO 8601 date-time is required, e.g. 2026-11-23T10:15:00Z.")
        elif moment > now + MAX_FUTURE:
            fail(index, "occurred_at", "in_future", "more than 24 hours in the future.")
        else:
            event["occurred_at"] = moment
        for field, id_kind in ID_FIELDS.items():
            value = item.get(field)
            if value is None:
                continue
            normalized = normalize_identity(id_kind, value, region)
            if not normalized:
                fail(index, field, f"invalid_{field}", f"{json.dumps(value)[:80]} is not a valid "
                     f"{field.replace('_', ' ')}.")
            else:
                event["ids"][id_kind] = normalized
        for field in ("partner_id", "product_id", "order_id"):
            value = item.get(field)
            if value is not None and not is_id(value):
                fail(index, field, "invalid_id", "a positive integer id is required.")
            elif value is not None:
                event[field] = value
        if not event["ids"] and "partner_id" not in event and not any(
                e["field"] in ID_FIELDS or e["field"] == "partner_id"
                for e in errors if e["index"] == index):
            fail(index, None, "missing_identifier",
                 "say who did it: partner_id, email, phone, user_id, external_id, "
                 "anonymous_id, wechat_unionid or wechat_openid.")
        for field in ("properties", "traits"):
            value = item.get(field)
            if value is None:
                continue
            if not isinstance(value, dict):
                fail(index, field, "invalid_object", "a JSON object is required.")
            elif json_size(value) > MAX_PROPERTIES_BYTES:
                fail(index, field, "too_large", f"over {MAX_PROPERTIES_BYTES // 1024} KB.")
            else:
                event[field] = value
        traits = event.get("traits") or {}
        for name in sorted(set(traits) - TRAIT_KEYS):
            fail(index, f"traits.{name}", "unknown_trait",
                 f"unknown trait; known: {', '.join(sorted(TRAIT_KEYS))}.")
        if "birthday" in traits and not _valid_date(traits["birthday"]):
            fail(index, "traits.birthday", "invalid_date", "a date YYYY-MM-DD is required.")
        for consent in ("email_consent", "sms_consent"):
            if consent in traits and not isinstance(traits[consent], bool):
                fail(index, f"traits.{consent}", "invalid_boolean",
                     "true (opted in) or false (opted out) is required.")
        events.append(event)
    return events, errors


def _valid_date(value):
    try:
        datetime.strptime(value, "%Y-%m-%d")
    except (TypeError, ValueError):
        return False
    return True


# ------------------------------------------------------------------ controller
class DripEventApiController(http.Controller):

    @http.route("/drip/api/v1/events", type="http", auth="none", methods=["POST"],
                csrf=False, save_session=False, readonly=False)
    def drip_events(self, **_params):
        try:
            return self._drip_events()
        except ApiError as error:
            return json_response(error.body(), error.status, error.headers)

    @http.route(["/drip/api/v1/openapi.json", "/drip/api/v1/openapi.yaml"], type="http",
                auth="none", methods=["GET"], save_session=False, cors="*")
    def drip_openapi(self, **_params):
        text = OPENAPI_FILE.read_text(encoding="utf-8")
        if request.httprequest.path.endswith(".yaml"):
            return request.make_response(
                text, headers=[("Content-Type", "application/yaml; charset=utf-8")]
            )
        try:
            import yaml
        except ImportError:
            return json_response(
                {"error": {"status": 404, "code": "yaml_missing",
                           "message": "PyYAML is not installed; read /drip/api/v1/openapi.yaml."}},
                404,
            )
        return json_response(yaml.safe_load(text))

    def _drip_events(self):
        httprequest = request.httprequest
        if httprequest.mimetype != "application/json":
            raise ApiError(415, "unsupported_media_type",
                           "Send the batch as Content-Type: application/json.")
        env, key_id = self._drip_authenticate(request.env, httprequest)
        body = parse_json(read_body(httprequest, MAX_BODY_BYTES))
        company = env.company
        now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
        ingest = env["drip.ingest"]
        source, region = ingest._source_context(company_id=company.id)
        if not source:
            source = env["drip.source"]._event_api_source(company)
        events, errors = validate_events(body, now, region)
        allowed, retry_after = ingest._rate_limit(
            f"apikey:{key_id}", len(events), source.rate_limit, source.rate_burst
        )
        if not allowed:
            raise ApiError(429, "rate_limited",
                           f"Over {source.rate_limit} events per second for this API key; "
                           "retry later.",
                           headers=[("Retry-After", str(max(1, math.ceil(retry_after))))])
        errors += self._drip_check_references(env, company, events)
        errors.sort(key=lambda error: error["index"])
        if errors:
            raise ApiError(
                422, "invalid_events",
                f"{len({e['index'] for e in errors})} of {len(events)} events are invalid; "
                "nothing was stored.", errors=errors[:100],
            )
        remote = httprequest.remote_addr
        for event in events:
            event["source_ip"] = remote
        # Replays are found by the INSERT itself (ON CONFLICT DO NOTHING RETURNING):
        # no lookup beforehand, since a replay is the exception.
        results = ingest._ingest(events, source, now=now, keys_checked=True)
        replays = {events[position]["idempotency_key"]
                   for position, result in enumerate(results) if result.get("duplicate")}
        if replays:
            # Already stored, earlier or by a concurrent request (PostgreSQL may report
            # the latter as a serialization failure, and Odoo retries the request):
            # keep none of this batch, customers and identities included.
            env.cr.rollback()
            env.invalidate_all()
            raise self._drip_replay_error(events, replays)
        return json_response({
            "accepted": len(results),
            "events": [{"index": result["index"], "id": result["id"]} for result in results],
        })

    def _drip_authenticate(self, env, httprequest):
        authorization = httprequest.authorization
        if authorization is None or authorization.type != "bearer" or not authorization.token:
            raise ApiError(401, "missing_api_key",
                           "Send an Odoo API key as 'Authorization: Bearer <key>'.",
                           headers=[("WWW-Authenticate", 'Bearer realm="drip"')])
        found = check_api_key(env.cr, authorization.token)
        if not found:
            raise ApiError(401, "invalid_api_key", "This API key is unknown, revoked or expired.",
                           headers=[("WWW-Authenticate",
                                     'Bearer realm="drip", error="invalid_token"')])
        user_id, key_id, company_id = found
        # Events, customers and identities are created by the key's user, in its company.
        user_env = env(user=user_id, context=dict(env.context, allowed_company_ids=[company_id]))
        if not user_env["drip.event"].has_access("create"):
            raise ApiError(403, "forbidden",
                           "The key's user may not record events: give them the "
                           "'Drip Marketing / Manager' group.")
        return user_env, key_id

    def _drip_check_references(self, env, company, events):
        """Event types, partners, products and orders exist (one query per kind)."""
        errors = []
        types = env["drip.event.type"]._ingest_types({e["type"] for e in events if "type" in e})
        partner_ids = {e["partner_id"] for e in events if "partner_id" in e}
        product_ids = {e["product_id"] for e in events if "product_id" in e}
        order_ids = {e["order_id"] for e in events if "order_id" in e}
        partners = set()
        if partner_ids:
            env.cr.execute(
                "SELECT id FROM res_partner WHERE id = ANY(%s) "
                "AND (company_id IS NULL OR company_id = %s)",
                [list(partner_ids), company.id],
            )
            partners = {row[0] for row in env.cr.fetchall()}
        products = {key[1] for key in env["drip.ingest"]._lookup_products(set(), product_ids)}
        orders = {key[1] for key in env["drip.ingest"]._lookup_orders(company, set(), order_ids)}
        references = (("partner_id", partners, "customer"), ("product_id", products, "product"),
                      ("order_id", orders, "sales order"))
        for event in events:
            index = event["index"]
            event_type = types.get(event.get("type"))
            if "type" not in event:
                pass
            elif not event_type:
                errors.append({"index": index, "field": "type", "code": "unknown_event_type",
                               "message": f"events[{index}].type: unknown event type "
                               f"'{event['type']}' (see Drip Marketing > Configuration > "
                               "Event types)."})
            elif event_type[1]:
                errors.append({"index": index, "field": "type", "code": "internal_event_type",
                               "message": f"events[{index}].type: '{event['type']}' is "
                               "recorded by Odoo itself and cannot be posted."})
            else:
                event["event_type_id"] = event_type[0]
                event["name"] = event["type"]
            for field, found, label in references:
                if field in event and event[field] not in found:
                    errors.append({"index": index, "field": field, "code": f"unknown_{field[:-3]}",
                                   "message": f"events[{index}].{field}: no {label} with id "
                                   f"{event[field]}."})
            event["call_type"] = "track"
            event["payload"] = event.pop("properties", None)
        return errors

    def _drip_replay_error(self, events, keys):
        indexes = [e["index"] for e in events if e["idempotency_key"] in keys]
        return ApiError(
            409, "duplicate_idempotency_key",
            f"{len(indexes)} event(s) were already received (same idempotency_key); "
            "nothing of this batch was stored: drop them and send the others again.",
            errors=[{"index": index, "field": "idempotency_key", "code": "already_received",
                     "message": f"events[{index}].idempotency_key: already received."}
                    for index in indexes[:100]],
        )
