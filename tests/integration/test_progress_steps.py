"""The broker takes an adapter's later steps straight from SUBMITTED (the adapter sends no DELIVERED,
and ACKNOWLEDGED only for a slow answer): each meets the phase deadlines before it, and ends
cancellation as ACKNOWLEDGED does. Real nats-server, real grpc.aio broker and client."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2, results_pb2

from broker.client import error_details
from tests.integration.broker_world import BANK, broker_world, stop_payment

pytestmark = pytest.mark.integration

S = common_pb2


async def test_steps_straight_from_submitted_meet_the_phases_before_them(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            quick = (await police.submit(stop_payment(case_number="SH-PD-2026-0200"))).status
            slow = (await police.submit(stop_payment(account="6228480000000000001"))).status
            inbox = {o.header.id: o for o in await world.inbox(BANK)}
            inbox.update({o.header.id: o for o in await world.inbox("bank-abc")})

            # A quick answer: the outcome alone.
            executed = results_pb2.Result(
                outcome=S.REQUEST_STATE_EXECUTED,
                amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000),
                agency_reference="HOLD-1",
            )
            await world.adapter_event(inbox[quick.id], S.REQUEST_STATE_EXECUTED, result=executed)
            answered = await police.wait_for(quick.id, {S.REQUEST_STATE_EXECUTED})

            # A slow one: ACKNOWLEDGED alone, the outcome still to come.
            await world.adapter_event(inbox[slow.id], S.REQUEST_STATE_ACKNOWLEDGED, agency="bank-abc")
            taken = await police.wait_for(slow.id, {S.REQUEST_STATE_ACKNOWLEDGED})

            refusals = []
            for request_id in (quick.id, slow.id):
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await police.cancel(request_id)
                refusals.append(error_details(caught.value).code)

    def recorded(status: lifecycle_pb2.RequestStatus) -> list[int]:
        return [lifecycle_pb2.LifecycleEvent.FromString(r.event.payload).state for r in status.events]

    def done(status: lifecycle_pb2.RequestStatus) -> dict[int, bool]:
        return {p.phase: p.HasField("done_at") for p in status.deadlines.phases}

    assert recorded(answered) == [S.REQUEST_STATE_SUBMITTED, S.REQUEST_STATE_EXECUTED]
    assert done(answered) == {S.PHASE_DELIVER: True, S.PHASE_ACKNOWLEDGE: True, S.PHASE_EXECUTE: True}
    assert recorded(taken) == [S.REQUEST_STATE_SUBMITTED, S.REQUEST_STATE_ACKNOWLEDGED]
    assert done(taken) == {S.PHASE_DELIVER: True, S.PHASE_ACKNOWLEDGE: True, S.PHASE_EXECUTE: False}
    # Taken by the agency either way: no longer cancellable.
    assert refusals == [grpc.StatusCode.FAILED_PRECONDITION] * 2


async def test_an_outcome_after_a_cancellation_records_what_the_agency_did(tmp_path: Path) -> None:
    """The cancel reaches the bus, not the bank: a bank that had the order in hand (its
    ACKNOWLEDGED deferred) executes it, and that outcome stands, so the sender learns of the hold."""
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            request = (await police.submit(stop_payment(case_number="SH-PD-2026-0201"))).status
            (order,) = [o for o in await world.inbox(BANK) if o.header.id == request.id]
            cancelled = await police.cancel(request.id)
            assert cancelled.state == S.REQUEST_STATE_CANCELLED
            executed = results_pb2.Result(
                outcome=S.REQUEST_STATE_EXECUTED,
                amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000),
                agency_reference="HOLD-2",
            )
            await world.adapter_event(order, S.REQUEST_STATE_EXECUTED, result=executed)
            final = await police.wait_for(request.id, {S.REQUEST_STATE_EXECUTED})
    states = [lifecycle_pb2.LifecycleEvent.FromString(r.event.payload).state for r in final.events]
    assert states == [S.REQUEST_STATE_SUBMITTED, S.REQUEST_STATE_CANCELLED, S.REQUEST_STATE_EXECUTED]
    assert final.result.amount_held.minor_units == 4_800_000
