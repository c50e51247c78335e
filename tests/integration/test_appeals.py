"""Appeals (申诉) end to end: NATS, the broker, every reference agency behind its adapter.

A holder appeals through the agency that restricted them; the police desk files it (only the police
read the statement); the police decide through the Bus API; LIFTED makes the broker send the
lifting order, executed by the bank / carrier that applied the restriction. The reference
agencies' own records are the proof. One stack for the module; the SLA policy gives STANDARD
appeals a few seconds, so an undecided one escalates while the test watches.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
)

from adapters import AdapterConfig
from agencies import DEFAULT_SLA_POLICY_PATH
from agencies import _seed as seed
from agencies.bank import BankCore, HoldStatus
from agencies.carrier import CarrierCore
from agencies.demo import Stack, StackConfig
from agencies.platform import PlatformCore, Restriction
from agencies.police import PoliceDesk
from broker.client import BusClient, bearer_metadata, error_details
from broker.hub import load_sla_policy
from broker.hub._open_appeals import OPEN_APPEALS_BUCKET, OpenAppeal
from broker.hub._store import open_bucket
from broker.protocol import (
    APPEAL_RULING_TYPE,
    APPEAL_STATEMENT_CONTENT_TYPE,
    BROKER_ID,
    EVENTS_STREAM,
    INBOX_STREAM,
    WATCH_STREAM,
    NatsSettings,
    SystemClock,
    appeal_sealing_context,
    body_digest,
    connect,
    current_encryption_key,
    event_subject,
    load_agency_signing_key,
    load_broker_signing_key,
    seal,
    sign_event,
    sign_message,
    to_timestamp,
    verify_detached,
)
from tests._wait import eventually
from tests.integration.appeal_calls import police_desk, refused
from tests.integration.escalations import execute_escalated, supervisor_notices, supervisor_told
from tests.integration.stack_journal import journal_size, redeliver_last

pytestmark = pytest.mark.integration

S = common_pb2
POLICE = "police-310115"
SUPERVISOR = "police-310000"  # police-310115's supervisor in the sample directory
OTHER_POLICE = "police-440300"
DONE = {
    S.REQUEST_STATE_EXECUTED,
    S.REQUEST_STATE_PARTIALLY_EXECUTED,
    S.REQUEST_STATE_REJECTED,
    S.REQUEST_STATE_FAILED,
}
FILED = {S.REQUEST_STATE_ACKNOWLEDGED, *DONE}
CASE = "SH-PD-2026-0042"
STATEMENT = "holder-statement-7f3a: the money is my salary from my employer"


def short_standard_appeals(tmp_path: Path) -> Path:
    """The shipped CN policy, with STANDARD appeals decided within seconds (GREEN ones keep 48 h)."""
    text = DEFAULT_SLA_POLICY_PATH.read_text(encoding="utf-8")
    old = 'priority = "standard"\ndeliver = "1h"\nacknowledge = "8h"\nexecute = "7d"'
    assert text.count(old) == 1
    path = tmp_path / "short-appeals.toml"
    path.write_text(
        text.replace(old, 'priority = "standard"\ndeliver = "2s"\nacknowledge = "3s"\nexecute = "4s"'),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("appeals")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
    template = AdapterConfig(
        agency_id="bank-icbc",
        agency_target="127.0.0.1:1",
        state_dir=Path(),
        retry_initial=0.05,
        retry_max=0.3,
        reconnect_backoff_max=0.3,
        ack_wait=3.0,
        idle_fetch_timeout=0.2,
    )
    config = StackConfig(
        keys_dir=root / "keys",
        data_dir=root / "data",
        adapter=template,
        sla=load_sla_policy(short_standard_appeals(root)),
    )
    async with Stack(config) as running:
        yield running


def case_ref(instrument: common_pb2.LegalInstrumentType.ValueType) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=CASE,
        issuing_agency=POLICE,
        legal_instrument_id="沪公(浦)冻字[2026]0042号",
        legal_instrument_type=instrument,
    )


async def freeze(police: BusClient, account: str, holder: str) -> lifecycle_pb2.RequestStatus:
    request = requests_pb2.Request(
        case_ref=case_ref(S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE),
        priority=S.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=common_pb2.BankAccountRef(account_number=account, holder_name=holder),
            amount=common_pb2.Money(currency="CNY", minor_units=10_000),
        ),
    )
    request_id = (await police.submit(request)).status.id
    status = await police.wait_for(request_id, DONE)
    assert status.state in (S.REQUEST_STATE_EXECUTED, S.REQUEST_STATE_PARTIALLY_EXECUTED), status
    return status


async def block_number(police: BusClient, e164: str) -> lifecycle_pb2.RequestStatus:
    request = requests_pb2.Request(
        case_ref=case_ref(S.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        priority=S.PRIORITY_GREEN,
        number_block=requests_pb2.NumberBlock(
            phone=common_pb2.PhoneRef(e164=e164), scope=requests_pb2.BLOCK_SCOPE_NUMBER
        ),
    )
    request_id = (await police.submit(request)).status.id
    status = await police.wait_for(request_id, DONE)
    assert status.state == S.REQUEST_STATE_EXECUTED, status
    return status


async def appeal(
    agency: BusClient,
    restriction_id: str,
    *,
    priority: common_pb2.Priority.ValueType | None = None,
) -> lifecycle_pb2.RequestStatus:
    return await agency.file_appeal(
        restriction_id,
        ground=requests_pb2.APPEAL_GROUND_LEGITIMATE_FUNDS,
        statement=requests_pb2.AppealStatement(
            statement=STATEMENT,
            documents=[requests_pb2.AppealDocument(name="payslip.pdf", media_type="application/pdf")],
        ),
        ticket=f"SS-{uuid.uuid4().hex[:8]}",
        priority=priority,
    )


def forged_appeal(stack: Stack, restriction_id: str, *, recipient: str = POLICE) -> requests_pb2.Request:
    """An appeal as a client that cannot read the restriction would build it: by hand."""
    police = stack.registry.get(POLICE)  # type: ignore[union-attr]
    statement = seal(
        requests_pb2.AppealStatement(statement="not mine to file").SerializeToString(),
        current_encryption_key(police, at=SystemClock().now()),
        request_id=appeal_sealing_context(restriction_id),
        sender="bank-icbc",
        recipient=POLICE,
        content_type=APPEAL_STATEMENT_CONTENT_TYPE,
    )
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=CASE,
            issuing_agency=POLICE,
            legal_instrument_id="SS-forged",
            legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_APPEAL,
        ),
        priority=S.PRIORITY_GREEN,
        recipient=recipient,
        appeal=requests_pb2.Appeal(
            restriction_request_id=restriction_id,
            ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED,
            statement=statement,
        ),
    )


def last_event(status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.LifecycleEvent:
    return lifecycle_pb2.LifecycleEvent.FromString(status.events[-1].event.payload)


def desk(stack: Stack) -> PoliceDesk:
    return police_desk(stack, POLICE)


async def test_an_upheld_freeze_stays_and_an_appeal_is_decided_once(stack: Stack) -> None:
    async with stack.client(POLICE) as police, stack.client("bank-ccb") as bank:
        frozen = await freeze(police, seed.MULE_CCB_ACCOUNT, seed.MULE_CCB_HOLDER)
        filed = await appeal(bank, frozen.id)
        assert filed.type == S.REQUEST_TYPE_APPEAL
        assert filed.recipient == POLICE
        assert filed.target_id == frozen.id
        assert filed.case_ref.case_number == CASE
        assert filed.case_ref.legal_instrument_type == S.LEGAL_INSTRUMENT_TYPE_APPEAL
        # The police adapter files it: ACKNOWLEDGED, not an outcome.
        acknowledged = await police.wait_for(filed.id, FILED)
        assert acknowledged.state == S.REQUEST_STATE_ACKNOWLEDGED
        (record,) = [a for a in desk(stack).appeals() if a.request_id == filed.id]
        assert record.statement == STATEMENT  # opened by the police adapter, with the police's key
        assert record.sender == "bank-ccb"
        assert record.restriction_request_id == frozen.id
        # Redelivered: filed once, and the bus records the filing once.
        await redeliver_last_appeal(stack)
        assert desk(stack).execution_count(filed.id) == 1
        assert len((await police.get(filed.id)).events) == len(acknowledged.events)
        assert record.ground == "LEGITIMATE_FUNDS"
        assert record.documents == 1

        decided = await police.decide_appeal(
            filed.id, results_pb2.APPEAL_DECISION_UPHELD, "funds traced to fraud"
        )
        assert decided.status.state == S.REQUEST_STATE_EXECUTED
        assert decided.status.result.appeal == results_pb2.APPEAL_DECISION_UPHELD
        assert decided.status.result.detail == "funds traced to fraud"
        assert list(decided.lifting) == []
        outcome = last_event(decided.status)
        assert outcome.actor == BROKER_ID
        assert outcome.state == S.REQUEST_STATE_EXECUTED
        # The ledger proves who decided: the police's own signed ruling is in the broker's event.
        claims = verify_detached(
            outcome.ruling.signature,
            outcome.ruling.payload,
            keys=stack.registry,  # type: ignore[arg-type]
            audience=BROKER_ID,
            clock=SystemClock(),
            expected_issuer=POLICE,
            expected_type=APPEAL_RULING_TYPE,
            max_ttl=None,
        )
        assert claims.iss == POLICE
        assert lifecycle_pb2.AppealRuling.FromString(outcome.ruling.payload).appeal_request_id == filed.id
        decision_digest = body_digest(decided.status.events[-1].event.payload)

        async def in_the_ledger() -> bool:
            page = await police.ledger_entries(0)
            return any(
                entry.request_id == filed.id
                and entry.state == S.REQUEST_STATE_EXECUTED
                and entry.subject_digest == decision_digest
                for entry in page.entries
            )

        # The chained entry's digest covers the broker's event, and so the police's signed ruling in it.
        await eventually(in_the_ledger, what="the decision chained into the ledger")

        # The freeze stays.
        assert (await police.get(frozen.id)).state == frozen.state
        core = stack.agencies["bank-ccb"].core
        assert isinstance(core, BankCore)
        assert [h.status for h in core.holds_for(frozen.id)] == [HoldStatus.ACTIVE]

        # A second decision, and a decision by police the appeal is not addressed to: refused,
        # nothing stored.
        before = await police.get(filed.id)
        await refused(
            police.decide_appeal(filed.id, results_pb2.APPEAL_DECISION_LIFTED, "changed my mind"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "APPEAL_ALREADY_DECIDED",
        )
        async with stack.client(OTHER_POLICE) as other:
            await refused(
                other.decide_appeal(filed.id, results_pb2.APPEAL_DECISION_LIFTED, "not mine"),
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_APPEAL_RECIPIENT",
            )
        after = await police.get(filed.id)
        assert len(after.events) == len(before.events)
        assert after.result.appeal == results_pb2.APPEAL_DECISION_UPHELD


async def redeliver_last_appeal(stack: Stack) -> None:
    """Put the police's last appeal on its inbox again, as a redelivery would; wait until answered."""
    await redeliver_last(stack, POLICE, "appeal")


