"""Victim follow-ups (回访): after a return pays victims back, the police owning the case call each
victim back, within the SLA policy's deadline (``follow_up``, execute "3wd").

When a RETURN_FUNDS reaches EXECUTED or PARTIALLY_EXECUTED, the broker sends one FOLLOW_UP per
payout the bank reports as paid (``result.returns``, amount > 0) to the police owning the return's
case, under the return's case reference, with the return as its parent, signed by the broker
(:meth:`broker.hub._submit.Intake.originate`, as the appeals' lifting orders). The victim is named
by the payout's keyed digest from the account's return record (never the account in clear).

Each follow-up goes out under an idempotency key derived from (return id, payout index), so the
outcome hook (:meth:`FollowUps.after_outcome`, run for every outcome the events consumer processes,
again until it succeeds) may run any number of times: each payout gets one follow-up. A failure
raises, so the outcome is processed again. The police desk's answer (EXECUTED with
``result.follow_up``, the advice in ``detail``) is the signed record of the call; an unanswered
follow-up escalates at its execute deadline like any other request.
"""

from __future__ import annotations

import structlog
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from broker.protocol import EXECUTED_STATES

from ._returns import ReturnRecords
from ._submit import Intake

__all__ = ["FollowUps", "follow_up_key", "follow_up_order"]

log = structlog.get_logger(__name__)


def follow_up_key(return_id: str, payout_index: int) -> str:
    """The broker's idempotency key of a payout's follow-up: sent once, however often asked."""
    return f"follow-up-{return_id}-{payout_index}"


def follow_up_order(
    status: lifecycle_pb2.RequestStatus, payout: int, *, victim_id: str, returned: common_pb2.Money
) -> requests_pb2.Request:
    """The broker's FOLLOW_UP of one paid payout of a return, to the police owning its case."""
    return requests_pb2.Request(
        case_ref=status.case_ref,
        priority=common_pb2.PRIORITY_STANDARD,
        recipient=status.case_ref.issuing_agency,
        parent_id=status.id,
        follow_up=requests_pb2.FollowUp(
            return_request_id=status.id, payout_index=payout, victim_id=victim_id, returned=returned
        ),
    )


class FollowUps:
    """Sends the victim follow-ups of executed returns (an outcome hook of the events consumer)."""

    def __init__(self, *, records: ReturnRecords, intake: Intake) -> None:
        self._records = records
        self._intake = intake

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        """A return that paid victims: one follow-up per paid payout (idempotent; raises on failure)."""
        await self.send(status)

    async def send(self, status: lifecycle_pb2.RequestStatus) -> list[lifecycle_pb2.RequestStatus]:
        """Send (once each) the follow-ups of a return's paid payouts; the orders, as accepted."""
        if status.type != common_pb2.REQUEST_TYPE_RETURN_FUNDS or status.state not in EXECUTED_STATES:
            return []
        paid = [p for p in status.result.returns if p.amount.minor_units > 0]
        if not paid:
            return []
        victims: dict[int, str] = {}
        if status.allocation.node_id:
            record, _ = await self._records.get(status.allocation.node_id)
            victims = {e.payout_index: e.victim_id for e in record.entries if e.request_id == status.id}
        sent = []
        for payout in paid:
            order = follow_up_order(
                status,
                payout.payout_index,
                victim_id=victims.get(payout.payout_index, ""),
                returned=payout.amount,
            )
            sent.append(
                await self._intake.originate(
                    order, idempotency_key=follow_up_key(status.id, payout.payout_index)
                )
            )
        log.info("returns.follow_ups_sent", request_id=status.id, follow_ups=len(sent))
        return sent
