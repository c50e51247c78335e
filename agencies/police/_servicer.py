"""``greenchannel.v1.PoliceService`` over gRPC, backed by a :class:`PoliceDesk`."""

from __future__ import annotations

from typing import Any

from greenchannel.v1 import police_pb2, police_pb2_grpc

from agencies._common import answer

from ._core import PoliceDesk

__all__ = ["POLICE_SERVICE", "PoliceServicer"]

POLICE_SERVICE = police_pb2.DESCRIPTOR.services_by_name["PoliceService"].full_name
"""Full gRPC service name, for health checks and reflection."""


class PoliceServicer(police_pb2_grpc.PoliceServiceServicer):
    """Maps each RPC onto the desk; the desk validates, journals and decides."""

    def __init__(self, desk: PoliceDesk) -> None:
        self._desk = desk

    async def HandleAssistance(
        self, request: police_pb2.HandleAssistanceRequest, context: Any
    ) -> police_pb2.HandleAssistanceResponse:
        return await answer(self._desk.handle_assistance, request, context, method="HandleAssistance")

    async def ReceiveFraudReport(
        self, request: police_pb2.ReceiveFraudReportRequest, context: Any
    ) -> police_pb2.ReceiveFraudReportResponse:
        return await answer(self._desk.receive_fraud_report, request, context, method="ReceiveFraudReport")

    async def FileAppeal(
        self, request: police_pb2.FileAppealRequest, context: Any
    ) -> police_pb2.FileAppealResponse:
        return await answer(self._desk.file_appeal, request, context, method="FileAppeal")

    async def FollowUpVictim(
        self, request: police_pb2.FollowUpVictimRequest, context: Any
    ) -> police_pb2.FollowUpVictimResponse:
        return await answer(self._desk.follow_up_victim, request, context, method="FollowUpVictim")

    async def DissuadeInPerson(
        self, request: police_pb2.DissuadeInPersonRequest, context: Any
    ) -> police_pb2.DissuadeInPersonResponse:
        return await answer(self._desk.dissuade_in_person, request, context, method="DissuadeInPerson")

    async def ReceiveLinkageNotice(
        self, request: police_pb2.ReceiveLinkageNoticeRequest, context: Any
    ) -> police_pb2.ReceiveLinkageNoticeResponse:
        return await answer(
            self._desk.receive_linkage_notice, request, context, method="ReceiveLinkageNotice"
        )
