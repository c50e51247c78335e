"""The broker refuses hostile input through its real gRPC API, and a refusal changes nothing.

Every case is one attack on a running broker (real nats-server, real grpc.aio). Each asserts the
exact status code and ``google.rpc.ErrorInfo`` reason (plus the exact ``BadRequest`` field
violations or ``PreconditionFailure`` subjects where the broker sends them), and then that
nothing was published or stored: GC_INBOX and GC_WATCH (the request journal: its messages and
its set of requests) are exactly as they were before the attack.

Forged and illegal lifecycle events travel over NATS instead of gRPC; for those the proof is the
refusal record the broker leaves on ``gc.deadletter.greenchannel-broker``, and a request status
byte-identical to the one stored before the event.

Raw stubs with hand-built metadata and payloads are used wherever :class:`BusClient` would refuse
to build the bad call; BusClient where it sends the hostile content as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import grpc.aio
import nats.js.errors
import pytest
import pytest_asyncio
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
)
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from broker.client import bearer_metadata, error_details
from broker.hub import Broker
from broker.protocol import (
    BROKER_ID,
    CANCELLATION_TYPE,
    DEADLETTER_STREAM,
    INBOX_STREAM,
    WATCH_STREAM,
    ManualClock,
    SigningKey,
    SystemClock,
    body_digest,
    deadletter_subject,
    ensure_agency_keys,
    event_subject,
    fetch_batch,
    generate_signing_key,
    mint_bearer_token,
    parse_status_subject,
    revoke_key,
    sign_event,
    sign_message,
    sign_request,
    status_filter,
)
from tests.integration.broker_world import BANK, DIRECTORY, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]

OTHER_BANK = "bank-ccb"
OTHER_POLICE = "police-440300"
CARRIER = "carrier-cmcc"
OTHER_CARRIER = "carrier-cucc"
REGULATOR = "regulator-pboc"
# Only the revoked-key case uses this agency: revoking its key cannot disturb any other case.
REVOKED = "police-440305"

LINE = "+8613912345678"  # a China Mobile segment
UNROUTABLE_ACCOUNT = "999999000011112222"  # no bank in the directory has the prefix
FIELD_LIMIT = 1_048_576  # SignedMessage.payload max_len in envelope.proto
GRPC_LIMIT = 2 * 1024 * 1024  # BrokerConfig.max_message_bytes, the default

EXECUTED = results_pb2.Result(
    outcome=common_pb2.REQUEST_STATE_EXECUTED,
    amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000),
    agency_reference="HOLD-HX-1",
)
REJECTED = results_pb2.Result(
    outcome=common_pb2.REQUEST_STATE_REJECTED,
    reason=results_pb2.REASON_CODE_MISMATCH,
)


# -- building hostile input -----------------------------------------------------------------------


def _now_stamp() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _issued(request: requests_pb2.Request) -> requests_pb2.Request:
    """The fields BusClient.sign would fill in, for requests signed by hand."""
    request.issued_at.CopyFrom(_now_stamp())
    return request


def _stop_payment(**overrides: Any) -> requests_pb2.Request:
    values: dict[str, Any] = {"priority": common_pb2.PRIORITY_STANDARD}
    values.update(overrides)
    return _issued(stop_payment(**values))


def _line_block(e164: str = LINE, case_number: str = "HX-LINE-0001") -> requests_pb2.Request:
    return _issued(
        requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number=case_number,
                issuing_agency=POLICE,
                legal_instrument_id="沪公(浦)封字[2026]0007号",
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
            ),
            priority=common_pb2.PRIORITY_STANDARD,
            number_block=requests_pb2.NumberBlock(
                phone=common_pb2.PhoneRef(e164=e164), scope=requests_pb2.BLOCK_SCOPE_NUMBER
            ),
        )
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _tag(field_number: int, wire_type: int) -> bytes:
    return _varint(field_number << 3 | wire_type)


def _length_delimited(field_number: int, data: bytes) -> bytes:
    return _tag(field_number, 2) + _varint(len(data)) + data


_STOP_PAYMENT_FIELD = requests_pb2.Request.DESCRIPTOR.fields_by_name["stop_payment"].number
_AMOUNT_FIELD = requests_pb2.StopPayment.DESCRIPTOR.fields_by_name["amount"].number
_MINOR_UNITS_FIELD = common_pb2.Money.DESCRIPTOR.fields_by_name["minor_units"].number
_WIRE_FIXED64 = 1  # the wire type of a double


def _float_amount_payload() -> bytes:
    """A stop-payment whose amount.minor_units travels as a double (1.5), as a sloppy client sends it.

    Appended bytes for an embedded message merge into the one already serialized, so this is
    ``stop_payment.amount.minor_units`` with wire type 1 instead of 0.
    """
    request = _stop_payment()
    request.stop_payment.amount.ClearField("minor_units")
    double = _tag(_MINOR_UNITS_FIELD, _WIRE_FIXED64) + struct.pack("<d", 1.5)
    return request.SerializeToString() + _length_delimited(
        _STOP_PAYMENT_FIELD, _length_delimited(_AMOUNT_FIELD, double)
    )


def _signed_bytes(
    payload: bytes, key: SigningKey, *, issuer: str = POLICE, audience: str = BROKER_ID
) -> envelope_pb2.SignedMessage:
    return sign_message(
        payload, key=key, issuer=issuer, audience=audience, message_type="STOP_PAYMENT", clock=SystemClock()
    )


def _flip_signature(signature: str) -> str:
    """Change one character in the middle of the Ed25519 signature (still canonical base64url)."""
    header, _, sig = signature.partition("..")
    middle = len(sig) // 2
    swapped = "B" if sig[middle] != "B" else "C"
    return f"{header}..{sig[:middle]}{swapped}{sig[middle + 1 :]}"


# -- the arena: one broker world for the module ---------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """Everything a refused call must leave untouched."""

    inbox: tuple[int, int]
    """GC_INBOX (messages, last sequence)."""
    watch: tuple[int, int]
    """GC_WATCH (messages, last sequence)."""
    requests: tuple[int, int]
    """The request journal's requests (subjects, messages): any stored or updated request moves it."""
    request_ids: frozenset[str]
    """The ids of the requests in the journal."""


