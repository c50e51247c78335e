"""``greenchannel.v1.BankService`` over gRPC, backed by a :class:`BankCore`."""

from __future__ import annotations

from typing import Any

from greenchannel.v1 import bank_pb2, bank_pb2_grpc

from agencies._common import answer

from ._core import BankCore

__all__ = ["BANK_SERVICE", "BankServicer"]

BANK_SERVICE = bank_pb2.DESCRIPTOR.services_by_name["BankService"].full_name
"""Full gRPC service name, for health checks and reflection."""


class BankServicer(bank_pb2_grpc.BankServiceServicer):
    """Maps each RPC onto the core; the core validates, journals and decides."""

    def __init__(self, core: BankCore) -> None:
        self._core = core

    async def StopPayment(
        self, request: bank_pb2.StopPaymentRequest, context: Any
    ) -> bank_pb2.StopPaymentResponse:
        return await answer(self._core.stop_payment, request, context, method="StopPayment")

    async def Freeze(self, request: bank_pb2.FreezeRequest, context: Any) -> bank_pb2.FreezeResponse:
        return await answer(self._core.freeze, request, context, method="Freeze")

    async def ReleaseHold(
        self, request: bank_pb2.ReleaseHoldRequest, context: Any
    ) -> bank_pb2.ReleaseHoldResponse:
        return await answer(self._core.release_hold, request, context, method="ReleaseHold")

    async def ExtendHold(
        self, request: bank_pb2.ExtendHoldRequest, context: Any
    ) -> bank_pb2.ExtendHoldResponse:
        return await answer(self._core.extend_hold, request, context, method="ExtendHold")

    async def QueryBankData(
        self, request: bank_pb2.QueryBankDataRequest, context: Any
    ) -> bank_pb2.QueryBankDataResponse:
        return await answer(self._core.query_bank_data, request, context, method="QueryBankData")

    async def ReturnFunds(
        self, request: bank_pb2.ReturnFundsRequest, context: Any
    ) -> bank_pb2.ReturnFundsResponse:
        return await answer(self._core.return_funds, request, context, method="ReturnFunds")
