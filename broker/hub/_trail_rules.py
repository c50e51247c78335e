"""The money trail's decisions: pure functions over a ``trail_pb2.Trail``, no NATS, no clock.

Each function changes the trail it is given in place and says whether it changed anything, so
the store can run it inside a compare-and-set and skip the write when nothing changed. Every
decision depends only on the trail and its inputs: two replicas (or one, twice) deciding on the
same outcome decide the same way, and the second finds the work done. The rules themselves are
documented in :mod:`broker.hub._trail`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from hashlib import sha256

from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from broker.protocol import (
    BROKER_ID,
    HOLD_TYPES,
    HOLDING_STATES,
    OUTCOME_STATES,
    FieldViolation,
    to_timestamp,
)

from ._policy import ChasePolicy
from ._trail_accounts import AccountBook

__all__ = [
    "HOLDING",
    "MAX_LISTED_LEADS",
    "RECONSIDERED",
    "ChaseContext",
    "UnboundChildError",
    "bind_children",
    "bounds_of",
    "child_key",
    "find_request",
    "narrow_bounds",
    "new_trail",
    "not_sent",
    "outcome_of",
    "planned_children",
    "reconsider",
    "reconsiderable_parents",
    "record_outcome",
    "record_seed",
    "record_submission",
    "seeded_status",
    "settled",
    "trail_seed",
]

_S = common_pb2
HOLDING = HOLDING_STATES
"""States in which a request's hold is in force."""

_L = trail_pb2
RECONSIDERED = frozenset(
    {
        _L.LEAD_REASON_CHASING_OFF,
        _L.LEAD_REASON_DEPTH,
        _L.LEAD_REASON_BELOW_MINIMUM,
        _L.LEAD_REASON_ACCOUNT_LIMIT,
        _L.LEAD_REASON_REQUEST_LIMIT,
    }
)
"""Lead reasons that depend on the case's settings: chased after all when the settings allow."""

_PLANNED = _S.REQUEST_STATE_UNSPECIFIED  # a broker stop-payment decided on, not yet accepted
MAX_LISTED_LEADS = 2000
"""Leads a trail lists; beyond, they are counted and summed (a KV value must stay well under 1 MB)."""


class UnboundChildError(Exception):
    """An outcome of a broker stop-payment whose request id the trail does not know yet.

    A child's status seeds its binding, so only a child accepted before seeds existed gets here,
    while the replica that sent it is still recording its id; the event is offered again later,
    by when it is.
    """


@dataclass(frozen=True, kw_only=True)
class ChaseContext:
    """What decisions need besides the trail."""

    book: AccountBook
    """Names and seals accounts."""
    bank_of: Callable[[results_pb2.OnwardTransfer], str | None]
    """The directory bank receiving a transfer, or None when it is outside the directory."""
    now: datetime
    """When the decision is taken."""


@dataclass(frozen=True)
class Outcome:
    """The first outcome a request's timeline records: what the chase is decided on."""

    state: common_pb2.RequestState.ValueType
    reason: results_pb2.ReasonCode.ValueType
    at: Timestamp


# -- small helpers --------------------------------------------------------------------------------


def _money(currency: str, minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency=currency, minor_units=minor_units)


def child_key(parent_id: str, transfer_id: str) -> str:
    """The idempotency key of the broker's stop-payment chasing ``transfer_id`` listed by ``parent_id``.

    One per (path, transfer): a result processed twice sends nothing twice. The transfer id is
    the bank's free text, so it is hashed into the key's alphabet.
    """
    return f"chase.{parent_id}.{sha256(transfer_id.encode()).hexdigest()[:32]}"


def outcome_of(status: lifecycle_pb2.RequestStatus) -> Outcome | None:
    """The first outcome in the timeline (a later EXTENDED or RELEASED does not change what was found)."""
    for recorded in status.events:
        event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        if event.state in OUTCOME_STATES:
            return Outcome(state=event.state, reason=event.reason, at=recorded.recorded_at)
    return None


def _held_of(status: lifecycle_pb2.RequestStatus) -> int:
    result = status.result
    return (
        result.amount_frozen.minor_units
        if status.type == _S.REQUEST_TYPE_FREEZE
        else result.amount_held.minor_units
    )


