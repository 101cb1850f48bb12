"""Set-based ingestion of behavior events: the event API and Segment-format calls.

Both controllers validate a request completely, then hand plain dicts to
:meth:`DripIngest._ingest`, which stores a whole batch with a fixed number of SQL
statements whatever its size:

1. replays: one indexed lookup of the batch's idempotency keys (Segment ``messageId``,
   whose replays are skipped silently); the event API skips it (``keys_checked``): the
   INSERT of step 4 finds replays (``ON CONFLICT DO NOTHING RETURNING``) and the
   controller then rolls the whole request back;
2. identities: one statement probing the ``(company_id, kind, value)`` index for every
   identifier of the batch, then one lookup of ``res_partner.email_normalized`` and one
   of ``drip_phone_sanitized`` for the emails / phones that are not identities yet
   (customers typed in the backend);
3. a pure decision pass (:func:`plan_identities`, :func:`decide_trait_updates`): whose
   event it is, which identifiers to link, which conflicts to record, whom to create;
4. one batched ``create`` of the new customers, one ``INSERT … ON CONFLICT DO NOTHING``
   of the new identities, one of the events, one ``INSERT`` of the new conflicts, and one
   ``UPDATE`` per identifier kind that stitches earlier anonymous events onto the
   customer just identified.

The controllers read the source, its settings and the company's phone region in one
query (:meth:`DripIngest._source_context`).

Identity and trait rules are documented in ``docs/integrators.md`` and below, next to
the code that applies them.
"""

import json
import logging
import os
import threading
import time
import uuid
from collections import defaultdict
from datetime import date, datetime, timedelta

import psycopg2
from psycopg2.extensions import ISOLATION_LEVEL_READ_COMMITTED
from psycopg2.extras import execute_values

from odoo import api, fields, models, modules, sql_db
from odoo.tools import SQL
from odoo.tools.sql import create_index

_logger = logging.getLogger(__name__)

# Trust order: when an event carries several known identifiers that point to different
# customers, the first one in this order decides whose event it is; the others are
# recorded as conflicts (never merged).
TRUST_ORDER = (
    "user_id",
    "external",
    "email",
    "phone",
    "wechat_unionid",
    "wechat_openid",
    "anonymous_id",
)
# Identifiers of a person (a customer may be created for them); an anonymous id only
# names a device or browser.
PERSON_KINDS = TRUST_ORDER[:-1]
CONTACT_KINDS = ("email", "phone")
# Partner fields ingestion may fill from traits, and the ledger of who set them.
TRAIT_FIELDS = ("name", "email", "phone", "lang", "drip_birthday")
CONSENT_TRAITS = {"email_consent": "email", "sms_consent": "sms"}
INGEST_CONTEXT_KEY = "drip_ingest"
EVENT_COLUMNS = (
    "name", "event_type_id", "partner_id", "company_id", "source_id", "call_type",
    "anonymous_id", "external_user_id", "idempotency_key", "occurred_at", "received_at",
    "product_id", "order_id", "payload", "context_data", "source_ip", "processed",
    "create_uid", "create_date", "write_uid", "write_date",
)


# ---------------------------------------------------------------------- pure decisions
def may_create(ids, policy):
    """Whether an unknown person with identifiers ``ids`` becomes a new customer."""
    if policy == "create":
        return any(kind in ids for kind in PERSON_KINDS)
    if policy == "contact":
        return any(kind in ids for kind in CONTACT_KINDS)
    return False


def plan_identities(events, known, policy):
    """Decide, in batch order, whose each event is. Pure: no database.

    ``events``: dicts with ``ids`` ({kind: normalised value}), ``partner_id`` (an id the
    caller named explicitly, or None) and, for alias calls, ``previous_id``.
    ``known``: {(kind, value): partner id} of the identifiers already stored; updated in
    place as the batch links new ones, so a later event of the batch resolves through an
    earlier one (identify then track).

    Rules:

    * an explicit ``partner_id`` wins; otherwise the first known identifier in
      :data:`TRUST_ORDER` decides; for an alias, the customer of ``userId``, else the one
      of ``previousId``;
    * nobody known: a new customer (negative placeholder ids -1, -2, …) when
      :func:`may_create` says so, else the event stays unattached (stitched later
      through its anonymous id or user id);
    * each identifier of the event that nobody holds is linked to the event's customer;
      one held by *another* customer is a conflict (kind, value, holder, claimant, event
      index) and is not linked; customers are never merged here;
    * an alias's ``previousId`` is looked up as a user id, then as an anonymous id; if
      unknown it is linked as an anonymous id of the ``userId``'s customer.

    Returns a dict: ``partners`` (one id, placeholder or None per event), ``new`` (one
    dict per placeholder: ``ids`` and ``index`` of the event that created it), ``links``
    (kind, value, partner, event index) and ``conflicts``.
    """
    partners, new, links, conflicts = [], [], [], []
    for index, event in enumerate(events):
        ids = event["ids"]
        partner = event.get("partner_id")
        previous = event.get("previous_id")
        previous_key = previous_owner = None
        if previous:
            previous_key = next(
                (key for key in (("user_id", previous), ("anonymous_id", previous))
                 if key in known),
                ("anonymous_id", previous),
            )
            previous_owner = known.get(previous_key)
        if not partner:
            partner = next(
                (known[kind, ids[kind]] for kind in TRUST_ORDER
                 if kind in ids and (kind, ids[kind]) in known),
                None,
            )
        if not partner and previous_owner:
            partner = previous_owner
        if not partner and may_create(ids, event.get("policy", policy)):
            new.append({"ids": dict(ids), "index": index})
            partner = -len(new)
        if partner:
            pairs = [(kind, ids[kind]) for kind in TRUST_ORDER if kind in ids]
            if previous_key:
                pairs.append(previous_key)
            for key in pairs:
                holder = known.get(key)
                if holder is None:
                    known[key] = partner
                    links.append((key[0], key[1], partner, index))
                elif holder != partner:
                    conflicts.append((key[0], key[1], holder, partner, index))
        partners.append(partner)
    return {"partners": partners, "new": new, "links": links, "conflicts": conflicts}


