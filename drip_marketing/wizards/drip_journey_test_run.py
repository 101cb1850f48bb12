from markupsafe import Markup

from odoo import _, fields, models
from odoo.tools.translate import LazyTranslate

from ..engine import hashing
from ..engine import journey as journey_engine
from ..engine.schedule import resolve_tz
from ..models.domain_tools import checked_domain

_lt = LazyTranslate(__name__)
ACTION_LABELS = {
    "run": _lt("would run"),
    "send": _lt("would send"),
    "skip": _lt("would skip"),
    "yes": _lt("condition: yes"),
    "no": _lt("condition: no"),
    "branch": _lt("A/B split"),
}


class DripJourneyTestRun(models.TransientModel):
    """Walk a journey for one customer on a simulated clock; nothing is sent."""

    _name = "drip.journey.test.run"
    _description = "Drip Marketing Journey Test Run"

    journey_id = fields.Many2one("drip.journey", required=True, ondelete="cascade")
    partner_id = fields.Many2one("res.partner", string="Customer", required=True)
    order_id = fields.Many2one(
        "sale.order", string="Cart / order", domain="[('partner_id', '=', partner_id)]"
    )
    start_at = fields.Datetime(string="Enters at", default=fields.Datetime.now, required=True)
    assume_opened = fields.Boolean(string="Assume the customer opens every message")
    assume_clicked = fields.Boolean(string="Assume the customer clicks")
    assume_ordered = fields.Boolean(string="Assume the customer orders after a message")
    result_html = fields.Html(readonly=True, sanitize=False)

    def action_run(self):
        self.ensure_one()
        self.result_html = self._render_lines(self._simulate())
        return {
            "type": "ir.actions.act_window",
            "res_model": self._name,
            "res_id": self.id,
            "view_mode": "form",
            "target": "new",
        }

    def _simulate(self):
        journey, partner = self.journey_id, self.partner_id
        company = journey.company_id
        tz = resolve_tz(partner.tz, company.drip_default_tz or "UTC")
        preface = []
        entry = journey._parse_partner_domain(journey.entry_domain, _("Entry filter"))
        if not partner.filtered_domain(entry):
            preface.append((self.start_at, _("Entry"), "skip",
                            _("The customer does not match the entry filter.")))
        holdout = hashing.in_holdout(journey._journey_key(), partner.id, journey.holdout_percent)
        if holdout:
            preface.append((self.start_at, _("Entry"), "skip",
                            _("The customer falls in the holdout group: no message is sent.")))
        outcomes = {name for name, on in (("opened", self.assume_opened),
                                          ("clicked", self.assume_clicked),
                                          ("ordered", self.assume_ordered)) if on}
        steps = journey.step_ids

        def evaluate(spec, at):
            step = steps.browse(spec.id)
            if journey.goal_type == "domain" and partner.filtered_domain(
                journey._parse_partner_domain(journey.goal_domain, _("Goal filter"))
            ):
                return "skip", _("Goal already reached: the customer would exit.")
            if step.step_type == "condition":
                target = partner if step.condition_model == "res.partner" else self.order_id
                if not target:
                    return "no", _("No cart or order chosen to evaluate the condition on.")
                domain = checked_domain(self.env, target._name, step.condition_domain, step.name)
                return ("yes" if target.filtered_domain(domain) else "no",
                        _("Evaluated on today's data."))
            if step.step_type == "send":
                if holdout:
                    return "skip", _("Holdout group.")
                allowed, reasons = partner._drip_consent_filter(step.channel)
                if partner not in allowed:
                    return "skip", reasons.get(partner.id, _("No consent."))
                return "send", _("Template '%s'.", step.template_id.name)
            return "run", self._step_effect(step)

        lines = journey_engine.simulate(
            journey._tree(), self.start_at, tz=tz, quiet=company._drip_quiet_hours(),
            journey_key=journey._journey_key(), partner_id=partner.id, evaluate=evaluate,
            outcomes=outcomes,
        )
        return preface + [(line.at, line.name, line.action, line.reason) for line in lines]

    def _render_lines(self, lines):
        tz = resolve_tz(self.partner_id.tz, self.journey_id.company_id.drip_default_tz or "UTC")
        rows = Markup("").join(
            Markup("<tr><td>%s</td><td>%s</td><td>%s</td><td>%s</td></tr>") % (
                fields.Datetime.context_timestamp(self.with_context(tz=tz), at).strftime(
                    "%Y-%m-%d %H:%M %Z"),
                name, str(ACTION_LABELS.get(action, action)), reason or "")
            for at, name, action, reason in lines
        )
        if not lines:
            rows = Markup("<tr><td colspan='4'>%s</td></tr>") % _("The journey has no step.")
        return Markup(
            "<table class='table table-sm o_drip_test_run'><thead><tr><th>%s</th><th>%s</th>"
            "<th>%s</th><th>%s</th></tr></thead><tbody>%s</tbody></table>"
        ) % (_("When (customer's time)"), _("Step"), _("Outcome"), _("Why"), rows)

    def _step_effect(self, step):
        """What a non-sending step would do, in words."""
        return {
            "wait": _("Waits."),
            "tag_add": _("Adds the tag '%s'.", step.tag_id.name),
            "tag_remove": _("Removes the tag '%s'.", step.tag_id.name),
            "activity": _("Schedules an activity for the salesperson."),
            "webhook": _("Calls %s.", step.webhook_url),
            "exit": _("Leaves the journey."),
        }.get(step.step_type, "")
