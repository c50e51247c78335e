"""What an adapter says back: signed lifecycle events and dead-letter records.

Event ids are deterministic, so a redelivered request re-publishes the ids it published before
and both the ``Nats-Msg-Id`` deduplication of GC_EVENTS and the broker's idempotency absorb it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2

from broker.protocol import (
    BROKER_ID,
    EVENT_TYPE,
    Clock,
    KeyStore,
    ManualClock,
    SigningKey,
    VerificationError,
    reason_name,
    sign_message,
    state_name,
    to_timestamp,
    verify_event,
)

__all__ = [
    "EVENT_ID_NAMESPACE",
    "build_event",
    "deadletter_record",
    "event_id_for",
    "reason_name",
    "refusal_event_id",
    "replayable",
    "state_name",
]

EVENT_ID_NAMESPACE = uuid.UUID("17f64cc0-4db2-52ba-95ab-2b82a16a3c3e")
"""uuid5 namespace of adapter event ids.

Itself ``uuid5(NAMESPACE_URL, "urn:greenchannel:v1:lifecycle-event")``; fixed for good, since
changing it would give every redelivered request new event ids.
"""


def event_id_for(request_id: str, state: common_pb2.RequestState.ValueType) -> str:
    """``uuid5(EVENT_ID_NAMESPACE, "<request id>/<STATE>")``: one id per request and state."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{request_id}/{state_name(state)}"))


def refusal_event_id(request_id: str, request_digest: str) -> str:
    """Id of the FAILED event for a message that did not verify, bound to the bytes received.

    A message that fails verification only *claims* its request id. Were its FAILED event keyed
    by (request id, FAILED) alone, a forged copy of a real request would take the id of that
    request's own FAILED event and the genuine one would be dropped as a duplicate; keyed by the
    digest as well, the forgery gets an id of its own, still stable across redeliveries.
    """
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, f"{request_id}/FAILED/{request_digest}"))


def build_event(
    *,
    event_id: str,
    request_id: str,
    state: common_pb2.RequestState.ValueType,
    actor: str,
    at: datetime,
    request_digest: str,
    reason: results_pb2.ReasonCode.ValueType = results_pb2.REASON_CODE_UNSPECIFIED,
    detail: str = "",
    result: results_pb2.Result | None = None,
) -> lifecycle_pb2.LifecycleEvent:
    event = lifecycle_pb2.LifecycleEvent(
        event_id=event_id,
        request_id=request_id,
        state=state,
        actor=actor,
        at=to_timestamp(at),
        request_digest=request_digest,
        reason=reason,
        detail=detail,
    )
    if result is not None:
        event.result.CopyFrom(result)
    return event


# sign_event's lifetime. A replay must still verify when the broker reads it, so a recorded
# event re-published with less than _REPLAY_MARGIN left is signed again.
_EVENT_TTL = timedelta(minutes=30)
_REPLAY_MARGIN = timedelta(minutes=5)


def replayable(stored: bytes, *, key: SigningKey, keys: KeyStore, clock: Clock) -> bytes:
    """A recorded signed event, ready to publish again.

    The recorded bytes as they are while their signature stays valid for a few more minutes;
    otherwise (a redelivery after a long NATS outage, a rotated key) the very same event bytes
    under a fresh signature, so the broker does not refuse the only answer it may ever get.
    """
    signed = envelope_pb2.SignedMessage.FromString(stored)
    try:
        verify_event(signed, keys=keys, clock=ManualClock(clock.now() + _REPLAY_MARGIN))
    except VerificationError:
        event = lifecycle_pb2.LifecycleEvent.FromString(signed.payload)
        return sign_message(
            signed.payload,
            key=key,
            issuer=event.actor,
            audience=BROKER_ID,
            message_type=EVENT_TYPE,
            clock=clock,
            jti=event.event_id,
            ttl=_EVENT_TTL,
        ).SerializeToString()
    return stored


def deadletter_record(
    *,
    agency: str,
    reason: str,
    error: str,
    at: datetime,
    stream: str,
    stream_seq: int,
    subject: str,
    deliveries: int,
    request_id: str | None,
    fields: Sequence[str] = (),
) -> bytes:
    """A small JSON record for an operator. Ids, names of errors and field paths only: no content.

    ``subject`` is the inbox subject, whose tokens are the agency, the priority and the type;
    ``fields`` are the paths of broken field rules, never their values.
    """
    record = {
        "agency": agency,
        "request_id": request_id,
        "reason": reason,
        "error": error,
        "fields": list(fields),
        "stream": stream,
        "stream_seq": stream_seq,
        "subject": subject,
        "deliveries": deliveries,
        "at": at.isoformat(),
    }
    return json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
