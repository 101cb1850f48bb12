from . import test_coupons
