"""The money trail: the broker chases onward transfers by itself, within the case's authorization.

Once a victim pays, fraud rings move the money on within minutes; a bank that holds what is left
also lists where the rest went (``Result.onward_transfers``). The broker follows that list at once,
with child stop-payments of its own, and keeps what it did as one trail per case.

**Nodes.** A node is one account at a bank of the directory, named by a keyed digest of bank and
account number (:mod:`broker.hub._trail_accounts`); its number and holder's name are kept only
sealed to the police owning the case. A node carries its requests (one per path that reached
it), what was traced to it (the sum asked) and what is held on it.

**Roots.** The police's own stop-payments and freezes enter the trail at their outcome, in the same
write as the outcome. Only intake has the body, with the account and amount: it puts what the trail
needs into the request's status (:meth:`TrailRecorder.seed`, a ``TrailSeed``: the account as its
node id and sealed, the amount, the transfer named), and the outcome records the hold from it
exactly as if it had been recorded at intake. The first one of a case is the root, hop 0. A hold
still pending is not stored in the trail; ``GetTrail`` shows it from its status (the case's request
ids come from the watch log's subjects: :meth:`WatchLog.request_ids`). Likewise the broker's own
stop-payment is bound to the entry planned for it (its parent and transfer are in its seed) in the
write of its own outcome; until then the stored entry has no id, and ``GetTrail`` shows it bound,
from its status.

**Chasing.** When a stop-payment or freeze of the case reaches EXECUTED, PARTIALLY_EXECUTED or
REJECTED(INSUFFICIENT_FUNDS) (:meth:`TrailChaser.after_outcome`, called when an outcome is
applied), each onward transfer it lists is decided on in the order the bank listed it:

- the amount traced along the path is ``min(transfer amount, asked - held)`` of the request that
  listed it: only what that request did not find on the account can have moved on, and a
  transfer can carry no more than itself. (For a request that held nothing this is
  ``min(transfer, traced along the path)``; it is never more.) A transfer already traced in full
  by another path through the same account adds nothing;
- it is chased (a GREEN stop-payment from ``greenchannel-broker`` to the receiving bank, under
  the parent's case reference, ``parent_id`` = the request that listed it, ``hop`` = its hop + 1,
  for the traced amount, naming the transfer as ``fraud_transfer_id`` so the bank lists only
  money that left after it arrived) unless, checked in this order, the transfer goes to a bank
  outside the directory (``OUTSIDE_DIRECTORY``), the paying bank did not give the account or the
  beneficiary's name (``INCOMPLETE``), the account is already on this path (``CYCLE``: A -> B -> A
  stops at A, whose hold already covers what came back), chasing is off for the case
  (``CHASING_OFF``), the hop would exceed ``max_depth`` (``DEPTH``), the amount is below the
  case's minimum for its currency (``BELOW_MINIMUM``), the account would be one more than
  ``max_accounts`` (``ACCOUNT_LIMIT``), or the broker already sent ``max_requests`` stop-payments
  for the case (``REQUEST_LIMIT``). Each of those is recorded as a lead for investigators, with
  the amount that escaped the chase there: nothing listed is dropped.
- **merges:** an account reached by a second path stays one node; that path's stop-payment asks
  for the added amount (a top-up), so the node's ``traced`` is the sum, and the bank holds more
  only if it is there, never beyond the balance. No account is held twice for the same path: the
  idempotency key of a child is derived from (parent request id, transfer id).
- **splits:** each transfer of the list is a path of its own, chased independently.

The bank itself holds at most what is on the account; the trail never asks more than was traced.

**Durability.** The trail lives in NATS KV (``gc_trails``) and every change is a compare-and-set
of a pure decision (:mod:`broker.hub._trail_rules`) on the stored trail, so replicas can share
it. An outcome is decided on once: the decision and the record of the outcome are one write, and
a second processing (redelivery, restart, another replica) finds the outcome recorded and only
sends what is still planned (a child already sent and not yet answered included: its
idempotency key gives back the request the bus accepted the first time), so the bank gets each
child once. A transient failure raises, so the event is not acknowledged and is processed again.
Each hold costs one write, at its outcome; a child refused by the bus one more (its lead); the
first hold of a case holding money on an account one more, in the account -> cases index
(:mod:`broker.hub._account_cases`) that RETURN_FUNDS reads.

**Victims.** A police hold naming the victim's account (``victim_account``, ``deposited_at``)
records it as ``victim_id`` (the same keyed digest as node ids) and ``arrived_at`` on its entry;
a chase child carries its parent path's victim and arrives with the onward transfer (its ``at``).
Each entry is thus a claim on its account's frozen money (:mod:`broker.hub._returns`).

**Switching.** Police switch chasing off and on per case, and may narrow its bounds within the
policy (:meth:`TrailChaser.set_chasing`); switching it on again decides once more on the leads
that the case's settings caused.

**Privacy.** Onward transfers come from a :data:`TrailSource`: the full transfers sealed to the
broker in ``Result.broker_details`` (:func:`sealed_onward_transfers`), or the result's own list
(:func:`clear_onward_transfers`). Clear account data lives only in memory while a child
stop-payment is built; the trail keeps keyed digests and accounts sealed to the case owner; logs
carry request ids, agency ids, case numbers, hops and amounts only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from broker.protocol import (
    BROKER_ID,
    EXECUTED_STATES,
    HOLD_TYPES,
    AgencyKind,
    Clock,
    ProtocolError,
    Registry,
    SealingError,
    SigningKey,
)

from ._account_cases import AccountCases, CaseKey
from ._errors import ConflictError, HubError, InvalidRequestError, NotFoundError, UnavailableError
from ._policy import ChasePolicy, Policy
from ._result_privacy import onward_transfers_for_broker
from ._store import RequestStore
from ._trail_accounts import AccountBook, BrokerAccountBook, with_bank
from ._trail_rules import (
    HOLDING,
    ChaseContext,
    UnboundChildError,
    bounds_of,
    child_key,
    find_request,
    narrow_bounds,
    new_trail,
    not_sent,
    outcome_of,
    planned_children,
    reconsider,
    reconsiderable_parents,
    record_outcome,
    record_seed,
    settled,
    trail_seed,
)
from ._trail_store import TrailStore

__all__ = [
    "ChildSender",
    "TrailChaser",
    "TrailNotReadyError",
    "TrailRecorder",
    "TrailSource",
    "bank_of",
    "child_request",
    "clear_onward_transfers",
    "sealed_onward_transfers",
]

log = structlog.get_logger(__name__)

TrailSource = Callable[[lifecycle_pb2.RequestStatus], Sequence[results_pb2.OnwardTransfer]]
"""Given an outcome's status, its onward transfers in full (account numbers and names included)."""


