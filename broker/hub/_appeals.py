"""Appeals (申诉): the checks at intake, the police's decision, and the lifting orders after it.

A holder appeals through the agency that applied the restriction (bank, carrier, platform); the
appeal goes to the police owning the restriction's case. The police adapter files it
(ACKNOWLEDGED); the police decide later through ``BusService.DecideAppeal`` with a signed
``AppealRuling``. The decision is the appeal's outcome, recorded by the broker (EXECUTED with
``result.appeal``), its event carrying the police's signed ruling, so the ledger proves who decided.

On LIFTED the broker sends the lifting order itself: a RELEASE (purpose APPEAL_LIFTED) of the
restriction, to the agency that applied it, naming only the restriction (the broker keeps no
account data) and, for a batch NUMBER_BLOCK, the one item appealed (``Release.item_index``): a
holder's appeal lifts their own line of a batch, the others stay blocked, and the batch is not
RELEASED until every item it blocked is lifted (see :mod:`broker.hub._item_lifts`). It is sent
under an idempotency key derived from the appeal id, so it goes out once however often it is asked
for; it is asked for

* by the decision itself (``DecideAppealResponse.lifting`` lists it);
* by the events consumer: the decision's event is also published to GC_EVENTS, and every outcome
  processed there runs :meth:`AppealDesk.after_outcome` (as the trail chaser's hook does), which
  is retried until it succeeds, so a lifting order that failed after the decision was recorded is
  sent again;
* by a retry of the same signed ruling (a decision whose response was lost, or whose broker died
  before publishing the event): the same ruling is answered as the decision it made.

A second, different ruling is refused (``APPEAL_ALREADY_DECIDED``) and stores nothing.

A holder appeals a **risk mark** by the same rules (``Appeal.mark_id``): passed on by the agency
serving the marked identifier (:mod:`broker.hub._mark_appeals` checks who), to the police owning
the mark's case, at most one open appeal per mark, decided by the same ``DecideAppeal``. LIFTED
lifts the mark itself: the broker has no order to send, the registry is its own
(:meth:`MarkLifter.lift_on_appeal`, asked for by the same three callers, idempotent as well).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Protocol

import nats.errors
import structlog
from greenchannel.v1 import (
    bus_pb2,
    common_pb2,
    envelope_pb2,
    lifecycle_pb2,
    requests_pb2,
    results_pb2,
    risk_pb2,
)
from nats.js.client import JetStreamContext

from broker.protocol import (
    APPEAL_RULING_TYPE,
    BROKER_ID,
    EXECUTED_STATES,
    Agency,
    Clock,
    Registry,
    event_subject,
    type_name,
)

from ._auth import Caller
from ._decisions import decided_request, record_decision, recorded_event, ruling_of
from ._errors import IllegalTransitionError, InvalidRequestError, NotFoundError, PermissionDeniedError
from ._events import BrokerEvents
from ._mark_appeals import MarkAppealCheck
from ._open_appeals import OpenAppeals
from ._signed import signed_by_caller
from ._store import RequestStore
from ._submit import Intake

__all__ = [
    "RESTRICTION_TYPES",
    "AppealCheck",
    "AppealDesk",
    "Appealed",
    "MarkLifter",
    "lifting_order_for",
    "open_appeal_key",
]

log = structlog.get_logger(__name__)

_S = common_pb2
RESTRICTION_TYPES = frozenset(
    {
        _S.REQUEST_TYPE_STOP_PAYMENT,
        _S.REQUEST_TYPE_FREEZE,
        _S.REQUEST_TYPE_NUMBER_BLOCK,
        _S.REQUEST_TYPE_ACCOUNT_BLOCK,
    }
)
"""What a holder may appeal: the requests that restrict an account, card, number or platform account."""
_IN_EFFECT = frozenset(
    {_S.REQUEST_STATE_EXECUTED, _S.REQUEST_STATE_PARTIALLY_EXECUTED, _S.REQUEST_STATE_EXTENDED}
)
# uuid5 namespace of the broker's decision events: one id per (appeal, ruling), so the same signed
# ruling applied twice is one event, and another ruling is a second outcome (refused).
_DECISION_NAMESPACE = uuid.UUID("3b1f8c52-7d4e-5a09-b6c1-2e8f4a7d9c30")


def lifting_key(appeal_id: str) -> str:
    """The broker's idempotency key of the lifting order of an appeal: sent once, whoever asks."""
    return f"appeal-lift-{appeal_id}"