def _index(trail: trail_pb2.Trail) -> dict[str, tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]]:
    return {r.request_id: (node, r) for node in trail.nodes for r in node.requests if r.request_id}


def find_request(
    trail: trail_pb2.Trail, request_id: str
) -> tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest] | None:
    """The node and entry of a request of the trail."""
    if not request_id:
        return None  # planned stop-payments have no id yet; none of them is "the" request ""
    for node in trail.nodes:
        for request in node.requests:
            if request.request_id == request_id:
                return node, request
    return None


def _node(trail: trail_pb2.Trail, node_id: str) -> trail_pb2.TrailNode | None:
    return next((node for node in trail.nodes if node.node_id == node_id), None)


def _retotal(node: trail_pb2.TrailNode) -> None:
    currency = next((r.asked.currency for r in node.requests if r.asked.currency), "")
    traced = sum(r.asked.minor_units for r in node.requests if r.role != _L.TRAIL_ROLE_CONVERSION)
    held = sum(r.held.minor_units for r in node.requests if r.state in HOLDING)
    node.traced.CopyFrom(_money(currency, traced))
    node.held.CopyFrom(_money(currency, held))


def _path_nodes(
    index: Mapping[str, tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]], request_id: str
) -> set[str]:
    """Node ids of the request and of every request it descends from."""
    nodes: set[str] = set()
    seen: set[str] = set()
    current = request_id
    while current and current not in seen and current in index:
        seen.add(current)
        node, request = index[current]
        nodes.add(node.node_id)
        current = request.parent_id
    return nodes


def _chase_requests(trail: trail_pb2.Trail) -> Iterable[tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]]:
    return ((node, r) for node in trail.nodes for r in node.requests if r.role == _L.TRAIL_ROLE_CHASE)


# -- bounds ---------------------------------------------------------------------------------------


def bounds_of(policy: ChasePolicy) -> trail_pb2.ChaseBounds:
    """The policy's bounds as the trail records them."""
    return trail_pb2.ChaseBounds(
        max_depth=policy.max_depth,
        min_amounts=[_money(currency, units) for currency, units in sorted(policy.min_amounts.items())],
        max_accounts=policy.max_accounts,
        max_requests=policy.max_requests,
    )


def _min_amount(bounds: trail_pb2.ChaseBounds, currency: str) -> int:
    return next((m.minor_units for m in bounds.min_amounts if m.currency == currency), 0)


def narrow_bounds(
    current: trail_pb2.ChaseBounds, wanted: trail_pb2.ChaseBounds, policy: ChasePolicy
) -> tuple[trail_pb2.ChaseBounds, list[FieldViolation]]:
    """``current`` with each field ``wanted`` gives; violations where one lies outside the policy."""
    bounds = trail_pb2.ChaseBounds()
    bounds.CopyFrom(current)
    violations: list[FieldViolation] = []

    def check(name: str, value: int, limit: int, low: int = 0) -> None:
        if not low <= value <= limit:
            violations.append(
                FieldViolation(
                    field=f"bounds.{name}",
                    rule="chase.policy",
                    description=f"must be between {low} and {limit}, the policy's bound",
                )
            )

    if wanted.HasField("max_depth"):
        check("max_depth", wanted.max_depth, policy.max_depth)
        bounds.max_depth = wanted.max_depth
    if wanted.HasField("max_accounts"):
        check("max_accounts", wanted.max_accounts, policy.max_accounts, low=1)
        bounds.max_accounts = wanted.max_accounts
    if wanted.HasField("max_requests"):
        check("max_requests", wanted.max_requests, policy.max_requests)
        bounds.max_requests = wanted.max_requests
    if wanted.min_amounts:
        minimums = {m.currency: m.minor_units for m in bounds.min_amounts}
        for i, amount in enumerate(wanted.min_amounts):
            floor = max(1, policy.min_amount(amount.currency))
            if amount.minor_units < floor:
                violations.append(
                    FieldViolation(
                        field=f"bounds.min_amounts[{i}].minor_units",
                        rule="chase.policy",
                        description=f"must be at least {floor}, the policy's minimum for {amount.currency}",
                    )
                )
            minimums[amount.currency] = amount.minor_units
        del bounds.min_amounts[:]
        bounds.min_amounts.extend(_money(c, units) for c, units in sorted(minimums.items()))
    return bounds, violations


