"""Victim follow-ups (回访) end to end: NATS, the broker, the reference banks and police desks
behind their adapters. A return pays two victims back; the broker sends one FOLLOW_UP per paid
payout to the police owning the case, whose desk records the call (EXECUTED, REACHED); the signed
answer is chained into the ledger; the return's outcome processed again sends no second follow-up.
A follow-up the police never answer escalates to their supervisor at its execute deadline, and the
SLA report counts them all.

One stack for the module; the SLA policy gives STANDARD follow-ups a few seconds.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from adapters import AdapterConfig
from agencies import DEFAULT_SLA_POLICY_PATH
from agencies.bank import BankCore
from agencies.demo import Stack, StackConfig
from agencies.police import FollowUpRule, PoliceDesk
from broker.cli._sla import sla_report_command
from broker.client import BusClient, error_details
from broker.hub import load_sla_policy
from broker.protocol import (
    BROKER_ID,
    connect,
    event_subject,
    to_timestamp,
)
from tests._wait import eventually
from tests.integration.escalations import execute_escalated, supervisor_notices, supervisor_told
from tests.integration.stack_journal import events_settled
from tests.integration.trail_world import bank_cores, trail_stack

pytestmark = pytest.mark.integration

S = common_pb2
OWNER = "police-310115"
LATE_OWNER = "police-440305"  # its adapter is stopped before its follow-up is sent
LATE_SUPERVISOR = "police-440300"  # police-440305's supervisor in the sample directory
REGULATOR = "regulator-mps"
BANK = "bank-icbc"
CASE = "HF-2026-0001"
LATE_CASE = "HF-2026-0002"
MULE = "6222020900011111"
VICTIM_1 = "6222020900012222"
VICTIM_2 = "6222020900013333"
LATE_MULE = "6222020900014444"
VICTIM_3 = "6222020900015555"
DONE = {
    S.REQUEST_STATE_EXECUTED,
    S.REQUEST_STATE_PARTIALLY_EXECUTED,
    S.REQUEST_STATE_REJECTED,
    S.REQUEST_STATE_FAILED,
}


def short_follow_ups(tmp_path: Path) -> Path:
    """The shipped CN policy, with STANDARD follow-ups due within seconds (GREEN ones keep 3 wd)."""
    text = DEFAULT_SLA_POLICY_PATH.read_text(encoding="utf-8")
    old = 'types = ["follow_up"]\npriority = "standard"\ndeliver = "1h"\nacknowledge = "8h"\nexecute = "3wd"'
    assert text.count(old) == 1
    path = tmp_path / "short-follow-ups.toml"
    path.write_text(
        text.replace(old, old.replace('"1h"', '"3s"').replace('"8h"', '"4s"').replace('"3wd"', '"5s"')),
        encoding="utf-8",
    )
    return path


@dataclass
class World:
    stack: Stack
    bank: BankCore
    root: Path


def _ref(number: str, holder: str, bank: str = "") -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name=holder, bank=bank)


def _case(case_number: str, owner: str, kind: common_pb2.LegalInstrumentType.ValueType) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=case_number,
        issuing_agency=owner,
        legal_instrument_id=f"{case_number}-instrument",
        legal_instrument_type=kind,
    )


def freeze(
    case_number: str, owner: str, account: str, amount: int, victim: str, deposited: datetime
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=_case(case_number, owner, S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE),
        priority=S.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=_ref(account, "马某某"),
            amount=S.Money(currency="CNY", minor_units=amount),
            victim_account=_ref(victim, "张某某", BANK),
            deposited_at=to_timestamp(deposited),
        ),
    )


def return_order(
    case_number: str, owner: str, account: str, *payouts: tuple[str, int]
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=_case(case_number, owner, S.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE),
        priority=S.PRIORITY_STANDARD,
        return_funds=requests_pb2.ReturnFunds(
            account=_ref(account, "马某某"),
            payouts=[
                requests_pb2.VictimPayout(
                    victim_account=_ref(victim, "张某某", BANK),
                    amount=S.Money(currency="CNY", minor_units=amount),
                )
                for victim, amount in payouts
            ],
        ),
    )


def desk(stack: Stack, agency: str = OWNER) -> PoliceDesk:
    core = stack.agencies[agency].core
    assert isinstance(core, PoliceDesk)
    return core


async def held(client: BusClient, request: requests_pb2.Request) -> lifecycle_pb2.RequestStatus:
    """Submit a freeze and wait until the bank placed it."""
    status = await client.wait_for((await client.submit(request)).status.id, DONE)
    assert status.state == S.REQUEST_STATE_EXECUTED
    return status


async def indexed(client: BusClient, case_number: str, account: str, claims: int) -> trail_pb2.Allocation:
    """The allocation of ``account`` in the case, once its ``claims`` holds are indexed."""
    seen: list[trail_pb2.Allocation] = []

    async def there() -> bool:
        try:
            allocation = await client.allocation(case_number, _ref(account, "马某某"))
        except grpc.aio.AioRpcError:
            return False
        seen.append(allocation)
        return len(allocation.claims) == claims

    await eventually(there, within=20.0, what=f"{claims} holds on the account indexed")
    return seen[-1]


async def returned(client: BusClient, request: requests_pb2.Request) -> lifecycle_pb2.RequestStatus:
    status = await client.wait_for((await client.submit(request)).status.id, DONE)
    assert status.state == S.REQUEST_STATE_EXECUTED, status.result.detail
    return status


async def follow_ups_of(
    client: BusClient, order: lifecycle_pb2.RequestStatus, count: int
) -> list[lifecycle_pb2.RequestStatus]:
    """The return's follow-ups, once ``count`` were sent."""
    found: list[lifecycle_pb2.RequestStatus] = []

    async def sent() -> bool:
        found[:] = await client.follow_ups(order)
        return len(found) >= count

    await eventually(sent, within=20.0, what=f"{count} follow-ups sent")
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("follow-ups")
    template = AdapterConfig(
        agency_id=BANK,
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
        sla=load_sla_policy(short_follow_ups(root)),
    )
    async with trail_stack(config) as stack:
        bank = bank_cores(stack)[BANK]
        opened = datetime.now(UTC) - timedelta(days=60)
        bank.open_account(MULE, "马某某", balance=60_000, opened_at=opened)
        bank.open_account(LATE_MULE, "马某某", balance=20_000, opened_at=opened)
        for victim in (VICTIM_1, VICTIM_2, VICTIM_3):
            bank.open_account(victim, "张某某", balance=0, opened_at=opened)
        yield World(stack=stack, bank=bank, root=root)


