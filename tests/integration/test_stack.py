"""The whole stack (NATS, broker, reference agencies behind their adapters) under trouble.

The reference bank's own records are the proof: its execution journal and its holds table.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from agencies import _seed as seed
from agencies.bank import BankCore
from agencies.demo import Stack
from agencies.police import PoliceDesk
from broker.client import FraudReporter
from broker.protocol import DEADLETTER_STREAM, INBOX_STREAM, NatsSettings, connect, fetch_batch, inbox_filter
from tests._wait import eventually
from tests.integration.broker_world import stop_payment
from tests.integration.stack_config import quick_stack_config

pytestmark = pytest.mark.integration

DONE = {
    common_pb2.REQUEST_STATE_EXECUTED,
    common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    config = quick_stack_config(root / "keys", root / "data")
    async with Stack(config) as running:
        yield running


def bank(stack: Stack, agency: str) -> BankCore:
    core = stack.agencies[agency].core
    assert isinstance(core, BankCore)
    return core


async def inbox_envelope(stack: Stack, agency: str, request_id: str) -> envelope_pb2.Envelope:
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-reader"))
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(
            inbox_filter(agency),
            durable=f"reader-{uuid.uuid4().hex[:8]}",
            stream=INBOX_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL),
        )
        for msg in await fetch_batch(sub, 100, 1.0):
            envelope = envelope_pb2.Envelope.FromString(msg.data)
            if envelope_pb2.EnvelopeHeader.FromString(envelope.header).id == request_id:
                return envelope
    finally:
        await nc.drain()
    raise AssertionError(f"{request_id} is not in {agency}'s inbox")


async def republish(stack: Stack, agency: str, envelope: envelope_pb2.Envelope) -> None:
    """Put a message on an inbox as a redelivery or an attacker would: under a fresh Nats-Msg-Id."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-writer"))
    try:
        await nc.jetstream().publish(
            f"gc.inbox.{agency}.green.stop_payment",
            envelope.SerializeToString(),
            headers={"Nats-Msg-Id": str(uuid.uuid4())},
        )
    finally:
        await nc.drain()