def new_trail(case_ref: common_pb2.CaseRef, policy: ChasePolicy, now: datetime) -> trail_pb2.Trail:
    """An empty trail for a case, chased as the policy says."""
    return trail_pb2.Trail(
        case_ref=case_ref, chasing=policy.enabled, bounds=bounds_of(policy), updated_at=to_timestamp(now)
    )


# -- requests entering the trail ------------------------------------------------------------------


def trail_seed(
    request: requests_pb2.Request, *, sender: str, recipient: str, book: AccountBook
) -> lifecycle_pb2.TrailSeed | None:
    """What the trail records about a stop-payment or freeze, from its body (None for any other
    request): intake puts it in the request's status, and the outcome records the hold from it.

    No personal data in clear: the account becomes its keyed digest and is sealed to the case
    owner. The broker's own stop-payments and conversions carry only what binds them (their node
    exists already).
    """
    body = request.WhichOneof("body")
    if body not in ("stop_payment", "freeze"):
        return None
    order: requests_pb2.StopPayment | requests_pb2.Freeze = getattr(request, body)
    seed = lifecycle_pb2.TrailSeed(
        amount=order.amount,
        transfer_id=request.stop_payment.fraud_transfer_id if body == "stop_payment" else "",
    )
    if sender == BROKER_ID or (body == "freeze" and request.freeze.converts_request_id):
        return seed
    bank = order.account.bank or recipient
    seed.bank = bank
    seed.node_id = book.node_id(bank, order.account.account_number)
    account = common_pb2.BankAccountRef()
    account.CopyFrom(order.account)
    account.bank = bank
    sealed = book.seal(request.case_ref, seed.node_id, account)
    if sealed is not None:
        seed.account.CopyFrom(sealed)
    if order.HasField("victim_account") and order.victim_account.account_number:
        # The victim is named like any account: its keyed digest (what RETURN_FUNDS payouts are
        # matched against) and sealed to the case owner, never in clear.
        victim = order.victim_account
        seed.victim_id = book.node_id(victim.bank, victim.account_number)
        sealed_victim = book.seal(request.case_ref, seed.victim_id, victim)
        if sealed_victim is not None:
            seed.victim_account.CopyFrom(sealed_victim)
    if order.HasField("deposited_at"):
        seed.deposited_at.CopyFrom(order.deposited_at)
    return seed


def record_seed(trail: trail_pb2.Trail, status: lifecycle_pb2.RequestStatus, *, now: datetime) -> bool:
    """Record the hold ``status`` seeds (:func:`trail_seed`) unless the trail has it already.

    The police's own become requests on the node of their account; a freeze converting a hold
    of the trail joins that hold's node; the broker's own stop-payment gets its id bound to the
    entry planned for it.
    """
    if not status.HasField("trail_seed") or find_request(trail, status.id) is not None:
        return False
    seed = status.trail_seed
    if status.sender == BROKER_ID:
        return bind_children(trail, status.parent_id, {seed.transfer_id: status.id}, now=now)
    if status.type == _S.REQUEST_TYPE_FREEZE and status.target_id:
        found = find_request(trail, status.target_id)
        if found is None:
            return False
        node, target = found
        node.requests.append(
            trail_pb2.TrailRequest(
                request_id=status.id,
                parent_id=target.request_id,
                hop=target.hop,
                type=_S.REQUEST_TYPE_FREEZE,
                role=_L.TRAIL_ROLE_CONVERSION,
                asked=seed.amount,
                held=_money(seed.amount.currency, 0),
                state=_S.REQUEST_STATE_SUBMITTED,
                sent_at=status.submitted_at,
            )
        )
        trail.updated_at.CopyFrom(to_timestamp(now))
        return True
    if not seed.node_id:
        return False
    found_node = _node(trail, seed.node_id)
    if found_node is not None:
        node = found_node
    else:
        node = trail.nodes.add(node_id=seed.node_id, bank=seed.bank, depth=status.hop)
        if seed.HasField("account"):
            node.account.CopyFrom(seed.account)
    node.depth = min(node.depth, status.hop)
    node.requests.append(
        trail_pb2.TrailRequest(
            request_id=status.id,
            parent_id=status.parent_id if find_request(trail, status.parent_id) else "",
            hop=status.hop,
            type=status.type,
            role=_L.TRAIL_ROLE_POLICE,
            transfer_id=seed.transfer_id,
            asked=seed.amount,
            held=_money(seed.amount.currency, 0),
            state=_S.REQUEST_STATE_SUBMITTED,
            sent_at=status.submitted_at,
            victim_id=seed.victim_id,
            arrived_at=seed.deposited_at if seed.HasField("deposited_at") else None,
        )
    )
    _retotal(node)
    trail.updated_at.CopyFrom(to_timestamp(now))
    return True


