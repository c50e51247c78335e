"""Watching an overdue request escalate: its execute deadline breached (the broker's ESCALATED
event) and the breach notice its supervisor receives on GC_NOTICES."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2
from nats.js.api import AckPolicy, ConsumerConfig

from broker.client import BusClient
from broker.protocol import NOTICES_STREAM, NatsSettings, connect, fetch_batch
from tests._wait import eventually

__all__ = ["execute_escalated", "supervisor_notices", "supervisor_told"]

S = common_pb2


@contextlib.asynccontextmanager
async def supervisor_notices(settings: NatsSettings, supervisor: str) -> AsyncIterator[Any]:
    """A pull subscription to ``supervisor``'s notices, from now on."""
    nc = await connect(settings)
    try:
        yield await nc.jetstream().pull_subscribe(
            f"gc.notice.{supervisor}",
            durable=f"notices-{uuid.uuid4().hex[:6]}",
            stream=NOTICES_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE),
        )
    finally:
        await nc.drain()


async def execute_escalated(
    client: BusClient, request_id: str, *, what: str, within: float = 30.0
) -> tuple[lifecycle_pb2.RequestStatus, lifecycle_pb2.LifecycleEvent]:
    """Wait until the request's execute deadline is breached; its status then, and the escalation."""

    async def breached() -> bool:
        status = await client.get(request_id)
        return any(p.phase == S.PHASE_EXECUTE and p.breached for p in status.deadlines.phases)

    await eventually(breached, within=within, what=what)
    status = await client.get(request_id)
    escalation = next(
        e
        for e in map(lifecycle_pb2.LifecycleEvent.FromString, (r.event.payload for r in status.events))
        if e.state == S.REQUEST_STATE_ESCALATED and e.phase == S.PHASE_EXECUTE
    )
    return status, escalation


async def supervisor_told(notices: Any, request_id: str, *, what: str) -> None:
    """Wait for the breach notice of the request's execute deadline on ``notices``."""
    told: list[int] = []

    async def arrived() -> bool:
        for msg in await fetch_batch(notices, 50, 0.25):
            notice = lifecycle_pb2.EscalationNotice.FromString(
                envelope_pb2.SignedMessage.FromString(msg.data).payload
            )
            if notice.request_id == request_id and notice.phase == S.PHASE_EXECUTE:
                told.append(notice.kind)
        return lifecycle_pb2.NOTICE_KIND_BREACH in told

    await eventually(arrived, what=what)
