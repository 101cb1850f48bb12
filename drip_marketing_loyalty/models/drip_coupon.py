"""Personal coupons handed out by journey steps: one per participant and step.

A coupon is issued when its message is rendered for delivery (``drip.offer._coupons_for``
from ``drip.delivery``), i.e. only for a message of the ledger that is live (scheduled,
queued or being sent) and passed the send-time checks (consent, caps, quiet hours, goal):
never without a message that carries it. The message row is locked, then the coupon is
looked up by message; ``UNIQUE(message_id)`` and ``UNIQUE(enrollment_id, step_id)`` make a
second issue impossible, so a retried, re-queued or re-rendered message shows the same
code (the message's idempotency key is ``enrollment:step``).

The code is an Odoo ``loyalty.card`` of the step's *coupons* program, reserved for the
customer, with exactly the points of one reward of the program (its cheapest one): used
once, it has no points left — single use — and Odoo's own cart (``_try_apply_code``) and
checkout apply and consume it. Redemption is read from the confirmed order's reward lines
(``sale.order.line.coupon_id``, the same lines from which ``loyalty.history`` records the
points used).
"""

from datetime import timedelta

import pytz

from odoo import _, api, fields, models

LIVE_STATES = ("scheduled", "queued", "sending")


class DripCoupon(models.Model):
    _name = "drip.coupon"
    _description = "Drip Marketing Personal Coupon"
    _order = "issued_at desc, id desc"
    _rec_name = "code"

    message_id = fields.Many2one("drip.message", required=True, ondelete="cascade",
                                 readonly=True, index=True)
    enrollment_id = fields.Many2one("drip.enrollment", string="Participant", required=True,
                                    ondelete="cascade", readonly=True, index=True)
    step_id = fields.Many2one("drip.step", required=True, ondelete="cascade", readonly=True)
    journey_id = fields.Many2one(related="enrollment_id.journey_id", store=True, index=True)
    partner_id = fields.Many2one("res.partner", string="Customer", required=True,
                                 ondelete="cascade", readonly=True, index=True)
    company_id = fields.Many2one("res.company", required=True, readonly=True, index=True)
    program_id = fields.Many2one("loyalty.program", required=True, ondelete="restrict",
                                 readonly=True)
    card_id = fields.Many2one("loyalty.card", string="Loyalty coupon", required=True,
                              ondelete="cascade", readonly=True)
    code = fields.Char(related="card_id.code", readonly=True)
    expires_on = fields.Date(string="Valid until", readonly=True)
    issued_at = fields.Datetime(readonly=True, required=True)
    redeemed_at = fields.Datetime(readonly=True)
    order_id = fields.Many2one("sale.order", string="Redeemed on", readonly=True,
                               ondelete="set null")
    currency_id = fields.Many2one(related="company_id.currency_id")
    discount = fields.Monetary(
        currency_field="currency_id", readonly=True,
        help="Discount given by the coupon on the redeeming order, untaxed, in the "
        "company's currency (like the attributed revenue).",
    )
    state = fields.Selection(
        [("issued", "Issued"), ("redeemed", "Redeemed"), ("expired", "Expired")],
        compute="_compute_state",
        search="_search_state",
    )

    _sql_constraints = [
        ("message_unique", "UNIQUE(message_id)", "A message carries at most one coupon."),
        ("participant_step_unique", "UNIQUE(enrollment_id, step_id)",
         "A participant gets one coupon per step."),
        ("card_unique", "UNIQUE(card_id)", "A coupon code belongs to one message."),
    ]

    @api.depends("redeemed_at", "expires_on")
    def _compute_state(self):
        today = fields.Date.context_today(self)
        for coupon in self:
            if coupon.redeemed_at:
                coupon.state = "redeemed"
            elif coupon.expires_on and coupon.expires_on < today:
                coupon.state = "expired"
            else:
                coupon.state = "issued"

    def _search_state(self, operator, value):
        if operator not in ("=", "!=", "in", "not in"):
            raise NotImplementedError(_("Unsupported search on the coupon state."))
        values = {value} if isinstance(value, str) else set(value)
        today = fields.Date.context_today(self)
        domains = {
            "redeemed": [("redeemed_at", "!=", False)],
            "expired": [("redeemed_at", "=", False), ("expires_on", "<", today)],
            "issued": [("redeemed_at", "=", False), "|", ("expires_on", "=", False),
                       ("expires_on", ">=", today)],
        }
        domain = []
        for state in values:
            domain = ["|"] + domain + domains[state] if domain else domains[state]
        if operator in ("!=", "not in"):
            domain = ["!"] + domain if domain else []
        return domain or [("id", "=", 0)]

    # ------------------------------------------------------------------ issuing
    @api.model
    def _issue(self, messages):
        """The coupon of each of these messages whose step hands one out, issued now if
        it does not exist yet: ``{message_id: drip.coupon}``. Idempotent."""
        messages = messages.filtered(
            lambda m: m.step_type == "send" and m.state in LIVE_STATES
            and m.step_id.coupon_program_id
        )
        if not messages:
            return {}
        # Serialise on the message rows (the delivery already holds these locks): a
        # concurrent issue for the same message waits and then finds the coupon below.
        self.env["drip.message"].flush_model()
        self.env.cr.execute(
            "SELECT id FROM drip_message WHERE id = ANY(%s) ORDER BY id FOR UPDATE",
            [messages.ids],
        )
        existing = self.search([
            "|", ("message_id", "in", messages.ids),
            ("enrollment_id", "in", messages.enrollment_id.ids),
        ])
        by_key = {(c.enrollment_id.id, c.step_id.id): c for c in existing}
        result = {}
        missing = self.env["drip.message"]
        for message in messages:
            coupon = by_key.get((message.enrollment_id.id, message.step_id.id))
            if coupon:
                result[message.id] = coupon
            else:
                missing |= message
        if missing:
            result.update(self._create_for(missing))
        return result

    @api.model
    def _create_for(self, messages):
        now = fields.Datetime.now()
        card_values, coupon_values = [], []
        for message in messages:
            step, partner = message.step_id, message.partner_id
            program = step.coupon_program_id
            company = message.company_id or message.journey_id.company_id
            expires_on = self._local_date(
                partner, company, now + timedelta(days=step.coupon_validity_days))
            card_values.append({
                "program_id": program.id,
                "partner_id": partner.id,
                "points": self._single_use_points(program),
                "expiration_date": expires_on,
            })
            coupon_values.append({
                "message_id": message.id,
                "enrollment_id": message.enrollment_id.id,
                "step_id": step.id,
                "partner_id": partner.id,
                "company_id": company.id,
                "program_id": program.id,
                "expires_on": expires_on,
                "issued_at": now,
            })
        # The code travels in our message: no mail from the loyalty app itself.
        cards = self.env["loyalty.card"].sudo().with_context(
            loyalty_no_mail=True, tracking_disable=True, mail_create_nolog=True,
        ).create(card_values)
        history = []
        for card, message in zip(cards, messages):
            history.append({
                "card_id": card.id,
                "issued": card.points,
                "description": _("Drip Marketing: %(journey)s / %(step)s",
                                 journey=message.journey_id.name, step=message.step_id.name),
            })
        self.env["loyalty.history"].sudo().create(history)
        for values, card in zip(coupon_values, cards):
            values["card_id"] = card.id
        coupons = self.create(coupon_values)
        return {coupon.message_id.id: coupon for coupon in coupons}

    @api.model
    def _single_use_points(self, program):
        """Points for exactly one use: the cost of the program's cheapest reward."""
        costs = [cost for cost in program.reward_ids.mapped("required_points") if cost > 0]
        return min(costs) if costs else 1.0

    @api.model
    def _local_date(self, partner, company, moment):
        """The calendar date of ``moment`` (naive UTC) in the customer's time zone."""
        tz_name = partner.tz or company.drip_default_tz or "UTC"
        try:
            tz = pytz.timezone(tz_name)
        except pytz.UnknownTimeZoneError:
            tz = pytz.utc
        return pytz.utc.localize(moment).astimezone(tz).date()

    def _as_context(self):
        self.ensure_one()
        return {"code": self.code, "expires_at": self.expires_on}

    # --------------------------------------------------------------- redemption
    @api.model
    def _record_redemptions(self, orders):
        """Coupons used on these confirmed orders: redeemed, and a conversion of their
        message and participant with the discount next to the revenue. An order nobody
        else got is attributed to the coupon's message (the strongest evidence there is);
        ``sale.order._drip_attribute`` then leaves it alone."""
        orders = orders.filtered(lambda o: o.state == "sale")
        reward_lines = orders.order_line.filtered(lambda line: line.coupon_id)
        if not reward_lines:
            return self.browse()
        coupons = self.search([("card_id", "in", reward_lines.coupon_id.ids),
                               ("redeemed_at", "=", False)])
        for coupon in coupons:
            lines = reward_lines.filtered(lambda line, c=coupon: line.coupon_id == c.card_id)
            order = lines[0].order_id
            rate = order.currency_rate or 1.0
            discount = -sum(lines.mapped("price_subtotal")) / rate
            revenue = order.amount_untaxed / rate
            coupon.write({"redeemed_at": order.date_order, "order_id": order.id,
                          "discount": discount})
            message, enrollment = coupon.message_id, coupon.enrollment_id
            attribute = not order.drip_attributed_message_id
            if attribute:
                order.drip_attributed_message_id = message
            for record in (message, enrollment):
                values = {"coupon_discount": record.coupon_discount + discount}
                if not record.converted_at:
                    values.update(converted_at=order.date_order, conversion_order_id=order.id)
                if attribute:
                    values["revenue"] = record.revenue + revenue
                record.write(values)
        return coupons
