from . import drip_journey_test_run
from . import drip_audience_export
from . import drip_journey_backtest
from . import drip_journey_enroll
