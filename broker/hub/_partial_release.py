"""Releases of part of a hold: how much a hold still holds, and the policy's living-expense caps.

A RELEASE naming an amount lifts only that much; the rest stays held. The broker knows what a hold
held at its outcome (its result) and what each release of it asked (``RequestStatus.release_seed``,
kept at intake) or lifted (``Result.amount_released``, once the bank answered), so it refuses a
release for more than is left before anything is sent, and keeps the total released for living
expenses within the policy's caps. The bank checks the amount again against its own books.

**Atomic.** Counting the journal alone would let two releases submitted at the same moment both
pass (neither is stored when the other is counted). So every release naming an amount is also
reserved, before it is stored, as a :class:`~greenchannel.v1.trail_pb2.ReleaseEntry` in the
account's return record (``AccountReturns``, compare-and-set, :mod:`broker.hub._returns`), and the
check is made again inside that compare-and-set (:func:`check_release`): a release with an entry is
counted by its entry (RESERVED: what it asked; LIFTED: what the bank lifted; VOID: nothing), every
other release of the hold by its journal record. Entries are never removed, so no release is
counted twice or missed, whichever of the two a concurrent request reached first. The same record
holds the account's RETURN_FUNDS reservations: a return counts the reserved releases as no longer
frozen (:func:`released_from`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, trail_pb2

from broker.protocol import EXECUTED_STATES, FieldViolation, to_timestamp

from ._errors import AlreadyExistsError, IllegalTransitionError, InvalidRequestError, PermissionDeniedError
from ._policy import ReleasePolicy

__all__ = [
    "HoldReleases",
    "ReleasePlan",
    "check_partial_release",
    "check_release",
    "held_at_outcome",
    "release_seed",
    "released_from",
    "releases_among",
    "reserve_release",
    "settle_release",
    "void_release",
]

# A release that ended so did not lift anything.
_LIFTED_NOTHING = {
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
    common_pb2.REQUEST_STATE_CANCELLED,
}


def release_seed(request: requests_pb2.Request, *, node_id: str = "") -> lifecycle_pb2.ReleaseSeed | None:
    """What the broker keeps of a RELEASE's body: how much and why (no account), and the account
    record its amount is reserved in (``node_id``, digested)."""
    if request.WhichOneof("body") != "release":
        return None
    release = request.release
    seed = lifecycle_pb2.ReleaseSeed(purpose=release.purpose, node_id=node_id)
    if release.HasField("amount"):
        seed.amount.CopyFrom(release.amount)
    if release.HasField("item_index"):
        seed.item_index = release.item_index
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


def releases_among(
    hold_id: str, statuses: Iterable[lifecycle_pb2.RequestStatus]
) -> tuple[lifecycle_pb2.RequestStatus, ...]:
    """The releases of ``hold_id`` among ``statuses`` (the hold's case's requests)."""
    return tuple(s for s in statuses if s.type == common_pb2.REQUEST_TYPE_RELEASE and s.target_id == hold_id)


def released_from(
    hold_id: str,
    statuses: Iterable[lifecycle_pb2.RequestStatus],
    entries: Iterable[trail_pb2.ReleaseEntry] = (),
    *,
    except_key: str = "",
) -> HoldReleases:
    """What the releases of ``hold_id`` lifted or will lift: those with an entry in the account's
    record counted by it, the others by their journal record (``statuses``). ``except_key``: the
    release being checked (a retry's own entry does not count against it)."""
    released = living = 0
    all_pending = False
    counted: set[str] = set()
    for entry in entries:
        if entry.hold_id != hold_id:
            continue
        counted.add(entry.request_id)
        if except_key and entry.order_key == except_key:
            continue
        if entry.state == trail_pb2.RELEASE_ENTRY_STATE_RESERVED:
            amount = entry.amount.minor_units
        elif entry.state == trail_pb2.RELEASE_ENTRY_STATE_LIFTED:
            amount = entry.released.minor_units
        else:
            continue
        released += amount
        if entry.living_expenses:
            living += amount
    for status in statuses:
        if (
            status.type != common_pb2.REQUEST_TYPE_RELEASE
            or status.target_id != hold_id
            or status.id in counted
            or status.state in _LIFTED_NOTHING
        ):
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


@dataclass(frozen=True, kw_only=True)
class ReleasePlan:
    """A release naming an amount that passed every check on the journal, ready to be reserved."""

    hold: lifecycle_pb2.RequestStatus
    """The stop-payment or freeze it lifts part of."""
    held: common_pb2.Money
    """What the hold held at its outcome."""
    asked: int
    """Minor units the release asks."""
    living_expenses: bool
    """For living expenses: within ``cap``."""
    cap: int
    """Most minor units the policy lets be released for living expenses from the hold, in all."""
    earlier: tuple[lifecycle_pb2.RequestStatus, ...]
    """The hold's releases in the journal when it was checked."""


def check_release(
    plan: ReleasePlan, entries: Iterable[trail_pb2.ReleaseEntry] = (), *, order_key: str = ""
) -> None:
    """Raise ``MORE_THAN_HELD`` or ``LIVING_EXPENSES_CAP`` unless the release fits what the hold
    still holds after the releases counted so far (``entries``: the account record's)."""
    earlier = released_from(plan.hold.id, plan.earlier, entries, except_key=order_key)
    held = plan.held
    left = 0 if earlier.all_pending else held.minor_units - earlier.released
    if plan.asked > left:
        raise IllegalTransitionError(
            f"the hold holds {_units(max(0, left), held.currency)} after earlier releases;"
            f" {_units(plan.asked, held.currency)} is more than that",
            reason="MORE_THAN_HELD",
        )
    if plan.living_expenses and earlier.living_expenses + plan.asked > plan.cap:
        raise PermissionDeniedError(
            f"the policy allows at most {_units(plan.cap, held.currency)} released for living expenses"
            f" from this hold; {_units(earlier.living_expenses, held.currency)} was released already",
            reason="LIVING_EXPENSES_CAP",
        )


def reserve_release(
    record: trail_pb2.AccountReturns,
    plan: ReleasePlan,
    *,
    request_id: str,
    order_key: str,
    content: str,
    now: datetime,
) -> bool:
    """Add the release as a RESERVED entry; False when its entry is there already (a retry of the
    same release). Raises ``IDEMPOTENCY_KEY_REUSED`` for the same key with another body."""
    mine = next((e for e in record.releases if e.order_key == order_key), None)
    if mine is not None:
        if mine.content != content:
            raise AlreadyExistsError(
                f"the idempotency key was first used for request {mine.request_id}, with another body",
                reason="IDEMPOTENCY_KEY_REUSED",
            )
        return False
    record.releases.add(
        request_id=request_id,
        order_key=order_key,
        content=content,
        hold_id=plan.hold.id,
        amount=common_pb2.Money(currency=plan.held.currency, minor_units=plan.asked),
        living_expenses=plan.living_expenses,
        state=trail_pb2.RELEASE_ENTRY_STATE_RESERVED,
        reserved_at=to_timestamp(now),
    )
    return True


def settle_release(record: trail_pb2.AccountReturns, status: lifecycle_pb2.RequestStatus) -> bool:
    """The release ``status`` ended: its reserved entry becomes LIFTED (what the bank reported
    lifted) or VOID. Idempotent."""
    changed = False
    for entry in record.releases:
        if entry.request_id != status.id or entry.state != trail_pb2.RELEASE_ENTRY_STATE_RESERVED:
            continue
        if status.state in EXECUTED_STATES:
            entry.state = trail_pb2.RELEASE_ENTRY_STATE_LIFTED
            entry.released.CopyFrom(
                status.result.amount_released if status.result.HasField("amount_released") else entry.amount
            )
            changed = True
        elif status.state in _LIFTED_NOTHING or status.state == common_pb2.REQUEST_STATE_EXPIRED:
            entry.state = trail_pb2.RELEASE_ENTRY_STATE_VOID
            changed = True
    return changed


def void_release(record: trail_pb2.AccountReturns, request_id: str) -> bool:
    """The release's reserved entry lifted nothing (it was never stored)."""
    changed = False
    for entry in record.releases:
        if entry.request_id == request_id and entry.state == trail_pb2.RELEASE_ENTRY_STATE_RESERVED:
            entry.state = trail_pb2.RELEASE_ENTRY_STATE_VOID
            changed = True
    return changed


async def check_partial_release(
    request: requests_pb2.Request,
    hold: lifecycle_pb2.RequestStatus,
    *,
    policy: ReleasePolicy,
    ids: Callable[[str, str], Awaitable[list[str]]],
    get: Callable[[str], Awaitable[lifecycle_pb2.RequestStatus]],
) -> ReleasePlan | None:
    """Refuse a release that asks more than the hold still holds, or more for living expenses
    than the policy allows, counted on the journal; the plan to reserve it (None for a release of
    all: nothing to check). Reasons: ``AMOUNT_REQUIRED``, ``CURRENCY_MISMATCH``, ``OTHER_CASE``,
    ``MORE_THAN_HELD``, ``LIVING_EXPENSES_CAP``."""
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
        return None
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
    statuses = [
        await get(request_id)
        for request_id in await ids(case.issuing_agency, case.case_number)
        if request_id != hold.id
    ]
    plan = ReleasePlan(
        hold=hold,
        held=held,
        asked=release.amount.minor_units,
        living_expenses=living,
        cap=policy.living_expenses_cap(held.currency, held.minor_units) if living else 0,
        earlier=releases_among(hold.id, statuses),
    )
    check_release(plan)
    return plan


def _units(minor_units: int, currency: str) -> str:
    return f"{currency} {minor_units // 100}.{minor_units % 100:02d}"
