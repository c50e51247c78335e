"""RETURN_FUNDS decisions: pure functions over trails, holds and an account's return record.

* :func:`claims_on`: the claims on an account, from the trail of every case holding it: each trail
  request on the account's node is one (claim id = its request id, claimed = what was traced
  along its path, deposited_at = when that money arrived, its path's victim). Conversions are the
  same money as the hold they convert, so they are no claim.
* :func:`frozen_on`: the money the shares are taken from: what the holds on the account held at
  their outcome while they still hold, less what partial releases lifted.
* :func:`check_order`: the payouts of an order against the allocation and what earlier orders
  reserved or returned; the refusals, each with its own reason.
* :func:`reserve`, :func:`settle`: the account's :class:`~greenchannel.v1.trail_pb2.AccountReturns`
  record, changed by compare-and-set in :mod:`broker.hub._returns`.
* :func:`share_out`: the allocation with the record's returns and reservations kept with their
  claims (the record is per victim, the allocation per claim), and the per-claim amounts the wire
  form (:func:`broker.hub._allocation_wire.allocation_message`) shows.

No I/O, no clock: every function depends only on its arguments.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, trail_pb2

from broker.protocol import EXECUTED_STATES, FINAL_STATES, HOLDING_STATES, to_timestamp

from ._allocation import Allocation, Claim, Share, allocate
from ._errors import AlreadyExistsError, IllegalTransitionError, InvalidRequestError

__all__ = [
    "HoldView",
    "Payout",
    "Shared",
    "check_order",
    "claims_on",
    "currency_on",
    "first_hold_at",
    "frozen_on",
    "holds_in",
    "release",
    "reserve",
    "settle",
    "share_out",
    "stale_entries",
    "taken",
    "uncovered",
]

_R = trail_pb2
_ENDED_UNPAID = frozenset((FINAL_STATES - EXECUTED_STATES) | {common_pb2.REQUEST_STATE_EXPIRED})


@dataclass(frozen=True, kw_only=True)
class HoldView:
    """A hold on the account as the allocation counts it."""

    request_id: str
    """The stop-payment or freeze."""
    held: int
    """Minor units it held at its outcome."""
    state: common_pb2.RequestState.ValueType
    """Its current state (a hold released, lapsed or converted since holds nothing)."""
    released: int
    """Minor units partial releases of it lifted (executed RELEASE requests, ``amount_released``)."""
    outcome_at: datetime | None
    """When it was placed."""


@dataclass(frozen=True, kw_only=True)
class Payout:
    """One payout of an order, its victim already digested."""

    index: int
    """Position in ``ReturnFunds.payouts``."""
    victim_id: str
    """Keyed digest of the victim's account."""
    amount: int
    """Minor units."""
    currency: str
    """ISO 4217 code."""


def _at(ts: Timestamp) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


def _node(trail: trail_pb2.Trail, node_id: str) -> trail_pb2.TrailNode | None:
    return next((node for node in trail.nodes if node.node_id == node_id), None)


def claims_on(trails: Iterable[trail_pb2.Trail], node_id: str) -> list[Claim]:
    """Every claim on the account ``node_id`` over the given cases' trails."""
    claims: list[Claim] = []
    for trail in trails:
        node = _node(trail, node_id)
        if node is None:
            continue
        for request in node.requests:
            if (
                request.role == _R.TRAIL_ROLE_CONVERSION
                or not request.request_id
                or request.asked.minor_units <= 0
            ):
                continue
            claims.append(
                Claim(
                    claim_id=request.request_id,
                    case_number=trail.case_ref.case_number,
                    issuing_agency=trail.case_ref.issuing_agency,
                    victim_id=request.victim_id,
                    claimed=request.asked.minor_units,
                    deposited_at=_at(request.arrived_at) if request.HasField("arrived_at") else None,
                )
            )
    return claims


def holds_in(trail: trail_pb2.Trail, node_id: str) -> list[trail_pb2.TrailRequest]:
    """The trail's requests on the account that reached an outcome (conversions included)."""
    node = _node(trail, node_id)
    if node is None:
        return []
    return [r for r in node.requests if r.request_id and r.HasField("outcome_at")]


def currency_on(trails: Iterable[trail_pb2.Trail], node_id: str) -> str:
    """The currency of the account's holds."""
    for trail in trails:
        node = _node(trail, node_id)
        if node is not None:
            for request in node.requests:
                if request.asked.currency:
                    return request.asked.currency
    return ""


def frozen_on(holds: Iterable[HoldView]) -> int:
    """What the holds still holding held at their outcome, less what partial releases lifted."""
    return sum(max(0, h.held - h.released) for h in holds if h.state in HOLDING_STATES)


def first_hold_at(holds: Iterable[HoldView]) -> datetime | None:
    """When money was first held on the account: the notice period runs from there."""
    placed = [h.outcome_at for h in holds if h.held > 0 and h.outcome_at is not None]
    return min(placed) if placed else None


