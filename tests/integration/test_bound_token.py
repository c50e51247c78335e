"""Bearer tokens bound to the signed request they carry (claim ``req``) against a real broker.

A bound token spares Submit its replay-cache write: replayed, it can only resend the very same
signed request, which intake answers as the first one. A token without ``req`` still goes
through the replay cache. One broker on one embedded NATS serves the whole module (a few
seconds, like the hostile arena).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, bus_pb2_grpc, common_pb2, envelope_pb2, requests_pb2

from broker.client import bearer_metadata, error_details
from broker.hub import Broker
from broker.protocol import INBOX_STREAM, REPLAY_BUCKET, SystemClock, sign_request, to_timestamp
from tests.integration.broker_world import FRAUD_ACCOUNT, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]


@dataclass
class Bench:
    world: World
    broker: Broker

    def signed(self, request: requests_pb2.Request) -> envelope_pb2.SignedMessage:
        return sign_request(request, key=self.world.key(POLICE), sender=POLICE, clock=SystemClock())

    def token(self, bound_to: envelope_pb2.SignedMessage | None = None) -> Metadata:
        return bearer_metadata(
            self.world.key(POLICE),
            agency_id=POLICE,
            clock=SystemClock(),
            request_payload=None if bound_to is None else bound_to.payload,
        )

    @contextlib.asynccontextmanager
    async def bus(self) -> AsyncIterator[bus_pb2_grpc.BusServiceStub]:
        async with grpc.aio.insecure_channel(self.broker.address) as channel:
            yield bus_pb2_grpc.BusServiceStub(channel)

    async def submit(self, signed: envelope_pb2.SignedMessage, metadata: Metadata) -> bus_pb2.SubmitResponse:
        async with self.bus() as bus:
            response: bus_pb2.SubmitResponse = await bus.Submit(
                bus_pb2.SubmitRequest(request=signed), metadata=metadata, timeout=10
            )
        return response

    async def refusal(
        self, signed: envelope_pb2.SignedMessage, metadata: Metadata
    ) -> tuple[object, str | None]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.submit(signed, metadata)
        details = error_details(caught.value)
        return details.code, details.reason

    async def replay_writes(self) -> int:
        """Last sequence of the replay bucket's stream: every token recorded moves it."""
        return int((await self.world.js.stream_info(f"KV_{REPLAY_BUCKET}")).state.last_seq)

    async def inbox_writes(self) -> int:
        return int((await self.world.js.stream_info(INBOX_STREAM)).state.last_seq)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def bench(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Bench]:
    async with broker_world(tmp_path_factory.mktemp("bound-token")) as world:
        broker = await world.start_broker()
        # One authenticated call first, so the replay bucket's stream exists and has a sequence.
        async with world.client(broker) as police:
            await police.list(page_size=1)
        yield Bench(world=world, broker=broker)


def _request(case: str, *, key: str = "") -> requests_pb2.Request:
    request = stop_payment(case_number=case)
    request.idempotency_key = key
    request.issued_at.CopyFrom(to_timestamp(SystemClock().now()))
    return request


async def test_busclient_submit_with_a_bound_token_writes_nothing_to_the_replay_cache(bench: Bench) -> None:
    before = await bench.replay_writes()
    async with bench.world.client(bench.broker) as police:
        accepted = await police.submit(_request("BT-CLIENT-0001"))
    assert not accepted.duplicate
    assert await bench.replay_writes() == before
    # A read is no signed request: its (unbound) token is recorded as before.
    async with bench.world.client(bench.broker) as police:
        await police.get(accepted.status.id)
    assert await bench.replay_writes() == before + 1


async def test_busclient_binds_its_extend_and_release_tokens(bench: Bench) -> None:
    async with bench.world.client(bench.broker) as police:
        target = (await police.submit(_request("BT-HOLD-0001"))).status.id
        account = common_pb2.BankAccountRef(account_number=FRAUD_ACCOUNT, holder_name="李某")
        before = await bench.replay_writes()
        for call, body in (
            (police.extend, {"extend": requests_pb2.Extend(target_request_id=target, account=account)}),
            (police.release, {"release": requests_pb2.Release(target_request_id=target, account=account)}),
        ):
            request = requests_pb2.Request(
                case_ref=stop_payment(case_number="BT-HOLD-0001").case_ref,
                priority=common_pb2.PRIORITY_GREEN,
                **body,
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(request)
            details = error_details(caught.value)
            # Past authentication: the hold is refused by the lifecycle (still SUBMITTED), not the token.
            assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "NO_ACTIVE_HOLD")
    assert await bench.replay_writes() == before


async def test_a_replayed_bound_token_with_its_request_is_answered_as_that_request(bench: Bench) -> None:
    signed = bench.signed(_request("BT-REPLAY-0001", key="bt-replay-key-0001"))
    token = bench.token(bound_to=signed)
    replay_before, inbox_before = await bench.replay_writes(), await bench.inbox_writes()
    first = await bench.submit(signed, token)
    second = await bench.submit(signed, token)  # the same token, the same signed request
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.status.id == first.status.id
    assert await bench.inbox_writes() == inbox_before + 1  # one inbox message, not two
    assert await bench.replay_writes() == replay_before


async def test_a_replayed_bound_token_without_idempotency_key_creates_no_second_request(bench: Bench) -> None:
    signed = bench.signed(_request("BT-NOKEY-0001"))
    token = bench.token(bound_to=signed)
    inbox_before = await bench.inbox_writes()
    first = await bench.submit(signed, token)
    second = await bench.submit(signed, token)
    assert second.status.id == first.status.id
    assert await bench.inbox_writes() == inbox_before + 1


async def test_a_bound_token_with_another_request_is_refused(bench: Bench) -> None:
    bound_to = bench.signed(_request("BT-OTHER-0001", key="bt-other-key-0001"))
    other = bench.signed(_request("BT-OTHER-0002", key="bt-other-key-0002"))
    token = bench.token(bound_to=bound_to)
    inbox_before = await bench.inbox_writes()
    assert await bench.refusal(other, token) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "TOKEN_NOT_FOR_THIS_REQUEST",
    )
    assert await bench.inbox_writes() == inbox_before
    # The refusal used nothing up: the token still carries the request it is bound to.
    assert not (await bench.submit(bound_to, token)).duplicate


async def test_a_bound_token_is_refused_on_a_call_without_a_signed_request(bench: Bench) -> None:
    signed = bench.signed(_request("BT-READ-0001", key="bt-read-key-0001"))
    accepted = await bench.submit(signed, bench.token(bound_to=signed))
    async with bench.bus() as bus:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await bus.Get(
                bus_pb2.GetRequest(id=accepted.status.id), metadata=bench.token(bound_to=signed), timeout=10
            )
    details = error_details(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_NOT_FOR_THIS_REQUEST")


async def test_an_unbound_token_still_goes_through_the_replay_cache(bench: Bench) -> None:
    signed = bench.signed(_request("BT-UNBOUND-0001", key="bt-unbound-key-0001"))
    token = bench.token()
    before = await bench.replay_writes()
    assert not (await bench.submit(signed, token)).duplicate
    assert await bench.replay_writes() == before + 1
    assert await bench.refusal(signed, token) == (grpc.StatusCode.UNAUTHENTICATED, "REPLAYED_TOKEN")
