from odoo.tests import HttpCase, tagged


@tagged("post_install", "-at_install")
class TestJourneyDiagramTour(HttpCase):
    def test_diagram_draws_condition_and_split(self):
        env = self.env
        tag = env["res.partner.category"].create({"name": "High value"})
        template = env["drip.template"].create(
            {"name": "Thanks", "channel": "email", "subject": "Thanks", "body_html": "<p>x</p>"})
        journey = env["drip.journey"].create(
            {"name": "VIP test", "trigger": "tag_added", "trigger_tag_id": tag.id,
             "goal_type": "order"})
        step = env["drip.step"]
        check = step.create({"journey_id": journey.id, "name": "Opted in to email?",
                             "step_type": "condition",
                             "condition_domain": "[('drip_consent_email', '=', 'opted_in')]"})
        split = step.create({"journey_id": journey.id, "parent_id": check.id,
                             "name": "Which message?", "step_type": "split",
                             "step_trigger": "yes"})
        branch_a = step.create({"journey_id": journey.id, "parent_id": split.id,
                                "name": "A: thank-you", "step_type": "send",
                                "step_trigger": "branch", "split_weight": 50,
                                "template_id": template.id})
        step.create({"journey_id": journey.id, "parent_id": split.id, "name": "B: we miss you",
                     "step_type": "send", "step_trigger": "branch", "split_weight": 50,
                     "template_id": template.id})
        step.create({"journey_id": journey.id, "parent_id": check.id, "name": "Tell sales",
                     "step_type": "activity", "step_trigger": "no"})
        partner = env["res.partner"].create({"name": "Counted"})
        enrollment = env["drip.enrollment"].create(
            {"journey_id": journey.id, "partner_id": partner.id})
        env["drip.message"].create({"enrollment_id": enrollment.id, "step_id": branch_a.id,
                                    "scheduled_at": "2026-01-01 10:00:00", "state": "sent",
                                    "sent_at": "2026-01-01 10:00:01"})
        self.start_tour(f"/odoo/action-drip_marketing.drip_journey_action/{journey.id}",
                        "drip_journey_diagram", login="admin")