def taken(entry: trail_pb2.ReturnEntry) -> int:
    """Minor units an entry takes from its victim's share: reserved, or returned."""
    if entry.state == _R.RETURN_STATE_RESERVED:
        return entry.amount.minor_units
    if entry.state == _R.RETURN_STATE_RETURNED:
        return entry.returned.minor_units
    return 0


def _case_of(claim: Claim) -> tuple[str, str]:
    return claim.issuing_agency, claim.case_number


def _used(
    entries: Iterable[trail_pb2.ReturnEntry], case: tuple[str, str], victim_id: str, *, except_key: str = ""
) -> int:
    return sum(
        taken(e)
        for e in entries
        if (e.issuing_agency, e.case_number) == case
        and e.victim_id == victim_id
        and not (except_key and e.order_key == except_key)
    )


def check_order(
    allocation: Allocation,
    entries: Sequence[trail_pb2.ReturnEntry],
    *,
    case: tuple[str, str],
    payouts: Sequence[Payout],
    currency: str,
    now: datetime,
    order_key: str,
) -> None:
    """Raise unless every payout may be paid now: the case's own victim, within what its claims'
    shares leave after earlier orders (the same order's entries, a retry, do not count against it).

    Reasons, checked in this order: ``CURRENCY_MISMATCH``, ``DUPLICATE_PAYEE``, ``NOT_A_VICTIM``,
    ``NOTICE_PERIOD`` (the share is there but pro rata, and the notice period runs),
    ``EXCEEDS_SHARE`` (more than the shares leave; more than is frozen included).
    """
    for p in payouts:
        if p.currency != currency:
            raise InvalidRequestError(
                f"payout {p.index} is in {p.currency}; the money frozen on the account is in {currency}",
                reason="CURRENCY_MISMATCH",
            )
    seen: set[str] = set()
    for p in payouts:
        if p.victim_id in seen:
            raise InvalidRequestError(
                f"payout {p.index} pays a victim an earlier payout of the order already pays; one"
                " payout per victim",
                reason="DUPLICATE_PAYEE",
            )
        seen.add(p.victim_id)
    shares_of: dict[str, list[Share]] = {}
    for share in allocation.shares:
        if _case_of(share.claim) == case and share.claim.victim_id:
            shares_of.setdefault(share.claim.victim_id, []).append(share)
    for p in payouts:
        shares = shares_of.get(p.victim_id)
        if not shares:
            raise IllegalTransitionError(
                f"payout {p.index}: the account is not a victim's of this case whose money reached the"
                " account (its trail names no such victim)",
                reason="NOT_A_VICTIM",
            )
        used = _used(entries, case, p.victim_id, except_key=order_key)
        due_now = sum(s.amount for s in shares if s.payable_after is None or s.payable_after <= now)
        due_all = sum(s.amount for s in shares)
        if p.amount <= due_all - used and p.amount > due_now - used:
            ends = min(
                s.payable_after for s in shares if s.payable_after is not None and s.payable_after > now
            )
            raise IllegalTransitionError(
                f"payout {p.index}: the victim's share is untraced money, shared pro rata only after the"
                f" notice period ends at {ends.isoformat()}",
                reason="NOTICE_PERIOD",
            )
        if p.amount > due_now - used:
            raise IllegalTransitionError(
                f"payout {p.index} asks {p.amount} minor units of {p.currency}; the victim's share of"
                f" the frozen money leaves {max(0, due_now - used)} to pay (shares over every case"
                " holding the account; already returned and ordered deducted)",
                reason="EXCEEDS_SHARE",
            )


def uncovered(frozen: int, entries: Iterable[trail_pb2.ReturnEntry]) -> int:
    """Minor units returned or reserved to victims that ``frozen`` no longer covers: 0 unless the
    frozen money shrank under the returns (a partial release would do that)."""
    return max(0, sum(taken(e) for e in entries) - frozen)


