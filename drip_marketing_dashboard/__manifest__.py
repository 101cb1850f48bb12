# Copyright 2026 drip_marketing contributors
# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
{
    "name": "Drip Marketing - Dashboard",
    "summary": "Drip Marketing figures in the Dashboards app: messages, rates, "
    "conversions, attributed revenue, opt-outs, top journeys",
    "version": "18.0.1.0.0",
    "category": "Marketing",
    "website": "https://github.com/drip-marketing/drip_marketing",
    "author": "drip_marketing contributors",
    "license": "LGPL-3",
    "development_status": "Alpha",
    "installable": True,
    "auto_install": True,
    "depends": ["drip_marketing", "spreadsheet_dashboard"],
    "data": [
        "data/dashboards.xml",
    ],
    "assets": {
        "web.assets_tests": [
            "drip_marketing_dashboard/static/tests/tours/*",
        ],
    },
}
