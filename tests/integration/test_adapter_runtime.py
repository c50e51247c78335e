"""The adapter runtime for real: its own nats-server, real keys and signatures, real gRPC servers.

A police agency signs, the broker key notarizes and the envelope lands in bank-icbc's inbox
exactly as agencies/_demo.py does it (in clear, or its body sealed to the bank as the broker
publishes it); the runtime for bank-icbc calls a small BankService servicer on port 0 that counts
its calls. Events are read back from GC_EVENTS and verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn

import grpc
import nats.js.errors
import pytest
import pytest_asyncio
import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import (
    bank_pb2,
    bank_pb2_grpc,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
)
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from adapters import (
    TASK_PREFIX,
    AdapterConfig,
    AdapterConfigError,
    AdapterRuntime,
    ExecutionState,
    IdempotencyStore,
)
from broker.client import open_result_details
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._result_privacy import onward_transfers_for_broker
from broker.protocol import (
    BROKER_ID,
    DEADLETTER_STREAM,
    DEFAULT_INBOX_ACK_WAIT,
    EVENTS_STREAM,
    INBOX_STREAM,
    KeyUse,
    ManualClock,
    NatsSettings,
    PublicKey,
    Registry,
    SigningKey,
    VerifiedRequest,
    body_digest,
    connect,
    current_encryption_key,
    ensure_agency_keys,
    ensure_streams,
    event_subject,
    fetch_batch,
    inbox_consumer,
    inbox_subject,
    load_agency_encryption_key,
    load_agency_signing_key,
    load_broker_encryption_key,
    load_broker_signing_key,
    load_directory,
    new_uuid7,
    notarize,
    open_sealed,
    seal_for_recipient,
    sign_request,
    stream_specs,
    verify_detached,
    verify_event,
    verify_request,
)
from tests._wait import eventually

pytestmark = pytest.mark.integration

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
POLICE = "police-310115"
BANK = "bank-icbc"
ACCOUNT = "6222020200001234567"
# Personal data the bank answers with: must never appear in clear on the bus or in the logs.
SECRET_NAME = "张三丰-secret-holder"
SECRET_ID_NUMBER = "110101199001011234"
ONWARD_ACCOUNT = "6217000010087654321"
ONWARD_NAME = "王某某-onward-holder"

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
FAILED = common_pb2.REQUEST_STATE_FAILED


# -- the world: keys, registry, nats ------------------------------------------------------------


@dataclass
class World:
    state: Path
    clock: ManualClock
    registry: Registry
    police_key: SigningKey
    broker_key: SigningKey
    bank_key: SigningKey
    bank_enc: x25519.X25519PrivateKey
    police_enc: x25519.X25519PrivateKey
    broker_enc: x25519.X25519PrivateKey


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    state = tmp_path_factory.mktemp("adapter-keys")
    clock = ManualClock(T0)
    overlay = ensure_agency_keys(DIRECTORY, state, agencies=[POLICE, BANK], clock=clock)
    return World(
        state=state,
        clock=clock,
        registry=load_directory(DIRECTORY, key_overlays=[overlay]),
        police_key=load_agency_signing_key(state, POLICE),
        broker_key=load_broker_signing_key(state),
        bank_key=load_agency_signing_key(state, BANK),
        bank_enc=load_agency_encryption_key(state, BANK),
        police_enc=load_agency_encryption_key(state, POLICE),
        broker_enc=load_broker_encryption_key(state),
    )


@pytest.fixture(autouse=True)
def clock_at_t0(world: World) -> None:
    world.clock.set(T0)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    async with EmbeddedNats(
        EmbeddedNatsConfig(store_dir=tmp_path_factory.mktemp("adapter-nats"))
    ) as nats_server:
        yield nats_server


@pytest_asyncio.fixture(loop_scope="session")
async def nc(server: EmbeddedNats) -> AsyncIterator[Client]:
    client = await connect(
        NatsSettings(servers=(server.url,), name="adapter-tests", initial_connect_timeout=5)
    )
    try:
        yield client
    finally:
        await client.drain()


@pytest_asyncio.fixture(loop_scope="session")
async def js(nc: Client) -> JetStreamContext:
    """JetStream with pristine GC_* streams (and so no consumers) for each test."""
    context: JetStreamContext = nc.jetstream()
    for spec in stream_specs():
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await context.delete_stream(spec.name)
    await ensure_streams(context, stream_specs())
    return context


# -- the bank's system: a counting BankService on port 0 ----------------------------------------


@dataclass
class CountingBank(bank_pb2_grpc.BankServiceServicer):
    calls: Counter[str] = field(default_factory=Counter)
    order: list[str] = field(default_factory=list)
    contexts: list[Any] = field(default_factory=list)
    gate: asyncio.Event | None = None
    orders: list[Any] = field(default_factory=list)
    onward: list[results_pb2.OnwardTransfer] = field(default_factory=list)

    def _seen(self, method: str, request: Any) -> None:
        self.calls[method] += 1
        self.order.append(request.context.request_id)
        self.contexts.append(request.context)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    async def StopPayment(self, request: Any, context: Any) -> bank_pb2.StopPaymentResponse:
        self._seen("StopPayment", request)
        self.orders.append(request.order)
        if self.gate is not None:
            await self.gate.wait()
        return bank_pb2.StopPaymentResponse(
            result=results_pb2.Result(
                outcome=EXECUTED,
                amount_held=request.order.amount,
                hold_until=request.context.hold_until,
                agency_reference=f"HOLD-{request.context.request_id[-12:]}",
                onward_transfers=self.onward,
            )
        )

    async def QueryBankData(self, request: Any, context: Any) -> bank_pb2.QueryBankDataResponse:
        self._seen("QueryBankData", request)
        return bank_pb2.QueryBankDataResponse(
            result=results_pb2.Result(outcome=EXECUTED, agency_reference="DATA-1"),
            answer=results_pb2.DataAnswer(
                holder={"name": SECRET_NAME, "id_number": SECRET_ID_NUMBER},
                records=[results_pb2.DataRecord(fields={"amount": "4800000", "counterparty": SECRET_NAME})],
            ),
        )

    async def Freeze(self, request: Any, context: Any) -> bank_pb2.FreezeResponse:
        self._seen("Freeze", request)
        await unimplemented(context)

    async def ReleaseHold(self, request: Any, context: Any) -> bank_pb2.ReleaseHoldResponse:
        await unimplemented(context)

    async def ExtendHold(self, request: Any, context: Any) -> bank_pb2.ExtendHoldResponse:
        await unimplemented(context)

    async def ReturnFunds(self, request: Any, context: Any) -> bank_pb2.ReturnFundsResponse:
        await unimplemented(context)


async def unimplemented(context: Any) -> NoReturn:
    await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this test bank")
    raise AssertionError("abort raises")


class BankServer:
    """A grpc.aio server for a servicer, restartable on the same port."""

    def __init__(self, servicer: CountingBank) -> None:
        self.servicer = servicer
        self.port = 0
        self._server: Any = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        server = grpc.aio.server()
        bank_pb2_grpc.add_BankServiceServicer_to_server(self.servicer, server)
        self.port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None


@pytest_asyncio.fixture(loop_scope="session")
async def bank() -> AsyncIterator[BankServer]:
    server = BankServer(CountingBank())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


# -- requests as the police and the broker make them --------------------------------------------


def case_ref() -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number="SH-PD-2026-1121-0001",
        issuing_agency=POLICE,
        legal_instrument_id="沪公(浦)急止字[2026]1121号",
        legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
    )


def request_of(
    body: str, clock: ManualClock, priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN
) -> requests_pb2.Request:
    issued = Timestamp()
    issued.FromDatetime(clock.now())
    account = common_pb2.BankAccountRef(account_number=ACCOUNT, holder_name="李某")
    money = common_pb2.Money(currency="CNY", minor_units=4_800_000)
    bodies: dict[str, dict[str, Any]] = {
        "stop_payment": {"stop_payment": requests_pb2.StopPayment(account=account, amount=money)},
        "freeze": {"freeze": requests_pb2.Freeze(account=account, amount=money)},
        "data_request": {
            "data_request": requests_pb2.DataRequest(
                category=requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER, account=account
            )
        },
        "number_block": {
            "number_block": requests_pb2.NumberBlock(
                phone=common_pb2.PhoneRef(e164="+8613912345678"), scope=requests_pb2.BLOCK_SCOPE_NUMBER
            )
        },
    }
    return requests_pb2.Request(case_ref=case_ref(), priority=priority, issued_at=issued, **bodies[body])


def deadlines(clock: ManualClock, *, acknowledge_in: timedelta | None = None) -> envelope_pb2.Deadlines:
    due, hold = Timestamp(), Timestamp()
    due.FromDatetime(clock.now() + timedelta(minutes=5))
    hold.FromDatetime(clock.now() + timedelta(hours=48))
    phases = [envelope_pb2.PhaseDeadline(phase=common_pb2.PHASE_EXECUTE, due_at=due)]
    if acknowledge_in is not None:
        acknowledge_by = Timestamp()
        acknowledge_by.FromDatetime(clock.now() + acknowledge_in)
        phases.append(envelope_pb2.PhaseDeadline(phase=common_pb2.PHASE_ACKNOWLEDGE, due_at=acknowledge_by))
    return envelope_pb2.Deadlines(phases=phases, hold_expires_at=hold)


def notarized(
    world: World,
    request: requests_pb2.Request,
    *,
    validate: bool = True,
    request_id: str | None = None,
    by_broker: bool = False,
    acknowledge_in: timedelta | None = None,
) -> envelope_pb2.Envelope:
    """Signed by the police (or, ``by_broker``, by the broker itself, as a chase is) and notarized."""
    sender, key = (BROKER_ID, world.broker_key) if by_broker else (POLICE, world.police_key)
    signed = sign_request(request, key=key, sender=sender, clock=world.clock)
    if validate:
        verified = verify_request(signed, keys=world.registry, sender=sender, clock=world.clock)
    else:  # a broker that forgot the field rules
        claims = verify_detached(
            signed.signature,
            signed.payload,
            keys=world.registry,
            audience="greenchannel-broker",
            clock=world.clock,
        )
        verified = VerifiedRequest(request=request, signed=signed, claims=claims)
    return notarize(
        verified,
        request_id=request_id or new_uuid7(world.clock),
        recipient=BANK,
        deadlines=deadlines(world.clock, acknowledge_in=acknowledge_in),
        broker_key=world.broker_key,
        clock=world.clock,
    )


def sealed_to_bank(world: World, envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    """The envelope as the broker publishes it: its body sealed to the bank's current key."""
    return seal_for_recipient(
        envelope, current_encryption_key(world.registry.get(BANK), at=world.clock.now())
    )


