"""``BusClient``: submit and follow requests in a few lines.

    async with BusClient("127.0.0.1:50051", agency_id="police-310115", signing_key=key) as bus:
        accepted = await bus.submit(request)
        async for update in bus.watch(request_id=accepted.status.id):
            ...

The client signs every request body with the agency key, mints a fresh single-use bearer token
for every call (bound to the signed request on Submit, Extend and Release, which spares the
broker its replay-cache write), always sets an idempotency key (so retrying a submit can never
create a second request), retries calls that failed for transient reasons with the same signed
bytes, and resumes a broken Watch from its last cursor. Every unary call of the Bus, Registry and Ledger
services goes through one retry policy (:meth:`BusClient._call`).
"""

from __future__ import annotations

import asyncio
import builtins
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    common_pb2,
    envelope_pb2,
    ledger_pb2,
    ledger_pb2_grpc,
    lifecycle_pb2,
    registry_pb2,
    registry_pb2_grpc,
    requests_pb2,
    results_pb2,
    trail_pb2,
)

from broker.protocol import (
    APPEAL_RULING_TYPE,
    BROKER_ID,
    CANCELLATION_TYPE,
    FRAUD_REPORT_FEEDBACK_TYPE,
    Clock,
    SigningKey,
    SystemClock,
    sign_message,
    sign_request,
    to_timestamp,
)

from ._appeals import seal_statement
from ._errors import error_details
from ._metadata import bearer_metadata
from ._risk import RiskClient

__all__ = ["LEDGER_PAGE", "BusClient"]

T = TypeVar("T")

_TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
_LIST_PAGE = 1000  # the largest page BusService.List serves
LEDGER_PAGE = 5000
"""The largest page LedgerService serves."""


