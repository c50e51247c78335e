"""RiskService: the risk registry and the pre-payment check, on the broker's gRPC server.

Same bearer-JWT authentication as the Bus API; every refusal is a specific status with an
ErrorInfo reason (docs/integration.md lists them) and is audited like the Bus API's.

Check is the hot path: authentication, policy (kind, rate), field rules, then the keyed digest of
each identifier looked up in this replica's :class:`~broker.hub._risk_index.MarkIndex`. With a
bearer token bound to the CheckRequest's bytes (claim ``req``, as BusClient mints it) a check makes
no NATS round trip at all; an unbound token costs the replay-cache write every other call pays.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import structlog
from google.protobuf.message import Message
from greenchannel.v1 import envelope_pb2, risk_pb2, risk_pb2_grpc

from broker.protocol import AgencyKind, Clock, to_timestamp, validate_message

from ._account_cases import CaseKey
from ._auth import Authenticator
from ._case_links import LinkReader
from ._errors import OverloadedError, PermissionDeniedError, UnavailableError
from ._grpc_status import guard_unary, to_hub_error
from ._identifiers import IdentifierDigests
from ._policy import Policy
from ._refusals import RefusalSink
from ._risk_counts import CheckCounter, RateLimiter
from ._risk_index import MarkIndex
from ._risk_registry import MarkDesk

__all__ = ["CheckRateError", "RiskServicer"]

log = structlog.get_logger(__name__)

_R = risk_pb2


class CheckRateError(OverloadedError):
    """An agency checked faster than its policy rate; RetryInfo says when it may again."""

    reason = "CHECK_RATE_EXCEEDED"

    def __init__(self, message: str, *, retry_after: timedelta) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def _as_bound(message: Message) -> envelope_pb2.SignedMessage:
    """The bytes a bearer token may be bound to (claim ``req``): the call's own request.

    A bound token skips the replay-cache write, as on Submit: replayed within its five minutes, it
    can only ask the very same question again as the same agency (the same answer; counted, and
    charged to that agency's rate). That keeps a check free of any NATS round trip. An unbound
    token works as everywhere else (one replay-cache write)."""
    return envelope_pb2.SignedMessage(payload=message.SerializeToString(deterministic=True))


def _validated(message: object) -> None:
    try:
        validate_message(message)  # type: ignore[arg-type]
    except Exception as exc:
        raise to_hub_error(exc) from exc


class RiskServicer(risk_pb2_grpc.RiskServiceServicer):
    def __init__(
        self,
        *,
        auth: Authenticator,
        desk: MarkDesk,
        index: MarkIndex,
        counter: CheckCounter,
        digests: IdentifierDigests,
        policy: Policy,
        clock: Clock,
        refusals: RefusalSink | None = None,
    ) -> None:
        self.links: LinkReader | None = None
        """Case linkage, answering ListLinks (the broker wires it once it has made it)."""
        self.refusals = refusals
        """Where refused calls are reported (the guards read it)."""
        self._auth = auth
        self._desk = desk
        self._index = index
        self._counter = counter
        self._digests = digests
        self._policy = policy
        self._clock = clock
        rules = policy.risk
        self._limiter = RateLimiter(rate=rules.check_rate, burst=rules.check_burst)

    @guard_unary
    async def Check(
        self, request: risk_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.CheckResponse:
        caller = await self._auth.authenticate(context, request=_as_bound(request))
        me = caller.agency
        rules = self._policy.risk
        if me.kind not in rules.check:
            raise PermissionDeniedError(
                f"policy lets no {me.kind} agency check the risk registry (allowed: "
                f"{', '.join(sorted(rules.check)) or 'nobody'})",
                reason="CHECK_NOT_ALLOWED",
            )
        wait = self._limiter.take(me.id, max(len(request.identifiers), 1))
        if wait is not None:
            self._counter.throttle(me.id)
            raise CheckRateError(
                f"{me.id!r} checks faster than its policy rate ({rules.check_rate} identifiers per second)",
                retry_after=timedelta(seconds=max(wait, 0.001)),
            )
        _validated(request)
        now = self._clock.now()
        verdicts = []
        marked = 0
        for i, identifier in enumerate(request.identifiers):
            found = self._index.verdict(self._digests.of(identifier).digest, now)
            if found is None:
                verdicts.append(_R.RiskVerdict(index=i))
                continue
            marked += 1
            verdicts.append(
                _R.RiskVerdict(
                    index=i,
                    grade=found.grade,
                    reason=found.reason,
                    marked_until=to_timestamp(found.expires_at),
                )
            )
        self._counter.count(me.id, checked=len(verdicts), marked=marked)
        return _R.CheckResponse(verdicts=verdicts)

    @guard_unary
    async def Mark(
        self, request: risk_pb2.MarkRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.MarkResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        return await self._desk.mark(caller, request.mark)

    @guard_unary
    async def DecideMark(
        self, request: risk_pb2.DecideMarkRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.DecideMarkResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        return await self._desk.decide(caller, request.decision)

    @guard_unary
    async def Unmark(
        self, request: risk_pb2.UnmarkRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.UnmarkResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        return await self._desk.unmark(caller, request.unmark)

    @guard_unary
    async def ListMarks(
        self, request: risk_pb2.ListMarksRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.ListMarksResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        return await self._desk.list_marks(caller, request.case_number)

    @guard_unary
    async def ListLinks(
        self, request: risk_pb2.ListLinksRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.ListLinksResponse:
        caller = await self._auth.authenticate(context)
        _validated(request)
        me = caller.agency
        if me.kind is not AgencyKind.POLICE:
            # A case's links name other police forces' cases: only the police owning it read them.
            raise PermissionDeniedError(
                f"the links of a case are read by the police owning it; {me.id!r} is a {me.kind}",
                reason="NOT_CASE_PARTY",
            )
        if self.links is None:
            raise UnavailableError("this broker does not link cases")
        links = await self.links.links_of(CaseKey(me.id, request.case_number))
        return _R.ListLinksResponse(links=links)

    @guard_unary
    async def CheckCounts(
        self, request: risk_pb2.CheckCountsRequest, context: grpc.aio.ServicerContext
    ) -> risk_pb2.CheckCountsResponse:
        caller = await self._auth.authenticate(context, request=_as_bound(request))
        _validated(request)
        me = caller.agency
        regulator = me.kind is AgencyKind.REGULATOR
        if request.agency and request.agency != me.id and not regulator:
            raise PermissionDeniedError(
                "an agency reads its own check counts; regulators read every agency's",
                reason="NOT_OWN_COUNTS",
            )
        agency = request.agency or (None if regulator else me.id)
        return _R.CheckCountsResponse(counts=await self._counter.counts(agency))
