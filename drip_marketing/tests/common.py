from psycopg2 import IntegrityError

from odoo.service.model import _as_validation_error
from odoo.tests import TransactionCase, new_test_user
from odoo.tools import mute_logger


class DripCase(TransactionCase):
    """Users of both groups, a second company, a template and a two-step journey."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.env = cls.env(context=dict(cls.env.context, tracking_disable=True))
        cls.company = cls.env.company
        cls.other_company = cls.env["res.company"].create({"name": "Other Store"})
        cls.rep = new_test_user(
            cls.env,
            login="drip_rep",
            groups="base.group_user,drip_marketing.drip_marketing_group_user",
        )
        cls.manager = new_test_user(
            cls.env,
            login="drip_manager",
            groups="base.group_user,drip_marketing.drip_marketing_group_manager",
        )
        cls.other_manager = new_test_user(
            cls.env,
            login="drip_other_manager",
            groups="base.group_user,drip_marketing.drip_marketing_group_manager",
            company_id=cls.other_company.id,
            company_ids=[(6, 0, cls.other_company.ids)],
        )
        cls.customer = cls.env["res.partner"].create(
            {"name": "Lin Wei", "email": "lin.wei@example.com", "lang": "en_US"}
        )
        cls.template = cls.env["drip.template"].create(
            {
                "name": "Reminder",
                "channel": "email",
                "subject": "Hello {{ partner.first_name }}",
                "body_html": "<p>Hi {{ partner.name }}</p>",
                "body_text": "Hi {{ partner.name }}",
            }
        )
        cls.journey = cls.env["drip.journey"].create(
            {"name": "Cart recovery", "trigger": "cart_abandoned", "goal_type": "order"}
        )
        cls.step_first = cls.env["drip.step"].create(
            {
                "journey_id": cls.journey.id,
                "name": "First reminder",
                "step_type": "send",
                "channel": "email",
                "template_id": cls.template.id,
                "delay_value": 1,
                "delay_unit": "hours",
            }
        )
        cls.step_second = cls.env["drip.step"].create(
            {
                "journey_id": cls.journey.id,
                "parent_id": cls.step_first.id,
                "name": "Second reminder",
                "step_type": "send",
                "step_trigger": "not_ordered",
                "channel": "email",
                "template_id": cls.template.id,
                "delay_value": 24,
                "delay_unit": "hours",
            }
        )

    def enroll(self, journey=None, partner=None, **values):
        return self.env["drip.enrollment"].create(
            dict(
                {
                    "journey_id": (journey or self.journey).id,
                    "partner_id": (partner or self.customer).id,
                },
                **values,
            )
        )

    def assertSqlConstraint(self, create_or_write, message):
        """The database refuses the change, and users are shown ``message``."""
        with mute_logger("odoo.sql_db"), self.assertRaises(IntegrityError) as caught:
            with self.env.cr.savepoint():
                create_or_write()
                self.env.flush_all()
        self.assertIn(message, str(_as_validation_error(self.env, caught.exception)))