@dataclass
class Arena:
    world: World
    broker: Broker
    submitted: str
    """A stop-payment police -> bank-icbc, still SUBMITTED."""
    acknowledged: str
    """A stop-payment police -> bank-icbc, ACKNOWLEDGED."""
    executed: str
    """A stop-payment police -> bank-icbc, EXECUTED."""
    line_block: str
    """A number block police -> carrier-cmcc, SUBMITTED."""

    def key(self, agency: str) -> SigningKey:
        return self.world.key(agency)

    def token(self, agency: str = POLICE) -> Metadata:
        return bearer_metadata(self.key(agency), agency_id=agency, clock=SystemClock())

    def signed(self, request: requests_pb2.Request, agency: str = POLICE) -> envelope_pb2.SignedMessage:
        return sign_request(request, key=self.key(agency), sender=agency, clock=SystemClock())

    @contextlib.asynccontextmanager
    async def bus(self) -> AsyncIterator[bus_pb2_grpc.BusServiceStub]:
        """A raw stub on a fresh channel to the current broker (its address changes on restart)."""
        async with grpc.aio.insecure_channel(self.broker.address) as channel:
            yield bus_pb2_grpc.BusServiceStub(channel)

    async def submit(
        self, signed: envelope_pb2.SignedMessage, metadata: Metadata | None = None
    ) -> bus_pb2.SubmitResponse:
        async with self.bus() as bus:
            response: bus_pb2.SubmitResponse = await bus.Submit(
                bus_pb2.SubmitRequest(request=signed),
                metadata=self.token() if metadata is None else metadata,
                timeout=10,
            )
        return response

    async def client_submit(self, request: requests_pb2.Request, agency: str = POLICE) -> None:
        async with self.world.client(self.broker, agency) as client:
            await client.submit(request)

    async def restart_broker(self) -> None:
        """Stop the broker and start a new one on the same NATS, which reloads the directory."""
        await self.broker.aclose()
        self.broker = await self.world.start_broker()

    async def snapshot(self) -> Snapshot:
        js = self.world.js
        inbox = (await js.stream_info(INBOX_STREAM)).state
        watch = (await js.stream_info(WATCH_STREAM)).state
        # Request ids from the server's per-subject state of the journal (one subject per request).
        requests = (await js.stream_info(WATCH_STREAM, subjects_filter=status_filter())).state
        subjects = requests.subjects or {}
        return Snapshot(
            inbox=(inbox.messages, inbox.last_seq),
            watch=(watch.messages, watch.last_seq),
            requests=(len(subjects), requests.messages),
            request_ids=frozenset(
                parsed.request_id for parsed in map(parse_status_subject, subjects) if parsed is not None
            ),
        )

    async def stored(self, request_id: str) -> tuple[bytes, int] | None:
        """The request's last journal record exactly as stored (bytes and sequence); None if absent."""
        try:
            msg = await self.world.js.get_last_msg(WATCH_STREAM, status_filter(request_id=request_id))
        except nats.js.errors.NotFoundError:
            return None
        return msg.data or b"", msg.seq or 0

    async def digest(self, request_id: str) -> str:
        entry = await self.stored(request_id)
        assert entry is not None
        status = lifecycle_pb2.RequestStatus.FromString(entry[0])
        return envelope_pb2.EnvelopeHeader.FromString(status.notarized_header).body_digest

    async def deadletter_mark(self) -> int:
        return int((await self.world.js.stream_info(DEADLETTER_STREAM)).state.last_seq)

    async def refusal_after(self, mark: int, request_id: str, *, within: float = 60.0) -> dict[str, Any]:
        """The broker's refusal record for ``request_id`` published after stream sequence ``mark``.

        Waits on a pull consumer (server-side expiry of each pull) instead of sleeping.
        """
        sub = await self.world.js.pull_subscribe(
            deadletter_subject(BROKER_ID),
            stream=DEADLETTER_STREAM,
            config=ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=mark + 1,
                ack_policy=AckPolicy.NONE,
            ),
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        try:
            while loop.time() < deadline:
                for msg in await fetch_batch(sub, 16, 0.25):
                    record: dict[str, Any] = json.loads(msg.data)
                    if record.get("request_id") == request_id:
                        return record
        finally:
            await sub.unsubscribe()
        raise AssertionError(f"no refusal record for {request_id} within {within}s")


