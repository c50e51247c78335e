"""Green-channel SLAs: phase budgets per request type and priority, and how long holds last.

The numbers are data: :mod:`broker.hub._sla_policy` reads them from a policy file per
jurisdiction (the caller names the file; the reference agencies ship ``agencies/sla/cn.toml``)
and builds a :class:`DeadlineTable`. A phase is a fixed duration or a number of working days of
the policy's :class:`~broker.hub._calendar.WorkingCalendar` (``"3wd"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import TypeAlias

from greenchannel.v1 import common_pb2, envelope_pb2

from broker.protocol import HOLD_TYPES

from ._calendar import WorkingCalendar, WorkingDays

__all__ = ["Budget", "DeadlineTable", "PhaseBudget", "nominal"]

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Priority: TypeAlias = common_pb2.Priority.ValueType
_Key: TypeAlias = tuple[_RequestType, _Priority]
_NarrowKey: TypeAlias = tuple[_RequestType, _Priority, int]

Budget: TypeAlias = timedelta | WorkingDays
"""How long a phase may take: a fixed duration, or working days of the table's calendar."""


def nominal(budget: Budget) -> timedelta:
    """A fixed duration as it is; working days as the shortest they can be (a day each)."""
    return budget.nominal if isinstance(budget, WorkingDays) else budget


def _scale(budget: Budget, factor: float) -> timedelta:
    # A test's scaled policy has no calendar: working days become their nominal length.
    return nominal(budget) * factor


@dataclass(frozen=True, kw_only=True)
class PhaseBudget:
    """How long each phase may take, each counted from the broker's receive time."""

    deliver: Budget
    """SUBMITTED -> DELIVERED: the recipient's adapter verified the request (met by any later step
    too: the reference adapter sends no DELIVERED)."""
    acknowledge: Budget
    """SUBMITTED -> ACKNOWLEDGED: the agency took it (met by the outcome too: the reference adapter
    acknowledges only an agency system slower than its ``acknowledge_after``)."""
    execute: Budget
    """SUBMITTED -> an outcome (EXECUTED, PARTIALLY_EXECUTED, REJECTED, FAILED)."""

    def __post_init__(self) -> None:
        phases = (self.deliver, self.acknowledge, self.execute)
        if min(nominal(phase) for phase in phases) <= timedelta(0):
            raise ValueError("phase budgets must be positive")
        if not nominal(self.deliver) <= nominal(self.acknowledge) <= nominal(self.execute):
            raise ValueError("phase budgets must not shrink: deliver <= acknowledge <= execute")
        if isinstance(self.deliver, WorkingDays) and not isinstance(self.acknowledge, WorkingDays):
            raise ValueError("a phase after one in working days must be in working days too")
        if isinstance(self.acknowledge, WorkingDays) and not isinstance(self.execute, WorkingDays):
            raise ValueError("a phase after one in working days must be in working days too")

    def scaled(self, factor: float) -> PhaseBudget:
        return PhaseBudget(
            deliver=_scale(self.deliver, factor),
            acknowledge=_scale(self.acknowledge, factor),
            execute=_scale(self.execute, factor),
        )


