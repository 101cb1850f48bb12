import json
from datetime import timedelta

from odoo import fields
from odoo.tests import HttpCase, TransactionCase, new_test_user, tagged

from odoo.addons.spreadsheet.utils.validate_data import (
    fields_in_spreadsheet,
    menus_xml_ids_in_spreadsheet,
    odoo_charts,
)


@tagged("post_install", "-at_install")
class TestDripDashboard(TransactionCase):
    """The dashboard ships, loads, and every data source reads the funnel model."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dashboard = cls.env.ref("drip_marketing_dashboard.spreadsheet_dashboard_drip_marketing")
        cls.data = json.loads(cls.dashboard.spreadsheet_data)
        cls.rep = new_test_user(
            cls.env, login="drip_dash_rep",
            groups="base.group_user,drip_marketing.drip_marketing_group_user")
        # A little ledger: one journey, two customers, one sent and clicked message.
        template = cls.env["drip.template"].create({
            "name": "Hello", "channel": "email", "subject": "Hi", "body_html": "<p>Hi</p>"})
        journey = cls.env["drip.journey"].create({"name": "Welcome", "trigger": "partner_created"})
        step = cls.env["drip.step"].create({
            "journey_id": journey.id, "name": "Hello", "step_type": "send", "channel": "email",
            "template_id": template.id})
        now = fields.Datetime.now()
        for index, clicked in enumerate((True, False)):
            partner = cls.env["res.partner"].create(
                {"name": f"Dash {index}", "email": f"dash{index}@example.com"})
            enrollment = cls.env["drip.enrollment"].create(
                {"journey_id": journey.id, "partner_id": partner.id,
                 "entered_at": now - timedelta(days=2)})
            cls.env["drip.message"].create({
                "enrollment_id": enrollment.id, "step_id": step.id, "state": "sent",
                "scheduled_at": now - timedelta(days=2), "sent_at": now - timedelta(days=2),
                "opened_at": now - timedelta(days=1) if clicked else False,
                "clicked_at": now - timedelta(days=1) if clicked else False,
                "converted_at": now - timedelta(hours=12) if clicked else False,
                "revenue": 80.0 if clicked else 0.0,
            })
        cls.journey = journey
        cls.env["drip.funnel.report"]._refresh()

    def test_published_in_the_marketing_section(self):
        self.assertTrue(self.dashboard.is_published)
        self.assertEqual(self.dashboard.dashboard_group_id,
                         self.env.ref("spreadsheet_dashboard.spreadsheet_dashboard_group_marketing"))
        self.assertEqual(self.dashboard.main_data_model_ids.model, "drip.funnel.report")

    def test_loads_for_a_sales_rep(self):
        dashboard = self.dashboard.with_user(self.rep)
        self.assertIn(dashboard, self.env["spreadsheet.dashboard"].with_user(self.rep).search([]))
        loaded = dashboard.get_readonly_dashboard()
        self.assertNotIn("is_sample", loaded)
        snapshot = loaded["snapshot"]
        self.assertEqual([sheet["name"] for sheet in snapshot["sheets"]], ["Dashboard", "Data"])
        self.assertEqual({p["model"] for p in snapshot["pivots"].values()}, {"drip.funnel.report"})

    def test_fields_and_menus_exist(self):
        used = fields_in_spreadsheet(self.data)
        self.assertEqual(set(used), {"drip.funnel.report"})
        Report = self.env["drip.funnel.report"]
        for chain in used["drip.funnel.report"]:
            self.assertIn(chain.split(".")[0], Report._fields, chain)
        for xml_id in menus_xml_ids_in_spreadsheet(self.data):
            self.assertTrue(self.env.ref(xml_id).action, xml_id)

    def test_data_sources_read_the_model(self):
        Report = self.env["drip.funnel.report"].with_user(self.rep)
        for pivot in self.data["pivots"].values():
            measures = [f"{m['fieldName']}:sum" for m in pivot["measures"]]
            rows = [row["fieldName"] for row in pivot["rows"]]
            result = Report.read_group([], measures, rows, lazy=False)
            self.assertTrue(result, pivot["name"])
        for chart in odoo_charts(self.data):
            meta = chart["metaData"]
            result = Report.read_group(chart["searchParams"]["domain"],
                                       [f"{meta['measure']}:sum"], meta["groupBy"], lazy=False)
            self.assertTrue(result, chart["id"])
        # The figures behind the scorecards and the top-journeys table, live (this
        # test's journey: the demo data has a delivery history of its own).
        mine = [("journey_id", "=", self.journey.id)]
        totals = Report.read_group(mine, ["sent:sum", "opened:sum", "clicked:sum",
                                          "converted:sum", "revenue:sum"], [], lazy=False)[0]
        self.assertEqual((totals["sent"], totals["opened"], totals["clicked"],
                          totals["converted"]), (2, 1, 1, 1))
        self.assertAlmostEqual(totals["revenue"], 80.0)
        by_journey = Report.read_group([("journey_id", "=", self.journey.id)], ["sent:sum"],
                                       ["journey_id"], lazy=False)
        self.assertEqual(by_journey[0]["sent"], 2)

    def test_formulas_point_at_defined_pivots(self):
        pivot_ids = set(self.data["pivots"])
        for sheet in self.data["sheets"]:
            for cell in sheet["cells"].values():
                content = cell.get("content", "")
                for prefix in ("PIVOT.VALUE(", "PIVOT.HEADER("):
                    for part in content.split(prefix)[1:]:
                        self.assertIn(part.split(",")[0].split(")")[0], pivot_ids, content)
        for figure in self.data["sheets"][0]["figures"]:
            if figure["data"]["type"] == "scorecard":
                row = figure["data"]["keyValue"].split("!D")[1]
                self.assertIn(f"B{row}", self.data["sheets"][1]["cells"])


@tagged("post_install", "-at_install")
class TestDripDashboardTour(HttpCase):
    def test_dashboard_opens_in_the_dashboards_app(self):
        dashboard = self.env.ref("drip_marketing_dashboard.spreadsheet_dashboard_drip_marketing")
        self.start_tour(
            "/odoo/action-spreadsheet_dashboard.ir_actions_dashboard_action"
            f"?dashboard_id={dashboard.id}", "drip_marketing_dashboard_tour", login="admin")
