"""The verified context an agency system receives with every order."""

from __future__ import annotations

from greenchannel.v1 import agency_pb2, common_pb2

from broker.protocol import OpenedEnvelope

__all__ = ["order_context"]


def order_context(opened: OpenedEnvelope) -> agency_pb2.OrderContext:
    """``OrderContext`` from what the broker notarized: ids, case, priority, times and deadlines."""
    header = opened.header
    context = agency_pb2.OrderContext(
        request_id=header.id,
        sender=header.sender,
        case_ref=header.case_ref,
        priority=header.priority,
        parent_id=header.parent_id,
        hop=header.hop,
    )
    if header.HasField("received_at"):
        context.received_at.CopyFrom(header.received_at)
    deadlines = header.deadlines
    execute = next(
        (
            phase
            for phase in deadlines.phases
            if phase.phase == common_pb2.PHASE_EXECUTE and phase.HasField("due_at")
        ),
        None,
    )
    if execute is not None:
        context.execute_by.CopyFrom(execute.due_at)
    if deadlines.HasField("hold_expires_at"):
        context.hold_until.CopyFrom(deadlines.hold_expires_at)
    return context
