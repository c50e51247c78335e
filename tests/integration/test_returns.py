"""RETURN_FUNDS on the whole stack: NATS, the broker, the reference banks behind their adapters,
the Bus API. Two cases freeze one mule account (a competing claim); the broker allocates the
frozen money by deposit order, the police of each case order their victim's share back, the bank
pays and holds that much less. Hostile orders are refused with a specific reason and leave
nothing behind: no journal record, no reservation.

One stack for the module; the checks run in order on the same account.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import grpc
import nats.js.errors
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, requests_pb2, trail_pb2

from adapters import AdapterConfig
from agencies.bank import BankCore
from agencies.demo import Stack, StackConfig
from broker.client import BusClient, error_details, open_account, open_result_details
from broker.hub._account_cases import ACCOUNT_CASES_BUCKET
from broker.hub._returns import RETURNS_BUCKET
from broker.protocol import (
    WATCH_STREAM,
    connect,
    load_agency_encryption_key,
    status_filter,
    to_timestamp,
)
from tests._wait import eventually
from tests.integration.trail_world import bank_cores, trail_stack

pytestmark = pytest.mark.integration

T = TypeVar("T")

OWNER_A = "police-310115"
OWNER_B = "police-440300"
STRANGER = "police-440305"
REGULATOR = "regulator-pboc"
BANK = "bank-icbc"
OTHER_BANK = "bank-ccb"
CASE_A = "RET-A-2026-0001"
CASE_B = "RET-B-2026-0002"
CASE_X = "RET-X-2026-0003"

MULE = "6222020900001234"
VICTIM_A = "6222020900005678"  # at the same bank: credited there
VICTIM_B = "6217000900009012"  # at another bank: an outgoing transfer
STRANGER_ACCOUNT = "6222020900007777"
UNTRACED_MULE = "6222020900008888"  # a hold whose victim's deposit time nobody knows
RACED_MULE = "6222020900009999"  # a partial release and a return at once
CASE_R = "RET-R-2026-0004"
RACED_BALANCE = 80_000
RACED_FROZEN = 60_000
LATE_MULE = "6222020900006666"  # paid back to one victim before a second case finds it
VICTIM_C = "6222020900003456"
VICTIM_D = "6217000900004567"
CASE_C = "RET-C-2026-0004"
CASE_D = "RET-D-2026-0005"

# The mule holds 700.00; case A freezes 600.00 (all there), case B 300.00 (only 100.00 left).
# Deposit order, latest first: B's victim (300.00) is paid first, A's victim gets the rest (400.00).
BALANCE = 70_000
FROZEN_A = 60_000
ASKED_B = 30_000
SHARE_A = 40_000
SHARE_B = 30_000


@dataclass
class World:
    stack: Stack
    bank: BankCore
    node_id: str = ""


def _ref(number: str, holder: str, bank: str = "") -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name=holder, bank=bank)


MULE_REF = _ref(MULE, "马某某")
VICTIM_A_REF = _ref(VICTIM_A, "张某某", BANK)
VICTIM_B_REF = _ref(VICTIM_B, "李某某", OTHER_BANK)


def _case(case_number: str, owner: str, kind: common_pb2.LegalInstrumentType.ValueType) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number=case_number,
        issuing_agency=owner,
        legal_instrument_id=f"{case_number}-instrument",
        legal_instrument_type=kind,
    )


def freeze(
    case_number: str,
    owner: str,
    amount: int,
    victim: common_pb2.BankAccountRef,
    deposited: datetime | None,
    *,
    account: common_pb2.BankAccountRef = MULE_REF,
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=_case(case_number, owner, common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE),
        priority=common_pb2.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=account,
            amount=common_pb2.Money(currency="CNY", minor_units=amount),
            victim_account=victim,
            deposited_at=to_timestamp(deposited) if deposited is not None else None,
        ),
    )


def return_order(
    case_number: str,
    owner: str,
    *payouts: tuple[common_pb2.BankAccountRef, int],
    currency: str = "CNY",
    account: common_pb2.BankAccountRef = MULE_REF,
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=_case(case_number, owner, common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE),
        priority=common_pb2.PRIORITY_STANDARD,
        return_funds=requests_pb2.ReturnFunds(
            account=account,
            payouts=[
                requests_pb2.VictimPayout(
                    victim_account=victim, amount=common_pb2.Money(currency=currency, minor_units=amount)
                )
                for victim, amount in payouts
            ],
        ),
    )


async def found(probe: Callable[[], Awaitable[T | None]], what: str) -> T:
    """``probe()``'s first answer that is not None (waited for with ``eventually``)."""
    seen: list[T] = []

    async def there() -> bool:
        answer = await probe()
        if answer is not None:
            seen.append(answer)
        return answer is not None

    await eventually(there, within=20.0, what=what)
    return seen[-1]


