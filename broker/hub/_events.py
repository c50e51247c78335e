"""Apply the lifecycle events adapters send back, after verifying each one.

One durable pull consumer on GC_EVENTS, shared by every broker replica (JetStream hands each
event to one of them). An event changes a request only if it is signed by the agency it names,
was published on that agency's subject, is bound to the request's body digest, and is a legal
next step; anything else is refused, recorded, and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol

import nats.errors
import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from broker.protocol import (
    BROKER_ID,
    EVENTS_STREAM,
    EXECUTED_STATES,
    HOLD_TYPES,
    Clock,
    ConsumerLoop,
    ConsumerSpec,
    ProtocolError,
    Registry,
    SigningKey,
    deadletter_subject,
    events_filter,
    new_uuid7,
    sign_event,
    subject_token,
    to_timestamp,
    verify_event,
)

from ._errors import IllegalTransitionError, NotFoundError
from ._item_lifts import PartyRequests, items_left_blocked
from ._ledger import LedgerWriter
from ._lifecycle import is_outcome, next_state
from ._metrics import BrokerMetrics
from ._store import RequestStore
from ._timers import DeadlineScheduler
from ._trail import TrailChaser, TrailNotReadyError

__all__ = [
    "EVENTS_CONSUMER",
    "BrokerEvents",
    "EventHook",
    "EventProcessor",
    "EventProcessorConfig",
    "HoldLifecycle",
    "OutcomeHook",
    "Refused",
    "apply_event",
]

log = structlog.get_logger(__name__)

EVENTS_CONSUMER = "broker-events"

_PHASE_DONE_BY: dict[common_pb2.Phase.ValueType, int] = {
    common_pb2.PHASE_DELIVER: 2,  # DELIVERED or anything after it
    common_pb2.PHASE_ACKNOWLEDGE: 3,
    common_pb2.PHASE_EXECUTE: 4,
}
_PROGRESS: dict[common_pb2.RequestState.ValueType, int] = {
    common_pb2.REQUEST_STATE_SUBMITTED: 1,
    common_pb2.REQUEST_STATE_DELIVERED: 2,
    common_pb2.REQUEST_STATE_ACKNOWLEDGED: 3,
}
# Events about what the adapter could not even verify carry the digest of what it received.
_UNVERIFIED_REASONS: set[results_pb2.ReasonCode.ValueType] = {
    results_pb2.REASON_CODE_SIGNATURE_INVALID,
    results_pb2.REASON_CODE_INVALID_REQUEST,
}


@dataclass(frozen=True, kw_only=True)
class EventProcessorConfig:
    """How the broker consumes events."""

    batch: int = 64
    """Events fetched per pull."""
    fetch_timeout: float = 1.0
    """Seconds a pull waits when there is nothing to do."""
    ack_wait: float = 6.0
    """Seconds before an event a dead replica held goes to another; held ones are kept alive."""
    concurrency: int = 64
    """Events applied at once (each is a few round trips); one request's stay in order."""
    unknown_request_retries: int = 5
    """How often an event for a request not (yet) stored is put back before it is refused."""
    unknown_request_delay: float = 0.5
    """Seconds before such an event is offered again."""


class OutcomeHook(Protocol):
    """What a request's outcome sets off (hold timers, the chase, a return's settlement, an appeal's
    lifting order); idempotent, raises to have the outcome processed again."""

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None: ...


class EventHook(Protocol):
    """What any applied event of a request sets off (case linkage, once per request); idempotent,
    raises to have the event processed again."""

    async def after_event(self, status: lifecycle_pb2.RequestStatus) -> None: ...


