"""Partial release for living expenses, end to end: broker, NATS, the reference bank behind its adapter.

The bank's own books are the proof (what stays held, what is available); the broker's refusals
store nothing (no new request of the case, nothing in the bank's inbox). One stack for the module;
the command line runs as a child process against it (``submit release --amount``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, requests_pb2, trail_pb2

from adapters import AdapterConfig
from agencies.bank import BankCore
from agencies.demo import Stack, StackConfig
from broker.client import BusClient, error_details
from broker.hub._returns import RETURNS_BUCKET
from broker.hub._store import open_bucket
from broker.protocol import FINAL_STATES, INBOX_STREAM, connect, to_timestamp
from tests._wait import eventually
from tests.integration.cli_child import run_cli

pytestmark = pytest.mark.integration

POLICE = "police-310115"
BANK = "bank-icbc"
CASE = "SH-PD-2026-1203-0013"
ACCOUNT = "6222020200007770013"
HOLDER = "赵某"
BALANCE = 2_000_000  # CNY 20,000.00
FROZEN = 1_000_000  # the sample policy: at most CNY 5,000.00 and half of it for living expenses
EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
RACED_CASE = "SH-PD-2026-1203-0014"
RACED_ACCOUNT = "6222020200007770014"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("partial-release")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
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
    config = StackConfig(keys_dir=root / "keys", data_dir=root / "data", adapter=template)
    async with Stack(config) as running:
        core = running.agencies[BANK].core
        assert isinstance(core, BankCore)
        core.open_account(ACCOUNT, HOLDER, balance=BALANCE)
        core.open_account(RACED_ACCOUNT, HOLDER, balance=BALANCE)
        yield running


def bank(stack: Stack) -> BankCore:
    core = stack.agencies[BANK].core
    assert isinstance(core, BankCore)
    return core


def case_ref(instrument: common_pb2.LegalInstrumentType.ValueType) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=CASE,
        issuing_agency=POLICE,
        legal_instrument_id="沪公(浦)冻字[2026]1203号",
        legal_instrument_type=instrument,
    )


def account(number: str = ACCOUNT) -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name=HOLDER, bank=BANK)


def release(
    target: str,
    minor_units: int | None,
    *,
    living: bool = True,
    currency: str = "CNY",
    number: str = ACCOUNT,
    case_number: str = CASE,
) -> requests_pb2.Request:
    body = requests_pb2.Release(target_request_id=target, account=account(number), reason="living expenses")
    if minor_units is not None:
        body.amount.CopyFrom(common_pb2.Money(currency=currency, minor_units=minor_units))
    if living:
        body.purpose = requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    ref = case_ref(common_pb2.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE)
    ref.case_number = case_number
    return requests_pb2.Request(case_ref=ref, priority=common_pb2.PRIORITY_GREEN, release=body)


async def done(police: BusClient, request_id: str) -> lifecycle_pb2.RequestStatus:
    return await police.wait_for(request_id, FINAL_STATES)


async def inbox_last_seq(stack: Stack) -> int:
    """The last sequence of every agency's inbox: anything sent moves it."""
    nc = await connect(stack.nats_settings("test-inbox"))
    try:
        return int((await nc.jetstream().stream_info(INBOX_STREAM)).state.last_seq)
    finally:
        await nc.drain()


async def cli(stack: Stack, state_dir: Path, *args: str) -> tuple[int, str, str]:
    """``greenchannel ARGS`` in a child process (this loop runs the stack meanwhile)."""
    return await run_cli(stack.broker_address, state_dir, *args)


