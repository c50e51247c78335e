"""The Bus API's money-trail calls, ``GetTrail`` and ``SetChasing``, mounted on ``BusServicer``.

Who may do what: the police agency owning a case reads its trail and switches its chasing;
regulators read every trail (naming the case owner) and switch nothing; nobody else sees a trail,
not even a bank that holds money in it (a bank sees its own requests through Get and List).
"""

from __future__ import annotations

import grpc
import structlog
from greenchannel.v1 import bus_pb2, common_pb2

from broker.protocol import AgencyKind, validate_message

from ._auth import Authenticator
from ._errors import InvalidRequestError, PermissionDeniedError
from ._grpc_status import guard_unary, to_hub_error
from ._policy import Policy
from ._refusals import RefusalSink
from ._trail import TrailChaser

__all__ = ["TrailService"]

log = structlog.get_logger(__name__)


def _validated(message: object) -> None:
    try:
        validate_message(message)  # type: ignore[arg-type]
    except Exception as exc:
        raise to_hub_error(exc) from exc


class TrailService:
    """``GetTrail`` and ``SetChasing`` as grpc.aio unary methods; ``BusServicer`` delegates to them."""

    def __init__(
        self, *, auth: Authenticator, chaser: TrailChaser, policy: Policy, refusals: RefusalSink | None = None
    ) -> None:
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._auth = auth
        self._chaser = chaser
        self._policy = policy

    @guard_unary
    async def GetTrail(
        self, request: bus_pb2.GetTrailRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetTrailResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        me = caller.agency
        owner = request.issuing_agency or me.id
        if me.kind is AgencyKind.REGULATOR and not request.issuing_agency:
            raise InvalidRequestError(
                "regulators name the police agency owning the case (issuing_agency)", reason="OWNER_REQUIRED"
            )
        if not self._policy.can_watch_case(me, owner):
            raise PermissionDeniedError(
                "only the police owning the case and regulators read its money trail", reason="NOT_CASE_OWNER"
            )
        trail = await self._chaser.read(owner, request.case_number)
        return bus_pb2.GetTrailResponse(trail=trail)

    @guard_unary
    async def SetChasing(
        self, request: bus_pb2.SetChasingRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.SetChasingResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        me = caller.agency
        if me.kind is AgencyKind.REGULATOR:
            raise PermissionDeniedError("regulators read trails; they do not steer them", reason="READ_ONLY")
        if me.kind is not AgencyKind.POLICE:
            raise PermissionDeniedError(
                "only the police owning a case steer its chase", reason="NOT_CASE_OWNER"
            )
        case_ref = common_pb2.CaseRef(case_number=request.case_number, issuing_agency=me.id)
        trail = await self._chaser.set_chasing(
            case_ref, enabled=request.enabled, bounds=request.bounds if request.HasField("bounds") else None
        )
        log.info("trail.chasing_switched", agency=me.id, case=request.case_number, enabled=request.enabled)
        return bus_pb2.SetChasingResponse(trail=trail)