def decide_trait_updates(current, markers, proposed):
    """Which partner fields to write from traits, and the new markers. Pure.

    ``current``: {field: value now}; ``markers``: {field: ISO time} of the fields that
    ingestion set (and no user changed since); ``proposed``: {field: (value, ISO time of
    the event)}.

    A field is written when the trait has a value, differs, and the field is empty or
    was itself set by ingestion from an event no newer than this one. A value a user
    set (no marker) is never overwritten; an empty trait never clears a field.
    """
    updates, new_markers = {}, dict(markers)
    for fname, (value, when) in proposed.items():
        if value in (None, "", False) or current.get(fname) == value:
            continue
        if not current.get(fname) or (fname in markers and markers[fname] <= when):
            updates[fname] = value
            new_markers[fname] = when
    return updates, (new_markers if updates else markers)


def normalize_lang(value, installed_codes):
    """An installed language code for a trait such as ``zh-CN``, ``zh_Hans_CN``, ``fr``."""
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace("-", "_")
    parts = text.split("_")
    language = parts[0].lower()
    region = parts[-1].upper() if len(parts) > 1 else ""
    by_lower = {code.lower(): code for code in installed_codes}
    candidate = f"{language}_{region}" if region else language
    if candidate.lower() in by_lower:
        return by_lower[candidate.lower()]
    same_language = sorted(code for code in installed_codes
                           if code.split("_")[0].lower() == language)
    # zh_Hant / zh_TW must not fall back to simplified Chinese (and vice versa).
    if language == "zh" and len(parts) > 1:
        traditional = any(part.upper() in ("HANT", "TW", "HK", "MO") for part in parts[1:])
        same_language = [code for code in same_language
                         if (code in ("zh_TW", "zh_HK")) == traditional]
    return same_language[0] if same_language else None


def parse_birthday(value):
    """A date from ``1990-05-17`` or an ISO datetime; None when unusable."""
    if isinstance(value, date):
        return value if not isinstance(value, datetime) else value.date()
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def trait_values(traits):
    """Field values proposed by a traits dict (Segment spec names), unvalidated lang."""
    if not isinstance(traits, dict):
        return {}
    values = {}
    name = traits.get("name")
    if not (isinstance(name, str) and name.strip()):
        first = traits.get("firstName") or traits.get("first_name") or ""
        last = traits.get("lastName") or traits.get("last_name") or ""
        name = " ".join(part.strip() for part in (first, last)
                        if isinstance(part, str) and part.strip())
    if isinstance(name, str) and name.strip():
        values["name"] = name.strip()[:256]
    lang = traits.get("language") or traits.get("locale") or traits.get("lang")
    if lang:
        values["lang"] = lang
    birthday = parse_birthday(traits.get("birthday"))
    if birthday:
        values["drip_birthday"] = birthday
    return values


def consent_values(traits):
    """{consent channel: 'opted_in' | 'opted_out'} from ``email_consent`` / ``sms_consent``."""
    if not isinstance(traits, dict):
        return {}
    result = {}
    for key, channel in CONSENT_TRAITS.items():
        value = traits.get(key)
        if value in (True, "opted_in", "opt_in", "subscribed", "yes"):
            result[channel] = "opted_in"
        elif value in (False, "opted_out", "opt_out", "unsubscribed", "no"):
            result[channel] = "opted_out"
    return result


def utc_iso(moment):
    return moment.replace(microsecond=0).isoformat()


# ------------------------------------------------------------------ rate limiting (Redis)
_REDIS_LOCK = threading.Lock()
_REDIS_CLIENTS = {}
_REDIS_WARNED = [-1e9]
# KEYS[1] bucket; ARGV rate, burst, cost, now (seconds). Returns {allowed, tokens*1000}.
_REDIS_BUCKET_LUA = """
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local cost, now = tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= cost then
    tokens = tokens - cost
    allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tokens, 'at', now)
redis.call('EXPIRE', KEYS[1], math.ceil(burst / rate) + 60)
return {allowed, math.floor(tokens * 1000)}
"""


