"""A reference police desk implementing ``greenchannel.v1.PoliceService``."""

from ._config import AssistanceRule, DissuasionRule, FollowUpRule, PoliceDeskConfig
from ._core import PoliceDesk
from ._model import (
    AssistanceCase,
    FiledAppeal,
    FiledReport,
    InPersonDissuasion,
    LinkageRecord,
    VictimFollowUp,
)
from ._servicer import POLICE_SERVICE, PoliceServicer

__all__ = [
    "POLICE_SERVICE",
    "AssistanceCase",
    "AssistanceRule",
    "DissuasionRule",
    "FiledAppeal",
    "FiledReport",
    "FollowUpRule",
    "InPersonDissuasion",
    "LinkageRecord",
    "PoliceDesk",
    "PoliceDeskConfig",
    "PoliceServicer",
    "VictimFollowUp",
]
