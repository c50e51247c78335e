"""The allocation rules of frozen money (broker/hub/_allocation.py), as properties over generated
claim sets, frozen amounts and small money graphs, and the wire form built from them."""

from __future__ import annotations

import itertools
import random
from collections import deque
from datetime import UTC, datetime, timedelta, timezone

import pytest
from greenchannel.v1 import trail_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.hub import (
    Allocation,
    AllocationRule,
    Claim,
    allocate,
    allocation_message,
    claim_payable,
    payable,
)

NOTICE = datetime(2026, 4, 1, tzinfo=UTC)
M = timedelta(minutes=1)
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BEIJING = timezone(timedelta(hours=8))
FAST = settings(max_examples=60, deadline=None)

# -- strategies ---------------------------------------------------------------------------------

# Few distinct times, so equal deposit times (ties) are common; the same instant in two zones.
_times = st.builds(
    lambda minutes, beijing: (T0 + timedelta(minutes=minutes)).astimezone(BEIJING if beijing else UTC),
    st.integers(0, 5),
    st.booleans(),
)
_deposits = st.one_of(st.none(), _times)


@st.composite
def claim_sets(draw: st.DrawFn, *, max_size: int = 8) -> list[Claim]:
    """Claims with distinct ids, each of one of three cases; traced or not."""
    ids = draw(st.lists(st.integers(0, 99), min_size=0, max_size=max_size, unique=True))
    return [
        Claim(
            claim_id=f"c{i:02d}",
            case_number=draw(st.sampled_from(["CASE-1", "CASE-2", "CASE-3"])),
            issuing_agency="police-a",
            victim_id=f"v{i % 5}",
            claimed=draw(st.integers(1, 5_000)),
            deposited_at=draw(_deposits),
        )
        for i in ids
    ]


_frozen = st.integers(0, 30_000)

_Event = tuple[str, int, datetime]
"""A victim's deposit (its name, amount and time) or a withdrawal (name "", amount, time)."""


def claim(
    claim_id: str,
    claimed: int,
    deposited_at: datetime | None = None,
    *,
    case: str = "CASE-1",
    victim: str = "",
) -> Claim:
    """A claim of police "p"; its victim is named after the claim unless given."""
    return Claim(
        claim_id=claim_id,
        case_number=case,
        issuing_agency="p",
        victim_id=victim or claim_id,
        claimed=claimed,
        deposited_at=deposited_at,
    )


def deposit_claims(events: list[_Event]) -> list[Claim]:
    """A traced claim per deposit of an account history."""
    return [claim(name, amount, at) for name, amount, at in events if name]


def amounts(allocation: Allocation) -> dict[str, int]:
    return {share.claim.claim_id: share.amount for share in allocation.shares}


def _order(claim: Claim) -> tuple[int, str]:
    assert claim.deposited_at is not None
    return (-int((claim.deposited_at - T0) / timedelta(microseconds=1)), claim.claim_id)


# -- what is shared -----------------------------------------------------------------------------


@FAST
@given(claims=claim_sets(), frozen=_frozen)
def test_shares_never_exceed_the_frozen_money_nor_a_claim(claims: list[Claim], frozen: int) -> None:
    allocation = allocate(frozen, claims, notice_ends_at=NOTICE)
    total = sum(share.amount for share in allocation.shares)
    assert total <= frozen
    assert total + allocation.unallocated == frozen
    assert len(allocation.shares) == len(claims)
    for share in allocation.shares:
        assert 0 <= share.amount <= share.claim.claimed
    # Money stays unallocated only when every claim is paid in full.
    if allocation.unallocated:
        assert all(share.amount == share.claim.claimed for share in allocation.shares)


@FAST
@given(accounts=st.lists(st.tuples(_frozen, claim_sets(max_size=5)), min_size=1, max_size=4))
def test_over_several_accounts_no_more_is_shared_than_is_frozen_in_total(
    accounts: list[tuple[int, list[Claim]]],
) -> None:
    shared = sum(
        share.amount
        for frozen, claims in accounts
        for share in allocate(frozen, claims, notice_ends_at=NOTICE).shares
    )
    assert shared <= sum(frozen for frozen, _ in accounts)


@FAST
@given(claimed=st.integers(1, 10_000), frozen=_frozen, at=_times)
def test_a_single_traced_deposit_goes_straight_back(claimed: int, frozen: int, at: datetime) -> None:
    only = claim("only", claimed, at)
    (share,) = allocate(frozen, [only], notice_ends_at=NOTICE).shares
    assert share.amount == min(claimed, frozen)
    assert share.rule is AllocationRule.DEPOSIT_ORDER
    assert share.payable_after is None


