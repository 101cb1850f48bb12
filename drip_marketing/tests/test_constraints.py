from odoo.exceptions import UserError, ValidationError
from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestConstraints(DripCase):
    def test_duplicate_enrollment_refused(self):
        self.enroll()
        self.assertSqlConstraint(
            self.enroll, "already enrolled in this journey for this record"
        )

    def test_reentry_cycle_allows_second_enrollment(self):
        first = self.enroll()
        second = self.enroll(cycle=1)
        self.assertEqual(first.source_ref, second.source_ref)
        self.assertNotEqual(first, second)

    def test_duplicate_idempotency_key_refused(self):
        enrollment = self.enroll()
        values = {
            "enrollment_id": enrollment.id,
            "step_id": self.step_first.id,
            "scheduled_at": "2026-11-23 10:00:00",
        }
        message = self.env["drip.message"].create(values)
        self.assertEqual(message.idempotency_key, f"{enrollment.id}:{self.step_first.id}")
        self.assertSqlConstraint(
            lambda: self.env["drip.message"].create(values), "gets each step once"
        )

    def test_negative_delay_refused(self):
        self.assertSqlConstraint(
            lambda: self.step_first.write({"delay_value": -2}), "A delay cannot be negative"
        )

    def test_split_weights_over_100_refused(self):
        split = self.env["drip.step"].create(
            {"journey_id": self.journey.id, "name": "Split", "step_type": "split",
             "parent_id": self.step_first.id}
        )
        branch = {"journey_id": self.journey.id, "parent_id": split.id, "step_type": "wait",
                  "step_trigger": "branch"}
        self.env["drip.step"].create(dict(branch, name="A", split_weight=70))
        with self.assertRaisesRegex(ValidationError, "must weigh 100% together"):
            self.env["drip.step"].create(dict(branch, name="B", split_weight=40))

    def test_split_weights_under_100_refused_at_start(self):
        split = self.env["drip.step"].create(
            {"journey_id": self.journey.id, "name": "Split", "step_type": "split",
             "parent_id": self.step_first.id}
        )
        self.env["drip.step"].create(
            {"journey_id": self.journey.id, "parent_id": split.id, "step_type": "wait",
             "step_trigger": "branch", "name": "A", "split_weight": 60}
        )
        with self.assertRaisesRegex(ValidationError, r"now 60\.0%"):
            self.journey.action_start()
        self.assertEqual(self.journey.state, "draft")

    def test_split_weight_out_of_range(self):
        self.assertSqlConstraint(
            lambda: self.step_second.write({"split_weight": 120}), "percentage between 0 and 100"
        )

    def test_holdout_percent_range(self):
        self.assertSqlConstraint(
            lambda: self.journey.write({"holdout_percent": 150}),
            "holdout percentage must be between 0 and 100",
        )

    def test_step_cycle_refused(self):
        with self.assertRaisesRegex(ValidationError, "cycle"):
            self.step_first.parent_id = self.step_second

    def test_step_parent_of_other_journey_refused(self):
        other = self.env["drip.journey"].create({"name": "Other", "trigger": "partner_created"})
        with self.assertRaisesRegex(ValidationError, "same journey"):
            self.env["drip.step"].create(
                {"journey_id": other.id, "parent_id": self.step_first.id, "name": "X",
                 "step_type": "wait"}
            )

    def test_send_step_needs_template(self):
        with self.assertRaisesRegex(ValidationError, "needs a template"):
            self.env["drip.step"].create(
                {"journey_id": self.journey.id, "name": "Empty send", "step_type": "send"}
            )

    def test_channel_must_match_template(self):
        with self.assertRaisesRegex(ValidationError, "another channel than its template"):
            self.step_first.channel = "sms"

    def test_engagement_trigger_only_after_send(self):
        wait = self.env["drip.step"].create(
            {"journey_id": self.journey.id, "name": "Wait", "step_type": "wait",
             "parent_id": self.step_first.id}
        )
        with self.assertRaisesRegex(ValidationError, "cannot run on 'Opened' here"):
            self.env["drip.step"].create(
                {"journey_id": self.journey.id, "name": "After open", "step_type": "wait",
                 "parent_id": wait.id, "step_trigger": "opened"}
            )

    def test_exit_step_has_no_children(self):
        exit_step = self.env["drip.step"].create(
            {"journey_id": self.journey.id, "name": "Exit", "step_type": "exit",
             "parent_id": self.step_first.id}
        )
        with self.assertRaisesRegex(ValidationError, "Nothing can follow the exit step"):
            self.env["drip.step"].create(
                {"journey_id": self.journey.id, "name": "After exit", "step_type": "wait",
                 "parent_id": exit_step.id}
            )

    def test_webhook_needs_url(self):
        with self.assertRaisesRegex(ValidationError, "needs an http"):
            self.env["drip.step"].create(
                {"journey_id": self.journey.id, "name": "Hook", "step_type": "webhook",
                 "webhook_url": "ftp://example.com"}
            )

    def assertRefused(self, change, message):
        """``change`` raises ``message`` and leaves the database as it was."""
        with self.assertRaisesRegex(ValidationError, message), self.env.cr.savepoint():
            change()
        self.env.invalidate_all()

    def test_bad_entry_domain_refused(self):
        self.assertRefused(
            lambda: self.journey.write({"entry_domain": "[('no_such_field', '=', 1)]"}),
            "Entry filter of journey .* not a valid",
        )
        self.assertRefused(
            lambda: self.journey.write({"entry_domain": "[('name', '=',"}), "not a valid filter"
        )
        self.assertEqual(self.journey.entry_domain, "[]")

    def test_bad_goal_domain_refused(self):
        with self.assertRaisesRegex(ValidationError, "Goal filter"):
            self.journey.write({"goal_type": "domain", "goal_domain": "{'not': 'a list'}"})

    def test_bad_segment_domain_refused(self):
        with self.assertRaisesRegex(ValidationError, "segment 'Broken'"):
            self.env["drip.segment"].create({"name": "Broken", "domain": "[('x', '=', 1)]"})

    def test_bad_condition_domain_refused(self):
        with self.assertRaisesRegex(ValidationError, "condition of step 'Check'"):
            self.env["drip.step"].create(
                {"journey_id": self.journey.id, "name": "Check", "step_type": "condition",
                 "parent_id": self.step_first.id, "condition_domain": "[('nope', '=', 1)]"}
            )

    def test_bad_tag_rule_domain_refused(self):
        tag = self.env["res.partner.category"].create({"name": "VIP"})
        with self.assertRaisesRegex(ValidationError, "tag rule 'VIP rule'"):
            self.env["drip.tag.rule"].create(
                {"name": "VIP rule", "tag_id": tag.id, "domain": "[('nope', '=', 1)]"}
            )

    def test_trigger_parameters_required(self):
        with self.assertRaisesRegex(ValidationError, "Choose the tag"):
            self.env["drip.journey"].create({"name": "Tagged", "trigger": "tag_added"})
        with self.assertRaisesRegex(ValidationError, "Choose the event type"):
            self.env["drip.journey"].create({"name": "Evented", "trigger": "event"})

    def test_template_syntax_error_reports_line(self):
        self.assertRefused(
            lambda: self.template.write({"body_html": "<p>ok</p>\n{% for x in %}"}),
            r"HTML body: .*[Ll]ine 2",
        )
        self.assertEqual(self.template.body_html, "<p>Hi {{ partner.name }}</p>")

    def test_template_variant_unique_per_language(self):
        variant = {"template_id": self.template.id, "lang": "en_US", "subject": "Hi"}
        self.env["drip.template.variant"].create(variant)
        self.assertSqlConstraint(
            lambda: self.env["drip.template.variant"].create(variant),
            "at most one variant per language",
        )

    def test_company_caps_and_quiet_hours(self):
        self.assertSqlConstraint(
            lambda: self.company.write({"drip_cap_per_day": -1}), "cannot be negative"
        )
        with self.assertRaisesRegex(ValidationError, "between 00:00 and 24:00"):
            self.company.drip_quiet_hours_start = 25
        self.assertRefused(
            lambda: self.company.write({"drip_quiet_hours_start": 0, "drip_quiet_hours_end": 24}),
            "never let a message out",
        )

    def test_identity_normalised_and_unique(self):
        identity = self.env["drip.identity"].create(
            {"partner_id": self.customer.id, "kind": "email", "value": "  Lin.Wei@Example.COM "}
        )
        self.assertEqual(identity.value, "lin.wei@example.com")
        with self.assertRaisesRegex(ValidationError, "not a valid Email"):
            self.env["drip.identity"].create(
                {"partner_id": self.customer.id, "kind": "email", "value": "not an email"}
            )
        self.assertSqlConstraint(
            lambda: self.env["drip.identity"].create(
                {"partner_id": self.customer.id, "kind": "email", "value": "LIN.WEI@example.com"}
            ),
            "already belongs to a customer",
        )

    def test_event_idempotency_key_unique(self):
        values = {"name": "Product Viewed", "idempotency_key": "msg-1"}
        self.env["drip.event"].create(values)
        self.assertSqlConstraint(
            lambda: self.env["drip.event"].create(values), "already received"
        )

    def test_event_type_code_format(self):
        with self.assertRaisesRegex(ValidationError, "lower-case letters"):
            self.env["drip.event.type"].create({"name": "Bad", "code": "Bad Code!"})

    def test_settings_reject_bad_redis_url_and_queues(self):
        settings = self.env["res.config.settings"].create({"drip_redis_url": "http://nope"})
        with self.assertRaisesRegex(UserError, "not a Redis URL"):
            settings.execute()
        self.assertFalse(
            self.env["ir.config_parameter"].sudo().get_param("drip_marketing.redis_url")
        )
        with self.assertRaisesRegex(UserError, "two different queues"):
            self.env["res.config.settings"].create(
                {"drip_queue_transactional": "same", "drip_queue_bulk": "same"}
            )
        settings = self.env["res.config.settings"].create(
            {"drip_redis_url": "redis://127.0.0.1:6379/0", "drip_cap_per_week": 5}
        )
        settings.execute()
        self.assertEqual(
            self.env["ir.config_parameter"].sudo().get_param("drip_marketing.redis_url"),
            "redis://127.0.0.1:6379/0",
        )
        self.assertEqual(self.company.drip_cap_per_week, 5)