def clear_onward_transfers(status: lifecycle_pb2.RequestStatus) -> Sequence[results_pb2.OnwardTransfer]:
    """The default :data:`TrailSource`: the transfers as the result carries them."""
    return list(status.result.onward_transfers)


def sealed_onward_transfers(broker_key: x25519.X25519PrivateKey) -> TrailSource:
    """The :data:`TrailSource` of a broker whose results come redacted: the full transfers are
    opened from ``Result.broker_details`` with the broker's X25519 key, in memory only.

    A result without a broker copy gives its transfers as they are; one whose copy does not open
    is logged and gives the redacted ones, which become INCOMPLETE leads rather than a chase on
    guesses.
    """

    def source(status: lifecycle_pb2.RequestStatus) -> Sequence[results_pb2.OnwardTransfer]:
        if not status.result.HasField("broker_details"):
            return clear_onward_transfers(status)
        try:
            return onward_transfers_for_broker(
                status.result,
                broker_key=broker_key,
                request_id=status.id,
                sender=status.sender,
                recipient=status.recipient,
            )
        except SealingError as exc:
            log.warning("trail.details_not_opened", request_id=status.id, error=str(exc))
            return clear_onward_transfers(status)

    return source


def bank_of(registry: Registry, transfer: results_pb2.OnwardTransfer) -> str | None:
    """The directory bank receiving ``transfer``; None when it is outside the directory.

    A bank the paying bank named must be a bank of the directory; a clearing code means a bank
    outside it; with neither, the account number's prefix may still route to one.
    """
    if transfer.to_bank:
        if transfer.to_bank in registry and registry.get(transfer.to_bank).kind is AgencyKind.BANK:
            return transfer.to_bank
        return None
    if transfer.to_bank_code or not transfer.to_account:
        return None
    agency = registry.bank_for_account(transfer.to_account)
    return agency.id if agency is not None else None