async def _wait_state(arena: Arena, request_id: str, state: common_pb2.RequestState.ValueType) -> None:
    async with arena.world.client(arena.broker) as police:
        await police.wait_for(request_id, {state}, within=timedelta(seconds=60))


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def arena(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Arena]:
    root = tmp_path_factory.mktemp("hostile")
    # Keys valid since an hour ago (broker_world then finds them and generates none), so a token
    # minted with a clock in the past is refused as expired, not as signed before its key existed.
    ensure_agency_keys(DIRECTORY, root / "state", clock=ManualClock(datetime.now(UTC) - timedelta(hours=1)))
    async with broker_world(root) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            ids = [
                (await police.submit(_stop_payment(case_number=f"HX-SP-{n:04d}"))).status.id for n in range(3)
            ]
            line_block = (await police.submit(_line_block())).status.id
        submitted, acknowledged, executed = ids
        opened = {o.header.id: o for o in await world.inbox(BANK)}
        # DELIVERED, then ACKNOWLEDGED: a DELIVERED now repeats a step the timeline already has.
        await world.adapter_event(opened[acknowledged], common_pb2.REQUEST_STATE_DELIVERED)
        await world.adapter_event(opened[acknowledged], common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        await world.adapter_event(opened[executed], common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)
        arena = Arena(
            world=world,
            broker=broker,
            submitted=submitted,
            acknowledged=acknowledged,
            executed=executed,
            line_block=line_block,
        )
        await _wait_state(arena, acknowledged, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
        await _wait_state(arena, executed, common_pb2.REQUEST_STATE_EXECUTED)
        yield arena


# -- calls refused by the gRPC API ----------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Refusal:
    code: grpc.StatusCode
    """The exact status code."""
    reason: str | None
    """google.rpc.ErrorInfo.reason; None when grpc itself refused (no details)."""
    violations: frozenset[tuple[str, str]] = frozenset()
    """google.rpc.BadRequest (field, rule) pairs, exactly."""
    subjects: tuple[str, ...] = ()
    """google.rpc.PreconditionFailure subjects, exactly."""


@dataclass(frozen=True)
class Case:
    name: str
    attack: Callable[[Arena], Awaitable[object]]
    refusal: Refusal


def _invalid(reason: str, *violations: tuple[str, str]) -> Refusal:
    return Refusal(code=grpc.StatusCode.INVALID_ARGUMENT, reason=reason, violations=frozenset(violations))


def _unauthenticated(reason: str) -> Refusal:
    return Refusal(code=grpc.StatusCode.UNAUTHENTICATED, reason=reason)


def _denied(reason: str) -> Refusal:
    return Refusal(code=grpc.StatusCode.PERMISSION_DENIED, reason=reason)


def _unroutable(reason: str, subject: str) -> Refusal:
    return Refusal(code=grpc.StatusCode.FAILED_PRECONDITION, reason=reason, subjects=(subject,))


def _bad_request(exc: grpc.aio.AioRpcError) -> frozenset[tuple[str, str]]:
    """(field, rule) of every google.rpc.BadRequest violation; error_details keeps only descriptions."""
    found: set[tuple[str, str]] = set()
    for key, value in exc.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        for packed in status_pb2.Status.FromString(value).details:
            if packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                packed.Unpack(bad)
                found.update((v.field, v.reason) for v in bad.field_violations)
    return frozenset(found)


# Signatures and bodies ----------------------------------------------------------------------------


async def unsigned_body(arena: Arena) -> object:
    payload = _stop_payment().SerializeToString()
    return await arena.submit(envelope_pb2.SignedMessage(payload=payload, signature=""))


async def body_signed_with_bank_key(arena: Arena) -> object:
    # The bank's key signs a body that claims to come from the police.
    return await arena.submit(
        sign_request(_stop_payment(), key=arena.key(BANK), sender=POLICE, clock=SystemClock())
    )


async def body_signed_by_bank_as_itself(arena: Arena) -> object:
    return await arena.submit(arena.signed(_stop_payment(), BANK), arena.token(POLICE))


async def body_tampered_after_signing(arena: Arena) -> object:
    request = _stop_payment()
    signed = arena.signed(request)
    request.stop_payment.amount.minor_units = 1  # a hold of one fen instead of 48,000 yuan
    signed.payload = request.SerializeToString()
    return await arena.submit(signed)


async def signature_tampered(arena: Arena) -> object:
    signed = arena.signed(_stop_payment())
    signed.signature = _flip_signature(signed.signature)
    return await arena.submit(signed)


async def signed_for_another_audience(arena: Arena) -> object:
    # Signed for bank-ccb, but the body names bank-icbc as recipient: replaying a message meant
    # for one bank at another must not work.
    payload = _stop_payment(recipient=BANK).SerializeToString()
    return await arena.submit(_signed_bytes(payload, arena.key(POLICE), audience=OTHER_BANK))


# Bearer tokens ------------------------------------------------------------------------------------


async def expired_token(arena: Arena) -> object:
    past = ManualClock(datetime.now(UTC) - timedelta(minutes=10))
    metadata = bearer_metadata(arena.key(POLICE), agency_id=POLICE, clock=past)
    return await arena.submit(arena.signed(_stop_payment()), metadata)


async def replayed_token(arena: Arena) -> object:
    metadata = arena.token(POLICE)
    async with arena.bus() as bus:
        # First use: accepted (a read, so it changes nothing).
        await bus.Get(bus_pb2.GetRequest(id=arena.submitted), metadata=metadata, timeout=10)
    return await arena.submit(arena.signed(_stop_payment()), metadata)


async def token_bound_to_another_request(arena: Arena) -> object:
    bound_to = arena.signed(_stop_payment())
    metadata = bearer_metadata(
        arena.key(POLICE), agency_id=POLICE, clock=SystemClock(), request_payload=bound_to.payload
    )
    return await arena.submit(arena.signed(_stop_payment()), metadata)


async def bound_token_on_a_read(arena: Arena) -> object:
    # Bound to a request, a token is good only for the call carrying it: not for one read more.
    bound_to = arena.signed(_stop_payment())
    metadata = bearer_metadata(
        arena.key(POLICE), agency_id=POLICE, clock=SystemClock(), request_payload=bound_to.payload
    )
    async with arena.bus() as bus:
        return await bus.Get(bus_pb2.GetRequest(id=arena.submitted), metadata=metadata, timeout=10)


async def unknown_agency_token(arena: Arena) -> object:
    token = mint_bearer_token(generate_signing_key(), agency_id="police-999999", clock=SystemClock())
    return await arena.submit(arena.signed(_stop_payment()), (("authorization", f"Bearer {token}"),))


async def token_signed_with_another_agencys_key(arena: Arena) -> object:
    token = mint_bearer_token(arena.key(BANK), agency_id=POLICE, clock=SystemClock())
    return await arena.submit(arena.signed(_stop_payment()), (("authorization", f"Bearer {token}"),))


async def token_for_another_audience(arena: Arena) -> object:
    token = mint_bearer_token(arena.key(POLICE), agency_id=POLICE, clock=SystemClock(), audience=BANK)
    return await arena.submit(arena.signed(_stop_payment()), (("authorization", f"Bearer {token}"),))


async def revoked_key(arena: Arena) -> object:
    key = arena.key(REVOKED)  # loaded first: once revoked, the state dir no longer hands it out
    request = _stop_payment(issuing_agency=REVOKED, case_number="SZ-NS-2026-0001")
    async with arena.bus() as bus:
        # Proof the key worked: a read with a token it signed is accepted before the revocation.
        await bus.List(
            bus_pb2.ListRequest(),
            metadata=bearer_metadata(key, agency_id=REVOKED, clock=SystemClock()),
            timeout=10,
        )
    # Whole seconds: a token's iat is floored, and it must not predate the revocation.
    revoke_key(arena.world.state_dir, REVOKED, key.kid, at=datetime.now(UTC).replace(microsecond=0))
    await arena.restart_broker()
    signed = sign_request(request, key=key, sender=REVOKED, clock=SystemClock())
    return await arena.submit(signed, bearer_metadata(key, agency_id=REVOKED, clock=SystemClock()))


async def malformed_token(arena: Arena) -> object:
    return await arena.submit(arena.signed(_stop_payment()), (("authorization", "Bearer not.a.jwt"),))


async def no_token(arena: Arena) -> object:
    return await arena.submit(arena.signed(_stop_payment()), ())


# Authorization ------------------------------------------------------------------------------------


async def bank_submits_freeze(arena: Arena) -> object:
    freeze = _issued(
        requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number="ICBC-2026-0001",
                issuing_agency=BANK,
                legal_instrument_id="none",
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
            ),
            priority=common_pb2.PRIORITY_GREEN,
            freeze=requests_pb2.Freeze(
                account=common_pb2.BankAccountRef(account_number="6217000000000000001", holder_name="王某"),
                amount=common_pb2.Money(currency="CNY", minor_units=100),
            ),
        )
    )
    await arena.client_submit(freeze, BANK)
    return None


