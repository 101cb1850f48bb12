import json
import logging
import time
from collections import defaultdict
from datetime import datetime, timedelta
from datetime import time as dt_time

from odoo import _, api, fields, models
from odoo.exceptions import AccessError, UserError
from odoo.tools import SQL

from ..engine import rfm, tokens
from ..engine.identity import normalize_phone
from .drip_consent_event import CONSENT_CHANNELS, CONSENT_STATES, ERASURE_CONTEXT_KEY

_logger = logging.getLogger(__name__)

CONSENT_FIELDS = {channel: f"drip_consent_{channel}" for channel, _label in CONSENT_CHANNELS}
# A merged customer keeps, per channel, the most restrictive state of the merged ones.
CONSENT_RESTRICTIVENESS = {"unknown": 0, "opted_in": 1, "pending": 2, "opted_out": 3}
# Delivery channel of a step -> consent channel; other channels (notes) need no consent.
DELIVERY_CONSENT_CHANNEL = {
    "email": "email", "sms": "sms", "webhook": "messaging", "messaging": "messaging",
}
# Set by _drip_set_consent on its own write, so write() does not log the change twice.
CONSENT_WRITE_KEY = "drip_consent_write"
# Public links: how long each kind stays valid.
TOKEN_DAYS = {"unsubscribe": 730, "preferences": 730, "confirm": 7}
RFM_WORK_MEM = "256MB"