def seeded_status(
    request_id: str, request: requests_pb2.Request, *, sender: str, recipient: str, ctx: ChaseContext
) -> lifecycle_pb2.RequestStatus:
    """The status intake stores for ``request``, as far as the trail reads it (for simulations)."""
    body = request.WhichOneof("body")
    return lifecycle_pb2.RequestStatus(
        id=request_id,
        type=_S.REQUEST_TYPE_FREEZE if body == "freeze" else _S.REQUEST_TYPE_STOP_PAYMENT,
        sender=sender,
        recipient=recipient,
        case_ref=request.case_ref,
        priority=request.priority,
        parent_id=request.parent_id,
        hop=request.hop,
        state=_S.REQUEST_STATE_SUBMITTED,
        submitted_at=to_timestamp(ctx.now),
        target_id=request.freeze.converts_request_id if body == "freeze" else "",
        trail_seed=trail_seed(request, sender=sender, recipient=recipient, book=ctx.book),
    )


def record_submission(
    trail: trail_pb2.Trail,
    *,
    request_id: str,
    request: requests_pb2.Request,
    sender: str,
    recipient: str,
    ctx: ChaseContext,
) -> bool:
    """Record a stop-payment or freeze as soon as it is accepted: :func:`trail_seed` and
    :func:`record_seed` at once. The broker records it at the outcome instead, in the same write;
    this is what simulations and tests compare that with."""
    if request.WhichOneof("body") not in ("stop_payment", "freeze"):
        return False
    status = seeded_status(request_id, request, sender=sender, recipient=recipient, ctx=ctx)
    return record_seed(trail, status, now=ctx.now)


def bind_children(
    trail: trail_pb2.Trail, parent_id: str, ids_by_transfer: Mapping[str, str], *, now: datetime
) -> bool:
    """Give planned stop-payments of ``parent_id`` the request ids the bus accepted them under."""
    changed = False
    for _, request in planned_children(trail, parent_id):
        request_id = ids_by_transfer.get(request.transfer_id)
        if request_id and not request.request_id:
            request.request_id = request_id
            request.state = _S.REQUEST_STATE_SUBMITTED
            changed = True
    if changed:
        trail.updated_at.CopyFrom(to_timestamp(now))
    return changed


def planned_children(
    trail: trail_pb2.Trail, parent_id: str
) -> list[tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]]:
    """The broker's stop-payments decided on for ``parent_id``'s transfers and not yet accepted."""
    return [
        (node, r)
        for node, r in _chase_requests(trail)
        if r.parent_id == parent_id and not r.request_id and r.state == _PLANNED
    ]


def not_sent(
    trail: trail_pb2.Trail,
    parent_id: str,
    transfer_id: str,
    transfer: results_pb2.OnwardTransfer | None,
    *,
    ctx: ChaseContext,
) -> bool:
    """The bus refused a planned stop-payment: it becomes a NOT_SENT lead (and its node goes if empty)."""
    for node in list(trail.nodes):
        for i, request in enumerate(node.requests):
            if (
                request.role == _L.TRAIL_ROLE_CHASE
                and request.parent_id == parent_id
                and request.transfer_id == transfer_id
                and not request.request_id
            ):
                del node.requests[i]
                if not node.requests:
                    trail.nodes.remove(node)
                else:
                    _retotal(node)
                parent = find_request(trail, parent_id)
                trail.leads.append(
                    trail_pb2.TrailLead(
                        node_id=node.node_id,
                        from_request_id=parent_id,
                        from_node_id=parent[0].node_id if parent else "",
                        hop=request.hop,
                        transfer_id=transfer_id,
                        to_bank=node.bank,
                        amount=request.asked,
                        transfer_amount=transfer.amount if transfer is not None else request.asked,
                        reason=_L.LEAD_REASON_NOT_SENT,
                        at=transfer.at if transfer is not None else None,
                        account=node.account if node.HasField("account") else None,
                    )
                )
                trail.updated_at.CopyFrom(to_timestamp(ctx.now))
                return True
    return False