def _locate(issuing_agency: str = POLICE, **subject: Any) -> requests_pb2.Request:
    """A location request (DATA_CATEGORY_LOCATION) of ``subject``, by default the China Mobile line."""
    return _issued(
        requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number="HX-LOCATE-0001",
                issuing_agency=issuing_agency,
                legal_instrument_id="沪公(浦)调证字[2026]0017号",
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE,
            ),
            priority=common_pb2.PRIORITY_GREEN,
            data_request=requests_pb2.DataRequest(
                category=requests_pb2.DATA_CATEGORY_LOCATION,
                **(subject or {"phone": common_pb2.PhoneRef(e164=LINE)}),
            ),
        )
    )


async def bank_locates_a_line(arena: Arena) -> object:
    await arena.client_submit(_locate(issuing_agency=BANK), BANK)
    return None


async def location_of_a_bank_account(arena: Arena) -> object:
    account = common_pb2.BankAccountRef(account_number="6217000000000000001", holder_name="王某")
    await arena.client_submit(_locate(account=account))
    return None


async def location_sent_to_a_bank(arena: Arena) -> object:
    request = _locate()
    request.recipient = BANK
    await arena.client_submit(request)
    return None


async def regulator_submits(arena: Arena) -> object:
    await arena.client_submit(
        _stop_payment(issuing_agency=REGULATOR, case_number="PBOC-2026-0001"), REGULATOR
    )
    return None


