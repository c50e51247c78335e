"""BusService: submit, follow and act on requests."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
)

from broker.protocol import (
    APPEAL_RULING_TYPE,
    CANCELLATION_TYPE,
    FRAUD_REPORT_FEEDBACK_TYPE,
    AgencyKind,
    Clock,
    Registry,
    request_type_of,
    status_filter,
    status_parties,
    type_name,
    validate_message,
)

from ._admission import Admission
from ._appeals import AppealDesk
from ._auth import Authenticator, Caller
from ._errors import HubError, IllegalTransitionError, InvalidRequestError, PermissionDeniedError
from ._events import BrokerEvents, Refused
from ._feedback import FeedbackDesk
from ._grpc_status import guard_stream, guard_unary, to_hub_error
from ._policy import Policy
from ._refusals import RefusalSink, note_message_type
from ._returns_service import ReturnsService
from ._signed import signed_by_caller
from ._store import RequestStore
from ._submit import Intake
from ._trail_service import TrailService
from ._watchlog import WatchLog, WatchPosition

__all__ = ["PAGE_BYTES", "BusServicer"]

log = structlog.get_logger(__name__)

_DEFAULT_PAGE = 100
PAGE_BYTES = 3 * 1024 * 1024
"""Encoded bytes a List page stays under. gRPC clients refuse a message over 4 MiB unless told
otherwise, and a hundred statuses with long timelines passed that; the margin covers framing."""
# Per item in ListResponse.requests: one tag byte and a length varint (a status is < 2^28 bytes).
_ITEM_OVERHEAD = 5


def _is_green(signed: envelope_pb2.SignedMessage) -> bool:
    """The priority the request claims, read before anything is checked (only to order shedding:
    a request that lies about it is refused by the full checks all the same).

    Also notes the request's type for the refusal audit: its name, nothing else of the body."""
    try:
        request = requests_pb2.Request.FromString(signed.payload)
    except DecodeError:
        return False
    if request.WhichOneof("body") is not None:
        note_message_type(type_name(request_type_of(request)))
    return request.priority == common_pb2.PRIORITY_GREEN


def _party_of(agency_id: str) -> Callable[[str], bool]:
    def admit(subject: str) -> bool:
        return agency_id in status_parties(subject)

    return admit


def _validated(message: object, prefix: str = "") -> None:
    try:
        validate_message(message, prefix=prefix)  # type: ignore[arg-type]
    except Exception as exc:
        raise to_hub_error(exc) from exc


