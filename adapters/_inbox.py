"""The agency's inbox as two lanes of the shared consumer loop: GREEN before STANDARD.

GREEN is always taken before STANDARD: STANDARD is only pulled when the GREEN consumer has nothing
to deliver and no GREEN message taken here is still on its way to the agency system, and at most
``standard_concurrency`` STANDARD messages are in flight, so GREEN always has slots; when both
lanes are idle the loop waits on GREEN. Heartbeats, per-lane bounds and the graceful drain are
the loop's (:class:`broker.protocol.ConsumerLoop`).
"""

from __future__ import annotations

from typing import Literal

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol import (
    INBOX_STREAM,
    ConsumerSpec,
    Lane,
    LaneOrder,
    inbox_consumer,
    inbox_filter,
    nats_error,
)

from ._config import AdapterConfig

__all__ = ["LANES", "TASK_PREFIX", "Settle", "inbox_spec", "settle"]

_log = structlog.get_logger(__name__)

LANES = ("green", "standard")
"""Inbox lanes, in the order they are served."""

TASK_PREFIX = "greenchannel-adapter"
"""Name prefix of every task a runtime starts (``<prefix>-<agency>`` / ``-heartbeat`` / ``-message``)."""

# After a NATS failure in the consume loop: wait this long before pulling again.
_FETCH_ERROR_PAUSE = 1.0

Settle = Literal["ack", "term", "nak"]


def inbox_spec(config: AdapterConfig) -> ConsumerSpec:
    """The consumer loop of ``config.agency_id``'s inbox."""
    agency = config.agency_id

    def lane(name: str, *, batch: int, limit: int | None) -> Lane:
        return Lane(
            durable=inbox_consumer(agency, name),
            stream=INBOX_STREAM,
            filter_subject=inbox_filter(agency, name),
            batch=batch,
            limit=limit,
            label=name,
            bind=_bind_lane,
        )

    return ConsumerSpec(
        name=f"{TASK_PREFIX}-{agency}",
        lanes=(
            lane("green", batch=config.batch_size, limit=None),
            lane("standard", batch=config.standard_batch_size, limit=config.standard_concurrency),
        ),
        order=LaneOrder.PRIORITY,
        concurrency=config.concurrency,
        fetch_timeout=config.idle_fetch_timeout,
        poll_timeout=config.poll_timeout,
        ack_wait=config.ack_wait,
        heartbeat_interval=config.heartbeat_interval,
        # Under load slots come free one at a time; a pull for each would cost a consumer info and
        # a fetch round trip per message. So with work in flight a pull waits (at most
        # poll_timeout) for a quarter of a batch of free slots.
        refill=max(1, min(config.batch_size, config.concurrency) // 4),
        shutdown_grace=config.shutdown_grace,
        fetch_error_pause=_FETCH_ERROR_PAUSE,
    )


async def _bind_lane(js: JetStreamContext, lane: Lane, ack_wait: float) -> JetStreamContext.PullSubscription:
    """Create or update the lane's durable consumer, then bind a pull subscription to it."""
    config = ConsumerConfig(
        name=lane.durable,
        durable_name=lane.durable,
        filter_subject=lane.filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        # Never give up on a message: while the agency system is down the inbox waits.
        max_deliver=-1,
    )
    try:
        # Under per-agency NATS users the broker creates the consumer and the adapter may not.
        if not await _provisioned(js, config):
            await js.add_consumer(INBOX_STREAM, config)
        return await js.pull_subscribe_bind(durable=lane.durable, stream=INBOX_STREAM)
    except (nats.errors.Error, TimeoutError) as exc:
        raise nats_error(exc, f"bind inbox consumer {lane.durable}") from exc


async def _provisioned(js: JetStreamContext, want: ConsumerConfig) -> bool:
    """Whether the lane's consumer already exists as ``want`` describes it: then only bind."""
    assert want.durable_name is not None
    try:
        have = (await js.consumer_info(INBOX_STREAM, want.durable_name)).config
    except nats.js.errors.NotFoundError:
        return False
    return (
        have.filter_subject == want.filter_subject
        and have.ack_policy == want.ack_policy
        and have.ack_wait == want.ack_wait
        and have.max_deliver == want.max_deliver
        and have.deliver_subject is None
    )


async def settle(msg: Msg, how: Settle, *, timeout: float, nak_delay: float) -> None:  # noqa: ASYNC109
    """Ack (waiting for the server's word), term or nak ``msg``.

    A failure is only logged: the message is redelivered after ack_wait and the idempotency
    store answers it then.
    """
    try:
        if how == "ack":
            await msg.ack_sync(timeout=timeout)
        elif how == "term":
            await msg.term()
        else:
            await msg.nak(delay=nak_delay)
    except (nats.errors.Error, TimeoutError) as exc:
        _log.warning("adapter.settle_failed", how=how, error_type=type(exc).__name__)