async def test_living_expenses_released_in_part_then_the_rest(stack: Stack, root: Path) -> None:
    core = bank(stack)
    async with stack.client(POLICE) as police:
        freeze = requests_pb2.Request(
            case_ref=case_ref(common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE),
            priority=common_pb2.PRIORITY_GREEN,
            freeze=requests_pb2.Freeze(
                account=account(), amount=common_pb2.Money(currency="CNY", minor_units=FROZEN)
            ),
        )
        hold = await done(police, (await police.submit(freeze)).status.id)
        assert hold.state == EXECUTED
        assert core.available(ACCOUNT) == BALANCE - FROZEN

        # The command line: CNY 2,000.00 for living expenses, waited for, as JSON.
        code, out, err = await cli(
            stack,
            root / "keys",
            "submit",
            "release",
            "--as",
            POLICE,
            "--case",
            CASE,
            "--target",
            hold.id,
            "--account",
            ACCOUNT,
            "--name",
            HOLDER,
            "--bank",
            BANK,
            "--amount",
            "2000.00",
            "--living-expenses",
            "--wait",
            "--json",
        )
        assert code == 0, err
        document: dict[str, Any] = json.loads(out)
        assert document["state"] == "EXECUTED"
        result = document["status"]["result"]
        assert result["amount_released"] == {"currency": "CNY", "minor_units": "200000"}
        assert result["amount_frozen"] == {"currency": "CNY", "minor_units": "800000"}
        assert document["status"]["release_seed"]["purpose"] == "RELEASE_PURPOSE_LIVING_EXPENSES"
        # The hold stays active with the rest; the holder can spend what was released.
        assert (await police.get(hold.id)).state == EXECUTED
        assert core.available(ACCOUNT) == BALANCE - FROZEN + 200_000
        assert core.holds_for(hold.id)[0].amount == 800_000

        # Refusals, each with its reason, none stored or sent.
        before_ids = {s.id for s in await police.list_all(case_number=CASE)}
        before_inbox = await inbox_last_seq(stack)
        refused = {
            # 2,000 + 3,001 over the CNY 5,000 cap (half of 10,000 is 5,000 too).
            "LIVING_EXPENSES_CAP": release(hold.id, 300_100),
            "AMOUNT_REQUIRED": release(hold.id, None),
            "MORE_THAN_HELD": release(hold.id, 800_001, living=False),
            "CURRENCY_MISMATCH": release(hold.id, 100, currency="USD"),
        }
        for reason, request in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await police.submit(request)
            assert error_details(info.value).reason == reason, reason
        assert {s.id for s in await police.list_all(case_number=CASE)} == before_ids
        assert await inbox_last_seq(stack) == before_inbox
        assert core.holds_for(hold.id)[0].amount == 800_000

        # Within the cap once more (2,000 + 3,000 = 5,000), through the Release call.
        more = await done(police, (await police.release(release(hold.id, 300_000))).id)
        assert (more.state, more.result.amount_released.minor_units) == (EXECUTED, 300_000)
        assert (await police.get(hold.id)).state == EXECUTED

        # A full release after the partial ones releases the rest and moves the hold to RELEASED.
        rest = await done(police, (await police.submit(release(hold.id, None, living=False))).status.id)
        assert rest.state == EXECUTED
        assert rest.result.amount_released.minor_units == FROZEN - 500_000
        assert rest.result.amount_frozen.minor_units == 0

        async def released() -> bool:
            return (await police.get(hold.id)).state == common_pb2.REQUEST_STATE_RELEASED

        await eventually(released, what="the hold RELEASED")
    assert core.available(ACCOUNT) == BALANCE


async def account_record(stack: Stack, node_id: str) -> trail_pb2.AccountReturns:
    nc = await connect(stack.nats_settings("test-records"))
    try:
        kv = await nc.jetstream().key_value(RETURNS_BUCKET)
        entry = await kv.get(node_id)
        return trail_pb2.AccountReturns.FromString(entry.value or b"")
    finally:
        await nc.drain()


async def put_record(stack: Stack, record: trail_pb2.AccountReturns) -> None:
    nc = await connect(stack.nats_settings("test-records"))
    try:
        kv = await open_bucket(nc.jetstream(), RETURNS_BUCKET)  # as the broker opens it, on first use
        await kv.put(record.node_id, record.SerializeToString())
    finally:
        await nc.drain()


