"""Intake: verify, authorize, route, notarize, store, publish. Nothing leaves unless every check passed.

Order matters for "nothing lost, nothing twice":

1. every check (signature, field rules, routing, policy) runs before any side effect;
2. one durable write stores the request: its SUBMITTED record in the journal (request state,
   Watch record and ledger source at once, see ``_store``), whose ``Nats-Msg-Id`` binds the
   idempotency key, so a retry maps to the first request id;
3. the envelope is published to the recipient's inbox with ``Nats-Msg-Id`` = request id, and the
   request's deadline timer is set, side by side.

A crash between 2 and 3 leaves a SUBMITTED request with no inbox message; the client's retry
(same idempotency key; ``BusClient`` always sets one; without one, the same signed bytes) finds it
still SUBMITTED and publishes the
envelope again, rebuilt byte for byte from the stored header when the retry carries the same
signed bytes. If the first publish did land, JetStream's duplicate window drops the second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

import nats.errors
import structlog
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, trail_pb2
from nats.js.client import JetStreamContext

from broker.protocol import (
    BROKER_ID,
    Agency,
    AgencyKind,
    Clock,
    FieldViolation,
    Registry,
    SealingError,
    SigningKey,
    VerifiedRequest,
    body_digest,
    current_encryption_key,
    inbox_subject,
    new_uuid7,
    notarize,
    seal_for_recipient,
    sign_event,
    sign_request,
    to_timestamp,
    type_name,
    verify_request,
)

from ._auth import Caller
from ._batch_routing import BatchRoute, route_batch
from ._batch_split import batch_children, batch_split, child_key
from ._deadlines import DeadlineTable
from ._deadlines_watch import release_request_for
from ._errors import (
    AlreadyExistsError,
    IllegalTransitionError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from ._grpc_status import to_hub_error
from ._identifiers import IdentifierDigests
from ._partial_release import ReleasePlan, check_partial_release, release_seed
from ._policy import Policy
from ._request_identifiers import request_identifiers
from ._routing import resolve_recipient
from ._store import Created, IdempotencyStore, RequestStore, idempotency_msg_id
from ._timers import DeadlineScheduler
from ._warning_seed import warning_seed

if TYPE_CHECKING:
    from ._appeals import AppealCheck, Appealed
    from ._returns import ReturnPlan, Returns
    from ._sla_policy import HoldRule
    from ._trail import CaseRequests, TrailRecorder

__all__ = ["Intake", "SubmitOutcome"]

_HOLD_TYPES = {common_pb2.REQUEST_TYPE_STOP_PAYMENT, common_pb2.REQUEST_TYPE_FREEZE}
_HOLDING = {
    common_pb2.REQUEST_STATE_EXECUTED,
    common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
    common_pb2.REQUEST_STATE_EXTENDED,
}


def _event_state(recorded: lifecycle_pb2.RecordedEvent) -> common_pb2.RequestState.ValueType:
    return lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload).state


log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class SubmitOutcome:
    status: lifecycle_pb2.RequestStatus
    duplicate: bool


def _order_key(caller: Caller, verified: VerifiedRequest) -> str:
    """The request's idempotency binding (the journal's ``Nats-Msg-Id`` of its SUBMITTED record).
    Without a key of its own, a signed request is its own key: the same signed bytes sent again (a
    retry, or a replayed bearer token bound to them) are the same request."""
    key = verified.request.idempotency_key or f"jti:{verified.claims.jti}"
    return idempotency_msg_id(caller.agency.id, key)


def content_digest(request: requests_pb2.Request) -> str:
    """Digest of what a request asks, without when it was signed: a retry signed anew (a new
    ``issued_at``) is the same request, another body under the same idempotency key is not."""
    content = requests_pb2.Request()
    content.CopyFrom(request)
    content.ClearField("issued_at")
    return body_digest(content.SerializeToString(deterministic=True))


class Intake:
    """The Submit pipeline, shared by Submit, Extend and Release."""

    def __init__(
        self,
        *,
        registry: Registry,
        policy: Policy,
        deadlines: DeadlineTable,
        requests: RequestStore,
        idempotency: IdempotencyStore,
        js: JetStreamContext,
        broker_key: SigningKey,
        clock: Clock,
        holds: Mapping[common_pb2.RequestType.ValueType, HoldRule],
        scheduler: DeadlineScheduler,
        trail: TrailRecorder | None = None,
        returns: Returns | None = None,
        cases: CaseRequests | None = None,
        appeals: AppealCheck | None = None,
        digests: IdentifierDigests | None = None,
    ) -> None:
        self._digests = digests
        self._returns = returns
        self._trail = trail
        self._cases = cases
        self._appeals = appeals
        self._holds = holds
        self._scheduler = scheduler
        self._registry = registry
        self._policy = policy
        self._deadlines = deadlines
        self._requests = requests
        self._idempotency = idempotency
        self._js = js
        self._broker_key = broker_key
        self._clock = clock

    async def check(
        self, caller: Caller, signed: envelope_pb2.SignedMessage, *, body: str | None = None
    ) -> tuple[VerifiedRequest, Agency | BatchRoute, lifecycle_pb2.RequestStatus | None]:
        """Every check, no side effect. ``body`` restricts the request body kind (Extend, Release).
        The recipient is a :class:`BatchRoute` for a batch NUMBER_BLOCK the broker splits by carrier."""
        try:
            verified = verify_request(signed, keys=self._registry, sender=caller.agency.id, clock=self._clock)
        except Exception as exc:
            raise to_hub_error(exc, signature_field="request.signature") from exc
        if body is not None and verified.request.WhichOneof("body") != body:
            raise InvalidRequestError(
                f"this call takes a request whose body is {body}",
                reason="WRONG_BODY",
            )
        self._may_send_at_all(caller.agency, verified.request_type)
        route = self._split_route(caller.agency, verified)
        if route is not None:
            return verified, route, None
        recipient = resolve_recipient(verified.request, self._registry)
        appealed: Appealed | None = None
        if verified.request.WhichOneof("body") == "appeal":
            # Before the policy: an appeal is filed under the case of the restriction (or mark) it
            # names, which the policy lets the holder's agency use only once this check has passed.
            if self._appeals is None:
                raise PermissionDeniedError("this broker takes no appeals", reason="TYPE_NOT_ALLOWED")
            appealed = await self._appeals.check(
                caller.agency, verified.request, recipient, order_key=_order_key(caller, verified)
            )
        self._policy.authorize_submit(
            sender=caller.agency,
            request_type=verified.request_type,
            recipient=recipient,
            case_ref=verified.request.case_ref,
            appealed_case=appealed.case_ref if appealed is not None else None,
        )
        if appealed is not None:
            return verified, recipient, appealed.restriction
        if verified.request.WhichOneof("body") == "release" and not verified.request.release.HasField(
            "account"
        ):
            raise InvalidRequestError(
                "a release must name the account, which the bank checks again",
                (
                    FieldViolation(
                        field="request.release.account", rule="required", description="value is required"
                    ),
                ),
            )
        target = await self._check_target(caller.agency, verified, recipient)
        return verified, recipient, target

    def _split_route(self, sender: Agency, verified: VerifiedRequest) -> BatchRoute | None:
        """A batch NUMBER_BLOCK within the policy's bound; its route by carrier when the broker splits
        it (no named recipient; several carriers, or some lines no carrier serves), else None.
        Each carrier must be one the sender may send number blocks to."""
        request = verified.request
        if request.WhichOneof("body") != "number_block":
            return None
        size, limit = len(request.number_block.phones), self._policy.number_block.max_items
        if size > limit:
            raise InvalidRequestError(
                f"the batch names {size} lines; the policy allows at most {limit} in one order",
                (
                    FieldViolation(
                        field="request.number_block.phones",
                        rule="policy.number_block.max_items",
                        description=f"at most {limit} items",
                    ),
                ),
                reason="BATCH_TOO_LARGE",
            )
        if not size or request.recipient:
            return None
        route = route_batch(request.number_block, self._registry)
        if not route.parts or (len(route.parts) == 1 and not route.unrouted):
            return None
        for carrier in route.parts:
            self._policy.authorize_submit(
                sender=sender,
                request_type=verified.request_type,
                recipient=self._registry.get(carrier),
                case_ref=request.case_ref,
            )
        return route

    async def _check_target(
        self, sender: Agency, verified: VerifiedRequest, recipient: Agency
    ) -> lifecycle_pb2.RequestStatus | None:
        """Extensions, releases and conversions act on an active hold of the sender's, at that bank."""
        request = verified.request
        body = request.WhichOneof("body")
        if body == "extend":
            target_id = request.extend.target_request_id
        elif body == "release":
            target_id = request.release.target_request_id
        elif body == "freeze" and request.freeze.converts_request_id:
            target_id = request.freeze.converts_request_id
        else:
            return None
        try:
            target = (await self._requests.get(target_id)).status
        except NotFoundError as exc:
            raise IllegalTransitionError(
                "there is no request with that target id", reason="NO_SUCH_HOLD"
            ) from exc
        if sender.id not in (target.sender, target.case_ref.issuing_agency):
            raise PermissionDeniedError(
                "only the police who placed a hold may act on it", reason="NOT_HOLD_OWNER"
            )
        wanted = {common_pb2.REQUEST_TYPE_STOP_PAYMENT} if body == "freeze" else _HOLD_TYPES
        if target.type not in wanted:
            raise IllegalTransitionError(
                f"the target is a {type_name(target.type)}, not a hold", reason="NOT_A_HOLD"
            )
        if target.recipient != recipient.id:
            raise IllegalTransitionError(f"the hold is at {target.recipient}", reason="WRONG_BANK")
        if target.state not in _HOLDING:
            raise IllegalTransitionError(
                f"the hold is not active (it is {common_pb2.RequestState.Name(target.state)})",
                reason="NO_ACTIVE_HOLD",
            )
        rule = self._holds.get(target.type)
        if body == "extend" and rule is not None and rule.max_extensions is not None:
            done = sum(1 for r in target.events if _event_state(r) == common_pb2.REQUEST_STATE_EXTENDED)
            if done >= rule.max_extensions:
                raise IllegalTransitionError(
                    f"this {type_name(target.type).lower()} was already extended {done} times, the most the"
                    " SLA policy allows; convert it into a freeze instead",
                    reason="EXTENSION_LIMIT",
                )
        if body == "freeze" and rule is not None and not rule.convertible_to_freeze:
            raise IllegalTransitionError(
                "the SLA policy does not let stop-payments become freezes", reason="NOT_CONVERTIBLE"
            )
        return target

    async def _case_request_ids(self, case_owner: str, case_number: str) -> list[str]:
        return [] if self._cases is None else await self._cases.request_ids(case_owner, case_number)

    async def _status(self, request_id: str) -> lifecycle_pb2.RequestStatus:
        return (await self._requests.get(request_id)).status

    def _may_send_at_all(self, sender: Agency, request_type: common_pb2.RequestType.ValueType) -> None:
        """Refuse before routing when no rule lets this kind of agency send this type to anyone:
        a bank ordering a freeze is told so, not that the account could not be routed."""
        if sender.kind == AgencyKind.REGULATOR:
            raise PermissionDeniedError(
                "regulators read the bus; they cannot submit requests", reason="READ_ONLY"
            )
        if not any(sender.kind in rule.senders and request_type in rule.types for rule in self._policy.rules):
            raise PermissionDeniedError(
                f"agencies of kind {sender.kind} may not send {type_name(request_type).lower()} requests",
                reason="TYPE_NOT_ALLOWED",
            )

    async def submit(
        self, caller: Caller, signed: envelope_pb2.SignedMessage, *, body: str | None = None
    ) -> SubmitOutcome:
        verified, recipient, target = await self.check(caller, signed, body=body)
        msg_id = _order_key(caller, verified)
        content = content_digest(verified.request)
        if isinstance(recipient, BatchRoute):
            outcome = await self._accept_split(verified, recipient, msg_id=msg_id, content=content)
            self._log_submitted(outcome)
            return outcome
        plan = await self._check_return(caller, verified, recipient, order_key=msg_id)
        release_plan = await self._check_release(verified, target)
        if plan is not None:
            outcome = await self._accept_return(plan, verified, recipient, msg_id=msg_id, content=content)
        elif verified.request.WhichOneof("body") == "appeal":
            outcome = await self._accept_appeal(target, verified, recipient, msg_id=msg_id, content=content)
        elif release_plan is not None and self._returns is not None:
            outcome = await self._accept_release(
                release_plan, verified, recipient, msg_id=msg_id, content=content
            )
        else:
            outcome = await self._accept(
                new_uuid7(self._clock), verified, recipient.id, target, msg_id=msg_id, content=content
            )
        self._log_submitted(outcome)
        return outcome

    @staticmethod
    def _log_submitted(outcome: SubmitOutcome) -> None:
        if not outcome.duplicate:
            status = outcome.status
            log.info(
                "request.submitted",
                request_id=status.id,
                case=status.case_ref.case_number,
                type=type_name(status.type),
                sender=status.sender,
                recipient=status.recipient,
                priority=common_pb2.Priority.Name(status.priority),
            )

    async def _check_return(
        self, caller: Caller, verified: VerifiedRequest, recipient: Agency, *, order_key: str
    ) -> ReturnPlan | None:
        """A RETURN_FUNDS order's checks against the allocation (None for any other request)."""
        if verified.request.WhichOneof("body") != "return_funds":
            return None
        if self._returns is None:
            raise UnavailableError("this broker does not take RETURN_FUNDS orders")
        return await self._returns.plan(caller.agency, verified.request, recipient, order_key=order_key)

    async def _accept_return(
        self, plan: ReturnPlan, verified: VerifiedRequest, recipient: Agency, *, msg_id: str, content: str
    ) -> SubmitOutcome:
        """Reserve the payouts, then store and send the order (see :mod:`broker.hub._returns` for
        why no reservation can leak)."""
        assert self._returns is not None
        request_id, allocation = await self._returns.reserve(
            plan, request_id=new_uuid7(self._clock), order_key=msg_id, content=content
        )
        return await self._accept_reserved(
            request_id,
            partial(self._returns.abandon, plan.view.node_id),
            verified,
            recipient,
            None,
            msg_id=msg_id,
            content=content,
            allocation=allocation,
        )

    async def _check_release(
        self, verified: VerifiedRequest, target: lifecycle_pb2.RequestStatus | None
    ) -> ReleasePlan | None:
        """A release naming an amount: its checks on the journal (None for any other request)."""
        request = verified.request
        if request.WhichOneof("body") != "release" or target is None:
            return None
        return await check_partial_release(
            request, target, policy=self._policy.release, ids=self._case_request_ids, get=self._status
        )

    async def _accept_release(
        self, plan: ReleasePlan, verified: VerifiedRequest, recipient: Agency, *, msg_id: str, content: str
    ) -> SubmitOutcome:
        """Reserve the amount in the account's record (checked again there, so two releases at
        once cannot both pass), then store and send the release."""
        assert self._returns is not None
        node_id = self._returns.release_node(plan.hold, verified.request.release.account, bank=recipient.id)
        request_id = await self._returns.reserve_release(
            plan,
            node_id=node_id,
            bank=recipient.id,
            request_id=new_uuid7(self._clock),
            order_key=msg_id,
            content=content,
        )
        return await self._accept_reserved(
            request_id,
            partial(self._returns.abandon, node_id),
            verified,
            recipient,
            plan.hold,
            msg_id=msg_id,
            content=content,
            release_node=node_id,
        )

    async def _accept_appeal(
        self,
        restriction: lifecycle_pb2.RequestStatus | None,
        verified: VerifiedRequest,
        recipient: Agency,
        *,
        msg_id: str,
        content: str,
    ) -> SubmitOutcome:
        """Name the appeal as the open one of the restriction or mark it names (two at once: one
        passes), then store and send it (see :mod:`broker.hub._open_appeals` for why the key cannot
        block for good). ``restriction``: the appeal's target; None for a mark."""
        assert self._appeals is not None
        appeal = verified.request.appeal
        request_id = await self._appeals.claim(appeal, request_id=new_uuid7(self._clock), order_key=msg_id)
        return await self._accept_reserved(
            request_id,
            partial(self._appeals.abandon, appeal),
            verified,
            recipient,
            restriction,
            msg_id=msg_id,
            content=content,
        )

    async def _accept_reserved(
        self,
        request_id: str,
        abandon: Callable[[str], Awaitable[None]],
        verified: VerifiedRequest,
        recipient: Agency,
        target: lifecycle_pb2.RequestStatus | None,
        *,
        msg_id: str,
        content: str,
        allocation: trail_pb2.Allocation | None = None,
        release_node: str = "",
    ) -> SubmitOutcome:
        """Store and send a request whose reservation is made under ``request_id``; a reservation
        whose request did not get stored under that id is freed at once (``abandon``), and
        otherwise by the next reservation on the account after a grace period."""
        try:
            outcome = await self._accept(
                request_id,
                verified,
                recipient.id,
                target,
                msg_id=msg_id,
                content=content,
                allocation=allocation,
                release_node=release_node,
            )
        except BaseException:
            await asyncio.shield(abandon(request_id))
            raise
        if outcome.status.id != request_id:
            await abandon(request_id)
        return outcome

    async def _accept(
        self,
        request_id: str,
        verified: VerifiedRequest,
        recipient: str,
        target: lifecycle_pb2.RequestStatus | None,
        *,
        msg_id: str,
        content: str = "",
        allocation: trail_pb2.Allocation | None = None,
        release_node: str = "",
        split: lifecycle_pb2.BatchSplit | None = None,
    ) -> SubmitOutcome:
        """Notarize, store (the SUBMITTED record binds the idempotency key), publish, set the timer.
        ``release_node``: the account record a partial release's amount is reserved in. ``split``:
        a batch the broker splits by carrier (``recipient`` is then the broker: nothing to publish)."""
        request = verified.request
        received_at = self._clock.now()
        # A data request's category may narrow its deadlines (a location is asked for in minutes).
        category = request.data_request.category if request.WhichOneof("body") == "data_request" else 0
        deadlines = self._deadlines.deadlines(
            verified.request_type, request.priority, received_at, category=category
        )
        if request.WhichOneof("body") == "extend" and target is not None:
            # The bank is told the new end: the current end of the hold plus one extension.
            rule = self._holds.get(target.type)
            current_end = target.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
            if rule is not None:
                deadlines.hold_expires_at.FromDatetime(current_end + rule.extension)
        envelope = notarize(
            verified,
            request_id=request_id,
            recipient=recipient,
            deadlines=deadlines,
            broker_key=self._broker_key,
            clock=self._clock,
        )
        header = envelope_pb2.EnvelopeHeader.FromString(envelope.header)
        recorded = self._submitted_event(request_id, verified, received_at)
        status = lifecycle_pb2.RequestStatus(
            id=request_id,
            type=verified.request_type,
            sender=verified.claims.iss,
            recipient=recipient,
            case_ref=request.case_ref,
            priority=request.priority,
            parent_id=request.parent_id,
            hop=request.hop,
            state=common_pb2.REQUEST_STATE_SUBMITTED,
            submitted_at=header.received_at,
            updated_at=header.received_at,
            deadlines=header.deadlines,
            events=[recorded],
            notarized_header=envelope.header,
            notary_signature=envelope.notary_signature,
            target_id=target.id if target is not None else "",
            # The money trail records a hold once, at its outcome, from this seed: only intake
            # has the body (account, amount), and the seed carries it digested and sealed.
            trail_seed=self._trail.seed(request, sender=verified.claims.iss, recipient=recipient)
            if self._trail is not None
            else None,
            allocation=allocation,
            release_seed=release_seed(request, node_id=release_node),
            batch_split=split,
            appealed_item=_appealed_item(request),
            appealed_mark_id=request.appeal.mark_id if request.WhichOneof("body") == "appeal" else "",
            warning_seed=warning_seed(
                request, request_id=request_id, registry=self._registry, now=received_at
            ),
        )
        if self._digests is not None:
            # Case linkage (串并) links on these at the request's first event: only intake has the body.
            identifiers, skipped = request_identifiers(request, self._digests, recipient=recipient)
            status.identifiers.extend(identifiers)
            status.identifiers_skipped = skipped
        created = await self._requests.create(status, msg_id=msg_id, content=content)
        if not created.stored:
            return await self._resubmit(created, request_id, verified, content)
        # Both idempotent (Nats-Msg-Id; one schedule per subject). The SUBMITTED record is stored
        # already: the bank's answer can never reach the journal before the request.
        if split is not None:
            await asyncio.gather(self._scheduler.schedule_next(status), self._send_children(status, request))
        else:
            await asyncio.gather(self._scheduler.schedule_next(status), self._publish(status, envelope))
        return SubmitOutcome(status=status, duplicate=False)

    async def _resubmit(
        self, created: Created, request_id: str, verified: VerifiedRequest, content: str
    ) -> SubmitOutcome:
        """A retry with a known idempotency key: return the first request, finishing its intake if needed."""
        if created.bound is None:
            # This very id is stored already (a write that landed although it saw an error).
            bound_id = request_id
        else:
            bound_id = created.bound.status.id
            if created.bound_content is not None and created.bound_content != content:
                log.warning("request.idempotency_key_reused", sender=verified.claims.iss, request_id=bound_id)
                raise AlreadyExistsError(
                    f"the idempotency key was first used for request {bound_id}, with another body; use a"
                    " new key for a new request (the same key with the same body is a retry)",
                    reason="IDEMPOTENCY_KEY_REUSED",
                )
        try:
            stored = (await self._requests.get(bound_id)).status
        except NotFoundError:
            if created.bound is None:
                raise
            # Not visible to this read yet (a stream leader just moved): the record found by the
            # duplicate is the request as it was stored, which is all the intake needs.
            stored = created.bound.status
        await self._finish(stored, verified)
        log.info("request.duplicate_submission", request_id=bound_id, sender=stored.sender)
        return SubmitOutcome(status=stored, duplicate=True)

    async def _finish(self, stored: lifecycle_pb2.RequestStatus, verified: VerifiedRequest) -> None:
        """Redo every intake step after the stored record, in case the first attempt died before it.

        Each is idempotent: the inbox publish under the request id (only while nobody took the
        request yet, and only with the very bytes that were notarized), and the request's timer.
        """
        writes: list[Coroutine[Any, Any, object]] = []
        if stored.HasField("batch_split"):
            writes.append(self._send_children(stored, verified.request))
        elif stored.state == common_pb2.REQUEST_STATE_SUBMITTED:
            header = envelope_pb2.EnvelopeHeader.FromString(stored.notarized_header)
            same_bytes = header.body_digest == body_digest(verified.signed.payload) and (
                header.body_signature_digest == body_digest(verified.signed.signature.encode("ascii"))
            )
            if same_bytes:
                envelope = envelope_pb2.Envelope(
                    header=stored.notarized_header,
                    notary_signature=stored.notary_signature,
                    body=verified.signed.payload,
                    body_signature=verified.signed.signature,
                )
                # Deduplicated by JetStream if the first publish landed; delivered if it did not.
                writes.append(self._publish(stored, envelope))
        writes.append(self._scheduler.schedule_next(stored))
        await asyncio.gather(*writes)

    async def originate(
        self, request: requests_pb2.Request, *, idempotency_key: str, request_id: str = ""
    ) -> lifecycle_pb2.RequestStatus:
        """A request the broker itself sends (the release of a lapsed hold), signed by the broker key.

        No policy applies (the broker is not an agency); the contract's rules and routing do.
        """
        prepared = requests_pb2.Request()
        prepared.CopyFrom(request)
        prepared.issued_at.FromDatetime(self._clock.now())
        prepared.idempotency_key = idempotency_key
        signed = sign_request(prepared, key=self._broker_key, sender=BROKER_ID, clock=self._clock)
        verified = verify_request(signed, keys=self._registry, sender=BROKER_ID, clock=self._clock)
        recipient = resolve_recipient(verified.request, self._registry)
        target = None
        if prepared.WhichOneof("body") == "release":
            target = (await self._requests.get(prepared.release.target_request_id)).status
        request_id = request_id or new_uuid7(self._clock)
        bound, _ = await self._idempotency.claim(BROKER_ID, idempotency_key, request_id)
        msg_id = idempotency_msg_id(BROKER_ID, idempotency_key)
        if bound != request_id:
            try:
                stored = (await self._requests.get(bound)).status
            except NotFoundError:
                # The first attempt claimed the key and stopped before storing: finish it under that id.
                log.warning("request.resuming_interrupted_intake", request_id=bound)
            else:
                await self._finish(stored, verified)
                return stored
        outcome = await self._accept(bound, verified, recipient.id, target, msg_id=msg_id)
        return outcome.status

    async def _send_children(
        self, parent: lifecycle_pb2.RequestStatus, request: requests_pb2.Request
    ) -> None:
        """A split batch's child per carrier, each once (its key and id come from the parent)."""
        await asyncio.gather(
            *(
                self.originate(
                    child, idempotency_key=child_key(parent.id, part.carrier), request_id=part.child_id
                )
                for part, child in batch_children(parent, request.number_block)
            )
        )

    async def _accept_split(
        self, verified: VerifiedRequest, route: BatchRoute, *, msg_id: str, content: str
    ) -> SubmitOutcome:
        """A batch spanning several carriers: the parent, addressed to the broker, then its children."""
        split = batch_split(route, len(verified.request.number_block.phones), partial(new_uuid7, self._clock))
        return await self._accept(
            new_uuid7(self._clock), verified, BROKER_ID, None, msg_id=msg_id, content=content, split=split
        )

    async def release_lapsed(self, target: lifecycle_pb2.RequestStatus) -> None:
        """Tell the bank to lift a hold that lapsed (HoldReleaser)."""
        status = await self.originate(release_request_for(target), idempotency_key=f"lapse-{target.id}")
        log.info("hold.release_sent", request_id=status.id, target=target.id, recipient=status.recipient)

    def _submitted_event(
        self, request_id: str, verified: VerifiedRequest, received_at: datetime
    ) -> lifecycle_pb2.RecordedEvent:
        event_id = new_uuid7(self._clock)
        event = lifecycle_pb2.LifecycleEvent(
            event_id=event_id,
            request_id=request_id,
            state=common_pb2.REQUEST_STATE_SUBMITTED,
            actor=BROKER_ID,
            at=to_timestamp(received_at),
            request_digest=body_digest(verified.signed.payload),
        )
        signed = sign_event(event, key=self._broker_key, clock=self._clock)
        return lifecycle_pb2.RecordedEvent(event=signed, recorded_at=to_timestamp(received_at), seq=1)

    async def _publish(self, status: lifecycle_pb2.RequestStatus, envelope: envelope_pb2.Envelope) -> None:
        # The body is personal data: sealed to the recipient's current X25519 key, afresh on every
        # (re-)publish; the same Nats-Msg-Id lets JetStream drop a second copy all the same.
        try:
            recipient_key = current_encryption_key(self._registry.get(status.recipient), at=self._clock.now())
        except SealingError as exc:
            raise UnavailableError(f"cannot seal the request to {status.recipient}: {exc}") from exc
        envelope = seal_for_recipient(envelope, recipient_key)
        subject = inbox_subject(
            status.recipient,
            "green" if status.priority == common_pb2.PRIORITY_GREEN else "standard",
            type_name(status.type).lower(),
        )
        try:
            await self._js.publish(subject, envelope.SerializeToString(), headers={"Nats-Msg-Id": status.id})
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot publish to the recipient's inbox: {exc}") from exc


def _appealed_item(request: requests_pb2.Request) -> int | None:
    """An appeal against one item of a batch: that item (the lifting order names it)."""
    if request.WhichOneof("body") == "appeal" and request.appeal.HasField("item_index"):
        return request.appeal.item_index
    return None