def request_id_of(envelope: envelope_pb2.Envelope) -> str:
    return str(envelope_pb2.EnvelopeHeader.FromString(envelope.header).id)


async def publish(
    js: JetStreamContext,
    envelope: envelope_pb2.Envelope,
    *,
    body: str,
    lane: str = "green",
    msg_id: str | None = None,
) -> str:
    request_id = request_id_of(envelope)
    await js.publish(
        inbox_subject(BANK, lane, body),
        envelope.SerializeToString(),
        headers={"Nats-Msg-Id": msg_id or request_id},
    )
    return request_id


async def submit(js: JetStreamContext, world: World, body: str = "stop_payment", lane: str = "green") -> str:
    priority: common_pb2.Priority.ValueType = (
        common_pb2.PRIORITY_GREEN if lane == "green" else common_pb2.PRIORITY_STANDARD
    )
    return await publish(js, notarized(world, request_of(body, world.clock, priority)), body=body, lane=lane)


# -- reading the bus back -----------------------------------------------------------------------


@dataclass(frozen=True)
class Stored:
    subject: str
    data: bytes
    headers: dict[str, str]


async def stored(js: JetStreamContext, stream: str) -> list[Stored]:
    info = await js.stream_info(stream)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        if info.state.messages == 0:
            break
        msg = await js.get_msg(stream, seq)
        out.append(Stored(subject=msg.subject or "", data=msg.data or b"", headers=dict(msg.headers or {})))
    return out


