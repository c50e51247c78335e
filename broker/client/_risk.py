"""``RiskClient``: the risk registry and the pre-payment check, on a :class:`BusClient`'s channel.

    async with BusClient(target, agency_id="bank-icbc", signing_key=key) as bus:
        verdicts = await bus.risk.check([RiskIdentifier(bank_account="6222...")])

It shares the BusClient's channel, its bearer tokens and its one retry policy
(:meth:`BusClient._call`); marks, decisions and unmarks are signed by the agency for the broker
(JWS types ``RISK_MARK``, ``MARK_DECISION``, ``RISK_UNMARK``). A retried Mark sends the same
signed bytes, which the broker answers as the first time (``duplicate``).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING

from google.protobuf import duration_pb2
from greenchannel.v1 import common_pb2, requests_pb2, risk_pb2, risk_pb2_grpc

from broker.protocol import MARK_DECISION_TYPE, RISK_MARK_TYPE, RISK_UNMARK_TYPE, to_timestamp

if TYPE_CHECKING:
    from ._bus import BusClient

__all__ = ["RiskClient"]

_R = risk_pb2


class RiskClient:
    """RiskService through a BusClient (``bus.risk``)."""

    def __init__(self, bus: BusClient) -> None:
        self._bus = bus
        self._stub = risk_pb2_grpc.RiskServiceStub(bus.channel)

    @property
    def _timeout(self) -> float:
        return self._bus.timeout

    async def check(
        self,
        identifiers: Sequence[risk_pb2.RiskIdentifier],
        *,
        purpose: risk_pb2.CheckPurpose.ValueType = _R.CHECK_PURPOSE_PAYMENT,
    ) -> risk_pb2.CheckResponse:
        """``RiskService.Check``: one verdict per identifier (at most 100), in order."""
        message = _R.CheckRequest(identifiers=list(identifiers), purpose=purpose)
        return await self._bus.call(
            lambda md: self._stub.Check(message, metadata=md, timeout=self._timeout), bound_to=message
        )

    def mark_message(
        self,
        identifier: risk_pb2.RiskIdentifier,
        *,
        grade: risk_pb2.RiskGrade.ValueType,
        reason: risk_pb2.RiskReason.ValueType,
        case: common_pb2.CaseRef,
        valid_for: timedelta | None = None,
        mark_id: str | None = None,
    ) -> risk_pb2.MarkRequest:
        """A signed Mark, ready to send (and to send again, byte for byte, on a retry)."""
        mark = _R.RiskMark(
            mark_id=mark_id or str(uuid.uuid4()),
            identifier=identifier,
            grade=grade,
            reason=reason,
            case=case,
            issued_at=to_timestamp(self._bus.clock.now()),
        )
        if valid_for is not None:
            duration = duration_pb2.Duration()
            duration.FromTimedelta(valid_for)
            mark.valid_for.CopyFrom(duration)
        return _R.MarkRequest(mark=self._bus.sign_for_broker(mark, RISK_MARK_TYPE))

    async def mark(
        self,
        identifier: risk_pb2.RiskIdentifier,
        *,
        grade: risk_pb2.RiskGrade.ValueType,
        reason: risk_pb2.RiskReason.ValueType,
        case: common_pb2.CaseRef,
        valid_for: timedelta | None = None,
        mark_id: str | None = None,
    ) -> risk_pb2.MarkResponse:
        """``RiskService.Mark``: ACTIVE for the police owning ``case``, PROPOSED for others."""
        message = self.mark_message(
            identifier, grade=grade, reason=reason, case=case, valid_for=valid_for, mark_id=mark_id
        )
        return await self.mark_signed(message)

    async def mark_signed(self, message: risk_pb2.MarkRequest) -> risk_pb2.MarkResponse:
        return await self._bus.call(lambda md: self._stub.Mark(message, metadata=md, timeout=self._timeout))

    async def decide_mark(self, mark_id: str, *, confirm: bool, reason: str = "") -> risk_pb2.MarkStatus:
        """``RiskService.DecideMark``: confirm (ACTIVE) or refuse a proposed mark of a case this
        agency owns."""
        decision = _R.MarkDecision(
            mark_id=mark_id, confirm=confirm, reason=reason, issued_at=to_timestamp(self._bus.clock.now())
        )
        message = _R.DecideMarkRequest(decision=self._bus.sign_for_broker(decision, MARK_DECISION_TYPE))
        reply: risk_pb2.DecideMarkResponse = await self._bus.call(
            lambda md: self._stub.DecideMark(message, metadata=md, timeout=self._timeout)
        )
        return reply.status

    async def unmark(self, mark_id: str, *, reason: str) -> risk_pb2.MarkStatus:
        """``RiskService.Unmark``: lift a mark of a case this agency owns."""
        unmark = _R.RiskUnmark(mark_id=mark_id, reason=reason, issued_at=to_timestamp(self._bus.clock.now()))
        message = _R.UnmarkRequest(unmark=self._bus.sign_for_broker(unmark, RISK_UNMARK_TYPE))
        reply: risk_pb2.UnmarkResponse = await self._bus.call(
            lambda md: self._stub.Unmark(message, metadata=md, timeout=self._timeout)
        )
        return reply.status

    async def list_marks(self, case_number: str) -> list[risk_pb2.MarkStatus]:
        """``RiskService.ListMarks``: every mark of a case (its owner, or a regulator)."""
        message = _R.ListMarksRequest(case_number=case_number)
        reply: risk_pb2.ListMarksResponse = await self._bus.call(
            lambda md: self._stub.ListMarks(message, metadata=md, timeout=self._timeout)
        )
        return list(reply.marks)

    async def links(self, case_number: str) -> list[requests_pb2.LinkageNotice]:
        """``RiskService.ListLinks``: the links (串并) of one of this police agency's cases, each as
        the last linkage notice about it said, most recent first."""
        message = _R.ListLinksRequest(case_number=case_number)
        reply: risk_pb2.ListLinksResponse = await self._bus.call(
            lambda md: self._stub.ListLinks(message, metadata=md, timeout=self._timeout)
        )
        return list(reply.links)

    async def check_counts(self, agency: str = "") -> list[risk_pb2.AgencyCheckCount]:
        """``RiskService.CheckCounts``: this agency's counts (a regulator: any agency's, or all)."""
        message = _R.CheckCountsRequest(agency=agency)
        reply: risk_pb2.CheckCountsResponse = await self._bus.call(
            lambda md: self._stub.CheckCounts(message, metadata=md, timeout=self._timeout), bound_to=message
        )
        return list(reply.counts)