def _redis_script(url):
    with _REDIS_LOCK:
        script = _REDIS_CLIENTS.get(url)
        if script is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
            script = _REDIS_CLIENTS[url] = client.register_script(_REDIS_BUCKET_LUA)
        return script


class DripIngest(models.AbstractModel):
    _name = "drip.ingest"
    _description = "Drip Marketing Event Ingestion"

    def init(self):
        # Lookups of people typed in the backend, once per batch (see _lookup_partners).
        create_index(
            self.env.cr, "drip_res_partner_email_normalized_idx", "res_partner",
            ["email_normalized"], where="email_normalized IS NOT NULL",
        )
        # Token buckets of the rate limiter: unlogged (a crash only refills them).
        self.env.cr.execute(
            """
            CREATE UNLOGGED TABLE IF NOT EXISTS drip_rate_bucket (
                key varchar PRIMARY KEY,
                tokens double precision NOT NULL,
                updated_at timestamp NOT NULL
            )
            """
        )

    # ------------------------------------------------------------------ rate limit
    @api.model
    def _rate_limit(self, bucket, cost, rate, burst):
        """Take ``cost`` tokens from ``bucket``; return (allowed, retry after seconds).

        A token bucket per key: ``rate`` tokens per second up to ``burst``. In Redis
        when ``drip_marketing.redis_url`` is set (one Lua call), else in the unlogged
        table ``drip_rate_bucket`` through a separate READ COMMITTED transaction, so
        concurrent requests of one key queue on the row instead of failing the
        request's own transaction, and a rejected request still spends its tokens.
        """
        cost = min(cost, burst)
        url = self.env["ir.config_parameter"].sudo().get_param("drip_marketing.redis_url")
        if url:
            try:
                allowed, tokens = _redis_script(url)(
                    keys=[f"drip:rate:{self.env.cr.dbname}:{bucket}"],
                    args=[rate, burst, cost, time.time()],
                )
                if allowed:
                    return True, 0.0
                return False, max(0.0, (cost - tokens / 1000.0) / rate)
            except Exception as error:  # noqa: BLE001 (Redis down: PostgreSQL still limits)
                if time.monotonic() - _REDIS_WARNED[0] > 60:  # once a minute, not per request
                    _REDIS_WARNED[0] = time.monotonic()
                    _logger.warning("Rate limiter: Redis unavailable (%s), using PostgreSQL",
                                    error)
        try:
            return self._rate_limit_pg(bucket, cost, rate, burst)
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            # A kept connection that PostgreSQL closed meanwhile: once more, on a new one.
            return self._rate_limit_pg(bucket, cost, rate, burst)

    def _rate_limit_pg(self, bucket, cost, rate, burst):
        with self._bucket_cursor() as cr:
            cr.execute(
                """
                INSERT INTO drip_rate_bucket AS b (key, tokens, updated_at)
                VALUES (%(key)s, %(burst)s - %(cost)s, clock_timestamp() AT TIME ZONE 'UTC')
                ON CONFLICT (key) DO UPDATE
                   SET tokens = LEAST(%(burst)s, b.tokens + %(rate)s * EXTRACT(EPOCH FROM
                                (clock_timestamp() AT TIME ZONE 'UTC') - b.updated_at))
                                - %(cost)s,
                       updated_at = clock_timestamp() AT TIME ZONE 'UTC'
                 WHERE LEAST(%(burst)s, b.tokens + %(rate)s * EXTRACT(EPOCH FROM
                       (clock_timestamp() AT TIME ZONE 'UTC') - b.updated_at)) >= %(cost)s
                RETURNING tokens
                """,
                {"key": bucket, "burst": burst, "cost": cost, "rate": rate},
            )
            if cr.fetchone():
                return True, 0.0
            cr.execute(
                """
                SELECT LEAST(%s, tokens + %s * EXTRACT(EPOCH FROM
                       (clock_timestamp() AT TIME ZONE 'UTC') - updated_at))
                  FROM drip_rate_bucket WHERE key = %s
                """,
                [burst, rate, bucket],
            )
            tokens = cr.fetchone()[0]
        return False, max(0.0, (cost - tokens) / rate)

    def _bucket_cursor(self):
        """An autocommit cursor for the token buckets (the test cursor in tests).

        Each statement is its own READ COMMITTED transaction on a connection kept by this
        process for the purpose: one round trip per request, and concurrent requests of
        one key wait for each other on the row instead of failing with a serialization
        error in the request's REPEATABLE READ transaction.
        """
        if _testing(self.env):
            return _Borrowed(self.env.cr)
        return _BUCKET_CONNECTIONS.cursor(self.env.cr.dbname)

    def _side_cursor(self):
        """A short READ COMMITTED transaction of its own (the test cursor in tests)."""
        if _testing(self.env):
            return _Borrowed(self.env.cr)
        cr = self.env.registry.cursor()
        cr.connection.set_isolation_level(ISOLATION_LEVEL_READ_COMMITTED)
        return cr

    @api.model
    def _touch_source(self, source, now):
        """Move ``source.last_event_at`` after commit, at most every 10 s (no hot row)."""

        def touch(cr):
            cr.execute(
                """
                UPDATE drip_source SET last_event_at = %s
                 WHERE id = %s AND (last_event_at IS NULL OR last_event_at < %s)
                """,
                [now, source.id, now - _TOUCH_EVERY],
            )

        if _testing(self.env):
            touch(self.env.cr)
            source.invalidate_recordset(["last_event_at"])
            return
        key = (self.env.cr.dbname, source.id)
        if time.monotonic() - _TOUCHED.get(key, -1e9) < _TOUCH_EVERY.total_seconds():
            return  # this process moved it less than 10 s ago
        _TOUCHED[key] = time.monotonic()

        def after_commit():
            with self._side_cursor() as cr:
                touch(cr)

        self.env.cr.postcommit.add(after_commit)

    # ------------------------------------------------------------------ lookups
    @api.model
    def _source_context(self, company_id=None, write_key=None):
        """``(source, phone region)`` of a request, in one query; ``(None, region)`` if none.

        The source is the event API's of ``company_id`` (archived or not) or the active
        one of ``write_key``; the region is its company's country code (CN if none), the
        default region of phone numbers. The fields ingestion reads come back in the
        record cache, so using the source costs no further query.
        """
        if write_key is not None:
            source_filter = SQL("s.write_key = %s AND s.active", write_key)
            company_filter = SQL("c.id = s.company_id")
        else:
            source_filter = SQL("s.is_event_api AND s.company_id = c.id")
            company_filter = SQL("c.id = %s", company_id)
        self.env["drip.source"].flush_model()
        self.env.cr.execute(SQL(
            """
            SELECT s.id, s.company_id, s.rate_limit, s.rate_burst, s.unknown_partner_policy,
                   country.code
              FROM res_company c
              JOIN res_partner partner ON partner.id = c.partner_id
              LEFT JOIN res_country country ON country.id = partner.country_id
              %(join)s JOIN drip_source s ON %(source)s
             WHERE %(company)s
             ORDER BY s.id
             LIMIT 1
            """,
            join=SQL("") if write_key is not None else SQL("LEFT"),
            source=source_filter, company=company_filter,
        ))
        row = self.env.cr.fetchone()
        region = (row and row[5]) or "CN"
        if not row or not row[0]:
            return None, region
        Source = self.env["drip.source"].sudo()
        source = Source.browse(row[0])
        for fname, value in zip(_SOURCE_FIELDS, row[1:5], strict=True):
            self.env.cache.insert_missing(source, Source._fields[fname], [value])
        return source, region

    @api.model
    def _existing_keys(self, company, keys):
        """The idempotency keys of ``keys`` already stored in ``company``."""
        keys = [key for key in keys if key]
        if not keys:
            return set()
        self.env["drip.event"].flush_model(["idempotency_key", "company_id"])
        self.env.cr.execute(
            "SELECT idempotency_key FROM drip_event WHERE company_id = %s "
            "AND idempotency_key = ANY(%s)",
            [company.id, keys],
        )
        return {row[0] for row in self.env.cr.fetchall()}

    @api.model
    def _lookup_identities(self, company, pairs):
        """{(kind, value): partner id} for stored identities: one indexed statement."""
        if not pairs:
            return {}
        self.env["drip.identity"].flush_model()
        kinds, values = zip(*pairs, strict=True)
        # One statement for all kinds: an index probe of (company_id, kind, value) per
        # pair, one round trip.
        self.env.cr.execute(
            """
            SELECT i.kind, i.value, i.partner_id
              FROM unnest(%s::varchar[], %s::varchar[]) AS q(kind, value)
              JOIN drip_identity i ON i.company_id = %s AND i.kind = q.kind
                                  AND i.value = q.value
            """,
            [list(kinds), list(values), company.id],
        )
        return {(kind, value): partner for kind, value, partner in self.env.cr.fetchall()}

    @api.model
    def _lookup_partners(self, company, emails, phones):
        """Customers typed in the backend, by normalised email / phone: {(kind, value): id}.

        Several customers with one address: the oldest active person (not a company)
        among those of this company or shared. One indexed query per kind.
        """
        Partner = self.env["res.partner"]
        found = {}
        lookups = [("email", "email_normalized", emails)]
        if "drip_phone_sanitized" in Partner._fields and Partner._fields[
                "drip_phone_sanitized"].store:
            lookups.append(("phone", "drip_phone_sanitized", phones))
        for kind, column, values in lookups:
            if not values:
                continue
            Partner.flush_model([column, "active", "company_id", "is_company"])
            self.env.cr.execute(SQL(
                """
                SELECT DISTINCT ON (%(column)s) %(column)s, id
                  FROM res_partner
                 WHERE %(column)s = ANY(%(values)s) AND active
                   AND (company_id IS NULL OR company_id = %(company)s)
                 ORDER BY %(column)s, is_company, id
                """,
                column=SQL.identifier(column), values=list(values), company=company.id,
            ))
            found.update(((kind, value), partner) for value, partner in self.env.cr.fetchall())
        return found

    @api.model
    def _lookup_products(self, skus, ids):
        """{('sku', code) | ('id', id): product id}: one query per kind present."""
        found = {}
        if ids:
            self.env.cr.execute(
                "SELECT id FROM product_product WHERE id = ANY(%s)", [list(ids)]
            )
            found.update((("id", row[0]), row[0]) for row in self.env.cr.fetchall())
        if skus:
            self.env.cr.execute(
                "SELECT DISTINCT ON (default_code) default_code, id FROM product_product "
                "WHERE default_code = ANY(%s) AND active ORDER BY default_code, id",
                [list(skus)],
            )
            found.update((("sku", code), pid) for code, pid in self.env.cr.fetchall())
        return found

    @api.model
    def _lookup_orders(self, company, names, ids):
        """{('name', ref) | ('id', id): order id} of ``company``'s orders."""
        found = {}
        if not names and not ids:
            return found
        self.env["sale.order"].flush_model(["name", "company_id"])
        self.env.cr.execute(
            "SELECT id, name FROM sale_order WHERE company_id = %s "
            "AND (id = ANY(%s) OR name = ANY(%s))",
            [company.id, list(ids), list(names)],
        )
        for oid, name in self.env.cr.fetchall():
            found["id", oid] = oid
            found["name", name] = oid
        return found

    # ------------------------------------------------------------------ ingestion
    @api.model
    def _ingest(self, events, source, now=None, keys_checked=False):
        """Store a validated batch; return one dict per event: ``id`` or ``duplicate``.

        ``events``: dicts with ``call_type``, ``name``, ``event_type_id``,
        ``idempotency_key``, ``occurred_at`` (naive UTC), ``ids`` ({kind: normalised
        value}), optional ``partner_id``, ``previous_id``, ``traits``, ``product_id``,
        ``order_id``, ``payload``, ``context``, ``source_ip``. Events whose key is
        already stored (or repeated in the batch) are skipped and reported as
        ``duplicate``; they change nothing. ``keys_checked``: the caller already looked
        the keys up in this transaction (the event API refuses replays).
        """
        return self.sudo().with_context(**{
            INGEST_CONTEXT_KEY: True, "tracking_disable": True, "mail_create_nolog": True,
            "mail_notrack": True,
        })._ingest_batch(events, source, now, keys_checked)

    def _ingest_batch(self, events, source, now, keys_checked):
        company = source.company_id
        now = now or fields.Datetime.now()
        results = [{"index": event.get("index", i)} for i, event in enumerate(events)]
        for event in events:
            event["idempotency_key"] = event.get("idempotency_key") or f"drip-{uuid.uuid4()}"
        stored = set() if keys_checked else self._existing_keys(
            company, [event.get("idempotency_key") for event in events])
        seen, batch = set(), []
        for result, event in zip(results, events, strict=True):
            key = event.get("idempotency_key")
            if key and (key in stored or key in seen):
                result["duplicate"] = True
                continue
            seen.add(key)
            batch.append((result, event))
        if not batch:
            return results
        todo = [event for _result, event in batch]

        # 1. identities: what is known, from drip.identity, then from res.partner.
        pairs = {(kind, value) for event in todo for kind, value in event["ids"].items()}
        for event in todo:
            if event.get("previous_id"):
                pairs |= {("user_id", event["previous_id"]), ("anonymous_id", event["previous_id"])}
        known = self._lookup_identities(company, pairs)
        missing = defaultdict(set)
        for kind, value in pairs - known.keys():
            if kind in CONTACT_KINDS:
                missing[kind].add(value)
        backfilled = self._lookup_partners(company, missing["email"], missing["phone"])
        known.update(backfilled)
        stored_known = dict(known)
        plan = plan_identities(todo, known, source.unknown_partner_policy)

        # 2. new customers, one batched create (values from the event's identifiers and
        # traits: a field set here is marked as set by ingestion).
        placeholders = self._create_people(plan["new"], todo, company, source)
        def resolve(pid):
            return placeholders.get(pid, pid) if pid and pid < 0 else pid

        partners = [resolve(pid) for pid in plan["partners"]]

        # 3. identities to store: the plan's links plus those found on res.partner.
        links = [(kind, value, resolve(pid), index) for kind, value, pid, index in plan["links"]]
        links += [(kind, value, pid, None) for (kind, value), pid in backfilled.items()
                  if stored_known.get((kind, value)) == pid and not any(
                      link[0] == kind and link[1] == value for link in links)]
        self._store_identities(company, source, links, now)

        # 4. the events themselves.
        ids = self._insert_events(company, source, todo, partners, now)
        for (result, _event), event_id in zip(batch, ids, strict=True):
            if event_id:
                result["id"] = event_id
            else:  # a concurrent request stored the same key first
                result["duplicate"] = True

        # 5. conflicts (one row per open pair of customers and identifier).
        self._record_conflicts(company, [
            (kind, value, holder, resolve(claimant), ids[index])
            for kind, value, holder, claimant, index in plan["conflicts"]
        ], now)

        # 6. stitching: earlier unattached events of the ids linked just now.
        self._stitch(company, [link for link in links
                               if link[0] in ("anonymous_id", "user_id")])

        # 7. traits of identified customers (identify calls, API traits).
        # Email / phone fill the customer's fields only when linked by this batch.
        owners = {(kind, value): pid for kind, value, pid, _index in links
                  if kind in CONTACT_KINDS}
        self._apply_traits(todo, partners, owners, placeholders)
        self.env["drip.event"].invalidate_model()
        self.env["drip.identity"].invalidate_model()
        self._touch_source(source, now)
        return results

    def _create_people(self, new, events, company, source):
        """Create the customers of ``new`` (plan placeholders); {placeholder: id}."""
        if not new:
            return {}
        installed = [code for code, _name in self.env["res.lang"].get_installed()]
        vals_list = []
        for person in new:
            event = events[person["index"]]
            ids = person["ids"]
            when = utc_iso(event["occurred_at"])
            values = trait_values(event.get("traits"))
            if "lang" in values:
                values["lang"] = normalize_lang(values["lang"], installed)
            values.update({fname: ids[kind] for kind, fname in CONTACT_KINDS_FIELDS.items()
                           if kind in ids})
            values = {fname: value for fname, value in values.items() if value}
            markers = dict.fromkeys(values, when)
            values.setdefault("name", self._visitor_name(ids))
            markers.setdefault("name", when)
            vals_list.append(dict(
                values,
                company_id=company.id,
                drip_traits_source=dict(markers, _created_by=f"drip.source,{source.id}"),
            ))
        created = self.env["res.partner"].create(vals_list)
        return {-(position + 1): partner.id for position, partner in enumerate(created)}

    @api.model
    def _visitor_name(self, ids):
        for kind in ("email", "phone", "user_id", "external", "wechat_unionid", "wechat_openid"):
            if kind in ids:
                return ids[kind]
        return self.env._("Visitor")

    def _store_identities(self, company, source, links, now):
        rows = {(kind, value): pid for kind, value, pid, _index in links if pid}
        if not rows:
            return
        execute_values(
            self.env.cr._obj,
            """
            INSERT INTO drip_identity (partner_id, company_id, kind, value, source_id,
                                       first_seen_at, last_seen_at, create_uid, create_date,
                                       write_uid, write_date)
            VALUES %s
            ON CONFLICT (company_id, kind, value) DO NOTHING
            """,
            [(pid, company.id, kind, value, source.id, now, now, self.env.uid, now,
              self.env.uid, now) for (kind, value), pid in rows.items()],
            page_size=1000,
        )

    def _insert_events(self, company, source, events, partners, now):
        """One INSERT … ON CONFLICT DO NOTHING of the batch; ids in ``events`` order.

        The rows travel as one JSON document expanded by ``json_to_recordset``: one
        parameter to adapt instead of 20 per row.
        """
        rows = json.dumps([{
            "name": event["name"][:256],
            "event_type_id": event.get("event_type_id"),
            "partner_id": partner,
            "call_type": event["call_type"],
            "anonymous_id": event["ids"].get("anonymous_id"),
            "external_user_id": event["ids"].get("user_id"),
            "idempotency_key": event["idempotency_key"],
            "occurred_at": event["occurred_at"].isoformat(),
            "product_id": event.get("product_id"),
            "order_id": event.get("order_id"),
            "payload": event.get("payload"),
            "context_data": event.get("context"),
            "source_ip": event.get("source_ip"),
        } for event, partner in zip(events, partners, strict=True)], default=str)
        self.env.cr.execute(
            """
            INSERT INTO drip_event (name, event_type_id, partner_id, company_id, source_id,
                                    call_type, anonymous_id, external_user_id,
                                    idempotency_key, occurred_at, received_at, product_id,
                                    order_id, payload, context_data, source_ip, processed,
                                    create_uid, create_date, write_uid, write_date)
            SELECT r.name, r.event_type_id, r.partner_id, %(company)s, %(source)s,
                   r.call_type, r.anonymous_id, r.external_user_id, r.idempotency_key,
                   r.occurred_at, %(now)s, r.product_id, r.order_id,
                   NULLIF(r.payload, 'null'::jsonb), NULLIF(r.context_data, 'null'::jsonb),
                   r.source_ip, FALSE, %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM json_to_recordset(%(rows)s) AS r(
                   name varchar, event_type_id int, partner_id int, call_type varchar,
                   anonymous_id varchar, external_user_id varchar, idempotency_key varchar,
                   occurred_at timestamp, product_id int, order_id int, payload jsonb,
                   context_data jsonb, source_ip varchar)
            ON CONFLICT (company_id, idempotency_key) DO NOTHING
            RETURNING idempotency_key, id
            """,
            {"company": company.id, "source": source.id, "now": now, "uid": self.env.uid,
             "rows": rows},
        )
        inserted = dict(self.env.cr.fetchall())
        return [inserted.get(event["idempotency_key"]) for event in events]

    def _record_conflicts(self, company, conflicts, now):
        """One row per (identifier, holder, claimant) not already open: one statement."""
        rows, seen = [], set()
        for kind, value, holder, claimant, event_id in conflicts:
            if (kind, value, holder, claimant) in seen or holder == claimant:
                continue
            seen.add((kind, value, holder, claimant))
            rows.append({"kind": kind, "value": value, "partner_id": holder,
                         "other_partner_id": claimant, "event_id": event_id})
        if not rows:
            return
        self.env["drip.identity.conflict"].flush_model()
        self.env.cr.execute(
            """
            INSERT INTO drip_identity_conflict (kind, value, company_id, partner_id,
                                                other_partner_id, event_id, state, create_uid,
                                                create_date, write_uid, write_date)
            SELECT r.kind, r.value, %(company)s, r.partner_id, r.other_partner_id, r.event_id,
                   'open', %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM json_to_recordset(%(rows)s) AS r(kind varchar, value varchar,
                                                    partner_id int, other_partner_id int,
                                                    event_id int)
             WHERE NOT EXISTS (
                   SELECT 1 FROM drip_identity_conflict c
                    WHERE c.company_id = %(company)s AND c.state = 'open'
                      AND c.kind = r.kind AND c.value = r.value
                      AND c.partner_id = r.partner_id
                      AND c.other_partner_id = r.other_partner_id)
            RETURNING kind, partner_id, other_partner_id
            """,
            {"company": company.id, "uid": self.env.uid, "now": now, "rows": json.dumps(rows)},
        )
        recorded = self.env.cr.fetchall()
        if recorded:
            self.env["drip.identity.conflict"].invalidate_model()
            _logger.info("Identity conflicts recorded for review: %s", recorded)

    def _stitch(self, company, links):
        """Attach earlier unattached events of newly linked anonymous ids / user ids."""
        for kind, column in (("anonymous_id", "anonymous_id"), ("user_id", "external_user_id")):
            pairs = {value: pid for link_kind, value, pid, _index in links
                     if link_kind == kind and pid}
            if not pairs:
                continue
            self.env.cr.execute(SQL(
                """
                UPDATE drip_event e SET partner_id = m.partner_id
                  FROM unnest(%(values)s::varchar[], %(partners)s::int[]) AS m(value, partner_id)
                 WHERE e.company_id = %(company)s AND e.partner_id IS NULL
                   AND %(column)s = m.value
                """,
                values=list(pairs), partners=list(pairs.values()), company=company.id,
                column=SQL.identifier("e", column),
            ))

    def _apply_traits(self, events, partners, owners, placeholders):
        """Trait rules (see :func:`decide_trait_updates`) for the batch's customers.

        Email and phone of an event count as traits of its customer only when that
        customer holds them (not when they are another customer's: a conflict).
        Customers created by this batch already got their first event's traits.
        """
        created_from = set()  # customers whose creating event was seen
        proposed = defaultdict(dict)
        consents = defaultdict(dict)
        new_ids = set(placeholders.values())
        installed = None
        for event, partner in zip(events, partners, strict=True):
            if not partner:
                continue
            # Most events of known customers carry no traits and no contact id this
            # batch linked: nothing to propose.
            if not event.get("traits") and partner not in new_ids and not any(
                    owners.get((kind, event["ids"].get(kind))) == partner
                    for kind in CONTACT_KINDS_FIELDS):
                continue
            when = utc_iso(event["occurred_at"])
            for channel, state in consent_values(event.get("traits")).items():
                if channel not in consents[partner] or consents[partner][channel][1] <= when:
                    consents[partner][channel] = (state, when, event)
            if partner in new_ids and partner not in created_from:
                # Its fields were set from this event at creation.
                created_from.add(partner)
                continue
            values = trait_values(event.get("traits"))
            if "lang" in values:
                if installed is None:
                    installed = [code for code, _n in self.env["res.lang"].get_installed()]
                values["lang"] = normalize_lang(values["lang"], installed)
            for kind, fname in CONTACT_KINDS_FIELDS.items():
                value = event["ids"].get(kind)
                if value and owners.get((kind, value)) == partner:
                    values[fname] = value
            for fname, value in values.items():
                if value and (fname not in proposed[partner]
                              or proposed[partner][fname][1] <= when):
                    proposed[partner][fname] = (value, when)
        if proposed:
            self._write_traits(proposed)
        if consents:
            self._apply_consents(consents)

    def _write_traits(self, proposed):
        Partner = self.env["res.partner"]
        records = Partner.browse(list(proposed)).exists()
        if not records:
            return
        # One read of the batch's customers; one write per customer that changes.
        current = {row["id"]: row for row in records.read([*TRAIT_FIELDS, "drip_traits_source"])}
        for partner in records:
            row = current[partner.id]
            markers = dict(row.get("drip_traits_source") or {})
            values = {fname: row.get(fname) for fname in TRAIT_FIELDS}
            updates, new_markers = decide_trait_updates(
                values, {k: v for k, v in markers.items() if not k.startswith("_")},
                proposed[partner.id],
            )
            if updates:
                meta = {k: v for k, v in markers.items() if k.startswith("_")}
                partner.write(dict(updates, drip_traits_source=dict(new_markers, **meta)))

    def _apply_consents(self, consents):
        """Consent traits: an opt-out always applies; an opt-in only to an unknown state.

        Changes go through ``_drip_set_consent`` (ledger row, source ``api``, blacklist,
        double opt-in when the company asks for it).
        """
        Partner = self.env["res.partner"]
        groups = defaultdict(list)
        for partner_id, channels in consents.items():
            for channel, (state, _when, event) in channels.items():
                groups[channel, state].append((partner_id, event))
        for (channel, state), rows in groups.items():
            partners = Partner.browse([pid for pid, _event in rows]).exists()
            if state == "opted_in":
                fname = f"drip_consent_{channel}"
                partners = partners.filtered(lambda p, f=fname: p[f] == "unknown")
            if not partners:
                continue
            event = rows[-1][1]
            context = event.get("context") if isinstance(event.get("context"), dict) else {}
            partners._drip_set_consent(
                channel, state, source="api",
                ip_address=context.get("ip") or event.get("source_ip"),
                user_agent=context.get("userAgent"),
                proof=f"{event['call_type']} {event.get('idempotency_key') or ''}".strip(),
            )


