"""The bank's rules for each order, run inside the journalled transaction of :class:`BankCore`.

Each function checks the account named by the order against the bank's records first and answers
MISMATCH / NOT_FOUND / ACCOUNT_CLOSED rather than act on a wrong target; the reason's ``detail``
says what kind of thing did not match, never what the right value would have been.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from greenchannel.v1 import agency_pb2, bank_pb2, common_pb2, requests_pb2, results_pb2

from agencies._common import (
    executed,
    from_timestamp,
    invalid_request,
    money,
    new_reference,
    rejected,
    rfc3339,
    to_timestamp,
)

from . import _store as store
from ._config import BankConfig
from ._model import Account, AccountStatus, Hold, HoldKind, HoldStatus, Transfer, same_holder

__all__ = ["Env", "extend_hold", "freeze", "query_bank_data", "release_hold", "return_funds", "stop_payment"]

_MAX_ONWARD = 1000  # the contract's cap on Result.onward_transfers


@dataclass(frozen=True, kw_only=True)
class Env:
    """What every rule needs besides the order: the bank's settings and the time of execution."""

    config: BankConfig
    """The bank's settings."""
    now: datetime
    """The one instant the whole order executes at."""


def stop_payment(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.StopPayment,
) -> bank_pb2.StopPaymentResponse:
    env = Env(config=config, now=now)
    acct = _checked_account(conn, env, order.account, currency=order.amount.currency, must_be_open=True)
    if isinstance(acct, results_pb2.Result):
        return bank_pb2.StopPaymentResponse(result=acct)
    until = _hold_until(ctx, env, env.config.stop_payment_hold)
    if until is None:
        return bank_pb2.StopPaymentResponse(result=invalid_request("hold_until lies in the past"))
    asked = order.amount.minor_units
    held = min(asked, store.available(conn, acct.account_number, env.now))
    result = _shortfall_result(conn, env, acct, asked, held, order.fraud_transfer_id)
    result.amount_held.CopyFrom(money(acct.currency, held))
    if held:
        hold = _place(conn, env, ctx, acct, held, HoldKind.STOP_PAYMENT, until, converted_from=None)
        result.hold_until.CopyFrom(to_timestamp(hold.expires_at))
        result.agency_reference = hold.hold_id
    return bank_pb2.StopPaymentResponse(result=result)


def freeze(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Freeze,
) -> bank_pb2.FreezeResponse:
    env = Env(config=config, now=now)
    acct = _checked_account(conn, env, order.account, currency=order.amount.currency, must_be_open=True)
    if isinstance(acct, results_pb2.Result):
        return bank_pb2.FreezeResponse(result=acct)
    until = _hold_until(ctx, env, env.config.freeze_hold)
    if until is None:
        return bank_pb2.FreezeResponse(result=invalid_request("hold_until lies in the past"))
    converted: Hold | None = None
    if order.converts_request_id:
        candidate = store.hold_by_request(conn, order.converts_request_id, env.now)
        if (
            candidate is not None
            and candidate.kind is HoldKind.STOP_PAYMENT
            and candidate.status is HoldStatus.ACTIVE
            and candidate.account_number == acct.account_number
        ):
            # The held money becomes available again only to this freeze, in this transaction:
            # nothing can move in between, so the freeze keeps every unit the hold had.
            store.set_hold_status(conn, candidate.hold_id, HoldStatus.CONVERTED, env.now)
            converted = candidate
    asked = order.amount.minor_units
    frozen = min(asked, store.available(conn, acct.account_number, env.now))
    result = _shortfall_result(conn, env, acct, asked, frozen, fraud_transfer_id="")
    result.amount_frozen.CopyFrom(money(acct.currency, frozen))
    if frozen:
        hold = _place(
            conn,
            env,
            ctx,
            acct,
            frozen,
            HoldKind.FREEZE,
            until,
            converted_from=converted.hold_id if converted else None,
        )
        result.hold_until.CopyFrom(to_timestamp(hold.expires_at))
        result.agency_reference = hold.hold_id
    if order.converts_request_id:
        note = "stop-payment hold converted" if converted else "no active stop-payment hold to convert"
        result.detail = f"{result.detail}; {note}" if result.detail else note
    return bank_pb2.FreezeResponse(result=result)