async def foreign_case_reference(arena: Arena) -> object:
    # Pudong police acting under a Shenzhen case number.
    await arena.client_submit(_stop_payment(issuing_agency=OTHER_POLICE, case_number="SZ-2026-0042"))
    return None


async def carrier_watches_another_carriers_request(arena: Arena) -> object:
    async with arena.bus() as bus:
        call = bus.Watch(
            bus_pb2.WatchRequest(request_id=arena.line_block), metadata=arena.token(OTHER_CARRIER), timeout=10
        )
        return [update async for update in call]


async def carrier_gets_another_carriers_request(arena: Arena) -> object:
    async with arena.bus() as bus:
        return await bus.Get(
            bus_pb2.GetRequest(id=arena.line_block), metadata=arena.token(OTHER_CARRIER), timeout=10
        )


async def bank_cancels_police_request(arena: Arena) -> object:
    cancellation = lifecycle_pb2.Cancellation(
        request_id=arena.submitted, reason="the bank would rather not", issued_at=_now_stamp()
    )
    signed = sign_message(
        cancellation.SerializeToString(),
        key=arena.key(BANK),
        issuer=BANK,
        audience=BROKER_ID,
        message_type=CANCELLATION_TYPE,
        clock=SystemClock(),
    )
    async with arena.bus() as bus:
        return await bus.Cancel(
            bus_pb2.CancelRequest(cancellation=signed), metadata=arena.token(BANK), timeout=10
        )


# Field rules --------------------------------------------------------------------------------------


async def negative_amount(arena: Arena) -> object:
    await arena.client_submit(_stop_payment(minor_units=-4_800_000))
    return None


async def zero_amount(arena: Arena) -> object:
    await arena.client_submit(_stop_payment(minor_units=0))
    return None


async def float_amount_on_the_wire(arena: Arena) -> object:
    return await arena.submit(_signed_bytes(_float_amount_payload(), arena.key(POLICE)))


async def malformed_e164(arena: Arena) -> object:
    await arena.client_submit(_line_block(e164="139-1234-5678"))
    return None


async def unroutable_account(arena: Arena) -> object:
    await arena.client_submit(_stop_payment(account=UNROUTABLE_ACCOUNT))
    return None


async def recipient_contradicts_account_bank(arena: Arena) -> object:
    request = _stop_payment(recipient=BANK)
    request.stop_payment.account.bank = OTHER_BANK
    await arena.client_submit(request)
    return None


async def stop_payment_sent_to_a_carrier(arena: Arena) -> object:
    await arena.client_submit(_stop_payment(recipient=CARRIER))
    return None


async def oversized_message(arena: Arena) -> object:
    payload = b"\0" * (GRPC_LIMIT + 1024)
    return await arena.submit(envelope_pb2.SignedMessage(payload=payload, signature="x" * 16))


