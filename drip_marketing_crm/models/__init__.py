from . import drip_prediction