@FAST
@given(claims=claim_sets(), frozen=_frozen)
def test_the_latest_deposits_are_paid_first(claims: list[Claim], frozen: int) -> None:
    allocation = allocate(frozen, claims, notice_ends_at=NOTICE)
    traced = [share for share in allocation.shares if share.rule is AllocationRule.DEPOSIT_ORDER]
    assert [share.claim for share in traced] == sorted(
        (c for c in claims if c.deposited_at is not None), key=_order
    )
    # No earlier deposit gets anything while a later one is short.
    for later, earlier in itertools.pairwise(traced):
        if later.amount < later.claim.claimed:
            assert earlier.amount == 0
    # The traced claims take all they can before the untraced ones see anything.
    assert sum(share.amount for share in traced) == min(frozen, sum(share.claim.claimed for share in traced))


@FAST
@given(claims=claim_sets(), frozen=_frozen)
def test_untraced_claims_share_the_rest_pro_rata_to_the_unit(claims: list[Claim], frozen: int) -> None:
    allocation = allocate(frozen, claims, notice_ends_at=NOTICE)
    traced = sum(s.amount for s in allocation.shares if s.rule is AllocationRule.DEPOSIT_ORDER)
    untraced = [s for s in allocation.shares if s.rule is AllocationRule.PRO_RATA]
    assert [s.claim.claim_id for s in untraced] == sorted(s.claim.claim_id for s in untraced)
    assert all(s.payable_after == NOTICE for s in untraced)
    pool = frozen - traced
    total = sum(s.claim.claimed for s in untraced)
    if total <= pool:
        assert all(s.amount == s.claim.claimed for s in untraced)
        return
    assert sum(s.amount for s in untraced) == pool
    for share in untraced:
        exact_numerator = pool * share.claim.claimed  # the exact share is this / total
        assert abs(share.amount * total - exact_numerator) < total
    # Remainders: a unit goes to a larger remainder first, ties to the smaller claim id.
    rounded_up = [s for s in untraced if s.amount * total > pool * s.claim.claimed]
    rounded_down = [s for s in untraced if s.amount * total < pool * s.claim.claimed]
    for up in rounded_up:
        for down in rounded_down:
            key_up = (-(pool * up.claim.claimed % total), up.claim.claim_id)
            key_down = (-(pool * down.claim.claimed % total), down.claim.claim_id)
            assert key_up < key_down


def test_pro_rata_ties_go_to_the_smaller_claim_id() -> None:
    claims = [claim(name, 100) for name in ("b", "c", "a")]
    # 100 over three equal claims: 33 each and one unit left, for "a".
    assert amounts(allocate(100, claims, notice_ends_at=NOTICE)) == {"a": 34, "b": 33, "c": 33}


# -- order does not matter ------------------------------------------------------------------------


@FAST
@given(claims=claim_sets(), frozen=_frozen, seed=st.integers(0, 2**32 - 1), repeat=st.data())
def test_any_order_and_repeats_of_the_same_claims_give_the_same_shares(
    claims: list[Claim], frozen: int, seed: int, repeat: st.DataObject
) -> None:
    expected = allocate(frozen, claims, notice_ends_at=NOTICE)
    again = claims + repeat.draw(st.lists(st.sampled_from(claims), max_size=4)) if claims else []
    random.Random(seed).shuffle(again)
    assert allocate(frozen, again, notice_ends_at=NOTICE) == expected


@FAST
@given(claims=claim_sets(), frozen=_frozen, seed=st.integers(0, 2**32 - 1))
def test_competing_cases_get_the_same_answer_whatever_order_they_arrive_in(
    claims: list[Claim], frozen: int, seed: int
) -> None:
    by_case: dict[str, list[Claim]] = {}
    for claim in claims:
        by_case.setdefault(claim.case_number, []).append(claim)
    cases = list(by_case.values())
    expected = allocate(frozen, [c for case in cases for c in case], notice_ends_at=NOTICE)
    random.Random(seed).shuffle(cases)
    # Each case finds the account in turn and reads the claims of the cases already there.
    arrived: list[Claim] = []
    for case in cases:
        arrived.extend(reversed(case))
        allocation = allocate(frozen, arrived, notice_ends_at=NOTICE)
        assert sum(s.amount for s in allocation.shares) <= frozen
    assert allocate(frozen, arrived, notice_ends_at=NOTICE) == expected