def release_hold(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Release,
) -> bank_pb2.ReleaseHoldResponse:
    env = Env(config=config, now=now)
    if not order.HasField("account"):
        # The broker's own notice that a hold lapsed: it names only the hold (it keeps no account
        # data). Lifting a hold that already ran out is done, not an error.
        lapsed = _lapsed_release(conn, env, order.target_request_id)
        if lapsed is not None:
            return bank_pb2.ReleaseHoldResponse(result=lapsed)
    target = _target_hold(conn, env, order.account, order.target_request_id)
    if isinstance(target, results_pb2.Result):
        return bank_pb2.ReleaseHoldResponse(result=target)
    hold, acct = target
    what = "hold" if hold.kind is HoldKind.STOP_PAYMENT else "freeze"
    lifted = hold.amount
    if order.HasField("amount"):
        if order.amount.currency != acct.currency:
            return bank_pb2.ReleaseHoldResponse(
                result=rejected(results_pb2.REASON_CODE_MISMATCH, "currency does not match the account")
            )
        if order.amount.minor_units > hold.amount:
            return bank_pb2.ReleaseHoldResponse(
                result=rejected(
                    results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
                    f"the {what} holds less than the amount to release",
                )
            )
        lifted = order.amount.minor_units
    if lifted < hold.amount:
        # A partial release (living expenses): the rest stays held, under the same hold and end.
        store.release_part(conn, hold.hold_id, lifted)
        result = executed(f"{what} partly released")
    else:
        store.set_hold_released(conn, hold.hold_id, env.now)
        result = executed(f"{what} released")
    result.agency_reference = hold.hold_id
    result.amount_released.CopyFrom(money(acct.currency, lifted))
    _set_amount(result, hold.kind, money(acct.currency, hold.amount - lifted))
    return bank_pb2.ReleaseHoldResponse(result=result)


def extend_hold(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Extend,
) -> bank_pb2.ExtendHoldResponse:
    env = Env(config=config, now=now)
    target = _target_hold(conn, env, order.account, order.target_request_id)
    if isinstance(target, results_pb2.Result):
        return bank_pb2.ExtendHoldResponse(result=target)
    hold, acct = target
    # The broker's SLA policy decides the new end and sends it as hold_until; the requested
    # extension is only a fallback for callers without a policy.
    if ctx.HasField("hold_until"):
        until = from_timestamp(ctx.hold_until)
    elif order.HasField("extension"):
        until = hold.expires_at + order.extension.ToTimedelta()
    else:
        return bank_pb2.ExtendHoldResponse(result=invalid_request("no new end given (context.hold_until)"))
    if until <= hold.expires_at:
        return bank_pb2.ExtendHoldResponse(
            result=invalid_request("the new end must be later than the current end of the hold")
        )
    store.set_hold_expiry(conn, hold.hold_id, until)
    result = executed("hold extended" if hold.kind is HoldKind.STOP_PAYMENT else "freeze renewed")
    result.agency_reference = hold.hold_id
    result.hold_until.CopyFrom(to_timestamp(until))
    _set_amount(result, hold.kind, money(acct.currency, hold.amount))
    return bank_pb2.ExtendHoldResponse(result=result)