def child_request(
    parent: lifecycle_pb2.RequestStatus,
    bank: str,
    child: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
) -> requests_pb2.Request:
    """The broker's stop-payment chasing ``transfer``: GREEN, to ``bank``, under the parent's case
    reference, one hop further, for what was traced; the bank lists only money that left after
    the transfer arrived, since the order names it."""
    return requests_pb2.Request(
        case_ref=parent.case_ref,
        priority=common_pb2.PRIORITY_GREEN,
        recipient=bank,
        parent_id=parent.id,
        hop=child.hop,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(
                account_number=transfer.to_account, holder_name=transfer.to_holder_name, bank=bank
            ),
            amount=child.asked,
            fraud_transfer_id=transfer.transfer_id,
        ),
    )


class CaseRequests(Protocol):
    """The ids of a case's requests, oldest first (:meth:`broker.hub._watchlog.WatchLog.request_ids`)."""

    async def request_ids(self, case_owner: str, case_number: str) -> list[str]: ...


class ChildSender(Protocol):
    """Sends a request signed by the broker itself (``Intake.originate``)."""

    async def originate(
        self, request: requests_pb2.Request, *, idempotency_key: str
    ) -> lifecycle_pb2.RequestStatus: ...


class TrailNotReadyError(HubError):
    """An outcome arrived before the trail knew its request; processing it again later succeeds."""

    reason = "TRAIL_NOT_READY"