class Refused(Exception):
    """An event that must not change anything; recorded with its reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def _progress(state: common_pb2.RequestState.ValueType) -> int:
    if state in _PROGRESS:
        return _PROGRESS[state]
    return 4 if is_outcome(state) else 0


def apply_event(
    status: lifecycle_pb2.RequestStatus,
    event: lifecycle_pb2.LifecycleEvent,
    signed: envelope_pb2.SignedMessage,
    *,
    now: datetime,
) -> lifecycle_pb2.RequestStatus | None:
    """The new status after ``event``, or None when it was applied before. Raises Refused."""
    if any(_event_id(recorded) == event.event_id for recorded in status.events):
        return None
    header = envelope_pb2.EnvelopeHeader.FromString(status.notarized_header)
    if event.request_digest != header.body_digest:
        if event.state == common_pb2.REQUEST_STATE_FAILED and event.reason in _UNVERIFIED_REASONS:
            # The adapter refused a copy that is not the body we notarized: someone put a forged
            # message on its inbox under this request's id. Recorded, but the genuine request is
            # untouched, or a forger could fail any request by id.
            raise Refused("FORGED_COPY", "the recipient refused a forged copy of this request")
        raise Refused("DIGEST_MISMATCH", "event is bound to another request body")
    if _is_late_step(status, event):
        # A genuine step that arrived after a later one (two replicas took one request's events,
        # or a redelivery overtook it): the timeline gets it, the state does not go back.
        state = status.state
    else:
        try:
            state = next_state(
                status.state,
                event.state,
                actor=event.actor,
                sender=status.sender,
                recipient=status.recipient,
                request_type=status.type,
            )
        except IllegalTransitionError as exc:
            raise Refused(exc.reason, str(exc)) from exc
    updated = lifecycle_pb2.RequestStatus()
    updated.CopyFrom(status)
    updated.state = state
    updated.updated_at.CopyFrom(to_timestamp(now))
    updated.events.append(
        lifecycle_pb2.RecordedEvent(event=signed, recorded_at=to_timestamp(now), seq=len(status.events) + 1)
    )
    if event.reason:
        updated.reason = event.reason
    if event.HasField("result"):
        updated.result.CopyFrom(event.result)
    if event.state == common_pb2.REQUEST_STATE_ESCALATED:
        for phase in updated.deadlines.phases:
            if phase.phase == event.phase:
                phase.breached = True
    reached = _progress(event.state)
    for phase in updated.deadlines.phases:
        if not phase.HasField("done_at") and reached >= _PHASE_DONE_BY.get(phase.phase, 99):
            phase.done_at.CopyFrom(event.at)
    return updated


def _is_late_step(status: lifecycle_pb2.RequestStatus, event: lifecycle_pb2.LifecycleEvent) -> bool:
    """DELIVERED or ACKNOWLEDGED from the recipient, behind the request's progress, and not yet in
    its timeline. A step the timeline already has is a straggler and refused (``OUT_OF_ORDER``),
    so a recipient cannot grow a request's record without bound."""
    if event.state not in _PROGRESS or event.actor != status.recipient:
        return False
    if _progress(status.state) <= _PROGRESS[event.state]:
        return False
    return all(
        lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload).state != event.state
        for recorded in status.events
    )


def _event_id(recorded: lifecycle_pb2.RecordedEvent) -> str:
    return lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload).event_id


