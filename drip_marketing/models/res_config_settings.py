from odoo import _, api, fields, models
from odoo.exceptions import UserError


class ResConfigSettings(models.TransientModel):
    _inherit = "res.config.settings"

    drip_redis_url = fields.Char(
        string="Redis URL",
        config_parameter="drip_marketing.redis_url",
        help="e.g. redis://127.0.0.1:6379/0. Empty: messages are delivered inline by the "
        "scheduled action, without workers.",
    )
    drip_queue_transactional = fields.Char(
        string="Transactional queue",
        config_parameter="drip_marketing.queue_transactional",
        default="drip_transactional",
        help="RQ queue for time-critical messages such as cart reminders.",
    )
    drip_queue_bulk = fields.Char(
        string="Bulk queue",
        config_parameter="drip_marketing.queue_bulk",
        default="drip_bulk",
        help="RQ queue for campaign-like sends, so bulk never delays transactional.",
    )
    drip_quiet_hours_start = fields.Float(
        related="company_id.drip_quiet_hours_start", readonly=False
    )
    drip_quiet_hours_end = fields.Float(related="company_id.drip_quiet_hours_end", readonly=False)
    drip_default_tz = fields.Selection(related="company_id.drip_default_tz", readonly=False)
    drip_cap_per_day = fields.Integer(related="company_id.drip_cap_per_day", readonly=False)
    drip_cap_per_week = fields.Integer(related="company_id.drip_cap_per_week", readonly=False)
    drip_cart_abandon_delay = fields.Float(
        related="company_id.drip_cart_abandon_delay", readonly=False
    )
    drip_rfm_window_days = fields.Integer(
        related="company_id.drip_rfm_window_days", readonly=False
    )
    drip_attribution_window_days = fields.Integer(
        related="company_id.drip_attribution_window_days", readonly=False
    )
    drip_double_opt_in = fields.Boolean(related="company_id.drip_double_opt_in", readonly=False)
    drip_timeline_own_customers_only = fields.Boolean(
        related="company_id.drip_timeline_own_customers_only", readonly=False
    )

    @api.constrains("drip_queue_transactional", "drip_queue_bulk")
    def _check_drip_queue_names(self):
        for settings in self:
            names = [settings.drip_queue_transactional, settings.drip_queue_bulk]
            if any(not (name or "").strip() for name in names):
                raise UserError(_("Both queue names are required."))
            if names[0].strip() == names[1].strip():
                raise UserError(
                    _("Transactional and bulk messages need two different queues.")
                )

    def set_values(self):
        if self.drip_redis_url:
            self.env["drip.delivery"]._parse_redis_url(self.drip_redis_url)
        return super().set_values()

    # ------------------------------------------------------------------ predictions
    # Engagement score, churn risk and best time (models/drip_prediction.py).
    drip_score_half_life_days = fields.Float(
        related="company_id.drip_score_half_life_days", readonly=False
    )
    drip_handoff_threshold = fields.Float(
        related="company_id.drip_handoff_threshold", readonly=False
    )
    drip_churn_horizon_days = fields.Integer(
        related="company_id.drip_churn_horizon_days", readonly=False
    )
    drip_churn_at_risk_below = fields.Float(
        related="company_id.drip_churn_at_risk_below", readonly=False
    )
    drip_churn_lapsed_below = fields.Float(
        related="company_id.drip_churn_lapsed_below", readonly=False
    )
    drip_btyd_summary = fields.Char(
        string="Buy-till-you-die model", compute="_compute_drip_btyd_summary"
    )

    @api.depends("company_id")
    def _compute_drip_btyd_summary(self):
        for settings in self:
            settings.drip_btyd_summary = self.env["drip.prediction"]._btyd_summary(
                settings.company_id
            )

    def action_drip_refresh_predictions(self):
        """Run the three prediction refreshes soon, in the background."""
        self.env["drip.prediction"]._trigger_refreshes()
        return True

    # ------------------------------------------------------------------ integrator
    def action_drip_test_redis(self):
        """Ping the Redis URL typed in the form; show RQ's workers and queue depths."""
        self.ensure_one()
        if not self.env.user.has_group("drip_marketing.drip_marketing_group_manager"):
            raise UserError(_("Only marketing managers can test the Redis connection."))
        url = (self.drip_redis_url or "").strip()
        if not url:
            raise UserError(_("Enter a Redis URL first, e.g. redis://127.0.0.1:6379/0."))
        self.env["drip.delivery"]._parse_redis_url(url)
        import redis
        import rq

        try:
            connection = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
            connection.ping()
            names = [
                (self.drip_queue_transactional or "drip_transactional").strip(),
                (self.drip_queue_bulk or "drip_bulk").strip(),
            ]
            depths = [(name, rq.Queue(name, connection=connection).count) for name in names]
            workers = rq.Worker.all(connection=connection)
        except redis.exceptions.RedisError as error:
            return self._drip_notification(
                _("Redis is not reachable"), _("%(url)s: %(error)s", url=url, error=error),
                "danger")
        queues = ", ".join(
            _("%(queue)s: %(count)s waiting", queue=name, count=count) for name, count in depths)
        if workers:
            worker_text = _(
                "%(count)s worker(s): %(names)s", count=len(workers),
                names=", ".join(f"{w.name} ({w.get_state()})" for w in workers))
        else:
            worker_text = _("0 workers: start one with 'rq worker' or the jobs module.")
        return self._drip_notification(
            _("Connected to Redis"), f"{worker_text}. {queues}.",
            "success" if workers else "warning")

    def _drip_notification(self, title, message, kind):
        return {
            "type": "ir.actions.client",
            "tag": "display_notification",
            "params": {"title": title, "message": message, "type": kind, "sticky": True},
        }
