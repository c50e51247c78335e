"""The Bus API's ``GetAllocation``, mounted on ``BusServicer``.

Who may read an account's allocation: the police owning a case that holds money on the account
(naming that case; they see every case's claims on the account, since each owner must see who
else is paid from it), and regulators (naming the case owner). Anyone else: PERMISSION_DENIED.
A case that holds no money on the account: NOT_FOUND.
"""

from __future__ import annotations

import grpc
from greenchannel.v1 import bus_pb2

from broker.protocol import AgencyKind, validate_message

from ._account_cases import CaseKey
from ._auth import Authenticator
from ._errors import InvalidRequestError, PermissionDeniedError
from ._grpc_status import guard_unary, to_hub_error
from ._refusals import RefusalSink
from ._returns import Returns

__all__ = ["ReturnsService"]


class ReturnsService:
    """``GetAllocation`` as a grpc.aio unary method; ``BusServicer`` delegates to it."""

    def __init__(self, *, auth: Authenticator, returns: Returns, refusals: RefusalSink | None = None) -> None:
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._auth = auth
        self._returns = returns

    @property
    def returns(self) -> Returns:
        """The broker's returns (the Bus API's Cancel settles a cancelled order through it)."""
        return self._returns

    @guard_unary
    async def GetAllocation(
        self, request: bus_pb2.GetAllocationRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetAllocationResponse:
        caller = await self._auth.authenticate(context)
        try:
            validate_message(request)
        except Exception as exc:
            raise to_hub_error(exc) from exc
        me = caller.agency
        if me.kind is AgencyKind.REGULATOR:
            if not request.issuing_agency:
                raise InvalidRequestError(
                    "regulators name the police agency owning the case (issuing_agency)",
                    reason="OWNER_REQUIRED",
                )
        elif me.kind is not AgencyKind.POLICE or request.issuing_agency not in ("", me.id):
            raise PermissionDeniedError(
                "only the police owning a case that holds the account, and regulators, read its allocation",
                reason="NOT_CASE_OWNER",
            )
        case = CaseKey(issuing_agency=request.issuing_agency or me.id, case_number=request.case_number)
        allocation = await self._returns.read(case, request.account)
        return bus_pb2.GetAllocationResponse(allocation=allocation)
