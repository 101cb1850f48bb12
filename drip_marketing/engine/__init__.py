"""Pure-Python decision logic of drip_marketing.

Nothing below this package imports ``odoo``: it is importable both as
``odoo.addons.drip_marketing.engine`` and, in Odoo-free tests, as the plain package
``engine`` (pytest ``pythonpath = drip_marketing``). Only relative imports inside.
"""
