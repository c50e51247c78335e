"""A batch NUMBER_BLOCK spanning several carriers: one parent, one child per carrier, one answer.

The police's order is the parent. Its recipient is the broker itself (:data:`BROKER_ID`): nothing
goes to an inbox for it, and the broker records its outcome. At intake the broker splits the lines
by carrier (:class:`~greenchannel.v1.lifecycle_pb2.BatchSplit`, kept in the parent's status, with
the children's request ids chosen then) and sends each carrier a child NUMBER_BLOCK with its lines,
as the money chase sends its children: signed by the broker, under the parent's case reference,
``parent_id`` = the parent, ``hop`` + 1, idempotency key ``batch.<parent id>.<carrier>``, so a retry
or a redelivered cause sends each child once. Lines no carrier serves are NOT_OURS at the parent.

When every child has an outcome, :class:`BatchOutcomes` records the parent's: its items by the
parent's indexes and the summed totals; EXECUTED when every item is blocked or already blocked,
REJECTED when none is, PARTIALLY_EXECUTED otherwise. A child that ended without item answers
(failed, or refused before its carrier looked) counts its lines as NOT_FOUND.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import structlog
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.protocol import BROKER_ID, block_items_result

from ._batch_routing import BatchRoute
from ._errors import NotFoundError
from ._events import BrokerEvents, Refused
from ._lifecycle import is_outcome
from ._store import RequestStore

__all__ = ["BatchOutcomes", "batch_children", "batch_split", "child_key", "parent_result"]

log = structlog.get_logger(__name__)

_OUTCOME_NAMESPACE = uuid.UUID("3c9e2f4a-7b1d-5a6e-8f0c-1d2e3f4a5b6c")


def batch_split(route: BatchRoute, items: int, new_id: Callable[[], str]) -> lifecycle_pb2.BatchSplit:
    """The split kept in the parent's status, with a fresh request id for each child."""
    return lifecycle_pb2.BatchSplit(
        items=items,
        unrouted=route.unrouted,
        parts=[
            lifecycle_pb2.BatchPart(carrier=carrier, indexes=indexes, child_id=new_id())
            for carrier, indexes in sorted(route.parts.items())
        ],
    )


def child_key(parent_id: str, carrier: str) -> str:
    """The idempotency key of the child NUMBER_BLOCK of ``parent_id`` to ``carrier``."""
    return f"batch.{parent_id}.{carrier}"


def batch_children(
    parent: lifecycle_pb2.RequestStatus, order: requests_pb2.NumberBlock
) -> list[tuple[lifecycle_pb2.BatchPart, requests_pb2.Request]]:
    """Each carrier's child order: its lines, the parent's scope, one hop further."""
    children = []
    for part in parent.batch_split.parts:
        child = requests_pb2.Request(
            case_ref=parent.case_ref,
            priority=parent.priority,
            recipient=part.carrier,
            parent_id=parent.id,
            hop=parent.hop + 1,
            number_block=requests_pb2.NumberBlock(
                phones=[order.phones[i] for i in part.indexes], scope=order.scope, unblock=order.unblock
            ),
        )
        children.append((part, child))
    return children


def parent_result(
    split: lifecycle_pb2.BatchSplit, children: dict[str, lifecycle_pb2.RequestStatus]
) -> results_pb2.Result:
    """The parent's answer from its children's (``children``: by child id, each with an outcome)."""
    states = [results_pb2.BLOCK_ITEM_STATE_UNSPECIFIED] * split.items
    for index in split.unrouted:
        states[index] = results_pb2.BLOCK_ITEM_STATE_NOT_OURS
    for part in split.parts:
        answered = {item.index: item.state for item in children[part.child_id].result.block.items}
        for position, index in enumerate(part.indexes):
            states[index] = answered.get(position, results_pb2.BLOCK_ITEM_STATE_NOT_FOUND)
    result = block_items_result(states)
    result.detail = {
        common_pb2.REQUEST_STATE_EXECUTED: "every line blocked by its carrier",
        common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED: "some lines blocked; the others were not found or no"
        " carrier serves them",
    }.get(result.outcome, "no line blocked")
    return result


class BatchOutcomes:
    """Outcome hook: a split batch's child answered; once all have, record the parent's outcome."""

    def __init__(self, *, requests: RequestStore, broker_events: BrokerEvents) -> None:
        self._requests = requests
        self._events = broker_events

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        if status.type != common_pb2.REQUEST_TYPE_NUMBER_BLOCK or not status.parent_id:
            return
        try:
            parent = (await self._requests.get(status.parent_id)).status
        except NotFoundError:
            return
        if parent.recipient != BROKER_ID or not parent.HasField("batch_split") or is_outcome(parent.state):
            return
        children: dict[str, lifecycle_pb2.RequestStatus] = {}
        for part in parent.batch_split.parts:
            try:
                child = (await self._requests.get(part.child_id)).status
            except NotFoundError:
                return  # not stored yet: its own outcome comes later and finishes the parent
            if not is_outcome(child.state):
                return
            children[part.child_id] = child
        # Each child writes its outcome before its hook reads the others: the last one sees all.
        result = parent_result(parent.batch_split, children)
        try:
            await self._events.emit(
                parent.id,
                result.outcome,
                reason=result.reason,
                detail=result.detail,
                result=result,
                event_id=str(uuid.uuid5(_OUTCOME_NAMESPACE, parent.id)),
            )
        except Refused as refused:
            # E.g. the police cancelled the parent before the children were answered.
            log.info("batch.outcome_not_recorded", request_id=parent.id, reason=refused.reason)
            return
        log.info(
            "batch.outcome_recorded",
            request_id=parent.id,
            case=parent.case_ref.case_number,
            outcome=common_pb2.RequestState.Name(result.outcome),
            blocked=result.block.totals.blocked,
            items=parent.batch_split.items,
        )