# -- outcomes -------------------------------------------------------------------------------------


def record_outcome(
    trail: trail_pb2.Trail,
    status: lifecycle_pb2.RequestStatus,
    transfers: Sequence[results_pb2.OnwardTransfer],
    *,
    ctx: ChaseContext,
) -> bool:
    """Record a hold's outcome and decide, for each onward transfer it lists, chase or lead.

    A hold the trail does not know yet is first recorded from its status's seed, exactly as at
    intake (:func:`record_seed`): request and outcome are one change, so one write.
    Raises :class:`UnboundChildError` for a broker stop-payment whose id is not bound yet and
    cannot be bound from its seed. Returns False when the outcome was recorded before: nothing is
    decided twice.
    """
    outcome = outcome_of(status)
    if outcome is None or status.type not in HOLD_TYPES:
        return False
    found = find_request(trail, status.id)
    if found is None and record_seed(trail, status, now=ctx.now):
        found = find_request(trail, status.id)
    if found is None:
        if status.sender == BROKER_ID:
            raise UnboundChildError(status.id)
        if status.target_id:
            return False  # a conversion of a hold the trail never had
        found = _unrecorded_root(trail, status, ctx)
    node, request = found
    if request.HasField("outcome_at"):
        return False
    held = _held_of(status)
    request.state = outcome.state
    request.reason = outcome.reason
    request.held.CopyFrom(_money(request.asked.currency or _currency_of(status), held))
    request.outcome_at.CopyFrom(outcome.at)
    if request.role == _L.TRAIL_ROLE_CONVERSION:
        target = find_request(trail, request.parent_id)
        if target is not None and outcome.state in HOLDING:
            target[1].state = _S.REQUEST_STATE_RELEASED  # the bank moved its hold into this freeze
    _retotal(node)
    trail.updated_at.CopyFrom(to_timestamp(ctx.now))
    chaseable = outcome.state in (_S.REQUEST_STATE_EXECUTED, _S.REQUEST_STATE_PARTIALLY_EXECUTED) or (
        outcome.state == _S.REQUEST_STATE_REJECTED
        and outcome.reason == results_pb2.REASON_CODE_INSUFFICIENT_FUNDS
    )
    if chaseable and request.role != _L.TRAIL_ROLE_CONVERSION:
        for transfer in transfers:
            _decide(trail, node, request, transfer, ctx)
    return True


def _currency_of(status: lifecycle_pb2.RequestStatus) -> str:
    result = status.result
    return result.amount_held.currency or result.amount_frozen.currency or "CNY"


def _unrecorded_root(
    trail: trail_pb2.Trail, status: lifecycle_pb2.RequestStatus, ctx: ChaseContext
) -> tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]:
    """A police hold without a seed (its status predates seeds): recorded without its account or amount.

    Its node is named after the request (the account is unknown), so cycles back to it are not
    recognised, and with no amount asked each onward transfer is traced in full.
    """
    node_id = ctx.book.node_id(status.recipient, f"request:{status.id}")
    node = trail.nodes.add(node_id=node_id, bank=status.recipient, depth=status.hop)
    request = node.requests.add(
        request_id=status.id,
        hop=status.hop,
        type=status.type,
        role=_L.TRAIL_ROLE_POLICE,
        asked=_money(_currency_of(status), 0),
        state=_S.REQUEST_STATE_SUBMITTED,
        sent_at=status.submitted_at,
    )
    return node, request


def _lead_exists(trail: trail_pb2.Trail, from_request_id: str, transfer_id: str) -> bool:
    return any(
        lead.from_request_id == from_request_id and lead.transfer_id == transfer_id for lead in trail.leads
    )


