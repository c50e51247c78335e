"""RETURN_FUNDS at the broker: the allocation of an account's frozen money, the check of an
order's payouts against it, and the reservation that keeps two orders from paying one share twice.

**What is shared.** Every case holding the account (the index, :mod:`broker.hub._account_cases`)
contributes its trail's requests on the account's node as claims, and its holds there as the
frozen money (:mod:`broker.hub._returns_rules`); :func:`broker.hub._allocation.allocate` shares
the money over the claims. The notice period of untraced claims runs from the account's first
hold (``[return] notice_period`` in the policy). Money the account's record says was returned or
is reserved stays with its claims (:func:`~broker.hub._returns_rules.share_out`), in every
allocation computed here: the intake check, its re-check in the compare-and-set, the allocation
shown. So a claim that arrives after a return (another case freezing the account, a later deposit)
is shared only what is left, never money already paid out.

**Reservation.** One record per account (``AccountReturns`` in KV ``gc_returns``, key = node id),
changed only by compare-and-set: an order's payouts are checked against the shares less what the
record says is reserved or returned, and added as RESERVED entries in the same write, BEFORE the
request is stored and sent. Two concurrent orders on one account serialize on that record: the
second is checked against the first's reservation.

**Why reservations cannot leak.** Entries carry the order's idempotency binding (sender and key,
hashed, as the journal's ``Nats-Msg-Id``) and are reserved under the request id intake is about to
store. A retry of the same order (same key) finds its entries and reuses that request id, so it
reserves nothing twice and lands on the same request. If storing fails, intake releases the
entries at once when the journal does not have the request. And if the broker dies in between,
the next reservation on the account checks every reserved entry against the journal: a request
that was never stored (after a grace period, so an order in flight on another replica is not
mistaken for one), or that ended unpaid (rejected, failed, cancelled, expired), has its entries
released; one the bank paid is settled. Keying by request id alone would leave a retry unable to
find its reservation; releasing only on failure would leak at a crash: the two together close both.

**Partial releases share the record.** A RELEASE naming an amount is reserved in the same record
(a ``ReleaseEntry``, :mod:`broker.hub._partial_release`) before it is stored, by the same
compare-and-set, and checked there against the hold's other releases, and against the returns:
it may not leave less frozen on the account than was returned or is reserved for victims
(``MORE_THAN_HELD``). A return counts reserved releases as no longer frozen (the allocation is
computed again inside the compare-and-set, from the record it writes). So a release and a return
on one account are checked one after the other, whichever comes first. Release entries are
reconciled, settled and released exactly as return entries are (their outcome runs
:meth:`Returns.after_outcome` too).

**Settlement.** When the order reaches an outcome (:meth:`Returns.after_outcome`, called as every
outcome hook is, at least once), its entries become RETURNED with the amounts the bank reported
per payout (``result.returns``), or RELEASED. Idempotent: a settled entry is not settled again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, trail_pb2
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker.protocol import FINAL_STATES, Agency, Clock, Registry

from ._account_cases import AccountCases, CaseKey
from ._allocation import Claim
from ._allocation_wire import allocation_message
from ._errors import (
    ConflictError,
    IllegalTransitionError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from ._partial_release import (
    ReleasePlan,
    check_release,
    released_from,
    reserve_release,
    settle_release,
    void_release,
)
from ._policy import ReturnPolicy
from ._returns_rules import (
    HoldView,
    Payout,
    Shared,
    check_order,
    claims_on,
    currency_on,
    first_hold_at,
    frozen_on,
    holds_in,
    release,
    reserve,
    settle,
    share_out,
    stale_entries,
    taken,
    uncovered,
)
from ._store import IN_FLIGHT_GRACE, LazyBucket, RequestStore, never_stored
from ._trail import CaseRequests, TrailRecorder
from ._trail_store import TrailStore

__all__ = ["RETURNS_BUCKET", "Reconciled", "ReturnPlan", "ReturnRecords", "Returns"]

log = structlog.get_logger(__name__)

RETURNS_BUCKET = "gc_returns"
"""KV bucket of the per-account return records."""

_CAS_ATTEMPTS = 16


class ReturnRecords:
    """``AccountReturns`` per account in KV, changed by compare-and-set."""

    def __init__(self, js: JetStreamContext, *, replicas: int = 1) -> None:
        self._kv = LazyBucket(js, RETURNS_BUCKET, replicas=replicas)

    async def _bucket(self) -> KeyValue:
        return await self._kv.get()

    async def get(self, node_id: str) -> tuple[trail_pb2.AccountReturns, int | None]:
        """The account's record (empty when none) and its revision (None when none)."""
        kv = await self._bucket()
        try:
            entry = await kv.get(node_id)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return trail_pb2.AccountReturns(node_id=node_id), None
        except nats.errors.Error as exc:
            raise UnavailableError(f"cannot read the account's returns: {exc}") from exc
        return trail_pb2.AccountReturns.FromString(entry.value or b""), entry.revision

    async def update(
        self, node_id: str, change: Callable[[trail_pb2.AccountReturns], bool]
    ) -> trail_pb2.AccountReturns:
        """Apply ``change`` (True: it changed the record) by compare-and-set; the record after.
        ``change`` may run several times and may raise to refuse (nothing is written then)."""
        kv = await self._bucket()
        for _ in range(_CAS_ATTEMPTS):
            record, revision = await self.get(node_id)
            if not change(record):
                return record
            data = record.SerializeToString()
            try:
                if revision is None:
                    await kv.create(node_id, data)
                else:
                    await kv.update(node_id, data, last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another order or outcome wrote the account's record since: again
            except nats.errors.Error as exc:
                raise UnavailableError(f"cannot store the account's returns: {exc}") from exc
            return record
        raise ConflictError("the account's returns kept changing under concurrent updates")


class _NeedsAllocation(Exception):
    """A release's compare-and-set found returns on the account it had not read the allocation for."""


def _returning(record: trail_pb2.AccountReturns) -> bool:
    """Whether money on the account was returned or is reserved for a return."""
    return any(taken(e) > 0 for e in record.entries)


@dataclass(frozen=True, kw_only=True)
class AccountView:
    """What the broker knows about the money frozen on one account, over every case holding it."""

    node_id: str
    bank: str
    cases: tuple[CaseKey, ...]
    trails: tuple[trail_pb2.Trail, ...]
    holds: tuple[HoldView, ...]
    """The holds, their ``released`` not counted yet (see :meth:`frozen_for`)."""
    releases: tuple[lifecycle_pb2.RequestStatus, ...]
    """The releases of those holds in the journal, in any state."""
    claims: tuple[Claim, ...]
    currency: str
    notice_ends_at: datetime

    def frozen_for(self, record: trail_pb2.AccountReturns) -> int:
        """The money frozen once the releases the account's record reserved or lifted are counted
        (a pending release counts as lifted already)."""
        holds = []
        for hold in self.holds:
            lifted = released_from(hold.request_id, self.releases, record.releases)
            released = hold.held if lifted.all_pending else lifted.released
            holds.append(replace(hold, released=released))
        return frozen_on(holds)

    def shared(self, record: trail_pb2.AccountReturns) -> Shared:
        """The allocation of what is frozen (:meth:`frozen_for`), with the record's entries
        (returned, reserved) kept with their claims."""
        return share_out(
            self.frozen_for(record), self.claims, record.entries, notice_ends_at=self.notice_ends_at
        )


@dataclass(frozen=True, kw_only=True)
class Reconciled:
    """Reserved entries of orders that ended (to settle) or never reached the journal (to release)."""

    ended: tuple[lifecycle_pb2.RequestStatus, ...] = ()
    unstored: tuple[str, ...] = ()

    def apply(self, record: trail_pb2.AccountReturns) -> bool:
        """Settle and release them in ``record``; whether that changed it."""
        changed = False
        for status in self.ended:
            if status.type == common_pb2.REQUEST_TYPE_RELEASE:
                changed = settle_release(record, status) or changed
            else:
                changed = settle(record, status) or changed
        for request_id in self.unstored:
            changed = release(record, request_id) or changed
            changed = void_release(record, request_id) or changed
        return changed


@dataclass(frozen=True, kw_only=True)
class ReturnPlan:
    """An order that passed every check, ready to be reserved."""

    view: AccountView
    case: CaseKey
    payouts: tuple[Payout, ...]
    reconciled: Reconciled


class Returns:
    """The broker's side of RETURN_FUNDS (intake checks and reservation, outcomes, GetAllocation)."""

    def __init__(
        self,
        *,
        records: ReturnRecords,
        index: AccountCases,
        trails: TrailStore,
        requests: RequestStore,
        cases: CaseRequests,
        recorder: TrailRecorder,
        registry: Registry,
        policy: ReturnPolicy,
        clock: Clock,
        grace: timedelta = IN_FLIGHT_GRACE,
    ) -> None:
        self._records = records
        self._index = index
        self._trails = trails
        self._requests = requests
        self._cases = cases
        self._recorder = recorder
        self._registry = registry
        self._policy = policy
        self._clock = clock
        self._grace = grace

    # -- reading ----------------------------------------------------------------------------------

    def node_of(self, account: common_pb2.BankAccountRef, *, bank: str = "") -> tuple[str, str]:
        """The account's node id and bank (``bank``: where the order was routed, when known)."""
        named = account.bank or bank
        if not named:
            found = self._registry.bank_for_account(account.account_number)
            named = found.id if found is not None else ""
        return self._recorder.node_id(account, bank=named), named

    async def view(self, node_id: str, bank: str) -> AccountView:
        """Cases, trails, holds and the allocation of the account's frozen money, now."""
        cases = tuple(await self._index.cases(node_id))
        stored = await asyncio.gather(*(self._trails.get(c.issuing_agency, c.case_number) for c in cases))
        trails = tuple(s.trail for s in stored if s is not None)
        found = await asyncio.gather(*(self._holds(t, node_id) for t in trails))
        holds = tuple(h for group, _ in found for h in group)
        releases = tuple(r for _, group in found for r in group)
        now = self._clock.now()
        first = first_hold_at(holds)
        notice_ends_at = (first or now) + self._policy.notice_period
        return AccountView(
            node_id=node_id,
            bank=bank,
            cases=cases,
            trails=trails,
            holds=holds,
            releases=releases,
            claims=tuple(claims_on(trails, node_id)),
            currency=currency_on(trails, node_id),
            notice_ends_at=notice_ends_at,
        )

    async def _holds(
        self, trail: trail_pb2.Trail, node_id: str
    ) -> tuple[list[HoldView], list[lifecycle_pb2.RequestStatus]]:
        """The case's holds on the account with their current states, and their releases."""
        entries = holds_in(trail, node_id)
        if not entries:
            return [], []
        statuses = await asyncio.gather(
            *(self._requests.get(e.request_id) for e in entries), return_exceptions=True
        )
        ids = {e.request_id for e in entries}
        releases = await self._releases(trail.case_ref, ids)
        holds: list[HoldView] = []
        for entry, stored in zip(entries, statuses, strict=True):
            if isinstance(stored, NotFoundError):
                continue  # a trail entry without a journal record holds nothing we can vouch for
            if isinstance(stored, BaseException):
                raise stored
            holds.append(
                HoldView(
                    request_id=entry.request_id,
                    held=entry.held.minor_units,
                    state=stored.status.state,
                    released=0,
                    outcome_at=entry.outcome_at.ToDatetime(tzinfo=UTC),
                )
            )
        return holds, releases

    async def _releases(
        self, case: common_pb2.CaseRef, targets: set[str]
    ) -> list[lifecycle_pb2.RequestStatus]:
        """The case's releases of any of ``targets``, in any state."""
        ids = await self._cases.request_ids(case.issuing_agency, case.case_number)
        found = await asyncio.gather(*(self._requests.get(i) for i in ids), return_exceptions=True)
        return [
            stored.status
            for stored in found
            if not isinstance(stored, BaseException)
            and stored.status.type == common_pb2.REQUEST_TYPE_RELEASE
            and stored.status.target_id in targets
        ]

    async def read(self, case: CaseKey, account: common_pb2.BankAccountRef) -> trail_pb2.Allocation:
        """``GetAllocation``: the allocation of the account held in ``case``; NotFoundError when
        the case holds no money on it."""
        node_id, bank = self.node_of(account)
        view = await self.view(node_id, bank)
        if case not in view.cases:
            raise NotFoundError(
                f"case {case.case_number} of {case.issuing_agency} holds no money on that account",
                reason="ACCOUNT_NOT_IN_CASE",
            )
        record, _ = await self._reconciled(node_id, "")
        return self._message(view, view.shared(record))

    def _message(self, view: AccountView, shared: Shared) -> trail_pb2.Allocation:
        return allocation_message(
            shared.allocation,
            node_id=view.node_id,
            bank=view.bank,
            currency=view.currency,
            returned=shared.returned,
            reserved=shared.reserved,
            computed_at=self._clock.now(),
        )

    # -- intake -----------------------------------------------------------------------------------

    async def plan(
        self, sender: Agency, request: requests_pb2.Request, recipient: Agency, *, order_key: str
    ) -> ReturnPlan:
        """Every check of a RETURN_FUNDS order, nothing written; raises with a specific reason."""
        order = request.return_funds
        case = CaseKey(
            issuing_agency=request.case_ref.issuing_agency, case_number=request.case_ref.case_number
        )
        node_id, bank = self.node_of(order.account, bank=recipient.id)
        view = await self.view(node_id, bank)
        if case not in view.cases:
            raise PermissionDeniedError(
                f"case {case.case_number} holds no money on that account: only the police owning a case"
                " that holds the account order its return",
                reason="ACCOUNT_NOT_IN_CASE",
            )
        payouts = tuple(
            Payout(
                index=i,
                victim_id=self._recorder.victim_id(p.victim_account),
                amount=p.amount.minor_units,
                currency=p.amount.currency,
            )
            for i, p in enumerate(order.payouts)
        )
        record, reconciled = await self._reconciled(node_id, order_key)
        check_order(
            view.shared(record).allocation,
            record.entries,
            case=(case.issuing_agency, case.case_number),
            payouts=payouts,
            currency=view.currency,
            now=self._clock.now(),
            order_key=order_key,
        )
        del sender  # the policy checked case_ref.issuing_agency == sender already
        return ReturnPlan(view=view, case=case, payouts=payouts, reconciled=reconciled)

    async def reserve(
        self, plan: ReturnPlan, *, request_id: str, order_key: str, content: str
    ) -> tuple[str, trail_pb2.Allocation]:
        """Reserve the order's payouts (checked again in the compare-and-set); the request id to
        store it under (a retry's first id) and the allocation with the reservation."""
        node_id = plan.view.node_id
        now = self._clock.now()
        case = (plan.case.issuing_agency, plan.case.case_number)

        def change(record: trail_pb2.AccountReturns) -> bool:
            changed = plan.reconciled.apply(record)
            # Computed again from the record written: a release reserved since counts as lifted.
            check_order(
                plan.view.shared(record).allocation,
                record.entries,
                case=case,
                payouts=plan.payouts,
                currency=plan.view.currency,
                now=now,
                order_key=order_key,
            )
            return (
                reserve(
                    record,
                    request_id=request_id,
                    order_key=order_key,
                    content=content,
                    case=case,
                    payouts=plan.payouts,
                    now=now,
                )
                or changed
            )

        record = await self._records.update(node_id, change)
        bound = next((e.request_id for e in record.entries if e.order_key == order_key), request_id)
        return bound, self._message(plan.view, plan.view.shared(record))

    async def _reconciled(self, node_id: str, order_key: str) -> tuple[trail_pb2.AccountReturns, Reconciled]:
        """The account's record as it stands once the orders that ended since (an outcome hook
        not run yet, a cancellation) and those never stored are accounted for: checked against,
        and written with the next reservation."""
        record, _ = await self._records.get(node_id)
        reconciled = await self._reconcile(record, order_key)
        reconciled.apply(record)
        return record, reconciled

    async def _reconcile(self, record: trail_pb2.AccountReturns, order_key: str) -> Reconciled:
        """Reserved entries whose order ended (to settle) or never reached the journal (to release)."""
        entries: list[trail_pb2.ReturnEntry | trail_pb2.ReleaseEntry] = [*record.entries, *record.releases]
        mine = {e.request_id for e in entries if e.order_key == order_key}
        pending = [i for i in stale_entries(record) if i not in mine]
        found = await asyncio.gather(*(self._requests.get(i) for i in pending), return_exceptions=True)
        now = self._clock.now()
        reserved_at = {e.request_id: e.reserved_at.ToDatetime(tzinfo=UTC) for e in entries}
        ended: list[lifecycle_pb2.RequestStatus] = []
        unstored: list[str] = []
        for request_id, stored in zip(pending, found, strict=True):
            if isinstance(stored, NotFoundError):
                if reserved_at[request_id] + self._grace <= now:
                    unstored.append(request_id)
            elif isinstance(stored, BaseException):
                continue
            elif (
                stored.status.state in FINAL_STATES or stored.status.state == common_pb2.REQUEST_STATE_EXPIRED
            ):
                ended.append(stored.status)
        return Reconciled(ended=tuple(ended), unstored=tuple(unstored))

    async def abandon(self, node_id: str, request_id: str) -> None:
        """Intake could not store the order or release: free its entries unless the journal has it."""
        if not await never_stored(self._requests, request_id):
            return

        def free(record: trail_pb2.AccountReturns) -> bool:
            released = release(record, request_id)
            return void_release(record, request_id) or released

        try:
            await self._records.update(node_id, free)
        except Exception as exc:
            log.warning("returns.not_released", request_id=request_id, error=type(exc).__name__)

    # -- partial releases -------------------------------------------------------------------------

    def release_node(
        self, hold: lifecycle_pb2.RequestStatus, account: common_pb2.BankAccountRef, *, bank: str
    ) -> str:
        """The account record a release of ``hold`` is reserved in: the hold's own node when its
        seed names it (however the release spells the account), else the account the release names
        (the broker's own stop-payments and conversions; the bank refuses a release naming another
        account than the hold's)."""
        return hold.trail_seed.node_id or self.node_of(account, bank=bank)[0]

    async def reserve_release(
        self, plan: ReleasePlan, *, node_id: str, bank: str, request_id: str, order_key: str, content: str
    ) -> str:
        """Reserve a release naming an amount in the account's record, checked again in the
        compare-and-set against the hold's other releases and against the returns of the account
        (it may not take money returned or reserved for victims); the request id to store it under
        (a retry's first id). Raises ``MORE_THAN_HELD`` or ``LIVING_EXPENSES_CAP`` (nothing
        written then)."""
        record, reconciled = await self._reconciled(node_id, order_key)
        now = self._clock.now()
        # The allocation is needed only on an account with returns, which are rare: read it then.
        view = await self.view(node_id, bank) if _returning(record) else None

        def change(record: trail_pb2.AccountReturns) -> bool:
            changed = reconciled.apply(record)
            check_release(plan, record.releases, order_key=order_key)
            before = uncovered(view.frozen_for(record), record.entries) if view else 0
            if not reserve_release(
                record, plan, request_id=request_id, order_key=order_key, content=content, now=now
            ):
                return changed  # a retry: checked when it was reserved
            if _returning(record):
                if view is None:
                    raise _NeedsAllocation
                if uncovered(view.frozen_for(record), record.entries) > before:
                    raise IllegalTransitionError(
                        "releasing that much would leave less frozen on the account than was returned"
                        " or ordered back to victims; release less, or after the returns",
                        reason="MORE_THAN_HELD",
                    )
            return True

        try:
            record = await self._records.update(node_id, change)
        except _NeedsAllocation:
            # A return was reserved on the account meanwhile: check against it too.
            view = await self.view(node_id, bank)
            record = await self._records.update(node_id, change)
        return next((e.request_id for e in record.releases if e.order_key == order_key), request_id)

    # -- outcomes ---------------------------------------------------------------------------------

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        """An order (or a partial release) reached an outcome: its reservation becomes returned or
        released (lifted or void). Idempotent;
        raises (so the event is processed again) when NATS fails."""
        if status.type == common_pb2.REQUEST_TYPE_RELEASE and status.release_seed.node_id:
            await self._records.update(
                status.release_seed.node_id, lambda record: settle_release(record, status)
            )
            return
        if status.type != common_pb2.REQUEST_TYPE_RETURN_FUNDS or not status.allocation.node_id:
            return
        record = await self._records.update(status.allocation.node_id, lambda record: settle(record, status))
        log.info(
            "returns.settled",
            request_id=status.id,
            state=common_pb2.RequestState.Name(status.state),
            returned=sum(e.returned.minor_units for e in record.entries if e.request_id == status.id),
        )
