from odoo.tests import tagged

from .common import DripCase


@tagged("post_install", "-at_install")
class TestViews(DripCase):
    def _module_records(self, model):
        data = self.env["ir.model.data"].search(
            [("module", "=", "drip_marketing"), ("model", "=", model)]
        )
        return self.env[model].browse(data.mapped("res_id"))

    def test_every_window_action_loads_its_views(self):
        actions = self._module_records("ir.actions.act_window")
        self.assertGreaterEqual(len(actions), 10)
        admin = self.env.ref("base.user_admin")
        for action in actions:
            # Settings belong to Odoo's administrators; everything else to the manager.
            user = admin if self.env[action.res_model]._transient else self.manager
            with self.subTest(action=action.xml_id):
                modes = [m for m in action.view_mode.split(",") if m]
                views = self.env[action.res_model].with_user(user).get_views(
                    [(False, mode) for mode in modes], {"load_filters": True}
                )
                for mode in modes:
                    self.assertIn(mode, views["views"])
                    self.assertTrue(views["views"][mode]["arch"])

    def test_every_menu_opens_an_action_a_rep_or_manager_can_use(self):
        menus = self._module_records("ir.ui.menu")
        self.assertTrue(menus.filtered(lambda m: not m.parent_id), "a top-level app menu")
        admin = self.env.ref("base.user_admin")
        for menu in menus.filtered("action"):
            action = menu.action
            if action._name != "ir.actions.act_window":
                continue
            # Settings are Odoo's administrators' business; the rest is the manager's.
            user = admin if self.env[action.res_model]._transient else self.manager
            with self.subTest(menu=menu.complete_name):
                self.assertIn(menu.id, self.env["ir.ui.menu"].with_user(user)._visible_menu_ids())
                self.assertTrue(self.env[action.res_model].with_user(user).has_access("read"))

    def test_partner_form_shows_marketing_fields_to_reps(self):
        arch = self.env["res.partner"].with_user(self.rep).get_views([(False, "form")])[
            "views"]["form"]["arch"]
        for field in ("drip_rfm_segment", "drip_rfm_score", "drip_consent_email",
                      "drip_consent_sms", "category_id"):
            self.assertIn(f'name="{field}"', arch)

    def test_settings_page_lists_delivery_and_rules(self):
        arch = self.env["res.config.settings"].with_user(self.env.ref("base.user_admin")).get_views(
            [(False, "form")])["views"]["form"]["arch"]
        for field in ("drip_redis_url", "drip_queue_transactional", "drip_queue_bulk",
                      "drip_quiet_hours_start", "drip_cap_per_day", "drip_cart_abandon_delay",
                      "drip_rfm_window_days"):
            self.assertIn(f'name="{field}"', arch)