async def test_a_return_makes_the_broker_send_one_follow_up_per_paid_victim(world: World) -> None:
    stack = world.stack
    now = datetime.now(UTC)
    async with stack.client(OWNER) as police:
        first = await held(police, freeze(CASE, OWNER, MULE, 30_000, VICTIM_1, now - timedelta(hours=3)))
        second = await held(police, freeze(CASE, OWNER, MULE, 20_000, VICTIM_2, now - timedelta(hours=1)))
        await indexed(police, CASE, MULE, claims=2)
        order = await returned(
            police, return_order(CASE, OWNER, MULE, (VICTIM_1, 10_000), (VICTIM_2, 20_000))
        )
        assert [p.amount.minor_units for p in order.result.returns] == [10_000, 20_000]

        follow_ups = await follow_ups_of(police, order, 2)
        assert len(follow_ups) == 2
        for sent in follow_ups:
            assert sent.type == S.REQUEST_TYPE_FOLLOW_UP
            assert (sent.sender, sent.recipient, sent.parent_id) == (BROKER_ID, OWNER, order.id)
            assert sent.case_ref == order.case_ref
        answered = [await police.wait_for(f.id, DONE) for f in follow_ups]
        for status in answered:
            assert status.state == S.REQUEST_STATE_EXECUTED
            assert status.result.follow_up == results_pb2.FOLLOW_UP_OUTCOME_REACHED
            assert status.result.detail == FollowUpRule().advice

    # The desk recorded one call per payout, naming the victim by the trail's digest only.
    records = {r.payout_index: r for r in desk(stack).follow_ups() if r.return_request_id == order.id}
    assert sorted(records) == [0, 1]
    assert records[0].victim_id == first.trail_seed.victim_id
    assert records[1].victim_id == second.trail_seed.victim_id
    assert (records[0].returned, records[1].returned) == (10_000, 20_000)
    assert all(r.outcome == "REACHED" and r.case_number == CASE for r in records.values())
    assert {r.request_id for r in records.values()} == {f.id for f in follow_ups}
    for record in records.values():
        assert VICTIM_1 not in record.victim_id
        assert VICTIM_2 not in record.victim_id