async def test_a_lifted_number_block_is_unblocked_by_the_broker(stack: Stack, root: Path) -> None:
    carrier = stack.agencies["carrier-cmcc"].core
    assert isinstance(carrier, CarrierCore)
    async with stack.client(POLICE) as police, stack.client("carrier-cmcc") as cmcc:
        blocked = await block_number(police, seed.FRAUDSTER_PHONE)
        line = carrier.line(seed.FRAUDSTER_PHONE)
        assert line is not None
        assert line.number_blocked
        filed = await appeal(cmcc, blocked.id)
        await police.wait_for(filed.id, FILED)
        # The same signed ruling sent twice (an answer lost on the way): one decision, one lifting order.
        key = load_agency_signing_key(root / "keys", POLICE)
        ruling = lifecycle_pb2.AppealRuling(
            appeal_request_id=filed.id,
            decision=results_pb2.APPEAL_DECISION_LIFTED,
            reason="wrong number",
            issued_at=to_timestamp(SystemClock().now()),
        )
        signed = sign_message(
            ruling.SerializeToString(),
            key=key,
            issuer=POLICE,
            audience=BROKER_ID,
            message_type=APPEAL_RULING_TYPE,
            clock=SystemClock(),
        )
        async with grpc.aio.insecure_channel(stack.broker_address) as channel:
            stub = bus_pb2_grpc.BusServiceStub(channel)
            answers = [
                await stub.DecideAppeal(
                    bus_pb2.DecideAppealRequest(ruling=signed),
                    metadata=bearer_metadata(key, agency_id=POLICE, clock=SystemClock()),
                )
                for _ in range(2)
            ]
        decided, again = answers
        assert [o.id for o in again.lifting] == [o.id for o in decided.lifting]
        assert len(again.status.events) == len(decided.status.events)
        assert decided.status.result.appeal == results_pb2.APPEAL_DECISION_LIFTED
        (lifting,) = decided.lifting
        assert lifting.type == S.REQUEST_TYPE_RELEASE
        assert lifting.sender == BROKER_ID
        assert lifting.recipient == "carrier-cmcc"
        assert lifting.parent_id == filed.id
        assert lifting.target_id == blocked.id
        executed = await police.wait_for(lifting.id, DONE)
        assert executed.state == S.REQUEST_STATE_EXECUTED, executed
        line = carrier.line(seed.FRAUDSTER_PHONE)
        assert line is not None
        assert not line.number_blocked

        async def released() -> bool:
            return (await police.get(blocked.id)).state == S.REQUEST_STATE_RELEASED

        await eventually(released, what="the number block RELEASED")
        # Asked for three times (two rulings' answers, the events consumer's hook): sent once.
        assert [o.id for o in await police.lifting_orders(await police.get(filed.id))] == [lifting.id]