def _traced_amount(
    trail: trail_pb2.Trail,
    index: Mapping[str, tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]],
    node: trail_pb2.TrailNode,
    request: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
) -> int:
    """What this path can have sent through ``transfer``, less what other paths already traced."""
    # A transfer carries at most its own amount, however many paths brought money to its account.
    through = sum(
        r.asked.minor_units
        for _, r in _chase_requests(trail)
        if r.transfer_id == transfer.transfer_id
        and r.parent_id in index
        and index[r.parent_id][0].node_id == node.node_id
    )
    amount = transfer.amount.minor_units - through
    if request.asked.minor_units and request.asked.currency == transfer.amount.currency:
        # Only what this request did not find on the account can have moved on.
        amount = min(amount, request.asked.minor_units - request.held.minor_units)
    return amount


@dataclass(frozen=True)
class _Destination:
    """Where a transfer went, as the rules see it."""

    bank: str | None
    """Directory bank, or None outside the directory."""
    node_id: str
    """Keyed digest of the receiving account; empty when the bank gave no account."""
    account: common_pb2.BankAccountRef
    """The account in clear: only sealed, never stored."""


def _destination(transfer: results_pb2.OnwardTransfer, ctx: ChaseContext) -> _Destination:
    bank = ctx.bank_of(transfer)
    named = bank or transfer.to_bank or transfer.to_bank_code
    return _Destination(
        bank=bank,
        node_id=ctx.book.node_id(named, transfer.to_account) if transfer.to_account else "",
        account=common_pb2.BankAccountRef(
            account_number=transfer.to_account,
            holder_name=transfer.to_holder_name,
            bank=bank or transfer.to_bank,
        ),
    )


def _lead_reason(
    trail: trail_pb2.Trail,
    index: Mapping[str, tuple[trail_pb2.TrailNode, trail_pb2.TrailRequest]],
    request: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
    destination: _Destination,
    amount: int,
) -> trail_pb2.LeadReason.ValueType:
    """Why the transfer is not chased (checked in the documented order), or UNSPECIFIED to chase it."""
    bounds = trail.bounds
    if destination.bank is None:
        return _L.LEAD_REASON_OUTSIDE_DIRECTORY
    if not transfer.to_account or not transfer.to_holder_name:
        return _L.LEAD_REASON_INCOMPLETE
    if destination.node_id in _path_nodes(index, request.request_id):
        return _L.LEAD_REASON_CYCLE
    if not trail.chasing:
        return _L.LEAD_REASON_CHASING_OFF
    if request.hop + 1 > bounds.max_depth:
        return _L.LEAD_REASON_DEPTH
    if amount < _min_amount(bounds, transfer.amount.currency):
        return _L.LEAD_REASON_BELOW_MINIMUM
    if _node(trail, destination.node_id) is None and len(trail.nodes) >= bounds.max_accounts:
        return _L.LEAD_REASON_ACCOUNT_LIMIT
    if sum(1 for _ in _chase_requests(trail)) >= bounds.max_requests:
        return _L.LEAD_REASON_REQUEST_LIMIT
    return _L.LEAD_REASON_UNSPECIFIED


def _add_lead(
    trail: trail_pb2.Trail,
    node: trail_pb2.TrailNode,
    request: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
    destination: _Destination,
    amount: int,
    reason: trail_pb2.LeadReason.ValueType,
    ctx: ChaseContext,
) -> None:
    if len(trail.leads) >= MAX_LISTED_LEADS:
        trail.unlisted_leads += 1
        currency = transfer.amount.currency
        total = next((m for m in trail.unlisted_lead_amounts if m.currency == currency), None)
        if total is None:
            total = trail.unlisted_lead_amounts.add(currency=currency)
        total.minor_units += amount
        return
    lead = trail.leads.add(
        node_id=destination.node_id,
        from_request_id=request.request_id,
        from_node_id=node.node_id,
        hop=request.hop + 1,
        transfer_id=transfer.transfer_id,
        to_bank=transfer.to_bank or (destination.bank or ""),
        to_bank_code=transfer.to_bank_code,
        amount=_money(transfer.amount.currency, amount),
        transfer_amount=transfer.amount,
        reason=reason,
        at=transfer.at,
    )
    known = _node(trail, destination.node_id) if destination.node_id else None
    if known is not None and known.HasField("account"):
        lead.account.CopyFrom(known.account)
    elif destination.node_id:
        # The receiving account is the lead itself: kept for the police even without a name.
        sealed = ctx.book.seal(trail.case_ref, destination.node_id, destination.account)
        if sealed is not None:
            lead.account.CopyFrom(sealed)


