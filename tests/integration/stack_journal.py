"""Looking at a running stack's NATS from a test: the request journal's size, a redelivery, and
whether the broker's events consumer has processed every event so far."""

from __future__ import annotations

import uuid

from agencies.demo import Stack
from broker.hub._events import EVENTS_CONSUMER
from broker.protocol import (
    EVENTS_STREAM,
    INBOX_STREAM,
    WATCH_STREAM,
    NatsSettings,
    connect,
    inbox_consumer,
    inbox_subject,
    status_filter,
)
from tests._wait import eventually

__all__ = ["events_settled", "journal_size", "redeliver_last"]


async def journal_size(stack: Stack) -> int:
    """Requests in the journal: one subject each (events of existing ones do not count)."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-journal"))
    try:
        info = await nc.jetstream().stream_info(WATCH_STREAM, subjects_filter=status_filter())
        return len(info.state.subjects or {})
    finally:
        await nc.drain()


async def redeliver_last(stack: Stack, agency: str, kind: str) -> None:
    """Put the agency's last GREEN ``kind`` request on its inbox again, as a redelivery would; wait
    until its adapter answered."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-redeliver"))
    try:
        js = nc.jetstream()
        subject = inbox_subject(agency, "green", kind)
        msg = await js.get_last_msg(INBOX_STREAM, subject)
        await js.publish(subject, msg.data or b"", headers={"Nats-Msg-Id": str(uuid.uuid4())})

        async def answered() -> bool:
            info = await js.consumer_info(INBOX_STREAM, inbox_consumer(agency, "green"))
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(answered, what=f"{agency}'s adapter answered the redelivery")
    finally:
        await nc.drain()


async def events_settled(stack: Stack) -> None:
    """Wait until the broker's events consumer has processed (and acked) every event so far: the
    outcome hooks of every outcome published before have run."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-events"))
    try:
        js = nc.jetstream()

        async def processed_all() -> bool:
            info = await js.consumer_info(EVENTS_STREAM, EVENTS_CONSUMER)
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(processed_all, what="the broker's events consumer settled")
    finally:
        await nc.drain()
