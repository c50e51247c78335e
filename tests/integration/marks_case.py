"""The case risk marks rest on in the tests (a mark rests on a case the broker has a request of)."""

from __future__ import annotations

from greenchannel.v1 import common_pb2, requests_pb2

from agencies import _seed as seed
from broker.client import BusClient

__all__ = ["open_case_for_marks"]

S = common_pb2


async def open_case_for_marks(police: BusClient, case_ref: common_pb2.CaseRef) -> None:
    """Give the police's case its first request: a freeze of the mule account at bank-ccb, executed."""
    request = requests_pb2.Request(
        case_ref=case_ref,
        priority=S.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=S.BankAccountRef(account_number=seed.MULE_CCB_ACCOUNT, holder_name=seed.MULE_CCB_HOLDER),
            amount=S.Money(currency="CNY", minor_units=10_000),
        ),
    )
    accepted = await police.submit(request)
    await police.wait_for(accepted.status.id, {S.REQUEST_STATE_EXECUTED, S.REQUEST_STATE_PARTIALLY_EXECUTED})