class ResPartner(models.Model):
    _inherit = "res.partner"

    drip_birthday = fields.Date(string="Birthday")
    # RFM: stored so segments, triggers and list views filter on them cheaply; written
    # set-based by the nightly recompute, NULL for customers without a confirmed order in
    # the window. Recency in days is derived from the last order date instead of stored:
    # stored, it would change for every scored customer every day, and the daily run
    # could no longer write only the rows whose scores changed.
    drip_rfm_recency_days = fields.Integer(
        string="Days since last order",
        compute="_compute_drip_rfm_recency_days",
        search="_search_drip_rfm_recency_days",
        help="Whole days (UTC) since the last confirmed order in the RFM window.",
    )
    drip_rfm_r = fields.Integer(string="Recency score", readonly=True, aggregator="avg")
    drip_rfm_f = fields.Integer(string="Frequency score", readonly=True, aggregator="avg")
    drip_rfm_m = fields.Integer(string="Monetary score", readonly=True, aggregator="avg")
    drip_rfm_score = fields.Char(string="RFM score", readonly=True, index="btree_not_null")
    drip_rfm_segment = fields.Selection(
        rfm.SEGMENTS, string="RFM segment", readonly=True, index="btree_not_null"
    )
    drip_rfm_computed_at = fields.Datetime(string="RFM computed at", readonly=True)
    drip_last_order_date = fields.Datetime(string="Last order", readonly=True)
    drip_order_count = fields.Integer(string="Orders (RFM window)", readonly=True)
    drip_currency_id = fields.Many2one(
        "res.currency", compute="_compute_drip_currency_id", string="Company currency"
    )
    drip_revenue = fields.Monetary(
        string="Revenue (RFM window)", currency_field="drip_currency_id", readonly=True
    )
    # Consent per channel; every change is also a row of drip.consent.event.
    drip_consent_email = fields.Selection(
        CONSENT_STATES, string="Email consent", default="unknown", required=True, index=True
    )
    drip_consent_email_date = fields.Datetime(string="Email consent changed", readonly=True)
    drip_consent_sms = fields.Selection(
        CONSENT_STATES, string="SMS consent", default="unknown", required=True, index=True
    )
    drip_consent_sms_date = fields.Datetime(string="SMS consent changed", readonly=True)
    drip_consent_messaging = fields.Selection(
        CONSENT_STATES, string="Messaging consent", default="unknown", required=True
    )
    drip_consent_messaging_date = fields.Datetime(
        string="Messaging consent changed", readonly=True
    )
    drip_consent_event_ids = fields.One2many(
        "drip.consent.event", "partner_id", string="Consent history"
    )
    # Predictions, refreshed set-based by scheduled actions.
    drip_engagement_score = fields.Float(string="Engagement score", readonly=True, digits=(16, 1))
    drip_engagement_at = fields.Datetime(string="Score as of", readonly=True)
    drip_p_alive = fields.Float(string="Probability still active", readonly=True, digits=(16, 3))
    drip_expected_orders_90d = fields.Float(
        string="Expected orders (90 days)", readonly=True, digits=(16, 2)
    )
    drip_next_order_date = fields.Date(string="Predicted next order", readonly=True)
    drip_churn_risk = fields.Selection(
        [("low", "Low"), ("at_risk", "At risk"), ("lapsed", "Lapsed")],
        string="Churn risk",
        readonly=True,
        index="btree_not_null",
    )
    drip_best_hour_of_week = fields.Integer(
        string="Best time (hour of week)",
        readonly=True,
        default=-1,
        help="0 = Monday 00:00 … 167 = Sunday 23:00 in the customer's time zone; -1: "
        "not enough history, the store's pattern is used.",
    )
    # Best time (drip.prediction): the customer's own weighted opens / clicks / orders per
    # local hour of the week, sparse ({"hour": weight}); shrunk toward the store's pattern
    # when a step is scheduled (engine/besttime.py).
    drip_best_time_histogram = fields.Json(string="Engagement hours", readonly=True, copy=False)
    drip_best_time_label = fields.Char(
        string="Best time", compute="_compute_drip_best_time_label",
        help="The local weekday and hour at which this customer engages most, learned from "
        "their opens, clicks and orders and shrunk toward the store's pattern.",
    )
    drip_enrollment_ids = fields.One2many("drip.enrollment", "partner_id", string="Journeys")
    drip_message_ids = fields.One2many("drip.message", "partner_id", string="Marketing messages")
    drip_identity_ids = fields.One2many("drip.identity", "partner_id", string="Identities")
    drip_timeline_ids = fields.One2many(
        "drip.timeline", "partner_id", string="Marketing timeline", readonly=True
    )
    drip_phone_sanitized = fields.Char(
        string="Phone for SMS (E.164)",
        compute="_compute_drip_phone_sanitized",
        store=True,
        index="btree_not_null",
        help="Mobile, else phone, in E.164 form: the number SMS consent and Odoo's phone "
        "blacklist are matched on.",
    )
    drip_enrollment_count = fields.Integer(compute="_compute_drip_counts")
    drip_message_count = fields.Integer(compute="_compute_drip_counts")

    @api.depends("company_id")
    def _compute_drip_currency_id(self):
        for partner in self:
            partner.drip_currency_id = (partner.company_id or self.env.company).currency_id

    @api.depends("drip_best_hour_of_week")
    def _compute_drip_best_time_label(self):
        self.env["drip.prediction"]._compute_best_time_labels(self)

    def _compute_drip_counts(self):
        enrollments = dict(
            self.env["drip.enrollment"]._read_group(
                [("partner_id", "in", self.ids)], ["partner_id"], ["__count"]
            )
        )
        messages = dict(
            self.env["drip.message"]._read_group(
                [("partner_id", "in", self.ids), ("is_test", "=", False)],
                ["partner_id"],
                ["__count"],
            )
        )
        for partner in self:
            partner.drip_enrollment_count = enrollments.get(partner, 0)
            partner.drip_message_count = messages.get(partner, 0)

    @api.depends("drip_last_order_date")
    def _compute_drip_rfm_recency_days(self):
        today = fields.Datetime.now().date()
        for partner in self:
            last = partner.drip_last_order_date
            partner.drip_rfm_recency_days = (today - last.date()).days if last else 0

    def _search_drip_rfm_recency_days(self, operator, value):
        """``recency <op> N`` as a range on the stored last order date (indexable).

        Recency is ``today - last_order::date``; customers without an order in the
        window have no recency and match no comparison.
        """
        if operator not in ("=", "!=", "<", "<=", ">", ">=") or isinstance(value, bool):
            raise UserError(_("Days since last order can only be compared to a number."))
        days = int(value or 0)
        today = datetime.combine(fields.Datetime.now().date(), dt_time.min)

        def day_start(n):  # the first instant of the day n days ago
            return today - timedelta(days=n)

        if operator == ">":
            return [("drip_last_order_date", "<", day_start(days))]
        if operator == ">=":
            return [("drip_last_order_date", "<", day_start(days - 1))]
        if operator == "<":
            return [("drip_last_order_date", ">=", day_start(days - 1))]
        if operator == "<=":
            return [("drip_last_order_date", ">=", day_start(days))]
        exact = ["&", ("drip_last_order_date", ">=", day_start(days)),
                 ("drip_last_order_date", "<", day_start(days - 1))]
        if operator == "=":
            return exact
        return ["|", ("drip_last_order_date", "=", False), "!", *exact]

    @api.depends("mobile", "phone", "country_id", "company_id")
    def _compute_drip_phone_sanitized(self):
        for partner in self:
            region = (partner.country_id or partner.company_id.country_id
                      or self.env.company.country_id).code or None
            partner.drip_phone_sanitized = next(
                (number for number in (normalize_phone(partner.mobile, region),
                                       normalize_phone(partner.phone, region)) if number),
                False,
            )

    # ------------------------------------------------------------------ CRUD
    @api.model_create_multi
    def create(self, vals_list):
        # Consent given at creation (import, API, signup) goes through the ledger too.
        consent = [
            {channel: vals.pop(fname) for channel, fname in CONSENT_FIELDS.items()
             if vals.get(fname) and vals[fname] != "unknown"}
            for vals in vals_list
        ] if not self.env.context.get(CONSENT_WRITE_KEY) else [{} for _vals in vals_list]
        partners = super().create(vals_list)
        groups = defaultdict(list)
        for partner, changes in zip(partners, consent):
            for channel, state in changes.items():
                groups[channel, state].append(partner.id)
        source = self._drip_consent_source()
        for (channel, state), ids in groups.items():
            self.browse(ids)._drip_set_consent(channel, state, source)
        partners._drip_sync_blacklisted()
        return partners

    def write(self, vals):
        if self.env.context.get(CONSENT_WRITE_KEY):
            return super().write(vals)
        vals = dict(vals)
        consent = {channel: vals.pop(fname) for channel, fname in CONSENT_FIELDS.items()
                   if fname in vals}
        tags_before = (
            {partner.id: set(partner.category_id.ids) for partner in self}
            if "category_id" in vals else None
        )
        result = super().write(vals) if vals else True
        if tags_before is not None:
            self._drip_record_tags_added(tags_before)
        source = self._drip_consent_source()
        for channel, state in consent.items():
            self._drip_set_consent(channel, state or "unknown", source)
        if {"email", "mobile", "phone", "country_id"} & vals.keys():
            self._drip_sync_blacklisted()
        return result

    def _drip_record_tags_added(self, tags_before):
        """Record a 'tag added' event per new tag, in one INSERT (journeys trigger on it)."""
        rows = [
            (partner.id, tag_id)
            for partner in self
            for tag_id in set(partner.category_id.ids) - tags_before.get(partner.id, set())
        ]
        if not rows:
            return
        event_type = self.env.ref("drip_marketing.event_type_tag_added", raise_if_not_found=False)
        if not event_type:
            return  # during the module's own installation
        now = fields.Datetime.now()
        self.env["drip.event"].sudo().create([
            {"name": "Tag added", "event_type_id": event_type.id, "partner_id": partner_id,
             "call_type": "internal", "occurred_at": now, "processed": True,
             "company_id": (self.browse(partner_id).company_id or self.env.company).id,
             "payload": {"tag_id": tag_id}}
            for partner_id, tag_id in rows
        ])

    # --------------------------------------------------------------- actions
    def action_drip_view_enrollments(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "drip_marketing.drip_enrollment_action"
        )
        action["domain"] = [("partner_id", "=", self.id)]
        return action

    def action_drip_view_messages(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "drip_marketing.drip_message_action"
        )
        action["domain"] = [("partner_id", "=", self.id)]
        return action

    def action_drip_view_timeline(self):
        self.ensure_one()
        action = self.env["ir.actions.act_window"]._for_xml_id(
            "drip_marketing.drip_timeline_action"
        )
        action["domain"] = [("partner_id", "=", self.id)]
        action["context"] = {"default_partner_id": self.id}
        action["display_name"] = _("Marketing timeline of %s", self.display_name)
        return action

    def action_drip_recompute_rfm(self):
        """Recompute every customer's RFM now (the same set-based run as the nightly one)."""
        self._drip_check_manager()
        changed = self.env["res.partner"].sudo()._drip_recompute_rfm()
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "type": "success",
                "message": _("RFM recomputed: %s customers changed.", changed),
                "next": {"type": "ir.actions.client", "tag": "soft_reload"},
            },
        }

    def action_drip_export_data(self):
        """Download this customer's marketing data as JSON (right of access, portability)."""
        self.ensure_one()
        self._drip_check_manager()
        data = self.sudo()._drip_export_data()
        attachment = self.env["ir.attachment"].sudo().create({
            "name": f"marketing-data-{self.id}.json",
            "res_model": self._name,
            "res_id": self.id,
            "mimetype": "application/json",
            "raw": json.dumps(data, indent=2, ensure_ascii=False, default=str).encode(),
            "description": "drip_marketing_export",
        })
        return {
            "type": "ir.actions.act_url",
            "url": f"/web/content/{attachment.id}?download=true",
            "target": "self",
        }

    def action_drip_erase_marketing_data(self):
        """Erase this customer's marketing data (right to erasure); see _drip_erase."""
        self._drip_check_manager()
        self.sudo()._drip_erase_marketing_data()
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {
                "type": "success",
                "message": _("Marketing data erased; the customer is opted out everywhere."),
                "next": {"type": "ir.actions.client", "tag": "soft_reload"},
            },
        }

    # -------------------------------------------------------------- consent
    def _drip_check_manager(self):
        if not self.env.is_superuser() and not self.env.user.has_group(
            "drip_marketing.drip_marketing_group_manager"
        ):
            raise AccessError(_("Only Drip Marketing managers can do this."))

    def _drip_consent_source(self):
        context = self.env.context
        return context.get("drip_consent_source") or (
            "import" if context.get("import_file") else "backend"
        )

    def _drip_set_consent(self, channel, state, source="backend", **proof):
        """Set the consent of these customers on ``channel``; returns those that changed.

        Batch-friendly: at most one write per resulting state and one ledger insert for
        all changes. ``proof`` holds ledger fields: ``is_public_request``,
        ``ip_address``, ``user_agent``, ``proof`` (free text).

        Rules:

        * with the company's double opt-in on, an email opt-in from any source but the
          confirmation link itself becomes *pending* and a confirmation email is sent;
          a confirmation only confirms customers still pending;
        * an opt-out adds the address to Odoo's blacklist (``mail.blacklist`` /
          ``phone.blacklist``), flagged as ours; the other customers sharing the address
          turn opted out too (ledger source ``blacklist``);
        * leaving *opted out* lifts the blacklist entries our opt-outs made. Entries made
          elsewhere in Odoo are lifted only at the customer's own request (preference page,
          confirmation link: ``is_public_request``); otherwise the customer stays opted
          out and is left out of the result;
        * source ``blacklist`` (a change coming from the blacklist) never writes back to it.
        """
        if channel not in CONSENT_FIELDS:
            raise UserError(_("Unknown consent channel: %s", channel))
        if state not in dict(CONSENT_STATES):
            raise UserError(_("Unknown consent state: %s", state))
        fname = CONSENT_FIELDS[channel]
        partners = self.exists()
        if source == "double_opt_in":
            partners = partners.filtered(lambda p: p[fname] == "pending")
        public = bool(proof.get("is_public_request"))
        by_target = defaultdict(lambda: self.browse())
        for partner in partners:
            target = state
            if (state == "opted_in" and channel == "email" and source != "double_opt_in"
                    and partner[fname] != "opted_in"
                    and (partner.company_id or self.env.company).drip_double_opt_in):
                target = "pending"
            if partner[fname] != target:
                by_target[target] |= partner
        if not by_target:
            return self.browse()
        address_field = {"email": "email_normalized", "sms": "drip_phone_sanitized"}.get(channel)
        blacklist = {"email": "mail.blacklist", "sms": "phone.blacklist"}.get(channel)
        sync_blacklist = bool(blacklist) and source != "blacklist"
        if sync_blacklist:
            for target in ("opted_in", "unknown"):
                leaving = by_target[target].filtered(lambda p: p[fname] == "opted_out")
                addresses = set(leaving.mapped(address_field)) - {False}
                kept = self.env[blacklist]._drip_unblock(addresses, include_foreign=public)
                if kept:
                    refused = leaving.filtered(lambda p, kept=kept: p[address_field] in kept)
                    _logger.info(
                        "Consent of partners %s stays opted out on %s: their address is on "
                        "Odoo's blacklist, lifted only at their own request.", refused.ids,
                        channel,
                    )
                    by_target[target] -= refused
        now = fields.Datetime.now()
        user_id = False if public else self.env.uid
        rows = []
        changed = self.browse()
        for target, group in by_target.items():
            if not group:
                continue
            rows += [{
                "partner_id": partner.id,
                "channel": channel,
                "old_state": partner[fname],
                "new_state": target,
                "source": source,
                "user_id": user_id,
                "is_public_request": public,
                "ip_address": proof.get("ip_address"),
                "user_agent": proof.get("user_agent"),
                "proof": proof.get("proof"),
            } for partner in group]
            group.with_context(**{CONSENT_WRITE_KEY: True}).write(
                {fname: target, f"{fname}_date": now}
            )
            changed |= group
        self.env["drip.consent.event"]._log(rows)
        opted_out = by_target.get("opted_out", self.browse())
        if sync_blacklist and opted_out:
            addresses = set(opted_out.mapped(address_field)) - {False}
            self.env[blacklist]._drip_block(addresses)
            self._drip_sync_from_blacklist(channel, addresses, blocked=True)
        pending = by_target.get("pending", self.browse())
        if pending:
            pending._drip_send_double_opt_in()
        return changed

    def _drip_send_double_opt_in(self):
        """Queue the confirmation email of these customers (Odoo's mail queue sends it)."""
        template = self.env.ref(
            "drip_marketing.mail_template_drip_double_opt_in", raise_if_not_found=False
        )
        recipients = self.filtered("email_normalized")
        if template and recipients:
            template.sudo().send_mail_batch(recipients.ids)

    @api.model
    def _drip_sync_from_blacklist(self, channel, addresses, blocked):
        """Customers with these addresses follow a blacklist change made elsewhere."""
        addresses = list(set(addresses) - {False, None, ""})
        if not addresses:
            return self.browse()
        column = {"email": "email_normalized", "sms": "drip_phone_sanitized"}[channel]
        fname = CONSENT_FIELDS[channel]
        self.flush_model([column, fname])
        self.env.cr.execute(SQL(
            "SELECT id FROM res_partner WHERE %s = ANY(%s) AND %s",
            SQL.identifier(column), addresses,
            SQL("%s != 'opted_out'", SQL.identifier(fname)) if blocked
            else SQL("%s = 'opted_out'", SQL.identifier(fname)),
        ))
        partners = self.browse([row[0] for row in self.env.cr.fetchall()])
        return partners._drip_set_consent(
            channel, "opted_out" if blocked else "unknown", source="blacklist"
        )

    def _drip_sync_blacklisted(self):
        """These customers' addresses may be blacklisted already: show them opted out."""
        if not self:
            return
        self.flush_recordset(["email_normalized", "drip_phone_sanitized",
                              "drip_consent_email", "drip_consent_sms"])
        for channel, column, table, key in (
            ("email", "email_normalized", "mail_blacklist", "email"),
            ("sms", "drip_phone_sanitized", "phone_blacklist", "number"),
        ):
            self.env.cr.execute(SQL(
                """
                SELECT p.id FROM res_partner p
                 WHERE p.id = ANY(%(ids)s) AND %(consent)s != 'opted_out'
                   AND EXISTS (SELECT 1 FROM %(table)s bl
                                WHERE bl.%(key)s = p.%(column)s AND bl.active)
                """,
                ids=self.ids, consent=SQL.identifier("p", CONSENT_FIELDS[channel]),
                table=SQL.identifier(table), key=SQL.identifier(key),
                column=SQL.identifier(column),
            ))
            ids = [row[0] for row in self.env.cr.fetchall()]
            if ids:
                self.browse(ids)._drip_set_consent(channel, "opted_out", source="blacklist")

    def _drip_consent_filter(self, channel, company=None):
        """Who of these customers may receive marketing on ``channel`` right now.

        Returns ``(allowed, {partner_id: skip_reason})`` with the ``drip.message``
        skip reasons, in one query. Checked in this order: opted out or pending double
        opt-in → ``no_consent``; address on Odoo's blacklist → ``blacklisted``; no email /
        no valid phone → ``no_address``; consent *unknown* while the company (``company``,
        else the customer's, else the current one) requires double opt-in →
        ``no_consent``. Without double opt-in, *unknown* may receive marketing. Channels
        without consent (notes) allow everyone.
        """
        consent_channel = DELIVERY_CONSENT_CHANNEL.get(channel)
        if not consent_channel or not self:
            return self, {}
        fname = CONSENT_FIELDS[consent_channel]
        self.flush_recordset([fname, "email_normalized", "drip_phone_sanitized", "company_id"])
        self.env["res.company"].flush_model(["drip_double_opt_in"])
        self.env["mail.blacklist"].flush_model(["email", "active"])
        self.env["phone.blacklist"].flush_model(["number", "active"])
        if consent_channel == "email":
            address = SQL("p.email_normalized")
            blacklisted = SQL("EXISTS (SELECT 1 FROM mail_blacklist bl "
                              "WHERE bl.email = p.email_normalized AND bl.active)")
        elif consent_channel == "sms":
            address = SQL("p.drip_phone_sanitized")
            blacklisted = SQL("EXISTS (SELECT 1 FROM phone_blacklist bl "
                              "WHERE bl.number = p.drip_phone_sanitized AND bl.active)")
        else:  # the messaging gateway resolves its own recipient
            address, blacklisted = SQL("'-'"), SQL("FALSE")
        self.env.cr.execute(SQL(
            """
            SELECT p.id,
                   CASE WHEN p.%(consent)s IN ('opted_out', 'pending') THEN 'no_consent'
                        WHEN %(blacklisted)s THEN 'blacklisted'
                        WHEN %(address)s IS NULL THEN 'no_address'
                        WHEN p.%(consent)s = 'unknown' AND c.drip_double_opt_in
                        THEN 'no_consent'
                   END
              FROM res_partner p
              JOIN res_company c ON c.id = COALESCE(%(company)s, p.company_id, %(current)s)
             WHERE p.id = ANY(%(ids)s)
            """,
            consent=SQL.identifier(fname), blacklisted=blacklisted, address=address,
            company=company.id if company else None, current=self.env.company.id,
            ids=self.ids,
        ))
        reasons = {pid: reason for pid, reason in self.env.cr.fetchall() if reason}
        return self.filtered(lambda p: p.id not in reasons), reasons

    # ---------------------------------------------------------- public links
    @api.model
    def _drip_token_secret(self):
        return self.env["ir.config_parameter"].sudo().get_param("database.secret")

    def _drip_token(self, purpose, **payload):
        self.ensure_one()
        expires_at = int(time.time()) + TOKEN_DAYS[purpose] * 86400
        return tokens.sign(
            self._drip_token_secret(), dict(payload, p=self.id),
            expires_at=expires_at, purpose=purpose,
        )

    @api.model
    def _drip_from_token(self, token, purpose):
        """``(partner, payload)`` of a valid token, or raise ``tokens.InvalidToken``.

        A token naming a customer that no longer exists is refused like a forged one.
        """
        payload = tokens.verify(self._drip_token_secret(), token, now=time.time(),
                                purpose=purpose)
        partner_id = payload.get("p")
        if not isinstance(partner_id, int) or isinstance(partner_id, bool):
            raise tokens.InvalidToken("malformed")
        partner = self.sudo().browse(partner_id).exists()
        if not partner:
            raise tokens.InvalidToken("unknown")
        return partner, payload

    def _drip_unsubscribe_url(self, message=None):
        """The signed one-click unsubscribe link (also the ``List-Unsubscribe`` URL).

        With ``message``, the link unsubscribes from that message's channel and records
        the unsubscription on the message; otherwise from email.
        """
        self.ensure_one()
        payload = {"c": DELIVERY_CONSENT_CHANNEL.get(message.channel, "email")
                   if message else "email"}
        if message:
            payload["m"] = message.id
        token = self._drip_token("unsubscribe", **payload)
        return f"{self.get_base_url()}/drip/unsubscribe/{token}"

    def _drip_preferences_url(self):
        self.ensure_one()
        return f"{self.get_base_url()}/drip/preferences/{self._drip_token('preferences')}"

    def _drip_confirm_url(self):
        self.ensure_one()
        return f"{self.get_base_url()}/drip/confirm/{self._drip_token('confirm', c='email')}"

    # -------------------------------------------------------------- privacy
    def _drip_export_data(self):
        """Plain data of everything marketing knows about this customer."""
        self.ensure_one()

        def rows(records, names):
            return [{name: _plain(record[name]) for name in names} for record in records]

        events = self.env["drip.event"].search([("partner_id", "=", self.id)])
        messages = self.env["drip.message"].search([("partner_id", "=", self.id)])
        return {
            "exported_at": fields.Datetime.now(),
            "customer": {
                "id": self.id, "name": self.name, "email": self.email, "phone": self.phone,
                "mobile": self.mobile, "lang": self.lang, "tz": self.tz,
                "birthday": self.drip_birthday, "tags": self.category_id.mapped("name"),
            },
            "consent": {channel: {"state": self[fname], "changed": self[f"{fname}_date"]}
                        for channel, fname in CONSENT_FIELDS.items()},
            "consent_history": rows(self.drip_consent_event_ids, [
                "create_date", "channel", "old_state", "new_state", "source",
                "is_public_request", "ip_address", "user_agent", "proof"]),
            "rfm": {name: _plain(self[name]) for name in (
                "drip_rfm_r", "drip_rfm_f", "drip_rfm_m", "drip_rfm_score", "drip_rfm_segment",
                "drip_last_order_date", "drip_order_count", "drip_revenue",
                "drip_rfm_computed_at")},
            "predictions": {name: _plain(self[name]) for name in (
                "drip_engagement_score", "drip_p_alive", "drip_expected_orders_90d",
                "drip_next_order_date", "drip_churn_risk", "drip_best_hour_of_week")},
            "identities": rows(self.drip_identity_ids, [
                "kind", "value", "first_seen_at", "last_seen_at"]),
            "journeys": [dict(journey=e.journey_id.name, entered_at=_plain(e.entered_at),
                              state=e.state, exit_reason=e.exit_reason or None,
                              exited_at=_plain(e.exited_at))
                         for e in self.drip_enrollment_ids],
            "messages": [dict(journey=m.journey_id.name, step=m.step_id.name, channel=m.channel,
                              state=m.state, recipient=m.recipient, subject=m.subject,
                              sent_at=_plain(m.sent_at), opened_at=_plain(m.opened_at),
                              clicked_at=_plain(m.clicked_at))
                         for m in messages],
            "events": [dict(name=e.name, type=e.event_type_id.code or None,
                            occurred_at=_plain(e.occurred_at), payload=e.payload,
                            context=e.context_data)
                       for e in events],
        }

    def _drip_erase_marketing_data(self):
        """Anonymise what marketing holds on these customers, keep aggregate counts.

        * every channel is opted out (source ``erasure``): the address stays on Odoo's
          blacklist as a suppression entry, so the customer is never mailed again;
        * consent ledger rows keep channel, states, source and date (proof of the opt-out
          history) but lose IP address, user agent and proof text;
        * behavior events, identities and identity conflicts are deleted; messages keep
          journey, step, state and dates (the counts of reports) but lose recipient,
          subject, errors and Message-ID; running journeys are left with reason "erased";
        * birthday and predictions are cleared; marketing exports stored as attachments
          are deleted. Orders and the RFM derived from them stay: they are the store's
          accounting records, not marketing data.
        """
        for channel in CONSENT_FIELDS:
            self._drip_set_consent(channel, "opted_out", source="erasure")
        self.env["drip.enrollment"].search(
            [("partner_id", "in", self.ids), ("state", "in", ("active", "paused"))]
        )._exit("erased")
        self.env["drip.consent.event"].search([("partner_id", "in", self.ids)]).with_context(
            **{ERASURE_CONTEXT_KEY: True}
        ).write({"ip_address": False, "user_agent": False, "proof": False})
        self.env["drip.message"].search([("partner_id", "in", self.ids)]).write({
            "recipient": False, "subject": False, "error": False, "reason": False,
            "message_id_header": False,
        })
        self.env["drip.event"].search([("partner_id", "in", self.ids)]).unlink()
        self.env["drip.identity.conflict"].search(
            ["|", ("partner_id", "in", self.ids), ("other_partner_id", "in", self.ids)]
        ).unlink()
        self.env["drip.identity"].search([("partner_id", "in", self.ids)]).unlink()
        self.env["ir.attachment"].search([
            ("res_model", "=", self._name), ("res_id", "in", self.ids),
            ("description", "=", "drip_marketing_export"),
        ]).unlink()
        self.write({
            "drip_birthday": False, "drip_engagement_score": 0, "drip_engagement_at": False,
            "drip_p_alive": 0, "drip_expected_orders_90d": 0, "drip_next_order_date": False,
            "drip_churn_risk": False, "drip_best_hour_of_week": -1,
        })

    # ------------------------------------------------------------------ RFM
    @api.model
    def _drip_recompute_rfm(self, now=None):
        """Score every customer R, F, M (1–5) and segment them — one SQL statement.

        * Orders: confirmed (``state = 'sale'``) with ``date_order`` in the company's RFM
          window, counted for the commercial entity of the ordering contact. Cancelled
          orders and quotations never count; refunds are credit notes, not orders.
        * Money in company currency: ``amount_untaxed / currency_rate``. Odoo 18 stores
          on each order the rate from the company currency to the order currency at the
          order date (``sale.order.currency_rate``, as ``sale.report`` divides by it), so
          the division gives company currency at the order's own rate; a missing rate
          counts as 1. Untaxed, because taxes are not the store's revenue. Rounded to the
          company currency, so equal spend ties.
        * Multi-company: each company scores with its own window, against its own
          customers (percentiles partitioned by company). A customer of one company only
          counts that company's orders; a customer shared by all companies is scored
          where the last order was placed.
        * Scores mirror ``engine.rfm.score_partners`` (``score_sql``), segments
          ``SEGMENT_RULES_SQL``. Customers without an order in the window get NULL scores
          (stale ones are cleared).
        * Only rows whose values changed are written; each segment change (except on
          the very first run, when every customer would "change" at once) adds an
          internal ``rfm_segment_changed`` event with the old and new segment.

        Returns the number of customers whose RFM changed.
        """
        now = now or fields.Datetime.now()
        event_type = self.env.ref("drip_marketing.event_type_rfm_segment_changed")
        params = self.env["ir.config_parameter"].sudo()
        first_run = not params.get_param("drip_marketing.rfm_last_run")
        self.env.flush_all()
        cr = self.env.cr
        cr.execute("SELECT current_setting('work_mem'), current_setting('jit')")
        work_mem, jit = cr.fetchone()
        # Session settings for this transaction only: a hash aggregate over millions of
        # orders stays in memory, and JIT compilation costs more than it saves here.
        cr.execute("SELECT set_config('work_mem', %s, true), set_config('jit', 'off', true)",
                   [RFM_WORK_MEM])
        score = {
            "r": rfm.score_sql("recency", higher_is_better=False, partition_by="company_id"),
            "f": rfm.score_sql("frequency", partition_by="company_id"),
            "m": rfm.score_sql("monetary", partition_by="company_id"),
        }
        cr.execute(SQL(
            """
            WITH company AS (
                SELECT c.id AS company_id,
                       %(now)s - make_interval(days => c.drip_rfm_window_days) AS since,
                       COALESCE(cur.decimal_places, 2) AS decimals
                  FROM res_company c
                  LEFT JOIN res_currency cur ON cur.id = c.currency_id
            ), by_contact AS (
                SELECT o.partner_id, o.company_id, c.decimals,
                       max(o.date_order) AS last_order, count(*) AS frequency,
                       sum(o.amount_untaxed / CASE WHEN COALESCE(o.currency_rate, 0) = 0
                                                   THEN 1 ELSE o.currency_rate END) AS amount
                  FROM sale_order o
                  JOIN company c ON c.company_id = o.company_id
                 WHERE o.state = 'sale' AND o.date_order >= c.since
                   AND o.date_order <= %(now)s
                 GROUP BY o.partner_id, o.company_id, c.decimals
            ), by_customer AS (
                -- A contact's company follows its commercial entity's (Odoo keeps them
                -- in step), so the contact's row says which companies may score it.
                SELECT p.commercial_partner_id AS partner_id, a.company_id,
                       max(a.last_order) AS last_order, sum(a.frequency) AS frequency,
                       round(sum(a.amount), max(a.decimals)) AS monetary
                  FROM by_contact a
                  JOIN res_partner p ON p.id = a.partner_id
                 WHERE p.company_id IS NULL OR p.company_id = a.company_id
                 GROUP BY p.commercial_partner_id, a.company_id
            ), chosen AS (
                SELECT DISTINCT ON (b.partner_id) b.*,
                       (%(today)s::date - b.last_order::date) AS recency
                  FROM by_customer b
                 ORDER BY b.partner_id, b.last_order DESC, b.monetary DESC, b.company_id
            ), scored AS (
                SELECT partner_id, company_id, last_order, frequency, monetary,
                       %(r)s AS r, %(f)s AS f, %(m)s AS m
                  FROM chosen
            ), final AS (
                SELECT s.*, r::text || f::text || m::text AS score, %(segment)s AS segment
                  FROM scored s
            ), changes AS (
                SELECT p.id, p.drip_rfm_segment AS old_segment,
                       COALESCE(s.company_id, p.company_id, %(default_company)s) AS company_id,
                       s.r, s.f, s.m, s.score, s.segment, s.last_order, s.frequency,
                       s.monetary
                  FROM res_partner p
                  LEFT JOIN final s ON s.partner_id = p.id
                 WHERE (s.partner_id IS NOT NULL OR p.drip_rfm_score IS NOT NULL)
                   AND (p.drip_rfm_r, p.drip_rfm_f, p.drip_rfm_m, p.drip_rfm_score,
                        p.drip_rfm_segment, p.drip_last_order_date, p.drip_order_count,
                        p.drip_revenue)
                       IS DISTINCT FROM
                       (s.r, s.f, s.m, s.score, s.segment, s.last_order, s.frequency::int,
                        s.monetary)
            ), updated AS (
                UPDATE res_partner p
                   SET drip_rfm_r = c.r, drip_rfm_f = c.f, drip_rfm_m = c.m,
                       drip_rfm_score = c.score, drip_rfm_segment = c.segment,
                       drip_last_order_date = c.last_order, drip_order_count = c.frequency,
                       drip_revenue = c.monetary, drip_rfm_computed_at = %(now)s
                  FROM changes c
                 WHERE p.id = c.id
                RETURNING p.id
            ), events AS (
                INSERT INTO drip_event (name, event_type_id, partner_id, company_id,
                                        call_type, occurred_at, received_at, payload,
                                        processed, create_uid, create_date, write_uid,
                                        write_date)
                SELECT %(event_name)s, %(event_type)s, c.id, c.company_id, 'internal',
                       %(now)s, %(now)s,
                       jsonb_build_object('old', c.old_segment, 'new', c.segment,
                                          'score', c.score),
                       TRUE, %(uid)s, %(now)s, %(uid)s, %(now)s
                  FROM changes c
                 WHERE c.old_segment IS DISTINCT FROM c.segment AND NOT %(first_run)s
                RETURNING 1
            )
            SELECT (SELECT count(*) FROM updated), (SELECT count(*) FROM events)
            """,
            now=now, today=now.date(), default_company=self.env.company.id,
            r=SQL(score["r"]), f=SQL(score["f"]), m=SQL(score["m"]),
            segment=SQL(rfm.SEGMENT_RULES_SQL), event_name="RFM segment changed",
            event_type=event_type.id, uid=self.env.uid, first_run=first_run,
        ))
        changed, events = cr.fetchone()
        cr.execute("SELECT set_config('work_mem', %s, true), set_config('jit', %s, true)",
                   [work_mem, jit])
        params.set_param("drip_marketing.rfm_last_run", fields.Datetime.to_string(now))
        self.invalidate_model([
            "drip_rfm_r", "drip_rfm_f", "drip_rfm_m", "drip_rfm_score", "drip_rfm_segment",
            "drip_last_order_date", "drip_order_count", "drip_revenue",
            "drip_rfm_computed_at", "drip_rfm_recency_days",
        ])
        self.env["drip.event"].invalidate_model()
        _logger.info("RFM recomputed: %s customers changed, %s segment events", changed, events)
        return changed

    @api.model
    def _cron_recompute_rfm(self):
        """Nightly RFM: one set-based statement for all companies (bounded by design)."""
        changed = self._drip_recompute_rfm()
        self.env["ir.cron"]._notify_progress(done=changed, remaining=0)


def _plain(value):
    """A JSON-friendly form of a field value (records by display name, dates as text)."""
    if isinstance(value, models.BaseModel):
        return value.mapped("display_name")
    if isinstance(value, (datetime, timedelta)) or hasattr(value, "isoformat"):
        return value.isoformat()
    return value if value is not False else None
