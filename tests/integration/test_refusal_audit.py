"""Every refused call leaves a ledger entry (and a log line), without personal data, bounded under a flood.

A real broker on a real nats-server; refusals are provoked through the real gRPC API and read
back from the chained ledger (GC_LEDGER), the way `greenchannel ledger export` reads it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    envelope_pb2,
    ledger_pb2,
    ledger_pb2_grpc,
    lifecycle_pb2,
    requests_pb2,
)
from structlog.testing import capture_logs

from broker.client import bearer_metadata, error_details
from broker.hub import Broker
from broker.hub._ledger import LedgerReader
from broker.hub._refusals import RefusalAuditConfig
from broker.protocol import (
    BROKER_ID,
    CANCELLATION_TYPE,
    Clock,
    ManualClock,
    SystemClock,
    sign_message,
    sign_request,
)
from tests.integration.broker_world import BANK, FRAUD_ACCOUNT, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

CARRIER = "carrier-cmcc"
OTHER_BANK = "bank-ccb"
HOLDER = "李某"
CASE = "SH-PD-2026-0001"
INSTRUMENT = "沪公(浦)急止字[2026]0001号"
# Nothing of a refused body may reach the ledger: not the account, the holder, the case or the order.
PERSONAL = [FRAUD_ACCOUNT, HOLDER, CASE, INSTRUMENT]
BURST = 5
WINDOW = timedelta(hours=1)  # longer than the module runs: summaries are written on shutdown


def _issued(request: requests_pb2.Request) -> requests_pb2.Request:
    request.issued_at.GetCurrentTime()
    return request


def _freeze_by_bank(bank: str = BANK) -> requests_pb2.Request:
    return _issued(
        requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number=CASE,
                issuing_agency=bank,
                legal_instrument_id=INSTRUMENT,
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
            ),
            priority=common_pb2.PRIORITY_GREEN,
            freeze=requests_pb2.Freeze(
                account=common_pb2.BankAccountRef(account_number=FRAUD_ACCOUNT, holder_name=HOLDER),
                amount=common_pb2.Money(currency="CNY", minor_units=100),
            ),
        )
    )


@dataclass
class Stage:
    world: World
    broker: Broker

    def token(self, agency: str = POLICE, *, clock: Clock | None = None) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(self.world.key(agency), agency_id=agency, clock=clock or SystemClock())

    def signed(self, request: requests_pb2.Request, agency: str = POLICE) -> envelope_pb2.SignedMessage:
        return sign_request(request, key=self.world.key(agency), sender=agency, clock=SystemClock())

    async def call(
        self, invoke: Callable[[bus_pb2_grpc.BusServiceStub], Awaitable[object]]
    ) -> grpc.aio.AioRpcError:
        async with grpc.aio.insecure_channel(self.broker.address) as channel:
            try:
                await invoke(bus_pb2_grpc.BusServiceStub(channel))
            except grpc.aio.AioRpcError as exc:
                return exc
        raise AssertionError("the call was not refused")

    async def refusals(
        self, want: Callable[[ledger_pb2.LedgerEntry], bool], *, count: int = 1, within: float = 20.0
    ) -> list[tuple[ledger_pb2.LedgerEntry, bytes]]:
        """REJECTION entries of refused calls matching ``want``, once at least ``count`` are chained."""
        reader = LedgerReader(self.world.js)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        found: list[tuple[ledger_pb2.LedgerEntry, bytes]] = []
        while loop.time() < deadline:
            found = [
                (stored.entry, stored.data)
                for stored in await reader.entries(after_seq=0, limit=5000)
                if stored.entry.kind == ledger_pb2.LEDGER_ENTRY_KIND_REJECTION
                and stored.entry.HasField("refusal")
                and want(stored.entry)
            ]
            if len(found) >= count:
                return found
            await asyncio.sleep(0.1)  # polling the ledger for a condition, bounded by `within`
        raise AssertionError(f"{len(found)} matching refusal entries, wanted {count}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stage(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stage]:
    async with broker_world(tmp_path_factory.mktemp("refusals")) as world:
        broker = await world.start_broker(refusals=RefusalAuditConfig(burst=BURST, window=WINDOW))
        yield Stage(world=world, broker=broker)


# -- one refusal of each class ---------------------------------------------------------------------


async def policy_refusal(stage: Stage) -> grpc.aio.AioRpcError:
    return await stage.call(
        lambda bus: bus.Submit(
            bus_pb2.SubmitRequest(request=stage.signed(_freeze_by_bank(), BANK)), metadata=stage.token(BANK)
        )
    )


async def forged_signature(stage: Stage) -> grpc.aio.AioRpcError:
    # The bank's key signs a body that claims to come from the police.
    forged = sign_request(
        _issued(stop_payment()), key=stage.world.key(BANK), sender=POLICE, clock=SystemClock()
    )
    return await stage.call(
        lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=forged), metadata=stage.token())
    )


async def wrong_recipient_kind(stage: Stage) -> grpc.aio.AioRpcError:
    signed = stage.signed(_issued(stop_payment(recipient=CARRIER)))
    return await stage.call(
        lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=signed), metadata=stage.token())
    )


async def field_rules(stage: Stage) -> grpc.aio.AioRpcError:
    signed = stage.signed(_issued(stop_payment(minor_units=-5)))
    return await stage.call(
        lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=signed), metadata=stage.token())
    )


async def expired_token(stage: Stage) -> grpc.aio.AioRpcError:
    # Keys of this world were made now: a token from the past would predate them, so it is
    # minted now with a life that ran out - the broker answers EXPIRED_TOKEN or KEY_NOT_VALID.
    past = ManualClock(datetime.now(UTC) - timedelta(minutes=10))
    signed = stage.signed(_issued(stop_payment()))
    return await stage.call(
        lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=signed), metadata=stage.token(clock=past))
    )


async def no_token(stage: Stage) -> grpc.aio.AioRpcError:
    signed = stage.signed(_issued(stop_payment()))
    return await stage.call(lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=signed), metadata=()))


async def extend_without_a_hold(stage: Stage) -> grpc.aio.AioRpcError:
    request = _issued(stop_payment())
    request.ClearField("stop_payment")
    request.extend.target_request_id = "01890000-0000-7000-8000-000000000000"
    request.extend.account.CopyFrom(
        common_pb2.BankAccountRef(account_number=FRAUD_ACCOUNT, holder_name=HOLDER)
    )
    signed = stage.signed(request)
    return await stage.call(
        lambda bus: bus.Extend(bus_pb2.ExtendRequest(request=signed), metadata=stage.token())
    )


async def cancel_by_a_bystander(stage: Stage) -> grpc.aio.AioRpcError:
    async with stage.world.client(stage.broker) as police:
        submitted = (await police.submit(stop_payment(case_number="SH-PD-2026-0777"))).status.id
    cancellation = lifecycle_pb2.Cancellation(request_id=submitted, reason="not ours")
    cancellation.issued_at.GetCurrentTime()
    signed = sign_message(
        cancellation.SerializeToString(),
        key=stage.world.key(BANK),
        issuer=BANK,
        audience=BROKER_ID,
        message_type=CANCELLATION_TYPE,
        clock=SystemClock(),
    )
    return await stage.call(
        lambda bus: bus.Cancel(bus_pb2.CancelRequest(cancellation=signed), metadata=stage.token(BANK))
    )


async def undecodable_message(stage: Stage) -> grpc.aio.AioRpcError:
    async with grpc.aio.insecure_channel(stage.broker.address) as channel:
        raw = channel.unary_unary("/greenchannel.v1.BusService/Submit")
        try:
            await raw(b"\xff\xff\xff", metadata=stage.token())
        except grpc.aio.AioRpcError as exc:
            return exc
    raise AssertionError("the call was not refused")


@dataclass(frozen=True)
class RefusalCase:
    name: str
    provoke: Callable[[Stage], Awaitable[grpc.aio.AioRpcError]]
    caller: str | None
    method: str
    message_type: str


CASES = [
    RefusalCase("policy", policy_refusal, BANK, "Submit", "FREEZE"),
    RefusalCase("forged_signature", forged_signature, POLICE, "Submit", "STOP_PAYMENT"),
    RefusalCase("wrong_recipient_kind", wrong_recipient_kind, POLICE, "Submit", "STOP_PAYMENT"),
    RefusalCase("field_rules", field_rules, POLICE, "Submit", "STOP_PAYMENT"),
    RefusalCase("expired_token", expired_token, None, "Submit", "STOP_PAYMENT"),
    RefusalCase("no_token", no_token, None, "Submit", "STOP_PAYMENT"),
    RefusalCase("extend_without_a_hold", extend_without_a_hold, POLICE, "Extend", "EXTEND"),
    RefusalCase("cancel_by_a_bystander", cancel_by_a_bystander, BANK, "Cancel", CANCELLATION_TYPE),
    RefusalCase("undecodable_message", undecodable_message, None, "Submit", ""),
]


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
async def test_each_refusal_is_chained_into_the_ledger_without_personal_data(
    stage: Stage, case: RefusalCase
) -> None:
    with capture_logs() as logs:
        refused = await case.provoke(stage)
    details = error_details(refused)
    assert details.reason

    def mine(entry: ledger_pb2.LedgerEntry) -> bool:
        return (entry.refusal.method, entry.refusal.reason) == (case.method, details.reason)

    ((entry, data),) = await stage.refusals(mine)
    assert entry.refusal.code == details.code.name
    assert entry.refusal.message_type == case.message_type
    assert entry.refusal.count == 1
    assert entry.actor == (case.caller or BROKER_ID)
    assert list(entry.parties) == ([case.caller] if case.caller else [])
    assert (entry.request_id, entry.case_number, entry.subject_digest) == ("", "", "")
    for personal in PERSONAL:
        assert personal.encode() not in data
    # And one structured log line with the same fields.
    lines = [line for line in logs if line["event"] == "request.refused"]
    assert [(line["caller"], line["method"], line["code"], line["reason"]) for line in lines] == [
        (case.caller, case.method, details.code.name, details.reason)
    ]
    assert not any(personal in repr(lines) for personal in PERSONAL)


async def test_an_agency_reads_its_own_refusals_and_no_one_elses(stage: Stage) -> None:
    signed = stage.signed(_freeze_by_bank(CARRIER), CARRIER)  # carriers order no freezes
    await stage.call(
        lambda bus: bus.Submit(bus_pb2.SubmitRequest(request=signed), metadata=stage.token(CARRIER))
    )

    def carrier_refusal(entry: ledger_pb2.LedgerEntry) -> bool:
        return entry.actor == CARRIER and entry.refusal.reason == "TYPE_NOT_ALLOWED"

    await stage.refusals(carrier_refusal)
    async with grpc.aio.insecure_channel(stage.broker.address) as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)

        async def visible_to(agency: str) -> list[ledger_pb2.LedgerEntry]:
            response = await ledger.ListEntries(
                ledger_pb2.ListEntriesRequest(limit=5000), metadata=stage.token(agency), timeout=10
            )
            return [entry for entry in response.entries if entry.HasField("refusal")]

        assert any(carrier_refusal(entry) for entry in await visible_to(CARRIER))
        assert not any(carrier_refusal(entry) for entry in await visible_to(POLICE))
        assert any(carrier_refusal(entry) for entry in await visible_to("regulator-pboc"))


# -- a flood ------------------------------------------------------------------------------------------


async def test_a_flood_of_refusals_is_recorded_in_bounded_entries_with_the_right_count(stage: Stage) -> None:
    """500 refusals from one caller: BURST single entries and one summary counting the rest.

    The module's broker runs with a window far longer than the flood, so the summary is written
    when the broker stops; the replica started next chains it. (Same world: starting another
    nats-server from a process with live gRPC can crash the fork, see EmbeddedNatsConfig.)
    """
    flood = 500
    config = RefusalAuditConfig(burst=BURST, window=WINDOW)
    signed = stage.signed(_freeze_by_bank(OTHER_BANK), OTHER_BANK)

    async with grpc.aio.insecure_channel(stage.broker.address) as channel:
        bus = bus_pb2_grpc.BusServiceStub(channel)

        async def one() -> grpc.StatusCode:
            try:
                await bus.Submit(
                    bus_pb2.SubmitRequest(request=signed), metadata=stage.token(OTHER_BANK), timeout=30
                )
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        codes: list[grpc.StatusCode] = []
        for _ in range(flood // 50):
            codes += await asyncio.gather(*(one() for _ in range(50)))
    assert codes == [grpc.StatusCode.PERMISSION_DENIED] * flood

    # Stopping writes the summary to the ledger intake; the next replica chains it.
    await stage.broker.aclose()
    stage.world.brokers.remove(stage.broker)
    stage.broker = await stage.world.start_broker(refusals=config)

    def flood_entry(entry: ledger_pb2.LedgerEntry) -> bool:
        return entry.actor == OTHER_BANK and entry.refusal.reason == "TYPE_NOT_ALLOWED"

    entries = await stage.refusals(flood_entry, count=BURST + 1)
    singles = [entry for entry, _ in entries if not entry.refusal.HasField("since")]
    summaries = [entry for entry, _ in entries if entry.refusal.HasField("since")]
    assert len(singles) == BURST
    assert all(entry.refusal.count == 1 for entry in singles)
    assert [entry.refusal.count for entry in summaries] == [flood - BURST]
    assert summaries[0].refusal.message_type == "FREEZE"
    assert summaries[0].refusal.code == "PERMISSION_DENIED"
    assert sum(entry.refusal.count for entry, _ in entries) == flood
    for _, data in entries:
        assert FRAUD_ACCOUNT.encode() not in data
