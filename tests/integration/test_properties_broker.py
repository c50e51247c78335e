"""Property tests against the real broker and a real adapter: mutated messages are refused, typed,
and nothing is stored, published or executed.

One broker world for the module (nats-server, a Broker on port 0, the agencies' keys). Hypothesis
draws mutations of a genuinely signed request (its body bytes, its detached JWS, or the serialized
``SubmitRequest`` as it travels) and submits each through the broker's gRPC API. Every one must be
answered INVALID_ARGUMENT or UNAUTHENTICATED with a ``google.rpc.ErrorInfo`` reason (never
INTERNAL or UNKNOWN); afterwards the broker still reports SERVING and GC_INBOX, GC_WATCH and the
request journal (GC_WATCH) are exactly as before.

Then bank-icbc's adapter runtime runs against a counting BankService on port 0, and mutated
notarized envelopes are published straight into its inbox (as someone with NATS access could):
each is refused with a typed error in its dead letter (and a FAILED event where it names a
request), and the bank's system is never called.

Hypothesis runs in a worker thread and hands each example to this event loop, which keeps serving
the broker meanwhile; runs are deterministic (``derandomize=True``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
import nats.js.errors
import pytest
import pytest_asyncio
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import (
    bank_pb2_grpc,
    bus_pb2,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    results_pb2,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from adapters import AdapterConfig, AdapterRuntime
from broker.client import bearer_metadata, error_details
from broker.hub import Broker
from broker.protocol import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    INBOX_STREAM,
    WATCH_STREAM,
    SystemClock,
    VerificationError,
    current_encryption_key,
    deadletter_subject,
    event_subject,
    fetch_batch,
    inbox_subject,
    load_agency_encryption_keys,
    load_broker_signing_key,
    new_uuid7,
    notarize,
    seal_for_recipient,
    sign_request,
    status_filter,
    verify_event,
    verify_request,
)
from tests.integration.broker_world import BANK, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

T = TypeVar("T")

PROPERTY = settings(
    max_examples=50,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
REFUSED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED}


def _all_subclasses(cls: type) -> set[type]:
    found: set[type] = set(cls.__subclasses__())
    for sub in list(found):
        found |= _all_subclasses(sub)
    return found


# What the adapter may name as the error of a refused inbox message: the protocol's typed errors,
# and DecodeError for bytes that are no Envelope at all (refused before anything is parsed further).
TYPED_ERRORS = {cls.__name__ for cls in _all_subclasses(VerificationError)} | {
    "InvalidMessageError",
    "DecodeError",
}


# -- mutations ----------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    size = len(original)
    op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete"]))
    if op == "flip":
        i = draw(st.integers(0, size - 1))
        return original[:i] + bytes([original[i] ^ (1 << draw(st.integers(0, 7)))]) + original[i + 1 :]
    if op == "truncate":
        return original[: draw(st.integers(0, size - 1))]
    if op == "insert":
        i = draw(st.integers(0, size))
        return original[:i] + draw(st.binary(min_size=1, max_size=8)) + original[i:]
    if op == "delete":
        i = draw(st.integers(0, size - 1))
        return original[:i] + original[draw(st.integers(i + 1, min(size, i + 8))) :]
    return original + draw(st.binary(min_size=1, max_size=16))


@st.composite
def mutated_text(draw: st.DrawFn, original: str) -> str:
    size = len(original)
    op = draw(st.sampled_from(["replace", "truncate", "insert", "delete"]))
    chars = st.sampled_from(list("AZaz09-_.=é")) | st.characters(codec="utf-8")
    if op == "replace":
        i = draw(st.integers(0, size - 1))
        return original[:i] + draw(chars) + original[i + 1 :]
    if op == "truncate":
        return original[: draw(st.integers(0, size - 1))]
    if op == "insert":
        i = draw(st.integers(0, size))
        return original[:i] + draw(st.text(chars, min_size=1, max_size=4)) + original[i:]
    i = draw(st.integers(0, size - 1))
    return original[:i] + original[draw(st.integers(i + 1, min(size, i + 8))) :]


# -- the arena ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    inbox: tuple[int, int]
    watch: tuple[int, int]
    requests: tuple[int, int]


@dataclass
class Arena:
    world: World
    broker: Broker
    channel: grpc.aio.Channel
    loop: asyncio.AbstractEventLoop

    def run(self, work: Callable[[], Awaitable[T]]) -> T:
        """From hypothesis' worker thread: run ``work`` on the arena's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(_call(work), self.loop).result(timeout=60)

    def signed(self) -> envelope_pb2.SignedMessage:
        request = stop_payment(priority=common_pb2.PRIORITY_STANDARD, case_number="HX-PROP-0001")
        request.issued_at.GetCurrentTime()
        return sign_request(request, key=self.world.key(POLICE), sender=POLICE, clock=SystemClock())

    async def submit_raw(self, data: bytes) -> grpc.aio.AioRpcError | None:
        """Send serialized SubmitRequest bytes as they are; the refusal, or None if accepted."""
        call = self.channel.unary_unary(
            "/greenchannel.v1.BusService/Submit",
            request_serializer=lambda raw: raw,
            response_deserializer=bus_pb2.SubmitResponse.FromString,
        )
        try:
            await call(data, metadata=self.token(), timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc
        return None

    def token(self) -> tuple[tuple[str, str], ...]:
        # A fresh token each time: the replay cache refuses a second use.
        return bearer_metadata(self.world.key(POLICE), agency_id=POLICE, clock=SystemClock())

    async def snapshot(self) -> Snapshot:
        js = self.world.js
        inbox = (await js.stream_info(INBOX_STREAM)).state
        watch = (await js.stream_info(WATCH_STREAM)).state
        # The request journal is GC_WATCH; its per-request subjects count the requests stored.
        requests = (await js.stream_info(WATCH_STREAM, subjects_filter=status_filter())).state
        return Snapshot(
            inbox=(inbox.messages, inbox.last_seq),
            watch=(watch.messages, watch.last_seq),
            requests=(len(requests.subjects or {}), requests.last_seq),
        )

    async def serving(self) -> bool:
        health = health_pb2_grpc.HealthStub(self.channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)


async def _call(work: Callable[[], Awaitable[T]]) -> T:
    return await work()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def arena(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arena]:
    async with broker_world(tmp_path_factory.mktemp("properties-broker")) as world:
        broker = await world.start_broker()
        async with grpc.aio.insecure_channel(broker.address) as channel:
            yield Arena(world=world, broker=broker, channel=channel, loop=asyncio.get_running_loop())


def _assert_refused(exc: grpc.aio.AioRpcError | None, what: str) -> str:
    assert exc is not None, f"{what}: the mutated request was accepted"
    details = error_details(exc)
    assert details.code in REFUSED, f"{what}: {details.code} {details.message}"
    assert details.reason, f"{what}: no google.rpc.ErrorInfo reason ({details.message})"
    return details.reason


# -- the broker's Submit ------------------------------------------------------------------------


async def _mutation_property(
    arena: Arena, mutate: Callable[[st.DataObject, bytes], bytes | None]
) -> set[str]:
    """Run a hypothesis property in a worker thread; every mutated submission must be refused."""
    reasons: set[str] = set()
    before = await arena.snapshot()
    # Signed once: hypothesis needs the same original for every example to replay and shrink.
    original = _with(arena.signed())

    @PROPERTY
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        mutated = mutate(data, original)
        assume(mutated is not None)
        assert mutated is not None
        reasons.add(_assert_refused(arena.run(lambda: arena.submit_raw(mutated)), repr(mutated[:40])))

    await asyncio.to_thread(prop)
    assert await arena.serving()
    assert await arena.snapshot() == before
    return reasons


def _with(signed: envelope_pb2.SignedMessage) -> bytes:
    return bus_pb2.SubmitRequest(request=signed).SerializeToString()


async def test_mutated_request_bodies_are_refused_and_nothing_changes(arena: Arena) -> None:
    def mutate(data: st.DataObject, original: bytes) -> bytes | None:
        signed = bus_pb2.SubmitRequest.FromString(original).request
        payload = data.draw(mutated_bytes(signed.payload))
        if payload == signed.payload:
            return None
        return _with(envelope_pb2.SignedMessage(payload=payload, signature=signed.signature))

    reasons = await _mutation_property(arena, mutate)
    assert reasons <= {"DIGEST_MISMATCH", "INVALID_REQUEST", "WRONG_AUDIENCE", "MALFORMED_SIGNATURE"}, reasons


async def test_mutated_signatures_are_refused_and_nothing_changes(arena: Arena) -> None:
    def mutate(data: st.DataObject, original: bytes) -> bytes | None:
        signed = bus_pb2.SubmitRequest.FromString(original).request
        signature = data.draw(mutated_text(signed.signature))
        if signature == signed.signature:
            return None
        return _with(envelope_pb2.SignedMessage(payload=signed.payload, signature=signature))

    reasons = await _mutation_property(arena, mutate)
    assert reasons <= {
        "MALFORMED_SIGNATURE",
        "BAD_SIGNATURE",
        "UNKNOWN_KEY",
        "WRONG_ISSUER",
        "WRONG_AUDIENCE",
        "DIGEST_MISMATCH",
        "INVALID_REQUEST",  # e.g. a signature longer than the contract's max_len
        "EXPIRED",
        "NOT_YET_VALID",
        "LIFETIME_TOO_LONG",
        "KEY_NOT_VALID",
    }, reasons


async def test_mutated_submit_messages_on_the_wire_are_refused_and_nothing_changes(arena: Arena) -> None:
    """The serialized SubmitRequest, mutated anywhere: what the broker decodes must not verify."""

    def mutate(data: st.DataObject, original: bytes) -> bytes | None:
        mutated = data.draw(mutated_bytes(original))
        return None if mutated == original else mutated

    await _mutation_property(arena, mutate)


# -- the adapter's inbox ------------------------------------------------------------------------


class CountingBank(bank_pb2_grpc.BankServiceServicer):
    """A bank system that only counts: any call at all fails the property."""

    def __init__(self) -> None:
        self.calls = 0

    async def _refuse(self, context: Any) -> Any:
        self.calls += 1
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this bank never acts in this test")

    async def StopPayment(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)

    async def Freeze(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)

    async def ReleaseHold(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)

    async def ExtendHold(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)

    async def QueryBankData(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)

    async def ReturnFunds(self, request: Any, context: Any) -> Any:
        return await self._refuse(context)


def _notarized(world: World) -> envelope_pb2.Envelope:
    """A stop-payment police -> bank-icbc as the broker publishes it: notarized, body sealed."""
    clock = SystemClock()
    request = stop_payment(priority=common_pb2.PRIORITY_GREEN, case_number="HX-PROP-0002")
    request.issued_at.CopyFrom(_now())
    signed = sign_request(request, key=world.key(POLICE), sender=POLICE, clock=clock)
    verified = verify_request(signed, keys=world.registry, sender=POLICE, clock=clock)
    envelope = notarize(
        verified,
        request_id=new_uuid7(clock),
        recipient=BANK,
        deadlines=envelope_pb2.Deadlines(),
        broker_key=load_broker_signing_key(world.state_dir),
        clock=clock,
    )
    return seal_for_recipient(envelope, current_encryption_key(world.registry.get(BANK), at=clock.now()))


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


ENVELOPE_FIELDS = [
    "header",
    "notary_signature",
    "body_signature",
    "sealed_body.ciphertext",
    "sealed_body.nonce",
    "sealed_body.ephemeral_public_key",
    "sealed_body.recipient_kid",
]


def _mutated_envelope(data: st.DataObject, original: envelope_pb2.Envelope) -> envelope_pb2.Envelope | None:
    envelope = envelope_pb2.Envelope()
    envelope.CopyFrom(original)
    path = data.draw(st.sampled_from(ENVELOPE_FIELDS))
    holder: Any = envelope.sealed_body if path.startswith("sealed_body.") else envelope
    name = path.removeprefix("sealed_body.")
    value = getattr(holder, name)
    mutated = data.draw(mutated_bytes(value)) if isinstance(value, bytes) else data.draw(mutated_text(value))
    if mutated == value:
        return None
    setattr(holder, name, mutated)
    return envelope


async def _deadletter_for(arena: Arena, stream_seq: int, *, within: float = 60.0) -> dict[str, Any]:
    """The adapter's dead letter for inbox message ``stream_seq`` (waits on a pull consumer)."""
    sub = await arena.world.js.pull_subscribe(
        deadletter_subject(BANK),
        stream=DEADLETTER_STREAM,
        config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    try:
        while loop.time() < deadline:
            for msg in await fetch_batch(sub, 64, 0.25):
                record: dict[str, Any] = json.loads(msg.data)
                if record.get("stream") == INBOX_STREAM and record.get("stream_seq") == stream_seq:
                    return record
    finally:
        await sub.unsubscribe()
    raise AssertionError(f"no dead letter for inbox message {stream_seq} within {within}s")


async def _failed_event(arena: Arena, request_id: str) -> lifecycle_pb2.LifecycleEvent | None:
    """The adapter's signed FAILED event about ``request_id``, if it published one."""
    js = arena.world.js
    try:
        msg = await js.get_last_msg(EVENTS_STREAM, event_subject(BANK, request_id))
    except nats.js.errors.NotFoundError:  # no event for that id
        return None
    event, claims = verify_event(
        envelope_pb2.SignedMessage.FromString(msg.data or b""), keys=arena.world.registry, clock=SystemClock()
    )
    assert claims.iss == BANK
    return event


async def test_mutated_envelopes_never_reach_the_bank(arena: Arena, tmp_path: Path) -> None:
    world = arena.world
    bank = CountingBank()
    server = grpc.aio.server()
    bank_pb2_grpc.add_BankServiceServicer_to_server(bank, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    config = AdapterConfig(
        agency_id=BANK,
        agency_target=f"127.0.0.1:{port}",
        state_dir=tmp_path / "adapter",
        call_timeout=1.0,
        retry_budget=1.0,
        ack_wait=5.0,
        idle_fetch_timeout=0.25,
        shutdown_grace=1.0,
        publish_timeout=5.0,
    )
    runtime = AdapterRuntime(
        config,
        registry=world.registry,
        signing_key=world.key(BANK),
        clock=SystemClock(),
        nats_client=world.nc,
        decryption_keys=load_agency_encryption_keys(world.state_dir, BANK),
    )
    errors: set[str] = set()
    try:
        async with runtime:

            async def publish_and_wait(envelope: envelope_pb2.Envelope) -> None:
                ack = await world.js.publish(
                    inbox_subject(BANK, "green", "stop_payment"),
                    envelope.SerializeToString(),
                    headers={"Nats-Msg-Id": f"hx-{new_uuid7(SystemClock())}"},
                )
                record = await _deadletter_for(arena, ack.seq)
                errors.add(record["error"])
                assert record["error"] in TYPED_ERRORS, record
                assert record["reason"] in {"SIGNATURE_INVALID", "INVALID_REQUEST"}, record
                if record["request_id"] is not None:
                    event = await _failed_event(arena, record["request_id"])
                    assert event is not None, record
                    assert event.state == common_pb2.REQUEST_STATE_FAILED
                    assert event.reason == results_pb2.ReasonCode.Value(f"REASON_CODE_{record['reason']}")

            arena_original = _notarized(world)

            @settings(PROPERTY, max_examples=40)
            @given(st.data())
            def prop(data: st.DataObject) -> None:
                envelope = _mutated_envelope(data, arena_original)
                assume(envelope is not None)
                assert envelope is not None
                arena.run(lambda: publish_and_wait(envelope))

            await asyncio.to_thread(prop)
    finally:
        await server.stop(grace=None)
    assert bank.calls == 0, "the bank's system was called for a mutated envelope"
    assert errors, "the property ran"
