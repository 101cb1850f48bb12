from . import drip_funnel_report