async def events(js: JetStreamContext, world: World, request_id: str) -> list[lifecycle_pb2.LifecycleEvent]:
    found = []
    for msg in await stored(js, EVENTS_STREAM):
        if msg.subject == event_subject(BANK, request_id):
            event, claims = verify_event(
                envelope_pb2.SignedMessage.FromString(msg.data), keys=world.registry, clock=world.clock
            )
            assert claims.iss == BANK
            assert msg.headers["Nats-Msg-Id"] == event.event_id
            found.append(event)
    return found


async def events_until(
    js: JetStreamContext, world: World, request_id: str, state: int, *, within: float = 30.0
) -> list[lifecycle_pb2.LifecycleEvent]:
    seen: list[lifecycle_pb2.LifecycleEvent] = []

    async def reached() -> bool:
        seen[:] = await events(js, world, request_id)
        return any(event.state == state for event in seen)

    await eventually(reached, within=within, what=f"request {request_id} reached state {state}")
    return seen


async def deadletters(js: JetStreamContext) -> list[dict[str, Any]]:
    return [json.loads(msg.data) for msg in await stored(js, DEADLETTER_STREAM)]


async def inbox_settled(js: JetStreamContext) -> bool:
    """Both lanes have delivered everything and nothing waits for an ack."""
    for lane in ("green", "standard"):
        info = await js.consumer_info(INBOX_STREAM, inbox_consumer(BANK, lane))
        if info.num_pending or info.num_ack_pending:
            return False
    return True


def states(found: list[lifecycle_pb2.LifecycleEvent]) -> list[str]:
    return [common_pb2.RequestState.Name(event.state).removeprefix("REQUEST_STATE_") for event in found]


def adapter_tasks() -> list[asyncio.Task[Any]]:
    return [task for task in asyncio.all_tasks() if task.get_name().startswith(TASK_PREFIX)]


# -- the runtime --------------------------------------------------------------------------------


def config(tmp_path: Path, bank: BankServer, **overrides: Any) -> AdapterConfig:
    settings: dict[str, Any] = {
        "agency_id": BANK,
        "agency_target": bank.target,
        "state_dir": tmp_path / "adapter",
        "call_timeout": 1.0,
        "retry_initial": 0.05,
        "retry_max": 0.3,
        "retry_budget": 2.0,
        "reconnect_backoff_max": 0.2,
        "ack_wait": 2.0,
        "idle_fetch_timeout": 0.25,
        "shutdown_grace": 1.0,
        "publish_timeout": 2.0,
        "nak_delay": 0.1,
        # Far beyond any call here: whether ACKNOWLEDGED goes out never depends on the machine's
        # load. Tests of ACKNOWLEDGED set a short grace and hold the bank until they have seen it.
        "acknowledge_after": 30.0,
    }
    return AdapterConfig(**(settings | overrides))


def runtime(world: World, nc: Client, cfg: AdapterConfig, *, decrypt: bool = True) -> AdapterRuntime:
    return AdapterRuntime(
        cfg,
        registry=world.registry,
        signing_key=world.bank_key,
        clock=world.clock,
        nats_client=nc,
        decryption_keys=[world.bank_enc] if decrypt else None,
    )


# -- tests --------------------------------------------------------------------------------------


