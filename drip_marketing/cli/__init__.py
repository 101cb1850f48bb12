from . import drip_worker
