"""Intake interrupted between its writes: the paths the fault suite found broken, made deterministic.

A submit stores the request's SUBMITTED record (request state, idempotency key, watch log and
ledger source in one journal write), then publishes the inbox message and sets the first deadline
timer. A broker crash, or a cluster node taking a stream leader with it, can stop it after any of
these; the client's retry (same signed bytes, same idempotency key) must then finish what the
first attempt left undone. Each test fails one step the way the cluster scenario saw it fail, and
checks the retry's result.

The fault suite found all three (a request stored but never delivered, a retry without a deadline
timer, a SUBMITTED record missing from the ledger); ``Intake._finish`` fixes them.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from greenchannel.v1 import common_pb2, ledger_pb2, lifecycle_pb2
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from broker.client import BusClient
from broker.hub import NotFoundError, SlaPolicy, UnavailableError, load_sla_policy
from broker.hub._ledger import LedgerReader
from broker.hub._store import Created, RequestStore
from broker.hub._timers import DeadlineScheduler
from broker.protocol import WATCH_STREAM, fetch_batch, status_filter
from tests._wait import eventually
from tests.integration.broker_world import POLICE, World, broker_world, stop_payment

from ._world import scaled_sla_policy

pytestmark = pytest.mark.integration

S = common_pb2
_BOUND = 30.0  # seconds; only a failure waits this long


def _short_deadlines(tmp_path: Path) -> SlaPolicy:
    return load_sla_policy(
        scaled_sla_policy(tmp_path / "sla.toml", deliver="1s", acknowledge="2s", execute="3s")
    )


def _states(status: lifecycle_pb2.RequestStatus) -> list[int]:
    return [lifecycle_pb2.LifecycleEvent.FromString(e.event.payload).state for e in status.events]


async def _everything(sub: JetStreamContext.PullSubscription) -> list[Msg]:
    """Every message the consumer has, however the server splits them over pulls."""
    found: list[Msg] = []
    while msgs := await fetch_batch(sub, 1000, _BOUND):
        found.extend(msgs)
        if not msgs[-1].metadata.num_pending:
            break
    return found


async def _ledger_kinds(js: JetStreamContext, request_id: str) -> list[int]:
    # Through the reader: a GC_LEDGER message holds a block of entries.
    entries = await LedgerReader(js).entries(after_seq=0, limit=10**9)
    return [e.entry.kind for e in entries if e.entry.request_id == request_id]


async def _watch_states(js: JetStreamContext, request_id: str) -> list[int]:
    sub = await js.pull_subscribe(
        status_filter(request_id=request_id),
        stream=WATCH_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.NONE),
    )
    try:
        return [lifecycle_pb2.RequestStatus.FromString(m.data).state for m in await _everything(sub)]
    finally:
        await sub.unsubscribe()


async def _wait_for(world: World, client: BusClient, request_id: str, state: int) -> bool:
    """Whether the request reaches ``state``; the bound only limits how long a failure takes."""

    async def reached() -> bool:
        return state in _states(await client.get(request_id))

    try:
        await eventually(reached, within=_BOUND, every=0.1)
    except AssertionError:
        return False
    return True


async def test_a_retry_sets_the_timer_the_first_attempt_could_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = DeadlineScheduler.schedule_next
    failures = [UnavailableError("cannot set a deadline timer: no responders")]

    async def flaky(self: DeadlineScheduler, status: lifecycle_pb2.RequestStatus, **kwargs: object) -> object:
        if failures:
            raise failures.pop()  # GC_DEADLINES is electing a leader
        return await original(self, status, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(DeadlineScheduler, "schedule_next", flaky)
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(sla=_short_deadlines(tmp_path))
        async with world.client(broker) as police:
            # BusClient retries the UNAVAILABLE with the same signed bytes.
            reply = await police.submit(stop_payment(priority=S.PRIORITY_STANDARD))
            assert reply.duplicate
            # Nobody answers: the deliver deadline (1 s) must be breached.
            assert await _wait_for(world, police, reply.status.id, S.REQUEST_STATE_ESCALATED)


async def test_a_request_reaches_the_inbox_only_after_its_submitted_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RequestStore.create
    failed: list[str] = []

    async def flaky(self: RequestStore, status: lifecycle_pb2.RequestStatus, **kwargs: Any) -> Created:
        if not failed:
            failed.append(status.id)  # NATS fails the SUBMITTED record (or the broker dies here)
            raise UnavailableError("cannot store request")
        return await original(self, status, **kwargs)

    monkeypatch.setattr(RequestStore, "create", flaky)
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        police = BusClient(broker.address, agency_id=POLICE, signing_key=world.key(POLICE), attempts=1)
        try:
            signed = police.sign(stop_payment(), idempotency_key=f"intake-{uuid.uuid4().hex}")
            with pytest.raises(grpc.aio.AioRpcError):
                await police.submit_signed(signed)
            # The bank cannot have the order yet: its outcome could otherwise reach the journal,
            # and the ledger chained from it, before the request itself.
            assert await world.inbox(wait=0.5) == []
            reply = await police.submit_signed(signed)
            request_id = reply.status.id
            opened = await world.inbox()
            assert [o.header.id for o in opened] == [request_id]
            await world.adapter_event(opened[0], S.REQUEST_STATE_DELIVERED)
            assert await _wait_for(world, police, request_id, S.REQUEST_STATE_DELIVERED)

            async def chained() -> bool:  # the ledger sequencer chains asynchronously
                return ledger_pb2.LEDGER_ENTRY_KIND_EVENT in await _ledger_kinds(world.js, request_id)

            await eventually(chained, within=_BOUND, every=0.1, what="the DELIVERED event in the ledger")
        finally:
            await police.aclose()
        assert len(failed) == 1  # the first attempt's id was never stored: the retry has its own
        watched = await _watch_states(world.js, request_id)
        assert watched == [S.REQUEST_STATE_SUBMITTED, S.REQUEST_STATE_DELIVERED]
        assert ledger_pb2.LEDGER_ENTRY_KIND_REQUEST in await _ledger_kinds(world.js, request_id)


async def test_a_request_stored_by_a_failed_attempt_is_still_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create, get = RequestStore.create, RequestStore.get
    step: list[str] = []

    async def lossy_create(self: RequestStore, status: lifecycle_pb2.RequestStatus, **kwargs: Any) -> Created:
        stored = await create(self, status, **kwargs)
        if not step:
            step.append("created")  # committed, but the PubAck is lost: the stream leader moved
            raise UnavailableError("cannot store request: timeout")
        return stored

    async def stale_get(self: RequestStore, request_id: str) -> object:
        if step == ["created"]:
            step.append("stale")  # the retry reads before the first record is visible to it
            raise NotFoundError(f"no request {request_id}")
        return await get(self, request_id)

    monkeypatch.setattr(RequestStore, "create", lossy_create)
    monkeypatch.setattr(RequestStore, "get", stale_get)
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(sla=_short_deadlines(tmp_path))
        async with world.client(broker) as police:
            reply = await police.submit(stop_payment(priority=S.PRIORITY_STANDARD))
            request_id = reply.status.id
            assert step == ["created", "stale"]
            # Accepted, so it must reach the bank, or at least have its deadlines fire.
            escalated = await _wait_for(world, police, request_id, S.REQUEST_STATE_ESCALATED)

            async def in_inbox() -> bool:
                return request_id in [o.header.id for o in await world.inbox(wait=0.5)]

            try:
                await eventually(in_inbox, within=_BOUND, every=0.0)
                delivered = True
            except AssertionError:
                delivered = False
        assert delivered, "accepted but never published to the bank's inbox"
        assert escalated
