"""An :class:`~broker.hub._allocation.Allocation` as it travels (trail.proto ``Allocation``), and
what a claim of such a message may still be paid. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from greenchannel.v1 import common_pb2, trail_pb2

from ._allocation import Allocation, AllocationRule, payable_amount

__all__ = ["allocation_message", "claim_payable"]

_RULES = {
    AllocationRule.DEPOSIT_ORDER: trail_pb2.ALLOCATION_RULE_DEPOSIT_ORDER,
    AllocationRule.PRO_RATA: trail_pb2.ALLOCATION_RULE_PRO_RATA,
}


def allocation_message(
    allocation: Allocation,
    *,
    node_id: str,
    bank: str,
    currency: str,
    returned: Mapping[str, int],
    reserved: Mapping[str, int],
    computed_at: datetime,
) -> trail_pb2.Allocation:
    """The wire form of ``allocation`` on the account ``node_id`` at ``bank``.

    ``returned`` and ``reserved`` map claim ids to the money already paid back to each claim and
    ordered but not yet answered (absent: 0); ``computed_at`` is when the broker computed it.
    """

    def money(minor_units: int) -> common_pb2.Money:
        return common_pb2.Money(currency=currency, minor_units=minor_units)

    message = trail_pb2.Allocation(
        node_id=node_id, bank=bank, frozen=money(allocation.frozen), unallocated=money(allocation.unallocated)
    )
    message.computed_at.FromDatetime(computed_at.astimezone(UTC))
    if allocation.notice_ends_at is not None:
        message.notice_ends_at.FromDatetime(allocation.notice_ends_at.astimezone(UTC))
    for share in allocation.shares:
        claim = share.claim
        item = message.claims.add(
            case_number=claim.case_number,
            issuing_agency=claim.issuing_agency,
            victim_id=claim.victim_id,
            claim_id=claim.claim_id,
            claimed=money(claim.claimed),
            rule=_RULES[share.rule],
            share=money(share.amount),
            returned=money(returned.get(claim.claim_id, 0)),
            reserved=money(reserved.get(claim.claim_id, 0)),
        )
        if claim.deposited_at is not None:
            item.deposited_at.FromDatetime(claim.deposited_at.astimezone(UTC))
        if share.payable_after is not None:
            item.payable_after.FromDatetime(share.payable_after.astimezone(UTC))
    return message


def claim_payable(claim: trail_pb2.ClaimShare, *, at: datetime) -> int:
    """What may still be ordered for ``claim`` at ``at`` (minor units): its share less what was
    returned or is reserved, never below 0; nothing for a pro rata share before ``payable_after``."""
    payable_after = claim.payable_after.ToDatetime(tzinfo=UTC) if claim.HasField("payable_after") else None
    return payable_amount(
        share=claim.share.minor_units,
        returned=claim.returned.minor_units,
        reserved=claim.reserved.minor_units,
        payable_after=payable_after,
        at=at,
    )
