"""The reference bank core: every outcome and reason of BankService, idempotency, lapse, the trail."""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import agency_pb2, bank_pb2, common_pb2, requests_pb2, results_pb2

from agencies import _seed as story
from agencies._common import InsufficientFundsError, UnknownAccountError
from agencies.bank import BankConfig, BankCore, HoldKind, HoldStatus
from agencies.bank._schema import BANK_SCHEMA
from broker.protocol import ManualClock, load_directory, new_uuid7, validate_message

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
ME = "bank-icbc"
ACCT = "6222020200001111111"
HOLDER = "李某"

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
PARTIAL = common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def core(clock: ManualClock) -> Iterator[BankCore]:
    with BankCore(BankConfig(agency_id=ME), clock=clock) as bank:
        yield bank


# -- request builders ---------------------------------------------------------------------------


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def context(
    clock: ManualClock, *, request_id: str | None = None, hold_until: datetime | None = None
) -> agency_pb2.OrderContext:
    ctx = agency_pb2.OrderContext(
        request_id=request_id or new_uuid7(clock),
        sender="police-310115",
        case_ref=common_pb2.CaseRef(
            case_number="SH-PD-2026-0302-0007",
            issuing_agency="police-310115",
            legal_instrument_id="沪公(浦)急止字[2026]0302号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
    )
    if hold_until is not None:
        ctx.hold_until.CopyFrom(ts(hold_until))
    return ctx


def ref(number: str = ACCT, holder: str = HOLDER, bank: str = "") -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name=holder, bank=bank)


def cny(minor: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor)


def stop(
    clock: ManualClock,
    amount: int,
    *,
    account: common_pb2.BankAccountRef | None = None,
    currency: str = "CNY",
    fraud_transfer_id: str = "",
    request_id: str | None = None,
    hold_until: datetime | None = None,
) -> bank_pb2.StopPaymentRequest:
    return bank_pb2.StopPaymentRequest(
        context=context(clock, request_id=request_id, hold_until=hold_until),
        order=requests_pb2.StopPayment(
            account=account or ref(),
            amount=common_pb2.Money(currency=currency, minor_units=amount),
            fraud_transfer_id=fraud_transfer_id,
        ),
    )


def freeze(
    clock: ManualClock, amount: int, *, converts: str = "", account: common_pb2.BankAccountRef | None = None
) -> bank_pb2.FreezeRequest:
    return bank_pb2.FreezeRequest(
        context=context(clock),
        order=requests_pb2.Freeze(account=account or ref(), amount=cny(amount), converts_request_id=converts),
    )


def release(
    clock: ManualClock,
    target: str,
    *,
    account: common_pb2.BankAccountRef | None = None,
    amount: common_pb2.Money | None = None,
) -> bank_pb2.ReleaseHoldRequest:
    order = requests_pb2.Release(target_request_id=target, account=account or ref(), reason="case closed")
    if amount is not None:
        order.amount.CopyFrom(amount)
        order.purpose = requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    return bank_pb2.ReleaseHoldRequest(context=context(clock), order=order)


def extend(
    clock: ManualClock,
    target: str,
    *,
    until: datetime | None = None,
    extension: timedelta | None = None,
    account: common_pb2.BankAccountRef | None = None,
) -> bank_pb2.ExtendHoldRequest:
    order = requests_pb2.Extend(target_request_id=target, account=account or ref())
    if extension is not None:
        order.extension.CopyFrom(Duration(seconds=int(extension.total_seconds())))
    return bank_pb2.ExtendHoldRequest(context=context(clock, hold_until=until), order=order)