class TrailRecorder:
    """Writes the trail: holds with their outcomes and decisions (one write each), and the children sent."""

    def __init__(
        self,
        *,
        store: TrailStore,
        registry: Registry,
        policy: Policy,
        book: AccountBook,
        clock: Clock,
    ) -> None:
        self._store = store
        self._registry = registry
        self._policy = policy
        self._book = book
        self._clock = clock

    @classmethod
    def for_broker(
        cls,
        *,
        store: TrailStore,
        registry: Registry,
        policy: Policy,
        broker_key: SigningKey,
        clock: Clock,
    ) -> TrailRecorder:
        """The broker's recorder: node ids keyed from ``broker_key``, accounts sealed to case owners."""
        book = BrokerAccountBook(broker_key=broker_key, registry=registry, clock=clock)
        return cls(store=store, registry=registry, policy=policy, book=book, clock=clock)

    @property
    def store(self) -> TrailStore:
        return self._store

    @property
    def book(self) -> AccountBook:
        """The node ids' keyed digest, which the risk registry and case linkage share."""
        return self._book

    @property
    def chase_policy(self) -> ChasePolicy:
        return self._policy.chase

    def context(self) -> ChaseContext:
        return ChaseContext(
            book=self._book, bank_of=lambda t: bank_of(self._registry, t), now=self._clock.now()
        )

    def seed(
        self, request: requests_pb2.Request, *, sender: str, recipient: str
    ) -> lifecycle_pb2.TrailSeed | None:
        """What the trail will record about ``request`` if it is a hold (None otherwise): intake
        stores it in the request's status, and :meth:`record` records the hold from it at the
        outcome. No I/O; the account is digested and sealed here, never kept in clear."""
        body = request.WhichOneof("body")
        if body in ("stop_payment", "freeze"):
            order = getattr(request, body)
            if order.HasField("victim_account") and not order.victim_account.bank:
                named = requests_pb2.Request()
                named.CopyFrom(request)
                getattr(named, body).victim_account.CopyFrom(with_bank(self._registry, order.victim_account))
                request = named
        return trail_seed(request, sender=sender, recipient=recipient, book=self._book)

    def victim_id(self, account: common_pb2.BankAccountRef) -> str:
        """The keyed digest a hold's seed gives the victim's ``account`` (:meth:`seed`)."""
        named = with_bank(self._registry, account)
        return self._book.node_id(named.bank, named.account_number)

    def node_id(self, account: common_pb2.BankAccountRef, *, bank: str) -> str:
        """The trail's node id of ``account`` at ``bank`` (the bank the order was routed to)."""
        return self._book.node_id(account.bank or bank, account.account_number)

    async def record(
        self, status: lifecycle_pb2.RequestStatus, transfers: Sequence[results_pb2.OnwardTransfer]
    ) -> trail_pb2.Trail | None:
        """Record an outcome and decide on its transfers (once); the trail after."""
        ctx = self.context()
        policy = self._policy.chase

        def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
            fresh = trail if trail is not None else new_trail(status.case_ref, policy, ctx.now)
            if not record_outcome(fresh, status, transfers, ctx=ctx):
                return None
            if not fresh.case_ref.legal_instrument_id and status.sender != BROKER_ID:
                fresh.case_ref.CopyFrom(status.case_ref)  # made by SetChasing before the first hold
            return fresh

        case = status.case_ref
        try:
            return await self._store.update(case.issuing_agency, case.case_number, change)
        except UnboundChildError as exc:
            raise TrailNotReadyError(f"the trail does not know request {status.id} yet") from exc

    async def settle_children(
        self, parent: lifecycle_pb2.RequestStatus, refused: dict[str, results_pb2.OnwardTransfer | None]
    ) -> None:
        """Turn the children the bus refused into leads. The ones it accepted need no write here:
        each is bound from its seed in the write of its own outcome, and until then the
        idempotency key of a planned child makes sending it again return the same request."""
        ctx = self.context()

        def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
            if trail is None:
                return None
            changed = False
            for transfer_id, transfer in refused.items():
                changed = not_sent(trail, parent.id, transfer_id, transfer, ctx=ctx) or changed
            return trail if changed else None

        case = parent.case_ref
        await self._store.update(case.issuing_agency, case.case_number, change)

    async def reconsider(
        self, parent: lifecycle_pb2.RequestStatus, transfers: Sequence[results_pb2.OnwardTransfer]
    ) -> trail_pb2.Trail | None:
        ctx = self.context()

        def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
            if trail is None:
                return None
            return trail if reconsider(trail, parent.id, transfers, ctx=ctx) else None

        case = parent.case_ref
        return await self._store.update(case.issuing_agency, case.case_number, change)


