"""A customer transfer at a reference bank of the running stack, screened by the risk registry.

The bank asks RiskService.Check with its own key (a BusClient speaking for the bank, as its
adapter does), then its core moves the money or refuses a HIGH-graded destination.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenchannel.v1 import risk_pb2

from agencies.bank import BankCore, PaymentDesk, TransferRefusedError

from ._stack import Stack

__all__ = ["CustomerTransfer", "customer_transfer"]


@dataclass(frozen=True, kw_only=True)
class CustomerTransfer:
    """What became of one customer transfer."""

    bank: str
    made: bool
    """False: refused before any money moved."""
    grade: str
    """The destination's grade (``RISK_GRADE_HIGH``, ...; ``RISK_GRADE_UNSPECIFIED``: not marked)."""
    reason: str
    """The reason code of the mark giving the grade, when marked."""
    transfer_id: str = ""


async def customer_transfer(
    stack: Stack, *, bank: str, from_account: str, to_account: str, to_bank: str, amount: int
) -> CustomerTransfer:
    """One outgoing transfer of ``bank``'s customer, checked against the risk registry first."""
    core = stack.agencies[bank].core
    if not isinstance(core, BankCore):
        raise ValueError(f"{bank!r} is not a bank")
    async with stack.client(bank) as bus:
        desk = PaymentDesk(core, bus.risk)
        try:
            payment = await desk.transfer(from_account, to_account, to_bank, amount)
        except TransferRefusedError as refused:
            return CustomerTransfer(
                bank=bank,
                made=False,
                grade=risk_pb2.RiskGrade.Name(refused.grade),
                reason=risk_pb2.RiskReason.Name(refused.reason),
            )
    return CustomerTransfer(
        bank=bank,
        made=True,
        grade=risk_pb2.RiskGrade.Name(payment.grade),
        reason="",
        transfer_id=payment.transfer_id,
    )
