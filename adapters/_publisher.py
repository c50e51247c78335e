"""Signed events and dead letters out of the adapter, each published with its ``Nats-Msg-Id``.

A request's progress events (today only ACKNOWLEDGED, and only for a slow agency system: see
``_acknowledge``) go out back to back on the one connection with their PubAcks awaited together;
JetStream stores the publishes of one connection to one stream in the order sent, and the outcome
is published only after those PubAcks came back, so the broker reads progress < outcome.
"""

from __future__ import annotations

import asyncio

import nats.errors
import structlog
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2
from nats.aio.msg import Msg
from nats.js.api import PubAck
from nats.js.client import JetStreamContext

from broker.protocol import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    Clock,
    OpenedEnvelope,
    Registry,
    SigningKey,
    deadletter_subject,
    event_subject,
    nats_error,
    reason_name,
    sign_event,
)

from ._errors import AdapterError
from ._events import build_event, deadletter_record, event_id_for, refusal_event_id, replayable
from ._idempotency import ExecutionRecord
from ._opening import claimed_request_id, received_digest

__all__ = ["EventPublisher"]

_log = structlog.get_logger(__name__)

_FAILED = common_pb2.REQUEST_STATE_FAILED


class EventPublisher:
    """Signs and publishes one agency's events and dead letters."""

    def __init__(
        self,
        js: JetStreamContext,
        *,
        agency_id: str,
        signing_key: SigningKey,
        registry: Registry,
        clock: Clock,
        publish_timeout: float,
    ) -> None:
        self._js = js
        self._agency_id = agency_id
        self._key = signing_key
        self._registry = registry
        self._clock = clock
        self._timeout = publish_timeout

    def sign(self, event: lifecycle_pb2.LifecycleEvent) -> bytes:
        return sign_event(event, key=self._key, clock=self._clock).SerializeToString()

    def build(
        self,
        request_id: str,
        state: common_pb2.RequestState.ValueType,
        digest: str,
        *,
        result: results_pb2.Result | None = None,
        event_id: str | None = None,
    ) -> lifecycle_pb2.LifecycleEvent:
        """This agency's event of ``request_id`` now; an outcome carries its ``result`` (reason, detail)."""
        return build_event(
            event_id=event_id or event_id_for(request_id, state),
            request_id=request_id,
            state=state,
            actor=self._agency_id,
            at=self._clock.now(),
            request_digest=digest,
            reason=result.reason if result is not None else results_pb2.REASON_CODE_UNSPECIFIED,
            detail=result.detail if result is not None else "",
            result=result,
        )

    async def event(self, request_id: str, signed: bytes, event_id: str) -> None:
        """Publish one signed event of ``request_id``."""
        subject = event_subject(self._agency_id, request_id)
        await self._publish(subject, signed, event_id, stream=EVENTS_STREAM)

    async def states(
        self, opened: OpenedEnvelope, digest: str, *states: common_pb2.RequestState.ValueType
    ) -> None:
        """Publish progress events of ``opened`` in this order; return once all are PubAck'ed."""
        request_id = opened.header.id
        batch: list[tuple[bytes, str]] = []
        for state in states:
            event = self.build(request_id, state, digest)
            batch.append((self.sign(event), event.event_id))
        await self._publish_in_order(event_subject(self._agency_id, request_id), batch, stream=EVENTS_STREAM)

    async def terminal(self, record: ExecutionRecord) -> None:
        """Publish the recorded terminal event: the same id, and the same bytes while they verify."""
        if record.terminal_event is None or record.event_id is None:
            raise AdapterError(f"request {record.request_id} has no terminal event recorded")
        data = replayable(record.terminal_event, key=self._key, keys=self._registry, clock=self._clock)
        if data != record.terminal_event:
            _log.info("adapter.terminal_event_resigned", event_id=record.event_id)
        await self.event(record.request_id, data, record.event_id)

    async def refusal(
        self,
        msg: Msg,
        envelope: envelope_pb2.Envelope | None,
        reason: results_pb2.ReasonCode.ValueType,
        *,
        error: str,
        fields: list[str] | None = None,
    ) -> None:
        """A message that did not verify: answered FAILED if it names a request, and dead-lettered."""
        request_id = claimed_request_id(envelope, msg)
        _log.warning(
            "adapter.refused",
            claimed_request_id=request_id,
            reason=reason_name(reason),
            error_type=error,
        )
        if envelope is not None and request_id is not None:
            digest = received_digest(envelope)
            detail = f"the message did not verify ({error}); nothing was executed"
            result = results_pb2.Result(outcome=_FAILED, reason=reason, detail=detail)
            event = self.build(
                request_id, _FAILED, digest, result=result, event_id=refusal_event_id(request_id, digest)
            )
            await self.event(request_id, self.sign(event), event.event_id)
        await self.deadletter(msg, request_id, reason_name(reason), error, fields=fields or [])

    async def deadletter(
        self,
        msg: Msg,
        request_id: str | None,
        reason: str,
        error: str,
        *,
        fields: list[str] | None = None,
    ) -> None:
        """The operator's record of an inbox message the adapter could not answer as asked."""
        metadata = msg.metadata
        record = deadletter_record(
            agency=self._agency_id,
            reason=reason,
            error=error,
            at=self._clock.now(),
            stream=metadata.stream,
            stream_seq=metadata.sequence.stream,
            subject=msg.subject,
            deliveries=metadata.num_delivered,
            request_id=request_id,
            fields=fields or [],
        )
        # One record per inbox message, however often it is redelivered.
        msg_id = f"deadletter/{self._agency_id}/{metadata.stream}/{metadata.sequence.stream}"
        await self._publish(deadletter_subject(self._agency_id), record, msg_id, stream=DEADLETTER_STREAM)

    async def _publish(self, subject: str, data: bytes, msg_id: str, *, stream: str) -> None:
        try:
            ack = await self._js.publish(
                subject, data, timeout=self._timeout, stream=stream, headers={"Nats-Msg-Id": msg_id}
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, f"publish to {subject}") from exc
        if ack.duplicate:
            _log.debug("adapter.publish_deduplicated", subject=subject, msg_id=msg_id)

    async def _publish_in_order(self, subject: str, batch: list[tuple[bytes, str]], *, stream: str) -> None:
        """Publish ``(data, msg_id)`` pairs to ``subject`` in order, awaiting their PubAcks together.

        ``publish_async`` returns once a message is in this connection's write buffer, so each one
        is sent after the one before; the server stores the publishes of one connection to one
        stream in the order they arrive. One round trip for all of them instead of one each.
        """
        acks: list[asyncio.Future[PubAck]] = []
        try:
            for data, msg_id in batch:
                headers = {"Nats-Msg-Id": msg_id}
                acks.append(await self._js.publish_async(subject, data, stream=stream, headers=headers))
            async with asyncio.timeout(self._timeout):
                results = await asyncio.gather(*acks)
        except (nats.errors.Error, TimeoutError) as exc:
            for ack in acks:
                ack.cancel()  # also drops it from the context's table of pending acks
            raise nats_error(exc, f"publish to {subject}") from exc
        for (_data, msg_id), result in zip(batch, results, strict=True):
            if result.duplicate:
                _log.debug("adapter.publish_deduplicated", subject=subject, msg_id=msg_id)