class BusServicer(bus_pb2_grpc.BusServiceServicer):
    def __init__(
        self,
        *,
        auth: Authenticator,
        intake: Intake,
        requests: RequestStore,
        watchlog: WatchLog,
        policy: Policy,
        registry: Registry,
        broker_events: BrokerEvents,
        clock: Clock,
        trail: TrailService,
        returns: ReturnsService | None = None,
        page_bytes: int = PAGE_BYTES,
        admission: Admission | None = None,
        refusals: RefusalSink | None = None,
        appeals: AppealDesk | None = None,
        feedback: FeedbackDesk | None = None,
    ) -> None:
        self._appeals = appeals
        self._feedback = feedback
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._admission = admission or Admission()
        self._trail = trail
        self._returns = returns
        self._page_bytes = page_bytes
        self._auth = auth
        self._intake = intake
        self._requests = requests
        self._watchlog = watchlog
        self._policy = policy
        self._registry = registry
        self._broker_events = broker_events
        self._clock = clock

    # -- reading ---------------------------------------------------------------------------

    def _readable(self, caller: Caller, status: lifecycle_pb2.RequestStatus) -> bool:
        return self._policy.can_read(
            caller.agency,
            sender=status.sender,
            recipient=status.recipient,
            case_owner=status.case_ref.issuing_agency,
        )

    async def _readable_status(self, caller: Caller, request_id: str) -> lifecycle_pb2.RequestStatus:
        status = (await self._requests.get(request_id)).status
        if not self._readable(caller, status):
            raise PermissionDeniedError(
                "this request is neither sent by, addressed to, nor in a case of the caller"
            )
        return status

    @guard_unary
    async def Get(
        self, request: bus_pb2.GetRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        return bus_pb2.GetResponse(status=await self._readable_status(caller, request.id))

    @guard_stream
    async def Watch(
        self, request: bus_pb2.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bus_pb2.WatchResponse]:
        caller = await self._auth.authenticate(context)
        _validated(request)
        me = caller.agency
        regulator = me.kind == AgencyKind.REGULATOR
        scope = request.WhichOneof("scope")
        if scope == "request_id":
            await self._readable_status(caller, request.request_id)
            subject_filter = status_filter(request_id=request.request_id)
        elif scope == "case_number":
            if not regulator:
                await self._may_watch_case(me.id, request.case_number)
            subject_filter = status_filter(case_number=request.case_number)
        else:
            subject_filter = status_filter()
        position = WatchPosition(after_cursor=request.after_cursor, only_new=request.only_new)
        log.info("watch.started", agency=me.id, scope=scope or "mine", after_cursor=request.after_cursor)
        # Server-side filters cannot express "sender OR recipient OR case owner" without
        # overlapping subjects, so the parties are checked here, on the subject each record was
        # published under (it names them): no read per record.
        admit = None if regulator or scope == "request_id" else _party_of(me.id)
        async for record in self._watchlog.follow([subject_filter], position, admit=admit):
            yield record

    async def _may_watch_case(self, agency_id: str, case_number: str) -> None:
        """A case is watched by its parties: the police owning it, and whoever sent or received a
        request of it. A case with no request yet is let through: its owner may watch it before
        the first request (the stream then shows only what the caller is party to)."""
        parties = await self._watchlog.case_parties(case_number)
        if parties and agency_id not in parties:
            raise PermissionDeniedError(
                "the caller is no party to this case: neither its owner nor sender or recipient of"
                " any of its requests",
                reason="NOT_CASE_PARTY",
            )

    @guard_unary
    async def List(
        self, request: bus_pb2.ListRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.ListResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        after = request.submitted_after.ToDatetime() if request.HasField("submitted_after") else None
        before = request.submitted_before.ToDatetime() if request.HasField("submitted_before") else None
        cursor = _decode_token(request.page_token)
        size = request.page_size or _DEFAULT_PAGE
        matches: list[lifecycle_pb2.RequestStatus] = []
        async for status in self._requests.scan():
            if cursor and status.id >= cursor:
                continue
            if not self._readable(caller, status):
                continue
            if request.role == bus_pb2.ROLE_SENDER and status.sender != caller.agency.id:
                continue
            if request.role == bus_pb2.ROLE_RECIPIENT and status.recipient != caller.agency.id:
                continue
            if request.states and status.state not in request.states:
                continue
            if request.types and status.type not in request.types:
                continue
            if request.case_number and status.case_ref.case_number != request.case_number:
                continue
            submitted = status.submitted_at.ToDatetime()
            if (after and submitted < after) or (before and submitted >= before):
                continue
            matches.append(status)
        # UUIDv7 ids sort by submission time: newest first, and the last id is the page cursor.
        matches.sort(key=lambda s: s.id, reverse=True)
        page = _bounded_page(matches, size=size, budget=self._page_bytes)
        next_token = _encode_token(page[-1].id) if len(matches) > len(page) else ""
        return bus_pb2.ListResponse(requests=page, next_page_token=next_token)

    # -- the money trail (TrailService authenticates, authorizes and guards) ------------------

    async def GetTrail(
        self, request: bus_pb2.GetTrailRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetTrailResponse:
        return await self._trail.GetTrail(request, context)

    async def SetChasing(
        self, request: bus_pb2.SetChasingRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.SetChasingResponse:
        return await self._trail.SetChasing(request, context)

    async def GetAllocation(
        self, request: bus_pb2.GetAllocationRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GetAllocationResponse:
        if self._returns is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this broker keeps no allocations")
        assert self._returns is not None
        return await self._returns.GetAllocation(request, context)

    # -- acting ----------------------------------------------------------------------------

    @guard_unary
    async def Submit(
        self, request: bus_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.SubmitResponse:
        with self._admission.admit(green=_is_green(request.request)):
            caller = await self._auth.authenticate(context, request=request.request)
            _validated(request)
            outcome = await self._intake.submit(caller, request.request)
        return bus_pb2.SubmitResponse(status=outcome.status, duplicate=outcome.duplicate)

    @guard_unary
    async def Extend(
        self, request: bus_pb2.ExtendRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.ExtendResponse:
        with self._admission.admit(green=_is_green(request.request)):
            caller = await self._auth.authenticate(context, request=request.request)
            _validated(request)
            outcome = await self._intake.submit(caller, request.request, body="extend")
        return bus_pb2.ExtendResponse(status=outcome.status)

    @guard_unary
    async def Release(
        self, request: bus_pb2.ReleaseRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.ReleaseResponse:
        with self._admission.admit(green=_is_green(request.request)):
            caller = await self._auth.authenticate(context, request=request.request)
            _validated(request)
            outcome = await self._intake.submit(caller, request.request, body="release")
        return bus_pb2.ReleaseResponse(status=outcome.status)

    @guard_unary
    async def Cancel(
        self, request: bus_pb2.CancelRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.CancelResponse:
        note_message_type(CANCELLATION_TYPE)
        caller = await self._auth.authenticate(context)
        _validated(request)
        cancellation, _ = signed_by_caller(
            lifecycle_pb2.Cancellation,
            request.cancellation,
            jws_type=CANCELLATION_TYPE,
            caller=caller,
            keys=self._registry,
            clock=self._clock,
            field="cancellation",
        )
        current = (await self._requests.get(cancellation.request_id)).status
        if current.sender != caller.agency.id:
            raise PermissionDeniedError("only the sender of a request may cancel it", reason="NOT_SENDER")
        try:
            status = await self._broker_events.emit(
                cancellation.request_id,
                common_pb2.REQUEST_STATE_CANCELLED,
                reason=results_pb2.REASON_CODE_CANCELLED,
                detail=cancellation.reason,
            )
        except Refused as refused:
            raise IllegalTransitionError(
                "the request can no longer be cancelled: the agency has already taken it",
                reason=refused.reason,
            ) from refused
        log.info("request.cancelled", request_id=cancellation.request_id, sender=caller.agency.id)
        if self._returns is not None:
            # A cancelled return frees its reservation now (the next order on the account would
            # find it ended anyway, should this write fail).
            with contextlib.suppress(HubError):
                await self._returns.returns.after_outcome(status)
        return bus_pb2.CancelResponse(status=status)

    @guard_unary
    async def DecideAppeal(
        self, request: bus_pb2.DecideAppealRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.DecideAppealResponse:
        note_message_type(APPEAL_RULING_TYPE)
        caller = await self._auth.authenticate(context)
        _validated(request)
        if self._appeals is None:
            raise PermissionDeniedError("this broker decides no appeals", reason="NOT_APPEAL_RECIPIENT")
        return await self._appeals.decide(caller, request.ruling)

    @guard_unary
    async def GiveFeedback(
        self, request: bus_pb2.GiveFeedbackRequest, context: grpc.aio.ServicerContext
    ) -> bus_pb2.GiveFeedbackResponse:
        note_message_type(FRAUD_REPORT_FEEDBACK_TYPE)
        caller = await self._auth.authenticate(context)
        _validated(request)
        if self._feedback is None:
            raise PermissionDeniedError("this broker takes no feedback", reason="NOT_REPORT_RECIPIENT")
        return await self._feedback.give(caller, request.feedback)


def _bounded_page(
    matches: list[lifecycle_pb2.RequestStatus], *, size: int, budget: int
) -> list[lifecycle_pb2.RequestStatus]:
    """The first ``size`` matches, fewer if their encoding would pass ``budget`` bytes (at least one,
    so a page always moves the cursor on)."""
    page: list[lifecycle_pb2.RequestStatus] = []
    used = 0
    for status in matches[:size]:
        used += status.ByteSize() + _ITEM_OVERHEAD
        if page and used > budget:
            break
        page.append(status)
    return page


def _encode_token(request_id: str) -> str:
    return base64.urlsafe_b64encode(request_id.encode()).decode()


def _decode_token(token: str) -> str:
    if not token:
        return ""
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(
            "page_token is not one this service issued", reason="BAD_PAGE_TOKEN"
        ) from exc
