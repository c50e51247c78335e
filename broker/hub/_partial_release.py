"""Releases of part of a hold: how much a hold still holds, and the policy's living-expense caps.

A RELEASE naming an amount lifts only that much; the rest stays held. The broker knows what a hold
held at its outcome (its result) and what each release of it asked (``RequestStatus.release_seed``,
kept at intake) or lifted (``Result.amount_released``, once the bank answered), so it refuses a
release for more than is left before anything is sent, and keeps the total released for living
expenses within the policy's caps. The bank checks the amount again against its own books.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from broker.protocol import EXECUTED_STATES, FieldViolation

from ._errors import IllegalTransitionError, InvalidRequestError, PermissionDeniedError
from ._policy import ReleasePolicy

__all__ = ["HoldReleases", "check_partial_release", "held_at_outcome", "release_seed"]

# A release that ended so did not lift anything.
_LIFTED_NOTHING = {
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
    common_pb2.REQUEST_STATE_CANCELLED,
}


def release_seed(request: requests_pb2.Request) -> lifecycle_pb2.ReleaseSeed | None:
    """What the broker keeps of a RELEASE's body: how much and why (no account)."""
    if request.WhichOneof("body") != "release":
        return None
    release = request.release
    seed = lifecycle_pb2.ReleaseSeed(purpose=release.purpose)
    if release.HasField("amount"):
        seed.amount.CopyFrom(release.amount)
    return seed


def held_at_outcome(hold: lifecycle_pb2.RequestStatus) -> common_pb2.Money:
    """What a stop-payment or freeze held when the bank executed it."""
    result = hold.result
    return result.amount_frozen if result.HasField("amount_frozen") else result.amount_held


@dataclass(frozen=True)
class HoldReleases:
    """What the releases of one hold lifted or will lift, in the hold's currency's minor units."""

    released: int
    """By every release executed or in hand (a pending release counts for what it asked)."""
    living_expenses: int
    """Of that, by releases for living expenses."""
    all_pending: bool
    """A release of all that is left is in hand: nothing more can be released."""


async def releases_of(
    hold: lifecycle_pb2.RequestStatus,
    ids: list[str],
    get: Callable[[str], Awaitable[lifecycle_pb2.RequestStatus]],
) -> HoldReleases:
    """Sum the releases of ``hold`` among the requests ``ids`` (the hold's case)."""
    released = living = 0
    all_pending = False
    for request_id in ids:
        if request_id == hold.id:
            continue
        status = await get(request_id)
        if status.type != common_pb2.REQUEST_TYPE_RELEASE or status.target_id != hold.id:
            continue
        if status.state in _LIFTED_NOTHING:
            continue
        seed = status.release_seed
        if status.state in EXECUTED_STATES and status.result.HasField("amount_released"):
            amount = status.result.amount_released.minor_units
        elif seed.HasField("amount"):
            amount = seed.amount.minor_units
        else:
            all_pending = True
            continue
        released += amount
        if seed.purpose == requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES:
            living += amount
    return HoldReleases(released=released, living_expenses=living, all_pending=all_pending)


async def check_partial_release(
    request: requests_pb2.Request,
    hold: lifecycle_pb2.RequestStatus,
    *,
    policy: ReleasePolicy,
    ids: Callable[[str, str], Awaitable[list[str]]],
    get: Callable[[str], Awaitable[lifecycle_pb2.RequestStatus]],
) -> None:
    """Refuse a release that asks more than the hold still holds, or more for living expenses
    than the policy allows. Reasons: ``AMOUNT_REQUIRED``, ``CURRENCY_MISMATCH``, ``OTHER_CASE``,
    ``MORE_THAN_HELD``, ``LIVING_EXPENSES_CAP``. A release without an amount lifts all: nothing to check."""
    release = request.release
    living = release.purpose == requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    if not release.HasField("amount"):
        if living:
            raise InvalidRequestError(
                "a release for living expenses must name the amount to release",
                (
                    FieldViolation(
                        field="request.release.amount",
                        rule="required",
                        description="a living-expense release names its amount",
                    ),
                ),
                reason="AMOUNT_REQUIRED",
            )
        return
    held = held_at_outcome(hold)
    if release.amount.currency != held.currency:
        raise InvalidRequestError(
            f"the hold is in {held.currency}, the release in {release.amount.currency}",
            (
                FieldViolation(
                    field="request.release.amount.currency",
                    rule="hold_currency",
                    description="the currency of the hold",
                ),
            ),
            reason="CURRENCY_MISMATCH",
        )
    case = hold.case_ref
    if request.case_ref.case_number != case.case_number:
        # The earlier releases of a hold are found under its case: a part released under another
        # case number would escape the count.
        raise IllegalTransitionError(
            "a release of part of a hold is filed under the hold's case", reason="OTHER_CASE"
        )
    earlier = await releases_of(hold, await ids(case.issuing_agency, case.case_number), get)
    left = 0 if earlier.all_pending else held.minor_units - earlier.released
    asked = release.amount.minor_units
    if asked > left:
        raise IllegalTransitionError(
            f"the hold holds {_units(left, held.currency)} after earlier releases;"
            f" {_units(asked, held.currency)} is more than that",
            reason="MORE_THAN_HELD",
        )
    if living:
        cap = policy.living_expenses_cap(held.currency, held.minor_units)
        if earlier.living_expenses + asked > cap:
            raise PermissionDeniedError(
                f"the policy allows at most {_units(cap, held.currency)} released for living expenses from"
                f" this hold; {_units(earlier.living_expenses, held.currency)} was released already",
                reason="LIVING_EXPENSES_CAP",
            )


def _units(minor_units: int, currency: str) -> str:
    return f"{currency} {minor_units // 100}.{minor_units % 100:02d}"