def return_funds(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.ReturnFunds,
) -> bank_pb2.ReturnFundsResponse:
    """资金返还: pay each victim from the money held on the account, in the order's order, and
    hold that much less (the paying case's holds first, oldest first, then the others')."""
    env = Env(config=config, now=now)
    currency = order.payouts[0].amount.currency
    # A closed mule account still has its frozen money to give back.
    acct = _checked_account(conn, env, order.account, currency=currency, must_be_open=False)
    if isinstance(acct, results_pb2.Result):
        return bank_pb2.ReturnFundsResponse(result=acct)
    case = (ctx.case_ref.issuing_agency, ctx.case_ref.case_number)
    holds = sorted(
        (h for h in store.holds_on(conn, acct.account_number, env.now) if h.status is HoldStatus.ACTIVE),
        key=lambda h: (store.hold_case(conn, h.hold_id) != case, h.created_at, h.hold_id),
    )
    if not holds:
        return bank_pb2.ReturnFundsResponse(
            result=rejected(results_pb2.REASON_CODE_NO_ACTIVE_HOLD, "no money is held on the account")
        )
    left = {h.hold_id: h.amount for h in holds}
    payable = min(sum(left.values()), acct.balance)
    paid_out: list[results_pb2.ReturnedPayout] = []
    for index, payout in enumerate(order.payouts):
        pay = min(payout.amount.minor_units, payable)
        if pay <= 0:
            continue
        payable -= pay
        tid = _pay_victim(conn, env, acct, payout.victim_account, pay, index)
        _lift(conn, env, holds, left, pay)
        paid_out.append(
            results_pb2.ReturnedPayout(
                payout_index=index,
                amount=money(acct.currency, pay),
                transfer_id=tid,
                victim_account=payout.victim_account,
            )
        )
    asked = sum(p.amount.minor_units for p in order.payouts)
    returned = sum(p.amount.minor_units for p in paid_out)
    if returned == asked:
        result = executed("frozen money returned")
    elif returned:
        result = results_pb2.Result(
            outcome=common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
            reason=results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
            detail="less held on the account than ordered; returned what was held",
        )
    else:
        result = rejected(results_pb2.REASON_CODE_INSUFFICIENT_FUNDS, "nothing held on the account to return")
    result.amount_returned.CopyFrom(money(acct.currency, returned))
    result.returns.extend(paid_out)
    result.amount_frozen.CopyFrom(money(acct.currency, sum(left.values())))
    return bank_pb2.ReturnFundsResponse(result=result)


def _pay_victim(
    conn: sqlite3.Connection,
    env: Env,
    acct: Account,
    victim: common_pb2.BankAccountRef,
    amount: int,
    index: int,
) -> str:
    """Debit the held account and pay the victim: credited here if the account is this bank's,
    else an outgoing transfer to the victim's bank. The transfer id."""
    local = store.account(conn, victim.account_number) if victim.bank in ("", env.config.agency_id) else None
    store.adjust_balance(conn, acct.account_number, -amount)
    if local is not None:
        store.adjust_balance(conn, local.account_number, amount)
    tid = f"{new_reference('RT', env.now)}{index:02d}"
    store.insert_transfer(
        conn,
        Transfer(
            transfer_id=tid,
            from_account=acct.account_number,
            from_bank=env.config.agency_id,
            to_account=victim.account_number,
            to_bank=env.config.agency_id if local is not None else victim.bank,
            to_bank_code="",
            to_holder=local.holder_name if local is not None else victim.holder_name,
            amount=amount,
            currency=acct.currency,
            at=env.now,
        ),
    )
    return tid


def _lift(conn: sqlite3.Connection, env: Env, holds: list[Hold], left: dict[str, int], amount: int) -> None:
    """Hold ``amount`` less over ``holds``, in their order: the money paid out is no longer held."""
    for hold in holds:
        if amount <= 0:
            return
        take = min(left[hold.hold_id], amount)
        if take:
            store.reduce_hold(conn, hold.hold_id, take, env.now)
            left[hold.hold_id] -= take
            amount -= take


