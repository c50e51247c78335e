"""A real broker world for integration tests: nats-server, keys, broker replicas, clients, an inbox.

Nothing is mocked: an EmbeddedNats with a temp store, real Broker processes in this event loop
(grpc.aio on port 0), real BusClients, and helpers that play an agency's adapter by hand
(pulling the inbox, verifying envelopes, signing and publishing events).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, results_pb2
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext

from agencies import DEFAULT_POLICY
from broker.client import BusClient, error_details
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub import Broker, BrokerConfig, DeadlineWatchConfig, EventProcessorConfig, LedgerConfig
from broker.protocol import (
    INBOX_STREAM,
    NatsSettings,
    OpenedEnvelope,
    Registry,
    SigningKey,
    SystemClock,
    body_digest,
    connect,
    ensure_agency_keys,
    event_subject,
    fetch_batch,
    inbox_filter,
    load_agency_encryption_keys,
    load_agency_signing_key,
    load_directory,
    open_envelope,
    sign_event,
)
from tests._sla import DEFAULT_SLA_POLICY

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
POLICE = "police-310115"
BANK = "bank-icbc"
FRAUD_ACCOUNT = "6222020200001234567"


def stop_payment(
    *,
    account: str = FRAUD_ACCOUNT,
    minor_units: int = 4_800_000,
    case_number: str = "SH-PD-2026-0001",
    issuing_agency: str = POLICE,
    priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN,
    recipient: str = "",
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=case_number,
            issuing_agency=issuing_agency,
            legal_instrument_id="沪公(浦)急止字[2026]0001号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=priority,
        recipient=recipient,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=account, holder_name="李某"),
            amount=common_pb2.Money(currency="CNY", minor_units=minor_units),
        ),
    )


@dataclass
class World:
    state_dir: Path
    nats: EmbeddedNats
    registry: Registry
    nc: Client
    js: JetStreamContext
    brokers: list[Broker] = field(default_factory=list)

    def key(self, agency: str) -> SigningKey:
        return load_agency_signing_key(self.state_dir, agency)

    def config(self, **overrides: object) -> BrokerConfig:
        values: dict[str, object] = {
            "nats": NatsSettings(servers=(self.nats.url,), name="test-broker", initial_connect_timeout=5.0),
            "state_dir": self.state_dir,
            "directory": DIRECTORY,
            "policy": DEFAULT_POLICY,
            "sla": DEFAULT_SLA_POLICY,
            "listen": "127.0.0.1:0",
            "events": EventProcessorConfig(fetch_timeout=0.2, unknown_request_delay=0.1),
            "timers": DeadlineWatchConfig(fetch_timeout=0.2),
            "ledger": LedgerConfig(fetch_timeout=0.2),
            "shutdown_grace": 1.0,
        }
        values.update(overrides)
        return BrokerConfig(**values)  # type: ignore[arg-type]

    async def start_broker(self, **overrides: object) -> Broker:
        broker = Broker(self.config(**overrides))
        await broker.__aenter__()
        self.brokers.append(broker)
        return broker

    def client(self, broker: Broker, agency: str = POLICE) -> BusClient:
        return BusClient(broker.address, agency_id=agency, signing_key=self.key(agency), timeout=5.0)

    async def inbox(self, agency: str = BANK, *, wait: float = 2.0) -> list[OpenedEnvelope]:
        """Everything now in an agency's inbox, verified as its adapter would."""
        sub = await self.js.pull_subscribe(
            inbox_filter(agency),
            durable=f"test-{agency}-{uuid.uuid4().hex[:8]}",
            stream=INBOX_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT),
        )
        opened: list[OpenedEnvelope] = []
        try:
            while msgs := await fetch_batch(sub, 100, wait):
                for msg in msgs:
                    envelope = envelope_pb2.Envelope.FromString(msg.data)
                    opened.append(
                        open_envelope(
                            envelope,
                            keys=self.registry,
                            recipient=agency,
                            clock=SystemClock(),
                            decrypt=load_agency_encryption_keys(self.state_dir, agency),
                        )
                    )
                    await msg.ack()
                wait = 0.2
        finally:
            await sub.unsubscribe()
        return opened

    async def adapter_event(
        self,
        opened: OpenedEnvelope | None,
        state: common_pb2.RequestState.ValueType,
        *,
        agency: str = BANK,
        request_id: str | None = None,
        digest: str | None = None,
        result: results_pb2.Result | None = None,
        signer: str | None = None,
        event_id: str | None = None,
    ) -> lifecycle_pb2.LifecycleEvent:
        """Sign and publish a lifecycle event as an adapter does."""
        at = Timestamp()
        at.GetCurrentTime()
        rid = request_id or (opened.header.id if opened else "")
        event = lifecycle_pb2.LifecycleEvent(
            event_id=event_id or str(uuid.uuid4()),
            request_id=rid,
            state=state,
            actor=agency,
            at=at,
            request_digest=digest or (opened.header.body_digest if opened else body_digest(b"")),
        )
        if result is not None:
            event.result.CopyFrom(result)
            event.reason = result.reason
        signed = sign_event(event, key=self.key(signer or agency), clock=SystemClock())
        await self.js.publish(
            event_subject(agency, rid), signed.SerializeToString(), headers={"Nats-Msg-Id": event.event_id}
        )
        return event


@contextlib.asynccontextmanager
async def broker_world(tmp_path: Path) -> AsyncIterator[World]:
    state_dir = tmp_path / "state"
    overlay = ensure_agency_keys(DIRECTORY, state_dir, clock=SystemClock())
    registry = load_directory(DIRECTORY, key_overlays=[overlay])
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path / "nats")) as nats_server:
        nc = await connect(
            NatsSettings(servers=(nats_server.url,), name="test-world", initial_connect_timeout=5.0)
        )
        world = World(state_dir=state_dir, nats=nats_server, registry=registry, nc=nc, js=nc.jetstream())
        try:
            yield world
        finally:
            for broker in reversed(world.brokers):
                await broker.aclose()
            await nc.drain()


async def token_refusal(address: str, agency: str, key: SigningKey) -> str | None:
    """Why the broker at ``address`` refuses a bearer token of ``agency`` signed with ``key``
    (the ErrorInfo reason of its UNAUTHENTICATED answer), or None if it accepts the token."""
    async with BusClient(address, agency_id=agency, signing_key=key, timeout=5.0) as client:
        try:
            await client.list(page_size=1)
        except grpc.aio.AioRpcError as exc:
            details = error_details(exc)
            assert details.code is grpc.StatusCode.UNAUTHENTICATED, details
            return details.reason
    return None
