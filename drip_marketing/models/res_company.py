from odoo import _, api, fields, models
from odoo.exceptions import ValidationError

from odoo.addons.base.models.res_partner import _tz_get

from ..engine.schedule import QuietHours


class ResCompany(models.Model):
    _inherit = "res.company"

    # Per-company because quiet hours, caps and windows are store policy, and one Odoo
    # database often runs several stores.
    drip_quiet_hours_start = fields.Float(
        string="Quiet hours from",
        default=21.0,
        help="Local time (customer's time zone) from which no marketing message is sent.",
    )
    drip_quiet_hours_end = fields.Float(
        string="Quiet hours until",
        default=8.0,
        help="Local time at which sending resumes. Equal to the start: no quiet hours.",
    )
    drip_default_tz = fields.Selection(
        _tz_get,
        string="Default customer time zone",
        default="UTC",
        help="Used for customers without a time zone of their own.",
    )
    drip_cap_per_day = fields.Integer(
        string="Messages per customer per 24 h",
        default=1,
        help="Frequency cap over all journeys together; 0 disables this cap. "
        "Transactional journeys (e.g. cart reminders) are exempt.",
    )
    drip_cap_per_week = fields.Integer(
        string="Messages per customer per 7 days",
        default=3,
        help="Frequency cap over all journeys together; 0 disables this cap.",
    )
    drip_cart_abandon_delay = fields.Float(
        string="Cart abandoned after (hours)",
        default=1.0,
        help="A cart is abandoned when it has not changed for this long.",
    )
    drip_rfm_window_days = fields.Integer(
        string="RFM window (days)",
        default=365,
        help="Only confirmed orders of this many last days count for RFM scores.",
    )
    drip_attribution_window_days = fields.Integer(
        string="Attribution window (days)",
        default=5,
        help="An order confirmed within this many days after an open or click of a "
        "message is attributed to that message (last touch).",
    )
    drip_double_opt_in = fields.Boolean(
        string="Double opt-in for email",
        help="New email consents stay pending until the customer confirms by email.",
    )
    drip_timeline_own_customers_only = fields.Boolean(
        string="Sales reps see only their own customers' timelines",
    )

    _sql_constraints = [
        (
            "drip_caps_positive",
            "CHECK(drip_cap_per_day >= 0 AND drip_cap_per_week >= 0)",
            "Frequency caps cannot be negative.",
        ),
        (
            "drip_windows_positive",
            "CHECK(drip_rfm_window_days > 0 AND drip_attribution_window_days >= 0 "
            "AND drip_cart_abandon_delay > 0)",
            "The RFM window and the cart delay must be positive, the attribution window "
            "cannot be negative.",
        ),
    ]

    @api.constrains("drip_quiet_hours_start", "drip_quiet_hours_end")
    def _check_drip_quiet_hours(self):
        for company in self:
            for value in (company.drip_quiet_hours_start, company.drip_quiet_hours_end):
                if not 0 <= value <= 24:
                    raise ValidationError(
                        _("Quiet hours must be times of day between 00:00 and 24:00.")
                    )
            try:
                company._drip_quiet_hours()
            except ValueError as error:
                raise ValidationError(
                    _("These quiet hours would never let a message out: %s", error)
                ) from error

    def _drip_quiet_hours(self):
        self.ensure_one()
        return QuietHours(self.drip_quiet_hours_start, self.drip_quiet_hours_end)

    # ------------------------------------------------------------------ predictions
    # Engagement score, buy-till-you-die churn risk and best send time: settings read by
    # drip.prediction (models/drip_prediction.py), and what its refreshes learned.
    drip_score_half_life_days = fields.Float(
        string="Score half-life (days)",
        default=30.0,
        help="A fact's points (open, click, order…) count half as much after this many days.",
    )
    drip_handoff_threshold = fields.Float(
        string="Hand-off threshold",
        default=50.0,
        help="When a customer's engagement score reaches this, their salesperson gets an "
        "activity (an opportunity when CRM is installed) listing what raised the score. "
        "0 disables the hand-off.",
    )
    drip_churn_horizon_days = fields.Integer(
        string="Churn horizon (days)",
        default=180,
        help="Churn risk is the chance that a customer does not order within this many "
        "days, from the buy-till-you-die model.",
    )
    drip_churn_at_risk_below = fields.Float(
        string="At risk below",
        default=0.5,
        help="A customer is at risk when their probability to order within the churn "
        "horizon falls below this.",
    )
    drip_churn_lapsed_below = fields.Float(
        string="Lapsed below",
        default=0.2,
        help="A customer is lapsed when their probability to order within the churn "
        "horizon falls below this.",
    )
    drip_btyd_params = fields.Json(
        string="Buy-till-you-die model", readonly=True, copy=False,
        help="BG/NBD parameters fitted on the company's orders by the last refresh.",
    )
    drip_best_time_pattern = fields.Json(
        string="Store engagement pattern", readonly=True, copy=False,
        help="Share of the store's opens, clicks and orders per local hour of the week.",
    )

    @api.constrains(
        "drip_score_half_life_days", "drip_handoff_threshold", "drip_churn_horizon_days",
        "drip_churn_at_risk_below", "drip_churn_lapsed_below",
    )
    def _check_drip_prediction_settings(self):
        for company in self:
            if company.drip_score_half_life_days <= 0:
                raise ValidationError(_("The score half-life must be a positive number of days."))
            if company.drip_handoff_threshold < 0:
                raise ValidationError(_("The hand-off threshold cannot be negative."))
            if company.drip_churn_horizon_days <= 0:
                raise ValidationError(_("The churn horizon must be a positive number of days."))
            if not (
                0 <= company.drip_churn_lapsed_below <= company.drip_churn_at_risk_below <= 1
            ):
                raise ValidationError(
                    _("Churn thresholds are probabilities between 0 and 1, and 'lapsed below' "
                      "cannot exceed 'at risk below'.")
                )
