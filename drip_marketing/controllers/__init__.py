from . import consent
from . import tracking
from . import events
from . import segment
