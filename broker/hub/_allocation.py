"""Who gets the frozen money on one account back: a pure, deterministic allocation over every claim.

Several victims' money, from one case or several, may end on one mule account; what is frozen
there is shared by these rules, in this order (the 2016 rules on returning frozen funds in
telecom fraud cases, 电信网络新型违法犯罪案件冻结资金返还若干规定, and the first-in-first-out rule
for mixed funds of Clayton's Case, Devaynes v Noble, 1816; docs/closing-a-case.md says more):

0. **What is paid stays paid** (``committed``). Money already returned to a claim, or reserved for
   a return the bank has not answered yet, has left (or is leaving) the account: it is that claim's
   and is never shared again. A claim that arrives later (a second case finding the account, a
   later deposit) shares only the rest. Without such a late claim the rules below give every
   claim at least what was committed to it, so this rule changes nothing.
1. **Traced deposits, latest first** (``DEPOSIT_ORDER``). A claim is traced when the trail knows
   when its money reached the account. Money that left the account left from the earliest
   deposits (first in, first out), so what is still frozen belongs to the latest ones: claims are
   paid latest deposit first, each up to what was traced to the account along its path, until the
   frozen money is used up. A single traced deposit therefore goes straight back. Equal deposit
   times (to the microsecond) are ordered by claim id, so the answer never depends on arrival order.
2. **Untraced claims, pro rata** (``PRO_RATA``). What the traced claims leave is shared among the
   untraced claims in proportion to what each claims (never more than it claims), in integer
   minor units by largest remainder: each gets the floor of its exact share, and the units left
   over go one each to the claims with the largest remainders (ties: smaller claim id first), so
   shares add up to the unit and each is less than one unit from its exact proportion. A claim
   whose committed money exceeds its proportion keeps that, and the others share the rest in
   the same way. These shares may be ordered only after the notice period (``payable_after``),
   during which other victims may still come forward with claims.
3. Whatever no claim has a share in stays frozen (``unallocated``).

The shares are a function of the set of claims, the frozen amount and what is committed only:
the same input in any order gives the same shares (a claim listed twice counts once), and their
sum never exceeds the frozen amount.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum

__all__ = ["Allocation", "AllocationRule", "Claim", "Share", "allocate", "payable"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class AllocationRule(Enum):
    """The rule that gave a claim its share (trail.proto ``AllocationRule``)."""

    DEPOSIT_ORDER = "deposit_order"
    PRO_RATA = "pro_rata"


@dataclass(frozen=True, kw_only=True)
class Claim:
    """One victim's claim on the account: the money traced to it along one path of one case."""

    claim_id: str
    """The trail request whose path traced the money here; unique over every case."""
    case_number: str
    """The case it belongs to."""
    issuing_agency: str
    """The police owning that case."""
    victim_id: str
    """Keyed digest of the victim's account."""
    claimed: int
    """Minor units traced to the account along that path; > 0."""
    deposited_at: datetime | None
    """When the money reached the account (timezone-aware); None: untraced."""

    def __post_init__(self) -> None:
        if not self.claim_id:
            raise ValueError("a claim needs a claim id")
        if self.claimed <= 0:
            raise ValueError("a claim must be for a positive amount")
        if self.deposited_at is not None and self.deposited_at.utcoffset() is None:
            # A naive time would be read in the host's zone: the order of deposits would depend on it.
            raise ValueError("deposited_at must be timezone-aware")


@dataclass(frozen=True, kw_only=True)
class Share:
    """A claim's share of the frozen money."""

    claim: Claim
    """The claim."""
    rule: AllocationRule
    """The rule that gave it."""
    amount: int
    """Minor units; 0 <= amount <= claim.claimed; at least what is committed to the claim."""
    payable_after: datetime | None
    """PRO_RATA: the end of the notice period; None for traced deposits (payable at once)."""


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """The shares of every claim on one account."""

    frozen: int
    """The money shared: still frozen, plus what returns already paid out of it."""
    shares: tuple[Share, ...]
    """Traced claims latest deposit first, then untraced claims, each group by claim id."""
    unallocated: int
    """Frozen money no claim has a share in."""
    notice_ends_at: datetime | None = None
    """When pro rata shares become payable (the end of the notice period), as given to allocate."""