def reserve(
    record: trail_pb2.AccountReturns,
    *,
    request_id: str,
    order_key: str,
    content: str,
    case: tuple[str, str],
    payouts: Sequence[Payout],
    now: datetime,
) -> bool:
    """Add the order's payouts as RESERVED entries; False when the order's entries are there
    already (a retry of the same order). Raises ``IDEMPOTENCY_KEY_REUSED`` for the same key with
    another body."""
    mine = [e for e in record.entries if e.order_key == order_key]
    if mine:
        if any(e.content != content for e in mine):
            raise AlreadyExistsError(
                f"the idempotency key was first used for request {mine[0].request_id}, with another body",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return False
    for p in payouts:
        record.entries.add(
            request_id=request_id,
            order_key=order_key,
            content=content,
            payout_index=p.index,
            victim_id=p.victim_id,
            issuing_agency=case[0],
            case_number=case[1],
            amount=common_pb2.Money(currency=p.currency, minor_units=p.amount),
            state=_R.RETURN_STATE_RESERVED,
            reserved_at=to_timestamp(now),
        )
    return True


def settle(record: trail_pb2.AccountReturns, status: lifecycle_pb2.RequestStatus) -> bool:
    """The order ``status`` ended: its reserved entries become RETURNED (what the bank reported
    paid, per payout) or RELEASED. Idempotent: an entry already returned stays as it is; one
    released (cancelled) is still returned if the bank paid after all."""
    changed = False
    if status.state in EXECUTED_STATES:
        paid = {r.payout_index: r.amount for r in status.result.returns}
        for entry in record.entries:
            if entry.request_id != status.id or entry.state == _R.RETURN_STATE_RETURNED:
                continue
            amount = paid.get(entry.payout_index)
            entry.returned.CopyFrom(
                amount if amount is not None else common_pb2.Money(currency=entry.amount.currency)
            )
            entry.state = _R.RETURN_STATE_RETURNED
            changed = True
    elif status.state in _ENDED_UNPAID:
        changed = release(record, status.id)
    return changed


def release(record: trail_pb2.AccountReturns, request_id: str) -> bool:
    """The order's reserved entries become RELEASED (it ended unpaid, or was never stored)."""
    changed = False
    for entry in record.entries:
        if entry.request_id == request_id and entry.state == _R.RETURN_STATE_RESERVED:
            entry.state = _R.RETURN_STATE_RELEASED
            changed = True
    return changed


def stale_entries(record: trail_pb2.AccountReturns, *, except_request: str = "") -> list[str]:
    """Request ids with reserved entries (returns and partial releases): checked against the
    journal before a new reservation."""
    seen: dict[str, None] = {}
    for entry in record.entries:
        if entry.state == _R.RETURN_STATE_RESERVED and entry.request_id != except_request:
            seen.setdefault(entry.request_id, None)
    for reserved in record.releases:
        if reserved.state == _R.RELEASE_ENTRY_STATE_RESERVED and reserved.request_id != except_request:
            seen.setdefault(reserved.request_id, None)
    return list(seen)


@dataclass(frozen=True, kw_only=True)
class Shared:
    """An account's allocation with what its return record says was paid or reserved in it."""

    allocation: Allocation
    """The shares, each at least what is committed to its claim (rule 0 of the allocation)."""
    returned: Mapping[str, int]
    """Per claim id: what was paid back to the claim (absent: 0)."""
    reserved: Mapping[str, int]
    """Per claim id: what orders not answered yet reserved for it (absent: 0)."""


def share_out(
    frozen: int,
    claims: Sequence[Claim],
    entries: Sequence[trail_pb2.ReturnEntry],
    *,
    notice_ends_at: datetime,
) -> Shared:
    """The allocation of ``frozen`` over ``claims``, money already returned or reserved staying
    with its claims, so a claim that arrives later (another case, a later deposit) is shared only
    the rest.

    The record is per victim of a case, the allocation per claim: a victim's returned money, then
    its reserved money, fills that victim's claims in the allocation's order, each first up to its
    share without commitments (so a record within the shares changes none of them), then up to its
    claim. Money that fits no claim (none should: orders are checked against the shares) is taken
    off the frozen money shared, as it left the account; and the frozen money shared is never less
    than what left or is leaving it (a hold released after a return), so no commitment is refused.
    """
    plain = allocate(frozen, claims, notice_ends_at=notice_ends_at)
    returned, reserved, unplaced = _spread(plain.shares, entries)
    committed = {
        cid: returned.get(cid, 0) + reserved.get(cid, 0) for cid in returned.keys() | reserved.keys()
    }
    shared = max(frozen, sum(taken(e) for e in entries)) - unplaced
    allocation = allocate(shared, claims, notice_ends_at=notice_ends_at, committed=committed)
    return Shared(allocation=allocation, returned=returned, reserved=reserved)


def _spread(
    shares: Sequence[Share], entries: Iterable[trail_pb2.ReturnEntry]
) -> tuple[dict[str, int], dict[str, int], int]:
    """Per claim id, what each victim's entries returned and reserved, spread over its claims in
    ``shares``' order (each up to its share, then up to its claim); and what fitted no claim."""
    left: dict[tuple[str, str, str], list[int]] = {}
    for e in entries:
        bucket = left.setdefault((e.issuing_agency, e.case_number, e.victim_id), [0, 0])
        if e.state == _R.RETURN_STATE_RETURNED:
            bucket[0] += e.returned.minor_units
        elif e.state == _R.RETURN_STATE_RESERVED:
            bucket[1] += e.amount.minor_units
    room = {s.claim.claim_id: s.amount for s in shares}
    beyond = {s.claim.claim_id: s.claim.claimed - s.amount for s in shares}
    placed: tuple[dict[str, int], dict[str, int]] = ({}, {})
    for kind, out in enumerate(placed):
        for capacity in (room, beyond):
            for share in shares:
                claim = share.claim
                victim = left.get((claim.issuing_agency, claim.case_number, claim.victim_id))
                if victim is None:
                    continue
                put = min(victim[kind], capacity[claim.claim_id])
                if put > 0:
                    victim[kind] -= put
                    capacity[claim.claim_id] -= put
                    out[claim.claim_id] = out.get(claim.claim_id, 0) + put
    return placed[0], placed[1], sum(sum(bucket) for bucket in left.values())
