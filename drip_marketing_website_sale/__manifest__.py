# License LGPL-3.0 or later (https://www.gnu.org/licenses/lgpl).
{
    "name": "Drip Marketing - eCommerce",
    "summary": "Website carts and product views feed Drip Marketing journeys; never both "
    "Odoo's and our cart reminder",
    "version": "18.0.1.0.0",
    "category": "Marketing",
    "website": "https://github.com/drip-marketing/drip_marketing",
    "author": "drip_marketing contributors",
    "license": "LGPL-3",
    "development_status": "Alpha",
    "depends": ["drip_marketing", "website_sale"],
    "auto_install": True,
    "installable": True,
}
