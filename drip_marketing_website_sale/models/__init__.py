from . import drip_journey
from . import sale_order
from . import website_visitor