async def settled(client: BusClient, request_id: str) -> lifecycle_pb2.RequestStatus:
    async def final() -> lifecycle_pb2.RequestStatus | None:
        status = await client.get(request_id)
        done = status.state in (
            common_pb2.REQUEST_STATE_EXECUTED,
            common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
            common_pb2.REQUEST_STATE_REJECTED,
            common_pb2.REQUEST_STATE_FAILED,
        )
        return status if done else None

    return await found(final, f"request {request_id} reached an outcome")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("returns-stack")
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
    async with trail_stack(config) as stack:
        bank = bank_cores(stack)[BANK]
        opened = datetime.now(UTC) - timedelta(days=60)
        bank.open_account(MULE, "马某某", balance=BALANCE, opened_at=opened)
        bank.open_account(VICTIM_A, "张某某", balance=0, opened_at=opened)
        bank.open_account(STRANGER_ACCOUNT, "王某某", balance=0, opened_at=opened)
        bank.open_account(UNTRACED_MULE, "赵某某", balance=5_000, opened_at=opened)
        bank.open_account(RACED_MULE, "孙某某", balance=RACED_BALANCE, opened_at=opened)
        bank.open_account(LATE_MULE, "孙某某", balance=10_000, opened_at=opened)
        bank.open_account(VICTIM_C, "周某某", balance=0, opened_at=opened)
        world = World(stack=stack, bank=bank)
        now = datetime.now(UTC)
        async with stack.client(OWNER_A) as police_a, stack.client(OWNER_B) as police_b:
            first = await police_a.submit(
                freeze(CASE_A, OWNER_A, FROZEN_A, VICTIM_A_REF, now - timedelta(hours=3))
            )
            assert (await settled(police_a, first.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED
            second = await police_b.submit(
                freeze(CASE_B, OWNER_B, ASKED_B, VICTIM_B_REF, now - timedelta(hours=1))
            )
            partial = await settled(police_b, second.status.id)
            assert partial.state == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
            assert partial.trail_seed.victim_id
            # The victim's account is kept only sealed to the case owner, bound to its digest.
            victim = open_account(
                partial.trail_seed.victim_account,
                load_agency_encryption_key(stack._config.keys_dir, OWNER_B),
                case_ref=partial.case_ref,
                node_id=partial.trail_seed.victim_id,
            )
            assert victim.account_number == VICTIM_B
            assert partial.trail_seed.deposited_at.ToDatetime(tzinfo=UTC) == now - timedelta(hours=1)

            async def both_indexed() -> trail_pb2.Allocation | None:
                try:
                    allocation = await police_b.allocation(CASE_B, MULE_REF)
                except grpc.aio.AioRpcError:
                    return None
                return allocation if len(allocation.claims) == 2 else None

            allocation = await found(both_indexed, "both cases hold the account")
            world.node_id = allocation.node_id
        yield world


async def _journal_count(stack: Stack, owner: str, case_number: str) -> int:
    """Journal records of the requests the case's police sent. The broker's own requests of the
    case (a victim follow-up after a paid return) arrive on their own time and are not counted:
    what a refusal must not add is a request of the sender's."""
    nc = await connect(stack.nats_settings("returns-test"))
    try:
        js = nc.jetstream()
        info = await js.stream_info(
            WATCH_STREAM,
            subjects_filter=status_filter(sender=owner, case_owner=owner, case_number=case_number),
        )
        return sum((info.state.subjects or {}).values())
    finally:
        await nc.close()


async def _reservation(stack: Stack, node_id: str) -> trail_pb2.AccountReturns | None:
    nc = await connect(stack.nats_settings("returns-test"))
    try:
        kv = await nc.jetstream().key_value(RETURNS_BUCKET)
        try:
            entry = await kv.get(node_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.BucketNotFoundError):
            return None
        return trail_pb2.AccountReturns.FromString(entry.value or b"")
    except nats.js.errors.BucketNotFoundError:
        return None
    finally:
        await nc.close()


async def _indexed(
    client: BusClient, case_number: str, account: common_pb2.BankAccountRef, what: str
) -> trail_pb2.Allocation:
    """The allocation of ``account`` in ``case_number``, once the case's hold there is indexed."""

    async def indexed() -> trail_pb2.Allocation | None:
        try:
            return await client.allocation(case_number, account)
        except grpc.aio.AioRpcError:
            return None

    return await found(indexed, what)


def _shares(allocation: trail_pb2.Allocation) -> dict[str, trail_pb2.ClaimShare]:
    return {claim.issuing_agency: claim for claim in allocation.claims}


async def test_the_allocation_follows_the_deposit_order_and_both_case_owners_see_it(world: World) -> None:
    stack = world.stack
    async with stack.client(OWNER_A) as a, stack.client(OWNER_B) as b, stack.client(REGULATOR) as regulator:
        seen_by_a = await a.allocation(CASE_A, MULE_REF)
        seen_by_b = await b.allocation(CASE_B, MULE_REF)
        seen_by_regulator = await regulator.allocation(CASE_A, MULE_REF, issuing_agency=OWNER_A)
    for allocation in (seen_by_a, seen_by_b, seen_by_regulator):
        assert allocation.frozen.minor_units == BALANCE  # 600.00 + 100.00 held
        shares = _shares(allocation)
        assert set(shares) == {OWNER_A, OWNER_B}
        assert shares[OWNER_B].share.minor_units == SHARE_B  # the latest deposit is paid first
        assert shares[OWNER_A].share.minor_units == SHARE_A
        assert all(c.rule == trail_pb2.ALLOCATION_RULE_DEPOSIT_ORDER for c in allocation.claims)
        assert allocation.unallocated.minor_units == 0
        assert allocation.node_id == world.node_id


async def test_only_owners_of_a_case_holding_the_account_and_regulators_read_the_allocation(
    world: World,
) -> None:
    stack = world.stack
    async with stack.client(BANK) as bank, stack.client(STRANGER) as stranger, stack.client(OWNER_A) as a:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await bank.allocation(CASE_A, MULE_REF, issuing_agency=OWNER_A)
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as other_owner:
            await stranger.allocation(CASE_A, MULE_REF, issuing_agency=OWNER_A)
        assert other_owner.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as not_held:
            await stranger.allocation(CASE_X, MULE_REF)
        assert not_held.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as other_account:
            await a.allocation(CASE_A, VICTIM_A_REF)
        assert other_account.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(
    ("sender", "case_number", "payouts", "code", "reason"),
    [
        (STRANGER, CASE_X, ((VICTIM_A_REF, 100),), grpc.StatusCode.PERMISSION_DENIED, "ACCOUNT_NOT_IN_CASE"),
        (
            OWNER_A,
            CASE_A,
            ((VICTIM_A_REF, SHARE_A + 1),),
            grpc.StatusCode.FAILED_PRECONDITION,
            "EXCEEDS_SHARE",
        ),
        (
            OWNER_A,
            CASE_A,
            ((VICTIM_A_REF, BALANCE + 1),),
            grpc.StatusCode.FAILED_PRECONDITION,
            "EXCEEDS_SHARE",
        ),
        (OWNER_A, CASE_A, ((VICTIM_B_REF, 100),), grpc.StatusCode.FAILED_PRECONDITION, "NOT_A_VICTIM"),
        (
            OWNER_A,
            CASE_A,
            ((_ref(STRANGER_ACCOUNT, "王某某", BANK), 100),),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_A_VICTIM",
        ),
        (
            OWNER_A,
            CASE_A,
            ((VICTIM_A_REF, 100), (VICTIM_A_REF, 100)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "DUPLICATE_PAYEE",
        ),
    ],
    ids=[
        "not-a-case-holding-it",
        "more-than-the-share",
        "more-than-frozen",
        "other-case-victim",
        "not-a-victim",
        "twice",
    ],
)
async def test_a_hostile_return_is_refused_with_its_reason_and_stores_nothing(
    world: World,
    sender: str,
    case_number: str,
    payouts: tuple[tuple[common_pb2.BankAccountRef, int], ...],
    code: grpc.StatusCode,
    reason: str,
) -> None:
    stack = world.stack
    journal_before = await _journal_count(stack, sender, case_number)
    reserved_before = await _reservation(stack, world.node_id)
    async with stack.client(sender) as police:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await police.submit(return_order(case_number, sender, *payouts))
    assert refused.value.code() == code
    assert error_details(refused.value).reason == reason
    assert await _journal_count(stack, sender, case_number) == journal_before
    assert await _reservation(stack, world.node_id) == reserved_before


async def test_the_police_order_the_return_the_bank_pays_and_holds_less(world: World) -> None:
    stack, bank = world.stack, world.bank
    async with stack.client(OWNER_A) as a, stack.client(OWNER_B) as b:
        # Two orders for the whole share at once: the account's reservation lets one through.
        order = return_order(CASE_A, OWNER_A, (VICTIM_A_REF, SHARE_A))
        raced = await asyncio.gather(
            a.submit(order, idempotency_key="return-a-1"),
            a.submit(order, idempotency_key="return-a-2"),
            return_exceptions=True,
        )
        accepted_ones = [r for r in raced if isinstance(r, bus_pb2.SubmitResponse)]
        refused = [r for r in raced if isinstance(r, grpc.aio.AioRpcError)]
        assert len(accepted_ones) == 1, raced
        assert [error_details(r).reason for r in refused] == ["EXCEEDS_SHARE"]
        accepted = accepted_ones[0]
        # A retry of the accepted order is the same request, reserved once.
        key = "return-a-1" if raced[0] is accepted else "return-a-2"
        retried = await a.submit(order, idempotency_key=key)
        assert retried.duplicate
        assert retried.status.id == accepted.status.id
        record = await _reservation(stack, world.node_id)
        assert record is not None
        assert [(e.request_id, e.amount.minor_units) for e in record.entries] == [
            (accepted.status.id, SHARE_A)
        ]
        assert accepted.status.allocation.node_id == world.node_id
        reserved = _shares(accepted.status.allocation)[OWNER_A]
        assert reserved.reserved.minor_units == SHARE_A
        status = await settled(a, accepted.status.id)
        assert status.state == common_pb2.REQUEST_STATE_EXECUTED
        assert status.result.amount_returned.minor_units == SHARE_A
        assert status.result.amount_frozen.minor_units == BALANCE - SHARE_A
        # In clear the payouts name no account; the case owner opens them in full.
        assert [p.amount.minor_units for p in status.result.returns] == [SHARE_A]
        assert not status.result.returns[0].HasField("victim_account")
        assert not status.result.HasField("broker_details")
        details = open_result_details(
            status.result,
            load_agency_encryption_key(stack._config.keys_dir, OWNER_A),
            request_id=status.id,
            sender=status.sender,
            recipient=status.recipient,
        )
        assert [(p.victim_account.account_number, p.amount.minor_units) for p in details.returns] == [
            (VICTIM_A, SHARE_A)
        ]
        assert bank.balance(VICTIM_A) == SHARE_A
        assert bank.balance(MULE) == BALANCE - SHARE_A
        # Case A's own hold paid it: 200.00 of its 600.00 stay held, case B's 100.00 untouched.
        active = {h.amount for h in bank.holds_on(MULE) if h.status.value == "active"}
        assert active == {FROZEN_A - SHARE_A, BALANCE - FROZEN_A}

        async def settled_returned() -> trail_pb2.ClaimShare | None:
            claim = _shares(await b.allocation(CASE_B, MULE_REF))[OWNER_A]
            return claim if claim.returned.minor_units == SHARE_A else None

        claim_a = await found(settled_returned, "the return is settled")
        assert claim_a.reserved.minor_units == 0

        # The share is used up: one unit more is refused, and nothing is stored.
        with pytest.raises(grpc.aio.AioRpcError) as again:
            await a.submit(return_order(CASE_A, OWNER_A, (VICTIM_A_REF, 1)))
        assert error_details(again.value).reason == "EXCEEDS_SHARE"

        # Case B's victim banks elsewhere: the mule's bank pays out to it, B's own hold first.
        paid_b = await b.submit(return_order(CASE_B, OWNER_B, (VICTIM_B_REF, SHARE_B)))
        status_b = await settled(b, paid_b.status.id)
        assert status_b.state == common_pb2.REQUEST_STATE_EXECUTED
        assert status_b.result.amount_frozen.minor_units == 0
        assert bank.balance(MULE) == 0
        outgoing = [
            t
            for t in bank.transfers_of(
                MULE, datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC) + timedelta(hours=1)
            )
            if t.to_account == VICTIM_B
        ]
        assert [(t.to_bank, t.amount) for t in outgoing] == [(OTHER_BANK, SHARE_B)]
        assert not [h for h in bank.holds_on(MULE) if h.status.value == "active"]


async def test_no_account_or_name_of_the_story_is_in_clear_on_any_stream(world: World) -> None:
    """Victims' and the mule's accounts travel only digested or sealed: the index, the return
    records, the trail, the journal (statuses with seeds, allocations and redacted payouts)."""
    stack = world.stack
    secrets = [s.encode() for s in (MULE, VICTIM_A, VICTIM_B, "马某某", "张某某", "李某某")]
    scanned: dict[str, int] = {}
    nc = await connect(stack.nats_settings("returns-test"))
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            assert name is not None
            scanned[name] = 0
            for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
                try:
                    msg = await js.get_msg(name, seq)
                except nats.js.errors.NotFoundError:
                    continue
                scanned[name] += 1
                blob = (msg.subject or "").encode() + (msg.data or b"")
                assert not [x for x in secrets if x in blob], f"personal data in clear in {name} seq {seq}"
    finally:
        await nc.close()
    for stream in (f"KV_{RETURNS_BUCKET}", f"KV_{ACCOUNT_CASES_BUCKET}", WATCH_STREAM):
        assert scanned.get(stream), f"{stream} was scanned and holds records"


async def test_a_return_under_another_agencys_case_is_not_the_senders_to_order(world: World) -> None:
    stack = world.stack
    journal_before = await _journal_count(stack, OWNER_A, CASE_A)
    async with stack.client(STRANGER) as stranger:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stranger.submit(return_order(CASE_A, OWNER_A, (VICTIM_A_REF, 100)))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_details(refused.value).reason == "NOT_CASE_OWNER"
    assert await _journal_count(stack, OWNER_A, CASE_A) == journal_before


async def test_untraced_money_is_shared_pro_rata_only_after_the_notice_period(world: World) -> None:
    stack = world.stack
    mule = _ref(UNTRACED_MULE, "赵某某")
    async with stack.client(OWNER_A) as a:
        held = await a.submit(freeze(CASE_A, OWNER_A, 5_000, VICTIM_A_REF, None, account=mule))
        assert (await settled(a, held.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED

        allocation = await _indexed(a, CASE_A, mule, "the untraced hold is indexed")
        (claim,) = allocation.claims
        assert claim.rule == trail_pb2.ALLOCATION_RULE_PRO_RATA
        assert claim.share.minor_units == 5_000
        assert not claim.HasField("deposited_at")
        ends = allocation.notice_ends_at.ToDatetime(tzinfo=UTC)
        assert claim.payable_after == allocation.notice_ends_at
        assert timedelta(days=29) < ends - datetime.now(UTC) <= timedelta(days=30)
        journal_before = await _journal_count(stack, OWNER_A, CASE_A)
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await a.submit(return_order(CASE_A, OWNER_A, (VICTIM_A_REF, 1_000), account=mule))
        assert error_details(early.value).reason == "NOTICE_PERIOD"
        assert await _journal_count(stack, OWNER_A, CASE_A) == journal_before
        assert await _reservation(stack, allocation.node_id) is None


def partial_release(
    case_number: str, hold_id: str, amount: int, account: common_pb2.BankAccountRef
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=_case(case_number, OWNER_A, common_pb2.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE),
        priority=common_pb2.PRIORITY_GREEN,
        release=requests_pb2.Release(
            target_request_id=hold_id,
            account=account,
            amount=common_pb2.Money(currency="CNY", minor_units=amount),
            reason="part of the hold is not the victim's",
        ),
    )


async def test_a_partial_release_and_a_return_on_one_account_never_count_the_same_money(world: World) -> None:
    """The release is reserved in the account's return record: a return counts it as lifted
    already, and a release may not take money reserved for a victim. At the same instant, one of
    the two passes; one after the other, each is checked against the other."""
    stack = world.stack
    mule = _ref(RACED_MULE, "孙某某")
    async with stack.client(OWNER_A) as a:
        held = await a.submit(
            freeze(
                CASE_R,
                OWNER_A,
                RACED_FROZEN,
                VICTIM_A_REF,
                datetime.now(UTC) - timedelta(hours=2),
                account=mule,
            )
        )
        hold = await settled(a, held.status.id)
        assert hold.state == common_pb2.REQUEST_STATE_EXECUTED

        allocation = await _indexed(a, CASE_R, mule, "the hold is indexed")
        assert _shares(allocation)[OWNER_A].share.minor_units == RACED_FROZEN

        # At the same instant: the whole share back, and 200.00 released. One passes.
        raced = await asyncio.gather(
            a.submit(return_order(CASE_R, OWNER_A, (VICTIM_A_REF, RACED_FROZEN), account=mule)),
            a.submit(partial_release(CASE_R, hold.id, 20_000, mule)),
            return_exceptions=True,
        )
        accepted = [r for r in raced if isinstance(r, bus_pb2.SubmitResponse)]
        refused = [r for r in raced if isinstance(r, grpc.aio.AioRpcError)]
        assert len(accepted) == 1, raced
        reason = error_details(refused[0]).reason
        assert reason == (
            "EXCEEDS_SHARE"
            if accepted[0].status.type == common_pb2.REQUEST_TYPE_RELEASE
            else "MORE_THAN_HELD"
        )
        first = await settled(a, accepted[0].status.id)
        assert first.state == common_pb2.REQUEST_STATE_EXECUTED

        if first.type == common_pb2.REQUEST_TYPE_RETURN_FUNDS:
            # Everything was returned: no release of a unit more.
            with pytest.raises(grpc.aio.AioRpcError) as more:
                await a.submit(partial_release(CASE_R, hold.id, 1, mule))
            # (NO_ACTIVE_HOLD should the hold count as lifted once paid out in full.)
            assert error_details(more.value).reason in ("MORE_THAN_HELD", "NO_ACTIVE_HOLD")
            assert world.bank.balance(RACED_MULE) == RACED_BALANCE - RACED_FROZEN
            return
        # 200.00 released: the victim's share is the rest, no more.
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await a.submit(return_order(CASE_R, OWNER_A, (VICTIM_A_REF, RACED_FROZEN), account=mule))
        assert error_details(over.value).reason == "EXCEEDS_SHARE"
        paid = await a.submit(return_order(CASE_R, OWNER_A, (VICTIM_A_REF, 30_000), account=mule))
        assert (await settled(a, paid.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED
        # The hold still holds 100.00 by its own count, but a release of more would leave less frozen
        # than was returned to the victim: refused on the account, nothing stored.
        journal_before = await _journal_count(stack, OWNER_A, CASE_R)
        with pytest.raises(grpc.aio.AioRpcError) as eats_the_return:
            await a.submit(partial_release(CASE_R, hold.id, 10_001, mule))
        assert error_details(eats_the_return.value).reason == "MORE_THAN_HELD"
        assert await _journal_count(stack, OWNER_A, CASE_R) == journal_before
        rest = await a.submit(partial_release(CASE_R, hold.id, 10_000, mule))
        assert (await settled(a, rest.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED
        assert world.bank.balance(RACED_MULE) == RACED_BALANCE - 30_000


async def test_a_claim_arriving_after_a_return_is_shared_only_what_is_left(world: World) -> None:
    """Case C freezes 60.00 of the 100.00 on an account and its victim is paid back in full. Then
    case D freezes the same account with a LATER deposit of 50.00 (the bank holds the 40.00 still
    there). By deposit order alone D's victim would come first and be owed 50.00: 110.00 ordered
    from 100.00. What was paid stays C's; D's share is the 40.00 left, and no more is accepted."""
    stack, bank = world.stack, world.bank
    mule = _ref(LATE_MULE, "孙某某")
    victim_c, victim_d = _ref(VICTIM_C, "周某某", BANK), _ref(VICTIM_D, "吴某某", OTHER_BANK)
    now = datetime.now(UTC)
    async with stack.client(OWNER_A) as c, stack.client(OWNER_B) as d:
        held = await c.submit(
            freeze(CASE_C, OWNER_A, 6_000, victim_c, now - timedelta(hours=3), account=mule)
        )
        assert (await settled(c, held.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED

        async def indexed(client: BusClient, case_number: str, claims: int) -> trail_pb2.Allocation | None:
            try:
                allocation = await client.allocation(case_number, mule)
            except grpc.aio.AioRpcError:
                return None
            return allocation if len(allocation.claims) == claims else None

        await found(lambda: indexed(c, CASE_C, 1), "case C holds the account")
        paid = await c.submit(return_order(CASE_C, OWNER_A, (victim_c, 6_000), account=mule))
        assert (await settled(c, paid.status.id)).state == common_pb2.REQUEST_STATE_EXECUTED
        assert bank.balance(VICTIM_C) == 6_000

        late = await d.submit(
            freeze(CASE_D, OWNER_B, 5_000, victim_d, now - timedelta(hours=1), account=mule)
        )
        assert (await settled(d, late.status.id)).state == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED

        async def both_settled() -> trail_pb2.Allocation | None:
            allocation = await indexed(d, CASE_D, 2)
            if allocation is None or _shares(allocation)[OWNER_A].returned.minor_units != 6_000:
                return None
            return allocation

        allocation = await found(both_settled, "case D holds the account and C's return is settled")
        shares = _shares(allocation)
        assert allocation.frozen.minor_units == 10_000  # 60.00 held (and paid out) + 40.00 held
        assert [claim.issuing_agency for claim in allocation.claims] == [
            OWNER_B,
            OWNER_A,
        ]  # D's deposit is later
        assert shares[OWNER_A].share.minor_units == 6_000  # paid: it stays C's
        assert shares[OWNER_B].share.minor_units == 4_000  # the rest, not D's 50.00
        assert sum(claim.share.minor_units for claim in allocation.claims) <= allocation.frozen.minor_units

        journal_before = await _journal_count(stack, OWNER_B, CASE_D)
        reserved_before = await _reservation(stack, allocation.node_id)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await d.submit(return_order(CASE_D, OWNER_B, (victim_d, 5_000), account=mule))
        assert error_details(refused.value).reason == "EXCEEDS_SHARE"
        assert await _journal_count(stack, OWNER_B, CASE_D) == journal_before
        assert await _reservation(stack, allocation.node_id) == reserved_before

        rest = await d.submit(return_order(CASE_D, OWNER_B, (victim_d, 4_000), account=mule))
        status = await settled(d, rest.status.id)
        assert status.state == common_pb2.REQUEST_STATE_EXECUTED
        assert status.result.amount_returned.minor_units == 4_000
        assert bank.balance(LATE_MULE) == 0  # 60.00 + 40.00 returned: exactly what was frozen