CONTACT_KINDS_FIELDS = {"email": "email", "phone": "phone"}
_SOURCE_FIELDS = ("company_id", "rate_limit", "rate_burst", "unknown_partner_policy")
_TOUCH_EVERY = timedelta(seconds=10)
_TOUCHED = {}


class _BucketConnections:
    """Per-process autocommit connections for the rate limiter (a tiny pool)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.idle = defaultdict(list)

    def cursor(self, dbname):
        return _BucketCursor(self, dbname)

    def borrow(self, dbname):
        key = (os.getpid(), dbname)  # never share a connection across a fork
        with self.lock:
            if self.idle[key]:
                return self.idle[key].pop()
        _name, info = sql_db.connection_info_for(dbname)
        connection = psycopg2.connect(**info)
        connection.autocommit = True
        return connection

    def give_back(self, dbname, connection, broken):
        if broken or connection.closed:
            connection.close()
            return
        with self.lock:
            self.idle[os.getpid(), dbname].append(connection)


class _BucketCursor:
    def __init__(self, pool, dbname):
        self.pool, self.dbname = pool, dbname

    def __enter__(self):
        self.connection = self.pool.borrow(self.dbname)
        self.cr = self.connection.cursor()
        return self.cr

    def __exit__(self, exc_type, exc, tb):
        self.cr.close()
        self.pool.give_back(self.dbname, self.connection,
                            broken=isinstance(exc, psycopg2.Error))
        return False


_BUCKET_CONNECTIONS = _BucketConnections()


def _testing(env):
    """In a test the test transaction is the only one: no side transaction, no commit."""
    return bool(modules.module.current_test) or env.registry.in_test_mode()


def _json(value):
    return None if value is None else json.dumps(value, default=str)


class _Borrowed:
    """Context manager giving an existing cursor without committing or closing it."""

    def __init__(self, cr):
        self.cr = cr

    def __enter__(self):
        return self.cr

    def __exit__(self, *exc):
        return False


class ResPartner(models.Model):
    # Kept beside the ingestion that reads it: which fields the event API / Segment
    # identify calls set, so traits never overwrite what a user typed.
    _inherit = "res.partner"

    drip_traits_source = fields.Json(
        string="Fields set by events",
        copy=False,
        help="Technical: {field: time of the event that set it} for the fields ingestion "
        "filled from traits. A user's edit of such a field removes it, and ingestion "
        "then leaves the field alone.",
    )

    def write(self, vals):
        if self.env.context.get(INGEST_CONTEXT_KEY) or not set(TRAIT_FIELDS) & vals.keys():
            return super().write(vals)
        touched = set(TRAIT_FIELDS) & vals.keys()
        marked = self.filtered(
            lambda p: p.drip_traits_source and touched & set(p.drip_traits_source))
        result = super().write(vals)
        for partner in marked:
            # A person changed these fields: from now on they are the user's.
            markers = {k: v for k, v in partner.drip_traits_source.items() if k not in touched}
            super(ResPartner, partner).write({"drip_traits_source": markers or False})
        return result
