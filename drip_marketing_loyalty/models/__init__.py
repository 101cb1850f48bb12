from . import drip_step
from . import drip_coupon
from . import drip_message
from . import drip_enrollment
from . import drip_offer
from . import sale_order
