"""The reference bank's ReturnFunds: pays the victims from held money, holds that much less (the
ordering case's holds first, oldest first), answers each payout in full, once per request id."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from greenchannel.v1 import agency_pb2, bank_pb2, common_pb2, requests_pb2, results_pb2

from agencies.bank import BankConfig, BankCore, HoldStatus
from broker.protocol import ManualClock, new_uuid7, validate_message
from tests.unit.test_bank_core import (
    ACCT,
    EXECUTED,
    HOLDER,
    ME,
    PARTIAL,
    REJECTED,
    START,
    cny,
    context,
    freeze,
    ref,
)

VICTIM_HERE = "6222020200002222222"
VICTIM_THERE = "6217000200003333333"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def core(clock: ManualClock) -> Iterator[BankCore]:
    with BankCore(BankConfig(agency_id=ME), clock=clock) as bank:
        bank.open_account(ACCT, HOLDER, balance=100_000)
        bank.open_account(VICTIM_HERE, "张某", balance=5_000)
        yield bank


def other_case(clock: ManualClock) -> agency_pb2.OrderContext:
    ctx = context(clock)
    ctx.case_ref.case_number = "GD-SZ-2026-0007"
    ctx.case_ref.issuing_agency = "police-440300"
    ctx.sender = "police-440300"
    return ctx


def order(
    clock: ManualClock, *payouts: tuple[str, str, int], request_id: str | None = None
) -> bank_pb2.ReturnFundsRequest:
    return bank_pb2.ReturnFundsRequest(
        context=context(clock, request_id=request_id),
        order=requests_pb2.ReturnFunds(
            account=ref(),
            payouts=[
                requests_pb2.VictimPayout(
                    victim_account=common_pb2.BankAccountRef(
                        account_number=number, holder_name="张某", bank=bank
                    ),
                    amount=cny(amount),
                )
                for number, bank, amount in payouts
            ],
        ),
    )


def active(core: BankCore) -> list[tuple[str, int]]:
    return [(h.request_id, h.amount) for h in core.holds_on(ACCT) if h.status is HoldStatus.ACTIVE]


def test_victims_are_paid_and_the_ordering_cases_hold_shrinks_first(
    core: BankCore, clock: ManualClock
) -> None:
    mine = freeze(clock, 30_000)
    core.freeze(mine)
    clock.advance(timedelta(minutes=1))
    theirs = bank_pb2.FreezeRequest(context=other_case(clock), order=freeze(clock, 20_000).order)
    core.freeze(theirs)
    clock.advance(timedelta(minutes=1))
    answer = core.return_funds(order(clock, (VICTIM_HERE, ME, 10_000), (VICTIM_THERE, "bank-ccb", 25_000)))
    result = answer.result
    validate_message(result)
    assert result.outcome == EXECUTED
    assert result.amount_returned == cny(35_000)
    assert result.amount_frozen == cny(15_000)
    assert [
        (p.payout_index, p.amount.minor_units, p.victim_account.account_number) for p in result.returns
    ] == [
        (0, 10_000, VICTIM_HERE),
        (1, 25_000, VICTIM_THERE),
    ]
    assert core.balance(VICTIM_HERE) == 15_000  # credited here
    assert core.balance(ACCT) == 65_000
    # The ordering case's freeze went first (30,000 -> released), then the other's (20,000 -> 15,000).
    assert active(core) == [(theirs.context.request_id, 15_000)]
    paid = [
        t for t in core.transfers_of(ACCT, START, START + timedelta(days=1)) if t.to_account == VICTIM_THERE
    ]
    assert [(t.to_bank, t.amount, t.transfer_id) for t in paid] == [
        ("bank-ccb", 25_000, result.returns[1].transfer_id)
    ]
    # Nothing else changed: what was not held is still available.
    assert core.available(ACCT) == 50_000


def test_a_return_is_executed_once_per_request_id(core: BankCore, clock: ManualClock) -> None:
    core.freeze(freeze(clock, 30_000))
    request = order(clock, (VICTIM_HERE, ME, 10_000), request_id=new_uuid7(clock))
    first = core.return_funds(request)
    again = core.return_funds(request)
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
    assert core.balance(VICTIM_HERE) == 15_000
    assert core.execution_count(request.context.request_id) == 1


def test_more_than_held_pays_what_is_held(core: BankCore, clock: ManualClock) -> None:
    core.freeze(freeze(clock, 30_000))
    result = core.return_funds(
        order(clock, (VICTIM_HERE, ME, 20_000), (VICTIM_THERE, "bank-ccb", 20_000))
    ).result
    assert result.outcome == PARTIAL
    assert result.reason == results_pb2.REASON_CODE_INSUFFICIENT_FUNDS
    assert [p.amount.minor_units for p in result.returns] == [20_000, 10_000]
    assert result.amount_frozen == cny(0)
    assert core.available(ACCT) == 70_000  # the money that was never held stays the holder's


def test_no_hold_no_return(core: BankCore, clock: ManualClock) -> None:
    result = core.return_funds(order(clock, (VICTIM_HERE, ME, 1_000))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_NO_ACTIVE_HOLD)
    assert core.balance(VICTIM_HERE) == 5_000


def test_the_account_is_checked_as_for_every_order(core: BankCore, clock: ManualClock) -> None:
    core.freeze(freeze(clock, 30_000))
    request = order(clock, (VICTIM_HERE, ME, 1_000))
    request.order.account.holder_name = "王某"
    result = core.return_funds(request).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_MISMATCH)
    assert active(core)[0][1] == 30_000
