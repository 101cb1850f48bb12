# Copyright 2026 drip_marketing contributors
# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
{
    "name": "Drip Marketing - Coupons",
    "summary": "Journey steps hand out personal single-use coupons from Odoo's loyalty "
    "programs; redemptions count as conversions",
    "version": "18.0.1.0.0",
    "category": "Marketing",
    "website": "https://github.com/drip-marketing/drip_marketing",
    "author": "drip_marketing contributors",
    "license": "LGPL-3",
    "development_status": "Alpha",
    "depends": ["drip_marketing", "sale_loyalty"],
    "auto_install": True,
    "installable": True,
    "data": [
        "security/ir.model.access.csv",
        "security/drip_marketing_loyalty_security.xml",
        "data/drip_coupon_program_data.xml",
        "views/drip_coupon_views.xml",
        "views/drip_step_views.xml",
        "views/drip_enrollment_views.xml",
        "views/drip_message_views.xml",
    ],
}
