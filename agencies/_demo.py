"""The demo scenario, as far as the bus is built: one GREEN stop-payment, end to end, for real.

Police sign a stop-payment; the broker's protocol core verifies it, routes it by account prefix,
notarizes it and publishes it to the bank's JetStream inbox; the bank side pulls it, verifies the
notarization and the police signature, and acks it. A tampered copy is published too, and refused.
Nothing is simulated: real keys, a real nats-server with JetStream, real signatures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import nats
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2

from broker.protocol import (
    Clock,
    ProtocolError,
    SystemClock,
    VerificationError,
)
from broker.protocol._directory import load_directory
from broker.protocol._embedded import EmbeddedNatsConfig, nats_for
from broker.protocol._envelope import notarize, open_envelope, sign_request, verify_request
from broker.protocol._ids import new_uuid7
from broker.protocol._nats import NatsSettings, connect, ensure_streams, fetch_batch
from broker.protocol._provision import ensure_agency_keys, load_agency_signing_key, load_broker_signing_key
from broker.protocol._registry import Registry
from broker.protocol._subjects import INBOX_STREAM, inbox_consumer, inbox_filter, inbox_subject, stream_specs

__all__ = ["DemoConfig", "DemoReport", "run_demo"]

DEFAULT_DIRECTORY = Path(__file__).with_name("directory.toml")

POLICE = "police-310115"
FRAUD_ACCOUNT = "6222020200001234567"


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    """How to run the demo."""

    state_dir: Path
    """Where keys and the embedded NATS store live (created if missing)."""
    directory: Path = DEFAULT_DIRECTORY
    """The agency directory."""
    nats_url: str | None = None
    """An existing NATS with JetStream; None starts the embedded server."""
    clock: Clock = field(default_factory=SystemClock)
    """Time source."""


@dataclass(kw_only=True)
class DemoReport:
    """What happened, step by step."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    """(what happened, milliseconds since the start)."""
    request_id: str = ""
    """Id of the delivered request."""
    recipient: str = ""
    """Who it was routed to."""
    delivered: bool = False
    """The bank side verified and acked it."""
    tampered_refused: str = ""
    """Name of the error that refused the tampered copy."""

    @property
    def ok(self) -> bool:
        return self.delivered and bool(self.tampered_refused)


def _sample_request(clock: Clock) -> requests_pb2.Request:
    issued = Timestamp()
    issued.FromDatetime(clock.now())
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number="SH-PD-2026-1121-0001",
            issuing_agency=POLICE,
            legal_instrument_id="沪公(浦)急止字[2026]1121号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        issued_at=issued,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=FRAUD_ACCOUNT, holder_name="李某"),
            amount=common_pb2.Money(currency="CNY", minor_units=4_800_000),
        ),
    )


async def run_demo(config: DemoConfig, *, say: Callable[[str], None] = print) -> DemoReport:
    report = DemoReport()
    started = time.perf_counter()

    def step(text: str) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        report.steps.append((text, elapsed))
        say(f"[{elapsed:8.1f} ms] {text}")

    clock = config.clock
    overlay = ensure_agency_keys(config.directory, config.state_dir, clock=clock)
    registry: Registry = load_directory(config.directory, key_overlays=[overlay])
    step(f"directory loaded: {len(registry.agencies())} agencies, keys in {overlay.parent}")

    async with nats_for(config.nats_url, EmbeddedNatsConfig(store_dir=config.state_dir / "nats")) as url:
        nc = await connect(NatsSettings.from_url(url, name="greenchannel-demo"))
        try:
            js = nc.jetstream()
            await ensure_streams(js, stream_specs())
            step(f"NATS JetStream ready at {url}")
            await _deliver_one(config, registry, js, clock, report, step)
        finally:
            await nc.drain()
    return report


async def _deliver_one(
    config: DemoConfig,
    registry: Registry,
    js: nats.js.JetStreamContext,
    clock: Clock,
    report: DemoReport,
    step: Callable[[str], None],
) -> None:
    police_key = load_agency_signing_key(config.state_dir, POLICE)
    broker_key = load_broker_signing_key(config.state_dir)

    signed = sign_request(_sample_request(clock), key=police_key, sender=POLICE, clock=clock)
    step(f"{POLICE} signed a GREEN stop-payment ({len(signed.payload)} bytes, EdDSA detached JWS)")

    verified = verify_request(signed, keys=registry, sender=POLICE, clock=clock)
    bank = registry.bank_for_account(verified.request.stop_payment.account.account_number)
    if bank is None:
        raise ProtocolError("the sample account does not route to any bank in the directory")
    request_id = new_uuid7(clock)
    envelope = notarize(
        verified,
        request_id=request_id,
        recipient=bank.id,
        deadlines=envelope_pb2.Deadlines(),
        broker_key=broker_key,
        clock=clock,
    )
    step(f"broker verified the signature, routed by account prefix to {bank.id}, notarized {request_id}")

    subject = inbox_subject(bank.id, "green", "stop_payment")
    ack = await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": request_id})
    again = await js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": request_id})
    step(f"published to {subject} (stream seq {ack.seq}); republish deduplicated: {again.duplicate}")

    tampered = envelope_pb2.Envelope()
    tampered.CopyFrom(envelope)
    body = requests_pb2.Request.FromString(tampered.body)
    body.stop_payment.amount.minor_units = 1
    tampered.body = body.SerializeToString()
    await js.publish(subject, tampered.SerializeToString(), headers={"Nats-Msg-Id": request_id + "-tampered"})
    step("published a tampered copy (amount changed after signing)")

    sub = await js.pull_subscribe(
        inbox_filter(bank.id, "green"), durable=inbox_consumer(bank.id, "green"), stream=INBOX_STREAM
    )
    for msg in await fetch_batch(sub, 10, timeout=2.0):
        candidate = envelope_pb2.Envelope.FromString(msg.data)
        try:
            opened = open_envelope(candidate, keys=registry, recipient=bank.id, clock=clock)
        except VerificationError as exc:
            report.tampered_refused = type(exc).__name__
            step(f"{bank.id} refused a message: {type(exc).__name__}")
            await msg.term()
            continue
        amount, case = opened.request.stop_payment.amount, opened.header.case_ref.case_number
        step(
            f"{bank.id} verified notarization + {opened.header.sender} signature: "
            f"hold {amount.minor_units / 100:.2f} {amount.currency}, case {case}"
        )
        await msg.ack_sync(timeout=timedelta(seconds=2).total_seconds())
        report.request_id, report.recipient, report.delivered = opened.header.id, bank.id, True