class BrokerEvents:
    """Steps the broker itself takes (cancellation, escalation, expiry): signed by the broker key,
    checked by the same state machine and logged exactly like adapters' events."""

    def __init__(self, *, requests: RequestStore, broker_key: SigningKey, clock: Clock) -> None:
        self._requests = requests
        self._broker_key = broker_key
        self._clock = clock

    async def emit(
        self,
        request_id: str,
        state: common_pb2.RequestState.ValueType,
        *,
        reason: results_pb2.ReasonCode.ValueType = results_pb2.REASON_CODE_UNSPECIFIED,
        detail: str = "",
        phase: common_pb2.Phase.ValueType = common_pb2.PHASE_UNSPECIFIED,
        event_id: str | None = None,
        also: Callable[[lifecycle_pb2.RequestStatus], None] | None = None,
        result: results_pb2.Result | None = None,
        ruling: envelope_pb2.SignedMessage | None = None,
    ) -> lifecycle_pb2.RequestStatus:
        """Apply a broker event; raises Refused when the state machine does not allow it now.

        ``event_id`` makes the step idempotent when the same cause can be handled twice (a timer
        redelivered after a crash): the second application finds the id and changes nothing.
        ``also`` changes more of the status in the same compare-and-set (e.g. a new hold expiry).
        ``result`` and ``ruling``: an outcome the broker records (an appeal's decision, with the
        police's signed ruling it was made from).
        """
        current = (await self._requests.get(request_id)).status
        now = self._clock.now()
        event = lifecycle_pb2.LifecycleEvent(
            event_id=event_id or new_uuid7(self._clock),
            request_id=request_id,
            state=state,
            actor=BROKER_ID,
            at=to_timestamp(now),
            request_digest=envelope_pb2.EnvelopeHeader.FromString(current.notarized_header).body_digest,
            reason=reason,
            detail=detail,
            phase=phase,
        )
        if result is not None:
            event.result.CopyFrom(result)
        if ruling is not None:
            event.ruling.CopyFrom(ruling)
        signed = sign_event(event, key=self._broker_key, clock=self._clock)

        def change(stored: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus | None:
            updated = apply_event(stored, event, signed, now=now)
            if updated is not None and also is not None:
                also(updated)
            return updated

        # One write: the request's new state, its Watch record and the ledger's source.
        return await self._requests.update(request_id, change)


class EventProcessor:
    """Consumes GC_EVENTS; an async context manager running one consume loop."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        registry: Registry,
        requests: RequestStore,
        clock: Clock,
        config: EventProcessorConfig | None = None,
        holds: HoldLifecycle | None = None,
        trail: TrailChaser | None = None,
        ledger: LedgerWriter | None = None,
        returns: OutcomeHook | None = None,
        appeals: OutcomeHook | None = None,
        follow_ups: OutcomeHook | None = None,
        batches: OutcomeHook | None = None,
        dissuasions: OutcomeHook | None = None,
        linkage: EventHook | None = None,
        metrics: BrokerMetrics | None = None,
    ) -> None:
        self._linkage = linkage
        self._dissuasions = dissuasions
        self._metrics = metrics or BrokerMetrics()
        self._batches = batches
        self._returns = returns
        self._appeals = appeals
        self._follow_ups = follow_ups
        self._holds = holds
        self._trail = trail
        self._ledger = ledger
        self._js = js
        self._registry = registry
        self._requests = requests
        self._clock = clock
        self._config = config or EventProcessorConfig()
        self._loop = ConsumerLoop(
            js,
            ConsumerSpec(
                name=EVENTS_CONSUMER,
                stream=EVENTS_STREAM,
                filter_subject=events_filter(),
                batch=self._config.batch,
                fetch_timeout=self._config.fetch_timeout,
                ack_wait=self._config.ack_wait,
                concurrency=self._config.concurrency,
            ),
            self.handle,
            key=subject_token(3),  # gc.events.<agency>.<request_id>
            observer=self._metrics.consumers,
        )

    async def __aenter__(self) -> EventProcessor:
        await self._loop.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop pulling; the events in hand are finished first, then the loop ends."""
        await self._loop.aclose()

    @property
    def consumer(self) -> ConsumerLoop:
        return self._loop

    async def handle(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        subject_agency, subject_request = (tokens[2], tokens[3]) if len(tokens) == 4 else ("", "")
        try:
            signed = envelope_pb2.SignedMessage.FromString(msg.data)
            event, _claims = verify_event(signed, keys=self._registry, clock=self._clock)
        except (ProtocolError, DecodeError) as exc:
            await self._refuse(msg, subject_agency, subject_request, "UNVERIFIABLE", type(exc).__name__)
            return
        if event.actor != subject_agency or event.request_id != subject_request:
            await self._refuse(
                msg, subject_agency, subject_request, "WRONG_SUBJECT", "subject and event disagree"
            )
            return
        now = self._clock.now()
        try:
            status = await self._requests.update(
                event.request_id, lambda current: apply_event(current, event, signed, now=now)
            )
        except NotFoundError:
            if (msg.metadata.num_delivered or 1) <= self._config.unknown_request_retries:
                # The submit may still be storing the request on another replica.
                await msg.nak(delay=self._config.unknown_request_delay)
                return
            await self._refuse(msg, event.actor, event.request_id, "UNKNOWN_REQUEST", "no such request")
            return
        except Refused as refused:
            await self._refuse(msg, event.actor, event.request_id, refused.reason, str(refused))
            return
        # The update was the one write (state, Watch record, ledger source); a redelivered event
        # finds its id in the timeline and writes nothing.
        if self._linkage is not None and not is_outcome(event.state):
            await self._linkage.after_event(status)  # nothing else to set off
        if is_outcome(event.state):
            hooks: list[OutcomeHook] = [
                hook
                for hook in (
                    self._holds,
                    self._trail,
                    self._returns,
                    self._appeals,
                    self._follow_ups,
                    self._batches,
                    self._dissuasions,
                )
                if hook is not None
            ]
            work: list[Coroutine[Any, Any, None]] = [hook.after_outcome(status) for hook in hooks]
            if self._linkage is not None:
                work.append(self._linkage.after_event(status))
            # Case linkage, the hold's timers, the chase of its onward transfers, a return's
            # settlement and its victim follow-ups, an appeal's lifting order, a split batch's
            # answer and a failed warning's in-person dissuasion are independent and idempotent:
            # side by side, and all again if any fails.
            outcomes = await asyncio.gather(*work, return_exceptions=True)
            failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
            if any(isinstance(failure, TrailNotReadyError) for failure in failures):
                await msg.nak(delay=self._config.unknown_request_delay)
                return
            if failures:
                raise failures[0]
        await msg.ack()
        log.info(
            "request.event_applied",
            request_id=event.request_id,
            actor=event.actor,
            state=common_pb2.RequestState.Name(event.state),
            now_state=common_pb2.RequestState.Name(status.state),
        )

    async def _refuse(self, msg: Msg, actor: str, request_id: str, reason: str, detail: str) -> None:
        """Record a refused event and drop it: it must not be redelivered or change anything."""
        record = {
            "kind": "event_refused",
            "reason": reason,
            "detail": detail,
            "actor": actor,
            "request_id": request_id,
            "stream_seq": msg.metadata.sequence.stream,
            "at": self._clock.now().isoformat(),
        }
        log.warning("request.event_refused", reason=reason, actor=actor, request_id=request_id)
        self._metrics.event_refused(reason)
        if self._ledger is not None:
            await self._ledger.record_rejection(
                record_id=f"rejection:{msg.metadata.sequence.stream}",
                actor=actor,
                request_id=request_id,
                refused=msg.data,
                at=self._clock.now(),
            )
        try:
            await self._js.publish(deadletter_subject(BROKER_ID), json.dumps(record).encode())
        except nats.errors.Error:
            log.exception("events.refusal_not_recorded")
            return  # not termed: redelivered and recorded on a later attempt
        await msg.term()


_FOLLOW_UP_NAMESPACE = uuid.UUID("6a0f4b8e-2c1d-5e7f-9a3b-4c5d6e7f8a9b")


def _holds_rest(result: results_pb2.Result) -> bool:
    """A release that lifted only part of a hold: the bank says money stays held, so the hold stays
    active (its amount_released is what the next release and a return count against)."""
    return result.amount_held.minor_units > 0 or result.amount_frozen.minor_units > 0


class HoldLifecycle:
    """What an outcome means for holds: a placed hold starts its expiry timer; an executed
    extension, release or conversion changes the hold it targets. Every step has a stable event
    id, so an outcome processed twice changes the target once. A release of one item of a batch
    number block (an appeal) releases the batch only once every item it blocked is lifted
    (``cases``: where the broker finds the other item lifts)."""

    def __init__(
        self,
        *,
        requests: RequestStore,
        broker_events: BrokerEvents,
        scheduler: DeadlineScheduler,
        cases: PartyRequests | None = None,
    ) -> None:
        self._requests = requests
        self._events = broker_events
        self._scheduler = scheduler
        self._cases = cases

    async def _restricts_rest(self, release: lifecycle_pb2.RequestStatus) -> bool:
        """An executed release that leaves part of its target in effect: money still held, or
        lines of a batch still blocked."""
        return _holds_rest(release.result) or await items_left_blocked(
            release, requests=self._requests, cases=self._cases
        )

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        if status.type in HOLD_TYPES and status.state in EXECUTED_STATES:
            await self._scheduler.schedule_expiry(status)
        if not status.target_id or status.state not in EXECUTED_STATES:
            return
        step = str(uuid.uuid5(_FOLLOW_UP_NAMESPACE, f"{status.id}/{status.target_id}"))
        try:
            if status.type == common_pb2.REQUEST_TYPE_EXTEND:
                new_end = status.deadlines.hold_expires_at
                if status.result.HasField("hold_until"):
                    new_end = status.result.hold_until

                def extend(target: lifecycle_pb2.RequestStatus) -> None:
                    target.deadlines.hold_expires_at.CopyFrom(new_end)

                target = await self._events.emit(
                    status.target_id,
                    common_pb2.REQUEST_STATE_EXTENDED,
                    detail=f"extended by {status.id}",
                    event_id=step,
                    also=extend,
                )
                await self._scheduler.schedule_expiry(target)
            elif status.type == common_pb2.REQUEST_TYPE_RELEASE and not await self._restricts_rest(status):
                await self._events.emit(
                    status.target_id,
                    common_pb2.REQUEST_STATE_RELEASED,
                    detail=f"released by {status.id}",
                    event_id=step,
                )
            elif status.type == common_pb2.REQUEST_TYPE_FREEZE:
                await self._events.emit(
                    status.target_id,
                    common_pb2.REQUEST_STATE_RELEASED,
                    reason=results_pb2.REASON_CODE_CONVERTED,
                    detail=f"converted into freeze {status.id}",
                    event_id=step,
                )
        except Refused as refused:
            # E.g. the hold lapsed (EXPIRED is final) before the bank executed the release.
            log.info(
                "hold.follow_up_refused", request_id=status.id, target=status.target_id, reason=refused.reason
            )