async def test_two_living_expense_releases_at_once_over_the_cap_one_is_accepted(stack: Stack) -> None:
    """Both pass the journal's count (neither is stored when the other is checked); the account's
    record, changed by compare-and-set, lets exactly one through. A reservation left by a release
    that never reached the journal (a broker that died before storing it) does not count."""
    core = bank(stack)
    async with stack.client(POLICE) as police:
        ref = case_ref(common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE)
        ref.case_number = RACED_CASE
        freeze = requests_pb2.Request(
            case_ref=ref,
            priority=common_pb2.PRIORITY_GREEN,
            freeze=requests_pb2.Freeze(
                account=account(RACED_ACCOUNT), amount=common_pb2.Money(currency="CNY", minor_units=FROZEN)
            ),
        )
        hold = await done(police, (await police.submit(freeze)).status.id)
        assert hold.state == EXECUTED
        node_id = hold.trail_seed.node_id
        assert node_id
        # A broker died after reserving CNY 4,000.00 and before storing the release, long ago.
        lost = trail_pb2.AccountReturns(node_id=node_id)
        lost.releases.add(
            request_id="0190aaaa-0000-7000-8000-00000000dead",
            order_key="lost",
            hold_id=hold.id,
            amount=common_pb2.Money(currency="CNY", minor_units=400_000),
            living_expenses=True,
            state=trail_pb2.RELEASE_ENTRY_STATE_RESERVED,
            reserved_at=to_timestamp(datetime.now(UTC) - timedelta(minutes=10)),
        )
        await put_record(stack, lost)
        before_ids = {s.id for s in await police.list_all(case_number=RACED_CASE)}

        # CNY 3,000.00 twice at once: 6,000 over the CNY 5,000 cap, each within it alone.
        order = release(hold.id, 300_000, number=RACED_ACCOUNT, case_number=RACED_CASE)
        raced = await asyncio.gather(
            police.submit(order, idempotency_key="living-1"),
            police.submit(order, idempotency_key="living-2"),
            return_exceptions=True,
        )
        accepted = [r for r in raced if isinstance(r, bus_pb2.SubmitResponse)]
        refused = [r for r in raced if isinstance(r, grpc.aio.AioRpcError)]
        assert len(accepted) == 1, raced
        assert [error_details(r).reason for r in refused] == ["LIVING_EXPENSES_CAP"]
        status = accepted[0].status
        assert status.release_seed.node_id == node_id
        # Nothing of the refused one is stored; the lost reservation was voided, not counted.
        assert {s.id for s in await police.list_all(case_number=RACED_CASE)} == before_ids | {status.id}
        record = await account_record(stack, node_id)
        states = {e.request_id: e.state for e in record.releases}
        assert states.pop(lost.releases[0].request_id) == trail_pb2.RELEASE_ENTRY_STATE_VOID
        # Reserved, or lifted already if the bank was quick: one entry, the accepted release's.
        assert list(states) == [status.id]
        assert states[status.id] in (
            trail_pb2.RELEASE_ENTRY_STATE_RESERVED,
            trail_pb2.RELEASE_ENTRY_STATE_LIFTED,
        )

        executed = await done(police, status.id)
        assert (executed.state, executed.result.amount_released.minor_units) == (EXECUTED, 300_000)
        assert core.holds_for(hold.id)[0].amount == FROZEN - 300_000

        async def settled() -> bool:
            entries = {e.request_id: e for e in (await account_record(stack, node_id)).releases}
            entry = entries[status.id]
            return (
                entry.state == trail_pb2.RELEASE_ENTRY_STATE_LIFTED and entry.released.minor_units == 300_000
            )

        await eventually(settled, what="the release's entry settled at its outcome")
        # Once lifted it still counts: 3,000 + 2,001 is over the cap, 3,000 + 2,000 is not.
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await police.submit(release(hold.id, 200_001, number=RACED_ACCOUNT, case_number=RACED_CASE))
        assert error_details(over.value).reason == "LIVING_EXPENSES_CAP"
        rest = await police.submit(release(hold.id, 200_000, number=RACED_ACCOUNT, case_number=RACED_CASE))
        assert (await done(police, rest.status.id)).state == EXECUTED
    assert core.holds_for(hold.id)[0].amount == FROZEN - 500_000