async def payload_over_field_limit(arena: Arena) -> object:
    # A real request, padded with an unknown field to one byte over the contract's 1 MiB and
    # properly signed: far under the gRPC limit, so the field rule has to catch it.
    body = _stop_payment().SerializeToString()
    payload = body + _pad_to(FIELD_LIMIT + 1, body)
    assert len(payload) == FIELD_LIMIT + 1
    return await arena.submit(_signed_bytes(payload, arena.key(POLICE)))


def _pad_to(total: int, body: bytes) -> bytes:
    """An unknown length-delimited field that brings ``body`` to exactly ``total`` bytes."""
    size = total - len(body)
    for header_len in range(2, 8):
        data_len = size - header_len
        header = _tag(999, 2) + _varint(data_len)
        if len(header) == header_len:
            return header + b"x" * data_len
    raise AssertionError("cannot pad")


async def unknown_priority(arena: Arena) -> object:
    request = _stop_payment()
    request.priority = 9  # type: ignore[assignment]  # an open enum keeps the number
    await arena.client_submit(request)
    return None


async def missing_case_reference(arena: Arena) -> object:
    request = _stop_payment()
    request.ClearField("case_ref")
    await arena.client_submit(request)
    return None


async def unknown_field_in_body(arena: Arena) -> object:
    payload = _stop_payment().SerializeToString() + _length_delimited(99, b"skip-bank-checks")
    return await arena.submit(_signed_bytes(payload, arena.key(POLICE)))


SIG = "request.signature"

RPC_CASES = [
    Case("unsigned_body", unsigned_body, _invalid("INVALID_REQUEST", (SIG, "string.min_len"))),
    Case(
        "body_signed_with_bank_key", body_signed_with_bank_key, _invalid("UNKNOWN_KEY", (SIG, "UNKNOWN_KEY"))
    ),
    Case(
        "body_signed_by_bank_as_itself",
        body_signed_by_bank_as_itself,
        _invalid("WRONG_ISSUER", (SIG, "WRONG_ISSUER")),
    ),
    Case(
        "body_tampered_after_signing",
        body_tampered_after_signing,
        _invalid("DIGEST_MISMATCH", (SIG, "DIGEST_MISMATCH")),
    ),
    Case("signature_tampered", signature_tampered, _invalid("BAD_SIGNATURE", (SIG, "BAD_SIGNATURE"))),
    Case(
        "signed_for_another_audience",
        signed_for_another_audience,
        _invalid("WRONG_AUDIENCE", (SIG, "WRONG_AUDIENCE")),
    ),
    Case("expired_token", expired_token, _unauthenticated("EXPIRED_TOKEN")),
    Case("replayed_token", replayed_token, _unauthenticated("REPLAYED_TOKEN")),
    Case(
        "token_bound_to_another_request",
        token_bound_to_another_request,
        _unauthenticated("TOKEN_NOT_FOR_THIS_REQUEST"),
    ),
    Case("bound_token_on_a_read", bound_token_on_a_read, _unauthenticated("TOKEN_NOT_FOR_THIS_REQUEST")),
    Case("unknown_agency_token", unknown_agency_token, _unauthenticated("UNKNOWN_AGENCY")),
    Case(
        "token_signed_with_another_agencys_key",
        token_signed_with_another_agencys_key,
        _unauthenticated("UNKNOWN_KEY"),
    ),
    Case("token_for_another_audience", token_for_another_audience, _unauthenticated("WRONG_AUDIENCE")),
    Case("revoked_key", revoked_key, _unauthenticated("REVOKED_KEY")),
    Case("malformed_token", malformed_token, _unauthenticated("MALFORMED_TOKEN")),
    Case("no_token", no_token, _unauthenticated("MISSING_TOKEN")),
    Case("bank_submits_freeze", bank_submits_freeze, _denied("TYPE_NOT_ALLOWED")),
    Case("regulator_submits", regulator_submits, _denied("READ_ONLY")),
    Case("bank_locates_a_line", bank_locates_a_line, _denied("TYPE_NOT_ALLOWED")),
    Case(
        "location_of_a_bank_account",
        location_of_a_bank_account,
        _invalid("INVALID_REQUEST", ("request.data_request", "data_request.location_of_a_line")),
    ),
    Case(
        "location_sent_to_a_bank",
        location_sent_to_a_bank,
        _unroutable("WRONG_RECIPIENT_KIND", "request.recipient"),
    ),
    Case("foreign_case_reference", foreign_case_reference, _denied("NOT_CASE_OWNER")),
    Case(
        "carrier_watches_another_carriers_request",
        carrier_watches_another_carriers_request,
        _denied("PERMISSION_DENIED"),
    ),
    Case(
        "carrier_gets_another_carriers_request",
        carrier_gets_another_carriers_request,
        _denied("PERMISSION_DENIED"),
    ),
    Case("bank_cancels_police_request", bank_cancels_police_request, _denied("NOT_SENDER")),
    Case(
        "negative_amount",
        negative_amount,
        _invalid(
            "INVALID_REQUEST",
            ("request.stop_payment.amount.minor_units", "int64.gte"),
            ("request.stop_payment.amount", "amount.positive"),
        ),
    ),
    Case(
        "zero_amount",
        zero_amount,
        _invalid("INVALID_REQUEST", ("request.stop_payment.amount", "amount.positive")),
    ),
    Case(
        "float_amount_on_the_wire",
        float_amount_on_the_wire,
        _invalid("INVALID_REQUEST", ("request", "wire.unknown_fields")),
    ),
    Case(
        "malformed_e164",
        malformed_e164,
        _invalid("INVALID_REQUEST", ("request.number_block.phone.e164", "string.pattern")),
    ),
    Case(
        "unroutable_account",
        unroutable_account,
        _unroutable("NO_ROUTE", "request.stop_payment.account.account_number"),
    ),
    Case(
        "recipient_contradicts_account_bank",
        recipient_contradicts_account_bank,
        _unroutable("RECIPIENT_MISMATCH", "request.stop_payment.account.bank"),
    ),
    Case(
        "stop_payment_sent_to_a_carrier",
        stop_payment_sent_to_a_carrier,
        _unroutable("WRONG_RECIPIENT_KIND", "request.recipient"),
    ),
    Case(
        "oversized_message",
        oversized_message,
        Refusal(code=grpc.StatusCode.RESOURCE_EXHAUSTED, reason=None),
    ),
    Case(
        "payload_over_field_limit",
        payload_over_field_limit,
        _invalid("INVALID_REQUEST", ("request.payload", "bytes.max_len")),
    ),
    Case(
        "unknown_priority",
        unknown_priority,
        _invalid("INVALID_REQUEST", ("request.priority", "enum.defined_only")),
    ),
    Case(
        "missing_case_reference",
        missing_case_reference,
        _invalid("INVALID_REQUEST", ("request.case_ref", "required")),
    ),
    Case(
        "unknown_field_in_body",
        unknown_field_in_body,
        _invalid("INVALID_REQUEST", ("request", "wire.unknown_fields")),
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in RPC_CASES])
async def test_hostile_call_is_refused_and_changes_nothing(arena: Arena, case: Case) -> None:
    before = await arena.snapshot()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await case.attack(arena)
    details = error_details(caught.value)
    assert (details.code, details.reason) == (case.refusal.code, case.refusal.reason), details.message
    assert _bad_request(caught.value) == case.refusal.violations
    assert details.precondition_subjects == case.refusal.subjects
    assert await arena.snapshot() == before


