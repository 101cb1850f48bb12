from . import test_handoff_crm