def open_appeal_key(appeal: requests_pb2.Appeal) -> str:
    """The open-appeal key of what an appeal names: the restriction, one item of a batch (so two
    holders of one batch may appeal at once, each their own line), or a mark (``mark-`` keeps mark
    ids apart from request ids)."""
    if appeal.mark_id:
        return f"mark-{appeal.mark_id}"
    if appeal.HasField("item_index"):
        return f"{appeal.restriction_request_id}.{appeal.item_index}"
    return appeal.restriction_request_id


@dataclass(frozen=True)
class Appealed:
    """What an appeal names, once intake's checks passed."""

    case_ref: common_pb2.CaseRef
    """The case it is filed under: the restriction's, or the mark's (owner and case number)."""
    restriction: lifecycle_pb2.RequestStatus | None
    """The restriction appealed (the appeal's target); None for a mark."""


class MarkLifter(Protocol):
    """The risk registry's side of a mark appeal decided LIFTED (``MarkDesk`` implements it)."""

    async def lift_on_appeal(
        self, mark_id: str, *, appeal_id: str, police: str, ruling: envelope_pb2.SignedMessage
    ) -> risk_pb2.MarkStatus | None:
        """Lift the mark on the police's signed ruling, once; the mark, or None when nothing was left
        to lift (it expired or was unmarked meanwhile)."""
        ...


def lifting_order_for(
    restriction: lifecycle_pb2.RequestStatus, appeal: lifecycle_pb2.RequestStatus
) -> requests_pb2.Request:
    """The broker's RELEASE of a restriction an appeal lifted: names only the restriction (and the
    item appealed, for a batch)."""
    order = requests_pb2.Request(
        case_ref=appeal.case_ref,
        priority=_S.PRIORITY_GREEN,
        recipient=restriction.recipient,
        parent_id=appeal.id,
        hop=restriction.hop,
        release=requests_pb2.Release(
            target_request_id=restriction.id,
            reason="appeal decided LIFTED",
            purpose=requests_pb2.RELEASE_PURPOSE_APPEAL_LIFTED,
        ),
    )
    if appeal.HasField("appealed_item"):
        order.release.item_index = appeal.appealed_item
    return order


class AppealCheck:
    """Intake's checks of an APPEAL: the restriction or mark it names, and who may appeal it, when."""

    def __init__(
        self, *, requests: RequestStore, open_appeals: OpenAppeals, marks: MarkAppealCheck | None = None
    ) -> None:
        self._requests = requests
        self._open = open_appeals
        self._marks = marks

    async def check(
        self, sender: Agency, request: requests_pb2.Request, recipient: Agency, *, order_key: str
    ) -> Appealed:
        """What the appeal names, once every check passed; raise with a specific reason.

        ``order_key``: the appeal's idempotency binding; an open appeal with the same one is the
        client's retry, left to the idempotency of intake rather than refused as pending.
        """
        case_ref = request.case_ref
        if case_ref.legal_instrument_type != _S.LEGAL_INSTRUMENT_TYPE_APPEAL:
            raise InvalidRequestError(
                "an appeal is filed under the appeal itself: case_ref.legal_instrument_type must be"
                " LEGAL_INSTRUMENT_TYPE_APPEAL and legal_instrument_id the agency's appeal ticket",
                reason="WRONG_INSTRUMENT",
            )
        if request.appeal.mark_id:
            return await self._check_mark(sender, request, recipient, order_key=order_key)
        try:
            restriction = (await self._requests.get(request.appeal.restriction_request_id)).status
        except NotFoundError as exc:
            raise IllegalTransitionError(
                "there is no request with that restriction id", reason="NO_SUCH_RESTRICTION"
            ) from exc
        # Who applied it is checked before what it is: an agency learns nothing about requests
        # that were not addressed to it.
        if restriction.recipient != sender.id:
            raise PermissionDeniedError(
                "only the agency that applied a restriction may pass on an appeal against it",
                reason="NOT_RESTRICTING_AGENCY",
            )
        if restriction.type not in RESTRICTION_TYPES:
            raise IllegalTransitionError(
                f"the request is a {type_name(restriction.type)}, not a restriction (stop-payment,"
                " freeze, number block or account block)",
                reason="NOT_A_RESTRICTION",
            )
        if restriction.state not in _IN_EFFECT:
            raise IllegalTransitionError(
                f"the restriction is not in effect (it is {_S.RequestState.Name(restriction.state)})",
                reason="NOT_RESTRICTED",
            )
        _check_filed_under(restriction.case_ref, request, recipient, what="the restriction's")
        _check_item(restriction, request.appeal)
        # At most one open appeal per restriction (per item of a batch): checked here, and again as
        # intake claims the key before storing the appeal (two at the same instant: one passes).
        await self._open.refuse_if_open(open_appeal_key(request.appeal), order_key=order_key)
        return Appealed(case_ref=restriction.case_ref, restriction=restriction)

    async def _check_mark(
        self, sender: Agency, request: requests_pb2.Request, recipient: Agency, *, order_key: str
    ) -> Appealed:
        """An appeal against a risk mark: the sender serves the marked identifier, the mark is in
        force, the appeal goes to its case owner under its case, and no other is open on it."""
        if self._marks is None:
            raise PermissionDeniedError(
                "this broker keeps no risk marks to appeal", reason="TYPE_NOT_ALLOWED"
            )
        mark = await self._marks.check(sender, request.appeal)
        owner = common_pb2.CaseRef(issuing_agency=mark.case_owner, case_number=mark.case_number)
        _check_filed_under(owner, request, recipient, what="the mark's")
        await self._open.refuse_if_open(open_appeal_key(request.appeal), order_key=order_key)
        return Appealed(case_ref=owner, restriction=None)

    async def claim(self, appeal: requests_pb2.Appeal, *, request_id: str, order_key: str) -> str:
        """Name the appeal as the open one of what it names (restriction, item or mark) before it is
        stored (``APPEAL_PENDING`` when another is open); the request id to store it under (see
        :mod:`broker.hub._open_appeals`)."""
        return await self._open.claim(open_appeal_key(appeal), request_id=request_id, order_key=order_key)

    async def abandon(self, appeal: requests_pb2.Appeal, request_id: str) -> None:
        """Intake could not store the appeal: free the key of what it names."""
        await self._open.abandon(open_appeal_key(appeal), request_id)