async def test_the_follow_up_is_in_the_ledger_and_sent_once_however_often_the_outcome_is_processed(
    world: World,
) -> None:
    stack = world.stack
    async with stack.client(OWNER) as police:
        (order,) = [
            s
            for s in await police.list_all(case_number=CASE, types=[S.REQUEST_TYPE_RETURN_FUNDS])
            if s.state == S.REQUEST_STATE_EXECUTED
        ]
        follow_ups = await follow_ups_of(police, order, 2)

        # The desk's signed answer is chained into the ledger.
        async def in_the_ledger() -> bool:
            page = await police.ledger_entries(0)
            chained = {
                e.request_id for e in page.entries if e.state == S.REQUEST_STATE_EXECUTED and e.actor == OWNER
            }
            return {f.id for f in follow_ups} <= chained

        await eventually(in_the_ledger, what="the follow-ups' answers chained into the ledger")

        # The bank's outcome event of the return, put on GC_EVENTS again (a redelivery): the events
        # consumer runs the outcome hooks again, and no second follow-up goes out.
        outcome = next(
            r.event
            for r in order.events
            if lifecycle_pb2.LifecycleEvent.FromString(r.event.payload).state == S.REQUEST_STATE_EXECUTED
        )
        nc = await connect(stack.nats_settings("test-redeliver"))
        try:
            js = nc.jetstream()
            await js.publish(
                event_subject(BANK, order.id),
                outcome.SerializeToString(),
                headers={"Nats-Msg-Id": str(uuid.uuid4())},
            )
        finally:
            await nc.drain()
        await events_settled(stack)
        again = await police.follow_ups(order)
        assert sorted(s.id for s in again) == sorted(f.id for f in follow_ups)
    assert len([r for r in desk(stack).follow_ups() if r.return_request_id == order.id]) == 2
    assert all(desk(stack).execution_count(f.id) == 1 for f in follow_ups)


async def test_an_unanswered_follow_up_escalates_to_the_supervisor_and_the_report_counts_it(
    world: World,
) -> None:
    stack = world.stack
    # The late owner's police desk is not reachable: its adapter stops.
    await stack.adapters[LATE_OWNER].aclose()
    async with supervisor_notices(stack.nats_settings("test-notices"), LATE_SUPERVISOR) as notices:
        now = datetime.now(UTC)
        async with stack.client(LATE_OWNER) as police:
            await held(
                police, freeze(LATE_CASE, LATE_OWNER, LATE_MULE, 20_000, VICTIM_3, now - timedelta(hours=2))
            )
            await indexed(police, LATE_CASE, LATE_MULE, claims=1)
            order = await returned(police, return_order(LATE_CASE, LATE_OWNER, LATE_MULE, (VICTIM_3, 20_000)))
            (late,) = await follow_ups_of(police, order, 1)
            assert late.recipient == LATE_OWNER
            status, breach = await execute_escalated(
                police, late.id, what="the follow-up's execute deadline breached"
            )
            assert status.state not in DONE  # escalation annotates, it calls nobody back
            assert breach.actor == BROKER_ID
            assert LATE_SUPERVISOR in breach.detail
        await supervisor_told(notices, late.id, what="the supervisor police told of the overdue follow-up")
    assert desk(stack, LATE_OWNER).follow_ups() == ()

    # The SLA report, as a regulator: three follow-ups due, two done (reached), one overdue.
    out = io.StringIO()
    code = await sla_report_command(
        broker=stack.broker_address, agency_id=REGULATOR, state_dir=world.root / "keys", as_json=True, out=out
    )
    assert code == 0
    assert json.loads(out.getvalue())["follow_ups"] == {
        "due": 3,
        "done": 2,
        "reached": 2,
        "not_reached": 0,
        "overdue": 1,
    }
    table = io.StringIO()
    code = await sla_report_command(
        broker=stack.broker_address,
        agency_id=REGULATOR,
        state_dir=world.root / "keys",
        as_json=False,
        out=table,
    )
    assert code == 0
    assert "victim follow-ups: 3 due, 2 done (reached 2, not reached 0), 1 overdue" in table.getvalue()


async def test_agencies_cannot_send_follow_ups_and_nothing_is_stored(world: World) -> None:
    """Only the broker sends FOLLOW_UPs (no policy rule allows an agency to); a malformed one is
    refused by the contract first. Either way, a clear status with a reason and nothing stored."""
    order = requests_pb2.Request(
        case_ref=_case("HF-2026-0099", "police-440300", S.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE),
        priority=S.PRIORITY_STANDARD,
        recipient=OWNER,
        follow_up=requests_pb2.FollowUp(
            return_request_id=str(uuid.uuid4()),
            payout_index=0,
            victim_id="vd-forged",
            returned=S.Money(currency="CNY", minor_units=100),
        ),
    )
    malformed = requests_pb2.Request()
    malformed.CopyFrom(order)
    malformed.follow_up.return_request_id = "not-a-uuid"
    async with world.stack.client("police-440300") as police:
        for request, code, reason in (
            (order, grpc.StatusCode.PERMISSION_DENIED, "TYPE_NOT_ALLOWED"),
            (malformed, grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await police.submit(request)
            assert refused.value.code() == code
            assert error_details(refused.value).reason == reason
        assert await police.list_all(case_number="HF-2026-0099") == []