# -- what is paid stays paid --------------------------------------------------------------------


@FAST
@given(claims=claim_sets(), frozen=_frozen, fractions=st.lists(st.floats(0, 1), min_size=8, max_size=8))
def test_commitments_within_the_shares_change_nothing(
    claims: list[Claim], frozen: int, fractions: list[float]
) -> None:
    plain = allocate(frozen, claims, notice_ends_at=NOTICE)
    committed = {
        share.claim.claim_id: int(share.amount * fraction)
        for share, fraction in zip(plain.shares, fractions, strict=False)
    }
    assert allocate(frozen, claims, notice_ends_at=NOTICE, committed=committed) == plain


@FAST
@given(first=claim_sets(max_size=5), late=claim_sets(max_size=5), frozen=_frozen, paid=st.floats(0, 1))
def test_a_late_claim_shares_only_what_was_not_paid(
    first: list[Claim], late: list[Claim], frozen: int, paid: float
) -> None:
    before = allocate(frozen, first, notice_ends_at=NOTICE)
    committed = {s.claim.claim_id: int(s.amount * paid) for s in before.shares}
    ids = {c.claim_id for c in first}
    claims = first + [c for c in late if c.claim_id not in ids]
    after = allocate(frozen, claims, notice_ends_at=NOTICE, committed=committed)
    assert sum(s.amount for s in after.shares) + after.unallocated == frozen
    for share in after.shares:
        assert committed.get(share.claim.claim_id, 0) <= share.amount <= share.claim.claimed


def test_a_later_deposit_found_after_a_return_gets_only_what_is_left() -> None:
    early = claim("early", 100, T0)
    late = claim("late", 100, T0 + timedelta(hours=1), case="CASE-2")
    # Without the return, FIFO gives the later deposit the money; but 80 already went back to "early".
    assert amounts(allocate(100, [early, late], notice_ends_at=NOTICE)) == {"late": 100, "early": 0}
    after = allocate(100, [early, late], notice_ends_at=NOTICE, committed={"early": 80})
    assert amounts(after) == {"late": 20, "early": 80}


# -- a money graph: deposits and withdrawals on one account -----------------------------------------


@st.composite
def account_histories(draw: st.DrawFn) -> list[_Event]:
    """Victims' deposits and the mule's withdrawals on one account, in time order."""
    events: list[_Event] = []
    balance = 0
    at = T0
    for step in range(draw(st.integers(1, 12))):
        at += timedelta(seconds=draw(st.integers(1, 3)))
        if balance and draw(st.booleans()):
            amount = draw(st.integers(1, balance))
            events.append(("", amount, at))
            balance -= amount
        else:
            amount = draw(st.integers(1, 3_000))
            events.append((f"d{step:02d}", amount, at))
            balance += amount
    return events


def fifo_replay(events: list[_Event]) -> tuple[dict[str, int], int]:
    """Clayton's Case replayed event by event: each withdrawal takes the earliest money still there.
    What each deposit still has, and the balance (what is frozen)."""
    remaining: dict[str, int] = {}
    queue: deque[str] = deque()
    for name, amount, _ in events:
        if name:
            remaining[name] = amount
            queue.append(name)
            continue
        owed = amount
        while owed:
            taken = min(remaining[queue[0]], owed)
            remaining[queue[0]] -= taken
            owed -= taken
            if not remaining[queue[0]]:
                queue.popleft()
    return remaining, sum(remaining.values())


@FAST
@given(events=account_histories())
def test_deposit_order_is_first_in_first_out_on_a_money_graph(events: list[_Event]) -> None:
    remaining, frozen = fifo_replay(events)
    claims = deposit_claims(events)
    allocation = allocate(frozen, claims, notice_ends_at=NOTICE)
    assert amounts(allocation) == remaining
    assert allocation.unallocated == 0


def test_a_withdrawal_takes_the_earliest_deposit_first() -> None:
    # d1 100, then d2 50, then 120 withdrawn: 30 is left, all of it d2's.
    events: list[_Event] = [("d1", 100, T0), ("d2", 50, T0 + M), ("", 120, T0 + 2 * M)]
    remaining, frozen = fifo_replay(events)
    assert (remaining, frozen) == ({"d1": 0, "d2": 30}, 30)
    claims = deposit_claims(events)
    assert amounts(allocate(frozen, claims, notice_ends_at=NOTICE)) == remaining


