"""The broker's check of a release naming an amount: what the hold still holds and the living-expense
caps, counted over the hold's earlier releases (executed by what they lifted, pending by what they
asked). Pure: the case's requests are given as a dict."""

from __future__ import annotations

from decimal import Decimal

import pytest
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.hub import HubError
from broker.hub._partial_release import check_partial_release, held_at_outcome, release_seed
from broker.hub._policy import ReleasePolicy

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
