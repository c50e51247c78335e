"""Who gets the frozen money on one account back: a pure, deterministic allocation over every claim.

Several victims' money, from one case or several, may end on one mule account; what is frozen
there is shared by these rules, in this order (the 2016 rules on returning frozen funds in
telecom fraud cases, 电信网络新型违法犯罪案件冻结资金返还若干规定, and the first-in-first-out rule
for mixed funds of Clayton's Case, Devaynes v Noble, 1816):

1. **Traced deposits, latest first** (``DEPOSIT_ORDER``). A claim is traced when the trail knows
   when its money reached the account. Money that left the account left from the earliest
   deposits (first in, first out), so what is still frozen belongs to the latest ones: claims are
   paid latest deposit first, each up to what was traced to the account along its path, until the
   frozen money is used up. A single traced deposit therefore goes straight back. Equal deposit
   times are ordered by claim id, so the answer never depends on arrival order.
2. **Untraced claims, pro rata** (``PRO_RATA``). What the traced claims leave is shared among the
   untraced claims in proportion to what each claims (never more than it claims), in integer
   minor units: each gets the floor of its exact share, and the units left over go one each to
   the claims with the largest remainders (ties: smaller claim id first), so shares add up to the
   unit. These shares may be ordered only after the notice period (``payable_after``), during
   which other victims may still come forward with claims.
3. Whatever no claim has a share in stays frozen (``unallocated``).

The shares are a function of the set of claims and the frozen amount only: the same input in any
order gives the same shares, and their sum never exceeds the frozen amount.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

__all__ = ["Allocation", "AllocationRule", "Claim", "Share", "allocate"]


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
    """When the money reached the account; None: untraced."""

    def __post_init__(self) -> None:
        if self.claimed <= 0:
            raise ValueError("a claim must be for a positive amount")


@dataclass(frozen=True, kw_only=True)
class Share:
    """A claim's share of the frozen money."""

    claim: Claim
    """The claim."""
    rule: AllocationRule
    """The rule that gave it."""
    amount: int
    """Minor units; 0 <= amount <= claim.claimed."""
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


def allocate(frozen: int, claims: Iterable[Claim], *, notice_ends_at: datetime) -> Allocation:
    """Share ``frozen`` minor units over ``claims`` by the module's rules.

    ``notice_ends_at`` is when pro rata shares become payable (the end of the notice period).
    """
    if frozen < 0:
        raise ValueError("the frozen amount cannot be negative")
    unique = {claim.claim_id: claim for claim in claims}
    traced = sorted(
        (c for c in unique.values() if c.deposited_at is not None),
        key=lambda c: (-_micros(c.deposited_at), c.claim_id),
    )
    untraced = sorted((c for c in unique.values() if c.deposited_at is None), key=lambda c: c.claim_id)
    shares: list[Share] = []
    left = frozen
    for claim in traced:
        amount = min(claim.claimed, left)
        left -= amount
        shares.append(
            Share(claim=claim, rule=AllocationRule.DEPOSIT_ORDER, amount=amount, payable_after=None)
        )
    for claim, amount in zip(untraced, _pro_rata(left, [c.claimed for c in untraced]), strict=True):
        left -= amount
        shares.append(
            Share(claim=claim, rule=AllocationRule.PRO_RATA, amount=amount, payable_after=notice_ends_at)
        )
    return Allocation(frozen=frozen, shares=tuple(shares), unallocated=left)


def _pro_rata(pool: int, claimed: list[int]) -> list[int]:
    """Largest-remainder shares of ``pool`` in proportion to ``claimed``, none above its claim."""
    total = sum(claimed)
    if total <= pool:
        return list(claimed)
    base = [pool * c // total for c in claimed]
    remainders = [pool * c % total for c in claimed]
    # Callers sort claims by id, so the index breaks ties in claim-id order.
    order = sorted(range(len(claimed)), key=lambda i: (-remainders[i], i))
    for i in order[: pool - sum(base)]:
        base[i] += 1
    return base


def _micros(at: datetime | None) -> int:
    assert at is not None
    return int(at.timestamp() * 1_000_000)