def query_bank_data(
    config: BankConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.DataRequest,
) -> bank_pb2.QueryBankDataResponse:
    env = Env(config=config, now=now)
    if order.WhichOneof("subject") != "account":
        return bank_pb2.QueryBankDataResponse(result=invalid_request("a bank answers about bank accounts"))
    category = order.category
    if category not in (requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER, requests_pb2.DATA_CATEGORY_TRANSACTIONS):
        return bank_pb2.QueryBankDataResponse(
            result=invalid_request("a bank answers ACCOUNT_HOLDER and TRANSACTIONS requests")
        )
    if category == requests_pb2.DATA_CATEGORY_TRANSACTIONS and not order.HasField("period"):
        return bank_pb2.QueryBankDataResponse(result=invalid_request("TRANSACTIONS needs a period"))
    # Data is answered for closed accounts too: their history is what investigators need.
    acct = _checked_account(conn, env, order.account, currency=None, must_be_open=False)
    if isinstance(acct, results_pb2.Result):
        return bank_pb2.QueryBankDataResponse(result=acct)
    answer = results_pb2.DataAnswer()
    if category == requests_pb2.DATA_CATEGORY_ACCOUNT_HOLDER:
        answer.holder.update(
            {
                "name": acct.holder_name,
                "id_type": acct.id_type,
                "id_number": acct.id_number,
                "phone": acct.phone,
                "opened_at": rfc3339(acct.opened_at),
                "account_status": acct.status.value,
                "currency": acct.currency,
            }
        )
    else:
        start, end = from_timestamp(order.period.start), from_timestamp(order.period.end)
        for t in store.transfers_between(conn, acct.account_number, start, end):
            answer.records.add().fields.update(_transaction_record(acct.account_number, t))
    return bank_pb2.QueryBankDataResponse(result=executed(), answer=answer)


# -- shared checks ------------------------------------------------------------------------------


def _checked_account(
    conn: sqlite3.Connection,
    env: Env,
    ref: common_pb2.BankAccountRef,
    *,
    currency: str | None,
    must_be_open: bool,
) -> Account | results_pb2.Result:
    if ref.bank and ref.bank != env.config.agency_id:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "the account is not held by this bank")
    acct = store.account(conn, ref.account_number)
    if acct is None:
        return rejected(results_pb2.REASON_CODE_NOT_FOUND, "no such account")
    # Name before status: a request with the wrong name learns nothing about the account.
    if not same_holder(acct.holder_name, ref.holder_name):
        return rejected(results_pb2.REASON_CODE_MISMATCH, "holder name does not match the account")
    if currency is not None and currency != acct.currency:
        return rejected(results_pb2.REASON_CODE_MISMATCH, "currency does not match the account")
    if must_be_open and acct.status is AccountStatus.CLOSED:
        return rejected(results_pb2.REASON_CODE_ACCOUNT_CLOSED, "the account is closed")
    return acct


def _lapsed_release(conn: sqlite3.Connection, env: Env, target_request_id: str) -> results_pb2.Result | None:
    """Answer a release that names only the hold: done if it lapsed; None to release it normally."""
    hold = store.hold_by_request(conn, target_request_id, env.now)
    if hold is None:
        return rejected(results_pb2.REASON_CODE_NO_ACTIVE_HOLD, "no hold or freeze from that request")
    if hold.status is HoldStatus.ACTIVE:
        return None
    result = executed("the hold had already lapsed; nothing is held any more")
    result.reason = results_pb2.REASON_CODE_ALREADY_DONE
    result.agency_reference = hold.hold_id
    return result


def _target_hold(
    conn: sqlite3.Connection, env: Env, ref: common_pb2.BankAccountRef, target_request_id: str
) -> tuple[Hold, Account] | results_pb2.Result:
    if not ref.account_number:
        hold = store.hold_by_request(conn, target_request_id, env.now)
        if hold is None or hold.status is not HoldStatus.ACTIVE:
            return rejected(
                results_pb2.REASON_CODE_NO_ACTIVE_HOLD, "no active hold or freeze from that request"
            )
        account = store.account(conn, hold.account_number)
        if account is None:
            return rejected(results_pb2.REASON_CODE_NOT_FOUND, "the held account no longer exists")
        return hold, account
    acct = _checked_account(conn, env, ref, currency=None, must_be_open=False)
    if isinstance(acct, results_pb2.Result):
        return acct
    hold = store.hold_by_request(conn, target_request_id, env.now)
    if hold is None or hold.status is not HoldStatus.ACTIVE:
        return rejected(results_pb2.REASON_CODE_NO_ACTIVE_HOLD, "no active hold or freeze from that request")
    if hold.account_number != acct.account_number:
        return rejected(results_pb2.REASON_CODE_MISMATCH, "the hold is on another account")
    return hold, acct


