"""The broker end to end: real nats-server, real grpc.aio broker replicas and clients."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import pytest
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, results_pb2

from broker.client import BusClient, error_details
from broker.hub import AdmissionConfig
from broker.protocol import BROKER_ID, DEADLETTER_STREAM, WATCH_STREAM, deadletter_subject
from tests._wait import eventually
from tests.integration.broker_world import BANK, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

EXECUTED = results_pb2.Result(
    outcome=common_pb2.REQUEST_STATE_EXECUTED,
    amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000),
    agency_reference="HOLD-1",
)


async def collect(
    world: World, broker_index: int, request_id: str, until: int
) -> list[bus_pb2.WatchResponse]:
    seen: list[bus_pb2.WatchResponse] = []
    async with world.client(world.brokers[broker_index]) as police:

        async def follow() -> None:
            async for update in police.watch(request_id=request_id):
                seen.append(update)
                if update.state == until:
                    return

        await asyncio.wait_for(follow(), 60)  # bounds a hung watch only
    return seen


async def test_submission_lands_notarized_in_the_right_inbox_and_events_flow_back(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            accepted = await police.submit(stop_payment())
        status = accepted.status
        assert status.state == common_pb2.REQUEST_STATE_SUBMITTED
        assert (status.sender, status.recipient) == (POLICE, BANK)
        assert [p.phase for p in status.deadlines.phases] == [
            common_pb2.PHASE_DELIVER,
            common_pb2.PHASE_ACKNOWLEDGE,
            common_pb2.PHASE_EXECUTE,
        ]
        assert status.deadlines.HasField("hold_expires_at")

        [opened] = await world.inbox(BANK)
        assert opened.header.id == status.id
        assert opened.sender_claims.iss == POLICE
        assert opened.notary_claims.iss == "greenchannel-broker"
        assert opened.request.stop_payment.account.account_number == "6222020200001234567"
        assert await world.inbox("bank-ccb", wait=0.3) == []

        for state in (common_pb2.REQUEST_STATE_DELIVERED, common_pb2.REQUEST_STATE_ACKNOWLEDGED):
            await world.adapter_event(opened, state)
        await world.adapter_event(opened, common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)

        seen = await collect(world, 0, status.id, common_pb2.REQUEST_STATE_EXECUTED)
        assert [u.state for u in seen] == [
            common_pb2.REQUEST_STATE_SUBMITTED,
            common_pb2.REQUEST_STATE_DELIVERED,
            common_pb2.REQUEST_STATE_ACKNOWLEDGED,
            common_pb2.REQUEST_STATE_EXECUTED,
        ]
        assert [u.cursor for u in seen] == sorted(u.cursor for u in seen)
        async with world.client(broker) as police:
            final = await police.get(status.id)
        assert final.result.amount_held.minor_units == 4_800_000
        assert all(p.HasField("done_at") for p in final.deadlines.phases)
        assert [e.seq for e in final.events] == [1, 2, 3, 4]


async def test_watch_resumes_after_a_cursor_without_loss_or_repeat(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            status = (await police.submit(stop_payment())).status
            [opened] = await world.inbox(BANK)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_DELIVERED)
            first = await collect(world, 0, status.id, common_pb2.REQUEST_STATE_DELIVERED)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)
            rest: list[bus_pb2.WatchResponse] = []

            async def follow() -> None:
                async for update in police.watch(request_id=status.id, after_cursor=first[-1].cursor):
                    rest.append(update)
                    if update.state == common_pb2.REQUEST_STATE_EXECUTED:
                        return

            await asyncio.wait_for(follow(), 60)  # bounds a hung watch only
        assert [u.state for u in first + rest] == [
            common_pb2.REQUEST_STATE_SUBMITTED,
            common_pb2.REQUEST_STATE_DELIVERED,
            common_pb2.REQUEST_STATE_ACKNOWLEDGED,
            common_pb2.REQUEST_STATE_EXECUTED,
        ]


async def test_broker_restart_loses_no_request_and_no_event(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            ids = [
                (await police.submit(stop_payment(case_number=f"SH-PD-2026-{i:04d}"))).status.id
                for i in range(5)
            ]
        opened = {o.header.id: o for o in await world.inbox(BANK)}
        assert set(opened) == set(ids)
        await broker.aclose()
        world.brokers.clear()

        # Adapters keep working while no broker runs: their events wait in JetStream.
        for request_id in ids:
            await world.adapter_event(opened[request_id], common_pb2.REQUEST_STATE_DELIVERED)
            await world.adapter_event(opened[request_id], common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)

        restarted = await world.start_broker()
        async with world.client(restarted) as police:
            for request_id in ids:
                final = await police.wait_for(request_id, {common_pb2.REQUEST_STATE_EXECUTED})
                assert [e.seq for e in final.events] == [1, 2, 3]
            listed = await police.list(role=bus_pb2.ROLE_SENDER)
        assert {s.id for s in listed.requests} == set(ids)


async def test_two_replicas_on_one_nats_serve_the_same_requests(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        first = await world.start_broker()
        second = await world.start_broker()
        async with world.client(first) as via_first, world.client(second) as via_second:
            status = (await via_first.submit(stop_payment())).status
            assert (await via_second.get(status.id)).id == status.id
            [opened] = await world.inbox(BANK)
            for state in (common_pb2.REQUEST_STATE_DELIVERED, common_pb2.REQUEST_STATE_ACKNOWLEDGED):
                await world.adapter_event(opened, state)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)
            via_one = await via_first.wait_for(status.id, {common_pb2.REQUEST_STATE_EXECUTED})
            via_two = await via_second.get(status.id)
        assert via_one.events == via_two.events
        assert len(via_two.events) == 4
        # The same idempotency key through the other replica returns the first request.
        async with world.client(first) as a, world.client(second) as b:
            signed = a.sign(stop_payment(case_number="SH-PD-2026-0099"), idempotency_key="retry-key-0001")
            one = await a.submit_signed(signed)
            two = await b.submit_signed(signed)
        assert (one.duplicate, two.duplicate) == (False, True)
        assert one.status.id == two.status.id
        assert len([o for o in await world.inbox(BANK) if o.header.id == one.status.id]) == 1


async def test_cancel_before_delivery_and_refusal_after_acknowledgement(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            cancelled = (await police.submit(stop_payment(case_number="SH-PD-2026-0100"))).status
            after = await police.cancel(cancelled.id, "victim found the money was not sent")
            assert after.state == common_pb2.REQUEST_STATE_CANCELLED

            taken = (await police.submit(stop_payment(case_number="SH-PD-2026-0101"))).status
            opened = next(o for o in await world.inbox(BANK) if o.header.id == taken.id)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
            await police.wait_for(taken.id, {common_pb2.REQUEST_STATE_ACKNOWLEDGED})
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await police.cancel(taken.id)
        details = error_details(caught.value)
        assert details.code == grpc.StatusCode.FAILED_PRECONDITION


async def test_an_overtaken_step_joins_the_timeline_and_a_repeated_one_is_refused(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            status = (await police.submit(stop_payment())).status
            [opened] = await world.inbox(BANK)
            # The outcome is applied first (another replica took it, or it overtook the others).
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)
            await police.wait_for(status.id, {common_pb2.REQUEST_STATE_EXECUTED})
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_DELIVERED)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
            current = await police.get(status.id)

            async def all_four_recorded() -> bool:
                nonlocal current
                current = await police.get(status.id)
                return len(current.events) == 4

            await eventually(all_four_recorded, what="the four events recorded")
            assert current.state == common_pb2.REQUEST_STATE_EXECUTED  # the state never goes back
            states = [lifecycle_pb2.LifecycleEvent.FromString(r.event.payload).state for r in current.events]
            assert states == [
                common_pb2.REQUEST_STATE_SUBMITTED,
                common_pb2.REQUEST_STATE_EXECUTED,
                common_pb2.REQUEST_STATE_DELIVERED,
                common_pb2.REQUEST_STATE_ACKNOWLEDGED,
            ]
            # A second DELIVERED is a straggler: refused, the timeline stays as it is.
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_DELIVERED)

            async def refused() -> bool:
                return bool((await world.js.stream_info(DEADLETTER_STREAM)).state.messages)

            await eventually(refused, what="the straggler's refusal in the dead letters")
            refusal = await world.js.get_last_msg(DEADLETTER_STREAM, deadletter_subject(BROKER_ID))
            assert json.loads(refusal.data or b"")["reason"] == "OUT_OF_ORDER"
            assert len((await police.get(status.id)).events) == 4


async def test_watching_everything_of_mine_shows_only_requests_i_am_a_party_to(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with (
            world.client(broker) as police,
            world.client(broker, "bank-icbc") as recipient,
            world.client(broker, "bank-abc") as bystander,
        ):
            seen: dict[str, list[str]] = {"recipient": [], "bystander": []}

            async def follow(name: str, client: BusClient) -> None:
                async for record in client.watch(only_new=True):
                    seen[name].append(record.request_id)

            opened_before = len(await world.js.consumers_info(WATCH_STREAM))
            watchers = [
                asyncio.create_task(follow("recipient", recipient)),
                asyncio.create_task(follow("bystander", bystander)),
            ]

            async def both_open() -> bool:
                # A watch pins "only new" when it opens, then makes its consumer on the watch log.
                return len(await world.js.consumers_info(WATCH_STREAM)) >= opened_before + 2

            await eventually(both_open, what="both watches open before the request")
            first = (await police.submit(stop_payment())).status.id
            [opened] = await world.inbox(BANK)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_DELIVERED)
            # A later request to the bystander itself: once it sees that, it would have seen the first.
            second = (await police.submit(stop_payment(account="6228480000000000001"))).status.id
            await eventually(
                lambda: second in seen["bystander"] and seen["recipient"].count(first) == 2,
                what="the bystander saw its own request and the recipient both records of the first",
            )
            for task in watchers:
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        assert seen["recipient"] == [first, first]  # SUBMITTED and DELIVERED, nothing of bank-abc's
        assert seen["bystander"] == [second]


async def test_past_its_bound_the_broker_sheds_submissions_at_once_and_keeps_room_for_green(
    tmp_path: Path,
) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(admission=AdmissionConfig(max_in_hand=2, standard_share=0.5))
        police = BusClient(broker.address, agency_id=POLICE, signing_key=world.key(POLICE), attempts=1)
        try:
            with broker.admission.admit(green=True):  # one submission in hand: STANDARD's share is full
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await police.submit(stop_payment(priority=common_pb2.PRIORITY_STANDARD))
                details = error_details(refused.value)
                assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "OVERLOADED")
                assert details.retry_delay is not None
                assert await world.inbox(wait=0.3) == []  # shed before anything was stored or sent
                green = await police.submit(stop_payment(case_number="SH-PD-2026-0002"))
                assert green.status.state == common_pb2.REQUEST_STATE_SUBMITTED
            assert broker.admission.in_hand == 0
            # With room again, the client's own retry of a shed call goes through.
            retried = BusClient(broker.address, agency_id=POLICE, signing_key=world.key(POLICE), attempts=3)
            try:
                with broker.admission.admit(green=True):
                    pending = asyncio.create_task(
                        retried.submit(
                            stop_payment(case_number="SH-PD-2026-0003", priority=common_pb2.PRIORITY_STANDARD)
                        )
                    )
                    await asyncio.sleep(0.1)  # its first attempt is shed while this one is in hand
                reply = await pending
                assert reply.status.state == common_pb2.REQUEST_STATE_SUBMITTED
            finally:
                await retried.aclose()
        finally:
            await police.aclose()