class TrailChaser:
    """Chases onward transfers when holds reach an outcome; reads and switches a case's trail."""

    def __init__(
        self,
        *,
        recorder: TrailRecorder,
        requests: RequestStore,
        sender: ChildSender,
        source: TrailSource = clear_onward_transfers,
        cases: CaseRequests | None = None,
        index: AccountCases | None = None,
    ) -> None:
        self._index = index
        self._recorder = recorder
        self._requests = requests
        self._sender = sender
        self._source = source
        self._cases = cases

    def _transfers(self, status: lifecycle_pb2.RequestStatus) -> Sequence[results_pb2.OnwardTransfer]:
        outcome = outcome_of(status)
        if outcome is None:
            return ()
        chaseable = outcome.state in EXECUTED_STATES or (
            outcome.state == common_pb2.REQUEST_STATE_REJECTED
            and outcome.reason == results_pb2.REASON_CODE_INSUFFICIENT_FUNDS
        )
        return self._source(status) if chaseable else ()

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        """A request reached an outcome: if it is a hold, record it and chase what it lists.

        Idempotent; raises (so the event is processed again) when NATS fails or the trail is
        not ready for a child yet.
        """
        if status.type not in HOLD_TYPES or outcome_of(status) is None:
            return
        transfers = self._transfers(status)
        trail = await self._recorder.record(status, transfers)
        if trail is not None:
            await self._index_account(trail, status)
            await self._send_planned(trail, status, transfers)

    async def _index_account(self, trail: trail_pb2.Trail, status: lifecycle_pb2.RequestStatus) -> None:
        """The first hold of the case holding money on its account indexes the account (once;
        again only when this outcome is processed again)."""
        if self._index is None:
            return
        found = find_request(trail, status.id)
        if found is None:
            return
        node, _ = found
        first = next(
            (
                r
                for r in node.requests
                if r.request_id and r.HasField("outcome_at") and r.held.minor_units > 0
            ),
            None,
        )
        if first is not None and first.request_id == status.id:
            case = trail.case_ref
            await self._index.add(
                node.node_id, CaseKey(issuing_agency=case.issuing_agency, case_number=case.case_number)
            )

    async def _send_planned(
        self,
        trail: trail_pb2.Trail,
        parent: lifecycle_pb2.RequestStatus,
        transfers: Sequence[results_pb2.OnwardTransfer],
    ) -> None:
        planned = planned_children(trail, parent.id)
        if not planned:
            return
        by_id = {t.transfer_id: t for t in transfers}
        outcomes = await asyncio.gather(
            *(self._send_one(parent, node, child, by_id.get(child.transfer_id)) for node, child in planned),
            return_exceptions=True,
        )
        refused: dict[str, results_pb2.OnwardTransfer | None] = {}
        failures: list[BaseException] = []
        for (_node, child), outcome in zip(planned, outcomes, strict=True):
            if isinstance(outcome, lifecycle_pb2.RequestStatus):
                continue  # bound from its seed with its outcome
            if isinstance(outcome, (UnavailableError, ConflictError)) or not isinstance(
                outcome, (HubError, ProtocolError, LookupError)
            ):
                failures.append(outcome)
            else:
                log.warning(
                    "trail.child_refused",
                    case=parent.case_ref.case_number,
                    parent=parent.id,
                    hop=child.hop,
                    error=type(outcome).__name__,
                    reason=getattr(outcome, "reason", ""),
                )
                refused[child.transfer_id] = by_id.get(child.transfer_id)
        if refused:
            await self._recorder.settle_children(parent, refused)
        if failures:
            # The rest are sent again when the event comes back; the ones sent get their own
            # request back under the same idempotency key.
            raise failures[0]

    async def _send_one(
        self,
        parent: lifecycle_pb2.RequestStatus,
        node: trail_pb2.TrailNode,
        child: trail_pb2.TrailRequest,
        transfer: results_pb2.OnwardTransfer | None,
    ) -> lifecycle_pb2.RequestStatus:
        if transfer is None:
            raise LookupError("the transfer is no longer listed")
        request = child_request(parent, node.bank, child, transfer)
        status = await self._sender.originate(
            request, idempotency_key=child_key(parent.id, transfer.transfer_id)
        )
        log.info(
            "trail.child_sent",
            request_id=status.id,
            parent=parent.id,
            case=parent.case_ref.case_number,
            hop=child.hop,
            recipient=node.bank,
            amount=child.asked.minor_units,
            currency=child.asked.currency,
        )
        return status

    # -- reading and switching ------------------------------------------------------------------

    async def read(self, case_owner: str, case_number: str) -> trail_pb2.Trail:
        """The case's trail with each request's current state (a hold may have been extended,
        released, converted or lapsed since its outcome), and the holds whose outcome it has not
        recorded yet drawn from their statuses; raises NotFoundError."""
        stored = await self._recorder.store.get(case_owner, case_number)
        trail = stored.trail if stored is not None else None
        pending = await self._pending(case_owner, case_number, trail)
        now = self._recorder.context().now
        if trail is None:
            if not pending:
                raise NotFoundError(f"case {case_number} of {case_owner} has no money trail")
            trail = new_trail(pending[0].case_ref, self._recorder.chase_policy, now)
        for status in pending:
            # Shown only: the hold is stored with its outcome, in the same write.
            record_seed(trail, status, now=now)
        current = {status.id: status for status in pending}
        entries = [r for node in trail.nodes for r in node.requests if r.request_id]
        missing = [r for r in entries if r.request_id not in current]
        statuses = await asyncio.gather(
            *(self._requests.get(r.request_id) for r in missing), return_exceptions=True
        )
        for entry, found in zip(missing, statuses, strict=True):
            if not isinstance(found, BaseException):
                current[entry.request_id] = found.status
        for entry in entries:
            if entry.request_id in current:
                entry.state = current[entry.request_id].state
        for node in trail.nodes:
            held = sum(r.held.minor_units for r in node.requests if r.state in HOLDING)
            node.held.minor_units = held
        trail.settled = settled(trail)
        return trail

    async def _pending(
        self, case_owner: str, case_number: str, trail: trail_pb2.Trail | None
    ) -> list[lifecycle_pb2.RequestStatus]:
        """The case's holds the trail does not know yet, oldest first (none without a case index)."""
        if self._cases is None:
            return []
        known = {r.request_id for node in trail.nodes for r in node.requests} if trail is not None else set()
        ids = [i for i in await self._cases.request_ids(case_owner, case_number) if i not in known]
        found = await asyncio.gather(*(self._requests.get(i) for i in ids), return_exceptions=True)
        return [
            stored.status
            for stored in found
            if not isinstance(stored, BaseException)
            and stored.status.type in HOLD_TYPES
            and stored.status.HasField("trail_seed")
        ]

    async def set_chasing(
        self,
        case_ref: common_pb2.CaseRef,
        *,
        enabled: bool,
        bounds: trail_pb2.ChaseBounds | None = None,
    ) -> trail_pb2.Trail:
        """Switch chasing for a case and narrow its bounds (never beyond the policy's); switching
        on decides again on the leads the settings caused. Raises InvalidRequestError."""
        policy = self._recorder.chase_policy
        if bounds is not None:
            _, violations = narrow_bounds(bounds_of(policy), bounds, policy)
            if violations:
                raise InvalidRequestError("the bounds lie outside the policy's", tuple(violations))
        ctx = self._recorder.context()

        def change(trail: trail_pb2.Trail | None) -> trail_pb2.Trail | None:
            fresh = trail if trail is not None else new_trail(case_ref, policy, ctx.now)
            fresh.chasing = enabled
            if bounds is not None:
                fresh.bounds.CopyFrom(narrow_bounds(fresh.bounds, bounds, policy)[0])
            fresh.updated_at.FromDatetime(ctx.now)
            return fresh

        owner, number = case_ref.issuing_agency, case_ref.case_number
        trail = await self._recorder.store.update(owner, number, change)
        assert trail is not None
        log.info("trail.chasing_set", case=number, case_owner=owner, enabled=enabled)
        if enabled:
            for parent_id in reconsiderable_parents(trail):
                try:
                    parent = (await self._requests.get(parent_id)).status
                except NotFoundError:
                    continue
                transfers = self._transfers(parent)
                updated = await self._recorder.reconsider(parent, transfers)
                if updated is not None:
                    await self._send_planned(updated, parent, transfers)
        return await self.read(owner, number)