class BusClient:
    """An agency's client of the Bus API. An async context manager owning one channel."""

    def __init__(
        self,
        target: str,
        *,
        agency_id: str,
        signing_key: SigningKey,
        clock: Clock | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 10.0,
        attempts: int = 4,
        backoff: float = 0.2,
    ) -> None:
        self.agency_id = agency_id
        self._key = signing_key
        self._clock = clock or SystemClock()
        self._timeout = timeout
        self._attempts = attempts
        self._backoff = backoff
        self._channel = (
            grpc.aio.secure_channel(target, credentials) if credentials else grpc.aio.insecure_channel(target)
        )
        self._bus = bus_pb2_grpc.BusServiceStub(self._channel)
        self._registry = registry_pb2_grpc.RegistryServiceStub(self._channel)
        self._ledger = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self.risk = RiskClient(self)
        """RiskService on this channel: check, mark, decide_mark, unmark, list_marks, check_counts."""

    @property
    def channel(self) -> grpc.aio.Channel:
        """The one channel every stub of this client uses."""
        return self._channel

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def clock(self) -> Clock:
        return self._clock

    async def __aenter__(self) -> BusClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._channel.close()

    def _metadata(self, request: envelope_pb2.SignedMessage | None = None) -> tuple[tuple[str, str], ...]:
        return bearer_metadata(
            self._key,
            agency_id=self.agency_id,
            clock=self._clock,
            request_payload=None if request is None else request.payload,
        )

    async def call(
        self,
        invoke: Callable[[tuple[tuple[str, str], ...]], Awaitable[T]],
        *,
        bound_to: Message | None = None,
    ) -> T:
        """A unary call of another service on this channel, under this client's retry policy.

        ``bound_to``: the call's request, where the service accepts a token bound to its bytes
        (RiskService.Check and CheckCounts): the broker then needs no replay-cache write."""
        bound = None
        if bound_to is not None:
            bound = envelope_pb2.SignedMessage(payload=bound_to.SerializeToString(deterministic=True))
        return await self._call(invoke, request=bound)

    async def _call(
        self,
        invoke: Callable[[tuple[tuple[str, str], ...]], Awaitable[T]],
        *,
        request: envelope_pb2.SignedMessage | None = None,
    ) -> T:
        """Retry transient failures; each attempt gets a fresh token (tokens are single-use).

        ``request``: the signed request the call carries; each token is bound to it, so the
        broker needs no replay-cache write for the call."""
        for attempt in range(1, self._attempts + 1):
            try:
                return await invoke(self._metadata(request))
            except grpc.aio.AioRpcError as exc:
                delay = self._backoff * 2 ** (attempt - 1)
                if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                    # Only the broker shedding load is worth a retry (a message too big is not),
                    # after the delay it asks for, spread so shed clients do not return together.
                    details = error_details(exc)
                    if details.reason != "OVERLOADED" or attempt == self._attempts:
                        raise
                    asked = details.retry_delay.total_seconds() if details.retry_delay else 0.0
                    await asyncio.sleep(max(asked, delay) * random.uniform(1.0, 1.5))  # noqa: S311 -- jitter
                    continue
                if exc.code() not in _TRANSIENT or attempt == self._attempts:
                    raise
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    # -- requests --------------------------------------------------------------------------

    def sign(
        self, request: requests_pb2.Request, *, idempotency_key: str | None = None
    ) -> envelope_pb2.SignedMessage:
        """Complete (issued_at, idempotency key) and sign a request as this agency."""
        prepared = requests_pb2.Request()
        prepared.CopyFrom(request)
        if not prepared.HasField("issued_at"):
            prepared.issued_at.CopyFrom(to_timestamp(self._clock.now()))
        if idempotency_key:
            prepared.idempotency_key = idempotency_key
        elif not prepared.idempotency_key:
            prepared.idempotency_key = uuid.uuid4().hex
        return sign_request(prepared, key=self._key, sender=self.agency_id, clock=self._clock)

    async def submit(
        self, request: requests_pb2.Request, *, idempotency_key: str | None = None
    ) -> bus_pb2.SubmitResponse:
        signed = self.sign(request, idempotency_key=idempotency_key)
        return await self.submit_signed(signed)

    async def submit_signed(self, signed: envelope_pb2.SignedMessage) -> bus_pb2.SubmitResponse:
        # The same signed bytes on every attempt: the broker recognises the retry by its key.
        message = bus_pb2.SubmitRequest(request=signed)
        return await self._call(
            lambda md: self._bus.Submit(message, metadata=md, timeout=self._timeout), request=signed
        )

    async def extend(self, request: requests_pb2.Request) -> lifecycle_pb2.RequestStatus:
        message = bus_pb2.ExtendRequest(request=self.sign(request))
        reply: bus_pb2.ExtendResponse = await self._call(
            lambda md: self._bus.Extend(message, metadata=md, timeout=self._timeout), request=message.request
        )
        return reply.status

    async def release(self, request: requests_pb2.Request) -> lifecycle_pb2.RequestStatus:
        message = bus_pb2.ReleaseRequest(request=self.sign(request))
        reply: bus_pb2.ReleaseResponse = await self._call(
            lambda md: self._bus.Release(message, metadata=md, timeout=self._timeout), request=message.request
        )
        return reply.status

    def sign_for_broker(self, message: Message, message_type: str) -> envelope_pb2.SignedMessage:
        """A message this agency signs for the broker itself (a cancellation, a ruling, a mark)."""
        return sign_message(
            message.SerializeToString(),
            key=self._key,
            issuer=self.agency_id,
            audience=BROKER_ID,
            message_type=message_type,
            clock=self._clock,
        )

    async def cancel(self, request_id: str, reason: str = "") -> lifecycle_pb2.RequestStatus:
        cancellation = lifecycle_pb2.Cancellation(
            request_id=request_id, reason=reason, issued_at=to_timestamp(self._clock.now())
        )
        message = bus_pb2.CancelRequest(cancellation=self.sign_for_broker(cancellation, CANCELLATION_TYPE))
        reply: bus_pb2.CancelResponse = await self._call(
            lambda md: self._bus.Cancel(message, metadata=md, timeout=self._timeout)
        )
        return reply.status

    # -- reading ---------------------------------------------------------------------------

    async def get(self, request_id: str) -> lifecycle_pb2.RequestStatus:
        message = bus_pb2.GetRequest(id=request_id)
        reply: bus_pb2.GetResponse = await self._call(
            lambda md: self._bus.Get(message, metadata=md, timeout=self._timeout)
        )
        return reply.status

    async def list(self, **filters: object) -> bus_pb2.ListResponse:
        message = bus_pb2.ListRequest(**filters)  # type: ignore[arg-type]
        return await self._call(lambda md: self._bus.List(message, metadata=md, timeout=self._timeout))

    async def list_all(self, **filters: object) -> builtins.list[lifecycle_pb2.RequestStatus]:
        """Every request the caller may read (matching ``filters``), following the pages to the end."""
        statuses: builtins.list[lifecycle_pb2.RequestStatus] = []
        token = ""
        seen_tokens: set[str] = set()
        while True:
            page = await self.list(page_size=_LIST_PAGE, page_token=token, **filters)
            statuses.extend(page.requests)
            token = page.next_page_token
            if not token or token in seen_tokens:
                # A token seen before would page forever; what was read so far is still an answer.
                return statuses
            seen_tokens.add(token)

    async def watch(
        self,
        *,
        request_id: str | None = None,
        case_number: str | None = None,
        after_cursor: int = 0,
        only_new: bool = False,
        resume: bool = True,
    ) -> AsyncIterator[bus_pb2.WatchResponse]:
        """Lifecycle events as they happen; reconnects after transient failures without loss."""
        cursor = after_cursor
        failures = 0
        while True:
            message = bus_pb2.WatchRequest(after_cursor=cursor, only_new=only_new and cursor == 0)
            if request_id:
                message.request_id = request_id
            elif case_number:
                message.case_number = case_number
            call = self._bus.Watch(message, metadata=self._metadata())
            try:
                async for update in call:
                    failures = 0
                    cursor = update.cursor
                    yield update
                return
            except grpc.aio.AioRpcError as exc:
                failures += 1
                if not resume or exc.code() not in _TRANSIENT or failures >= self._attempts:
                    raise
                await asyncio.sleep(self._backoff * 2 ** (failures - 1))
            finally:
                call.cancel()

    async def wait_for(
        self,
        request_id: str,
        states: Collection[common_pb2.RequestState.ValueType],
        *,
        within: timedelta = timedelta(seconds=30),
    ) -> lifecycle_pb2.RequestStatus:
        """Follow a request until it reaches one of ``states``; returns its status then."""

        async def follow() -> lifecycle_pb2.RequestStatus:
            async for update in self.watch(request_id=request_id):
                if update.state in states:
                    return await self.get(request_id)
            raise ConnectionError("watch ended before the request reached the expected state")

        return await asyncio.wait_for(follow(), within.total_seconds())

    # -- registry --------------------------------------------------------------------------

    async def agency(self, agency_id: str) -> registry_pb2.Agency:
        message = registry_pb2.GetAgencyRequest(id=agency_id)
        reply: registry_pb2.GetAgencyResponse = await self._call(
            lambda md: self._registry.GetAgency(message, metadata=md, timeout=self._timeout)
        )
        return reply.agency

    async def resolve_account(self, account_number: str) -> registry_pb2.Agency:
        message = registry_pb2.ResolveAccountRequest(account_number=account_number)
        reply: registry_pb2.ResolveAccountResponse = await self._call(
            lambda md: self._registry.ResolveAccount(message, metadata=md, timeout=self._timeout)
        )
        return reply.agency

    async def broker_keys(self) -> tuple[registry_pb2.AgencyKey, ...]:
        """The broker's public keys: ``sig`` ones verify its notarizations, events and checkpoints.

        Each key carries its kid (RFC 7638 thumbprint), validity window and revocation time, so a
        client can verify what the broker signed without reading anyone's state directory.
        """
        message = registry_pb2.ListBrokerKeysRequest()
        reply: registry_pb2.ListBrokerKeysResponse = await self._call(
            lambda md: self._registry.ListBrokerKeys(message, metadata=md, timeout=self._timeout)
        )
        return tuple(reply.keys)

    # -- money trail -----------------------------------------------------------------------

    async def trail(self, case_number: str, *, issuing_agency: str = "") -> trail_pb2.Trail:
        """``BusService.GetTrail``: a case's money trail (accounts sealed to the case owner)."""
        message = bus_pb2.GetTrailRequest(case_number=case_number, issuing_agency=issuing_agency)
        reply: bus_pb2.GetTrailResponse = await self._call(
            lambda md: self._bus.GetTrail(message, metadata=md, timeout=self._timeout)
        )
        return reply.trail

    async def set_chasing(
        self, case_number: str, *, enabled: bool, bounds: trail_pb2.ChaseBounds | None = None
    ) -> trail_pb2.Trail:
        """``BusService.SetChasing`` as the case owner; the trail after the change."""
        message = bus_pb2.SetChasingRequest(case_number=case_number, enabled=enabled)
        if bounds is not None:
            message.bounds.CopyFrom(bounds)
        reply: bus_pb2.SetChasingResponse = await self._call(
            lambda md: self._bus.SetChasing(message, metadata=md, timeout=self._timeout)
        )
        return reply.trail

    async def allocation(
        self, case_number: str, account: common_pb2.BankAccountRef, *, issuing_agency: str = ""
    ) -> trail_pb2.Allocation:
        """``BusService.GetAllocation``: how an account's frozen money is shared over every claim on it."""
        message = bus_pb2.GetAllocationRequest(
            case_number=case_number, issuing_agency=issuing_agency, account=account
        )
        reply: bus_pb2.GetAllocationResponse = await self._call(
            lambda md: self._bus.GetAllocation(message, metadata=md, timeout=self._timeout)
        )
        return reply.allocation

    # -- appeals ---------------------------------------------------------------------------

    async def file_appeal(
        self,
        restriction_request_id: str,
        *,
        ground: requests_pb2.AppealGround.ValueType,
        statement: requests_pb2.AppealStatement,
        ticket: str,
        priority: common_pb2.Priority.ValueType | None = None,
        item_index: int | None = None,
    ) -> lifecycle_pb2.RequestStatus:
        """File a holder's appeal against a restriction this agency applied (``APPEAL``).

        The statement is sealed to the current X25519 key of the police owning the restriction's
        case (the broker and NATS see ciphertext only); the appeal goes to them under that case,
        with the agency's appeal ``ticket`` as its legal instrument. ``priority`` defaults to the
        restriction's (the SLA policy gives GREEN appeals 48 hours, STANDARD ones 7 days).
        ``item_index``: against a batch number block, the holder's item (its index in the order);
        required there, refused on any other restriction. Returns the appeal's status as accepted.
        """
        restriction = await self.get(restriction_request_id)
        appeal = requests_pb2.Appeal(
            restriction_request_id=restriction_request_id, ground=ground, item_index=item_index
        )
        return await self._appeal(
            appeal,
            statement,
            police_id=restriction.case_ref.issuing_agency,
            case_number=restriction.case_ref.case_number,
            ticket=ticket,
            priority=restriction.priority if priority is None else priority,
        )

    async def file_mark_appeal(
        self,
        mark_id: str,
        identifier: requests_pb2.HolderIdentifier,
        *,
        police: str,
        case_number: str,
        ground: requests_pb2.AppealGround.ValueType,
        statement: requests_pb2.AppealStatement,
        ticket: str,
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_STANDARD,
    ) -> lifecycle_pb2.RequestStatus:
        """File a holder's appeal against a risk mark on an identifier this agency serves (``APPEAL``
        naming ``mark_id``): ``identifier`` is the holder's, in clear (the broker checks it is the
        marked one and that this agency serves it, and keeps only its digest). The appeal goes to
        ``police``, owning the mark's case ``case_number`` (as their notice to the holder names them),
        its statement sealed to them. Decided LIFTED, the broker lifts the mark."""
        appeal = requests_pb2.Appeal(mark_id=mark_id, identifier=identifier, ground=ground)
        return await self._appeal(
            appeal, statement, police_id=police, case_number=case_number, ticket=ticket, priority=priority
        )

    async def _appeal(
        self,
        appeal: requests_pb2.Appeal,
        statement: requests_pb2.AppealStatement,
        *,
        police_id: str,
        case_number: str,
        ticket: str,
        priority: common_pb2.Priority.ValueType,
    ) -> lifecycle_pb2.RequestStatus:
        """Seal the statement to the police, file the appeal under their case; its status as accepted."""
        police = await self.agency(police_id)
        appeal.statement.CopyFrom(
            seal_statement(
                statement,
                police,
                restriction_request_id=appeal.restriction_request_id,
                mark_id=appeal.mark_id,
                sender=self.agency_id,
                at=self._clock.now(),
            )
        )
        request = requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number=case_number,
                issuing_agency=police_id,
                legal_instrument_id=ticket,
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_APPEAL,
            ),
            priority=priority,
            recipient=police_id,
            appeal=appeal,
        )
        accepted = await self.submit(request)
        return accepted.status

    async def lifting_orders(
        self, appeal: lifecycle_pb2.RequestStatus
    ) -> builtins.list[lifecycle_pb2.RequestStatus]:
        """The broker's lifting orders of an appeal decided LIFTED: the RELEASEs whose parent it is."""
        releases = await self.list_all(
            case_number=appeal.case_ref.case_number, types=[common_pb2.REQUEST_TYPE_RELEASE]
        )
        return [status for status in releases if status.parent_id == appeal.id]

    async def follow_ups(
        self, returned: lifecycle_pb2.RequestStatus
    ) -> builtins.list[lifecycle_pb2.RequestStatus]:
        """The broker's victim follow-ups (回访) of a return: the FOLLOW_UPs whose parent it is,
        one per payout the bank paid (sent once the return's outcome is processed)."""
        found = await self.list_all(
            case_number=returned.case_ref.case_number, types=[common_pb2.REQUEST_TYPE_FOLLOW_UP]
        )
        return [status for status in found if status.parent_id == returned.id]

    async def decide_appeal(
        self,
        appeal_request_id: str,
        decision: results_pb2.AppealDecision.ValueType,
        reason: str,
    ) -> bus_pb2.DecideAppealResponse:
        """``BusService.DecideAppeal``: decide an appeal addressed to this agency, once."""
        ruling = lifecycle_pb2.AppealRuling(
            appeal_request_id=appeal_request_id,
            decision=decision,
            reason=reason,
            issued_at=to_timestamp(self._clock.now()),
        )
        message = bus_pb2.DecideAppealRequest(ruling=self.sign_for_broker(ruling, APPEAL_RULING_TYPE))
        reply: bus_pb2.DecideAppealResponse = await self._call(
            lambda md: self._bus.DecideAppeal(message, metadata=md, timeout=self._timeout)
        )
        return reply

    async def give_feedback(
        self,
        report_request_id: str,
        decision: results_pb2.FeedbackDecision.ValueType,
        reason: str,
        *,
        case_number: str = "",
    ) -> lifecycle_pb2.RequestStatus:
        """``BusService.GiveFeedback``: answer a fraud report that reached this police agency, once
        (acted on / not actionable, why; ``case_number``: the case it went into). The report, EXECUTED
        with ``result.feedback``; the same call again is answered alike, another feedback refused."""
        feedback = lifecycle_pb2.FraudReportFeedback(
            report_request_id=report_request_id,
            decision=decision,
            reason=reason,
            case_number=case_number,
            issued_at=to_timestamp(self._clock.now()),
        )
        message = bus_pb2.GiveFeedbackRequest(
            feedback=self.sign_for_broker(feedback, FRAUD_REPORT_FEEDBACK_TYPE)
        )
        reply: bus_pb2.GiveFeedbackResponse = await self._call(
            lambda md: self._bus.GiveFeedback(message, metadata=md, timeout=self._timeout)
        )
        return reply.status

    async def dissuasions(
        self, warning: lifecycle_pb2.RequestStatus
    ) -> builtins.list[lifecycle_pb2.RequestStatus]:
        """The broker's in-person dissuasions (见面劝阻) of a warning that failed: the DISSUASIONs whose
        parent it is (sent once the warning's outcome is processed, if policy escalates it)."""
        found = await self.list_all(
            case_number=warning.case_ref.case_number, types=[common_pb2.REQUEST_TYPE_DISSUASION]
        )
        return [status for status in found if status.parent_id == warning.id]

    # -- ledger ----------------------------------------------------------------------------

    async def ledger_entries(
        self, after_seq: int, *, limit: int = LEDGER_PAGE
    ) -> ledger_pb2.ListEntriesResponse:
        """``LedgerService.ListEntries``: one page of chained records after ``after_seq``."""
        message = ledger_pb2.ListEntriesRequest(after_seq=after_seq, limit=limit)
        return await self._call(
            lambda md: self._ledger.ListEntries(message, metadata=md, timeout=self._timeout)
        )

    async def ledger_checkpoints(
        self, after_seq: int, *, limit: int = LEDGER_PAGE
    ) -> ledger_pb2.ListCheckpointsResponse:
        """``LedgerService.ListCheckpoints``: the broker's signed checkpoints after ``after_seq``."""
        message = ledger_pb2.ListCheckpointsRequest(after_seq=after_seq, limit=limit)
        return await self._call(
            lambda md: self._ledger.ListCheckpoints(message, metadata=md, timeout=self._timeout)
        )
