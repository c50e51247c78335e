"""What happens when a deadline timer fires: reminders, breaches with escalation, holds that lapse.

One durable consumer on the fired timers, shared by the broker replicas. Every step is
idempotent (its event id derives from the timer), so a timer handled twice after a crash is
recorded once. A timer whose phase is done, whose request is final, or whose deadline has moved
since it was set does nothing but set the next rung of the ladder.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta
from types import TracebackType
from typing import Protocol

import nats.errors
import structlog
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from broker.protocol import (
    BROKER_ID,
    DEADLINES_STREAM,
    HOLDING_STATES,
    Clock,
    ConsumerLoop,
    ConsumerSpec,
    Registry,
    SigningKey,
    deadline_fired_filter,
    notice_subject,
    sign_message,
    subject_token,
    to_timestamp,
)

from ._errors import NotFoundError, UnavailableError
from ._events import BrokerEvents, EventHook, Refused
from ._lifecycle import is_final
from ._metrics import BrokerMetrics
from ._sla_policy import EscalationLadder
from ._store import RequestStore
from ._timers import DeadlineScheduler, TimerKind, TimerPayload

__all__ = ["DEADLINES_CONSUMER", "DeadlineWatch", "DeadlineWatchConfig", "HoldReleaser"]

log = structlog.get_logger(__name__)

DEADLINES_CONSUMER = "broker-deadlines"
NOTICE_TYPE = "NOTICE"

# Stable ids for the broker's own steps, so a timer handled twice is recorded once.
_STEP_NAMESPACE = uuid.UUID("0d6c1f0e-9a55-5c1b-8f0c-5f2a7b9e3d41")


class HoldReleaser(Protocol):
    """Sends the bank a release for a lapsed hold (the intake does: a broker-signed request)."""

    async def release_lapsed(self, target: lifecycle_pb2.RequestStatus) -> None: ...


@dataclass(frozen=True, kw_only=True)
class DeadlineWatchConfig:
    """How fired timers are consumed."""

    batch: int = 64
    """Timers fetched per pull."""
    fetch_timeout: float = 1.0
    """Seconds a pull waits when nothing fired."""
    ack_wait: float = 6.0
    """Seconds before a timer a dead replica held goes to another; held ones are kept alive."""
    concurrency: int = 32
    """Fired timers handled at once; those of one request stay in order."""


def step_id(payload: TimerPayload) -> str:
    return str(
        uuid.uuid5(_STEP_NAMESPACE, f"{payload.request_id}/{payload.kind}/{payload.phase}/{payload.due_at}")
    )


class DeadlineWatch:
    """Consumes fired timers; an async context manager running one loop."""

    def __init__(
        self,
        *,
        js: JetStreamContext,
        registry: Registry,
        requests: RequestStore,
        broker_events: BrokerEvents,
        scheduler: DeadlineScheduler,
        releaser: HoldReleaser,
        broker_key: SigningKey,
        clock: Clock,
        escalation: EscalationLadder | None = None,
        config: DeadlineWatchConfig | None = None,
        metrics: BrokerMetrics | None = None,
        linkage: EventHook | None = None,
    ) -> None:
        self._linkage = linkage
        self._metrics = metrics or BrokerMetrics()
        self._escalation = escalation or EscalationLadder(reminder_at=0.5)
        self._js = js
        self._registry = registry
        self._requests = requests
        self._events = broker_events
        self._scheduler = scheduler
        self._releaser = releaser
        self._broker_key = broker_key
        self._clock = clock
        self._config = config or DeadlineWatchConfig()
        self._loop = ConsumerLoop(
            js,
            ConsumerSpec(
                name=DEADLINES_CONSUMER,
                stream=DEADLINES_STREAM,
                filter_subject=deadline_fired_filter(),
                batch=self._config.batch,
                fetch_timeout=self._config.fetch_timeout,
                ack_wait=self._config.ack_wait,
                concurrency=self._config.concurrency,
            ),
            self.handle,
            key=subject_token(3),  # gc.deadline.fired.<request_id>.<phase>
            observer=self._metrics.consumers,
        )

    async def __aenter__(self) -> DeadlineWatch:
        await self._loop.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop pulling; the message in hand is finished first (it is short), then the loop ends."""
        await self._loop.aclose()

    @property
    def consumer(self) -> ConsumerLoop:
        return self._loop

    async def handle(self, msg: Msg) -> None:
        try:
            payload = TimerPayload.decode(msg.data)
        except (ValueError, KeyError, TypeError):
            log.warning("deadlines.undecodable_timer", subject=msg.subject)
            await msg.term()
            return
        try:
            status = (await self._requests.get(payload.request_id)).status
        except NotFoundError:
            await msg.ack()
            return
        lateness_ms = (self._clock.now() - payload.fire_at).total_seconds() * 1000
        if self._linkage is not None and status.state == common_pb2.REQUEST_STATE_SUBMITTED:
            # A request its recipient never answered has had no event to link it at: its timer
            # does. Any other state came from an event, which the events consumer linked at.
            await self._linkage.after_event(status)
        if payload.kind == TimerKind.EXPIRY:
            await self._expire(status, payload)
        else:
            await self._phase_timer(status, payload)
        await msg.ack()
        log.debug(
            "deadline.handled", request_id=payload.request_id, kind=payload.kind, lateness_ms=lateness_ms
        )

    async def _phase_timer(self, status: lifecycle_pb2.RequestStatus, payload: TimerPayload) -> None:
        phase = next((p for p in status.deadlines.phases if p.phase == payload.phase_enum), None)
        live = (
            phase is not None
            and not phase.HasField("done_at")
            and phase.due_at.ToDatetime(tzinfo=UTC) == payload.due_at
            and not is_final(status.state, status.type)
            and status.state != common_pb2.REQUEST_STATE_CANCELLED
        )
        if live:
            breach = payload.kind == TimerKind.BREACH
            try:
                status = await self._events.emit(
                    status.id,
                    common_pb2.REQUEST_STATE_ESCALATED if breach else common_pb2.REQUEST_STATE_REMINDED,
                    reason=results_pb2.REASON_CODE_DEADLINE_BREACHED
                    if breach
                    else results_pb2.REASON_CODE_UNSPECIFIED,
                    detail=self._detail(status, payload),
                    phase=payload.phase_enum,
                    event_id=step_id(payload),
                )
            except Refused as refused:
                log.info("deadline.not_recorded", request_id=status.id, reason=refused.reason)
            else:
                self._metrics.deadline("breached" if breach else "reminded", status, payload.phase)
                await self._notify(status, payload)
                log.warning(
                    "deadline.breached" if breach else "deadline.reminder",
                    request_id=status.id,
                    phase=payload.phase,
                    recipient=status.recipient,
                    case=status.case_ref.case_number,
                )
        await self._scheduler.schedule_next(status, after=payload)

    def _detail(self, status: lifecycle_pb2.RequestStatus, payload: TimerPayload) -> str:
        if payload.kind == TimerKind.REMINDER:
            return f"half of the {payload.phase} time is gone; {status.recipient} reminded"
        agency = self._registry.get(status.recipient) if status.recipient in self._registry else None
        if agency is None:
            return f"{payload.phase} deadline breached"
        supervisor = f" and supervisor {agency.supervisor}" if agency.supervisor else ""
        return f"{payload.phase} deadline breached; escalated to duty desk {agency.duty_contact}{supervisor}"

    async def _notify(self, status: lifecycle_pb2.RequestStatus, payload: TimerPayload) -> None:
        """Signed notices to the responsible agency's duty desk and, on a breach, its supervisor."""
        if status.recipient not in self._registry:
            return
        agency = self._registry.get(status.recipient)
        breach = payload.kind == TimerKind.BREACH
        addressees = []
        if not breach or self._escalation.notify_duty_desk:
            addressees.append(agency.id)
        if breach and agency.supervisor and self._escalation.notify_supervisor:
            addressees.append(agency.supervisor)
        for addressee in addressees:
            notice = lifecycle_pb2.EscalationNotice(
                kind=lifecycle_pb2.NOTICE_KIND_BREACH if breach else lifecycle_pb2.NOTICE_KIND_REMINDER,
                request_id=status.id,
                case_number=status.case_ref.case_number,
                phase=payload.phase_enum,
                due_at=to_timestamp(payload.due_at),
                responsible=agency.id,
                duty_contact=agency.duty_contact,
                supervisor=agency.supervisor or "",
                addressee=addressee,
                at=to_timestamp(self._clock.now()),
            )
            signed = sign_message(
                notice.SerializeToString(),
                key=self._broker_key,
                issuer=BROKER_ID,
                audience=addressee,
                message_type=NOTICE_TYPE,
                clock=self._clock,
                ttl=timedelta(days=30),
            )
            try:
                await self._js.publish(
                    notice_subject(addressee),
                    signed.SerializeToString(),
                    headers={"Nats-Msg-Id": f"{step_id(payload)}/{addressee}"},
                )
            except nats.errors.Error as exc:
                raise UnavailableError(f"cannot publish an escalation notice: {exc}") from exc

    async def _expire(self, status: lifecycle_pb2.RequestStatus, payload: TimerPayload) -> None:
        deadlines = status.deadlines
        current = (
            deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
            if deadlines.HasField("hold_expires_at")
            else None
        )
        if status.state not in HOLDING_STATES or current != payload.due_at:
            return  # released, converted, already expired, or extended since this timer was set
        try:
            status = await self._events.emit(
                status.id,
                common_pb2.REQUEST_STATE_EXPIRED,
                reason=results_pb2.REASON_CODE_EXPIRED,
                detail="the hold lapsed at the end of its validity; the bank is told to lift it",
                event_id=step_id(payload),
            )
        except Refused as refused:
            log.info("hold.expiry_not_recorded", request_id=status.id, reason=refused.reason)
            return
        log.info("hold.expired", request_id=status.id, case=status.case_ref.case_number)
        await self._releaser.release_lapsed(status)


def release_request_for(target: lifecycle_pb2.RequestStatus) -> requests_pb2.Request:
    """The broker's release of a lapsed hold: names only the target (the broker holds no account data)."""
    return requests_pb2.Request(
        case_ref=target.case_ref,
        priority=common_pb2.PRIORITY_GREEN,
        recipient=target.recipient,
        parent_id=target.id,
        hop=target.hop,
        release=requests_pb2.Release(
            target_request_id=target.id, reason="hold lapsed at the end of its validity"
        ),
    )
