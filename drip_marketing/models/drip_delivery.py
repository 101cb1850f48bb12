"""Delivery of due messages: staging into RQ (or inline), sending, tracking.

The journey engine (``drip.message._process``) hands due sending rows to :meth:`_stage`.
A worker (or, without Redis, the scheduled action itself) runs :meth:`_deliver` on the
ids: it re-checks everything at send time, sends, and calls ``messages._done(now)`` so
the engine starts the steps that follow. Engagement (open, click, reply) calls
``message._on_outcome(outcome)``.

Exactly once
============

PostgreSQL is the source of truth; Redis only carries ids and may lose them. A message
moves ``scheduled → queued → sending → sent`` and every transition that matters is
committed *before* the external effect it allows:

1. **Stage** (cron): one UPDATE moves due rows to ``queued`` with a lease; the RQ jobs
   (about 100 ids each) are pushed *after* the commit. Redis down: the rows go back to
   ``scheduled`` and the next tick stages them again.
2. **Claim and decide** (worker, one short READ COMMITTED transaction): the rows are locked
   with ``FOR UPDATE SKIP LOCKED`` (a second job for the same ids, or a second worker,
   finds nothing to do), the partners are serialised with advisory locks (so frequency
   caps hold between workers), consent, blacklist, goal, caps and quiet hours are checked,
   templates rendered, and the rows to send become ``sending`` (``attempt_count + 1``,
   lease). COMMIT.
3. **Hand off** (per message): ``message_id_header`` is set and committed, *then* the
   message goes to the SMTP server (or webhook); its acceptance is recorded (``sent_at``)
   in the same statement that hands off the next message. For emails that commit runs
   in a helper thread while the envelope (MAIL FROM, RCPT TO) is exchanged; ``DATA`` is
   sent only once it succeeded, so the order above holds. At the end one transaction
   marks the batch ``sent``, starts the next steps and logs on the chatter.

The one window
--------------

Between an SMTP server's "250 accepted" for a message and the commit that records it
(the next hand-off, a fraction of a millisecond later), a crash of the worker (SIGKILL,
power loss, a job timeout) leaves the row ``sending`` with its Message-ID set but not
its acceptance. We cannot know whether the server kept the mail, and no receiver
reliably de-duplicates on Message-ID, so the reaper does **not** resend it: past its
lease it becomes ``failed`` with "Delivery unknown … check the SMTP log for Message-ID
<…>", visible in the backend, where an admin can look the id up in the mail server's log
and press *Retry* if it was not delivered. The same holds when the connection drops
after the message data was sent and before the server's reply was read. Everything
else is unambiguous and resolved automatically: rows never handed off are queued again;
rows whose acceptance was recorded are finished (marked sent, next steps started)
without sending again. Webhooks carry ``X-Drip-Message-Id`` for the receiver to
de-duplicate on, so an unknown webhook call is retried instead (at-least-once).
"""

import base64
import json
import logging
import os
import re
import smtplib
import socket
import time
import uuid
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from email.header import Header
from email.message import Message as MimeMessage
from email.policy import compat32
from email.utils import formataddr, formatdate, getaddresses
from functools import lru_cache, partial
from urllib.parse import quote, urlparse

import psycopg2
import requests
from markupsafe import Markup

from odoo import SUPERUSER_ID, _, api, fields, models, tools
from odoo.exceptions import UserError
from odoo.modules.registry import Registry
from odoo.tools import SQL, email_normalize, html2plaintext

from ..engine import caps as caps_engine
from ..engine import render, schedule, tokens
from .drip_message import column_values

_logger = logging.getLogger(__name__)

# Settings (ir.config_parameter "drip_marketing.<name>") and their defaults.
DEFAULTS = {
    "queue_transactional": "drip_transactional",
    "queue_bulk": "drip_bulk",
    "job_batch_size": 100,
    "lease_seconds": 600,
    "job_timeout": 300,
    "retry_intervals": "10,60,300",
    "max_attempts": 4,
    "webhook_timeout": 10,
    "smtp_commit_every": 1,
    "track_opens": "1",
    "track_clicks": "1",
    "mime_builder": "fast",
}
# Advisory-lock namespace ("DRIP") for per-partner serialisation of cap decisions.
PARTNER_LOCK_SPACE = 0x44524950 - 2**32 // 2
# RQ job statuses meaning "the job will still run": its rows are not lost.
LIVE_JOB_STATUSES = {"queued", "started", "scheduled", "deferred"}
CONCURRENCY_ERRORS = (
    psycopg2.errors.SerializationFailure,
    psycopg2.errors.DeadlockDetected,
    psycopg2.errors.LockNotAvailable,
)
UNKNOWN_TEXT = (
    "Delivery unknown: the worker stopped after handing this message to the mail server "
    "and before recording the answer. It is not resent automatically, to never send it "
    "twice. Check the SMTP log for Message-ID %s, then press Retry if it was not delivered."
)
CHANNEL_CONSENT_FIELD = {
    "email": "drip_consent_email",
    "sms": "drip_consent_sms",
    "webhook": "drip_consent_messaging",
}
_HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(https?://[^"'\s>]+)\2""", re.I)
_ATEXT_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]")
_REDIS_CONNECTIONS = {}


class TransientError(Exception):
    """A failure worth retrying later (SMTP 4xx, connection refused, timeout, HTTP 5xx)."""


class PermanentError(Exception):
    """A failure that retrying cannot fix (SMTP 5xx, invalid address, HTTP 4xx)."""


class UnknownOutcome(Exception):
    """The server may or may not have accepted the message (connection lost mid-data)."""


def _encode_header(text):
    # A line break in a rendered subject must not start a header of its own.
    text = " ".join((text or "").splitlines())
    return text if text.isascii() else Header(text, "utf-8").encode()


@lru_cache(maxsize=512)
def _encode_addresses(text):
    """``Name <address>`` list with non-ASCII names as encoded words (addresses as is)."""
    return ", ".join(
        formataddr((name, address), charset="utf-8")
        for name, address in getaddresses([text or ""]) if address
    )


class _PreEncodedPolicy(type(compat32)):
    """compat32 that writes headers we encoded ourselves (ASCII, one line) as they are.

    Re-folding every header through ``email.header.Header`` cost more than building the
    whole message; anything else (a header Odoo rewrites with non-ASCII, a multi-line
    value) still goes through compat32's folding.
    """

    def fold_binary(self, name, value):
        if isinstance(value, str) and value.isascii() and "\n" not in value \
                and "\r" not in value and len(value) < 900:
            if len(name) + len(value) > 76:
                # Fold address / URL lists at their commas (RFC 5322 line length).
                value = value.replace(", ", "," + self.linesep + " ")
            return f"{name}: {value}{self.linesep}".encode("ascii")
        return super().fold_binary(name, value)


_PRE_ENCODED = _PreEncodedPolicy()


def _base64_lines(text):
    """UTF-8 text as base64 in 76-character CRLF lines (RFC 2045)."""
    return base64.encodebytes((text or "").encode()).decode("ascii").replace("\n", "\r\n")