def test_a_float_amount_cannot_even_be_parsed_from_json() -> None:
    """A client writing amounts as JSON floats is refused before anything is signed or sent."""
    body = {
        "caseRef": {"caseNumber": "SH-PD-2026-0001", "issuingAgency": POLICE},
        "stopPayment": {"amount": {"currency": "CNY", "minorUnits": 1.5}},
    }
    with pytest.raises(json_format.ParseError, match="minorUnits"):
        json_format.Parse(json.dumps(body), requests_pb2.Request())
    with pytest.raises(json_format.ParseError, match="minorUnits"):
        json_format.Parse('{"currency": "CNY", "minorUnits": 1.5}', common_pb2.Money())


async def test_duplicate_submission_returns_the_first_request_and_publishes_nothing_more(
    arena: Arena,
) -> None:
    request = _stop_payment(case_number="HX-DUP-0001")
    request.idempotency_key = "hx-dup-key-0001"
    signed = arena.signed(request)
    before = await arena.snapshot()
    first = await arena.submit(signed)
    after_first = await arena.snapshot()
    second = await arena.submit(signed)
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.status.id == first.status.id
    assert after_first.inbox[1] == before.inbox[1] + 1
    assert after_first.request_ids == before.request_ids | {first.status.id}
    assert await arena.snapshot() == after_first
    inbox = await arena.world.inbox(BANK, wait=2.0)  # already there: only the last, empty pull waits
    assert [o.header.id for o in inbox].count(first.status.id) == 1


# -- events refused by the event processor --------------------------------------------------------