def allocate(
    frozen: int,
    claims: Iterable[Claim],
    *,
    notice_ends_at: datetime,
    committed: Mapping[str, int] | None = None,
) -> Allocation:
    """Share ``frozen`` minor units over ``claims`` by the module's rules.

    ``notice_ends_at`` is when pro rata shares become payable (the end of the notice period).
    ``committed`` maps claim ids to money already returned or reserved for them (rule 0); each at
    most its claim, together at most ``frozen``. Raises ``ValueError`` for input no rule can share:
    a negative amount, a naive time, one claim id with two different claims, a commitment to a
    claim not given or beyond what it or the account holds.
    """
    if frozen < 0:
        raise ValueError("the frozen amount cannot be negative")
    if notice_ends_at.utcoffset() is None:
        raise ValueError("notice_ends_at must be timezone-aware")
    unique = _unique(claims)
    floors = _floors(frozen, unique, committed or {})
    traced = sorted(
        (c for c in unique.values() if c.deposited_at is not None),
        key=lambda c: (-_micros(c.deposited_at), c.claim_id),
    )
    untraced = sorted((c for c in unique.values() if c.deposited_at is None), key=lambda c: c.claim_id)
    shares: list[Share] = []
    left = frozen - sum(floors.values())
    for claim in traced:
        floor = floors.get(claim.claim_id, 0)
        extra = min(claim.claimed - floor, left)
        left -= extra
        shares.append(
            Share(claim=claim, rule=AllocationRule.DEPOSIT_ORDER, amount=floor + extra, payable_after=None)
        )
    untraced_floors = [floors.get(c.claim_id, 0) for c in untraced]
    pool = left + sum(untraced_floors)
    amounts = _pro_rata_above(pool, [c.claimed for c in untraced], untraced_floors)
    for claim, amount in zip(untraced, amounts, strict=True):
        shares.append(
            Share(claim=claim, rule=AllocationRule.PRO_RATA, amount=amount, payable_after=notice_ends_at)
        )
    return Allocation(
        frozen=frozen, shares=tuple(shares), unallocated=pool - sum(amounts), notice_ends_at=notice_ends_at
    )


def payable(share: Share, *, returned: int, reserved: int, at: datetime) -> int:
    """What may still be ordered for ``share`` at ``at``: its amount less what was returned or is
    reserved, never below 0; nothing for a pro rata share before its notice period ends."""
    return payable_amount(
        share=share.amount, returned=returned, reserved=reserved, payable_after=share.payable_after, at=at
    )


def payable_amount(
    *, share: int, returned: int, reserved: int, payable_after: datetime | None, at: datetime
) -> int:
    """:func:`payable` on bare numbers (the wire's ``ClaimShare`` carries them so)."""
    if payable_after is not None and at < payable_after:
        return 0
    return max(0, share - returned - reserved)


def _unique(claims: Iterable[Claim]) -> dict[str, Claim]:
    """Claims by id: the same claim twice counts once; two different claims under one id are an error
    (which to keep would depend on their order)."""
    unique: dict[str, Claim] = {}
    for claim in claims:
        seen = unique.setdefault(claim.claim_id, claim)
        if seen != claim:
            raise ValueError(f"claim id {claim.claim_id!r} names two different claims")
    return unique


def _floors(frozen: int, claims: Mapping[str, Claim], committed: Mapping[str, int]) -> dict[str, int]:
    floors: dict[str, int] = {}
    for claim_id, amount in committed.items():
        claim = claims.get(claim_id)
        if claim is None:
            raise ValueError(f"money is committed to claim {claim_id!r}, which is not among the claims")
        if not 0 <= amount <= claim.claimed:
            raise ValueError(f"the money committed to claim {claim_id!r} must be between 0 and its claim")
        if amount:
            floors[claim_id] = amount
    if sum(floors.values()) > frozen:
        raise ValueError("more money is committed to claims than the account holds")
    return floors


def _pro_rata_above(pool: int, claimed: list[int], floors: list[int]) -> list[int]:
    """Largest-remainder shares of ``pool`` in proportion to ``claimed``, none above its claim and
    none below its floor: a claim whose proportion falls below its floor keeps the floor and leaves
    the pro rata, and the rest is shared again among the others (until none falls below)."""
    pinned: set[int] = set()
    while True:
        free = [i for i in range(len(claimed)) if i not in pinned]
        rest = pool - sum(floors[i] for i in pinned)
        amounts = dict(zip(free, _pro_rata(rest, [claimed[i] for i in free]), strict=True))
        below = {i for i in free if amounts[i] < floors[i]}
        if not below:
            return [floors[i] if i in pinned else amounts[i] for i in range(len(claimed))]
        pinned |= below


def _pro_rata(pool: int, claimed: list[int]) -> list[int]:
    """Largest-remainder shares of ``pool`` in proportion to ``claimed``, none above its claim."""
    total = sum(claimed)
    if total <= pool:
        return list(claimed)
    base = [pool * c // total for c in claimed]
    remainders = [pool * c % total for c in claimed]
    # Callers sort claims by id, so the index breaks ties in claim-id order. Only claims with a
    # remainder get a unit (the units left are fewer than those claims), so none exceeds its claim.
    order = sorted(range(len(claimed)), key=lambda i: (-remainders[i], i))
    for i in order[: pool - sum(base)]:
        base[i] += 1
    return base


def _micros(at: datetime | None) -> int:
    """Exact microseconds since the epoch (``timestamp()`` is a float and may round two times together)."""
    assert at is not None
    return (at - _EPOCH) // _MICROSECOND
