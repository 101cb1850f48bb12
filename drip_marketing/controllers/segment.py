"""Segment's HTTP Tracking API, so Segment's and RudderStack's SDKs work unchanged.

Point an SDK's host at ``https://<odoo>/drip/segment`` with a source's write key: the
SDKs post to ``{host}/v1/batch`` (``segment-analytics-python``, ``rudder-sdk-python``,
analytics-node); the single calls ``/v1/identify``, ``/track``, ``/page``, ``/screen``,
``/alias``, ``/group``, analytics.js' short forms ``/v1/i``, ``/t``, ``/p``, ``/s``,
``/a``, ``/g``, ``/b`` and the older ``/v1/import`` are served too.

Conventions kept (https://segment.com/docs/connections/sources/catalog/libraries/server/http-api/):

* the write key as Basic-auth user name, or ``writeKey`` in the body (analytics.js);
* bodies gzip-compressed or not; ``application/json`` or ``text/plain`` (browsers);
* 32 KB per call and per message of a batch, 500 KB per batch; an oversized body gets
  413, an oversized message of a batch 400;
* ``messageId`` de-duplicates per company: a replay is answered ``{"success": true}``
  and stores nothing new, so SDK retries are safe;
* ``timestamp`` is corrected for the device's clock skew with ``sentAt``:
  ``timestamp + (receivedAt - sentAt)`` (never later than ``receivedAt``);
* ``context`` (ip, userAgent, page, campaign, library…) is kept on the event;
* success is ``200 {"success": true}``; errors are ``{"success": false, "code",
  "message"}`` (the SDKs read ``code`` and ``message``) with 400, 401, 404, 413, 415,
  or 429 + ``Retry-After`` (the SDKs retry 429 and 5xx, never the other 4xx).

Stricter than Segment, by design: a batch with one bad message (unknown call type,
neither ``userId`` nor ``anonymousId``, a track without ``event``…) is rejected whole
with 400 naming the message, and nothing of it is stored. ``group`` calls are accepted
and ignored (companies are not created from them).
"""

import logging
import math
import uuid
from datetime import UTC, datetime

from odoo import SUPERUSER_ID, http
from odoo.http import request

from .events import (
    ApiError,
    find_bad_string,
    json_response,
    json_size,
    normalize_identity,
    parse_json,
    parse_time,
    read_body,
)

_logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 32 * 1024
MAX_BATCH_BYTES = 500 * 1024
CALL_TYPES = ("identify", "track", "page", "screen", "alias", "group")
ENDPOINTS = {
    **{call: call for call in CALL_TYPES},
    "i": "identify", "t": "track", "p": "page", "s": "screen", "a": "alias", "g": "group",
}
BATCH_ENDPOINTS = ("batch", "import", "b")
BODY_TYPES = ("", "application/json", "text/plain")
ID_TRAITS = {
    "wechat_unionid": ("wechat_unionid", "unionid", "unionId"),
    "wechat_openid": ("wechat_openid", "openid", "openId"),
}


