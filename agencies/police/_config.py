"""How a reference police desk is set up: its store and its rules for incoming assistance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from greenchannel.v1 import requests_pb2, results_pb2

from agencies._common import MEMORY

__all__ = ["AssistanceRule", "DissuasionRule", "FollowUpRule", "PoliceDeskConfig"]

_DETAIL_MAX = 1024


@dataclass(frozen=True, kw_only=True)
class AssistanceRule:
    """What the desk does with an assistance request of one kind."""

    complete: bool = True
    """Complete the task and send a report (True), or decline it."""
    findings: str = "task completed as requested"
    """The report's findings when completed; sealed to the requesting police."""
    decline_reason: str = ""
    """Why it is declined; travels in ``Result.detail``, so never personal data."""

    def __post_init__(self) -> None:
        if not self.complete and not self.decline_reason.strip():
            raise ValueError("a declining rule needs a reason")
        if len(self.decline_reason) > _DETAIL_MAX:
            raise ValueError(f"a decline reason has at most {_DETAIL_MAX} characters")

    @classmethod
    def accept_and_complete(cls, findings: str = "task completed as requested") -> AssistanceRule:
        return cls(complete=True, findings=findings)

    @classmethod
    def decline(cls, reason: str) -> AssistanceRule:
        return cls(complete=False, decline_reason=reason)


@dataclass(frozen=True, kw_only=True)
class FollowUpRule:
    """How the desk's victim follow-ups (回访) go."""

    reached: bool = True
    """The victim is reached (``FOLLOW_UP_OUTCOME_REACHED``) or not (``NOT_REACHED``)."""
    advice: str = "victim called back: told the money was returned and warned against follow-on scams"
    """What the desk records as the advice given; travels in ``Result.detail``, so never personal data."""

    def __post_init__(self) -> None:
        if not self.advice.strip():
            raise ValueError("a follow-up rule needs the advice given (or why the victim was not reached)")
        if len(self.advice) > _DETAIL_MAX:
            raise ValueError(f"a follow-up's advice has at most {_DETAIL_MAX} characters")


@dataclass(frozen=True, kw_only=True)
class DissuasionRule:
    """How the desk's in-person dissuasions (见面劝阻) go."""

    outcome: results_pb2.WarningOutcome.ValueType = results_pb2.WARNING_OUTCOME_DISSUADED
    """How the visit ends: DISSUADED (default), CONTINUING or UNREACHABLE."""
    note: str = "officers met the person at home: payment stopped, scam explained"
    """What the desk records; travels in ``Result.detail``, so never personal data."""

    def __post_init__(self) -> None:
        if self.outcome == results_pb2.WARNING_OUTCOME_UNSPECIFIED:
            raise ValueError("a dissuasion rule needs an outcome")
        if not self.note.strip() or len(self.note) > _DETAIL_MAX:
            raise ValueError(f"a dissuasion rule needs a note of at most {_DETAIL_MAX} characters")


@dataclass(frozen=True, kw_only=True)
class PoliceDeskConfig:
    """A police desk's identity, store and assistance rules."""

    agency_id: str
    """This police agency's id (``police-440305``)."""
    database: str | Path = MEMORY
    """SQLite file, created if missing, or ``":memory:"``."""
    rules: Mapping[requests_pb2.AssistanceKind.ValueType, AssistanceRule] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Rule per ``AssistanceKind``; kinds not listed follow :attr:`default_rule`."""
    default_rule: AssistanceRule = field(default_factory=AssistanceRule)
    """Rule for kinds without their own."""
    regions: tuple[str, ...] = ()
    """Region-code prefixes the desk serves (its ``police_regions``); others are declined. Empty: all."""
    follow_up: FollowUpRule = field(default_factory=FollowUpRule)
    """How victim follow-ups go (default: reached, with a short advice)."""
    dissuasion: DissuasionRule = field(default_factory=DissuasionRule)
    """How in-person dissuasions go (default: the person is dissuaded)."""

    def rule_for(self, kind: requests_pb2.AssistanceKind.ValueType) -> AssistanceRule:
        return self.rules.get(kind, self.default_rule)
