"""Checks of a ``BankService``: holds, freezes, their lifecycle, MISMATCH, replays, the money trail.

Every check acts on its own fixture account and releases the holds it placed, so checks do not
depend on each other and the kit can run again against the same bank.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf.duration_pb2 import Duration
from greenchannel.v1 import bank_pb2, bank_pb2_grpc, common_pb2, requests_pb2, results_pb2

from ._generic import Check, Sample, deadline_check, malformed_check
from ._probe import (
    CheckFailed,
    Probe,
    expect,
    expect_no_data,
    expect_outcome,
    expect_same_answer,
    new_request_id,
    outcome_name,
    reason_name,
    timestamp,
)

__all__ = ["BANK_CHECKS", "bank_stub"]

bank_stub = bank_pb2_grpc.BankServiceStub

_WRONG_HOLDER = "冒名者"
"""A holder name no fixture account has."""
_HOLD = timedelta(hours=48)
_FREEZE = timedelta(days=183)

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
PARTIAL = common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


def _ref(probe: Probe, role: str, *, holder: str | None = None) -> common_pb2.BankAccountRef:
    acct = probe.fixture.account(role)
    return common_pb2.BankAccountRef(account_number=acct.number, holder_name=holder or acct.holder)


def _money(probe: Probe, minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency=probe.fixture.currency, minor_units=minor_units)


def _stop_payment_request(
    probe: Probe,
    role: str,
    amount: int,
    *,
    request_id: str | None = None,
    holder: str | None = None,
    fraud_transfer_id: str = "",
) -> bank_pb2.StopPaymentRequest:
    return bank_pb2.StopPaymentRequest(
        context=probe.context(request_id=request_id, hold_until=datetime.now(UTC) + _HOLD),
        order=requests_pb2.StopPayment(
            account=_ref(probe, role, holder=holder),
            amount=_money(probe, amount),
            fraud_transfer_id=fraud_transfer_id,
        ),
    )


def _freeze_request(
    probe: Probe,
    role: str,
    amount: int,
    *,
    request_id: str | None = None,
    holder: str | None = None,
    converts: str = "",
) -> bank_pb2.FreezeRequest:
    return bank_pb2.FreezeRequest(
        context=probe.context(
            request_id=request_id,
            instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
            hold_until=datetime.now(UTC) + _FREEZE,
        ),
        order=requests_pb2.Freeze(
            account=_ref(probe, role, holder=holder),
            amount=_money(probe, amount),
            converts_request_id=converts,
        ),
    )


def _release_request(
    probe: Probe, role: str, target: str, *, request_id: str | None = None
) -> bank_pb2.ReleaseHoldRequest:
    return bank_pb2.ReleaseHoldRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_RELEASE_NOTICE
        ),
        order=requests_pb2.Release(
            target_request_id=target, account=_ref(probe, role), reason="conformance check clean-up"
        ),
    )


def _extend_request(
    probe: Probe, role: str, target: str, until: datetime, *, request_id: str | None = None
) -> bank_pb2.ExtendHoldRequest:
    return bank_pb2.ExtendHoldRequest(
        context=probe.context(request_id=request_id, hold_until=until),
        order=requests_pb2.Extend(
            target_request_id=target, account=_ref(probe, role), extension=Duration(seconds=48 * 3600)
        ),
    )


def _data_request(
    probe: Probe,
    role: str,
    category: requests_pb2.DataCategory.ValueType,
    *,
    request_id: str | None = None,
    holder: str | None = None,
    account_number: str | None = None,
) -> bank_pb2.QueryBankDataRequest:
    ref = _ref(probe, role, holder=holder)
    if account_number is not None:
        ref.account_number = account_number
    order = requests_pb2.DataRequest(category=category, account=ref)
    if category == requests_pb2.DATA_CATEGORY_TRANSACTIONS:
        now = datetime.now(UTC)
        order.period.start.CopyFrom(timestamp(now - timedelta(days=3)))
        order.period.end.CopyFrom(timestamp(now + timedelta(minutes=1)))
    return bank_pb2.QueryBankDataRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE
        ),
        order=order,
    )


async def _stop_payment(probe: Probe, role: str, amount: int, **kw: Any) -> tuple[str, Any]:
    request_id = kw.pop("request_id", None) or new_request_id()
    answer = await probe.call(
        "StopPayment", _stop_payment_request(probe, role, amount, request_id=request_id, **kw)
    )
    return request_id, answer


async def _release_all(probe: Probe, role: str, *targets: str) -> None:
    """Lift what a check held, so the next run finds the fixture as seeded; failures stay silent."""
    for target in targets:
        with contextlib.suppress(CheckFailed):
            await probe.call("ReleaseHold", _release_request(probe, role, target))


def _verdict(result: results_pb2.Result) -> str:
    return f"{outcome_name(result)}/{reason_name(result)}"


def _amount(money: common_pb2.Money) -> int:
    return money.minor_units


def _whole(probe: Probe, role: str) -> int:
    """What a role's account holds after seeding: opening balance plus the fixture's transfers."""
    acct = probe.fixture.account(role)
    balance = acct.balance
    for t in probe.fixture.transfers:
        if t.to_account == acct.number:
            balance += t.amount
        if t.from_account == acct.number:
            balance -= t.amount
    return balance


async def _holds_whole_balance(probe: Probe, role: str, *, why: str) -> None:
    """A stop-payment for the whole balance holds all of it: nothing else holds money there."""
    whole = _whole(probe, role)
    request_id, answer = await _stop_payment(probe, role, whole)
    try:
        held = _amount(answer.result.amount_held)
        expect(
            answer.result.outcome == EXECUTED and held == whole,
            f"{why}: a stop-payment for the whole balance ({whole}) then held {held} "
            f"({_verdict(answer.result)}): money was held before",
        )
    finally:
        await _release_all(probe, role, request_id)


# -- the checks -----------------------------------------------------------------------------------


async def _check_stop_payment(probe: Probe) -> str:
    request_id, answer = await _stop_payment(probe, "stop_payment", 300_000)
    try:
        result = answer.result
        expect_outcome(result, EXECUTED, what="StopPayment within the balance")
        expect(
            _amount(result.amount_held) == 300_000,
            f"amount_held is {_amount(result.amount_held)}, not 300000",
        )
        expect(result.amount_held.currency == probe.fixture.currency, "amount_held has the wrong currency")
        expect(
            result.HasField("hold_until"), "an executed stop-payment must say when the hold ends (hold_until)"
        )
    finally:
        await _release_all(probe, "stop_payment", request_id)
    return "EXECUTED, amount_held and hold_until set"


async def _check_freeze(probe: Probe) -> str:
    request_id = new_request_id()
    answer = await probe.call("Freeze", _freeze_request(probe, "freeze", 200_000, request_id=request_id))
    try:
        result = answer.result
        expect_outcome(result, EXECUTED, what="Freeze within the balance")
        got = _amount(result.amount_frozen)
        expect(got == 200_000, f"amount_frozen is {got}, not 200000")
        expect(result.HasField("hold_until"), "an executed freeze must say when it ends (hold_until)")
    finally:
        await _release_all(probe, "freeze", request_id)
    return "EXECUTED, amount_frozen and hold_until set"


async def _check_convert(probe: Probe) -> str:
    whole = _whole(probe, "convert")
    held_id, answer = await _stop_payment(probe, "convert", whole)
    freeze_id = new_request_id()
    try:
        expect_outcome(answer.result, EXECUTED, what="StopPayment of the whole balance")
        frozen = await probe.call(
            "Freeze", _freeze_request(probe, "convert", whole, request_id=freeze_id, converts=held_id)
        )
        got = _amount(frozen.result.amount_frozen)
        expect(
            frozen.result.outcome == EXECUTED and got == whole,
            f"Freeze converting the stop-payment hold froze {got} of {whole} "
            f"({_verdict(frozen.result)}): the held money was not carried over",
        )
    finally:
        await _release_all(probe, "convert", freeze_id, held_id)
    return "the stop-payment hold became the freeze, every unit kept"


async def _check_extend(probe: Probe) -> str:
    request_id, answer = await _stop_payment(probe, "extend", 100_000)
    try:
        expect_outcome(answer.result, EXECUTED, what="StopPayment before the extension")
        until = (datetime.now(UTC) + 2 * _HOLD).replace(microsecond=0)
        extended = await probe.call("ExtendHold", _extend_request(probe, "extend", request_id, until))
        expect_outcome(extended.result, EXECUTED, what="ExtendHold of an active hold")
        expect(extended.result.HasField("hold_until"), "ExtendHold: the answer must give the new hold_until")
        got = extended.result.hold_until.ToDatetime(tzinfo=UTC)
        expect(
            got == until,
            f"ExtendHold: hold_until is {got.isoformat()}, the order asked for {until.isoformat()}",
        )
        missing = await probe.call("ExtendHold", _extend_request(probe, "extend", new_request_id(), until))
        expect_outcome(
            missing.result,
            REJECTED,
            results_pb2.REASON_CODE_NO_ACTIVE_HOLD,
            what="ExtendHold of an unknown hold",
        )
    finally:
        await _release_all(probe, "extend", request_id)
    return "hold moved to context.hold_until; unknown hold NO_ACTIVE_HOLD"


async def _check_release(probe: Probe) -> str:
    whole = _whole(probe, "release")
    request_id, answer = await _stop_payment(probe, "release", whole)
    expect_outcome(answer.result, EXECUTED, what="StopPayment of the whole balance")
    released = await probe.call("ReleaseHold", _release_request(probe, "release", request_id))
    expect_outcome(released.result, EXECUTED, what="ReleaseHold of an active hold")
    again = await probe.call("ReleaseHold", _release_request(probe, "release", request_id))
    expect_outcome(
        again.result, REJECTED, results_pb2.REASON_CODE_NO_ACTIVE_HOLD, what="ReleaseHold of a released hold"
    )
    await _holds_whole_balance(probe, "release", why="after ReleaseHold")
    return "released money is available again; a second release is NO_ACTIVE_HOLD"


async def _check_query(probe: Probe) -> str:
    """Data about an account: answered in clear, and refused without data on a wrong name or account."""
    holder = await probe.call(
        "QueryBankData", _data_request(probe, "data", requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER)
    )
    expect_outcome(holder.result, EXECUTED, what="QueryBankData ACCOUNT_HOLDER")
    expect(
        holder.HasField("answer") and len(holder.answer.holder) > 0,
        "ACCOUNT_HOLDER: the answer has no holder data",
    )
    rows = await probe.call(
        "QueryBankData", _data_request(probe, "onward", requests_pb2.DATA_CATEGORY_TRANSACTIONS)
    )
    expect_outcome(rows.result, EXECUTED, what="QueryBankData TRANSACTIONS")
    onward = probe.fixture.account("onward").number
    booked = sum(1 for t in probe.fixture.transfers if onward in (t.from_account, t.to_account))
    got = len(rows.answer.records)
    expect(
        got >= booked,
        f"TRANSACTIONS of the onward account over 3 days: {got} records, the fixture booked {booked}",
    )
    what = "QueryBankData with a wrong holder name"
    wrong = await probe.call(
        "QueryBankData",
        _data_request(probe, "data", requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER, holder=_WRONG_HOLDER),
    )
    expect_outcome(wrong.result, REJECTED, results_pb2.REASON_CODE_MISMATCH, what=what)
    expect_no_data(wrong, what=what)
    _expect_discreet(probe, "data", wrong.result)
    what = "QueryBankData of an unknown account"
    unknown = await probe.call(
        "QueryBankData",
        _data_request(
            probe,
            "data",
            requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER,
            account_number=probe.fixture.unknown_account,
        ),
    )
    expect_outcome(unknown.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what)
    expect_no_data(unknown, what=what)
    return f"holder data and {got} transaction records in clear; wrong name MISMATCH, unknown NOT_FOUND"


def _expect_discreet(probe: Probe, role: str, result: results_pb2.Result) -> None:
    acct = probe.fixture.account(role)
    expect(
        acct.holder not in result.detail and acct.number not in result.detail,
        "a refusal's detail quotes the account's records (holder name or number)",
    )


async def _check_not_found(probe: Probe) -> str:
    unknown = probe.fixture.unknown_account
    stop = _stop_payment_request(probe, "stop_payment", 100)
    stop.order.account.account_number = unknown
    answer = await probe.call("StopPayment", stop)
    what = "StopPayment of an unknown account"
    expect_outcome(answer.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what)
    freeze = _freeze_request(probe, "freeze", 100)
    freeze.order.account.account_number = unknown
    frozen = await probe.call("Freeze", freeze)
    what = "Freeze of an unknown account"
    expect_outcome(frozen.result, REJECTED, results_pb2.REASON_CODE_NOT_FOUND, what=what)
    return "StopPayment and Freeze: REJECTED/NOT_FOUND"


async def _check_mismatch(probe: Probe) -> str:
    whole = _whole(probe, "mismatch")
    request_ids: list[str] = []
    try:
        rid, sp = await _stop_payment(probe, "mismatch", whole, holder=_WRONG_HOLDER)
        request_ids.append(rid)
        what = "StopPayment with a wrong holder name"
        expect_outcome(sp.result, REJECTED, results_pb2.REASON_CODE_MISMATCH, what=what)
        expect(_amount(sp.result.amount_held) == 0, f"{what}: money was held")
        rid = new_request_id()
        request_ids.append(rid)
        fz = await probe.call(
            "Freeze", _freeze_request(probe, "mismatch", whole, request_id=rid, holder=_WRONG_HOLDER)
        )
        what = "Freeze with a wrong holder name"
        expect_outcome(fz.result, REJECTED, results_pb2.REASON_CODE_MISMATCH, what=what)
        expect(_amount(fz.result.amount_frozen) == 0, f"{what}: money was frozen")
        for result in (sp.result, fz.result):
            _expect_discreet(probe, "mismatch", result)
    finally:
        # Only a bank that acted on the wrong name holds anything here.
        await _release_all(probe, "mismatch", *request_ids)
    await _holds_whole_balance(probe, "mismatch", why="after the MISMATCH answers")
    return "StopPayment and Freeze: REJECTED/MISMATCH, nothing held, nothing told"


async def _check_idempotent_hold(probe: Probe, *, method: str, role: str) -> str:
    whole = _whole(probe, role)
    first_amount = whole * 6 // 10
    build = _freeze_request if method == "Freeze" else _stop_payment_request
    field = "amount_frozen" if method == "Freeze" else "amount_held"
    first_id, second_id = new_request_id(), new_request_id()
    try:
        first = await probe.call(method, build(probe, role, first_amount, request_id=first_id))
        expect_outcome(first.result, EXECUTED, what=f"{method} (first delivery)")
        repeat = await probe.call(method, build(probe, role, first_amount, request_id=first_id))
        expect_same_answer(first, repeat, what=f"{method} delivered twice")
        rest = await probe.call(method, build(probe, role, whole, request_id=second_id))
        got = _amount(getattr(rest.result, field))
        expect(
            got == whole - first_amount,
            f"{method} for the whole balance after a repeated delivery: {field} is {got}, "
            f"expected {whole - first_amount}: the repeat took the money twice",
        )
    finally:
        await _release_all(probe, role, first_id, second_id)
    return f"repeat answered from the first execution; money taken once ({first_amount} of {whole})"


async def _check_idempotent_stop_payment(probe: Probe) -> str:
    return await _check_idempotent_hold(probe, method="StopPayment", role="idempotent_stop_payment")


async def _check_idempotent_freeze(probe: Probe) -> str:
    return await _check_idempotent_hold(probe, method="Freeze", role="idempotent_freeze")


async def _check_onward(probe: Probe) -> str:
    whole_before = _whole(probe, "onward") + probe.fixture.onward_transfer().amount
    out = probe.fixture.onward_transfer()
    incoming = probe.fixture.incoming_transfer()
    request_id, answer = await _stop_payment(
        probe, "onward", whole_before, fraud_transfer_id=incoming.transfer_id
    )
    try:
        result = answer.result
        expect_outcome(
            result,
            PARTIAL,
            results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
            what="StopPayment of money that partly left",
        )
        held = _amount(result.amount_held)
        expect(
            held == _whole(probe, "onward"),
            f"amount_held is {held}; what was left on the account is {_whole(probe, 'onward')}",
        )
        listed = {t.transfer_id: t for t in result.onward_transfers}
        expect(
            out.transfer_id in listed,
            f"onward transfer {out.transfer_id} is not listed ({len(listed)} listed)",
        )
        got = listed[out.transfer_id]
        expect(
            _amount(got.amount) == out.amount,
            f"onward transfer {out.transfer_id}: amount {_amount(got.amount)}, booked {out.amount}",
        )
        expect(
            got.to_account == out.to_account,
            f"onward transfer {out.transfer_id}: to_account differs from the booking",
        )
        expect(
            got.to_holder_name == out.to_holder,
            f"onward transfer {out.transfer_id}: to_holder_name differs from the booking",
        )
        if out.to_bank:
            expect(
                got.to_bank == out.to_bank,
                f"onward transfer {out.transfer_id}: to_bank differs from the booking",
            )
    finally:
        await _release_all(probe, "onward", request_id)
    return f"PARTIALLY_EXECUTED/INSUFFICIENT_FUNDS, {held} held, {out.transfer_id} listed in full"


_ERROR_SAMPLES = (
    Sample(
        method="StopPayment",
        build=lambda probe, rid: _stop_payment_request(probe, "errors", 100, request_id=rid),
    ),
    Sample(method="Freeze", build=lambda probe, rid: _freeze_request(probe, "errors", 100, request_id=rid)),
    Sample(
        method="ReleaseHold",
        build=lambda probe, rid: _release_request(probe, "errors", new_request_id(), request_id=rid),
    ),
    Sample(
        method="ExtendHold",
        build=lambda probe, rid: _extend_request(
            probe, "errors", new_request_id(), datetime.now(UTC) + _HOLD, request_id=rid
        ),
    ),
    Sample(
        method="QueryBankData",
        build=lambda probe, rid: _data_request(
            probe, "errors", requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER, request_id=rid
        ),
    ),
)


async def _nothing_held_on_errors(probe: Probe) -> None:
    await _holds_whole_balance(probe, "errors", why="after the malformed requests")


async def _deadline_held_once(probe: Probe, answer: Any) -> None:
    whole = _whole(probe, "deadline")
    got = _amount(answer.result.amount_held)
    extra_id = new_request_id()
    try:
        expect(
            got == whole,
            f"the retried stop-payment held {got}, expected the whole balance {whole}: half done before?",
        )
        extra = await probe.call(
            "StopPayment", _stop_payment_request(probe, "deadline", 1, request_id=extra_id)
        )
        expect(
            _amount(extra.result.amount_held) == 0,
            "after the retried stop-payment held everything, another one still found money",
        )
    finally:
        await _release_all(probe, "deadline", extra_id)


async def _release_deadline(probe: Probe, request_id: str) -> None:
    await _release_all(probe, "deadline", request_id)


BANK_CHECKS: tuple[Check, ...] = (
    Check(
        name="bank.stop_payment",
        proves="a stop-payment within the balance is EXECUTED and held",
        run=_check_stop_payment,
    ),
    Check(name="bank.freeze", proves="a freeze within the balance is EXECUTED and frozen", run=_check_freeze),
    Check(
        name="bank.freeze.converts_stop_payment",
        proves="a freeze naming a stop-payment takes over its hold without losing money",
        run=_check_convert,
    ),
    Check(
        name="bank.extend_hold",
        proves="an active hold moves to the new end; an unknown one is NO_ACTIVE_HOLD",
        run=_check_extend,
    ),
    Check(
        name="bank.release_hold",
        proves="a release frees the money; releasing twice is NO_ACTIVE_HOLD",
        run=_check_release,
    ),
    Check(
        name="bank.query_bank_data",
        proves="holder and transaction data are answered in clear; a wrong name or account gets no data",
        run=_check_query,
    ),
    Check(
        name="bank.not_found",
        proves="an account the bank does not hold is REJECTED/NOT_FOUND",
        run=_check_not_found,
    ),
    Check(
        name="bank.mismatch.holder_name",
        proves="a wrong holder name is MISMATCH before anything is done",
        run=_check_mismatch,
    ),
    Check(
        name="bank.idempotency.stop_payment",
        proves="a stop-payment delivered twice holds once",
        run=_check_idempotent_stop_payment,
    ),
    Check(
        name="bank.idempotency.freeze",
        proves="a freeze delivered twice freezes once",
        run=_check_idempotent_freeze,
    ),
    Check(
        name="bank.partial_execution.onward_transfers",
        proves="money that partly left: PARTIALLY_EXECUTED, the rest held, onward transfers listed in full",
        run=_check_onward,
    ),
    malformed_check("bank", _ERROR_SAMPLES, after=_nothing_held_on_errors),
    deadline_check(
        "bank",
        Sample(
            method="StopPayment",
            build=lambda probe, rid: _stop_payment_request(
                probe, "deadline", _whole(probe, "deadline"), request_id=rid
            ),
        ),
        after=_deadline_held_once,
        cleanup=_release_deadline,
    ),
)
