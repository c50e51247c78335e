"""A reference carrier number registry implementing ``greenchannel.v1.CarrierService``."""

from ._config import CarrierConfig
from ._core import CarrierCore
from ._model import CallRecord, Cell, LastSeen, Line, LineStatus, SentWarning
from ._servicer import CARRIER_SERVICE, CarrierServicer

__all__ = [
    "CARRIER_SERVICE",
    "CallRecord",
    "CarrierConfig",
    "CarrierCore",
    "CarrierServicer",
    "Cell",
    "LastSeen",
    "Line",
    "LineStatus",
    "SentWarning",
]