def redis_connection(url):
    """One redis-py client per URL and process (its pool is fork-aware)."""
    import redis

    client = _REDIS_CONNECTIONS.get(url)
    if client is None:
        client = _REDIS_CONNECTIONS[url] = redis.Redis.from_url(
            url, socket_connect_timeout=3, socket_timeout=10, health_check_interval=30
        )
    return client


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _int_list(text, default):
    try:
        values = [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError:
        values = []
    return values or default


class DripDelivery(models.AbstractModel):
    """Delivery of due messages: staging into RQ (or inline), sending, tracking.

    See the module docstring for the exactly-once protocol and its one window.
    """

    _name = "drip.delivery"
    _description = "Drip Marketing Delivery"

    # ------------------------------------------------------------------ settings
    @api.model
    def _parse_redis_url(self, url):
        """Validate a Redis URL the way redis-py will read it; a readable error if not."""
        parsed = urlparse((url or "").strip())
        if parsed.scheme not in ("redis", "rediss", "unix") or not (
            parsed.hostname or parsed.path
        ):
            raise UserError(
                _("'%s' is not a Redis URL; expected e.g. redis://127.0.0.1:6379/0.", url)
            )
        try:
            port = parsed.port
        except ValueError as error:
            raise UserError(_("The Redis URL has an invalid port: %s", error)) from error
        if port is not None and not 0 < port < 65536:
            raise UserError(_("The Redis URL has an invalid port: %s", port))
        return parsed

    @api.model
    def _setting(self, name):
        default = DEFAULTS[name]
        value = self.env["ir.config_parameter"].sudo().get_param(f"drip_marketing.{name}")
        if value in (None, False, ""):
            return default
        if isinstance(default, int):
            try:
                return int(value)
            except ValueError:
                _logger.warning("drip_marketing.%s=%r is not a number; using %s",
                                name, value, default)
                return default
        return value

    @api.model
    def _redis_url(self):
        """The Redis URL: ``DRIP_REDIS_URL`` (tests, CLI) or Settings; "" means inline."""
        url = os.environ.get("DRIP_REDIS_URL")
        if url is None:
            url = self.env["ir.config_parameter"].sudo().get_param("drip_marketing.redis_url")
        return (url or "").strip()

    @api.model
    def _queue_names(self):
        return {
            "transactional": self._setting("queue_transactional").strip(),
            "bulk": self._setting("queue_bulk").strip(),
        }

    @api.model
    def _retry_intervals(self):
        return _int_list(self._setting("retry_intervals"), [10, 60, 300])

    @api.model
    def _secret(self):
        return self.env["ir.config_parameter"].sudo().get_param("database.secret")

    # ------------------------------------------------------------------ staging
    @api.model
    def _stage(self, messages):
        """Hand due rows to the workers: ``queued`` in ONE UPDATE, enqueued after commit.

        Jobs carry the database name and ~100 ids, never content. Transactional rows and
        bulk rows go to separate queues. Without Redis the same rows are delivered inline
        by :meth:`_deliver` right after the commit of the calling transaction.
        """
        rows = [
            (message_id, queue) for message_id, state, queue in zip(
                messages._ids, column_values(messages, "state"),
                column_values(messages, "queue"), strict=True)
            if state == "scheduled"
        ]
        if rows:
            self._queue_rows(rows, from_states=("scheduled",))

    @api.model
    def _queue_rows(self, rows, from_states):
        """Move ``rows`` (id, queue kind) to ``queued`` and enqueue them after commit."""
        now = fields.Datetime.now()
        size = max(1, self._setting("job_batch_size"))
        lease_until = now + timedelta(seconds=self._setting("lease_seconds"))
        jobs = []
        by_kind = defaultdict(list)
        for message_id, kind in rows:
            by_kind[kind or "bulk"].append(message_id)
        for kind, ids in sorted(by_kind.items()):
            for chunk in _chunks(sorted(ids), size):
                jobs.append((kind, f"drip-{uuid.uuid4().hex}", chunk))
        all_ids = [mid for _kind, _jid, chunk in jobs for mid in chunk]
        job_ids = [jid for _kind, jid, chunk in jobs for _mid in chunk]
        self.env["drip.message"].flush_model()
        self.env.cr.execute(SQL(
            """
            UPDATE drip_message m
               SET state = 'queued', queued_at = %(now)s, lease_until = %(lease)s,
                   job_id = j.job_id, write_date = %(now)s, write_uid = %(uid)s
              FROM unnest(%(ids)s::int[], %(jobs)s::varchar[]) AS j(id, job_id)
             WHERE m.id = j.id AND m.state IN %(states)s
            RETURNING m.id
            """,
            now=now, lease=lease_until, uid=self.env.uid, ids=all_ids, jobs=job_ids,
            states=tuple(from_states),
        ))
        moved = {row[0] for row in self.env.cr.fetchall()}
        self.env["drip.message"].invalidate_model(
            ["state", "queued_at", "lease_until", "job_id"]
        )
        jobs = [(kind, jid, [i for i in chunk if i in moved]) for kind, jid, chunk in jobs]
        jobs = [job for job in jobs if job[2]]
        if not jobs:
            return []
        dbname = self.env.cr.dbname
        url = self._redis_url()
        if url:
            self.env.cr.postcommit.add(partial(
                _enqueue_after_commit, dbname, url, self._queue_names(), jobs,
                self._retry_intervals(), self._setting("job_timeout"),
            ))
        else:
            self.env.cr.postcommit.add(partial(
                _deliver_inline_after_commit, dbname, [chunk for _k, _j, chunk in jobs]
            ))
        return jobs

    @api.model
    def _unstage(self, job_ids):
        """Enqueueing failed: put the rows of these jobs back to ``scheduled``."""
        self.env.cr.execute(
            """
            UPDATE drip_message
               SET state = 'scheduled', job_id = NULL, queued_at = NULL, lease_until = NULL,
                   write_date = now() AT TIME ZONE 'UTC'
             WHERE job_id = ANY(%s) AND state = 'queued'
            """,
            [list(job_ids)],
        )
        return self.env.cr.rowcount

    # ------------------------------------------------------------------ delivery
    @api.model
    def _deliver(self, message_ids, auto_commit=True):
        """Deliver these messages, exactly once; the worker's (and inline path's) entry.

        Safe to call with any ids, any number of times, from any number of workers: rows
        that are not ``queued`` (or ``scheduled`` and due) are ignored. With
        ``auto_commit`` (workers, inline path: the cursor is ours) the claim and every
        hand-off are committed before the external effect; without it (tests) nothing is
        committed. Returns a summary dict; ``retry`` lists ids to try again later.
        """
        message_ids = sorted({int(i) for i in message_ids})
        summary = defaultdict(int)
        summary["retry"] = []
        if not message_ids:
            return dict(summary)
        now = fields.Datetime.now()
        for attempt in range(5):
            try:
                plan = self._claim_and_decide(message_ids, now, summary, auto_commit)
                if auto_commit:
                    # The claim (rows now 'sending', owned by this job) must be durable
                    # before anything leaves the building.
                    self.env.cr.commit()
                break
            except CONCURRENCY_ERRORS as error:
                if not auto_commit or attempt == 4:
                    raise
                _logger.info("drip delivery: %s while claiming, retrying", type(error).__name__)
                self.env.cr.rollback()
                summary.clear()
                summary["retry"] = []
                time.sleep(0.05 * (attempt + 1))
        if not plan:
            return dict(summary)
        claimed = [item["id"] for item in plan]
        try:
            outcomes = self._hand_off(plan, auto_commit)
            self._finish(plan, outcomes, summary)
            if auto_commit:
                self.env.cr.commit()
        except Exception:
            _logger.exception("drip delivery: unexpected error, recovering %s rows", len(claimed))
            if auto_commit:
                self.env.cr.rollback()
                # Same resolution as the reaper's, right away: this job owns the rows.
                self._recover_sending(claimed, now=fields.Datetime.now(), ignore_lease=True)
                self.env.cr.commit()
            raise
        return dict(summary)

    # -------------------------------------------------------- claim and decide
    @api.model
    def _claim_and_decide(self, message_ids, now, summary, auto_commit):
        """Lock, re-check and render; leave the rows to send in ``sending``.

        Returns the plan: one dict per message to hand off (plain data only, the ORM
        cache does not survive the commits of the hand-off).
        """
        cr = self.env.cr
        if auto_commit and not self.env.registry.in_test_mode():
            # Each statement sees what other workers committed, in particular the rows
            # they claimed for the partners we wait for below (caps across workers).
            cr.execute("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        Message = self.env["drip.message"].sudo()
        Message.flush_model()
        cr.execute(
            """
            SELECT DISTINCT partner_id FROM drip_message
             WHERE id = ANY(%s) AND state IN ('queued', 'scheduled') ORDER BY partner_id
            """,
            [message_ids],
        )
        partner_ids = [row[0] for row in cr.fetchall()]
        if not partner_ids:
            return []
        # Serialise decisions per customer: two workers holding messages of one customer
        # decide one after the other, the second seeing the first one's sends.
        cr.execute(
            "SELECT pg_advisory_xact_lock(%s, p) FROM unnest(%s::int[]) AS p",
            [PARTNER_LOCK_SPACE, partner_ids],
        )
        cr.execute(
            """
            SELECT id FROM drip_message
             WHERE id = ANY(%s)
               AND (state = 'queued' OR (state = 'scheduled' AND scheduled_at <= %s))
             ORDER BY id
               FOR UPDATE SKIP LOCKED
            """,
            [message_ids, now],
        )
        messages = Message.browse([row[0] for row in cr.fetchall()])
        if not messages:
            return []
        summary["claimed"] = len(messages)
        messages.fetch([
            "enrollment_id", "journey_id", "partner_id", "company_id", "order_id", "step_id",
            "step_type", "template_id", "channel", "queue", "idempotency_key", "attempt_count",
            "scheduled_at", "state", "is_test",
        ])
        decided = {}  # id -> (kind, values)

        # 1. The participant and the journey still want this message.
        enrollments = messages.enrollment_id
        enrollments.fetch(["state", "journey_id", "partner_id", "order_id", "is_holdout"])
        messages.journey_id.fetch(["state", "transactional", "priority", "company_id", "name"])
        exit_labels = dict(self.env["drip.enrollment"]._fields["exit_reason"].selection)
        for message in messages:
            enrollment, journey = message.enrollment_id, message.journey_id
            if enrollment.state in ("exited", "completed"):
                label = exit_labels.get(enrollment.exit_reason) or _("All steps done")
                text = _("Participant left the journey before sending: %s", label)
                if enrollment.exit_reason == "goal_reached":
                    decided[message.id] = ("skip", ("goal_reached", text))
                elif enrollment.exit_reason == "unsubscribed":
                    decided[message.id] = ("skip", ("no_consent", text))
                else:
                    decided[message.id] = ("cancel", text)
            elif enrollment.state == "paused" or journey.state != "running":
                decided[message.id] = ("wait", _("Journey or participant paused: waits."))
        live = messages.filtered(lambda m: m.id not in decided)

        # 2. Goal reached: the participant exits, this message is skipped.
        reached = live.enrollment_id._goal_reached(now)
        if reached:
            reached._exit("goal_reached")
            for message in live.filtered(lambda m: m.enrollment_id in reached):
                decided[message.id] = ("skip", ("goal_reached", _("Goal reached before sending.")))
        live = live.filtered(lambda m: m.id not in decided)

        # 3. Consent, blacklist and address, per channel (set-based).
        facing = live.filtered(lambda m: m.step_type == "send" and m.channel != "note")
        for channel, group in facing.grouped("channel").items():
            for message_id, reason in self._refusals(group, channel).items():
                decided[message_id] = ("skip", reason)
        live = live.filtered(lambda m: m.id not in decided)
        facing = facing.filtered(lambda m: m.id not in decided)

        # 4. Quiet hours in the customer's time zone, then frequency caps.
        partners = facing.partner_id
        partners.fetch(["tz", "lang", "email", "name"])
        quiet_ok = self.env["drip.message"].sudo()
        for message in facing:
            company = message.company_id or message.journey_id.company_id
            tz = schedule.resolve_tz(message.partner_id.tz, company.drip_default_tz or "UTC")
            quiet = company._drip_quiet_hours()
            if schedule.is_quiet(now, tz, quiet):
                until = schedule.next_allowed(now, tz, quiet)
                decided[message.id] = ("defer", (until, _(
                    "Quiet hours (%(start)s–%(end)s, %(tz)s): deferred to %(until)s UTC.",
                    start=self._hours_label(quiet.start), end=self._hours_label(quiet.end),
                    tz=tz, until=fields.Datetime.to_string(until),
                )))
            else:
                quiet_ok |= message
        for message_id, (until, reason) in self._cap_deferrals(quiet_ok, now).items():
            decided[message_id] = ("defer", (until, reason))
        live = live.filtered(lambda m: m.id not in decided)

        # 5. Render and prepare (plain data); a bad template fails only its message.
        plan, immediate = self._prepare(live, now, decided)
        self._write_decisions(messages, decided, plan + immediate, now, summary)
        # Notes and SMS are handed to Odoo in this very transaction: no window at all.
        if immediate:
            self._finish(immediate, {item["id"]: ("sent", None) for item in immediate}, summary)
        return plan

    @api.model
    def _hours_label(self, hours):
        minutes = round(hours * 60)
        return f"{minutes // 60 % 24:02d}:{minutes % 60:02d}"

    @api.model
    def _refusals(self, messages, channel):
        """{message id: (skip_reason, reason)}: consent, blacklist, address at send time.

        Uses ``res.partner._drip_consent_filter`` (one query per channel and company:
        opted out / pending, Odoo's email and phone blacklists, missing address, double
        opt-in required); falls back to a check of our own when it is not there.
        """
        refused = {}
        labels = dict(self.env["drip.message"]._fields["skip_reason"].selection)
        for company, group in messages.grouped("company_id").items():
            partners = group.partner_id.with_context(active_test=False)
            if hasattr(partners, "_drip_consent_filter"):
                _allowed, codes = partners._drip_consent_filter(channel, company=company or None)
                reasons = {}
                for pid, code in codes.items():
                    reasons[pid] = (code, _("%(reason)s at send time (%(channel)s).",
                                            reason=labels.get(code, code), channel=channel))
            else:
                reasons = self._own_refusals(partners, channel)
            for message in group:
                if message.partner_id.id in reasons:
                    refused[message.id] = reasons[message.partner_id.id]
        return refused

    @api.model
    def _own_refusals(self, partners, channel):
        """Consent / blacklist / address check when the consent module does not offer one."""
        reasons = {}
        field = CHANNEL_CONSENT_FIELD.get(channel)
        if field and field in partners._fields:
            for partner in partners:
                if partner[field] in ("opted_out", "pending"):
                    reasons[partner.id] = ("no_consent", _(
                        "Consent for %(channel)s is '%(state)s' at send time.",
                        channel=channel, state=partner[field]))
        blacklisted, no_address = self._address_refusals(partners, channel)
        for pid, text in blacklisted.items():
            reasons.setdefault(pid, ("blacklisted", text))
        for pid, text in no_address.items():
            reasons.setdefault(pid, ("no_address", text))
        return reasons

    @api.model
    def _address_refusals(self, partners, channel):
        """Partners without a usable address, and those on Odoo's blacklists."""
        blacklisted, no_address = {}, {}
        if channel == "email":
            emails = {}
            for partner in partners:
                email = email_normalize(partner.email or "")
                if email:
                    emails[partner.id] = email
                else:
                    no_address[partner.id] = _("No valid email address.")
            if emails:
                self.env["mail.blacklist"].flush_model(["email", "active"])
                self.env.cr.execute(
                    "SELECT email FROM mail_blacklist WHERE active AND email = ANY(%s)",
                    [list(set(emails.values()))],
                )
                listed = {row[0] for row in self.env.cr.fetchall()}
                for pid, email in emails.items():
                    if email in listed:
                        blacklisted[pid] = _("%s is on Odoo's email blacklist.", email)
        elif channel == "sms":
            numbers = {}
            for partner in partners:
                raw = partner.mobile or partner.phone
                number = raw and partner._phone_format(number=raw, force_format="E164")
                if number:
                    numbers[partner.id] = number
                else:
                    no_address[partner.id] = _("No valid phone number.")
            if numbers:
                self.env["phone.blacklist"].flush_model(["number", "active"])
                self.env.cr.execute(
                    "SELECT number FROM phone_blacklist WHERE active AND number = ANY(%s)",
                    [list(set(numbers.values()))],
                )
                listed = {row[0] for row in self.env.cr.fetchall()}
                for pid, number in numbers.items():
                    if number in listed:
                        blacklisted[pid] = _("%s is on Odoo's phone blacklist.", number)
        return blacklisted, no_address

    @api.model
    def _cap_deferrals(self, messages, now):
        """{message id: (until, reason)} for marketing messages over a frequency cap.

        History: what each customer was sent (or is being sent by another worker) in the
        longest window, all journeys together, in one grouped query.
        """
        if not messages:
            return {}
        by_company = messages.grouped("company_id")
        deferrals = {}
        for company, group in by_company.items():
            company = company or group[:1].journey_id.company_id
            rules = [
                caps_engine.CapRule(count, hours)
                for count, hours in ((company.drip_cap_per_day, 24),
                                     (company.drip_cap_per_week, 24 * 7))
                if count
            ]
            if not rules:
                continue
            longest = max(rule.period for rule in rules)
            self.env.cr.execute(
                """
                SELECT partner_id, array_agg(COALESCE(sent_at, write_date))
                  FROM drip_message
                 WHERE partner_id = ANY(%s) AND id <> ALL(%s)
                   AND step_type = 'send' AND channel <> 'note' AND is_test IS NOT TRUE
                   AND (state = 'sending' OR (state = 'sent' AND sent_at > %s))
                 GROUP BY partner_id
                """,
                [group.partner_id.ids, group.ids, now - longest],
            )
            history = dict(self.env.cr.fetchall())
            candidates = [
                caps_engine.Candidate(
                    message_id=message.id,
                    partner_id=message.partner_id.id,
                    scheduled_at=message.scheduled_at,
                    priority=message.journey_id.priority,
                    transactional=message.journey_id.transactional,
                )
                for message in group
            ]
            for decision in caps_engine.arbitrate(candidates, history, rules, now):
                if decision.action == caps_engine.DEFER:
                    deferrals[decision.message_id] = (
                        decision.until, _("Deferred: %s", decision.reason)
                    )
        return deferrals

    # ------------------------------------------------------------ preparation
    @api.model
    def _prepare(self, messages, now, decided):
        """Render and build what each message needs to go out, as plain data.

        Returns ``(plan, immediate)``: email and webhook items handed off after the
        commit, note and SMS items finished in the current transaction.
        """
        plan, immediate = [], []
        if not messages:
            return plan, immediate
        sends = messages.filtered(lambda m: m.step_type == "send")
        hooks = messages - sends
        contexts = self._render_contexts(sends)
        base_urls = {}
        secret = self._secret()
        track_opens = self._setting("track_opens") not in ("0", "False", "false")
        track_clicks = self._setting("track_clicks") not in ("0", "False", "false")
        links = self._link_trackers(sends, contexts) if track_clicks else {}
        senders = {}
        sms_installed = "sms.sms" in self.env
        db_tag = self._database_tag()
        for message in sends:
            template, partner = message.template_id, message.partner_id
            context = contexts[message.id]
            lang = context["partner"]["lang"]
            if not template:
                decided[message.id] = ("fail", _("The step has no template."))
                continue
            try:
                rendered = render.render_message(template._parts_for_lang(lang), context, lang)
            except render.TemplateProblem as problem:
                decided[message.id] = ("fail", ("render_error", _(
                    "Template '%(name)s': %(problem)s", name=template.name, problem=problem)))
                continue
            company = message.company_id or message.journey_id.company_id
            base = base_urls.setdefault(company.id, partner.get_base_url().rstrip("/"))
            item = {
                "id": message.id,
                "channel": message.channel,
                "partner_id": partner.id,
                "subject": (rendered.get("subject") or "").strip(),
                "journey": message.journey_id.name,
                "step": message.step_id.name,
                "message_id": self._message_id(message, template, company, db_tag),
            }
            if message.channel == "email":
                body = rendered.get("body_html") or ""
                if track_clicks:
                    body = self._track_links(body, message.id, links, base, secret)
                if track_opens:
                    body = self._add_pixel(body, message.id, base, secret)
                email_from = (template.email_from or company.email_formatted
                              or self.env["ir.mail_server"]._get_default_from_address())
                if not email_from:
                    decided[message.id] = ("fail", _(
                        "No sender address: set one on the template or the company."))
                    continue
                item.update(
                    recipient=email_normalize(partner.email),
                    email_to=tools.formataddr((partner.name or "", partner.email)),
                    email_from=email_from,
                    **self._sender_context(company, email_from, senders),
                    reply_to=template.reply_to or False,
                    body_html=body,
                    body_text=rendered.get("body_text") or html2plaintext(body),
                    headers=self._email_headers(message, partner, company, context, base),
                )
                plan.append(item)
            elif message.channel == "webhook":
                url = message.step_id.webhook_url or self._gateway_url()
                if not url:
                    decided[message.id] = ("fail", _(
                        "No gateway URL: set the step's webhook URL or "
                        "drip_marketing.gateway_url."))
                    continue
                payload = {
                    "event": "drip.message",
                    "message": {"id": message.id, "key": message.idempotency_key,
                                "message_id": item["message_id"],
                                "journey": item["journey"], "step": item["step"]},
                    "recipient": context["partner"],
                    "content": {"subject": item["subject"],
                                "text": rendered.get("body_text") or ""},
                }
                item.update(self._webhook_item(message, url, payload))
                item["recipient"] = url
                plan.append(item)
            elif message.channel == "sms":
                if not sms_installed:
                    decided[message.id] = ("fail", _(
                        "Sending SMS needs Odoo's SMS app (module 'sms')."))
                    continue
                item.update(
                    recipient=partner._phone_format(
                        number=partner.mobile or partner.phone, force_format="E164"),
                    body_text=rendered.get("body_text") or "",
                )
                immediate.append(item)
            else:  # note on the customer's chatter
                item.update(recipient=False, body_html=rendered.get("body_html") or "")
                immediate.append(item)
        for message in hooks:
            step = message.step_id
            contexts_hook = self._render_contexts(message)
            payload = {
                "event": "drip.step",
                "message": {"id": message.id, "key": message.idempotency_key,
                            "journey": message.journey_id.name, "step": step.name},
                "partner": contexts_hook[message.id]["partner"],
                "order": contexts_hook[message.id].get("order"),
            }
            item = {
                "id": message.id,
                "channel": "webhook",
                "partner_id": message.partner_id.id,
                "subject": False,
                "journey": message.journey_id.name,
                "step": step.name,
                "message_id": self._message_id(message, None, message.company_id, db_tag),
                "recipient": step.webhook_url,
            }
            item.update(self._webhook_item(message, step.webhook_url, payload))
            plan.append(item)
        return plan, immediate

    @api.model
    def _sender_context(self, company, email_from, cache):
        """Bounce and notification addresses, as plain strings computed once per company.

        Handed to ``ir.mail_server`` through its context (``domain_bounce_address``,
        ``domain_notifications_email``) so the send loop, whose commits empty the ORM
        cache, never recomputes them per message.
        """
        if company.id not in cache:
            cache[company.id] = {
                "bounce": company.bounce_email or False,
                "notifications": company.default_from_email or False,
                "author_id": company.partner_id.id,
                "reply_to_default": company.catchall_formatted or company.email_formatted
                or email_from,
            }
        return {"sender": cache[company.id]}

    @api.model
    def _gateway_url(self):
        return self.env["ir.config_parameter"].sudo().get_param("drip_marketing.gateway_url")

    @api.model
    def _webhook_item(self, message, url, payload):
        step = message.step_id.sudo()
        secret = step.webhook_secret or self.env["ir.config_parameter"].sudo().get_param(
            "drip_marketing.webhook_secret") or self._secret()
        body = json.dumps(payload, default=str, ensure_ascii=False, sort_keys=True).encode()
        return {"url": url, "secret": secret, "body": body}

    @api.model
    def _message_id(self, message, template, company, db=None):
        """``<drip-<key>-<db>@<domain>>``: the same for every attempt of this message."""
        domain = (
            company.alias_domain_id.name
            or tools.email_domain_extract(
                (template and template.email_from) or company.email or "")
            or socket.getfqdn()
        )
        if db is None:
            db = self._database_tag()
        key = _ATEXT_UNSAFE.sub(".", message.idempotency_key or str(message.id))
        return f"<drip-{key}-{db}@{domain}>"

    @api.model
    def _database_tag(self):
        return self.env["ir.config_parameter"].sudo().get_param("database.uuid", "")[:8]

    @api.model
    def _email_headers(self, message, partner, company, context, base):
        """RFC 2369 / 8058 unsubscribe headers, bounce address, our own marker."""
        https = context.get("unsubscribe_url")
        mailto_to = company.catchall_email or company.bounce_email or company.email or ""
        mailto = (f"<mailto:{mailto_to}?subject={quote('unsubscribe ' + str(partner.id))}>, "
                  if mailto_to else "")
        headers = {
            "List-Unsubscribe": f"{mailto}<{https}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Drip-Message": message.idempotency_key,
        }
        if company.bounce_email:
            headers["Return-Path"] = company.bounce_email
        return headers

    # ------------------------------------------------------------- tracking
    @api.model
    def _tracking_token(self, purpose, payload, secret=None):
        return tokens.sign(secret or self._secret(), payload, expires_at=None, purpose=purpose)

    @api.model
    def _add_pixel(self, body, message_id, base, secret):
        token = self._tracking_token("drip.open", {"m": message_id}, secret)
        pixel = (f'<img src="{base}/drip/o/{token}.gif" width="1" height="1" alt="" '
                 f'style="display:block;border:0;width:1px;height:1px"/>')
        if "</body>" in body:
            return body.replace("</body>", pixel + "</body>", 1)
        return body + pixel

    @api.model
    def _link_trackers(self, messages, contexts):
        """Per-batch cache of ``link.tracker`` ids by URL (one tracker per distinct URL)."""
        return {"cache": {}}

    @api.model
    def _track_links(self, body, message_id, links, base, secret):
        """Rewrite absolute links to ``/drip/c/<token>``; unsubscribe links stay direct."""
        own = f"{base}/drip/"

        def replace(match):
            url = Markup(match.group(3)).unescape()
            if url.startswith(own) or "/unsubscribe" in url:
                return match.group(0)
            tracker_id = self._link_tracker_id(url, links)
            payload = {"m": message_id, "l": tracker_id} if tracker_id else {
                "m": message_id, "u": url}
            token = self._tracking_token("drip.click", payload, secret)
            return f"{match.group(1)}{match.group(2)}{base}/drip/c/{token}{match.group(2)}"

        return _HREF.sub(replace, body)

    @api.model
    def _link_tracker_id(self, url, links):
        cache = links.setdefault("cache", {})
        if url not in cache:
            try:
                medium = self.env.ref("utm.utm_medium_email", raise_if_not_found=False)
                tracker = self.env["link.tracker"].sudo().search_or_create([{
                    "url": url,
                    "title": url,
                    "medium_id": medium.id if medium else False,
                }])
                cache[url] = tracker.id
            except Exception:  # noqa: BLE001 - a strange URL must not fail the message
                _logger.info("drip: no link tracker for %r", url, exc_info=True)
                cache[url] = False
        return cache[url]

    # ------------------------------------------------------------- contexts
    @api.model
    def _render_context(self, partner, order, lang):
        """Plain data for templates: never ORM records (see engine/render.py)."""
        return self._build_contexts([(None, partner, order, lang, None, None, None)])[None]

    @api.model
    def _render_contexts(self, messages):
        """{message id: template context} for many messages, fetched in batch."""
        messages.partner_id.fetch(["name", "email", "phone", "mobile", "lang", "tz",
                                   "company_id"])
        items = []
        for message in messages:
            partner = message.partner_id
            items.append((
                message.id, partner, message.order_id,
                partner.lang or message.company_id.partner_id.lang or "en_US",
                message.journey_id, message.step_id, message,
            ))
        return self._build_contexts(items)

    @api.model
    def _build_contexts(self, items):
        orders = self.env["sale.order"].browse()
        for _key, _partner, order, _lang, _journey, _step, _message in items:
            orders |= order or self.env["sale.order"]
        if orders:
            orders.fetch(["name", "amount_total", "currency_id", "company_id", "order_line",
                          "access_token"])
            # Portal links need a token: create the missing ones in one statement rather
            # than one write per order (``_portal_ensure_token``).
            missing = orders.filtered(lambda o: not o.access_token)
            if missing:
                self.env.cr.execute(
                    """
                    UPDATE sale_order o SET access_token = v.token
                      FROM unnest(%s::int[], %s::varchar[]) AS v(id, token)
                     WHERE o.id = v.id AND o.access_token IS NULL
                    """,
                    [missing.ids, [str(uuid.uuid4()) for _o in missing]],
                )
                missing.invalidate_recordset(["access_token"])
            orders.order_line.fetch(["product_id", "name", "product_uom_qty", "price_unit",
                                     "price_subtotal", "display_type"])
        contexts = {}
        base_urls = {}
        for key, partner, order, lang, journey, step, message in items:
            company = (order.company_id if order else partner.company_id) or self.env.company
            currency = order.currency_id if order else company.currency_id
            base_url = base_urls.get(company.id)
            if base_url is None:
                base_url = base_urls[company.id] = partner.get_base_url().rstrip("/")
            name = partner.name or ""
            context = {
                "partner": {
                    "id": partner.id,
                    "name": name,
                    "first_name": name.split(" ")[0] if name else "",
                    "email": partner.email or "",
                    "phone": partner.phone or partner.mobile or "",
                    "lang": lang,
                    "tz": partner.tz or company.drip_default_tz or "UTC",
                },
                "company": {
                    "name": company.name,
                    "website": company.website or base_url,
                    "email": company.email or "",
                    "phone": company.phone or "",
                },
                "unsubscribe_url": self._unsubscribe_url(partner, base_url, message),
                "preferences_url": self._preferences_url(partner, base_url),
                "recommendations": [],
            }
            if journey:
                context["journey"] = {"name": journey.name}
            if step:
                context["step"] = {"name": step.name}
            if order:
                context["order"] = context["cart"] = {
                    "name": order.name,
                    "amount_total": order.amount_total,
                    "currency": {
                        "name": currency.name,
                        "symbol": currency.symbol,
                        "position": currency.position,
                        "decimals": currency.decimal_places,
                    },
                    "url": f"{base_url}{order.access_url}?access_token={order.access_token}",
                    "lines": [
                        {
                            "product_name": line.product_id.display_name or line.name,
                            "quantity": line.product_uom_qty,
                            "price_unit": line.price_unit,
                            "price_subtotal": line.price_subtotal,
                            "image_url": f"{base_url}/web/image/product.product/"
                            f"{line.product_id.id}/image_128",
                            "url": f"{base_url}/odoo/product.product/{line.product_id.id}",
                        }
                        for line in order.order_line
                        if not line.display_type
                    ],
                }
            contexts[key] = context
        return self.env["drip.offer"]._add_offers(items, contexts)

    @api.model
    def _unsubscribe_url(self, partner, base_url, message=None):
        if hasattr(partner, "_drip_unsubscribe_url"):
            return partner._drip_unsubscribe_url(message or None)
        payload = {"p": partner.id, "c": "email"}
        if message:
            payload["m"] = message.id
        token = self._tracking_token("unsubscribe", payload)
        return f"{base_url}/drip/unsubscribe/{token}"

    @api.model
    def _preferences_url(self, partner, base_url):
        if hasattr(partner, "_drip_preferences_url"):
            return partner._drip_preferences_url()
        token = self._tracking_token("preferences", {"p": partner.id})
        return f"{base_url}/drip/preferences/{token}"

    # ------------------------------------------------------------- decisions
    @api.model
    def _write_decisions(self, messages, decided, plan, now, summary):
        """Write every outcome of the decision phase, one statement per kind."""
        self.env.flush_all()  # e.g. _exit's cancellations, before our own UPDATEs
        cr = self.env.cr
        uid = self.env.uid
        by_kind = defaultdict(list)
        for message_id, (kind, value) in decided.items():
            by_kind[kind].append((message_id, value))
        if by_kind["skip"]:
            ids, reasons = zip(*by_kind["skip"], strict=True)
            cr.execute(SQL(
                """
                UPDATE drip_message m
                   SET state = 'skipped', skip_reason = v.skip_reason, reason = v.reason,
                       lease_until = NULL, write_date = %(now)s, write_uid = %(uid)s
                  FROM unnest(%(ids)s::int[], %(codes)s::varchar[], %(reasons)s::text[])
                       AS v(id, skip_reason, reason)
                 WHERE m.id = v.id
                """,
                now=now, uid=uid, ids=list(ids), codes=[r[0] for r in reasons],
                reasons=[str(r[1]) for r in reasons],
            ))
            summary["skipped"] += len(ids)
        if by_kind["defer"]:
            ids, values = zip(*by_kind["defer"], strict=True)
            cr.execute(SQL(
                """
                UPDATE drip_message m
                   SET state = 'scheduled', scheduled_at = v.until, reason = v.reason,
                       deferred_count = COALESCE(m.deferred_count, 0) + 1, lease_until = NULL,
                       job_id = NULL, queued_at = NULL, write_date = %(now)s,
                       write_uid = %(uid)s
                  FROM unnest(%(ids)s::int[], %(until)s::timestamp[], %(reasons)s::text[])
                       AS v(id, until, reason)
                 WHERE m.id = v.id
                """,
                now=now, uid=uid, ids=list(ids), until=[v[0] for v in values],
                reasons=[str(v[1]) for v in values],
            ))
            summary["deferred"] += len(ids)
        for kind, state in (("cancel", "cancelled"), ("wait", "scheduled")):
            if by_kind[kind]:
                ids, reasons = zip(*by_kind[kind], strict=True)
                cr.execute(SQL(
                    """
                    UPDATE drip_message m
                       SET state = %(state)s, reason = v.reason, lease_until = NULL,
                           job_id = NULL, write_date = %(now)s, write_uid = %(uid)s
                      FROM unnest(%(ids)s::int[], %(reasons)s::text[]) AS v(id, reason)
                     WHERE m.id = v.id
                    """,
                    state=state, now=now, uid=uid, ids=list(ids),
                    reasons=[str(r) for r in reasons],
                ))
                summary[state] += len(ids)
        if by_kind["fail"]:
            ids, errors = zip(*by_kind["fail"], strict=True)
            # A failure is a text, or (skip_reason, text) for a template error.
            codes = [e[0] if isinstance(e, tuple) else None for e in errors]
            texts = [str(e[1] if isinstance(e, tuple) else e) for e in errors]
            cr.execute(SQL(
                """
                UPDATE drip_message m
                   SET state = 'failed', error = v.error, reason = v.error,
                       skip_reason = COALESCE(v.code, m.skip_reason),
                       attempt_count = COALESCE(m.attempt_count, 0) + 1, lease_until = NULL,
                       write_date = %(now)s, write_uid = %(uid)s
                  FROM unnest(%(ids)s::int[], %(codes)s::varchar[], %(errors)s::text[])
                       AS v(id, code, error)
                 WHERE m.id = v.id
                """,
                now=now, uid=uid, ids=list(ids), codes=codes, errors=texts,
            ))
            summary["failed"] += len(ids)
        undecided = [m.id for m in messages if m.id not in decided]
        items = {item["id"]: item for item in plan}
        lease_until = now + timedelta(seconds=self._setting("lease_seconds"))
        if undecided:
            cr.execute(SQL(
                """
                UPDATE drip_message m
                   SET state = 'sending', attempt_count = COALESCE(m.attempt_count, 0) + 1,
                       lease_until = %(lease)s, message_id_header = NULL, sent_at = NULL,
                       error = NULL, recipient = v.recipient, subject = v.subject,
                       write_date = %(now)s, write_uid = %(uid)s
                  FROM unnest(%(ids)s::int[], %(recipients)s::varchar[],
                              %(subjects)s::varchar[]) AS v(id, recipient, subject)
                 WHERE m.id = v.id
                """,
                lease=lease_until, now=now, uid=uid, ids=undecided,
                recipients=[(items.get(i) or {}).get("recipient") or None for i in undecided],
                subjects=[(items.get(i) or {}).get("subject") or None for i in undecided],
            ))
        self.env["drip.message"].invalidate_model()

    # ---------------------------------------------------------------- hand-off
    @api.model
    def _hand_off(self, plan, auto_commit):
        """Send each planned item; {id: (outcome, detail)} with outcome in
        sent | retry | failed | unknown. Commits each hand-off before sending it."""
        outcomes = {}
        every = max(1, self._setting("smtp_commit_every"))
        emails = [item for item in plan if item["channel"] == "email"]
        hooks = [item for item in plan if item["channel"] == "webhook"]
        # The hand-off commit of an email runs in a helper thread while the SMTP
        # envelope (MAIL FROM, RCPT TO) goes out; DATA waits for it (see _transmit).
        executor = ThreadPoolExecutor(1, "drip-handoff") if emails and auto_commit else None
        marker = _HandOffMarker(self.env.cr, auto_commit, every, executor)
        try:
            if emails:
                self._send_emails(emails, marker, outcomes)
            if hooks:
                self._call_webhooks(hooks, marker, outcomes)
            marker.flush()
        finally:
            marker.wait(raise_error=False)
            if executor:
                executor.shutdown()
        return outcomes

    @api.model
    def _send_emails(self, items, marker, outcomes):
        IrMailServer = self.env["ir.mail_server"].sudo()
        builder = self._setting("mime_builder")
        contexts = {}  # one environment per sender, not one per message
        groups = defaultdict(list)
        servers = {}
        for item in items:
            if item["email_from"] not in servers:
                server, smtp_from = IrMailServer._find_mail_server(item["email_from"])
                servers[item["email_from"]] = (server.id if server else False, smtp_from)
            groups[servers[item["email_from"]]].append(item)
        for (server_id, smtp_from), group in groups.items():
            session = None
            for index, item in enumerate(group):
                if session is None:
                    try:
                        session = self._smtp_connect(server_id, smtp_from)
                    except Exception as error:  # noqa: BLE001 - any refusal is transient
                        detail = _("Cannot connect to the mail server: %s", error)
                        for rest in group[index:]:
                            outcomes[rest["id"]] = ("retry", detail)
                        break
                sender = item["sender"]
                addresses = (sender["bounce"] or item["email_from"],
                             sender["notifications"] or item["email_from"])
                Server = contexts.get(addresses)
                if Server is None:
                    Server = contexts[addresses] = IrMailServer.with_context(
                        domain_bounce_address=addresses[0],
                        domain_notifications_email=addresses[1],
                    )
                try:
                    msg = self._build_email(Server, item, builder)
                except Exception as error:  # noqa: BLE001 - a message that cannot be built
                    outcomes[item["id"]] = ("failed", _("The message could not be built: %s",
                                                        error))
                    continue
                marker.hand_off(item, background=True)
                try:
                    self._transmit(Server, server_id, session, msg, marker.wait)
                except TransientError as error:
                    outcomes[item["id"]] = ("retry", str(error))
                    marker.release(item)
                    session = self._smtp_close(session)
                except PermanentError as error:
                    outcomes[item["id"]] = ("failed", str(error))
                    marker.release(item)
                except UnknownOutcome as error:
                    outcomes[item["id"]] = ("unknown", str(error))
                    session = self._smtp_close(session)
                else:
                    outcomes[item["id"]] = ("sent", None)
                    marker.accepted(item)
                finally:
                    # The cursor is ours again (and a failed hand-off write stops the
                    # batch: the message was not given to the server, see _transmit).
                    marker.wait()
            self._smtp_close(session)

    @api.model
    def _smtp_connect(self, server_id, smtp_from):
        """A session on Odoo's configured outgoing server (or the odoo.conf one)."""
        IrMailServer = self.env["ir.mail_server"].sudo()
        if server_id:
            session = IrMailServer.connect(mail_server_id=server_id, smtp_from=smtp_from)
        else:
            session = IrMailServer.connect(smtp_from=smtp_from)
        return session or _NoSession()

    @api.model
    def _smtp_close(self, session):
        if session is not None and not isinstance(session, _NoSession):
            try:
                session.quit()
            except Exception:  # noqa: BLE001 - closing a broken session
                try:
                    session.close()
                except Exception:  # noqa: BLE001
                    pass
        return None

    @api.model
    def _build_email(self, IrMailServer, item, builder=None):
        """The MIME message: the structure ``ir.mail_server.build_email`` makes.

        ``multipart/alternative`` with the plain-text and the HTML part in UTF-8 (base64),
        the same headers (Message-Id, Subject, From, Reply-To, To, Date, our
        List-Unsubscribe headers…), non-ASCII subjects and names as RFC 2047 encoded
        words. The parts are serialised here once, as the payload of a message that
        only carries the top-level headers, with a policy that does not re-fold what is
        already encoded: ``email.mime`` objects flattened by smtplib cost about 1 ms per
        message, most of the worker's CPU. It still goes out through
        ``ir.mail_server.send_email`` (server choice, from-filter, bounce address, test
        mode). ``drip_marketing.mime_builder = odoo`` switches back to ``build_email``.
        """
        if (builder or self._setting("mime_builder")) == "odoo":
            return IrMailServer.build_email(
                email_from=item["email_from"], email_to=[item["email_to"]],
                subject=item["subject"], body=item["body_html"],
                body_alternative=item["body_text"], reply_to=item["reply_to"],
                message_id=item["message_id"], subtype="html", subtype_alternative="plain",
                headers=dict(item["headers"]),
            )
        boundary = f"=_drip_{uuid.uuid4().hex}"
        part = (f"--{boundary}\r\nContent-Type: text/%s; charset=\"utf-8\"\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n%s")
        msg = MimeMessage(policy=_PRE_ENCODED)
        msg["MIME-Version"] = "1.0"
        msg["Content-Type"] = f'multipart/alternative; boundary="{boundary}"'
        msg["Message-Id"] = item["message_id"]
        msg["Subject"] = _encode_header(item["subject"])
        msg["From"] = _encode_addresses(item["email_from"])
        msg["Reply-To"] = _encode_addresses(item["reply_to"] or item["email_from"])
        msg["To"] = _encode_addresses(item["email_to"])
        msg["Date"] = formatdate(usegmt=True)
        for name, value in item["headers"].items():
            msg[name] = value
        msg.set_payload(
            part % ("plain", _base64_lines(item["body_text"]))
            + part % ("html", _base64_lines(item["body_html"]))
            + f"--{boundary}--\r\n"
        )
        return msg

    @api.model
    def _transmit(self, IrMailServer, server_id, session, msg, before_data=None):
        """Send one built message; raise Transient/Permanent/UnknownOutcome.

        The SMTP ``DATA`` command is watched: a connection lost after it started is an
        unknown outcome (the server may have the message), before it a plain retry.
        ``before_data`` (the hand-off commit) is awaited before ``DATA`` is sent: the
        server cannot accept the message before its hand-off is durable, while the
        envelope commands overlap with the commit. It must not touch the cursor before.
        """
        stage = {"data": False}
        raw = getattr(session, "__obj__", None)
        if raw is not None:
            original = type(raw).data

            def data(message, _raw=raw, _original=original):
                if before_data is not None:
                    before_data()
                stage["data"] = True
                return _original(_raw, message)

            raw.data = data
        elif before_data is not None:
            before_data()
        try:
            IrMailServer.send_email(
                msg, mail_server_id=server_id or None,
                smtp_session=None if isinstance(session, _NoSession) else session,
            )
        except AssertionError as error:
            # Odoo's "no valid recipient / sender" checks, before anything is sent.
            raise PermanentError(" ".join(str(arg) for arg in error.args)) from error
        except Exception as error:  # noqa: BLE001 - classified below
            cause = error.__context__ if error.__class__.__name__ == "MailDeliveryException" \
                else error
            raise self._classify_smtp_error(cause or error, stage["data"]) from error
        finally:
            if raw is not None:
                raw.__dict__.pop("data", None)

    @api.model
    def _classify_smtp_error(self, error, data_started):
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _msg in error.recipients.values()]
            text = "; ".join(f"{addr}: {code} {msg!r}"
                             for addr, (code, msg) in error.recipients.items())
            if codes and all(400 <= code < 500 for code in codes):
                return TransientError(_("Recipient temporarily refused: %s", text))
            return PermanentError(_("Recipient refused: %s", text))
        if isinstance(error, smtplib.SMTPResponseException):
            message = error.smtp_error
            if isinstance(message, bytes):
                message = message.decode(errors="replace")
            text = f"{error.smtp_code} {message}"
            if 400 <= error.smtp_code < 500:
                return TransientError(_("Mail server said: %s", text))
            return PermanentError(_("Mail server refused: %s", text))
        if isinstance(error, (smtplib.SMTPServerDisconnected, OSError)):
            if data_started:
                return UnknownOutcome(_("Connection lost while the mail server had the "
                                        "message: %s", error))
            return TransientError(_("Connection to the mail server failed: %s", error))
        if isinstance(error, (UnicodeError, ValueError, TypeError)):
            return PermanentError(_("The message could not be built: %s", error))
        return TransientError(_("Sending failed: %s", error))

    @api.model
    def _call_webhooks(self, items, marker, outcomes):
        timeout = self._setting("webhook_timeout")
        session = requests.Session()
        try:
            for item in items:
                marker.hand_off(item)
                timestamp = int(time.time())
                headers = {
                    "Content-Type": "application/json; charset=utf-8",
                    "User-Agent": "drip_marketing (Odoo)",
                    "X-Drip-Message-Id": item["message_id"],
                    "X-Drip-Signature": tokens.webhook_signature(
                        item["secret"], timestamp, item["body"]),
                }
                try:
                    response = session.post(item["url"], data=item["body"], headers=headers,
                                            timeout=timeout, allow_redirects=False)
                except requests.RequestException as error:
                    outcomes[item["id"]] = ("retry", _("Webhook call failed: %s", error))
                    marker.release(item)
                    continue
                status = response.status_code
                if 200 <= status < 300:
                    outcomes[item["id"]] = ("sent", None)
                    marker.accepted(item)
                elif status >= 500 or status in (408, 425, 429):
                    outcomes[item["id"]] = ("retry", _("Webhook answered %s.", status))
                    marker.release(item)
                else:
                    outcomes[item["id"]] = ("failed", _(
                        "Webhook answered %(status)s: %(body)s",
                        status=status, body=response.text[:300]))
                    marker.release(item)
        finally:
            session.close()

    # ---------------------------------------------------------------- finish
    @api.model
    def _finish(self, items, outcomes, summary):
        """Write the hand-off outcomes, start the next steps, log on the chatter."""
        now = fields.Datetime.now()
        Message = self.env["drip.message"].sudo()
        self.env.flush_all()
        by_outcome = defaultdict(list)
        for item in items:
            outcome, detail = outcomes.get(item["id"], ("retry", _("Not attempted.")))
            by_outcome[outcome].append((item, detail))
        sent_items = [item for item, _detail in by_outcome["sent"]]
        if sent_items:
            immediate = [item for item in sent_items if item["channel"] in ("sms", "note")]
            if immediate:
                self._hand_to_odoo(immediate)
            sent = Message.browse([item["id"] for item in sent_items])
            self.env.cr.execute(SQL(
                """
                UPDATE drip_message m SET message_id_header = v.mid
                  FROM unnest(%s::int[], %s::varchar[]) AS v(id, mid) WHERE m.id = v.id
                """,
                [item["id"] for item in sent_items],
                [item["message_id"] for item in sent_items],
            ))
            sent.invalidate_recordset(["message_id_header"])
            sent._done(now)
            self._log_sent(sent_items)
            summary["sent"] += len(sent_items)
        retry_ids = []
        if by_outcome["retry"]:
            retry_ids = self._retry_later(by_outcome["retry"], now, summary)
        failures = [(item["id"], detail) for item, detail in by_outcome["failed"]]
        failures += [
            (item["id"], UNKNOWN_TEXT % item["message_id"] + (f" ({detail})" if detail else ""))
            for item, detail in by_outcome["unknown"] if item["channel"] == "email"
        ]
        if failures:
            self._fail(failures, now)
            summary["failed"] += len(failures)
        hook_unknown = [(item, detail) for item, detail in by_outcome["unknown"]
                        if item["channel"] != "email"]
        if hook_unknown:
            retry_ids += self._retry_later(hook_unknown, now, summary)
        summary["retry"] = list(summary.get("retry") or []) + retry_ids
        Message.browse([item["id"] for item in items]).enrollment_id._complete_if_done()

    @api.model
    def _retry_later(self, pairs, now, summary):
        """Back to ``queued`` (RQ retries the job; the reaper after the lease) or failed
        after the last attempt."""
        intervals = self._retry_intervals()
        max_attempts = self._setting("max_attempts")
        ids = [item["id"] for item, _detail in pairs]
        details = {item["id"]: str(detail) for item, detail in pairs}
        self.env.flush_all()
        self.env.cr.execute(
            "SELECT id, COALESCE(attempt_count, 0) FROM drip_message WHERE id = ANY(%s)", [ids])
        attempts = dict(self.env.cr.fetchall())
        retry, final = [], []
        for message_id in ids:
            count = max(attempts.get(message_id, 1), 1)
            if count >= max_attempts:
                final.append((message_id, _("Gave up after %(count)s attempts: %(error)s",
                                            count=count, error=details[message_id])))
            else:
                wait = intervals[min(count - 1, len(intervals) - 1)]
                # RQ retries the job after ``wait``; the reaper only steps in a minute
                # later, and only if the job is gone (Redis lost, or no Redis at all).
                retry.append((message_id, details[message_id],
                              now + timedelta(seconds=wait + 60)))
        if retry:
            self.env.cr.execute(SQL(
                """
                UPDATE drip_message m
                   SET state = 'queued', error = v.error, lease_until = v.lease,
                       message_id_header = NULL, sent_at = NULL,
                       write_date = %(now)s
                  FROM unnest(%(ids)s::int[], %(errors)s::text[], %(leases)s::timestamp[])
                       AS v(id, error, lease)
                 WHERE m.id = v.id
                """,
                now=now, ids=[r[0] for r in retry], errors=[r[1] for r in retry],
                leases=[r[2] for r in retry],
            ))
            summary["retrying"] += len(retry)
        if final:
            self._fail(final, now)
            summary["failed"] += len(final)
        self.env["drip.message"].invalidate_model()
        return [r[0] for r in retry]

    @api.model
    def _fail(self, failures, now):
        self.env.flush_all()
        self.env.cr.execute(SQL(
            """
            UPDATE drip_message m
               SET state = 'failed', error = v.error, reason = v.error, lease_until = NULL,
                   write_date = %(now)s
              FROM unnest(%(ids)s::int[], %(errors)s::text[]) AS v(id, error)
             WHERE m.id = v.id
            """,
            now=now, ids=[f[0] for f in failures], errors=[str(f[1]) for f in failures],
        ))
        self.env["drip.message"].invalidate_model()

    @api.model
    def _hand_to_odoo(self, items):
        """SMS go to Odoo's SMS queue; notes are written by ``_log_sent`` itself."""
        sms = [item for item in items if item["channel"] == "sms"]
        if sms:
            self.env["sms.sms"].sudo().create([
                {
                    "number": item["recipient"],
                    "body": item["body_text"],
                    "partner_id": item["partner_id"],
                    "state": "outgoing",
                    "uuid": uuid.uuid5(uuid.NAMESPACE_URL, item["message_id"]).hex,
                }
                for item in sms
            ])

    @api.model
    def _log_sent(self, items):
        """One chatter entry per message on the customer, in ONE INSERT.

        For emails the entry carries the email's Message-ID, so Odoo's own mail gateway
        threads replies (and bounces) onto the customer. The rows are what
        ``mail.message.create`` stores for a note logged with these values (author,
        email_from, reply_to and message_id given, no attachment, no tracking); going
        around the ORM saves about a millisecond per message, a fifth of a send.
        """
        if not items:
            return
        subtype = self.env.ref("mail.mt_note")
        default_sender = self._sender_context(
            self.env.company, self.env.company.email_formatted, {})["sender"]
        labels = {"email": _("Email"), "sms": _("SMS"), "webhook": _("Message"),
                  "note": _("Note")}
        # Translated once per batch, not once per message.
        sentence = _("%(kind)s sent by journey '%(journey)s', step '%(step)s': %(subject)s")
        Mail = self.env["mail.message"].sudo()
        body_field = Mail._fields["body"]
        columns = {name: [] for name in (
            "res_id", "body", "subject", "author_id", "email_from", "reply_to", "message_id")}
        for item in items:
            if item["channel"] == "note":
                # Template HTML: sanitised as the ORM would (our own sentence is escaped).
                body = body_field.convert_to_column(
                    Markup(item.get("body_html") or ""), Mail)
            else:
                body = Markup("<p>%s</p>") % (sentence % {
                    "kind": labels.get(item["channel"], item["channel"]),
                    "journey": item["journey"], "step": item["step"],
                    "subject": item.get("subject") or "",
                })
            sender = item.get("sender") or default_sender
            columns["res_id"].append(item["partner_id"])
            columns["body"].append(str(body))
            columns["subject"].append(item.get("subject") or None)
            columns["author_id"].append(sender["author_id"])
            columns["email_from"].append(item.get("email_from") or sender["reply_to_default"])
            columns["reply_to"].append(item.get("reply_to") or sender["reply_to_default"])
            columns["message_id"].append(
                item["message_id"] if item["channel"] == "email" else Mail._get_message_id(
                    {"model": "res.partner", "res_id": item["partner_id"]}))
        now = fields.Datetime.now()
        self.env.cr.execute(SQL(
            """
            INSERT INTO mail_message (
                model, res_id, message_type, subtype_id, is_internal, body, subject,
                author_id, email_from, reply_to, message_id, email_add_signature,
                reply_to_force_new, date, create_uid, create_date, write_uid, write_date)
            SELECT 'res.partner', v.res_id, 'notification', %(subtype)s, FALSE, v.body,
                   v.subject, v.author_id, v.email_from, v.reply_to, v.message_id, TRUE,
                   FALSE, %(now)s, %(uid)s, %(now)s, %(uid)s, %(now)s
              FROM unnest(%(res_id)s::int[], %(body)s::text[], %(subject)s::varchar[],
                          %(author_id)s::int[], %(email_from)s::varchar[],
                          %(reply_to)s::varchar[], %(message_id)s::varchar[])
                   AS v(res_id, body, subject, author_id, email_from, reply_to, message_id)
            """,
            subtype=subtype.id, now=now, uid=self.env.uid, **columns,
        ))
        self.env["res.partner"].invalidate_model(["message_ids"])

    # ------------------------------------------------------- bounces and replies
    @api.model
    def _messages_by_reference(self, references):
        refs = [ref.strip() for ref in references if ref and ref.strip()]
        if not refs:
            return self.env["drip.message"]
        return self.env["drip.message"].sudo().search([("message_id_header", "in", refs[-32:])])

    @api.model
    def _on_bounce(self, message_dict):
        """Odoo recognised a bounce: stamp the drip message it refers to."""
        refs = list(message_dict.get("bounced_msg_ids") or [])
        messages = self._messages_by_reference(refs).filtered(lambda m: not m.bounced_at)
        if messages:
            messages.write({"bounced_at": fields.Datetime.now()})
        return messages

    @api.model
    def _on_reply(self, message, message_dict):
        """An incoming email answers a drip email: ``replied`` (auto-replies excluded)."""
        if message is not None and (message.get("Auto-Submitted") or "no").lower() != "no":
            return self.env["drip.message"]
        refs = tools.mail.unfold_references(message_dict.get("in_reply_to") or "")
        refs += tools.mail.unfold_references(message_dict.get("references") or "")
        messages = self._messages_by_reference(refs).filtered(lambda m: m.state == "sent")
        if messages:
            messages._on_outcome("replied")
        return messages

    # ---------------------------------------------------------------- reaper
    @api.model
    def _recover_sending(self, ids=None, now=None, ignore_lease=False, limit=1000):
        """Resolve ``sending`` rows whose worker is gone (past the lease).

        * acceptance recorded (``sent_at``) → finished as sent, next steps started;
        * handed off, no acceptance → the one window: failed with "delivery unknown"
          (emails, SMS) or queued again (webhooks, de-duplicated by the receiver);
        * never handed off → queued again.
        Returns the ids queued again.
        """
        now = now or fields.Datetime.now()
        condition = SQL("TRUE") if ignore_lease else SQL("lease_until < %s", now)
        scope = SQL("AND id = ANY(%s)", list(ids)) if ids is not None else SQL()
        self.env["drip.message"].flush_model()
        self.env.cr.execute(SQL(
            """
            SELECT id, channel, step_type, message_id_header, sent_at, queue, recipient,
                   subject, partner_id
              FROM drip_message
             WHERE state = 'sending' AND %s %s
             ORDER BY id LIMIT %s
               FOR UPDATE SKIP LOCKED
            """,
            condition, scope, limit,
        ))
        rows = self.env.cr.fetchall()
        accepted, unknown, requeue = [], [], []
        for mid, channel, step_type, header, sent_at, queue, recipient, subject, pid in rows:
            item = {"id": mid, "channel": channel if step_type == "send" else "webhook",
                    "message_id": header, "partner_id": pid, "subject": subject,
                    "recipient": recipient}
            if sent_at:
                accepted.append((item, queue))
            elif header and item["channel"] == "email":
                unknown.append((mid, UNKNOWN_TEXT % header))
            else:
                requeue.append((mid, queue))
        if accepted:
            Message = self.env["drip.message"].sudo()
            messages = Message.browse([item["id"] for item, _q in accepted])
            messages.fetch(["journey_id", "step_id"])
            for item, _q in accepted:
                message = messages.browse(item["id"])
                item.update(journey=message.journey_id.name, step=message.step_id.name)
            messages._done(now)
            self._log_sent([item for item, _q in accepted])
            messages.enrollment_id._complete_if_done()
        if unknown:
            self._fail(unknown, now)
        if requeue:
            # A claim that never reached the hand-off is still an attempt: a message that
            # kills its worker every time ends failed instead of looping forever.
            self.env.cr.execute(
                "SELECT id, COALESCE(attempt_count, 0) FROM drip_message WHERE id = ANY(%s)",
                [[mid for mid, _q in requeue]],
            )
            attempts = dict(self.env.cr.fetchall())
            max_attempts = self._setting("max_attempts")
            exhausted = []
            for mid, _queue in requeue:
                if attempts.get(mid, 0) >= max_attempts:
                    exhausted.append((mid, _(
                        "The worker stopped %s times while delivering this message.",
                        attempts[mid])))
            if exhausted:
                self._fail(exhausted, now)
            done = {mid for mid, _e in exhausted}
            requeue = [(mid, queue) for mid, queue in requeue if mid not in done]
        if requeue:
            self.env.cr.execute(
                "UPDATE drip_message SET state = 'queued', message_id_header = NULL "
                "WHERE id = ANY(%s)",
                [[mid for mid, _q in requeue]],
            )
            self.env["drip.message"].invalidate_model()
            self._queue_rows(requeue, from_states=("queued",))
        if rows:
            _logger.info("drip reaper: %s finished, %s unknown, %s queued again",
                         len(accepted), len(unknown), len(requeue))
        return [mid for mid, _q in requeue]

    @api.model
    def _requeue_lost(self, now=None, limit=5000):
        """``queued`` rows past their lease whose RQ job is gone: enqueue them again."""
        now = now or fields.Datetime.now()
        self.env["drip.message"].flush_model()
        self.env.cr.execute(
            """
            SELECT id, job_id, queue FROM drip_message
             WHERE state = 'queued' AND lease_until < %s
             ORDER BY lease_until LIMIT %s
               FOR UPDATE SKIP LOCKED
            """,
            [now, limit],
        )
        rows = self.env.cr.fetchall()
        if not rows:
            return []
        url = self._redis_url()
        alive = set()
        if url:
            job_ids = sorted({job_id for _id, job_id, _q in rows if job_id})
            try:
                pipe = redis_connection(url).pipeline(transaction=False)
                for job_id in job_ids:
                    pipe.hget(f"rq:job:{job_id}", "status")
                statuses = pipe.execute()
            except Exception as error:  # noqa: BLE001 - Redis down: try again next time
                _logger.warning("drip reaper: Redis unreachable (%s); will retry", error)
                return []
            alive = {
                job_id for job_id, status in zip(job_ids, statuses, strict=True)
                if status and status.decode() in LIVE_JOB_STATUSES
            }
        lease_until = now + timedelta(seconds=self._setting("lease_seconds"))
        waiting = [mid for mid, job_id, _q in rows if job_id in alive]
        if waiting:
            # Still in a queue (a long backlog, or a retry scheduled): extend the lease.
            self.env.cr.execute(
                "UPDATE drip_message SET lease_until = %s WHERE id = ANY(%s)",
                [lease_until, waiting],
            )
        lost = [(mid, queue) for mid, job_id, queue in rows if job_id not in alive]
        if lost:
            self._queue_rows(lost, from_states=("queued",))
            _logger.info("drip reaper: %s queued rows had no live job; enqueued again",
                         len(lost))
        self.env["drip.message"].invalidate_model()
        return [mid for mid, _q in lost]

    @api.model
    def _cron_reap(self):
        """Scheduled action: resolve stuck ``sending`` rows, re-enqueue lost ``queued`` ones."""
        now = fields.Datetime.now()
        self._recover_sending(now=now)
        self._requeue_lost(now=now)


class _NoSession:
    """Stands for the SMTP session Odoo does not open in test mode."""


class _HandOffMarker:
    """Records, durably, which message was handed to the server and which was accepted.

    ``hand_off`` writes the Message-ID of the next message together with the acceptance
    of the previous ones in ONE statement, then commits (with ``auto_commit``); with
    ``every > 1`` hand-offs are grouped, trading a wider window for fewer commits.
    """

    def __init__(self, cr, auto_commit, every=1, executor=None):
        self.cr = cr
        self.auto_commit = auto_commit
        self.every = every
        self.executor = executor
        self.pending = []  # (id, message_id or None, accepted_at or None, release)
        self.count = 0
        self.future = None
        self.error = None

    def hand_off(self, item, background=False):
        self.pending.append((item["id"], item["message_id"], None, False))
        self.count += 1
        if self.count >= self.every:
            self.flush(background)

    def wait(self, raise_error=True):
        """Until the background write (if any) is committed; re-raise its error."""
        future, self.future = self.future, None
        if future is not None:
            try:
                future.result()
            except Exception as error:  # noqa: BLE001 - kept, raised to the caller
                self.error = error
        if self.error is not None and raise_error:
            raise self.error

    def accepted(self, item):
        self.pending.append((item["id"], None, fields.Datetime.now(), False))

    def release(self, item):
        self.pending.append((item["id"], None, None, True))

    def flush(self, background=False):
        self.wait()  # one statement at a time on the cursor
        self.count = 0
        if not self.pending:
            return
        rows, self.pending = self.pending, []
        if background and self.executor is not None:
            self.future = self.executor.submit(self._write, rows)
        else:
            self._write(rows)

    def _write(self, rows):
        self.cr.execute(
            """
            UPDATE drip_message m
               SET message_id_header = CASE WHEN v.release THEN NULL
                                            ELSE COALESCE(v.mid, m.message_id_header) END,
                   sent_at = COALESCE(v.accepted, m.sent_at)
              FROM unnest(%s::int[], %s::varchar[], %s::timestamp[], %s::bool[])
                   AS v(id, mid, accepted, release)
             WHERE m.id = v.id AND m.state = 'sending'
            """,
            [[r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
             [r[3] for r in rows]],
        )
        if self.auto_commit:
            # The hand-off is durable before the message leaves (see module docstring).
            self.cr.commit()


# ---------------------------------------------------------------------- after commit
def _enqueue_after_commit(dbname, url, queue_names, jobs, retry_intervals, job_timeout):
    """Push the jobs to RQ in one pipeline; on failure put the rows back to scheduled."""
    try:
        from rq import Queue, Retry

        from .. import jobs as job_functions

        connection = redis_connection(url)
        pipe = connection.pipeline()
        retry = Retry(max=len(retry_intervals), interval=retry_intervals)
        by_kind = defaultdict(list)
        for kind, job_id, ids in jobs:
            by_kind[kind].append(Queue.prepare_data(
                job_functions.deliver,
                args=(dbname, ids),
                job_id=job_id,
                retry=retry,
                timeout=job_timeout,
                result_ttl=3600,
                failure_ttl=7 * 86400,
                description=f"drip deliver {len(ids)} messages ({dbname})",
            ))
        for kind, datas in by_kind.items():
            Queue(queue_names.get(kind) or queue_names["bulk"], connection=connection
                  ).enqueue_many(datas, pipeline=pipe)
        pipe.execute()
    except Exception as error:  # noqa: BLE001 - Redis down, misconfigured…
        _logger.warning("drip: enqueueing %s jobs failed (%s); rows go back to scheduled",
                        len(jobs), error)
        try:
            with Registry(dbname).cursor() as cr:
                env = api.Environment(cr, SUPERUSER_ID, {})
                env["drip.delivery"]._unstage([job_id for _k, job_id, _ids in jobs])
        except Exception:  # noqa: BLE001 - the reaper re-queues after the lease
            _logger.exception("drip: could not put rows back; the reaper will")


def _deliver_inline_after_commit(dbname, chunks):
    """No Redis: deliver right after the scheduled action's commit, in our own cursor."""
    from .. import jobs as job_functions

    for ids in chunks:
        try:
            job_functions.deliver(dbname, ids)
        except Exception:  # noqa: BLE001 - rows stay queued; the reaper resumes them
            _logger.exception("drip: inline delivery of %s messages failed", len(ids))