def query(
    clock: ManualClock,
    category: requests_pb2.DataCategory.ValueType,
    *,
    account: common_pb2.BankAccountRef | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> bank_pb2.QueryBankDataRequest:
    order = requests_pb2.DataRequest(category=category, account=account or ref())
    if period is not None:
        order.period.start.CopyFrom(ts(period[0]))
        order.period.end.CopyFrom(ts(period[1]))
    return bank_pb2.QueryBankDataRequest(context=context(clock), order=order)


M = TypeVar("M", bound=Message)


def valid(response: M) -> M:
    """Every answer the bank gives obeys the contract's own field rules."""
    validate_message(response)
    return response


def at(stamp: Timestamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


def fund(
    core: BankCore, clock: ManualClock, balance: int, *, holder: str = HOLDER, number: str = ACCT
) -> None:
    core.open_account(number, holder, balance=balance, opened_at=clock.now() - timedelta(days=30))


# -- StopPayment ----------------------------------------------------------------------------------


def test_stop_payment_holds_everything_when_the_money_is_there(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 10_000_000)
    request = stop(clock, 5_000_000)
    result = valid(core.stop_payment(request)).result

    assert result.outcome == EXECUTED
    assert result.reason == results_pb2.REASON_CODE_UNSPECIFIED
    assert result.amount_held == cny(5_000_000)
    assert at(result.hold_until) == START + timedelta(hours=48)
    assert not result.onward_transfers
    (hold,) = core.holds_for(request.context.request_id)
    assert result.agency_reference == hold.hold_id
    assert hold.kind is HoldKind.STOP_PAYMENT
    assert hold.status is HoldStatus.ACTIVE
    assert core.balance(ACCT) == 10_000_000
    assert core.available(ACCT) == 5_000_000


def test_stop_payment_uses_the_policy_end_from_the_context(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    until = START + timedelta(hours=24)
    result = core.stop_payment(stop(clock, 50_000, hold_until=until)).result
    assert at(result.hold_until) == until


def test_stop_payment_refuses_a_hold_end_in_the_past(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    result = core.stop_payment(stop(clock, 50_000, hold_until=START - timedelta(minutes=1))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INVALID_REQUEST)
    assert core.available(ACCT) == 100_000


def test_unknown_account_is_not_found(core: BankCore, clock: ManualClock) -> None:
    result = valid(core.stop_payment(stop(clock, 100))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_NOT_FOUND)


def test_an_account_of_another_bank_is_not_found_here(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    result = core.stop_payment(stop(clock, 100, account=ref(bank="bank-ccb"))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_NOT_FOUND)
    assert core.available(ACCT) == 100_000


def test_wrong_holder_name_is_a_mismatch_that_never_tells_the_right_name(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 100_000)
    request = stop(clock, 100, account=ref(holder="李某某"))
    result = valid(core.stop_payment(request)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_MISMATCH)
    assert HOLDER not in result.detail
    assert ACCT not in result.detail
    assert core.holds_for(request.context.request_id) == ()
    assert core.available(ACCT) == 100_000


def test_holder_names_compare_after_nfc_and_whitespace(core: BankCore, clock: ManualClock) -> None:
    composed = "Zoë  Müller"
    core.open_account(ACCT, composed, balance=100_000)
    decomposed = " " + unicodedata.normalize("NFD", "Zoë Müller") + "\t"
    assert decomposed.strip() != composed
    result = core.stop_payment(stop(clock, 100, account=ref(holder=decomposed))).result
    assert result.outcome == EXECUTED


def test_wrong_currency_is_a_mismatch(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    result = core.stop_payment(stop(clock, 100, currency="USD")).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_MISMATCH)


def test_closed_account(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    core.close_account(ACCT)
    result = core.stop_payment(stop(clock, 100)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_ACCOUNT_CLOSED)


def test_closed_account_with_a_wrong_name_is_a_mismatch_first(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    core.close_account(ACCT)
    result = core.stop_payment(stop(clock, 100, account=ref(holder="王某"))).result
    assert result.reason == results_pb2.REASON_CODE_MISMATCH


def _mule(core: BankCore, clock: ManualClock) -> None:
    """50,000.00 in, then 20,000 + 15,000 + 8,000 out in turn: 7,000.00 left."""
    fund(core, clock, 0)
    core.transfer(
        "6225880137706512",
        ACCT,
        ME,
        5_000_000,
        START - timedelta(hours=2),
        "IN-VICTIM",
        from_bank="bank-cmb",
    )
    core.transfer(
        ACCT,
        "6217000010087654321",
        "bank-ccb",
        2_000_000,
        START - timedelta(minutes=100),
        "OUT-1",
        to_holder="王某某",
    )
    core.transfer(ACCT, "6228480018812345670", "bank-abc", 1_500_000, START - timedelta(minutes=90), "OUT-2")
    core.transfer(
        ACCT,
        "6230580000123456789",
        "",
        800_000,
        START - timedelta(minutes=80),
        "OUT-3",
        to_bank_code="307584007998",
    )


def test_partial_hold_lists_the_latest_onward_transfers_that_cover_the_shortfall(
    core: BankCore, clock: ManualClock
) -> None:
    _mule(core, clock)
    request = stop(clock, 5_000_000, fraud_transfer_id="IN-VICTIM")
    result = valid(core.stop_payment(request)).result

    assert (result.outcome, result.reason) == (PARTIAL, results_pb2.REASON_CODE_INSUFFICIENT_FUNDS)
    assert result.amount_held == cny(700_000)
    # Shortfall 43,000.00: most recent first, 8,000 + 15,000 + 20,000 = 43,000 covers it.
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-3", "OUT-2", "OUT-1"]
    assert sum(t.amount.minor_units for t in result.onward_transfers) >= 5_000_000 - 700_000
    outside = result.onward_transfers[0]
    assert (outside.to_bank, outside.to_bank_code) == ("", "307584007998")
    assert outside.to_account == "6230580000123456789"
    assert at(outside.at) == START - timedelta(minutes=80)
    ccb = result.onward_transfers[2]
    assert (ccb.to_bank, ccb.amount) == ("bank-ccb", cny(2_000_000))
    # The beneficiary name travels with the trail so the receiving bank can check it before holding.
    assert ccb.to_holder_name == "王某某"
    (hold,) = core.holds_for(request.context.request_id)
    assert hold.amount == 700_000
    assert core.available(ACCT) == 0


def test_onward_transfers_stop_once_the_shortfall_is_covered(core: BankCore, clock: ManualClock) -> None:
    _mule(core, clock)
    # Asks 20,000: 7,000 held, 13,000 missing; the latest transfer (8,000) is not enough, two are.
    result = core.stop_payment(stop(clock, 2_000_000)).result
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-3", "OUT-2"]


def test_onward_transfers_stay_within_the_look_back_window(clock: ManualClock) -> None:
    with BankCore(BankConfig(agency_id=ME, lookback=timedelta(minutes=95)), clock=clock) as core:
        _mule(core, clock)
        result = core.stop_payment(stop(clock, 5_000_000)).result
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-3", "OUT-2"]


def test_money_that_left_before_the_fraud_payment_is_not_the_trail(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 1_000_000)
    core.transfer(ACCT, "6217000010000000001", "bank-ccb", 1_000_000, START - timedelta(hours=5), "BEFORE")
    core.transfer(
        "6225880137706512", ACCT, ME, 500_000, START - timedelta(hours=3), "FRAUD", from_bank="bank-cmb"
    )
    core.transfer(ACCT, "6217000010000000002", "bank-ccb", 400_000, START - timedelta(hours=2), "AFTER")

    with_fraud_id = core.stop_payment(stop(clock, 2_000_000, fraud_transfer_id="FRAUD")).result
    assert [t.transfer_id for t in with_fraud_id.onward_transfers] == ["AFTER"]


def test_nothing_there_is_rejected_with_the_trail_and_no_hold(core: BankCore, clock: ManualClock) -> None:
    _mule(core, clock)
    core.transfer(ACCT, "6217000010087654321", "bank-ccb", 700_000, START - timedelta(minutes=5), "OUT-4")
    request = stop(clock, 1_000_000)
    result = valid(core.stop_payment(request)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INSUFFICIENT_FUNDS)
    assert result.amount_held == cny(0)
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-4", "OUT-3"]
    assert not result.agency_reference
    assert core.holds_for(request.context.request_id) == ()


def test_an_earlier_hold_is_not_available_to_a_second_stop_payment(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 100_000)
    assert core.stop_payment(stop(clock, 80_000)).result.outcome == EXECUTED
    second = core.stop_payment(stop(clock, 50_000)).result
    assert (second.outcome, second.amount_held) == (PARTIAL, cny(20_000))


# -- idempotency ----------------------------------------------------------------------------------


def test_the_same_request_twice_is_executed_once_with_identical_bytes(
    core: BankCore, clock: ManualClock
) -> None:
    _mule(core, clock)
    request = stop(clock, 5_000_000)
    rid = request.context.request_id
    first = core.stop_payment(request)
    clock.advance(timedelta(minutes=3))
    second = core.stop_payment(request)

    stored = core.execution(rid)
    assert stored is not None
    assert stored.method == "BankService.StopPayment"
    assert stored.at == START
    assert first.SerializeToString(deterministic=True) == stored.response
    assert second.SerializeToString(deterministic=True) == stored.response
    assert second == first
    assert core.execution_count(rid) == 1
    assert len(core.holds_for(rid)) == 1
    assert len(core.holds_on(ACCT)) == 1
    assert core.available(ACCT) == 0


def test_a_repeated_rejection_is_answered_from_the_journal_even_after_the_facts_change(
    core: BankCore, clock: ManualClock
) -> None:
    request = stop(clock, 100)
    assert core.stop_payment(request).result.reason == results_pb2.REASON_CODE_NOT_FOUND
    fund(core, clock, 100_000)
    assert core.stop_payment(request).result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert core.available(ACCT) == 100_000


def test_a_request_id_reused_for_another_method_is_refused(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    first = stop(clock, 10_000)
    core.stop_payment(first)
    reuse = freeze(clock, 10_000)
    reuse.context.request_id = first.context.request_id
    result = core.freeze(reuse).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INVALID_REQUEST)
    assert [h.kind for h in core.holds_on(ACCT)] == [HoldKind.STOP_PAYMENT]
    stored = core.execution(first.context.request_id)
    assert stored is not None
    assert stored.method == "BankService.StopPayment"


def test_the_journal_survives_a_restart(tmp_path: Path, clock: ManualClock) -> None:
    config = BankConfig(agency_id=ME, database=tmp_path / "bank.sqlite3")
    with BankCore(config, clock=clock) as core:
        fund(core, clock, 100_000)
        request = stop(clock, 60_000)
        first = core.stop_payment(request)
    with BankCore(config, clock=clock) as reopened:
        again = reopened.stop_payment(request)
        assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
        assert len(reopened.holds_on(ACCT)) == 1
        assert reopened.available(ACCT) == 40_000


# -- invalid requests ------------------------------------------------------------------------------


def test_invalid_requests_are_rejected_not_raised_and_not_journalled(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 100_000)
    zero = stop(clock, 0)
    bad_id = stop(clock, 100, request_id="not-a-uuid")
    upper = stop(clock, 100)
    upper.context.request_id = upper.context.request_id.upper()
    no_order = bank_pb2.StopPaymentRequest(context=context(clock))
    bad_account = stop(clock, 100, account=ref(number="62-22"))
    for request in (zero, bad_id, upper, no_order, bad_account, bank_pb2.StopPaymentRequest()):
        result = valid(core.stop_payment(request)).result
        assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INVALID_REQUEST)
        assert core.execution_count(request.context.request_id) == 0
    assert "amount" in core.stop_payment(zero).result.detail
    assert core.available(ACCT) == 100_000


# -- lapse -----------------------------------------------------------------------------------------


def test_holds_lapse_by_the_clock_and_expire_holds_records_it(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    request = stop(clock, 100_000)
    core.stop_payment(request)
    assert core.available(ACCT) == 0

    clock.advance(timedelta(hours=47, minutes=59))
    assert core.available(ACCT) == 0
    assert core.expire_holds() == []

    clock.advance(timedelta(minutes=1))
    # Lapsed by the clock before anyone records it: the money is available again.
    assert core.available(ACCT) == 100_000
    assert core.holds_for(request.context.request_id)[0].status is HoldStatus.EXPIRED
    assert core.expire_holds() == [request.context.request_id]
    assert core.expire_holds() == []
    assert core.holds_for(request.context.request_id)[0].status is HoldStatus.EXPIRED
    core.transfer(ACCT, "6217000010000000009", "bank-ccb", 100_000)
    assert core.balance(ACCT) == 0


# -- Freeze ---------------------------------------------------------------------------------------


def test_freeze_converts_an_active_stop_payment_hold_and_adds_what_is_available(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 2_000_000)
    sp = stop(clock, 1_500_000)
    sp_hold = core.stop_payment(sp).result.agency_reference
    clock.advance(timedelta(hours=20))

    request = freeze(clock, 1_800_000, converts=sp.context.request_id)
    result = valid(core.freeze(request)).result

    assert result.outcome == EXECUTED
    assert result.amount_frozen == cny(1_800_000)
    assert at(result.hold_until) == clock.now() + timedelta(days=183)
    assert "converted" in result.detail
    (old,) = core.holds_for(sp.context.request_id)
    (new,) = core.holds_for(request.context.request_id)
    assert old.status is HoldStatus.CONVERTED
    assert (new.kind, new.amount, new.converted_from) == (HoldKind.FREEZE, 1_800_000, sp_hold)
    assert result.agency_reference == new.hold_id
    assert core.available(ACCT) == 200_000
    # The converted hold is no longer there to release.
    assert core.release_hold(release(clock, sp.context.request_id)).result.reason == (
        results_pb2.REASON_CODE_NO_ACTIVE_HOLD
    )


def test_freeze_conversion_keeps_the_held_money_when_less_is_there_than_asked(
    core: BankCore, clock: ManualClock
) -> None:
    _mule(core, clock)
    sp = stop(clock, 5_000_000)
    core.stop_payment(sp)
    result = core.freeze(freeze(clock, 5_000_000, converts=sp.context.request_id)).result
    assert (result.outcome, result.reason) == (PARTIAL, results_pb2.REASON_CODE_INSUFFICIENT_FUNDS)
    assert result.amount_frozen == cny(700_000)
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-3", "OUT-2", "OUT-1"]


def test_freeze_without_a_hold_to_convert_freezes_what_is_available(
    core: BankCore, clock: ManualClock
) -> None:
    fund(core, clock, 100_000)
    unknown = new_uuid7(clock)
    result = core.freeze(freeze(clock, 60_000, converts=unknown)).result
    assert (result.outcome, result.amount_frozen) == (EXECUTED, cny(60_000))
    assert "no active stop-payment hold" in result.detail


def test_freeze_does_not_convert_a_hold_on_another_account(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fund(core, clock, 100_000, number="6222020200002222222", holder="王某")
    other = stop(clock, 100_000, account=ref("6222020200002222222", "王某"))
    core.stop_payment(other)
    core.freeze(freeze(clock, 50_000, converts=other.context.request_id))
    assert core.holds_for(other.context.request_id)[0].status is HoldStatus.ACTIVE
    assert core.available("6222020200002222222") == 0


def test_freeze_of_an_empty_account_is_rejected_with_the_trail(core: BankCore, clock: ManualClock) -> None:
    _mule(core, clock)
    core.stop_payment(stop(clock, 700_000))
    result = core.freeze(freeze(clock, 100_000)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INSUFFICIENT_FUNDS)
    assert result.amount_frozen == cny(0)
    assert [t.transfer_id for t in result.onward_transfers] == ["OUT-3"]


def test_freeze_checks_the_account_like_a_stop_payment(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    assert (
        core.freeze(freeze(clock, 1, account=ref(holder="张某"))).result.reason
        == results_pb2.REASON_CODE_MISMATCH
    )
    assert core.freeze(freeze(clock, 1, account=ref("6222020200009999999"))).result.reason == (
        results_pb2.REASON_CODE_NOT_FOUND
    )
    core.close_account(ACCT)
    assert core.freeze(freeze(clock, 1)).result.reason == results_pb2.REASON_CODE_ACCOUNT_CLOSED


# -- ReleaseHold ----------------------------------------------------------------------------------


def test_release_lifts_the_hold_once(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    request = release(clock, sp.context.request_id)
    result = valid(core.release_hold(request)).result
    assert result.outcome == EXECUTED
    assert (result.amount_held, result.amount_released) == (cny(0), cny(100_000))
    assert result.agency_reference == core.holds_for(sp.context.request_id)[0].hold_id
    assert core.holds_for(sp.context.request_id)[0].status is HoldStatus.RELEASED
    assert core.available(ACCT) == 100_000
    # The same release again is a replay; a new release of the same hold finds nothing active.
    assert core.release_hold(request) == core.release_hold(request)
    again = core.release_hold(release(clock, sp.context.request_id)).result
    assert (again.outcome, again.reason) == (REJECTED, results_pb2.REASON_CODE_NO_ACTIVE_HOLD)


def test_partial_release_keeps_the_rest_held(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fz = freeze(clock, 80_000)
    core.freeze(fz)
    rid = fz.context.request_id
    request = release(clock, rid, amount=cny(30_000))
    result = valid(core.release_hold(request)).result
    assert (result.outcome, result.amount_released, result.amount_frozen) == (
        EXECUTED,
        cny(30_000),
        cny(50_000),
    )
    hold = core.holds_for(rid)[0]
    assert (hold.status, hold.amount, hold.released) == (HoldStatus.ACTIVE, 50_000, 30_000)
    assert core.available(ACCT) == 50_000
    # Idempotent by request id: the replay lifts nothing more.
    assert core.release_hold(request) == core.release_hold(request)
    assert core.available(ACCT) == 50_000
    # More than is left, or in another currency: refused, nothing changes.
    more = core.release_hold(release(clock, rid, amount=cny(50_001))).result
    usd = core.release_hold(
        release(clock, rid, amount=common_pb2.Money(currency="USD", minor_units=1))
    ).result
    assert (more.outcome, more.reason) == (REJECTED, results_pb2.REASON_CODE_INSUFFICIENT_FUNDS)
    assert (usd.outcome, usd.reason) == (REJECTED, results_pb2.REASON_CODE_MISMATCH)
    assert core.holds_for(rid)[0].amount == 50_000
    # A full release lifts the rest and says how much.
    rest = core.release_hold(release(clock, rid)).result
    assert (rest.outcome, rest.amount_released, rest.amount_frozen) == (EXECUTED, cny(50_000), cny(0))
    hold = core.holds_for(rid)[0]
    assert (hold.status, hold.released) == (HoldStatus.RELEASED, 80_000)
    assert core.available(ACCT) == 100_000


def test_release_of_exactly_what_is_held_is_a_full_release(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 40_000)
    core.stop_payment(sp)
    result = core.release_hold(release(clock, sp.context.request_id, amount=cny(40_000))).result
    assert (result.amount_released, result.amount_held) == (cny(40_000), cny(0))
    assert core.holds_for(sp.context.request_id)[0].status is HoldStatus.RELEASED


def test_release_of_a_freeze(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fz = freeze(clock, 100_000)
    core.freeze(fz)
    result = core.release_hold(release(clock, fz.context.request_id)).result
    assert (result.outcome, result.amount_frozen) == (EXECUTED, cny(0))
    assert core.available(ACCT) == 100_000


def test_release_checks_the_account_again(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fund(core, clock, 100_000, number="6222020200002222222", holder="王某")
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    rid = sp.context.request_id

    wrong_name = core.release_hold(release(clock, rid, account=ref(holder="王某"))).result
    unknown = core.release_hold(release(clock, rid, account=ref("6222020200009999999"))).result
    other = core.release_hold(release(clock, rid, account=ref("6222020200002222222", "王某"))).result
    nothing = core.release_hold(release(clock, new_uuid7(clock))).result
    assert wrong_name.reason == results_pb2.REASON_CODE_MISMATCH
    assert unknown.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert other.reason == results_pb2.REASON_CODE_MISMATCH
    assert nothing.reason == results_pb2.REASON_CODE_NO_ACTIVE_HOLD
    assert core.holds_for(rid)[0].status is HoldStatus.ACTIVE


def test_release_of_a_lapsed_hold_finds_no_active_hold(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    clock.advance(timedelta(hours=49))
    result = core.release_hold(release(clock, sp.context.request_id)).result
    assert result.reason == results_pb2.REASON_CODE_NO_ACTIVE_HOLD


# -- ExtendHold -----------------------------------------------------------------------------------


def test_extend_moves_the_end_to_the_policy_end(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    clock.advance(timedelta(hours=40))
    until = START + timedelta(hours=96)
    result = valid(core.extend_hold(extend(clock, sp.context.request_id, until=until))).result
    assert result.outcome == EXECUTED
    assert at(result.hold_until) == until
    assert result.amount_held == cny(100_000)
    assert core.holds_for(sp.context.request_id)[0].expires_at == until
    clock.advance(timedelta(hours=10))  # past the old end, before the new one
    assert core.available(ACCT) == 0
    assert core.expire_holds() == []


def test_extend_falls_back_to_the_requested_extension(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    result = core.extend_hold(extend(clock, sp.context.request_id, extension=timedelta(hours=48))).result
    assert at(result.hold_until) == START + timedelta(hours=96)


def test_extend_must_move_the_end_later(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    result = core.extend_hold(extend(clock, sp.context.request_id, until=START + timedelta(hours=24))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INVALID_REQUEST)
    assert core.holds_for(sp.context.request_id)[0].expires_at == START + timedelta(hours=48)
    no_end = core.extend_hold(extend(clock, sp.context.request_id)).result
    assert no_end.reason == results_pb2.REASON_CODE_INVALID_REQUEST


def test_extend_needs_an_active_unexpired_hold(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    sp = stop(clock, 100_000)
    core.stop_payment(sp)
    clock.advance(timedelta(hours=48))
    late = core.extend_hold(extend(clock, sp.context.request_id, until=START + timedelta(hours=96))).result
    assert (late.outcome, late.reason) == (REJECTED, results_pb2.REASON_CODE_NO_ACTIVE_HOLD)
    unknown = core.extend_hold(extend(clock, new_uuid7(clock), until=START + timedelta(hours=96))).result
    assert unknown.reason == results_pb2.REASON_CODE_NO_ACTIVE_HOLD


def test_extend_renews_a_freeze(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fz = freeze(clock, 40_000)
    core.freeze(fz)
    until = START + timedelta(days=366)
    result = core.extend_hold(extend(clock, fz.context.request_id, until=until)).result
    assert (result.outcome, result.amount_frozen, at(result.hold_until)) == (EXECUTED, cny(40_000), until)


# -- QueryBankData --------------------------------------------------------------------------------


def test_account_holder_data(core: BankCore, clock: ManualClock) -> None:
    core.open_account(
        ACCT,
        HOLDER,
        balance=1,
        id_type="居民身份证",
        id_number="450481199506300017",
        phone="+8615012340001",
        opened_at=datetime(2026, 2, 11, 8, 0, tzinfo=UTC),
    )
    response = valid(core.query_bank_data(query(clock, requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER)))
    assert response.result.outcome == EXECUTED
    holder = dict(response.answer.holder)
    assert holder["name"] == HOLDER
    assert holder["id_type"] == "居民身份证"
    assert holder["id_number"] == "450481199506300017"
    assert holder["phone"] == "+8615012340001"
    assert holder["opened_at"] == "2026-02-11T08:00:00Z"
    assert HOLDER not in response.result.detail


def test_transactions_in_a_period_in_and_out(core: BankCore, clock: ManualClock) -> None:
    _mule(core, clock)
    period = (START - timedelta(minutes=120), START - timedelta(minutes=80))
    response = core.query_bank_data(query(clock, requests_pb2.DATA_CATEGORY_TRANSACTIONS, period=period))
    assert response.result.outcome == EXECUTED
    rows = [dict(r.fields) for r in response.answer.records]
    # [start, end): the transfer at exactly `end` is outside.
    assert [r["transfer_id"] for r in rows] == ["IN-VICTIM", "OUT-1", "OUT-2"]
    assert rows[0]["direction"] == "in"
    assert rows[0]["counterparty_bank"] == "bank-cmb"
    assert rows[1] == {
        "transfer_id": "OUT-1",
        "direction": "out",
        "counterparty_account": "6217000010087654321",
        "counterparty_bank": "bank-ccb",
        "counterparty_bank_code": "",
        "amount_minor_units": "2000000",
        "currency": "CNY",
        "at": "2026-03-02T07:50:00Z",
    }


def test_data_requests_check_the_account_and_the_question(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 1)
    holder = requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER
    txs = requests_pb2.DATA_CATEGORY_TRANSACTIONS
    unknown = core.query_bank_data(query(clock, holder, account=ref("6222020200009999999")))
    wrong = core.query_bank_data(query(clock, holder, account=ref(holder="王某")))
    no_period = core.query_bank_data(query(clock, txs))
    calls = core.query_bank_data(query(clock, requests_pb2.DATA_CATEGORY_CALL_RECORDS))
    phone = bank_pb2.QueryBankDataRequest(
        context=context(clock),
        order=requests_pb2.DataRequest(category=holder, phone=common_pb2.PhoneRef(e164="+8615012340001")),
    )
    assert unknown.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert wrong.result.reason == results_pb2.REASON_CODE_MISMATCH
    for response in (no_period, calls, core.query_bank_data(phone)):
        assert response.result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    for response in (unknown, wrong, no_period):
        assert not response.answer.holder
        assert not response.answer.records


def test_closed_accounts_still_answer_data_requests(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 0)
    core.close_account(ACCT)
    response = core.query_bank_data(query(clock, requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER))
    assert response.result.outcome == EXECUTED
    assert response.answer.holder["account_status"] == "closed"


# -- the bank's own business ----------------------------------------------------------------------


def test_holds_stop_customer_transfers(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    core.stop_payment(stop(clock, 70_000))
    with pytest.raises(InsufficientFundsError):
        core.transfer(ACCT, "6217000010000000009", "bank-ccb", 40_000)
    core.transfer(ACCT, "6217000010000000009", "bank-ccb", 30_000)
    assert (core.balance(ACCT), core.available(ACCT)) == (70_000, 0)


def test_transfers_need_an_account_of_this_bank_on_one_side(core: BankCore) -> None:
    with pytest.raises(UnknownAccountError):
        core.transfer("6217000010000000001", "6228480010000000001", "bank-abc", 100)


def test_an_internal_transfer_moves_money_between_two_accounts(core: BankCore, clock: ManualClock) -> None:
    fund(core, clock, 100_000)
    fund(core, clock, 0, number="6222020200002222222", holder="王某")
    tid = core.transfer(ACCT, "6222020200002222222", ME, 25_000)
    assert (core.balance(ACCT), core.balance("6222020200002222222")) == (75_000, 25_000)
    (row,) = core.transfers_of(ACCT, START - timedelta(days=1), START + timedelta(days=1))
    assert (row.transfer_id, row.from_bank, row.to_bank) == (tid, ME, ME)


# -- the seeded story -----------------------------------------------------------------------------


BANKS = ("bank-icbc", "bank-ccb", "bank-abc", "bank-cmb")


@pytest.fixture
def banks(clock: ManualClock) -> Iterator[dict[str, BankCore]]:
    cores = {bank: BankCore(BankConfig(agency_id=bank), clock=clock) for bank in BANKS}
    for bank, core in cores.items():
        assert story.seed_bank(core, bank, at=START) > 0
    yield cores
    for core in cores.values():
        core.close()


def test_seeded_accounts_route_to_the_bank_that_holds_them(banks: dict[str, BankCore]) -> None:
    registry = load_directory(DIRECTORY)
    for account in story.ACCOUNTS:
        routed = registry.bank_for_account(account.number)
        assert routed is not None
        assert routed.id == account.bank
        assert banks[account.bank].account(account.number) is not None
    assert registry.bank_for_account(story.OUTSIDE_ACCOUNT) is None
    assert story.FRAUD_BANK == "bank-icbc"
    assert story.FRAUD_HOLDER == "李某"


def test_seeded_balances_tell_the_story(banks: dict[str, BankCore]) -> None:
    assert banks["bank-icbc"].balance(story.FRAUD_ACCOUNT) == 1_500_000
    assert banks["bank-ccb"].balance(story.MULE_CCB_ACCOUNT) == 300_000
    assert banks["bank-abc"].balance(story.MULE_ABC_ACCOUNT) == 600_000
    assert banks["bank-icbc"].balance(story.MULE_ICBC_ACCOUNT) == 800_000
    assert banks["bank-ccb"].balance(story.MULE_CCB2_ACCOUNT) == 400_000
    assert banks["bank-cmb"].balance(story.MULE_CMB_ACCOUNT) == 900_000
    assert banks["bank-cmb"].balance(story.VICTIM_ACCOUNT) == 8_000_000 + 1_500_000 - 5_000_000


def test_every_cross_bank_transfer_is_the_same_at_both_ends(banks: dict[str, BankCore]) -> None:
    window = (START - timedelta(days=30), START + timedelta(days=1))
    for t in story.TRANSFERS:
        seen = []
        for bank in (t.from_bank, t.to_bank):
            if not bank:
                continue
            account = t.from_account if bank == t.from_bank else t.to_account
            (row,) = [r for r in banks[bank].transfers_of(account, *window) if r.transfer_id == t.transfer_id]
            seen.append((row.from_account, row.to_account, row.amount, row.at))
        assert len(set(seen)) == 1, t.transfer_id
        assert seen[0][3] == START - timedelta(minutes=t.minutes_before)


def test_seeding_twice_inserts_nothing(banks: dict[str, BankCore]) -> None:
    assert story.seed_bank(banks["bank-icbc"], "bank-icbc", at=START) == 0
    assert story.seed_bank(banks["bank-icbc"], "carrier-cmcc", at=START) == 0
    assert banks["bank-icbc"].balance(story.FRAUD_ACCOUNT) == 1_500_000


def test_the_seeded_trail_runs_four_levels_deep_over_four_banks(
    banks: dict[str, BankCore], clock: ManualClock
) -> None:
    """Chase the trail as the broker would: a child stop-payment per onward transfer in the directory."""
    registry = load_directory(DIRECTORY)
    pending = [(story.FRAUD_ACCOUNT, story.FRAUD_HOLDER, story.FRAUD_AMOUNT, 0)]
    holders = {a.number: a.holder for a in story.ACCOUNTS}
    held: dict[str, int] = {}
    hops: dict[str, int] = {}
    while pending:
        number, holder, amount, hop = pending.pop(0)
        bank = registry.bank_for_account(number)
        assert bank is not None
        result = banks[bank.id].stop_payment(stop(clock, amount, account=ref(number, holder))).result
        held[number], hops[number] = result.amount_held.minor_units, hop
        for onward in result.onward_transfers:
            if onward.to_bank:
                pending.append(
                    (onward.to_account, holders[onward.to_account], onward.amount.minor_units, hop + 1)
                )
    assert held == {
        story.FRAUD_ACCOUNT: 1_500_000,
        story.MULE_CCB_ACCOUNT: 300_000,
        story.MULE_ABC_ACCOUNT: 600_000,
        story.MULE_ICBC_ACCOUNT: 800_000,
        story.MULE_CMB_ACCOUNT: 900_000,
        story.MULE_CCB2_ACCOUNT: 400_000,
    }
    assert hops[story.MULE_CCB2_ACCOUNT] == 3  # victim -> icbc -> ccb -> icbc -> ccb
    assert {registry.bank_for_account(n).id for n in held} == set(BANKS)  # type: ignore[union-attr]
    # 45,000 of the 50,000 secured; the 5,000 that left the directory is the rest.
    assert sum(held.values()) == story.FRAUD_AMOUNT - 500_000


def test_a_database_from_before_partial_releases_is_upgraded(tmp_path: Path, clock: ManualClock) -> None:
    path = tmp_path / "bank.sqlite3"
    # The holds table as it was: without the released column.
    start = BANK_SCHEMA.index(",\n    -- Lifted by releases")
    end = BANK_SCHEMA.index("(released >= 0)") + len("(released >= 0)")
    old_schema = BANK_SCHEMA[:start] + BANK_SCHEMA[end:]
    assert "released       INTEGER" not in old_schema
    conn = sqlite3.connect(path)
    conn.executescript(old_schema)
    conn.close()
    with BankCore(BankConfig(agency_id=ME, database=str(path)), clock=clock) as core:
        fund(core, clock, 100_000)
        fz = freeze(clock, 80_000)
        core.freeze(fz)
        result = core.release_hold(release(clock, fz.context.request_id, amount=cny(30_000))).result
        assert (result.outcome, result.amount_frozen) == (EXECUTED, cny(50_000))
    # Opening it again finds the column there: the upgrade runs once.
    with BankCore(BankConfig(agency_id=ME, database=str(path)), clock=clock) as core:
        assert core.holds_for(fz.context.request_id)[0].released == 30_000
