"""``greenchannel.v1.PlatformService`` over gRPC, backed by a :class:`PlatformCore`."""

from __future__ import annotations

from typing import Any

from greenchannel.v1 import platform_pb2, platform_pb2_grpc

from agencies._common import answer

from ._core import PlatformCore

__all__ = ["PLATFORM_SERVICE", "PlatformServicer"]

PLATFORM_SERVICE = platform_pb2.DESCRIPTOR.services_by_name["PlatformService"].full_name
"""Full gRPC service name, for health checks and reflection."""


class PlatformServicer(platform_pb2_grpc.PlatformServiceServicer):
    """Maps each RPC onto the core; the core validates, journals and decides."""

    def __init__(self, core: PlatformCore) -> None:
        self._core = core

    async def BlockAccount(
        self, request: platform_pb2.BlockAccountRequest, context: Any
    ) -> platform_pb2.BlockAccountResponse:
        return await answer(self._core.block_account, request, context, method="BlockAccount")

    async def WarnUser(
        self, request: platform_pb2.WarnUserRequest, context: Any
    ) -> platform_pb2.WarnUserResponse:
        return await answer(self._core.warn_user, request, context, method="WarnUser")

    async def QueryPlatformData(
        self, request: platform_pb2.QueryPlatformDataRequest, context: Any
    ) -> platform_pb2.QueryPlatformDataResponse:
        return await answer(self._core.query_platform_data, request, context, method="QueryPlatformData")

    async def LiftRestriction(
        self, request: platform_pb2.LiftRestrictionRequest, context: Any
    ) -> platform_pb2.LiftRestrictionResponse:
        return await answer(self._core.lift_restriction, request, context, method="LiftRestriction")
