from collections import defaultdict

from odoo import _, api, fields, models
from odoo.exceptions import UserError

from .drip_message import column_values, select_where

EXIT_REASONS = [
    ("completed", "All steps done"),
    ("goal_reached", "Goal reached"),
    ("cart_changed", "Cart changed"),
    ("cart_emptied", "Cart emptied"),
    ("unsubscribed", "Unsubscribed"),
    ("manual", "Removed by a user"),
    ("journey_stopped", "Journey stopped"),
    ("exit_step", "Exit step"),
    ("erased", "Personal data erased"),
    ("merged", "Customers merged"),
]


class DripEnrollment(models.Model):
    _name = "drip.enrollment"
    _description = "Drip Marketing Journey Participant"
    _order = "entered_at desc, id desc"
    _rec_name = "partner_id"

    journey_id = fields.Many2one(
        "drip.journey", required=True, ondelete="cascade", index=True
    )
    partner_id = fields.Many2one(
        "res.partner", string="Customer", required=True, ondelete="cascade", index=True
    )
    company_id = fields.Many2one(related="journey_id.company_id", store=True, index=True)
    source_ref = fields.Char(
        required=True,
        help="What re-entry is counted on, as 'model,id': the record that made the "
        "customer enter (e.g. the cart) with the policy 'once per source record', the "
        "customer otherwise.",
    )
    trigger_ref = fields.Char(
        string="Triggered by",
        readonly=True,
        help="The record that made the customer enter, as 'model,id' (a cart, an order, "
        "a product view…), whatever the re-entry policy.",
    )
    order_id = fields.Many2one("sale.order", string="Order / cart", index="btree_not_null")
    cycle = fields.Integer(
        default=0, help="How many times this customer re-entered for the same source."
    )
    state = fields.Selection(
        [
            ("active", "In progress"),
            ("paused", "Paused"),
            ("completed", "Completed"),
            ("exited", "Exited"),
        ],
        default="active",
        required=True,
        index=True,
    )
    exit_reason = fields.Selection(EXIT_REASONS)
    entered_at = fields.Datetime(default=fields.Datetime.now, required=True)
    exited_at = fields.Datetime()
    is_holdout = fields.Boolean(
        string="Holdout", help="In the control group: receives no message of this journey."
    )
    converted_at = fields.Datetime()
    conversion_order_id = fields.Many2one("sale.order", string="Converting order")
    currency_id = fields.Many2one(related="company_id.currency_id")
    revenue = fields.Monetary(currency_field="currency_id")
    message_ids = fields.One2many("drip.message", "enrollment_id", string="Messages")

    _sql_constraints = [
        (
            "enrollment_unique",
            "UNIQUE(journey_id, partner_id, source_ref, cycle)",
            "This customer is already enrolled in this journey for this record.",
        ),
        ("cycle_positive", "CHECK(cycle >= 0)", "The re-entry cycle cannot be negative."),
    ]

    @api.model_create_multi
    def create(self, vals_list):
        for vals in vals_list:
            if not vals.get("source_ref") and vals.get("partner_id"):
                vals["source_ref"] = (
                    f"sale.order,{vals['order_id']}"
                    if vals.get("order_id")
                    else f"res.partner,{vals['partner_id']}"
                )
        return super().create(vals_list)

    def action_pause(self):
        if self.filtered(lambda e: e.state != "active"):
            raise UserError(_("Only participants in progress can be paused."))
        self.write({"state": "paused"})
        return True

    def action_resume(self):
        if self.filtered(lambda e: e.state != "paused"):
            raise UserError(_("Only paused participants can be resumed."))
        self.write({"state": "active"})
        return True

    def action_exit(self):
        self._exit("manual")
        return True

    def _exit(self, reason):
        """Leave the journey and cancel what was still pending, with the reason."""
        running = self.filtered(lambda e: e.state in ("active", "paused"))
        if not running:
            return
        running.write(
            {"state": "exited", "exit_reason": reason, "exited_at": fields.Datetime.now()}
        )
        label = dict(EXIT_REASONS)[reason]
        self.env["drip.message"].search(
            [("enrollment_id", "in", running.ids), ("state", "=", "scheduled")]
        )._cancel(_("Participant left the journey: %s", label))

    def _goal_reached(self, now=None):
        """Those of these running participants whose journey's goal is met (set-based)."""
        running = select_where(self, "state", ("active", "paused").__contains__)
        reached = self.browse()
        by_journey = defaultdict(list)
        for enrollment_id, journey_id in zip(
                running._ids, column_values(running, "journey_id"), strict=True):
            by_journey[journey_id].append(enrollment_id)
        for journey_id, ids in by_journey.items():
            journey = self.env["drip.journey"].browse(journey_id)
            enrollments = running.browse(ids).with_prefetch(running._prefetch_ids)
            if journey.goal_type == "order":
                reached |= enrollments._ordered_since_entry()
            elif journey.goal_type == "domain":
                goal = journey._parse_partner_domain(journey.goal_domain, _("Goal filter"))
                matching = enrollments.partner_id.with_context(active_test=False).filtered_domain(
                    goal
                )
                reached |= enrollments.filtered(lambda e, ok=matching: e.partner_id in ok)
        return reached

    def _ordered_since_entry(self):
        """Entered for a cart: that cart was confirmed. Otherwise (including entries for
        an order already confirmed: post-purchase, win-back, replenishment): any other
        order confirmed since entering."""
        self.env["sale.order"].flush_model(["partner_id", "state", "date_order", "drip_is_cart"])
        self.flush_model()
        self.env.cr.execute(
            """
            SELECT e.id FROM drip_enrollment e
              LEFT JOIN sale_order cart ON cart.id = e.order_id AND cart.drip_is_cart
             WHERE e.id = ANY(%s) AND EXISTS (
                   SELECT 1 FROM sale_order o
                    WHERE o.state = 'sale'
                      AND CASE WHEN cart.id IS NOT NULL THEN o.id = cart.id
                               ELSE o.partner_id = e.partner_id AND o.date_order >= e.entered_at
                                    AND o.id IS DISTINCT FROM e.order_id
                          END)
            """,
            [self.ids],
        )
        return self.browse([row[0] for row in self.env.cr.fetchall()])

    def _complete_if_done(self):
        """Participants with nothing left to run have completed the journey."""
        active = select_where(self, "state", lambda state: state == "active")
        if not active:
            return
        self.env["drip.message"].flush_model(["state", "enrollment_id"])
        self.env.cr.execute(
            """
            SELECT e.id FROM drip_enrollment e
             WHERE e.id = ANY(%s) AND NOT EXISTS (
                   SELECT 1 FROM drip_message m
                    WHERE m.enrollment_id = e.id
                      AND m.state IN ('scheduled', 'queued', 'sending'))
            """,
            [active.ids],
        )
        done = self.browse([row[0] for row in self.env.cr.fetchall()])
        done.write({"state": "completed", "exit_reason": "completed",
                    "exited_at": fields.Datetime.now()})
