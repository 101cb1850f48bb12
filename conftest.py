"""Repository-wide pytest glue. Imports nothing from Odoo: the Odoo-free suite loads it too.

pytest-odoo 2.x on Odoo 18: Odoo's own test runner sets ``odoo.modules.module.current_test``
to the running test case (odoo/tests/suite.py), and Odoo code relies on it - e.g.
``ir.mail_server`` does not really send mail during tests, and our addon borrows the test
cursor instead of opening side transactions. pytest-odoo only does this for Odoo >= 19, so
without the hooks below, Odoo-level tests run under pytest behave unlike the same tests
under ``odoo-bin --test-enable``. The hooks do nothing unless pytest-odoo imported Odoo.
"""

import sys

import pytest


def _odoo_module_module():
    """``odoo.modules.module`` when Odoo is loaded (pytest-odoo run), else None."""
    module = sys.modules.get("odoo.modules.module")
    release = sys.modules.get("odoo.release")
    if module is None or release is None or release.version_info[0] != 18:
        return None
    return module


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    module = _odoo_module_module()
    if module is None:
        return
    from odoo.tests.common import BaseCase

    instance = getattr(item, "instance", None)
    # Set before the fixtures run, so setUpClass sees it too, as under Odoo's runner.
    module.current_test = instance if isinstance(instance, BaseCase) else False


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    module = _odoo_module_module()
    if module is not None and nextitem is None:
        module.current_test = False
