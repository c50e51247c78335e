"""The broker's consumer loop on a real JetStream: concurrent across keys, in order within one,
kept alive while a handler is slow, and finished before it closes."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict

import pytest
from nats.aio.msg import Msg
from nats.js.api import StreamConfig
from nats.js.client import JetStreamContext

from broker.hub._consumer import ConsumerLoop, ConsumerSpec, subject_token
from tests._wait import eventually

pytestmark = pytest.mark.integration


async def _stream(js: JetStreamContext) -> tuple[str, str]:
    name = f"LOOP_{uuid.uuid4().hex[:8].upper()}"
    prefix = f"loop.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    return name, prefix


def _spec(stream: str, prefix: str, **overrides: float) -> ConsumerSpec:
    # ack_wait only bounds a redelivery nobody wants here: long, so a loaded machine cannot cause one.
    settings: dict[str, float] = {"batch": 16, "fetch_timeout": 0.2, "ack_wait": 10.0, "concurrency": 8}
    settings.update(overrides)
    return ConsumerSpec(
        name="loop-test",
        stream=stream,
        filter_subject=f"{prefix}.>",
        batch=int(settings["batch"]),
        fetch_timeout=settings["fetch_timeout"],
        ack_wait=settings["ack_wait"],
        concurrency=int(settings["concurrency"]),
    )


async def test_one_keys_messages_stay_in_order_while_keys_run_side_by_side(js: JetStreamContext) -> None:
    stream, prefix = await _stream(js)
    keys = [f"k{i}" for i in range(4)]
    for n in range(5):
        for key in keys:
            await js.publish(f"{prefix}.{key}", str(n).encode())
    seen: dict[str, list[int]] = defaultdict(list)
    running: set[str] = set()
    overlap = 0
    done = asyncio.Event()

    async def handle(msg: Msg) -> None:
        nonlocal overlap
        key = msg.subject.split(".")[-1]
        assert key not in running, "two messages of one key in hand at once"
        running.add(key)
        overlap = max(overlap, len(running))
        await asyncio.sleep(0.02)  # a few round trips' worth: the others get their turn meanwhile
        seen[key].append(int(msg.data))
        running.discard(key)
        await msg.ack_sync(timeout=10.0)
        if sum(map(len, seen.values())) == 20:
            done.set()

    async with ConsumerLoop(js, _spec(stream, prefix), handle, key=subject_token(-1)):
        await asyncio.wait_for(done.wait(), 30)
    assert {key: seen[key] for key in keys} == {key: [0, 1, 2, 3, 4] for key in keys}
    assert overlap > 1, "different keys were never handled side by side"


async def test_a_slow_handler_is_kept_alive_and_never_handed_out_twice(js: JetStreamContext) -> None:
    stream, prefix = await _stream(js)
    await js.publish(f"{prefix}.slow", b"x")
    deliveries: list[int] = []
    # ack_wait 2 s, heartbeat every 0.67 s: a loaded machine may run the heartbeat late by more
    # than a second before the message would go back; the handler still outlasts ack_wait 3 times.
    ack_wait = 2.0

    async def handle(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        await asyncio.sleep(3 * ack_wait)  # only the heartbeats keep it ours
        # Confirmed: the server has taken the ack before the handler (and the loop) is done.
        await msg.ack_sync(timeout=10.0)

    async with ConsumerLoop(js, _spec(stream, prefix, ack_wait=ack_wait), handle, key=subject_token(-1)):
        await eventually(lambda: bool(deliveries), what="the message was handed out")
    # Leaving the block waited for the message in hand; it was delivered once, and acked.
    assert deliveries == [1]
    info = await js.consumer_info(stream, "loop-test")
    assert (info.num_ack_pending, info.num_redelivered, info.num_pending) == (0, 0, 0)


async def test_a_failing_handler_leaves_the_message_to_come_back(js: JetStreamContext) -> None:
    stream, prefix = await _stream(js)
    await js.publish(f"{prefix}.flaky", b"x")
    attempts: list[int] = []
    done = asyncio.Event()

    async def handle(msg: Msg) -> None:
        attempts.append(msg.metadata.num_delivered or 0)
        if len(attempts) == 1:
            raise RuntimeError("a bug or a NATS hiccup")
        await msg.ack_sync(timeout=10.0)
        done.set()

    # Long enough that the second copy, once in hand, is acked before a third could be sent.
    async with ConsumerLoop(js, _spec(stream, prefix, ack_wait=2.0), handle, key=subject_token(-1)):
        await asyncio.wait_for(done.wait(), 30)
    assert attempts == [1, 2]


def test_a_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        ConsumerSpec(
            name="x", stream="S", filter_subject="a.>", batch=1, fetch_timeout=1, ack_wait=1, concurrency=0
        )
    with pytest.raises(ValueError, match="ack_wait"):
        ConsumerSpec(name="x", stream="S", filter_subject="a.>", batch=1, fetch_timeout=1, ack_wait=0)
