"""The broker's check of a release naming an amount: what the hold still holds and the living-expense
caps, counted over the hold's earlier releases (executed by what they lifted, pending by what they
asked), and the reservation in the account's record that makes the check atomic. Pure: the case's
requests are given as a dict, the record is a message."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from broker.hub import HubError
from broker.hub._errors import AlreadyExistsError
from broker.hub._partial_release import (
    ReleasePlan,
    check_partial_release,
    check_release,
    held_at_outcome,
    release_seed,
    released_from,
    reserve_release,
    settle_release,
    void_release,
)
from broker.hub._policy import ReleasePolicy
from broker.hub._returns_rules import stale_entries, uncovered

POLICE = "police-310115"
CASE = "SH-PD-2026-1203-0013"
HOLD = "0190aaaa-0000-7000-8000-000000000001"
LIVING = requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
POLICY = ReleasePolicy(living_expenses_caps={"CNY": 500_000}, living_expenses_share=Decimal("0.5"))


def cny(minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor_units)


def case_ref(case_number: str = CASE) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(case_number=case_number, issuing_agency=POLICE)


def hold(frozen: int = 1_000_000) -> lifecycle_pb2.RequestStatus:
    return lifecycle_pb2.RequestStatus(
        id=HOLD,
        type=common_pb2.REQUEST_TYPE_FREEZE,
        case_ref=case_ref(),
        state=common_pb2.REQUEST_STATE_EXECUTED,
        result=results_pb2.Result(outcome=common_pb2.REQUEST_STATE_EXECUTED, amount_frozen=cny(frozen)),
    )


def request(minor_units: int | None, purpose: int = LIVING, case_number: str = CASE) -> requests_pb2.Request:
    body = requests_pb2.Release(target_request_id=HOLD, purpose=purpose)  # type: ignore[arg-type]
    if minor_units is not None:
        body.amount.CopyFrom(cny(minor_units))
    return requests_pb2.Request(case_ref=case_ref(case_number), release=body)


def earlier(
    n: int, state: int, *, asked: int | None, lifted: int | None = None, purpose: int = LIVING
) -> lifecycle_pb2.RequestStatus:
    status = lifecycle_pb2.RequestStatus(
        id=f"0190aaaa-0000-7000-8000-0000000001{n:02d}",
        type=common_pb2.REQUEST_TYPE_RELEASE,
        target_id=HOLD,
        state=state,  # type: ignore[arg-type]
    )
    seed = release_seed(request(asked, purpose))
    assert seed is not None
    status.release_seed.CopyFrom(seed)
    if lifted is not None:
        status.result.amount_released.CopyFrom(cny(lifted))
    return status


async def check(
    new: requests_pb2.Request, *others: lifecycle_pb2.RequestStatus, policy: ReleasePolicy = POLICY
) -> None:
    statuses = {s.id: s for s in (hold(), *others)}

    async def ids(owner: str, case_number: str) -> list[str]:
        assert (owner, case_number) == (POLICE, CASE)
        return sorted(statuses)

    async def get(request_id: str) -> lifecycle_pb2.RequestStatus:
        return statuses[request_id]

    await check_partial_release(new, hold(), policy=policy, ids=ids, get=get)


async def refused(new: requests_pb2.Request, *others: lifecycle_pb2.RequestStatus) -> str:
    with pytest.raises(HubError) as info:
        await check(new, *others)
    return info.value.reason


EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
SUBMITTED = common_pb2.REQUEST_STATE_SUBMITTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


async def test_within_the_cap_and_what_is_held() -> None:
    await check(request(500_000))
    await check(request(200_000), earlier(1, EXECUTED, asked=300_000, lifted=300_000))
    # An ordinary partial release is not capped, only bounded by what is held.
    await check(request(1_000_000, purpose=requests_pb2.RELEASE_PURPOSE_UNSPECIFIED))
    # A release of all needs no amount.
    await check(request(None, purpose=requests_pb2.RELEASE_PURPOSE_UNSPECIFIED))


async def test_the_cap_counts_earlier_living_expense_releases_executed_or_pending() -> None:
    assert await refused(request(500_001)) == "LIVING_EXPENSES_CAP"
    assert (
        await refused(request(200_001), earlier(1, EXECUTED, asked=300_000, lifted=300_000))
        == "LIVING_EXPENSES_CAP"
    )
    # A pending one counts for what it asked; a rejected one lifted nothing.
    assert await refused(request(200_001), earlier(1, SUBMITTED, asked=300_000)) == "LIVING_EXPENSES_CAP"
    await check(request(500_000), earlier(1, REJECTED, asked=300_000))
    # Releases for another purpose count against what is held, not against the cap.
    await check(
        request(500_000),
        earlier(1, EXECUTED, asked=400_000, lifted=400_000, purpose=requests_pb2.RELEASE_PURPOSE_UNSPECIFIED),
    )


async def test_the_share_of_the_hold_caps_too() -> None:
    small = ReleasePolicy(living_expenses_caps={"CNY": 500_000}, living_expenses_share=Decimal("0.1"))
    await check(request(100_000), policy=small)
    with pytest.raises(HubError) as info:
        await check(request(100_001), policy=small)
    assert info.value.reason == "LIVING_EXPENSES_CAP"
    # No cap for a currency is no living-expense release in it.
    assert ReleasePolicy(living_expenses_caps={"EUR": 1}).living_expenses_cap("CNY", 10**9) == 0


async def test_more_than_held_counts_every_earlier_release() -> None:
    other = requests_pb2.RELEASE_PURPOSE_UNSPECIFIED
    assert await refused(request(1_000_001, purpose=other)) == "MORE_THAN_HELD"
    assert (
        await refused(request(600_001, purpose=other), earlier(1, EXECUTED, asked=None, lifted=400_000))
        == "MORE_THAN_HELD"
    )
    # A pending release of all that is left leaves nothing.
    assert await refused(request(1, purpose=other), earlier(1, SUBMITTED, asked=None)) == "MORE_THAN_HELD"


async def test_bad_release_orders() -> None:
    assert await refused(request(None)) == "AMOUNT_REQUIRED"
    wrong_currency = request(100)
    wrong_currency.release.amount.currency = "USD"
    assert await refused(wrong_currency) == "CURRENCY_MISMATCH"
    assert await refused(request(100, case_number="SH-PD-2026-9999")) == "OTHER_CASE"


def test_seed_and_held_amounts() -> None:
    assert release_seed(requests_pb2.Request(freeze=requests_pb2.Freeze())) is None
    seed = release_seed(request(100))
    assert seed is not None
    assert (seed.amount, seed.purpose) == (cny(100), LIVING)
    assert held_at_outcome(hold(7)) == cny(7)
    stop = lifecycle_pb2.RequestStatus(result=results_pb2.Result(amount_held=cny(9)))
    assert held_at_outcome(stop) == cny(9)


# -- the reservation in the account's record ---------------------------------------------------------

NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)


async def plan_of(new: requests_pb2.Request, *others: lifecycle_pb2.RequestStatus) -> ReleasePlan:
    statuses = {s.id: s for s in (hold(), *others)}

    async def ids(owner: str, case_number: str) -> list[str]:
        return sorted(statuses)

    async def get(request_id: str) -> lifecycle_pb2.RequestStatus:
        return statuses[request_id]

    plan = await check_partial_release(new, hold(), policy=POLICY, ids=ids, get=get)
    assert plan is not None
    return plan


def reserved(record: trail_pb2.AccountReturns, plan: ReleasePlan, key: str, request_id: str = "") -> None:
    """What the compare-and-set does: check against the record, then reserve in it."""
    check_release(plan, record.releases, order_key=key)
    assert reserve_release(
        record, plan, request_id=request_id or f"req-{key}", order_key=key, content=f"c-{key}", now=NOW
    )


def reason_of(plan: ReleasePlan, record: trail_pb2.AccountReturns, key: str = "late") -> str:
    with pytest.raises(HubError) as info:
        check_release(plan, record.releases, order_key=key)
    return info.value.reason


async def test_two_releases_at_once_each_pass_the_journal_but_the_record_lets_one_through() -> None:
    # Both checked on the journal before either is stored: both pass there.
    first = await plan_of(request(300_000))
    second = await plan_of(request(300_000))
    record = trail_pb2.AccountReturns(node_id="mule")
    reserved(record, first, "a")
    # The second one's compare-and-set sees the first's entry: 3,000 + 3,000 over the 5,000 cap.
    assert reason_of(second, record, "b") == "LIVING_EXPENSES_CAP"
    (entry,) = record.releases
    assert (entry.hold_id, entry.amount.minor_units, entry.living_expenses) == (HOLD, 300_000, True)
    assert entry.state == trail_pb2.RELEASE_ENTRY_STATE_RESERVED
    # The same for what the hold holds: 6,000 + 5,000 of 10,000.
    other = requests_pb2.RELEASE_PURPOSE_UNSPECIFIED
    record = trail_pb2.AccountReturns(node_id="mule")
    reserved(record, await plan_of(request(600_000, purpose=other)), "c")
    assert reason_of(await plan_of(request(500_000, purpose=other)), record) == "MORE_THAN_HELD"
    check_release(await plan_of(request(400_000, purpose=other)), record.releases, order_key="d")


async def test_a_retry_finds_its_entry_and_reserves_nothing_twice() -> None:
    plan = await plan_of(request(500_000))
    record = trail_pb2.AccountReturns()
    reserved(record, plan, "a")
    # Its own entry does not count against it, and it is not added again.
    check_release(plan, record.releases, order_key="a")
    assert not reserve_release(record, plan, request_id="other-id", order_key="a", content="c-a", now=NOW)
    assert [e.request_id for e in record.releases] == ["req-a"]
    with pytest.raises(AlreadyExistsError):
        reserve_release(record, plan, request_id="x", order_key="a", content="another body", now=NOW)


async def test_an_entry_counts_once_whether_or_not_the_journal_has_its_request() -> None:
    plan = await plan_of(request(200_000))
    record = trail_pb2.AccountReturns()
    reserved(record, plan, "a", request_id=earlier(1, SUBMITTED, asked=200_000).id)
    stored = earlier(1, SUBMITTED, asked=200_000)
    # In flight (not in the journal yet) or stored: 2,000 either way, never 4,000.
    assert released_from(HOLD, [], record.releases).released == 200_000
    assert released_from(HOLD, [stored], record.releases).released == 200_000
    # A release without an entry (from before, or of all) is counted from the journal.
    plain = earlier(
        2, EXECUTED, asked=100_000, lifted=100_000, purpose=requests_pb2.RELEASE_PURPOSE_UNSPECIFIED
    )
    counted = released_from(HOLD, [stored, plain], record.releases)
    assert (counted.released, counted.living_expenses) == (300_000, 200_000)
    # Another hold's entries are not this hold's.
    assert released_from("another-hold", [], record.releases).released == 0


async def test_the_outcome_settles_the_entry_and_a_never_stored_one_is_voided() -> None:
    record = trail_pb2.AccountReturns()
    lifted = earlier(1, EXECUTED, asked=200_000, lifted=200_000)
    refused_by_bank = earlier(2, REJECTED, asked=100_000)
    for status in (lifted, refused_by_bank):
        reserved(record, await plan_of(request(status.release_seed.amount.minor_units)), status.id, status.id)
    reserved(record, await plan_of(request(50_000)), "lost", "never-stored")
    assert released_from(HOLD, [], record.releases).released == 350_000
    assert settle_release(record, lifted)
    assert settle_release(record, refused_by_bank)
    assert not settle_release(record, lifted)  # idempotent
    assert void_release(record, "never-stored")
    assert not void_release(record, "never-stored")
    states = {e.request_id: (e.state, e.released.minor_units) for e in record.releases}
    assert states == {
        lifted.id: (trail_pb2.RELEASE_ENTRY_STATE_LIFTED, 200_000),
        refused_by_bank.id: (trail_pb2.RELEASE_ENTRY_STATE_VOID, 0),
        "never-stored": (trail_pb2.RELEASE_ENTRY_STATE_VOID, 0),
    }
    # Only what the bank lifted still counts; nothing is reserved any more, nothing stale.
    assert released_from(HOLD, [], record.releases).released == 200_000
    assert stale_entries(record) == []


async def test_a_reserved_release_is_stale_until_reconciled_and_a_return_counts_it_as_lifted() -> None:
    record = trail_pb2.AccountReturns()
    reserved(record, await plan_of(request(400_000, purpose=requests_pb2.RELEASE_PURPOSE_UNSPECIFIED)), "a")
    assert stale_entries(record) == ["req-a"]
    # The return side: the frozen money shrinks by the reserved release, and what victims were
    # returned or reserved beyond it is what a release may not cause.
    frozen = 1_000_000 - released_from(HOLD, [], record.releases).released
    returned = trail_pb2.ReturnEntry(
        issuing_agency=POLICE,
        case_number=CASE,
        victim_id="v1",
        amount=cny(700_000),
        state=trail_pb2.RETURN_STATE_RESERVED,
    )
    assert uncovered(1_000_000, [returned]) == 0
    assert uncovered(frozen, [returned]) == 100_000  # 7,000 reserved, 6,000 still frozen
    returned.state = trail_pb2.RETURN_STATE_RELEASED  # the return ended unpaid: it takes nothing
    assert uncovered(frozen, [returned]) == 0