async def test_a_lifted_account_restriction_is_restored(stack: Stack) -> None:
    platform = stack.agencies["platform-wechat"].core
    assert isinstance(platform, PlatformCore)
    ref = common_pb2.PlatformAccountRef(platform=seed.WECHAT, account_id=seed.FRAUDSTER_WECHAT_ID)
    async with stack.client(POLICE) as police, stack.client("platform-wechat") as wechat:
        request = requests_pb2.Request(
            case_ref=case_ref(S.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
            priority=S.PRIORITY_GREEN,
            account_block=requests_pb2.AccountBlock(
                account=ref, level=requests_pb2.RESTRICTION_LEVEL_PAYMENTS
            ),
        )
        blocked = await police.wait_for((await police.submit(request)).status.id, DONE)
        assert blocked.state == S.REQUEST_STATE_EXECUTED, blocked
        account = platform.account(seed.WECHAT, seed.FRAUDSTER_WECHAT_ID)
        assert account is not None
        assert account.restriction == Restriction.PAYMENTS
        filed = await appeal(wechat, blocked.id)
        await police.wait_for(filed.id, FILED)
        decided = await police.decide_appeal(filed.id, results_pb2.APPEAL_DECISION_LIFTED, "hijacked account")
        (lifting,) = decided.lifting
        assert lifting.recipient == "platform-wechat"
        executed = await police.wait_for(lifting.id, DONE)
        assert executed.state == S.REQUEST_STATE_EXECUTED, executed
        account = platform.account(seed.WECHAT, seed.FRAUDSTER_WECHAT_ID)
        assert account is not None
        assert account.restriction == Restriction.NONE

        async def released() -> bool:
            return (await police.get(blocked.id)).state == S.REQUEST_STATE_RELEASED

        await eventually(released, what="the account block RELEASED")


async def test_a_lifted_freeze_is_released_and_nothing_else_is_refused_quietly(stack: Stack) -> None:
    bank_core = stack.agencies["bank-abc"].core
    assert isinstance(bank_core, BankCore)
    async with (
        stack.client(POLICE) as police,
        stack.client("bank-abc") as abc,
        stack.client("bank-icbc") as icbc,
    ):
        frozen = await freeze(police, seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER)
        size = await journal_size(stack)
        # Hostile: a bank that did not apply the restriction.
        await refused(
            icbc.submit(forged_appeal(stack, frozen.id)),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_RESTRICTING_AGENCY",
        )
        # Hostile: the restricting bank, but to police who do not own the restriction's case.
        await refused(
            abc.submit(forged_appeal(stack, frozen.id, recipient=OTHER_POLICE)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_CASE",
        )
        filed = await appeal(abc, frozen.id)
        await refused(appeal(abc, frozen.id), grpc.StatusCode.FAILED_PRECONDITION, "APPEAL_PENDING")
        assert await journal_size(stack) == size + 1  # only the one appeal
        await police.wait_for(filed.id, FILED)
        decided = await police.decide_appeal(filed.id, results_pb2.APPEAL_DECISION_LIFTED, "salary")
        (lifting,) = decided.lifting
        assert lifting.recipient == "bank-abc"
        assert lifting.target_id == frozen.id
        executed = await police.wait_for(lifting.id, DONE)
        assert executed.state == S.REQUEST_STATE_EXECUTED, executed
        assert [h.status for h in bank_core.holds_for(frozen.id)] == [HoldStatus.RELEASED]

        async def released() -> bool:
            return (await police.get(frozen.id)).state == S.REQUEST_STATE_RELEASED

        await eventually(released, what="the freeze RELEASED")
        # Hostile: the lifting order is a RELEASE addressed to the bank, not a restriction; and a
        # restriction that is no longer in effect.
        size = await journal_size(stack)
        await refused(appeal(abc, lifting.id), grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_RESTRICTION")
        await refused(appeal(abc, frozen.id), grpc.StatusCode.FAILED_PRECONDITION, "NOT_RESTRICTED")
        await refused(
            abc.submit(forged_appeal(stack, str(uuid.uuid4()))),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NO_SUCH_RESTRICTION",
        )
        assert await journal_size(stack) == size


async def test_a_decision_whose_lifting_order_went_missing_gets_it(stack: Stack, root: Path) -> None:
    """The broker stopped after recording a LIFTED decision and before sending the lifting order.

    Simulated by putting the broker's decision event on GC_EVENTS without the order: the events
    consumer records it and its hook sends the order, once.
    """
    bank_core = stack.agencies["bank-cmb"].core
    assert isinstance(bank_core, BankCore)
    async with stack.client(POLICE) as police, stack.client("bank-cmb") as cmb:
        frozen = await freeze(police, seed.MULE_CMB_ACCOUNT, seed.MULE_CMB_HOLDER)
        filed = await appeal(cmb, frozen.id)
        taken = await police.wait_for(filed.id, FILED)
        header = envelope_pb2.EnvelopeHeader.FromString(taken.notarized_header)
        event = lifecycle_pb2.LifecycleEvent(
            event_id=str(uuid.uuid4()),
            request_id=filed.id,
            state=S.REQUEST_STATE_EXECUTED,
            actor=BROKER_ID,
            at=to_timestamp(SystemClock().now()),
            request_digest=header.body_digest,
            detail="lifted",
            result=results_pb2.Result(
                outcome=S.REQUEST_STATE_EXECUTED, appeal=results_pb2.APPEAL_DECISION_LIFTED, detail="lifted"
            ),
        )
        signed = sign_event(event, key=load_broker_signing_key(root / "keys"), clock=SystemClock())
        nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-decision"))
        try:
            await nc.jetstream().publish(
                event_subject(BROKER_ID, filed.id),
                signed.SerializeToString(),
                headers={"Nats-Msg-Id": event.event_id},
            )
        finally:
            await nc.drain()
        liftings: list[lifecycle_pb2.RequestStatus] = []

        async def lifting_sent() -> bool:
            liftings[:] = await police.lifting_orders(await police.get(filed.id))
            return bool(liftings)

        await eventually(lifting_sent, what="the lifting order sent by the events consumer")
        (lifting,) = liftings
        assert lifting.sender == BROKER_ID
        assert lifting.target_id == frozen.id
        executed = await police.wait_for(lifting.id, DONE)
        assert executed.state == S.REQUEST_STATE_EXECUTED, executed
        assert [h.status for h in bank_core.holds_for(frozen.id)] == [HoldStatus.RELEASED]
        assert (await police.get(filed.id)).result.appeal == results_pb2.APPEAL_DECISION_LIFTED


async def test_the_statement_travels_sealed(stack: Stack) -> None:
    """Only the police read it: every message on the bus holds ciphertext."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-scan"))
    marker = STATEMENT.encode()
    try:
        js = nc.jetstream()
        for stream in (INBOX_STREAM, WATCH_STREAM, EVENTS_STREAM):
            info = await js.stream_info(stream)
            assert info.state.messages > 0
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await js.get_msg(stream, seq)
                assert marker not in (msg.data or b""), f"statement in clear on {stream} #{seq}"
    finally:
        await nc.drain()
    assert any(a.statement == STATEMENT for a in desk(stack).appeals())


async def test_an_undecided_appeal_escalates_to_the_supervisor(stack: Stack) -> None:
    settings = NatsSettings.from_url(stack.nats_url, name="test-notices")
    async with supervisor_notices(settings, SUPERVISOR) as notices:
        async with stack.client(POLICE) as police, stack.client("bank-icbc") as icbc:
            frozen = await freeze(police, seed.MULE_ICBC_ACCOUNT, seed.MULE_ICBC_HOLDER)
            filed = await appeal(icbc, frozen.id, priority=S.PRIORITY_STANDARD)
            status, breach = await execute_escalated(
                police, filed.id, what="the appeal's decision deadline breached"
            )
            assert status.state == S.REQUEST_STATE_ACKNOWLEDGED  # escalation annotates, it decides nothing
            assert breach.actor == BROKER_ID
            assert SUPERVISOR in breach.detail
        await supervisor_told(notices, filed.id, what="the supervisor police told of the overdue decision")


async def test_two_appeals_at_the_same_instant_one_is_filed(stack: Stack) -> None:
    """Both pass the early check (neither is stored when the other is checked); the restriction's
    key, claimed before storing, lets one through. A key left by an appeal that never reached the
    journal (a broker that died in between) does not block; nor does one naming a decided appeal."""
    async with stack.client(POLICE) as police, stack.client("bank-icbc") as icbc:
        frozen = await freeze(police, seed.FRAUD_ACCOUNT, seed.FRAUD_HOLDER)
        lost = OpenAppeal(
            request_id=str(uuid.uuid4()),
            order_key="lost",
            claimed_at=SystemClock().now() - timedelta(minutes=10),
        )
        nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-open-appeals"))
        try:
            kv = await open_bucket(nc.jetstream(), OPEN_APPEALS_BUCKET)  # as the broker opens it
            await kv.put(frozen.id, lost.encode())
            size = await journal_size(stack)
            raced = await asyncio.gather(
                appeal(icbc, frozen.id), appeal(icbc, frozen.id), return_exceptions=True
            )
            filed = [r for r in raced if isinstance(r, lifecycle_pb2.RequestStatus)]
            refusals = [r for r in raced if isinstance(r, grpc.aio.AioRpcError)]
            assert len(filed) == 1, raced
            assert [error_details(r).reason for r in refusals] == ["APPEAL_PENDING"]
            assert await journal_size(stack) == size + 1  # the refused one stored nothing
            first = filed[0]
            named = OpenAppeal.decode((await kv.get(frozen.id)).value or b"")
            assert named.request_id == first.id

            # Decided: the key still names it, and blocks no more; the next appeal takes the key.
            await police.wait_for(first.id, FILED)
            await police.decide_appeal(first.id, results_pb2.APPEAL_DECISION_UPHELD, "funds traced to fraud")
            second = await appeal(icbc, frozen.id)
            assert second.id != first.id
            assert OpenAppeal.decode((await kv.get(frozen.id)).value or b"").request_id == second.id
            await refused(appeal(icbc, frozen.id), grpc.StatusCode.FAILED_PRECONDITION, "APPEAL_PENDING")
        finally:
            await nc.drain()