async def test_a_quick_answer_is_the_only_event_with_the_result(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    async with runtime(world, nc, config(tmp_path, bank)):
        request_id = await submit(js, world)
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
        on_the_bus = await stored(js, EVENTS_STREAM)
    assert not adapter_tasks()

    assert states(found) == ["EXECUTED"]
    assert len(on_the_bus) == 1  # one durable event on GC_EVENTS: the outcome, nothing before it
    executed = found[-1]
    assert executed.actor == BANK
    assert executed.result.outcome == EXECUTED
    assert executed.result.amount_held.minor_units == 4_800_000
    assert executed.result.agency_reference == f"HOLD-{request_id[-12:]}"
    assert all(event.request_digest == found[0].request_digest for event in found)
    assert bank.servicer.calls == Counter({"StopPayment": 1})

    context = bank.servicer.contexts[0]
    assert context.request_id == request_id
    assert context.sender == POLICE
    assert context.case_ref.case_number == "SH-PD-2026-1121-0001"
    assert context.priority == common_pb2.PRIORITY_GREEN
    assert context.execute_by.ToDatetime(tzinfo=UTC) == T0 + timedelta(minutes=5)
    assert context.hold_until.ToDatetime(tzinfo=UTC) == T0 + timedelta(hours=48)
    assert context.received_at.ToDatetime(tzinfo=UTC) == T0


async def test_a_slow_answer_is_acknowledged_first_then_the_outcome_follows(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    bank.servicer.gate = asyncio.Event()  # the bank's system answers only once ACKNOWLEDGED is out
    async with runtime(world, nc, config(tmp_path, bank, acknowledge_after=0.05)):
        request_id = await submit(js, world)
        acknowledged = await events_until(js, world, request_id, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        assert bank.servicer.total == 1  # taken while the bank's system works on it
        bank.servicer.gate.set()
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
    assert states(acknowledged) == ["ACKNOWLEDGED"]
    assert states(found) == ["ACKNOWLEDGED", "EXECUTED"]  # GC_EVENTS order, as the broker reads it
    assert bank.servicer.calls == Counter({"StopPayment": 1})
    assert not adapter_tasks()


async def test_an_acknowledge_deadline_shorter_than_the_grace_cuts_the_grace(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    # The grace is 30 s (config()); the acknowledge deadline is 2 s away on the (stopped) clock,
    # so ACKNOWLEDGED goes out after a quarter of that, while the bank's system still works on it.
    bank.servicer.gate = asyncio.Event()
    envelope = notarized(world, request_of("stop_payment", world.clock), acknowledge_in=timedelta(seconds=2))
    async with runtime(world, nc, config(tmp_path, bank)):
        request_id = await publish(js, envelope, body="stop_payment")
        await events_until(js, world, request_id, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        bank.servicer.gate.set()
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
    assert states(found) == ["ACKNOWLEDGED", "EXECUTED"]


async def test_duplicate_is_executed_once_and_answered_with_the_same_bytes(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank)
    envelope = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(envelope)
    async with runtime(world, nc, cfg):
        await publish(js, envelope, body="stop_payment")
        found = await events_until(js, world, request_id, EXECUTED)
        # A core subscription sees every publish, also those GC_EVENTS deduplicates.
        watch = await nc.subscribe(event_subject(BANK, request_id))
        await publish(js, envelope, body="stop_payment", msg_id=f"{request_id}-again")
        replayed = await watch.next_msg(timeout=10)
        await watch.unsubscribe()
        await eventually(lambda: inbox_settled(js))

    assert bank.servicer.calls == Counter({"StopPayment": 1})
    executed = [
        msg for msg in await stored(js, EVENTS_STREAM) if msg.headers["Nats-Msg-Id"] == found[-1].event_id
    ]
    assert len(executed) == 1  # the replay was deduplicated by the stream ...
    assert replayed.data == executed[0].data  # ... and it was the very same signed bytes
    assert replayed.headers is not None
    assert replayed.headers["Nats-Msg-Id"] == found[-1].event_id
    assert states(await events(js, world, request_id)) == ["EXECUTED"]
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        record = store.get(request_id)
    assert record is not None
    assert record.state is ExecutionState.TERMINAL
    assert record.terminal_event == executed[0].data


async def test_tampered_envelope_never_reaches_the_bank(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    envelope = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(envelope)
    body = requests_pb2.Request.FromString(envelope.body)
    body.stop_payment.amount.minor_units = 1
    envelope.body = body.SerializeToString()

    async with runtime(world, nc, config(tmp_path, bank)):
        await publish(js, envelope, body="stop_payment")
        await js.publish(
            inbox_subject(BANK, "green", "freeze"), b"\xff not an envelope", headers={"Nats-Msg-Id": "junk-1"}
        )
        found = await events_until(js, world, request_id, FAILED)
        await eventually(lambda: inbox_settled(js))
        letters = await deadletters(js)

    assert bank.servicer.total == 0
    assert states(found) == ["FAILED"]
    assert found[0].reason == results_pb2.REASON_CODE_SIGNATURE_INVALID
    assert found[0].result.outcome == FAILED
    assert found[0].request_digest == body_digest(envelope.body)
    assert len(letters) == 2
    by_request = {letter["request_id"]: letter for letter in letters}
    assert by_request[request_id]["reason"] == "SIGNATURE_INVALID"
    assert by_request[request_id]["error"] == "DigestMismatchError"
    assert by_request[request_id]["agency"] == BANK
    assert by_request[request_id]["stream"] == INBOX_STREAM
    assert by_request[None]["reason"] == "INVALID_REQUEST"  # undecodable: no id to answer under
    assert "李某" not in json.dumps(letters, ensure_ascii=False)


async def test_request_breaking_field_rules_fails_as_invalid_request(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    request = request_of("stop_payment", world.clock)
    request.stop_payment.amount.currency = "yuan"  # must be ^[A-Z]{3}$
    async with runtime(world, nc, config(tmp_path, bank)):
        request_id = await publish(js, notarized(world, request, validate=False), body="stop_payment")
        found = await events_until(js, world, request_id, FAILED)
        await eventually(lambda: inbox_settled(js))
        letters = await deadletters(js)
    assert bank.servicer.total == 0
    assert found[0].reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert letters[0]["fields"] == ["request.stop_payment.amount.currency"]


async def test_green_is_taken_before_standard(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank)
    async with runtime(world, nc, cfg):  # binds the consumers; nothing is queued yet
        pass
    standard = [await submit(js, world, lane="standard") for _ in range(2)]
    green = [await submit(js, world, lane="green") for _ in range(2)]
    async with runtime(world, nc, cfg):
        await eventually(lambda: inbox_settled(js))
    # Handled side by side, so the order within a lane is free; across lanes it is not.
    order = bank.servicer.order
    assert sorted(order[:2]) == sorted(green)
    assert sorted(order[2:]) == sorted(standard)


@pytest.mark.parametrize("lane", ["green", "standard"])
async def test_bank_down_then_back_executes_once_kept_alive_by_heartbeats(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path, lane: str
) -> None:
    # The shipped ack wait: an agency system that is down keeps the message held (retrying) for
    # far longer than it, and a heartbeat a loaded machine runs late still comes in time.
    cfg = config(tmp_path, bank, ack_wait=DEFAULT_INBOX_ACK_WAIT, retry_budget=30.0, acknowledge_after=0.05)
    async with runtime(world, nc, cfg):
        await bank.stop()
        request_id = await submit(js, world, lane=lane)
        await events_until(js, world, request_id, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        # Another instance pulls on the same consumer, well past ack_wait: only the heartbeats
        # keep JetStream from redelivering the held message to it.
        other = await js.pull_subscribe_bind(durable=inbox_consumer(BANK, lane), stream=INBOX_STREAM)
        stolen = await fetch_batch(other, 1, 3 * cfg.ack_wait)
        await other.unsubscribe()
        await bank.start()  # same port
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
        info = await js.consumer_info(INBOX_STREAM, inbox_consumer(BANK, lane))

    assert stolen == []
    assert states(found) == ["ACKNOWLEDGED", "EXECUTED"]
    assert bank.servicer.calls == Counter({"StopPayment": 1})
    assert info.num_redelivered == 0
    assert info.delivered is not None
    assert info.delivered.stream_seq == 1


async def test_retry_budget_exhausted_fails_agency_unavailable(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank, retry_budget=1.0)
    await bank.stop()
    async with runtime(world, nc, cfg):
        request_id = await submit(js, world)
        found = await events_until(js, world, request_id, FAILED)
        await eventually(lambda: inbox_settled(js))
        letters = await deadletters(js)
    assert states(found) == ["FAILED"]
    assert found[-1].reason == results_pb2.REASON_CODE_AGENCY_UNAVAILABLE
    assert found[-1].result.reason == results_pb2.REASON_CODE_AGENCY_UNAVAILABLE
    assert [(letter["request_id"], letter["reason"]) for letter in letters] == [
        (request_id, "AGENCY_UNAVAILABLE")
    ]
    assert bank.servicer.total == 0


async def test_data_answer_is_sealed_to_the_requester_and_never_in_clear(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with runtime(world, nc, config(tmp_path, bank)):
            request_id = await submit(js, world, body="data_request")
            found = await events_until(js, world, request_id, EXECUTED)
            await eventually(lambda: inbox_settled(js))

    executed = found[-1]
    assert bank.servicer.calls == Counter({"QueryBankData": 1})
    payload = executed.result.encrypted_payload
    assert payload.content_type == "greenchannel.v1.DataAnswer"
    plaintext = open_sealed(
        payload,
        load_agency_encryption_key(world.state, POLICE),
        request_id=request_id,
        sender=BANK,
        recipient=POLICE,
    )
    answer = results_pb2.DataAnswer.FromString(plaintext)
    assert answer.holder["name"] == SECRET_NAME
    assert answer.records[0].fields["counterparty"] == SECRET_NAME

    secrets = (SECRET_NAME.encode(), SECRET_ID_NUMBER.encode())
    on_the_bus = [
        msg.data for stream in (EVENTS_STREAM, DEADLETTER_STREAM) for msg in await stored(js, stream)
    ]
    assert on_the_bus
    assert not any(secret in data for secret in secrets for data in on_the_bus)
    answered = next(entry for entry in logs if entry["event"] == "adapter.answered")
    assert answered["request_id"] == request_id  # bound per message
    assert answered["request_type"] == "DATA_REQUEST"
    assert answered["sender"] == POLICE
    logged = repr(logs)
    assert SECRET_NAME not in logged
    assert SECRET_ID_NUMBER not in logged


async def test_type_the_bank_does_not_handle_is_rejected_without_a_call(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    async with runtime(world, nc, config(tmp_path, bank)):
        request_id = await submit(js, world, body="number_block")
        found = await events_until(js, world, request_id, common_pb2.REQUEST_STATE_REJECTED)
        await eventually(lambda: inbox_settled(js))
    assert states(found) == ["REJECTED"]  # no DELIVERED before it
    assert found[-1].reason == results_pb2.REASON_CODE_NOT_AUTHORIZED
    assert bank.servicer.total == 0


async def test_non_transient_grpc_error_fails_without_retry(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    # acknowledge_after = 0: ACKNOWLEDGED at once, before the call (the behaviour without a grace).
    async with runtime(world, nc, config(tmp_path, bank, acknowledge_after=0)):
        request_id = await submit(js, world, body="freeze")  # the servicer leaves Freeze UNIMPLEMENTED
        found = await events_until(js, world, request_id, FAILED)
        await eventually(lambda: inbox_settled(js))
        letters = await deadletters(js)
    assert states(found) == ["ACKNOWLEDGED", "FAILED"]
    assert found[-1].reason == results_pb2.REASON_CODE_INTERNAL
    assert "UNIMPLEMENTED" in found[-1].detail
    assert bank.servicer.calls == Counter({"Freeze": 1})  # not retried
    assert [letter["reason"] for letter in letters] == ["INTERNAL"]


async def test_a_request_started_before_a_crash_is_called_again_and_answered(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank)
    envelope = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(envelope)
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        store.mark_started(request_id, body_digest(envelope.body))  # the crash came mid-call
    async with runtime(world, nc, cfg):
        await publish(js, envelope, body="stop_payment")
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
    assert states(found) == ["EXECUTED"]
    assert bank.servicer.calls == Counter({"StopPayment": 1})
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        record = store.get(request_id)
    assert record is not None
    assert record.starts == 2


async def test_graceful_shutdown_naks_the_in_flight_message_and_leaves_no_task(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank, shutdown_grace=0.2)
    bank.servicer.gate = asyncio.Event()  # the bank's system hangs on the call
    first = runtime(world, nc, cfg)
    await first.start()
    request_id = await submit(js, world)

    async def called() -> bool:
        return bank.servicer.total == 1

    await eventually(called)
    await asyncio.gather(first.aclose(), first.aclose())
    await first.aclose()
    assert not adapter_tasks()
    assert not first.running
    # Between "started" and the outcome: nothing on the bus yet, "started" durable in the journal.
    assert states(await events(js, world, request_id)) == []
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        record = store.get(request_id)
    assert record is not None
    assert (record.state, record.starts) == (ExecutionState.STARTED, 1)

    # Naked, not lost: the next instance takes it at once and the bank (idempotent) answers.
    bank.servicer.gate.set()
    async with runtime(world, nc, cfg):
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))
    assert states(found) == ["EXECUTED"]
    assert bank.servicer.order == [request_id, request_id]
    assert not adapter_tasks()
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        record = store.get(request_id)
    assert record is not None
    assert (record.state, record.starts) == (ExecutionState.TERMINAL, 2)


async def test_a_replay_after_the_signature_lapsed_is_signed_again(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    envelope = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(envelope)
    async with runtime(world, nc, config(tmp_path, bank)):
        await publish(js, envelope, body="stop_payment")
        executed = (await events_until(js, world, request_id, EXECUTED))[-1]
        original = [
            m for m in await stored(js, EVENTS_STREAM) if m.headers["Nats-Msg-Id"] == executed.event_id
        ]
        world.clock.advance(timedelta(hours=2))  # NATS was away; the event signature (30 min) lapsed
        watch = await nc.subscribe(event_subject(BANK, request_id))
        await publish(js, envelope, body="stop_payment", msg_id=f"{request_id}-after-outage")
        replayed = await watch.next_msg(timeout=10)
        await watch.unsubscribe()
        await eventually(lambda: inbox_settled(js))

    assert bank.servicer.calls == Counter({"StopPayment": 1})
    signed = envelope_pb2.SignedMessage.FromString(replayed.data)
    event, claims = verify_event(signed, keys=world.registry, clock=world.clock)
    assert replayed.data != original[0].data
    assert signed.payload == envelope_pb2.SignedMessage.FromString(original[0].data).payload
    assert event.event_id == executed.event_id
    assert claims.iat == T0 + timedelta(hours=2)


async def test_same_request_id_with_another_body_is_parked_not_answered(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    first = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(first)
    other_body = request_of("stop_payment", world.clock)
    other_body.stop_payment.amount.minor_units = 1
    second = notarized(world, other_body, request_id=request_id)  # a broker bug: one id, two orders
    async with runtime(world, nc, config(tmp_path, bank)):
        await publish(js, first, body="stop_payment")
        await events_until(js, world, request_id, EXECUTED)
        await publish(js, second, body="stop_payment", msg_id=f"{request_id}-other")
        await eventually(lambda: inbox_settled(js))
        letters = await deadletters(js)
    assert bank.servicer.calls == Counter({"StopPayment": 1})
    assert states(await events(js, world, request_id)) == ["EXECUTED"]
    assert [(letter["request_id"], letter["reason"]) for letter in letters] == [
        (request_id, "CONFLICTING_REQUEST")
    ]


async def test_runtime_with_its_own_connection_updates_the_consumers(
    js: JetStreamContext, server: EmbeddedNats, world: World, bank: BankServer, tmp_path: Path
) -> None:
    settings = NatsSettings(servers=(server.url,), name="bank-icbc-adapter", initial_connect_timeout=5)
    for ack_wait in (2.0, 3.0):
        cfg = config(tmp_path, bank, nats=settings, ack_wait=ack_wait)
        adapter = AdapterRuntime(cfg, registry=world.registry, signing_key=world.bank_key, clock=world.clock)
        async with adapter:
            assert adapter.running
            request_id = await submit(js, world)
            await events_until(js, world, request_id, EXECUTED)
        for lane in ("green", "standard"):
            info = await js.consumer_info(INBOX_STREAM, inbox_consumer(BANK, lane))
            assert info.config.ack_wait == ack_wait
            assert info.config.max_deliver == -1
    assert bank.servicer.calls == Counter({"StopPayment": 2})
    assert not adapter_tasks()


@pytest.mark.parametrize(
    ("agency", "key"),
    [(BANK, "police_key"), ("regulator-pboc", "bank_key"), ("bank-nowhere", "bank_key")],
)
async def test_refuses_to_start_with_a_foreign_key_or_without_a_service(
    nc: Client, world: World, bank: BankServer, tmp_path: Path, agency: str, key: str
) -> None:
    cfg = config(tmp_path, bank, agency_id=agency)
    adapter = AdapterRuntime(
        cfg, registry=world.registry, signing_key=getattr(world, key), clock=world.clock, nats_client=nc
    )
    with pytest.raises(AdapterConfigError):
        await adapter.start()
    await adapter.aclose()
    assert not adapter.running
    assert not adapter_tasks()
    assert not nc.is_closed  # handed in, so never closed by the runtime


# -- sealed request bodies and redacted results -------------------------------------------------


async def test_a_sealed_request_is_opened_executed_and_bound_to_its_clear_body(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    clear = notarized(world, request_of("stop_payment", world.clock))
    envelope = sealed_to_bank(world, clear)
    async with runtime(world, nc, config(tmp_path, bank)):
        request_id = await publish(js, envelope, body="stop_payment")
        found = await events_until(js, world, request_id, EXECUTED)
        await eventually(lambda: inbox_settled(js))

    assert states(found) == ["EXECUTED"]
    # The events name the body the broker notarized: the clear bytes, not the ciphertext.
    header = envelope_pb2.EnvelopeHeader.FromString(clear.header)
    assert header.body_digest == body_digest(clear.body)
    assert {event.request_digest for event in found} == {header.body_digest}
    assert bank.servicer.orders[0].account.account_number == ACCOUNT
    inbox = [msg.data for msg in await stored(js, INBOX_STREAM)]
    assert inbox
    assert not any(ACCOUNT.encode() in data or "李某".encode() in data for data in inbox)


def sealed_to_a_stranger(world: World, envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    stranger = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    return seal_for_recipient(envelope, PublicKey.from_raw(stranger, use=KeyUse.ENC))


def tampered(world: World, envelope: envelope_pb2.Envelope) -> envelope_pb2.Envelope:
    sealed = sealed_to_bank(world, envelope)
    ciphertext = bytearray(sealed.sealed_body.ciphertext)
    ciphertext[3] ^= 0x01
    sealed.sealed_body.ciphertext = bytes(ciphertext)
    return sealed


@pytest.mark.parametrize("make", [sealed_to_a_stranger, tampered], ids=["wrong-key", "tampered"])
async def test_a_sealed_body_that_does_not_open_never_reaches_the_bank(
    js: JetStreamContext,
    nc: Client,
    world: World,
    bank: BankServer,
    tmp_path: Path,
    make: Callable[[World, envelope_pb2.Envelope], envelope_pb2.Envelope],
) -> None:
    clear = notarized(world, request_of("stop_payment", world.clock))
    with structlog.testing.capture_logs() as logs:
        async with runtime(world, nc, config(tmp_path, bank)):
            request_id = await publish(js, make(world, clear), body="stop_payment")
            found = await events_until(js, world, request_id, FAILED)
            await eventually(lambda: inbox_settled(js))
            letters = await deadletters(js)

    assert bank.servicer.total == 0
    assert states(found) == ["FAILED"]
    assert found[0].reason == results_pb2.REASON_CODE_SIGNATURE_INVALID
    # Not the notarized digest: the broker files this as a forged copy, the request stays open.
    assert found[0].request_digest != envelope_pb2.EnvelopeHeader.FromString(clear.header).body_digest
    assert letters[0]["error"] == "SealedBodyError"
    assert letters[0]["reason"] == "SIGNATURE_INVALID"
    assert any(entry["event"] == "adapter.sealed_body_not_opened" for entry in logs)


async def test_without_a_decryption_key_sealed_requests_are_refused_and_clear_ones_run(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    sealed = sealed_to_bank(world, notarized(world, request_of("stop_payment", world.clock)))
    with structlog.testing.capture_logs() as logs:
        async with runtime(world, nc, config(tmp_path, bank), decrypt=False):
            sealed_id = await publish(js, sealed, body="stop_payment")
            clear_id = await submit(js, world)
            await events_until(js, world, sealed_id, FAILED)
            await events_until(js, world, clear_id, EXECUTED)
            await eventually(lambda: inbox_settled(js))
    assert bank.servicer.calls == Counter({"StopPayment": 1})
    assert bank.servicer.order == [clear_id]
    assert any(entry["event"] == "adapter.no_decryption_key" for entry in logs)


async def test_refuses_to_start_with_decryption_keys_that_are_not_the_agencys(
    nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    adapter = AdapterRuntime(
        config(tmp_path, bank),
        registry=world.registry,
        signing_key=world.bank_key,
        clock=world.clock,
        nats_client=nc,
        decryption_keys=world.police_enc,
    )
    with pytest.raises(AdapterConfigError, match="decryption keys"):
        await adapter.start()
    await adapter.aclose()


async def test_onward_transfers_travel_redacted_and_open_for_the_requester_and_the_broker(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    at = Timestamp()
    at.FromDatetime(T0 - timedelta(minutes=30))
    onward = results_pb2.OnwardTransfer(
        to_account=ONWARD_ACCOUNT,
        to_bank="bank-ccb",
        amount=common_pb2.Money(currency="CNY", minor_units=2_000_000),
        at=at,
        transfer_id="ICBC5520000001",
        to_holder_name=ONWARD_NAME,
    )
    bank.servicer.onward = [onward]
    sealed = sealed_to_bank(world, notarized(world, request_of("stop_payment", world.clock)))
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with runtime(world, nc, config(tmp_path, bank)):
            request_id = await publish(js, sealed, body="stop_payment")
            found = await events_until(js, world, request_id, EXECUTED)
            await eventually(lambda: inbox_settled(js))

    result = found[-1].result
    [redacted] = result.onward_transfers
    assert (redacted.to_account, redacted.to_holder_name) == ("", "")
    assert (redacted.to_bank, redacted.transfer_id) == ("bank-ccb", onward.transfer_id)
    assert redacted.amount == onward.amount
    details = open_result_details(
        result, world.police_enc, request_id=request_id, sender=POLICE, recipient=BANK
    )
    assert list(details.onward_transfers) == [onward]
    chased = onward_transfers_for_broker(
        result, broker_key=world.broker_enc, request_id=request_id, sender=POLICE, recipient=BANK
    )
    assert chased == [onward]

    secrets = (ONWARD_ACCOUNT, ONWARD_NAME, ACCOUNT, "李某")
    on_the_bus = [msg.data for stream in (INBOX_STREAM, EVENTS_STREAM) for msg in await stored(js, stream)]
    assert not any(secret.encode() in data for secret in secrets for data in on_the_bus)
    logged = repr(logs)
    assert not any(secret in logged for secret in secrets)
    answered = next(entry for entry in logs if entry["event"] == "adapter.answered")
    assert answered["details_sealed"] is True
    assert answered["onward_transfers"] == 1


async def test_onward_transfers_of_a_request_the_broker_sent_are_sealed_to_the_broker_twice(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    at = Timestamp()
    at.FromDatetime(T0 - timedelta(minutes=30))
    onward = results_pb2.OnwardTransfer(
        to_account=ONWARD_ACCOUNT,
        to_bank="bank-ccb",
        amount=common_pb2.Money(currency="CNY", minor_units=2_000_000),
        at=at,
        transfer_id="ICBC5520000001",
    )
    bank.servicer.onward = [onward]
    envelope = notarized(world, request_of("stop_payment", world.clock), by_broker=True)
    with structlog.testing.capture_logs() as logs:
        async with runtime(world, nc, config(tmp_path, bank)):
            request_id = await publish(js, sealed_to_bank(world, envelope), body="stop_payment")
            found = await events_until(js, world, request_id, EXECUTED)
            await eventually(lambda: inbox_settled(js))

    result = found[-1].result
    binding = {"request_id": request_id, "sender": BROKER_ID, "recipient": BANK}
    assert list(open_result_details(result, world.broker_enc, **binding).onward_transfers) == [onward]
    assert onward_transfers_for_broker(result, broker_key=world.broker_enc, **binding) == [onward]
    assert not any(entry["event"].startswith("adapter.details_not_sealed") for entry in logs)


# -- messages in flight side by side ------------------------------------------------------------


async def test_a_large_batch_of_requests_is_executed_once_each_with_events_in_order(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank, concurrency=8, batch_size=16)
    async with runtime(world, nc, cfg):  # binds the consumers; nothing is queued yet
        pass
    request_ids = [await submit(js, world) for _ in range(40)]
    async with runtime(world, nc, cfg):
        await eventually(lambda: inbox_settled(js), within=30)

    assert Counter(bank.servicer.order) == Counter(dict.fromkeys(request_ids, 1))
    # GC_EVENTS is what the broker reads: per request exactly one event, the outcome.
    by_request: dict[str, list[str]] = {}
    for msg in await stored(js, EVENTS_STREAM):
        event = lifecycle_pb2.LifecycleEvent.FromString(
            envelope_pb2.SignedMessage.FromString(msg.data).payload
        )
        by_request.setdefault(event.request_id, []).append(states([event])[0])
    assert by_request == {request_id: ["EXECUTED"] for request_id in request_ids}
    with IdempotencyStore.in_state_dir(cfg.state_dir, clock=world.clock) as store:
        records = [store.get(request_id) for request_id in request_ids]
    assert all(r is not None and r.state is ExecutionState.TERMINAL and r.starts == 1 for r in records)


async def test_a_duplicate_taken_while_the_first_is_in_flight_waits_and_is_not_executed_again(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank)
    envelope = notarized(world, request_of("stop_payment", world.clock))
    request_id = request_id_of(envelope)
    bank.servicer.gate = asyncio.Event()  # the first copy stays in the bank's system

    async def called() -> bool:
        return bank.servicer.total == 1

    async def both_taken() -> bool:
        info = await js.consumer_info(INBOX_STREAM, inbox_consumer(BANK, "green"))
        return bool(info.num_pending == 0 and info.num_ack_pending == 2)

    with structlog.testing.capture_logs() as logs:
        async with runtime(world, nc, cfg):
            await publish(js, envelope, body="stop_payment")
            await eventually(called)
            await publish(js, envelope, body="stop_payment", msg_id=f"{request_id}-again")
            await eventually(both_taken)  # the copy is in this runtime's hands, not queued
            bank.servicer.gate.set()
            await events_until(js, world, request_id, EXECUTED)
            await eventually(lambda: inbox_settled(js))

    assert bank.servicer.calls == Counter({"StopPayment": 1})
    assert states(await events(js, world, request_id)) == ["EXECUTED"]
    assert [entry["event"] for entry in logs if entry["event"].startswith("adapter.dup")] == [
        "adapter.duplicate_waits_for_first"
    ]
    assert any(entry["event"] == "adapter.replayed_terminal_event" for entry in logs)


async def test_green_takes_a_free_slot_while_standard_work_is_in_flight(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank, concurrency=2, standard_concurrency=1)
    bank.servicer.gate = asyncio.Event()  # every call waits in the bank's system

    def calls(n: int) -> Callable[[], Awaitable[bool]]:
        async def reached() -> bool:
            return bank.servicer.total == n

        return reached

    async with runtime(world, nc, cfg):
        first = await submit(js, world, lane="standard")
        await eventually(calls(1))
        later = [await submit(js, world, lane="standard") for _ in range(2)]
        green = await submit(js, world, lane="green")
        await eventually(calls(2))  # the GREEN one, beside the STANDARD one in flight
        assert bank.servicer.order == [first, green]
        bank.servicer.gate.set()
        await eventually(lambda: inbox_settled(js))
    assert bank.servicer.order == [first, green, *later]  # one STANDARD at a time, in stream order


async def test_graceful_shutdown_lets_every_message_in_flight_finish(
    js: JetStreamContext, nc: Client, world: World, bank: BankServer, tmp_path: Path
) -> None:
    cfg = config(tmp_path, bank, shutdown_grace=10.0)
    bank.servicer.gate = asyncio.Event()
    adapter = runtime(world, nc, cfg)
    await adapter.start()
    request_ids = [await submit(js, world) for _ in range(3)]

    async def all_called() -> bool:
        return bank.servicer.total == 3

    await eventually(all_called)
    closing = asyncio.create_task(adapter.aclose())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the three calls, not cancelling them
    bank.servicer.gate.set()
    await closing
    assert not adapter_tasks()

    for request_id in request_ids:
        assert states(await events(js, world, request_id)) == ["EXECUTED"]
    info = await js.consumer_info(INBOX_STREAM, inbox_consumer(BANK, "green"))
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    assert info.num_redelivered == 0
