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

from broker.protocol import ConsumerLoop, ConsumerSpec, Lane, LaneOrder, subject_token

pytestmark = pytest.mark.integration


async def _stream(js: JetStreamContext) -> tuple[str, str]:
    name = f"LOOP_{uuid.uuid4().hex[:8].upper()}"
    prefix = f"loop.{name.lower()}"
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    return name, prefix


def _spec(stream: str, prefix: str, **overrides: float) -> ConsumerSpec:
    settings: dict[str, float] = {"batch": 16, "fetch_timeout": 0.2, "ack_wait": 1.0, "concurrency": 8}
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
        await msg.ack()
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

    async def handle(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        await asyncio.sleep(3.0)  # three times ack_wait: only the heartbeats keep it ours
        await msg.ack()

    async with ConsumerLoop(js, _spec(stream, prefix, ack_wait=1.0), handle, key=subject_token(-1)):
        for _ in range(200):
            if deliveries:
                break
            await asyncio.sleep(0.05)
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
        await msg.ack()
        done.set()

    async with ConsumerLoop(js, _spec(stream, prefix, ack_wait=0.5), handle, key=subject_token(-1)):
        await asyncio.wait_for(done.wait(), 30)
    assert attempts == [1, 2]


def test_a_spec_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        ConsumerSpec(
            name="x", stream="S", filter_subject="a.>", batch=1, fetch_timeout=1, ack_wait=1, concurrency=0
        )
    with pytest.raises(ValueError, match="ack_wait"):
        ConsumerSpec(name="x", stream="S", filter_subject="a.>", batch=1, fetch_timeout=1, ack_wait=0)


def _lane(stream: str, subject: str, *, batch: int) -> Lane:
    return Lane(durable=f"lane-{uuid.uuid4().hex[:8]}", stream=stream, filter_subject=subject, batch=batch)


async def test_a_lane_is_served_only_when_the_lanes_before_it_have_nothing(js: JetStreamContext) -> None:
    stream, prefix = await _stream(js)
    for n in range(3):
        await js.publish(f"{prefix}.low.{n}", b"low")
        await js.publish(f"{prefix}.high.{n}", b"high")
    spec = ConsumerSpec(
        name="lanes",
        lanes=(_lane(stream, f"{prefix}.high.>", batch=2), _lane(stream, f"{prefix}.low.>", batch=2)),
        order=LaneOrder.PRIORITY,
        concurrency=1,
        fetch_timeout=0.2,
        ack_wait=5.0,
    )
    seen: list[str] = []
    done = asyncio.Event()

    async def handle(msg: Msg) -> None:
        seen.append(msg.data.decode())
        await msg.ack()
        if len(seen) == 6:
            done.set()

    async with ConsumerLoop(js, spec, handle):
        await asyncio.wait_for(done.wait(), 30)
    assert seen == ["high"] * 3 + ["low"] * 3


async def test_what_a_closing_loop_leaves_unsettled_is_naked_for_another_instance(
    js: JetStreamContext,
) -> None:
    stream, prefix = await _stream(js)
    await js.publish(f"{prefix}.k", b"x")
    # A long ack_wait: the message can only come back this soon because it was naked.
    spec = ConsumerSpec(
        name="loop-test",
        stream=stream,
        filter_subject=f"{prefix}.>",
        fetch_timeout=0.2,
        ack_wait=60.0,
        shutdown_grace=0.0,
    )
    taken = asyncio.Event()

    async def stuck(msg: Msg) -> None:
        taken.set()
        await asyncio.Event().wait()  # never finishes: cancelled after the grace

    async with ConsumerLoop(js, spec, stuck):
        await asyncio.wait_for(taken.wait(), 30)
    deliveries: list[int] = []
    again = asyncio.Event()

    async def handle(msg: Msg) -> None:
        deliveries.append(msg.metadata.num_delivered or 0)
        await msg.ack()
        again.set()

    async with ConsumerLoop(js, spec, handle):
        await asyncio.wait_for(again.wait(), 30)
    assert deliveries == [2]


async def test_fair_lanes_hand_each_pull_over_whole(js: JetStreamContext) -> None:
    stream, prefix = await _stream(js)
    for n in range(4):
        await js.publish(f"{prefix}.a.{n}", b"a")
        await js.publish(f"{prefix}.b.{n}", b"b")
    lanes = (_lane(stream, f"{prefix}.a.>", batch=8), _lane(stream, f"{prefix}.b.>", batch=8))
    spec = ConsumerSpec(name="fair", lanes=lanes, order=LaneOrder.FAIR, fetch_timeout=0.2, ack_wait=5.0)
    got: dict[str, list[str]] = defaultdict(list)
    done = asyncio.Event()

    async def handle_batch(lane: Lane, msgs: list[Msg]) -> None:
        for msg in msgs:
            got[lane.durable].append(msg.data.decode())
            await msg.ack()
        if sum(len(items) for items in got.values()) == 8:
            done.set()

    async with ConsumerLoop(js, spec, batch_handler=handle_batch):
        await asyncio.wait_for(done.wait(), 30)
    assert got == {lanes[0].durable: ["a"] * 4, lanes[1].durable: ["b"] * 4}
