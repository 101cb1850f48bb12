from . import test_website_carts
