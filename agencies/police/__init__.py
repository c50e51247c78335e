"""A reference police desk implementing ``greenchannel.v1.PoliceService``."""

from ._config import AssistanceRule, FollowUpRule, PoliceDeskConfig
from ._core import PoliceDesk
from ._model import AssistanceCase, FiledAppeal, FiledReport, VictimFollowUp
from ._servicer import POLICE_SERVICE, PoliceServicer

__all__ = [
    "POLICE_SERVICE",
    "AssistanceCase",
    "AssistanceRule",
    "FiledAppeal",
    "FiledReport",
    "FollowUpRule",
    "PoliceDesk",
    "PoliceDeskConfig",
    "PoliceServicer",
    "VictimFollowUp",
]
