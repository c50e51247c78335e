"""A customer's outgoing transfer, with the pre-payment risk check (RiskService.Check).

Before the core moves the money, the bank asks the risk registry about the destination account
(purpose PAYMENT) and refuses a transfer to an account graded HIGH; MEDIUM and LOW go ahead and are
logged for the bank's own follow-up. The check is optional: a bank with no screen configured
transfers as before. When the registry cannot be asked (the broker is away), the transfer goes
ahead and the miss is logged (``fail_closed=True`` refuses it instead): a risk feed slows fraud
down, it must not stop a bank's payments.

The screen is anything with RiskService's Check shape; :class:`broker.client.RiskClient` (a
BusClient's ``risk``, with the bank's own key) is one. This module imports only the contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

import grpc
import structlog
from greenchannel.v1 import risk_pb2

from agencies._common import BankError

from ._core import BankCore

__all__ = ["Payment", "PaymentDesk", "RiskScreen", "TransferRefusedError"]

_log = structlog.get_logger(__name__)

_R = risk_pb2


class RiskScreen(Protocol):
    """What the bank asks before a payment: RiskService.Check."""

    async def check(
        self,
        identifiers: Sequence[risk_pb2.RiskIdentifier],
        *,
        purpose: risk_pb2.CheckPurpose.ValueType = ...,
    ) -> risk_pb2.CheckResponse: ...


class TransferRefusedError(BankError):
    """The destination is graded HIGH in the risk registry: the transfer was not made."""

    def __init__(self, grade: risk_pb2.RiskGrade.ValueType, reason: risk_pb2.RiskReason.ValueType) -> None:
        super().__init__(
            f"the destination account is graded {_R.RiskGrade.Name(grade)} ({_R.RiskReason.Name(reason)}):"
            " transfer refused"
        )
        self.grade = grade
        self.reason = reason


@dataclass(frozen=True)
class Payment:
    """A transfer made."""

    transfer_id: str
    grade: risk_pb2.RiskGrade.ValueType
    """What the registry said of the destination (UNSPECIFIED: not marked, or not checked)."""
    checked: bool
    """Whether the registry answered."""


class PaymentDesk:
    """Customers' outgoing transfers of one bank core, screened when a screen is given."""

    def __init__(
        self, core: BankCore, screen: RiskScreen | None = None, *, fail_closed: bool = False
    ) -> None:
        self._core = core
        self._screen = screen
        self._fail_closed = fail_closed

    async def transfer(
        self,
        from_account: str,
        to_account: str,
        to_bank: str,
        amount: int,
        *,
        at: datetime | None = None,
        to_holder: str = "",
    ) -> Payment:
        """Check the destination, then move the money; :class:`TransferRefusedError` when it is HIGH."""
        grade: risk_pb2.RiskGrade.ValueType = _R.RISK_GRADE_UNSPECIFIED
        checked = False
        if self._screen is not None:
            try:
                answer = await self._screen.check(
                    [_R.RiskIdentifier(bank_account=to_account)], purpose=_R.CHECK_PURPOSE_PAYMENT
                )
            except grpc.aio.AioRpcError as exc:
                _log.warning("payment.risk_check_failed", bank=self._core.agency_id, code=exc.code().name)
                if self._fail_closed:
                    raise BankError("the risk registry did not answer: transfer not made") from exc
            else:
                checked = True
                verdict = answer.verdicts[0]
                grade = verdict.grade
                if grade == _R.RISK_GRADE_HIGH:
                    _log.info("payment.refused_high_risk", bank=self._core.agency_id, reason=verdict.reason)
                    raise TransferRefusedError(grade, verdict.reason)
                if grade != _R.RISK_GRADE_UNSPECIFIED:
                    _log.info("payment.marked_destination", bank=self._core.agency_id, grade=grade)
        transfer_id = self._core.transfer(from_account, to_account, to_bank, amount, at, to_holder=to_holder)
        return Payment(transfer_id=transfer_id, grade=grade, checked=checked)
