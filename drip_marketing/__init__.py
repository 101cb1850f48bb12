from . import models
from . import report
from . import wizards
from . import controllers
from .hooks import uninstall_hook

try:  # the `odoo-bin drip-worker` command; never let it break loading the addon
    from . import cli
except Exception:  # noqa: BLE001
    import logging

    logging.getLogger(__name__).warning("drip-worker command unavailable", exc_info=True)