def _check_filed_under(
    owner: common_pb2.CaseRef, request: requests_pb2.Request, recipient: Agency, *, what: str
) -> None:
    """An appeal goes to the police owning the appealed case, under that case (``WRONG_CASE``)."""
    case_ref = request.case_ref
    if (
        recipient.id != owner.issuing_agency
        or case_ref.issuing_agency != owner.issuing_agency
        or case_ref.case_number != owner.case_number
    ):
        raise IllegalTransitionError(
            f"an appeal goes to the police owning {what} case, under that case"
            f" (recipient and case_ref must name {owner.issuing_agency!r} and its case)",
            reason="WRONG_CASE",
        )


def _is_batch(restriction: lifecycle_pb2.RequestStatus) -> bool:
    """A batch or selector NUMBER_BLOCK: answered item by item."""
    block = restriction.result.block
    return restriction.type == _S.REQUEST_TYPE_NUMBER_BLOCK and (
        len(block.items) > 0 or block.HasField("totals")
    )


def _check_item(restriction: lifecycle_pb2.RequestStatus, appeal: requests_pb2.Appeal) -> None:
    """A batch is appealed one item at a time, an item it blocked; anything else names no item."""
    if not _is_batch(restriction):
        if appeal.HasField("item_index"):
            raise IllegalTransitionError(
                "the restriction is not a batch: an appeal against it names no item",
                reason="NOT_A_BATCH",
            )
        return
    if not appeal.HasField("item_index"):
        raise InvalidRequestError(
            "the restriction is a batch number block: the appeal names the holder's item"
            " (appeal.item_index, its index in the order)",
            reason="ITEM_REQUIRED",
        )
    answered = {item.index: item.state for item in restriction.result.block.items}
    state = answered.get(appeal.item_index)
    if state is None:
        raise IllegalTransitionError("the batch has no item with that index", reason="NO_SUCH_ITEM")
    if state != results_pb2.BLOCK_ITEM_STATE_BLOCKED:
        raise IllegalTransitionError(
            f"the batch did not block that item (it was {results_pb2.BlockItemState.Name(state)})",
            reason="ITEM_NOT_BLOCKED",
        )