class SegmentError(ApiError):
    """An error in Segment's shape: the SDKs raise ``APIError(status, code, message)``."""

    def body(self):
        body = {"success": False, "code": self.code, "message": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body


def _id(value):
    """Segment ids may be strings or numbers; ``None`` / ``""`` mean absent."""
    if value is None or value == "":
        return None
    return normalize_identity("user_id", value)


def normalize_message(message, index, call, received_at, batch, region):
    """One Segment message -> an ingestion dict, or None (``group``). Pure.

    ``call`` is the endpoint's call type (None in a batch: the message's ``type``);
    ``batch`` holds the batch-level ``context`` and ``sentAt``. Raises SegmentError 400
    naming the message.
    """
    where = f"batch[{index}]" if call is None else "body"

    def fail(code, message_text):
        raise SegmentError(400, code, f"{where}: {message_text}",
                           errors=[{"index": index, "code": code}])

    if not isinstance(message, dict):
        fail("invalid_message", "each message must be a JSON object.")
    kind = call or message.get("type")
    if kind not in CALL_TYPES:
        fail("unknown_call_type", f"unknown call type {str(kind)[:40]!r}; expected one of "
             f"{', '.join(CALL_TYPES)}.")
    if call is None and json_size(message) > MAX_MESSAGE_BYTES:
        fail("message_too_large", f"the message is over {MAX_MESSAGE_BYTES // 1024} KB.")
    user_id, anonymous_id = message.get("userId"), message.get("anonymousId")
    for field, value in (("userId", user_id), ("anonymousId", anonymous_id)):
        if value not in (None, "") and not _id(value):
            fail(f"invalid_{field}", f"{field} must be a string of at most 255 characters.")
    user_id, anonymous_id = _id(user_id), _id(anonymous_id)
    previous_id = None
    if kind == "alias":
        previous_id = _id(message.get("previousId"))
        if not previous_id or not user_id:
            fail("missing_identifier", "an alias needs both previousId and userId.")
    elif not user_id and not anonymous_id:
        fail("missing_identifier", "userId or anonymousId is required.")
    if kind == "track":
        name = message.get("event")
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            fail("missing_event", "a track call needs an event name (1-200 characters).")
    for field in ("properties", "traits", "context", "integrations"):
        if message.get(field) is not None and not isinstance(message[field], dict):
            fail(f"invalid_{field}", f"{field} must be a JSON object.")
    if kind == "group":
        return None
    key = message.get("messageId")
    if key in (None, ""):
        key = f"drip-{uuid.uuid4()}"  # what Segment does for a message without one
    elif not isinstance(key, str | int) or isinstance(key, bool) or len(str(key)) > 255:
        fail("invalid_messageId", "messageId must be a string of at most 255 characters.")
    occurred = received_at
    stamp = message.get("timestamp") or message.get("originalTimestamp")
    if stamp is not None:
        occurred = parse_time(stamp)
        if occurred is None:
            fail("invalid_timestamp", "timestamp must be an ISO 8601 date-time.")
        sent_value = message.get("sentAt") or batch.get("sentAt")
        if sent_value is not None:
            sent_at = parse_time(sent_value)
            if sent_at is None:
                fail("invalid_sentAt", "sentAt must be an ISO 8601 date-time.")
            occurred += received_at - sent_at  # the device's clock skew
        occurred = min(occurred, received_at)
    context = dict(batch.get("context") or {}, **(message.get("context") or {}))
    properties = message.get("properties") or {}
    # Identify carries traits at the root (Segment) or in context.traits (RudderStack's
    # SDKs); other calls only name the person in context.traits.
    traits = (message.get("traits") if kind == "identify" else None) or context.get("traits")
    traits = traits if isinstance(traits, dict) else {}
    ids = {}
    for id_kind, value in (("user_id", user_id), ("anonymous_id", anonymous_id)):
        if value:
            ids[id_kind] = value
    for id_kind in ("email", "phone"):
        value = normalize_identity(id_kind, traits.get(id_kind), region)
        if value:  # an unusable email/phone trait is ignored, as Segment would
            ids[id_kind] = value
    for id_kind, names in ID_TRAITS.items():
        value = next((traits[name] for name in names if traits.get(name)), None)
        if value and (value := normalize_identity(id_kind, value)):
            ids[id_kind] = value
    for external in context.get("externalIds") or []:
        if isinstance(external, dict) and external.get("id"):
            id_kind = external.get("type") if external.get("type") in ID_TRAITS else "external"
            value = normalize_identity(id_kind, external["id"])
            if value:
                ids.setdefault(id_kind, value)
    event = {
        "index": index,
        "call_type": kind,
        "idempotency_key": str(key),
        "occurred_at": occurred.replace(microsecond=(occurred.microsecond // 1000) * 1000),
        "ids": ids,
        "context": context or None,
        "previous_id": previous_id,
    }
    if kind == "track":
        event.update(name=message["event"].strip(), payload=properties or None)
    elif kind in ("page", "screen"):
        page_name = message.get("name") or properties.get("title") or properties.get("path")
        event.update(
            name=str(page_name or ("Page viewed" if kind == "page" else "Screen viewed"))[:200],
            payload=dict(properties, **{k: message[k] for k in ("name", "category")
                                        if message.get(k)}) or None,
        )
    elif kind == "identify":
        event.update(name="identify", payload=traits or None, traits=traits)
    else:
        event.update(name="alias", payload={"previousId": previous_id})
    if kind in ("track", "page", "screen"):
        event["product_ref"] = _product_ref(properties)
        event["order_ref"] = _order_ref(properties)
    return event


def _product_ref(properties):
    """Segment's e-commerce spec: ``sku`` (internal reference) or ``product_id``."""
    sku, product = properties.get("sku"), properties.get("product_id")
    if isinstance(sku, str) and sku.strip():
        return ("sku", sku.strip())
    if isinstance(product, int) and not isinstance(product, bool) and 0 < product < 2**31:
        return ("id", product)
    if isinstance(product, str) and product.strip().isdigit() and int(product) < 2**31:
        return ("id", int(product))
    return None


def _order_ref(properties):
    order = properties.get("order_id")
    if isinstance(order, int) and not isinstance(order, bool) and 0 < order < 2**31:
        return ("id", order)
    if isinstance(order, str) and order.strip():
        text = order.strip()
        return ("id", int(text)) if text.isdigit() and int(text) < 2**31 else ("name", text)
    return None


class DripSegmentController(http.Controller):

    @http.route("/drip/segment/v1/<string:endpoint>", type="http", auth="none",
                methods=["POST"], csrf=False, save_session=False, readonly=False, cors="*")
    def drip_segment(self, endpoint, **_params):
        try:
            return self._drip_segment(endpoint)
        except SegmentError as error:
            return json_response(error.body(), error.status, error.headers)

    def _drip_segment(self, endpoint):
        httprequest = request.httprequest
        is_batch = endpoint in BATCH_ENDPOINTS
        if not is_batch and endpoint not in ENDPOINTS:
            raise SegmentError(404, "not_found", f"Unknown endpoint /v1/{endpoint[:40]}; use "
                               "/v1/batch, /v1/identify, /v1/track, /v1/page, /v1/screen, "
                               "/v1/alias or /v1/group.")
        if httprequest.mimetype not in BODY_TYPES:
            raise SegmentError(415, "unsupported_media_type",
                               "Send JSON (Content-Type: application/json).")
        received_at = datetime.now(UTC).replace(tzinfo=None)
        authorization = httprequest.authorization
        basic_key = authorization.username if (
            authorization is not None and authorization.type == "basic") else None
        source, region = self._drip_source(basic_key) if basic_key else (None, None)
        body = parse_json(
            read_body(httprequest, MAX_BATCH_BYTES if is_batch else MAX_MESSAGE_BYTES,
                      error=SegmentError),
            error=SegmentError,
        )
        if not isinstance(body, dict):
            raise SegmentError(400, "invalid_body", "The body must be a JSON object.")
        if source is None:
            source, region = self._drip_source(body.get("writeKey"))
        if is_batch:
            messages = body.get("batch")
            if not isinstance(messages, list):
                raise SegmentError(400, "invalid_body", 'A batch needs a "batch" array.')
            batch = {"context": body.get("context") if isinstance(body.get("context"), dict)
                     else None, "sentAt": body.get("sentAt")}
        else:
            messages, batch = [body], {}
        if not messages:
            return json_response({"success": True})
        env = request.env(user=SUPERUSER_ID)  # no user behind a write key: OdooBot
        allowed, retry_after = env["drip.ingest"]._rate_limit(
            f"source:{source.id}", len(messages), source.rate_limit, source.rate_burst
        )
        if not allowed:
            raise SegmentError(429, "rate_limited",
                               f"Over {source.rate_limit} events per second for this write "
                               "key; retry later.",
                               headers=[("Retry-After", str(max(1, math.ceil(retry_after))))])
        call = None if is_batch else ENDPOINTS[endpoint]
        events = [event for index, message in enumerate(messages)
                  if (event := normalize_message(message, index, call, received_at, batch,
                                                 region))]
        if not events:
            return json_response({"success": True})
        self._drip_resolve(env, source.company_id, events)
        remote = httprequest.remote_addr
        for event in events:
            event["source_ip"] = remote
        env["drip.ingest"]._ingest(events, source, now=received_at.replace(microsecond=0))
        return json_response({"success": True})

    def _drip_source(self, write_key):
        if not write_key:
            raise SegmentError(401, "missing_write_key",
                               "Send the source's write key as the Basic-auth user name.")
        source = region = None
        if isinstance(write_key, str) and len(write_key) <= 128:
            source, region = request.env["drip.ingest"].sudo()._source_context(
                write_key=write_key)
        if not source:
            raise SegmentError(401, "invalid_write_key",
                               "This write key belongs to no active source.")
        return source, region

    def _drip_resolve(self, env, company, events):
        """Event types by name, products by sku / id, orders by name / id: one query each."""
        names = {event["name"] for event in events if event["call_type"] == "track"}
        types = env["drip.event.type"]._ingest_types(names | {"page_viewed"})
        page_type = types.get("page_viewed")
        ingest = env["drip.ingest"]
        refs = [event.pop("product_ref", None) for event in events]
        products = ingest._lookup_products(
            {ref[1] for ref in refs if ref and ref[0] == "sku"},
            {ref[1] for ref in refs if ref and ref[0] == "id"},
        )
        order_refs = [event.pop("order_ref", None) for event in events]
        orders = ingest._lookup_orders(
            company,
            {ref[1] for ref in order_refs if ref and ref[0] == "name"},
            {ref[1] for ref in order_refs if ref and ref[0] == "id"},
        )
        for event, product_ref, order_ref in zip(events, refs, order_refs, strict=True):
            if event["call_type"] == "track":
                event_type = types.get(event["name"])
                # Types Odoo records itself cannot be posted: kept, but trigger nothing.
                event["event_type_id"] = (
                    event_type[0] if event_type and not event_type[1] else None
                )
            elif event["call_type"] in ("page", "screen") and page_type:
                event["event_type_id"] = page_type[0]
            event["product_id"] = products.get(product_ref) if product_ref else None
            event["order_id"] = orders.get(order_ref) if order_ref else None


__all__ = ["DripSegmentController", "find_bad_string", "normalize_message"]
