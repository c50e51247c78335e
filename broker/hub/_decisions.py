"""A party's signed decision recorded as a request's outcome, once: the police's ruling on an appeal
(``DecideAppeal``), their feedback on a fraud report (``GiveFeedback``).

The broker records the decision as the request's EXECUTED event, with the signed decision in the
event (``LifecycleEvent.ruling``), under an event id derived from the request and the decision's
JWS id: the same signed decision sent again finds its event and is answered as the outcome it
made; another decision, while or after the first is recorded, is refused and stores nothing.
"""

from __future__ import annotations

from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2

from broker.protocol import type_name

from ._auth import Caller
from ._errors import IllegalTransitionError, PermissionDeniedError
from ._events import BrokerEvents, Refused
from ._open_appeals import OPEN_APPEAL_STATES
from ._store import RequestStore

__all__ = ["decided_request", "record_decision", "recorded_event", "ruling_of"]


async def decided_request(
    requests: RequestStore,
    caller: Caller,
    request_id: str,
    *,
    request_type: common_pb2.RequestType.ValueType,
    what: str,
    not_recipient: str,
    not_type: str,
) -> lifecycle_pb2.RequestStatus:
    """The request a caller's decision is about: addressed to the caller (``not_recipient``
    otherwise; checked first, so an agency learns nothing about requests not addressed to it) and
    of ``request_type`` (``not_type`` otherwise). ``what``: "an appeal", "a fraud report"."""
    status = (await requests.get(request_id)).status
    if status.recipient != caller.agency.id:
        raise PermissionDeniedError(
            f"only the agency {what} is addressed to may decide it", reason=not_recipient
        )
    if status.type != request_type:
        raise IllegalTransitionError(
            f"the request is a {type_name(status.type)}, not {what}", reason=not_type
        )
    return status


def recorded_event(status: lifecycle_pb2.RequestStatus, event_id: str) -> lifecycle_pb2.RecordedEvent | None:
    """The event ``event_id`` in the request's timeline, or None (a decision recorded or not)."""
    for recorded in status.events:
        if lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload).event_id == event_id:
            return recorded
    return None


def ruling_of(status: lifecycle_pb2.RequestStatus) -> envelope_pb2.SignedMessage | None:
    """The signed decision recorded as the request's outcome, or None (not decided yet)."""
    for recorded in status.events:
        event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        if event.state == common_pb2.REQUEST_STATE_EXECUTED and event.HasField("ruling"):
            return event.ruling
    return None


async def record_decision(
    events: BrokerEvents,
    request: lifecycle_pb2.RequestStatus,
    *,
    event_id: str,
    result: results_pb2.Result,
    signed: envelope_pb2.SignedMessage,
    what: str,
    reason: str,
) -> tuple[lifecycle_pb2.RequestStatus, bool]:
    """Record ``result`` (EXECUTED) from the ``signed`` decision as the request's outcome, once; the
    status and whether this call recorded it. A request decided otherwise raises
    :class:`IllegalTransitionError` with ``reason`` (``what``: "appeal", "fraud report")."""
    if request.state not in OPEN_APPEAL_STATES:
        if recorded_event(request, event_id) is None:
            raise IllegalTransitionError(
                f"the {what} is no longer open (it is {common_pb2.RequestState.Name(request.state)}):"
                " it is decided once",
                reason=reason,
            )
        return request, False  # this very decision, sent again: answered as the outcome it made
    try:
        status = await events.emit(
            request.id,
            common_pb2.REQUEST_STATE_EXECUTED,
            detail=result.detail,
            event_id=event_id,
            result=result,
            ruling=signed,
        )
    except Refused as refused:
        # Another decision was recorded in between.
        raise IllegalTransitionError(
            f"the {what} was decided meanwhile: it is decided once", reason=reason
        ) from refused
    if recorded_event(status, event_id) is None:
        raise IllegalTransitionError(f"the {what} was decided meanwhile: it is decided once", reason=reason)
    return status, True
