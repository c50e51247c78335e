"""What is open for an agency and what falls due next: the duty officer's view of a request.

A request is *open* while it waits for its answer (``SUBMITTED``, ``DELIVERED``, ``ACKNOWLEDGED``).
Its *next deadline* is the earliest phase deadline neither met nor yet breached; a request is
*about to breach* when that deadline falls within a given time from now (or has passed and the
broker has not yet recorded the breach).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2

__all__ = ["OPEN_STATES", "about_to_breach", "next_deadline"]

OPEN_STATES: frozenset[common_pb2.RequestState.ValueType] = frozenset(
    {
        common_pb2.REQUEST_STATE_SUBMITTED,
        common_pb2.REQUEST_STATE_DELIVERED,
        common_pb2.REQUEST_STATE_ACKNOWLEDGED,
    }
)
"""States in which a request still waits for the recipient's answer."""


def next_deadline(status: lifecycle_pb2.RequestStatus) -> envelope_pb2.PhaseDeadline | None:
    """The earliest phase deadline not met and not breached; None when none is pending."""
    pending = [
        phase
        for phase in status.deadlines.phases
        if phase.HasField("due_at") and not phase.HasField("done_at") and not phase.breached
    ]
    return min(pending, key=lambda phase: phase.due_at.ToNanoseconds(), default=None)


def about_to_breach(status: lifecycle_pb2.RequestStatus, *, now: datetime, within: timedelta) -> bool:
    """Whether the request's next deadline falls before ``now + within``."""
    deadline = next_deadline(status)
    return deadline is not None and deadline.due_at.ToDatetime(tzinfo=UTC) <= now + within