# -- refusals -------------------------------------------------------------------------------------


def test_what_no_rule_can_share_is_refused() -> None:
    one = claim("a", 10, T0)
    with pytest.raises(ValueError, match="two different claims"):
        allocate(10, [one, claim("a", 10, T0, case="CASE-2")], notice_ends_at=NOTICE)
    with pytest.raises(ValueError, match="timezone-aware"):
        claim("n", 1, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="positive"):
        claim("z", 0)
    with pytest.raises(ValueError, match="negative"):
        allocate(-1, [one], notice_ends_at=NOTICE)
    with pytest.raises(ValueError, match="not among the claims"):
        allocate(10, [one], notice_ends_at=NOTICE, committed={"b": 1})
    with pytest.raises(ValueError, match="between 0 and its claim"):
        allocate(10, [one], notice_ends_at=NOTICE, committed={"a": 11})
    with pytest.raises(ValueError, match="than the account holds"):
        allocate(5, [one], notice_ends_at=NOTICE, committed={"a": 6})


def test_deposits_a_microsecond_apart_keep_their_order() -> None:
    # Far from the epoch a float timestamp cannot tell these apart; the claim ids would then decide.
    at = datetime(2026, 3, 1, 9, 0, 0, 999_999, tzinfo=UTC)
    first = claim("b", 10, at)
    second = claim("a", 10, at + timedelta(microseconds=1))
    assert amounts(allocate(10, [first, second], notice_ends_at=NOTICE)) == {"a": 10, "b": 0}
    assert amounts(allocate(10, [second, first], notice_ends_at=NOTICE)) == {"a": 10, "b": 0}


# -- on the wire, and what may still be paid --------------------------------------------------------


def test_the_wire_form_and_what_may_still_be_paid() -> None:
    traced = claim("t", 300, T0, victim="v1")
    untraced = [
        Claim(
            claim_id=f"u{i}",
            case_number="CASE-2",
            issuing_agency="q",
            victim_id=f"w{i}",
            claimed=200,
            deposited_at=None,
        )
        for i in range(2)
    ]
    allocation = allocate(500, [untraced[1], traced, untraced[0]], notice_ends_at=NOTICE)
    assert amounts(allocation) == {"t": 300, "u0": 100, "u1": 100}
    computed = datetime(2026, 3, 2, tzinfo=BEIJING)
    message = allocation_message(
        allocation,
        node_id="node",
        bank="bank-a",
        currency="CNY",
        returned={"t": 120},
        reserved={"t": 30, "u0": 10},
        computed_at=computed,
    )
    assert message.node_id == "node"
    assert message.bank == "bank-a"
    assert (message.frozen.minor_units, message.unallocated.minor_units) == (500, 0)
    assert message.frozen.currency == "CNY"
    assert message.computed_at.ToDatetime(tzinfo=UTC) == computed
    assert message.notice_ends_at.ToDatetime(tzinfo=UTC) == NOTICE
    assert [c.claim_id for c in message.claims] == ["t", "u0", "u1"]
    first, second, _ = message.claims
    assert first.rule == trail_pb2.ALLOCATION_RULE_DEPOSIT_ORDER
    assert (first.share.minor_units, first.returned.minor_units, first.reserved.minor_units) == (300, 120, 30)
    assert first.deposited_at.ToDatetime(tzinfo=UTC) == T0
    assert not first.HasField("payable_after")
    assert (first.case_number, first.issuing_agency, first.victim_id) == ("CASE-1", "p", "v1")
    assert second.rule == trail_pb2.ALLOCATION_RULE_PRO_RATA
    assert not second.HasField("deposited_at")
    assert second.payable_after.ToDatetime(tzinfo=UTC) == NOTICE

    before, after = NOTICE - timedelta(seconds=1), NOTICE
    assert claim_payable(first, at=before) == 150
    assert claim_payable(second, at=before) == 0  # pro rata: not before the notice period ends
    assert claim_payable(second, at=after) == 90
    shares = {share.claim.claim_id: share for share in allocation.shares}
    assert payable(shares["t"], returned=120, reserved=30, at=before) == 150
    assert payable(shares["u0"], returned=0, reserved=10, at=before) == 0
    assert payable(shares["u0"], returned=0, reserved=10, at=after) == 90
    # Never below nothing, even when more went back than a share now says.
    assert payable(shares["t"], returned=300, reserved=50, at=after) == 0