async def settled(stack: Stack, agency: str) -> None:
    """Wait until the agency's adapter has answered everything in its inbox."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-probe"))
    try:
        js = nc.jetstream()

        async def answered_all() -> bool:
            info = await js.consumer_info(INBOX_STREAM, f"inbox-{agency}-green")
            return bool(info.num_pending == 0 and info.num_ack_pending == 0)

        await eventually(answered_all, what=f"{agency}'s adapter settled")
    finally:
        await nc.drain()


async def dead_letters(stack: Stack, agency: str) -> list[dict[str, object]]:
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-deadletters"))
    try:
        sub = await nc.jetstream().pull_subscribe(
            f"gc.deadletter.{agency}",
            durable=f"dl-{uuid.uuid4().hex[:8]}",
            stream=DEADLETTER_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.NONE),
        )
        return [json.loads(m.data) for m in await fetch_batch(sub, 100, 0.5)]
    finally:
        await nc.drain()


async def test_a_redelivered_request_is_executed_once(stack: Stack) -> None:
    async with stack.client("police-310115") as police:
        accepted = await police.submit(stop_payment(account=seed.MULE_ICBC_ACCOUNT, minor_units=100_000))
        request_id = accepted.status.id
        # The holder name of this mule account differs from the default: expect a clean refusal.
        first = await police.wait_for(request_id, DONE)
        envelope = await inbox_envelope(stack, "bank-icbc", request_id)
        for _ in range(3):
            await republish(stack, "bank-icbc", envelope)
        await settled(stack, "bank-icbc")
        after = await police.get(request_id)
    core = bank(stack, "bank-icbc")
    assert core.execution_count(request_id) == 1
    assert len(after.events) == len(first.events)
    assert after.state == first.state


async def test_money_is_held_once_however_often_the_order_arrives(stack: Stack) -> None:
    request = requests_pb2.Request()
    request.CopyFrom(stop_payment(account=seed.MULE_ICBC_ACCOUNT, minor_units=100_000))
    request.stop_payment.account.holder_name = seed.MULE_ICBC_HOLDER
    async with stack.client("police-310115") as police:
        request_id = (await police.submit(request)).status.id
        status = await police.wait_for(request_id, DONE)
        envelope = await inbox_envelope(stack, "bank-icbc", request_id)
        await republish(stack, "bank-icbc", envelope)
        await republish(stack, "bank-icbc", envelope)
        await settled(stack, "bank-icbc")
    assert status.state in (common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED)
    core = bank(stack, "bank-icbc")
    assert core.execution_count(request_id) == 1
    assert len(core.holds_for(request_id)) == 1


async def test_a_tampered_copy_never_reaches_the_bank_and_changes_nothing(stack: Stack) -> None:
    request = requests_pb2.Request()
    request.CopyFrom(stop_payment(account=seed.MULE_CMB_ACCOUNT, minor_units=50_000))
    request.stop_payment.account.holder_name = seed.MULE_CMB_HOLDER
    async with stack.client("police-310115") as police:
        request_id = (await police.submit(request)).status.id
        before = await police.wait_for(request_id, DONE)
        envelope = await inbox_envelope(stack, "bank-cmb", request_id)
        body = requests_pb2.Request.FromString(envelope.body)
        body.stop_payment.amount.minor_units = 999_999_00
        envelope.body = body.SerializeToString()
        await republish(stack, "bank-cmb", envelope)
        await settled(stack, "bank-cmb")
        after = await police.get(request_id)
    core = bank(stack, "bank-cmb")
    assert core.execution_count(request_id) == 1
    assert len(core.holds_for(request_id)) == 1
    assert after.state == before.state
    assert len(after.events) == len(before.events)

    async def recorded() -> bool:
        letters = await dead_letters(stack, "bank-cmb")
        return any(d.get("request_id") == request_id for d in letters)

    await eventually(recorded, what="the adapter records what it refused")


async def test_a_bank_that_is_down_gets_the_request_when_it_is_back(stack: Stack) -> None:
    server = stack.servers["bank-ccb"]
    core = bank(stack, "bank-ccb")
    request = requests_pb2.Request()
    request.CopyFrom(stop_payment(account=seed.MULE_CCB2_ACCOUNT, minor_units=10_000))
    request.stop_payment.account.holder_name = seed.MULE_CCB2_HOLDER
    await server.stop()
    try:
        async with stack.client("police-310115") as police:
            request_id = (await police.submit(request)).status.id
            taken = await police.wait_for(request_id, {common_pb2.REQUEST_STATE_ACKNOWLEDGED})
            assert taken.state == common_pb2.REQUEST_STATE_ACKNOWLEDGED
            await asyncio.sleep(1.0)  # the adapter keeps retrying meanwhile; nothing executes
            assert core.execution_count(request_id) == 0
            await server.start()
            done = await police.wait_for(request_id, DONE, within=timedelta(seconds=60))
    finally:
        await server.start()
    assert done.state in (common_pb2.REQUEST_STATE_EXECUTED, common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED)
    assert core.execution_count(request_id) == 1


async def test_a_bank_reports_fraud_to_the_police_of_the_region(stack: Stack) -> None:
    report = requests_pb2.FraudReport(
        kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT,
        summary="Account received 12 small credits from unrelated payers and forwarded them within minutes.",
        accounts=[
            common_pb2.BankAccountRef(
                account_number=seed.MULE_ICBC_ACCOUNT, holder_name=seed.MULE_ICBC_HOLDER
            )
        ],
        region="310115",
    )
    async with stack.client("bank-icbc") as bank_bus:
        status = await FraudReporter(bank_bus).send(report, reference="ICBC-FR-2026-0001")
        assert status.recipient == "police-310115"
        # Received by the police desk; their feedback ends it later (test_warning_outcomes.py).
        done = await bank_bus.wait_for(status.id, DONE | {common_pb2.REQUEST_STATE_ACKNOWLEDGED})
    assert done.state == common_pb2.REQUEST_STATE_ACKNOWLEDGED
    desk = stack.agencies["police-310115"].core
    assert isinstance(desk, PoliceDesk)
    assert any(filed.request_id == status.id for filed in desk.fraud_reports())
