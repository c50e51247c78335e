"""``greenchannel.v1.CarrierService`` over gRPC, backed by a :class:`CarrierCore`."""

from __future__ import annotations

from typing import Any

from greenchannel.v1 import carrier_pb2, carrier_pb2_grpc

from agencies._common import answer

from ._core import CarrierCore

__all__ = ["CARRIER_SERVICE", "CarrierServicer"]

CARRIER_SERVICE = carrier_pb2.DESCRIPTOR.services_by_name["CarrierService"].full_name
"""Full gRPC service name, for health checks and reflection."""


class CarrierServicer(carrier_pb2_grpc.CarrierServiceServicer):
    """Maps each RPC onto the core; the core validates, journals and decides."""

    def __init__(self, core: CarrierCore) -> None:
        self._core = core

    async def BlockNumber(
        self, request: carrier_pb2.BlockNumberRequest, context: Any
    ) -> carrier_pb2.BlockNumberResponse:
        return await answer(self._core.block_number, request, context, method="BlockNumber")

    async def WarnSubscriber(
        self, request: carrier_pb2.WarnSubscriberRequest, context: Any
    ) -> carrier_pb2.WarnSubscriberResponse:
        return await answer(self._core.warn_subscriber, request, context, method="WarnSubscriber")

    async def QuerySubscriberData(
        self, request: carrier_pb2.QuerySubscriberDataRequest, context: Any
    ) -> carrier_pb2.QuerySubscriberDataResponse:
        return await answer(self._core.query_subscriber_data, request, context, method="QuerySubscriberData")

    async def LiftBlock(
        self, request: carrier_pb2.LiftBlockRequest, context: Any
    ) -> carrier_pb2.LiftBlockResponse:
        return await answer(self._core.lift_block, request, context, method="LiftBlock")
