"""The reference bank core: accounts, balances, holds and transfers in SQLite.

Orders from the bus arrive through the ``BankService`` methods (:meth:`BankCore.stop_payment` and
friends), each executed once per request id and journalled with its answer. The direct methods
(:meth:`BankCore.open_account`, :meth:`BankCore.transfer`, ...) are the bank's own business: they
seed the demo and let tests move money the way customers would.
"""

from __future__ import annotations

import secrets
from datetime import datetime
from functools import partial

import structlog
from greenchannel.v1 import bank_pb2

from agencies._common import (
    AccountClosedError,
    AgencyCore,
    CurrencyMismatchError,
    InsufficientFundsError,
    UnknownAccountError,
)
from broker.protocol import Clock

from . import _orders as orders
from . import _store as store
from ._config import BankConfig
from ._model import Account, AccountStatus, Hold, Transfer
from ._schema import BANK_SCHEMA

__all__ = ["BankCore"]

_log = structlog.get_logger(__name__)


class BankCore(AgencyCore):
    """One bank's core system. Thread-safe; close it (or use it as a context manager) when done."""

    def __init__(self, config: BankConfig, *, clock: Clock | None = None) -> None:
        super().__init__(
            agency_id=config.agency_id, database=config.database, schema=BANK_SCHEMA, clock=clock
        )
        self._config = config
        with self._db.transaction() as conn:
            store.upgrade(conn)

    @property
    def config(self) -> BankConfig:
        return self._config

    # -- BankService ------------------------------------------------------------------------------

    def stop_payment(self, request: bank_pb2.StopPaymentRequest) -> bank_pb2.StopPaymentResponse:
        """紧急止付: hold what is available, up to the amount; list onward transfers for the rest."""
        return self._run(
            "BankService.StopPayment",
            request,
            bank_pb2.StopPaymentResponse,
            partial(orders.stop_payment, self._config),
        )

    def freeze(self, request: bank_pb2.FreezeRequest) -> bank_pb2.FreezeResponse:
        """快速冻结, converting the stop-payment hold named by ``converts_request_id`` if still active."""
        return self._run(
            "BankService.Freeze", request, bank_pb2.FreezeResponse, partial(orders.freeze, self._config)
        )

    def release_hold(self, request: bank_pb2.ReleaseHoldRequest) -> bank_pb2.ReleaseHoldResponse:
        """Lift the active hold or freeze made by ``target_request_id``."""
        return self._run(
            "BankService.ReleaseHold",
            request,
            bank_pb2.ReleaseHoldResponse,
            partial(orders.release_hold, self._config),
        )

    def extend_hold(self, request: bank_pb2.ExtendHoldRequest) -> bank_pb2.ExtendHoldResponse:
        """Move the end of an active hold or freeze to ``context.hold_until``."""
        return self._run(
            "BankService.ExtendHold",
            request,
            bank_pb2.ExtendHoldResponse,
            partial(orders.extend_hold, self._config),
        )

    def return_funds(self, request: bank_pb2.ReturnFundsRequest) -> bank_pb2.ReturnFundsResponse:
        """资金返还: pay the victims from the money held on the account; hold that much less."""
        return self._run(
            "BankService.ReturnFunds",
            request,
            bank_pb2.ReturnFundsResponse,
            partial(orders.return_funds, self._config),
        )

    def query_bank_data(self, request: bank_pb2.QueryBankDataRequest) -> bank_pb2.QueryBankDataResponse:
        """Account holder identity or transactions in a period, in clear (the adapter seals them)."""
        return self._run(
            "BankService.QueryBankData",
            request,
            bank_pb2.QueryBankDataResponse,
            partial(orders.query_bank_data, self._config),
        )

    # -- the bank's own business ------------------------------------------------------------------

    def open_account(
        self,
        account_number: str,
        holder_name: str,
        *,
        currency: str = "CNY",
        balance: int = 0,
        id_type: str = "",
        id_number: str = "",
        phone: str = "",
        opened_at: datetime | None = None,
    ) -> Account:
        """Open an account with an opening balance in minor units."""
        if balance < 0:
            raise ValueError("an opening balance cannot be negative")
        acct = Account(
            account_number=account_number,
            holder_name=holder_name,
            currency=currency,
            balance=balance,
            status=AccountStatus.OPEN,
            id_type=id_type,
            id_number=id_number,
            phone=phone,
            opened_at=opened_at or self._clock.now(),
        )
        with self._db.transaction() as conn:
            store.insert_account(conn, acct)
        return acct

    def close_account(self, account_number: str) -> None:
        with self._db.transaction() as conn:
            if store.account(conn, account_number) is None:
                raise UnknownAccountError("no such account")
            store.set_account_status(conn, account_number, AccountStatus.CLOSED)

    def account(self, account_number: str) -> Account | None:
        with self._db.transaction() as conn:
            return store.account(conn, account_number)

    def transfer(
        self,
        from_account: str,
        to_account: str,
        to_bank: str,
        amount: int,
        at: datetime | None = None,
        transfer_id: str | None = None,
        *,
        to_bank_code: str = "",
        from_bank: str = "",
        to_holder: str = "",
    ) -> str:
        """Move ``amount`` minor units; returns the transfer id.

        An account of this bank on the paying side is debited (never below what holds leave
        available); one on the receiving side is credited. ``to_bank`` is the receiving bank's
        agency id (this bank's own id or empty for an account here, empty with ``to_bank_code`` for
        a bank outside the directory); ``from_bank`` names the paying bank of an incoming credit.
        """
        if amount <= 0:
            raise ValueError("a transfer moves a positive amount")
        when = at or self._clock.now()
        with self._db.transaction() as conn:
            source = store.account(conn, from_account)
            target = store.account(conn, to_account) if to_bank in ("", self.agency_id) else None
            if source is None and target is None:
                raise UnknownAccountError("neither side of the transfer is an account of this bank")
            local = source or target
            assert local is not None
            if source is not None and target is not None and source.currency != target.currency:
                raise CurrencyMismatchError("the accounts are in different currencies")
            for acct in (source, target):
                if acct is not None and acct.status is AccountStatus.CLOSED:
                    raise AccountClosedError("the account is closed")
            if source is not None:
                if store.available(conn, from_account, self._clock.now()) < amount:
                    raise InsufficientFundsError("the transfer exceeds the available balance")
                store.adjust_balance(conn, from_account, -amount)
            if target is not None:
                store.adjust_balance(conn, to_account, amount)
            tid = transfer_id or f"T{when:%Y%m%d%H%M%S}{secrets.token_hex(4).upper()}"
            store.insert_transfer(
                conn,
                Transfer(
                    transfer_id=tid,
                    from_account=from_account,
                    from_bank=self.agency_id if source is not None else from_bank,
                    to_account=to_account,
                    to_bank=self.agency_id if target is not None else to_bank,
                    to_bank_code="" if target is not None else to_bank_code,
                    to_holder=target.holder_name if target is not None else to_holder,
                    amount=amount,
                    currency=local.currency,
                    at=when,
                ),
            )
        return tid

    def balance(self, account_number: str) -> int:
        """Booked balance in minor units, holds not deducted."""
        acct = self.account(account_number)
        if acct is None:
            raise UnknownAccountError("no such account")
        return acct.balance

    def available(self, account_number: str) -> int:
        """Balance minus the holds in force now."""
        with self._db.transaction() as conn:
            if store.account(conn, account_number) is None:
                raise UnknownAccountError("no such account")
            return store.available(conn, account_number, self._clock.now())

    def transfers_of(self, account_number: str, start: datetime, end: datetime) -> tuple[Transfer, ...]:
        """Transfers into or out of the account in ``[start, end)``, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.transfers_between(conn, account_number, start, end))

    def holds_for(self, request_id: str) -> tuple[Hold, ...]:
        """The holds or freezes a request created (one at most: ``request_id`` is unique)."""
        with self._db.transaction() as conn:
            hold = store.hold_by_request(conn, request_id, self._clock.now())
        return (hold,) if hold is not None else ()

    def holds_on(self, account_number: str) -> tuple[Hold, ...]:
        """Every hold and freeze ever placed on the account, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.holds_on(conn, account_number, self._clock.now()))

    def expire_holds(self) -> list[str]:
        """Mark holds whose end has passed as expired; the request ids that lapsed, oldest first.

        Expiry already takes effect by the clock (an expired hold no longer reduces the available
        balance); this records it, so the bank can tell the bus which holds ran out.
        """
        with self._db.transaction() as conn:
            lapsed = store.expire_due(conn, self._clock.now())
        if lapsed:
            _log.info("bank.holds_expired", agency=self.agency_id, count=len(lapsed), request_ids=lapsed)
        return lapsed