class DeadlineTable:
    """Phase budgets per (request type, priority) and hold validity per request type.

    A budget may be narrowed to one data category of a type (``(DATA_REQUEST, GREEN, LOCATION)``):
    a request of that category gets the narrowed budget; every other category, and a request with
    no category, gets the (type, priority) budget, which the table must have as well.
    """

    __slots__ = ("_budgets", "_by_category", "_calendar", "_holds")

    def __init__(
        self,
        *,
        budgets: Mapping[_Key, PhaseBudget],
        holds: Mapping[_RequestType, timedelta],
        calendar: WorkingCalendar | None = None,
        by_category: Mapping[_NarrowKey, PhaseBudget] | None = None,
    ) -> None:
        """``holds`` lists only the types that place or extend a hold; ``calendar`` counts budgets
        given in working days (default: Monday to Friday in UTC, no holidays); ``by_category``
        narrows budgets to a data category (``(type, priority, category)``), each of whose
        (type, priority) must be in ``budgets`` too."""
        self._calendar = calendar if calendar is not None else WorkingCalendar()
        if any(validity <= timedelta(0) for validity in holds.values()):
            raise ValueError("hold validity must be positive")
        narrowed = dict(by_category or {})
        for request_type, priority, category in narrowed:
            if (request_type, priority) not in budgets:
                raise ValueError(
                    f"a budget narrowed to category {category} needs one for request type "
                    f"{request_type} at priority {priority} for every other category"
                )
            if category == 0:
                raise ValueError("a budget is narrowed to a category, not to UNSPECIFIED")
        self._budgets: Mapping[_Key, PhaseBudget] = MappingProxyType(dict(budgets))
        self._by_category: Mapping[_NarrowKey, PhaseBudget] = MappingProxyType(narrowed)
        self._holds: Mapping[_RequestType, timedelta] = MappingProxyType(dict(holds))

    def budgets(self, request_type: _RequestType, priority: _Priority, category: int = 0) -> PhaseBudget:
        """The budget of a request of ``category`` (a ``DataCategory``; 0 for none): the narrowed one
        if the table has it, else the type's. Raise ``ValueError`` for a type or priority the table
        does not cover (UNSPECIFIED)."""
        if category:
            narrowed = self._by_category.get((request_type, priority, category))
            if narrowed is not None:
                return narrowed
        try:
            return self._budgets[(request_type, priority)]
        except KeyError:
            raise ValueError(
                f"no SLA for request type {request_type} at priority {priority} in this deadline table"
            ) from None

    @property
    def calendar(self) -> WorkingCalendar:
        """The working days that budgets in working days count."""
        return self._calendar

    def hold_validity(self, request_type: _RequestType) -> timedelta | None:
        """How long a hold placed (or added, for EXTEND) by this type lasts; None if it holds nothing."""
        return self._holds.get(request_type)

    def deadlines(
        self, request_type: _RequestType, priority: _Priority, received_at: datetime, *, category: int = 0
    ) -> envelope_pb2.Deadlines:
        """Phase deadlines counted from the broker's receive time, plus the hold expiry for holds.

        The hold is counted from receipt too, not from execution: the expiry is then known and
        notarized up front, and for a green request the difference is minutes on 48 hours. A phase
        in working days is counted in the table's calendar; no phase is ever due before the one
        before it (a fixed duration next to working days, across a daylight-saving change).
        ``category``: the data category of a data request (see :meth:`budgets`).
        """
        if received_at.utcoffset() is None:
            # protobuf would read a naive time as UTC; a local clock would shift every deadline.
            raise ValueError("received_at must be timezone-aware")
        budget = self.budgets(request_type, priority, category)
        result = envelope_pb2.Deadlines()
        earliest = received_at
        for phase, allowed in (
            (common_pb2.PHASE_DELIVER, budget.deliver),
            (common_pb2.PHASE_ACKNOWLEDGE, budget.acknowledge),
            (common_pb2.PHASE_EXECUTE, budget.execute),
        ):
            earliest = max(earliest, self._due(received_at, allowed))
            deadline = result.phases.add(phase=phase)
            deadline.due_at.FromDatetime(earliest)
        validity = self.hold_validity(request_type)
        # Requests whose execution itself places a hold with an expiry. EXTEND moves the expiry of
        # the hold it targets, which the hub knows and this table does not.
        if request_type in HOLD_TYPES and validity is not None:
            result.hold_expires_at.FromDatetime(received_at + validity)
        return result

    def _due(self, received_at: datetime, allowed: Budget) -> datetime:
        if isinstance(allowed, WorkingDays):
            return self._calendar.add_working_days(received_at, allowed.count)
        return received_at + allowed

    def scaled(self, factor: float) -> DeadlineTable:
        """This table with every duration multiplied by ``factor``: short deadlines for tests, demos."""
        if not factor > 0:
            raise ValueError("the scale factor must be positive")
        return DeadlineTable(
            budgets={key: budget.scaled(factor) for key, budget in self._budgets.items()},
            holds={key: validity * factor for key, validity in self._holds.items()},
            calendar=self._calendar,
            by_category={key: budget.scaled(factor) for key, budget in self._by_category.items()},
        )
