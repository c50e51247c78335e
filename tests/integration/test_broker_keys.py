"""RegistryService.ListBrokerKeys: a client verifies what the broker notarized from RPCs alone.

A real broker, a real bank inbox: the envelope is checked with the broker keys from
``ListBrokerKeys`` and the sender's keys from ``GetAgency``, never with anyone's state directory.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import grpc
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import envelope_pb2, registry_pb2, registry_pb2_grpc
from nats.js.api import AckPolicy, ConsumerConfig

from broker.client import error_details
from broker.hub import Broker
from broker.protocol import (
    BROKER_ID,
    INBOX_STREAM,
    NOTARIZATION_TYPE,
    KeyUse,
    PublicKey,
    StaticKeyStore,
    SystemClock,
    VerificationError,
    fetch_batch,
    inbox_filter,
    load_agency_encryption_keys,
    open_envelope,
    verify_detached,
)
from tests.integration.broker_world import BANK, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration


def _when(stamp: Timestamp, present: bool) -> datetime | None:
    return stamp.ToDatetime(tzinfo=UTC) if present else None


def public_key(key: registry_pb2.AgencyKey) -> PublicKey:
    """The registry's key message as a verifier's key; the constructor re-derives and checks the kid."""
    return PublicKey(
        kid=key.kid,
        raw=key.public_key,
        use=KeyUse.SIG if key.use == registry_pb2.KEY_USE_SIG else KeyUse.ENC,
        not_before=_when(key.not_before, key.HasField("not_before")),
        not_after=_when(key.not_after, key.HasField("not_after")),
        revoked_at=_when(key.revoked_at, key.HasField("revoked_at")),
    )


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[World, Broker]]:
    async with broker_world(tmp_path_factory.mktemp("broker-keys")) as world:
        yield world, await world.start_broker()


async def test_the_broker_serves_its_signing_and_encryption_keys(world: tuple[World, Broker]) -> None:
    w, broker = world
    async with w.client(broker, POLICE) as client:
        served = [public_key(key) for key in await client.broker_keys()]
    expected = w.registry.broker_keys()
    assert tuple(served) == expected
    assert {key.use for key in served} == {KeyUse.SIG, KeyUse.ENC}
    assert all(key.not_before is not None and key.revoked_at is None for key in served)


async def test_any_agency_may_read_them_but_not_anonymously(world: tuple[World, Broker]) -> None:
    w, broker = world
    async with w.client(broker, BANK) as bank:
        assert len(await bank.broker_keys()) == len(w.registry.broker_keys())
    async with grpc.aio.insecure_channel(broker.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await registry_pb2_grpc.RegistryServiceStub(channel).ListBrokerKeys(
                registry_pb2.ListBrokerKeysRequest(), timeout=5.0
            )
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_details(refused.value).reason == "MISSING_TOKEN"


async def _raw_inbox(w: World, agency: str, request_id: str) -> envelope_pb2.Envelope:
    sub = await w.js.pull_subscribe(
        inbox_filter(agency),
        durable=f"test-keys-{uuid.uuid4().hex[:8]}",
        stream=INBOX_STREAM,
        config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
    )
    try:
        for _ in range(50):  # bounded: the broker published before Submit answered
            for msg in await fetch_batch(sub, 100, 0.2):
                envelope = envelope_pb2.Envelope.FromString(msg.data)
                header = envelope_pb2.EnvelopeHeader.FromString(envelope.header)
                if header.id == request_id:
                    return envelope
    finally:
        await sub.unsubscribe()
    raise AssertionError(f"request {request_id} never reached the inbox of {agency}")


async def test_a_notarization_verifies_with_the_served_keys_alone(world: tuple[World, Broker]) -> None:
    w, broker = world
    async with w.client(broker, POLICE) as police, w.client(broker, BANK) as bank:
        accepted = await police.submit(stop_payment())
        broker_keys = [public_key(key) for key in await bank.broker_keys()]
        sender_keys = [public_key(key) for key in (await bank.agency(POLICE)).keys]
    envelope = await _raw_inbox(w, BANK, accepted.status.id)

    served = StaticKeyStore({BROKER_ID: broker_keys, POLICE: sender_keys})
    claims = verify_detached(
        envelope.notary_signature,
        envelope.header,
        keys=served,
        audience=BANK,
        clock=SystemClock(),
        expected_issuer=BROKER_ID,
        expected_type=NOTARIZATION_TYPE,
        max_ttl=None,
    )
    assert claims.kid in {key.kid for key in broker_keys if key.use is KeyUse.SIG}
    opened = open_envelope(
        envelope,
        keys=served,
        recipient=BANK,
        clock=SystemClock(),
        decrypt=load_agency_encryption_keys(w.state_dir, BANK),
    )
    assert opened.header.id == accepted.status.id

    # Without the broker's keys the same envelope proves nothing.
    with pytest.raises(VerificationError):
        open_envelope(
            envelope,
            keys=StaticKeyStore({POLICE: sender_keys}),
            recipient=BANK,
            clock=SystemClock(),
            decrypt=load_agency_encryption_keys(w.state_dir, BANK),
        )