def _hold_until(ctx: agency_pb2.OrderContext, env: Env, default: timedelta) -> datetime | None:
    """The end the SLA policy set (None when it lies in the past), else the bank's default."""
    if ctx.HasField("hold_until"):
        until = from_timestamp(ctx.hold_until)
        return until if until > env.now else None
    return env.now + default


def _place(
    conn: sqlite3.Connection,
    env: Env,
    ctx: agency_pb2.OrderContext,
    acct: Account,
    amount: int,
    kind: HoldKind,
    until: datetime,
    *,
    converted_from: str | None,
) -> Hold:
    hold = Hold(
        hold_id=new_reference("SP" if kind is HoldKind.STOP_PAYMENT else "FZ", env.now),
        request_id=ctx.request_id,
        account_number=acct.account_number,
        amount=amount,
        kind=kind,
        created_at=env.now,
        expires_at=until,
        status=HoldStatus.ACTIVE,
        converted_from=converted_from,
    )
    store.insert_hold(conn, hold)
    store.insert_hold_case(conn, hold.hold_id, ctx.case_ref.issuing_agency, ctx.case_ref.case_number)
    return hold


def _shortfall_result(
    conn: sqlite3.Connection, env: Env, acct: Account, asked: int, got: int, fraud_transfer_id: str
) -> results_pb2.Result:
    if got == asked:
        return executed()
    result = results_pb2.Result(
        outcome=common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED if got else common_pb2.REQUEST_STATE_REJECTED,
        reason=results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
        detail="less on the account than asked; onward transfers listed" if got else "nothing available",
    )
    onward = _onward(conn, env, acct, asked - got, fraud_transfer_id)
    result.onward_transfers.extend(onward)
    if not got and onward:
        result.detail = "nothing available; onward transfers listed"
    return result


def _onward(
    conn: sqlite3.Connection, env: Env, acct: Account, missing: int, fraud_transfer_id: str
) -> list[results_pb2.OnwardTransfer]:
    """The money trail: the latest outgoing transfers whose amounts together cover what is missing."""
    since = env.now - env.config.lookback
    if fraud_transfer_id:
        fraud = store.transfer(conn, fraud_transfer_id)
        # Money that left before the victim's payment arrived cannot be the victim's money.
        if fraud is not None and fraud.to_account == acct.account_number:
            since = max(since, fraud.at)
    picked: list[results_pb2.OnwardTransfer] = []
    covered = 0
    for t in store.outgoing(conn, acct.account_number, since, env.now):
        if covered >= missing or len(picked) >= _MAX_ONWARD:
            break
        covered += t.amount
        picked.append(
            results_pb2.OnwardTransfer(
                to_account=t.to_account,
                to_bank=t.to_bank,
                amount=money(t.currency, t.amount),
                at=to_timestamp(t.at),
                transfer_id=t.transfer_id,
                to_bank_code=t.to_bank_code,
                to_holder_name=t.to_holder,
            )
        )
    return picked


def _set_amount(result: results_pb2.Result, kind: HoldKind, amount: common_pb2.Money) -> None:
    if kind is HoldKind.STOP_PAYMENT:
        result.amount_held.CopyFrom(amount)
    else:
        result.amount_frozen.CopyFrom(amount)


def _transaction_record(number: str, t: Transfer) -> dict[str, str]:
    out = t.from_account == number
    return {
        "transfer_id": t.transfer_id,
        "direction": "out" if out else "in",
        "counterparty_account": t.to_account if out else t.from_account,
        "counterparty_bank": t.to_bank if out else t.from_bank,
        "counterparty_bank_code": t.to_bank_code if out else "",
        "amount_minor_units": str(t.amount),
        "currency": t.currency,
        "at": rfc3339(t.at),
    }