def _plan(
    trail: trail_pb2.Trail,
    request: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
    destination: _Destination,
    amount: int,
    ctx: ChaseContext,
) -> None:
    assert destination.bank is not None
    hop = request.hop + 1
    target = _node(trail, destination.node_id)
    if target is None:
        target = trail.nodes.add(node_id=destination.node_id, bank=destination.bank, depth=hop)
        sealed = ctx.book.seal(trail.case_ref, destination.node_id, destination.account)
        if sealed is not None:
            target.account.CopyFrom(sealed)
    target.depth = min(target.depth, hop)
    target.requests.append(
        trail_pb2.TrailRequest(
            parent_id=request.request_id,
            hop=hop,
            type=_S.REQUEST_TYPE_STOP_PAYMENT,
            role=_L.TRAIL_ROLE_CHASE,
            transfer_id=transfer.transfer_id,
            asked=_money(transfer.amount.currency, amount),
            held=_money(transfer.amount.currency, 0),
            state=_PLANNED,
            sent_at=to_timestamp(ctx.now),
            # The path's money reached this account with the transfer; its victim is the root's.
            arrived_at=transfer.at if transfer.HasField("at") else None,
            victim_id=request.victim_id,
        )
    )
    _retotal(target)


def _decide(
    trail: trail_pb2.Trail,
    node: trail_pb2.TrailNode,
    request: trail_pb2.TrailRequest,
    transfer: results_pb2.OnwardTransfer,
    ctx: ChaseContext,
) -> None:
    """Chase ``transfer`` listed by ``request`` (on ``node``) or record it as a lead."""
    if _lead_exists(trail, request.request_id, transfer.transfer_id) or any(
        r.parent_id == request.request_id and r.transfer_id == transfer.transfer_id
        for _, r in _chase_requests(trail)
    ):
        return
    index = _index(trail)
    amount = _traced_amount(trail, index, node, request, transfer)
    if amount <= 0:
        return  # nothing of this path's money can still be in that transfer
    destination = _destination(transfer, ctx)
    reason = _lead_reason(trail, index, request, transfer, destination, amount)
    if reason == _L.LEAD_REASON_UNSPECIFIED:
        _plan(trail, request, transfer, destination, amount, ctx)
    else:
        _add_lead(trail, node, request, transfer, destination, amount, reason, ctx)


def reconsider(
    trail: trail_pb2.Trail,
    parent_id: str,
    transfers: Sequence[results_pb2.OnwardTransfer],
    *,
    ctx: ChaseContext,
) -> bool:
    """Decide again on ``parent_id``'s leads that the case's settings caused (chasing off, bounds)."""
    found = find_request(trail, parent_id)
    if found is None:
        return False
    node, request = found
    again = [x for x in trail.leads if x.from_request_id == parent_id and x.reason in RECONSIDERED]
    if not again:
        return False
    kept = [x for x in trail.leads if not (x.from_request_id == parent_id and x.reason in RECONSIDERED)]
    del trail.leads[:]
    trail.leads.extend(kept)
    by_id = {t.transfer_id: t for t in transfers}
    for lead in again:
        transfer = by_id.get(lead.transfer_id)
        if transfer is None:
            trail.leads.append(lead)  # the bank's answer no longer lists it: keep what we knew
            continue
        _decide(trail, node, request, transfer, ctx)
    trail.updated_at.CopyFrom(to_timestamp(ctx.now))
    return True


def reconsiderable_parents(trail: trail_pb2.Trail) -> list[str]:
    """Requests with leads that :func:`reconsider` may chase after all, in the order found."""
    seen: dict[str, None] = {}
    for lead in trail.leads:
        if lead.reason in RECONSIDERED:
            seen.setdefault(lead.from_request_id, None)
    return list(seen)


def settled(trail: trail_pb2.Trail) -> bool:
    """Every request has an outcome and nothing is waiting to be sent."""
    return all(r.HasField("outcome_at") for node in trail.nodes for r in node.requests)