class AppealDesk:
    """The police's decisions on appeals, and the lifting orders they make the broker send."""

    def __init__(
        self,
        *,
        requests: RequestStore,
        broker_events: BrokerEvents,
        intake: Intake,
        registry: Registry,
        js: JetStreamContext,
        clock: Clock,
        marks: MarkLifter | None = None,
    ) -> None:
        self._requests = requests
        self._events = broker_events
        self._intake = intake
        self._registry = registry
        self._js = js
        self._clock = clock
        self.marks = marks
        """Lifts marks on appeals decided LIFTED; the broker wires the risk registry's desk here."""

    async def decide(
        self, caller: Caller, signed: envelope_pb2.SignedMessage
    ) -> bus_pb2.DecideAppealResponse:
        """Record the caller's signed ruling as the appeal's outcome (once); LIFTED sends the lifting."""
        ruling, claims = signed_by_caller(
            lifecycle_pb2.AppealRuling,
            signed,
            jws_type=APPEAL_RULING_TYPE,
            caller=caller,
            keys=self._registry,
            clock=self._clock,
            field="ruling",
        )
        appeal = await decided_request(
            self._requests,
            caller,
            ruling.appeal_request_id,
            request_type=_S.REQUEST_TYPE_APPEAL,
            what="an appeal",
            not_recipient="NOT_APPEAL_RECIPIENT",
            not_type="NOT_AN_APPEAL",
        )
        event_id = str(uuid.uuid5(_DECISION_NAMESPACE, f"{appeal.id}/{claims.jti}"))
        result = results_pb2.Result(
            outcome=_S.REQUEST_STATE_EXECUTED, appeal=ruling.decision, detail=ruling.reason
        )
        status, decided = await record_decision(
            self._events,
            appeal,
            event_id=event_id,
            result=result,
            signed=signed,
            what="appeal",
            reason="APPEAL_ALREADY_DECIDED",
        )
        if decided:
            log.info(
                "appeal.decided",
                request_id=appeal.id,
                police=caller.agency.id,
                decision=results_pb2.AppealDecision.Name(ruling.decision),
            )
        await self._announce(status, event_id)
        lifting = await self.lift(status)
        return bus_pb2.DecideAppealResponse(status=status, lifting=lifting)

    async def _announce(self, status: lifecycle_pb2.RequestStatus, event_id: str) -> None:
        """Put the decision's event on GC_EVENTS: the consumer's hook sends the lifting order until
        it is sent. Applying it there changes nothing (its id is in the timeline already)."""
        recorded = recorded_event(status, event_id)
        if recorded is None:
            return
        try:
            await self._js.publish(
                event_subject(BROKER_ID, status.id),
                recorded.event.SerializeToString(),
                headers={"Nats-Msg-Id": event_id},
            )
        except nats.errors.Error:
            # The lifting below is tried all the same; a retry of the ruling announces it again.
            log.warning("appeal.decision_not_announced", request_id=status.id)

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        """Events hook: a decided LIFTED appeal whose lifting order is missing gets it (idempotent)."""
        await self.lift(status)

    async def lift(self, status: lifecycle_pb2.RequestStatus) -> list[lifecycle_pb2.RequestStatus]:
        """Send (once) the lifting order of an appeal decided LIFTED; the orders, as accepted. A mark
        appealed is lifted in the registry instead: no order."""
        if (
            status.type != _S.REQUEST_TYPE_APPEAL
            or status.state not in EXECUTED_STATES
            or status.result.appeal != results_pb2.APPEAL_DECISION_LIFTED
        ):
            return []
        if status.appealed_mark_id:
            await self._lift_mark(status)
            return []
        if not status.target_id:
            return []
        restriction = (await self._requests.get(status.target_id)).status
        if restriction.state not in _IN_EFFECT | {_S.REQUEST_STATE_RELEASED}:
            # Expired meanwhile: nothing is left to lift. RELEASED is usually this very lifting
            # order's doing: asking again returns it (the key is bound to it).
            log.info("appeal.nothing_to_lift", request_id=status.id, restriction=restriction.id)
            return []
        order = await self._intake.originate(
            lifting_order_for(restriction, status), idempotency_key=lifting_key(status.id)
        )
        log.info("appeal.lifting_sent", request_id=status.id, lifting=order.id, recipient=order.recipient)
        return [order]

    async def _lift_mark(self, status: lifecycle_pb2.RequestStatus) -> None:
        """Lift the appealed mark on the police's signed ruling (the mark desk does it once)."""
        ruling = ruling_of(status)
        if self.marks is None or ruling is None:
            # A broker without a risk registry, or an outcome recorded without a ruling (DecideAppeal
            # never does that): nothing here can lift the mark.
            log.warning("appeal.mark_not_lifted", request_id=status.id, mark_id=status.appealed_mark_id)
            return
        lifted = await self.marks.lift_on_appeal(
            status.appealed_mark_id, appeal_id=status.id, police=status.recipient, ruling=ruling
        )
        log.info(
            "appeal.mark_lifted" if lifted is not None else "appeal.nothing_to_lift",
            request_id=status.id,
            mark_id=status.appealed_mark_id,
        )
