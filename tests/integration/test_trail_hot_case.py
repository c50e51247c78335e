"""A hot case: many requests of one case change its money trail at once, on two broker replicas.

Real NATS KV. Each request's change reads the trail it is given and adds its own entry, as
``record_submission`` and ``record_outcome`` do; none may fail (the old store ran out of
compare-and-set attempts and answered ABORTED), none may be lost, and within one replica the
changes of a burst are stored together rather than racing each other.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from greenchannel.v1 import trail_pb2
from nats.js.client import JetStreamContext

from broker.hub._trail_store import TRAILS_BUCKET, TrailChange, TrailStore, trail_key

pytestmark = pytest.mark.integration

POLICE = "police-310115"


def add_lead(transfer_id: str) -> TrailChange:
    """Adds one lead unless it is there (an event processed again changes nothing)."""

    def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
        fresh = trail if trail is not None else trail_pb2.Trail()
        if any(lead.transfer_id == transfer_id for lead in fresh.leads):
            return None
        fresh.leads.add(transfer_id=transfer_id)
        return fresh

    return change


async def _revision(js: JetStreamContext, case: str) -> int:
    entry = await (await js.key_value(TRAILS_BUCKET)).get(trail_key(POLICE, case))
    return entry.revision or 0


async def test_hot_case_on_two_replicas_loses_and_refuses_nothing(js: JetStreamContext) -> None:
    replicas = [TrailStore(js), TrailStore(js)]
    case = f"HOT-{uuid.uuid4().hex[:10]}"
    per_replica = 300

    async def wave(round_: int) -> list[trail_pb2.Trail | None]:
        # Every change of a round starts at once: the worst a burst of requests can do.
        return await asyncio.gather(
            *(
                store.update(POLICE, case, add_lead(f"r{round_}-s{n}-{i}"))
                for i in range(per_replica)
                for n, store in enumerate(replicas)
            )
        )

    results = [trail for round_ in range(3) for trail in await wave(round_)]
    stored = await replicas[0].get(POLICE, case)
    assert stored is not None
    leads = [lead.transfer_id for lead in stored.trail.leads]
    assert len(leads) == len(set(leads)) == 3 * 2 * per_replica
    # Each caller got the trail right after its own change: its lead is the last one there.
    assert all(trail is not None and trail.leads for trail in results)
    # Batched: far fewer writes than changes (each replica stores a burst in a few writes).
    assert stored.revision < len(leads) // 10


async def test_one_replica_applies_a_burst_in_order_and_stores_it_once(js: JetStreamContext) -> None:
    store = TrailStore(js)
    case = f"HOT-{uuid.uuid4().hex[:10]}"
    await store.update(POLICE, case, add_lead("first"))
    before = await _revision(js, case)

    results = await asyncio.gather(*(store.update(POLICE, case, add_lead(f"t{i}")) for i in range(200)))

    assert await _revision(js, case) == before + 1
    for i, trail in enumerate(results):
        assert trail is not None
        assert trail.leads[-1].transfer_id == f"t{i}"
        assert len(trail.leads) == i + 2  # "first" and everything queued before it, in order
    # Callers own what they got: changing one touches neither the others nor the store.
    assert results[0] is not None
    results[0].leads.add(transfer_id="scribble")
    again = await store.update(POLICE, case, add_lead("t199"))
    assert again is not None
    assert "scribble" not in [lead.transfer_id for lead in again.leads]


async def test_a_failing_change_fails_only_its_caller(js: JetStreamContext) -> None:
    store = TrailStore(js)
    case = f"HOT-{uuid.uuid4().hex[:10]}"

    def refuse(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
        raise LookupError("not for this trail")

    changes: list[TrailChange] = [add_lead("a"), refuse, add_lead("b"), lambda trail: None, add_lead("c")]
    outcomes = await asyncio.gather(
        *(store.update(POLICE, case, change) for change in changes), return_exceptions=True
    )
    assert isinstance(outcomes[1], LookupError)
    ok = [o for i, o in enumerate(outcomes) if i != 1]
    assert all(isinstance(o, trail_pb2.Trail) for o in ok)
    assert [[lead.transfer_id for lead in o.leads] for o in ok if isinstance(o, trail_pb2.Trail)] == [
        ["a"],
        ["a", "b"],
        ["a", "b"],
        ["a", "b", "c"],
    ]


async def test_a_caller_that_gives_up_does_not_stall_the_others(js: JetStreamContext) -> None:
    store = TrailStore(js)
    case = f"HOT-{uuid.uuid4().hex[:10]}"
    await store.update(POLICE, case, add_lead("open"))  # the bucket is open: updates queue at once
    tasks = [asyncio.create_task(store.update(POLICE, case, add_lead(f"c{i}"))) for i in range(20)]
    await asyncio.sleep(0)  # all queued
    tasks[3].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert isinstance(done[3], asyncio.CancelledError)
    assert all(isinstance(d, trail_pb2.Trail) for i, d in enumerate(done) if i != 3)
    final = await store.get(POLICE, case)
    assert final is not None
    ids = {lead.transfer_id for lead in final.trail.leads}
    assert {f"c{i}" for i in range(20) if i != 3} <= ids
