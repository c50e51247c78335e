"""Clear answers instead of silence: a reused idempotency key and a stranger's case watch are refused.

A real broker on a real nats-server, through its gRPC API; each refusal is asserted by its status
code and google.rpc.ErrorInfo reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, bus_pb2_grpc, common_pb2

from broker.client import BusClient, bearer_metadata, error_details
from broker.hub import Broker
from broker.protocol import SystemClock
from tests.integration.broker_world import BANK, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

OTHER_POLICE = "police-440300"
OTHER_BANK = "bank-ccb"
REGULATOR = "regulator-pboc"
WAIT = 20.0


@dataclass
class Stage:
    world: World
    broker: Broker

    def client(self, agency: str = POLICE) -> BusClient:
        return self.world.client(self.broker, agency)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    async with broker_world(tmp_path_factory.mktemp("answers")) as world:
        yield Stage(world=world, broker=await world.start_broker())


# -- idempotency keys -----------------------------------------------------------------------------------


async def test_an_idempotency_key_reused_for_another_body_is_refused(stage: Stage) -> None:
    async with stage.client() as police:
        first = await police.submit(stop_payment(case_number="SH-IDEM-0001"), idempotency_key="idem-reuse-1")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await police.submit(
                stop_payment(case_number="SH-IDEM-0001", minor_units=1), idempotency_key="idem-reuse-1"
            )
        listed = await police.list(case_number="SH-IDEM-0001")
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.ALREADY_EXISTS, "IDEMPOTENCY_KEY_REUSED")
    assert first.status.id in details.message
    assert [status.id for status in listed.requests] == [first.status.id]


async def test_the_same_body_under_the_same_key_is_a_retry_even_signed_anew(stage: Stage) -> None:
    async with stage.client() as police:
        request = stop_payment(case_number="SH-IDEM-0002")
        first = await police.submit(request, idempotency_key="idem-retry-1")
        # Signed again (a new issued_at), as a client that restarted would: still the same request.
        again = await police.submit(request, idempotency_key="idem-retry-1")
        # The very same signed bytes, as BusClient retries.
        signed = police.sign(request, idempotency_key="idem-retry-2")
        one, two = await police.submit_signed(signed), await police.submit_signed(signed)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.status.id == first.status.id
    assert (one.duplicate, two.duplicate, two.status.id) == (False, True, one.status.id)


async def test_the_same_key_from_another_agency_is_its_own(stage: Stage) -> None:
    async with stage.client(POLICE) as police, stage.client(OTHER_POLICE) as other:
        mine = await police.submit(stop_payment(case_number="SH-IDEM-0003"), idempotency_key="idem-shared")
        theirs = await other.submit(
            stop_payment(case_number="SZ-IDEM-0003", issuing_agency=OTHER_POLICE),
            idempotency_key="idem-shared",
        )
    assert not theirs.duplicate
    assert theirs.status.id != mine.status.id


# -- watching a case ---------------------------------------------------------------------------------


async def _first_update(client: BusClient, case_number: str) -> bus_pb2.WatchResponse:
    async for update in client.watch(case_number=case_number):
        return update
    raise AssertionError("the watch ended without an update")


async def test_a_stranger_watching_a_case_is_refused(stage: Stage) -> None:
    async with stage.client() as police:
        await police.submit(stop_payment(case_number="SH-WATCH-0001"))
    for stranger in (OTHER_POLICE, OTHER_BANK):
        async with stage.client(stranger) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await asyncio.wait_for(_first_update(client, "SH-WATCH-0001"), WAIT)
        details = error_details(caught.value)
        assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_CASE_PARTY")


async def test_the_parties_and_regulators_watch_a_case(stage: Stage) -> None:
    async with stage.client() as police:
        submitted = (await police.submit(stop_payment(case_number="SH-WATCH-0002"))).status.id
    for party in (POLICE, BANK, REGULATOR):
        async with stage.client(party) as client:
            update = await asyncio.wait_for(_first_update(client, "SH-WATCH-0002"), WAIT)
        assert update.request_id == submitted
        assert update.state == common_pb2.REQUEST_STATE_SUBMITTED


async def test_the_owner_may_watch_a_case_before_its_first_request(stage: Stage) -> None:
    # A case with no request yet is not refused: the watch stays open until its deadline.
    async with grpc.aio.insecure_channel(stage.broker.address) as channel:
        call = bus_pb2_grpc.BusServiceStub(channel).Watch(
            bus_pb2.WatchRequest(case_number="SH-WATCH-0003"),
            metadata=bearer_metadata(stage.world.key(POLICE), agency_id=POLICE, clock=SystemClock()),
            timeout=2.0,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()  # no request, so no update: the deadline ends it, not a refusal
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # And once the first request comes, the owner's watch shows it.
    async with stage.client() as police:
        submitted = (await police.submit(stop_payment(case_number="SH-WATCH-0003"))).status.id
        update = await asyncio.wait_for(_first_update(police, "SH-WATCH-0003"), WAIT)
    assert update.request_id == submitted