async def _publish_event(
    arena: Arena,
    *,
    request_id: str,
    state: common_pb2.RequestState.ValueType,
    actor: str,
    signer: str,
    subject_agency: str,
    digest: str | None = None,
    result: results_pb2.Result | None = None,
    tamper: Callable[[lifecycle_pb2.LifecycleEvent], None] | None = None,
) -> None:
    """Sign an event as ``actor`` with ``signer``'s key and publish it on ``subject_agency``'s subject."""
    event = lifecycle_pb2.LifecycleEvent(
        event_id=str(uuid.uuid4()),
        request_id=request_id,
        state=state,
        actor=actor,
        at=_now_stamp(),
        request_digest=digest or await arena.digest(request_id),
    )
    if result is not None:
        event.result.CopyFrom(result)
        event.reason = result.reason
    signed = sign_event(event, key=arena.key(signer), clock=SystemClock())
    if tamper is not None:
        tamper(event)
        signed.payload = event.SerializeToString()
    await arena.world.js.publish(
        event_subject(subject_agency, request_id),
        signed.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )


@dataclass(frozen=True)
class EventCase:
    name: str
    target: Callable[[Arena], str]
    """Which request the event is about."""
    forge: Callable[[Arena, str], Awaitable[None]]
    """Publishes the hostile event."""
    reason: str
    """The refusal record's reason."""
    detail: str | None = None
    """The refusal record's detail, where it is a stable name."""


def _submitted(arena: Arena) -> str:
    return arena.submitted


async def forged_actor_signature(arena: Arena, request_id: str) -> None:
    # bank-ccb signs an event that claims to come from bank-icbc, on bank-icbc's subject.
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_EXECUTED,
        actor=BANK,
        signer=OTHER_BANK,
        subject_agency=BANK,
        result=EXECUTED,
    )


async def event_tampered_after_signing(arena: Arena, request_id: str) -> None:
    def executed(event: lifecycle_pb2.LifecycleEvent) -> None:
        event.state = common_pb2.REQUEST_STATE_EXECUTED

    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=BANK,
        signer=BANK,
        subject_agency=BANK,
        tamper=executed,
    )


async def event_on_another_agencys_subject(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=OTHER_BANK,
        signer=OTHER_BANK,
        subject_agency=BANK,
    )


async def event_from_a_bystander_bank(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=OTHER_BANK,
        signer=OTHER_BANK,
        subject_agency=OTHER_BANK,
    )


async def wrong_body_digest(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=BANK,
        signer=BANK,
        subject_agency=BANK,
        digest=body_digest(b"a different request body"),
    )


async def executed_by_the_sender(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_EXECUTED,
        actor=POLICE,
        signer=POLICE,
        subject_agency=POLICE,
        result=EXECUTED,
    )


async def rejected_after_executed(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_REJECTED,
        actor=BANK,
        signer=BANK,
        subject_agency=BANK,
        result=REJECTED,
    )


async def delivered_after_acknowledged(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=BANK,
        signer=BANK,
        subject_agency=BANK,
    )


async def event_for_an_unknown_request(arena: Arena, request_id: str) -> None:
    await _publish_event(
        arena,
        request_id=request_id,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=BANK,
        signer=BANK,
        subject_agency=BANK,
        digest=body_digest(b"never submitted"),
    )


EVENT_CASES = [
    EventCase(
        "forged_actor_signature", _submitted, forged_actor_signature, "UNVERIFIABLE", "UnknownKeyError"
    ),
    EventCase(
        "event_tampered_after_signing",
        _submitted,
        event_tampered_after_signing,
        "UNVERIFIABLE",
        "DigestMismatchError",
    ),
    EventCase(
        "event_on_another_agencys_subject", _submitted, event_on_another_agencys_subject, "WRONG_SUBJECT"
    ),
    EventCase("event_from_a_bystander_bank", _submitted, event_from_a_bystander_bank, "WRONG_ACTOR"),
    EventCase("wrong_body_digest", _submitted, wrong_body_digest, "DIGEST_MISMATCH"),
    EventCase("executed_by_the_sender", _submitted, executed_by_the_sender, "WRONG_ACTOR"),
    EventCase("rejected_after_executed", lambda a: a.executed, rejected_after_executed, "ILLEGAL_TRANSITION"),
    EventCase(
        "delivered_after_acknowledged", lambda a: a.acknowledged, delivered_after_acknowledged, "OUT_OF_ORDER"
    ),
    EventCase(
        "event_for_an_unknown_request",
        lambda a: "01890000-0000-7000-8000-000000000000",
        event_for_an_unknown_request,
        "UNKNOWN_REQUEST",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in EVENT_CASES])
async def test_hostile_event_is_refused_and_changes_nothing(arena: Arena, case: EventCase) -> None:
    request_id = case.target(arena)
    stored = await arena.stored(request_id)
    before = await arena.snapshot()
    mark = await arena.deadletter_mark()
    await case.forge(arena, request_id)
    record = await arena.refusal_after(mark, request_id)
    assert record["kind"] == "event_refused"
    assert record["reason"] == case.reason, record["detail"]
    if case.detail is not None:
        assert record["detail"] == case.detail
    assert await arena.stored(request_id) == stored
    assert await arena.snapshot() == before
