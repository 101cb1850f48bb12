from . import drip_journey_test_run
