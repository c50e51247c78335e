"""Green-channel SLAs: phase budgets per request type and priority, and how long holds last.

The numbers are data: :mod:`broker.hub._sla_policy` reads them from a policy file per
jurisdiction (the caller names the file; the reference agencies ship ``agencies/sla/cn.toml``)
and builds a :class:`DeadlineTable`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TypeAlias

from greenchannel.v1 import common_pb2, envelope_pb2

from broker.protocol import HOLD_TYPES

__all__ = ["DeadlineTable", "PhaseBudget"]

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Priority: TypeAlias = common_pb2.Priority.ValueType


@dataclass(frozen=True, kw_only=True)
class PhaseBudget:
    """How long each phase may take, each counted from the broker's receive time."""

    deliver: timedelta
    """SUBMITTED -> DELIVERED: the recipient's adapter verified the request (met by any later step
    too: the reference adapter sends no DELIVERED)."""
    acknowledge: timedelta
    """SUBMITTED -> ACKNOWLEDGED: the agency took it (met by the outcome too: the reference adapter
    acknowledges only an agency system slower than its ``acknowledge_after``)."""
    execute: timedelta
    """SUBMITTED -> an outcome (EXECUTED, PARTIALLY_EXECUTED, REJECTED, FAILED)."""

    def __post_init__(self) -> None:
        if min(self.deliver, self.acknowledge, self.execute) <= timedelta(0):
            raise ValueError("phase budgets must be positive")
        if not self.deliver <= self.acknowledge <= self.execute:
            raise ValueError("phase budgets must not shrink: deliver <= acknowledge <= execute")

    def scaled(self, factor: float) -> PhaseBudget:
        return PhaseBudget(
            deliver=self.deliver * factor,
            acknowledge=self.acknowledge * factor,
            execute=self.execute * factor,
        )


class DeadlineTable:
    """Phase budgets per (request type, priority) and hold validity per request type."""

    __slots__ = ("_budgets", "_holds")

    def __init__(
        self,
        *,
        budgets: Mapping[tuple[_RequestType, _Priority], PhaseBudget],
        holds: Mapping[_RequestType, timedelta],
    ) -> None:
        """``holds`` lists only the types that place or extend a hold."""
        if any(validity <= timedelta(0) for validity in holds.values()):
            raise ValueError("hold validity must be positive")
        self._budgets: Mapping[tuple[_RequestType, _Priority], PhaseBudget] = MappingProxyType(dict(budgets))
        self._holds: Mapping[_RequestType, timedelta] = MappingProxyType(dict(holds))

    def budgets(self, request_type: _RequestType, priority: _Priority) -> PhaseBudget:
        """Raise ``ValueError`` for a type or priority the table does not cover (UNSPECIFIED)."""
        try:
            return self._budgets[(request_type, priority)]
        except KeyError:
            raise ValueError(
                f"no SLA for request type {request_type} at priority {priority} in this deadline table"
            ) from None

    def hold_validity(self, request_type: _RequestType) -> timedelta | None:
        """How long a hold placed (or added, for EXTEND) by this type lasts; None if it holds nothing."""
        return self._holds.get(request_type)

    def deadlines(
        self, request_type: _RequestType, priority: _Priority, received_at: datetime
    ) -> envelope_pb2.Deadlines:
        """Phase deadlines counted from the broker's receive time, plus the hold expiry for holds.

        The hold is counted from receipt too, not from execution: the expiry is then known and
        notarized up front, and for a green request the difference is minutes on 48 hours.
        """
        if received_at.utcoffset() is None:
            # protobuf would read a naive time as UTC; a local clock would shift every deadline.
            raise ValueError("received_at must be timezone-aware")
        budget = self.budgets(request_type, priority)
        result = envelope_pb2.Deadlines()
        for phase, allowed in (
            (common_pb2.PHASE_DELIVER, budget.deliver),
            (common_pb2.PHASE_ACKNOWLEDGE, budget.acknowledge),
            (common_pb2.PHASE_EXECUTE, budget.execute),
        ):
            deadline = result.phases.add(phase=phase)
            deadline.due_at.FromDatetime(received_at + allowed)
        validity = self.hold_validity(request_type)
        # Requests whose execution itself places a hold with an expiry. EXTEND moves the expiry of
        # the hold it targets, which the hub knows and this table does not.
        if request_type in HOLD_TYPES and validity is not None:
            result.hold_expires_at.FromDatetime(received_at + validity)
        return result

    def scaled(self, factor: float) -> DeadlineTable:
        """This table with every duration multiplied by ``factor``: short deadlines for tests, demos."""
        if not factor > 0:
            raise ValueError("the scale factor must be positive")
        return DeadlineTable(
            budgets={key: budget.scaled(factor) for key, budget in self._budgets.items()},
            holds={key: validity * factor for key, validity in self._holds.items()},
        )
