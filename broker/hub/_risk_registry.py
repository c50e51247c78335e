"""The risk registry's desk: signed marks, the police's decisions on proposals, unmarks, and lists.

A police mark on a case the police own is ACTIVE at once. A bank, carrier or platform mark is
allowed only where policy says so (``[risk] propose``), on a case the broker knows, owned by
police, that the proposer is party to; it is PROPOSED until the police owning the case confirm it
(:meth:`MarkDesk.decide`). Unmarking and deciding are the case owner's; so is deciding a holder's
appeal against a mark (the appeal rules, :mod:`broker.hub._appeals`), which, decided LIFTED,
unmarks it here on the police's signed ruling (:meth:`MarkDesk.lift_on_appeal`). Every refusal
stores nothing. Every step is a MARK ledger entry (actor, case, mark id, digest of the signed message;
never the identifier).

Expiry is lazy: Check compares each mark's ``expires_at`` with the clock at check time, and a mark
read here past its expiry is recorded EXPIRED then (state and a ledger entry, actor the broker).

When a mark becomes ACTIVE the :class:`MarkObserver` is told (case linkage, 串并); it must be
idempotent: a retried Mark of an active mark tells it again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, envelope_pb2, requests_pb2, results_pb2, risk_pb2

from broker.protocol import (
    BROKER_ID,
    MARK_DECISION_TYPE,
    RISK_MARK_TYPE,
    RISK_UNMARK_TYPE,
    AgencyKind,
    Clock,
    ProtocolError,
    Registry,
    SealingError,
    UnknownAgencyError,
    body_digest,
    current_encryption_key,
    from_timestamp,
    seal,
    to_timestamp,
)

from ._account_cases import CaseKey
from ._auth import Caller
from ._errors import (
    AlreadyExistsError,
    ConflictError,
    IllegalTransitionError,
    InvalidRequestError,
    PermissionDeniedError,
    UnavailableError,
)
from ._identifiers import Identifier, IdentifierDigests
from ._ledger import LedgerWriter
from ._policy import Policy
from ._risk_index import MarkIndex
from ._risk_marks import MarkRecord, MarkStore, StoredMark, is_expired
from ._signed import signed_by_caller
from ._watchlog import WatchLog

__all__ = ["RISK_MARK_CONTENT_TYPE", "MarkDesk", "MarkObserver", "NoMarkObserver", "mark_sealing_context"]

log = structlog.get_logger(__name__)

_R = risk_pb2
_Step = TypeVar("_Step", risk_pb2.MarkDecision, risk_pb2.RiskUnmark)
# The ledger step of a mark unmarked on an appeal decided LIFTED (its entry names the ruling's digest).
_APPEAL_LIFTED = "APPEAL_LIFTED"
_LIFT_ATTEMPTS = 8
RISK_MARK_CONTENT_TYPE = "greenchannel.v1.SignedMessage+RiskMark"
"""Content type of a signed mark sealed to the case owner (the proof kept in the registry)."""


def mark_sealing_context(mark_id: str) -> str:
    """The ``request_id`` a mark's proof is sealed under."""
    return f"risk-mark:{mark_id}"


class MarkObserver(Protocol):
    """Told when a mark becomes ACTIVE (case linkage implements it as ``CaseLinker.seen``)."""

    async def seen(
        self,
        *,
        case: CaseKey,
        identifiers: Sequence[Identifier],
        source: requests_pb2.LinkageSource.ValueType,
        made_by: str,
    ) -> None: ...


class NoMarkObserver:
    """The default observer: nobody listens."""

    async def seen(
        self,
        *,
        case: CaseKey,
        identifiers: Sequence[Identifier],
        source: requests_pb2.LinkageSource.ValueType,
        made_by: str,
    ) -> None:
        return None


def _content(marker: str, identifier: Identifier, mark: risk_pb2.RiskMark, valid: timedelta) -> str:
    """What makes two marks with one id the same mark (the signature time aside)."""
    facts = [
        marker,
        int(identifier.kind),
        identifier.digest,
        int(mark.grade),
        int(mark.reason),
        mark.case.issuing_agency,
        mark.case.case_number,
        int(valid.total_seconds()),
    ]
    return "sha-256:" + hashlib.sha256(json.dumps(facts).encode("utf-8")).hexdigest()


class MarkDesk:
    """Marks, decisions, unmarks and lists of the risk registry."""

    def __init__(
        self,
        *,
        store: MarkStore,
        index: MarkIndex,
        digests: IdentifierDigests,
        registry: Registry,
        policy: Policy,
        watchlog: WatchLog,
        ledger: LedgerWriter,
        clock: Clock,
        observer: MarkObserver | None = None,
    ) -> None:
        self._store = store
        self._index = index
        self._digests = digests
        self._registry = registry
        self._policy = policy
        self._watchlog = watchlog
        self._ledger = ledger
        self._clock = clock
        self.observer: MarkObserver = observer or NoMarkObserver()
        """Told when a mark becomes ACTIVE; the lead wires case linkage here."""

    # -- mark -------------------------------------------------------------------------------

    async def mark(self, caller: Caller, signed: envelope_pb2.SignedMessage) -> risk_pb2.MarkResponse:
        rules = self._policy.risk
        me = caller.agency
        direct = me.kind in rules.mark
        if not direct and me.kind not in rules.propose:
            raise PermissionDeniedError(
                f"policy lets no {me.kind} agency mark or propose marks (marks: "
                f"{', '.join(sorted(rules.mark)) or 'nobody'}; proposals: "
                f"{', '.join(sorted(rules.propose)) or 'nobody'})",
                reason="MARK_NOT_ALLOWED",
            )
        _require_case(signed)
        mark, claims = signed_by_caller(
            _R.RiskMark,
            signed,
            jws_type=RISK_MARK_TYPE,
            caller=caller,
            keys=self._registry,
            clock=self._clock,
            field="mark",
        )
        owner = await self._check_case(me.id, mark.case, direct=direct)
        valid = self._validity(mark)
        identifier = self._digests.of(mark.identifier)
        now = self._clock.now()
        content = _content(me.id, identifier, mark, valid)
        status = _R.MarkStatus(
            mark_id=mark.mark_id,
            state=_R.MARK_STATE_ACTIVE if direct else _R.MARK_STATE_PROPOSED,
            kind=identifier.kind,
            identifier_digest=identifier.digest,
            grade=mark.grade,
            reason=mark.reason,
            case_number=mark.case.case_number,
            case_owner=owner,
            marked_by=me.id,
            marked_at=to_timestamp(now),
        )
        if direct:
            status.expires_at.CopyFrom(to_timestamp(now + valid))
        record = MarkRecord(
            status=status,
            content=content,
            valid_for_seconds=int(valid.total_seconds()),
            mark_digest=claims.digest,
            proof=self._seal_proof(signed, owner=owner, mark_id=mark.mark_id, at=now),
        )
        stored = await self._store.create(record)
        duplicate = stored is None
        if stored is None:
            existing = await self._store.get(mark.mark_id)
            if existing.record.content != content:
                raise AlreadyExistsError(
                    f"mark {mark.mark_id!r} exists with other content: a mark id names one mark",
                    reason="MARK_ID_TAKEN",
                )
            stored = await self._settle(existing)
        else:
            log.info(
                "risk.marked",
                mark_id=mark.mark_id,
                marker=me.id,
                case_owner=owner,
                state=_R.MarkState.Name(status.state),
                grade=_R.RiskGrade.Name(mark.grade),
            )
        self._index.apply(stored.record, stored.revision)
        first = stored.record.status
        # Recorded again on a duplicate: the first answer may have been lost before its entry.
        await self._record(
            first,
            step="MARKED" if first.marked_by == first.case_owner else "PROPOSED",
            actor=first.marked_by,
            digest=stored.record.mark_digest,
            at=from_timestamp(first.marked_at),
        )
        await self._tell(stored.record.status)
        return _R.MarkResponse(status=stored.record.status, duplicate=duplicate)

    async def _check_case(self, marker: str, case: common_pb2.CaseRef, *, direct: bool) -> str:
        """The police owning the mark's case, once the case is one the marker may mark on."""
        owner_id = case.issuing_agency
        try:
            owner = self._registry.get(owner_id)
        except UnknownAgencyError as exc:
            raise IllegalTransitionError(
                f"the case's issuing agency {owner_id!r} is not in the directory", reason="UNKNOWN_CASE"
            ) from exc
        if owner.kind is not AgencyKind.POLICE:
            raise IllegalTransitionError(
                f"a mark rests on a police case; {owner_id!r} is a {owner.kind}", reason="CASE_NOT_POLICE"
            )
        if direct and owner_id != marker:
            raise PermissionDeniedError(
                f"police mark only on their own cases; this case is {owner_id!r}'s", reason="NOT_CASE_OWNER"
            )
        if not await self._watchlog.request_ids(owner_id, case.case_number):
            raise IllegalTransitionError(
                f"the broker knows no case {case.case_number!r} of {owner_id!r}: a mark rests on a case"
                " with at least one request",
                reason="UNKNOWN_CASE",
            )
        if not direct and not await self._party(marker, owner_id, case.case_number):
            raise PermissionDeniedError(
                "a proposal rests on a case the proposer is party to (sender or recipient of one of"
                " its requests)",
                reason="NOT_CASE_PARTY",
            )
        return owner_id

    async def _party(self, agency: str, owner: str, case_number: str) -> bool:
        """Whether ``agency`` sent or received a request of the case."""
        return bool(
            await self._watchlog.request_ids(owner, case_number, sender=agency)
            or await self._watchlog.request_ids(owner, case_number, recipient=agency)
        )

    def _validity(self, mark: risk_pb2.RiskMark) -> timedelta:
        rules = self._policy.risk
        if not mark.HasField("valid_for"):
            return rules.default_validity
        valid = mark.valid_for.ToTimedelta()
        if valid <= timedelta(0):
            raise InvalidRequestError("mark.valid_for must be positive", reason="BAD_VALIDITY")
        if valid > rules.max_validity:
            raise InvalidRequestError(
                f"mark.valid_for is {valid}; policy allows at most {rules.max_validity}",
                reason="VALIDITY_TOO_LONG",
            )
        return valid

    def _seal_proof(
        self, signed: envelope_pb2.SignedMessage, *, owner: str, mark_id: str, at: datetime
    ) -> results_pb2.EncryptedPayload | None:
        """The signed mark (it names the identifier) sealed to the case owner: the proof, unreadable
        in NATS."""
        try:
            key = current_encryption_key(self._registry.get(owner), at=at)
            return seal(
                signed.SerializeToString(),
                key,
                request_id=mark_sealing_context(mark_id),
                sender=BROKER_ID,
                recipient=owner,
                content_type=RISK_MARK_CONTENT_TYPE,
            )
        except (ProtocolError, SealingError) as exc:
            log.warning("risk.proof_not_sealed", mark_id=mark_id, case_owner=owner, error=type(exc).__name__)
            return None

    # -- decide, unmark -----------------------------------------------------------------------

    async def decide(self, caller: Caller, signed: envelope_pb2.SignedMessage) -> risk_pb2.DecideMarkResponse:
        decision, stored, digest = await self._opened(
            caller, signed, _R.MarkDecision, jws_type=MARK_DECISION_TYPE, field="decision", what="decide on"
        )
        status = stored.record.status
        if status.state != _R.MARK_STATE_PROPOSED:
            if _same(stored.record.decision, digest):
                return _R.DecideMarkResponse(status=status)  # this very decision, sent again
            raise IllegalTransitionError(
                f"the mark is {_R.MarkState.Name(status.state)}, not PROPOSED: it is decided once",
                reason="MARK_NOT_PROPOSED",
            )
        new = await self._step(
            caller.agency.id,
            stored,
            state=_R.MARK_STATE_ACTIVE if decision.confirm else _R.MARK_STATE_REFUSED,
            step="CONFIRMED" if decision.confirm else "REFUSED",
            digest=digest,
            decision=signed,
        )
        log.info("risk.mark_decided", mark_id=new.mark_id, police=caller.agency.id, confirm=decision.confirm)
        await self._tell(new)
        return _R.DecideMarkResponse(status=new)

    async def unmark(self, caller: Caller, signed: envelope_pb2.SignedMessage) -> risk_pb2.UnmarkResponse:
        _, stored, digest = await self._opened(
            caller, signed, _R.RiskUnmark, jws_type=RISK_UNMARK_TYPE, field="unmark", what="lift"
        )
        status = stored.record.status
        if status.state not in (_R.MARK_STATE_ACTIVE, _R.MARK_STATE_PROPOSED):
            if _same(stored.record.unmark, digest):
                return _R.UnmarkResponse(status=status)
            raise IllegalTransitionError(
                f"the mark is {_R.MarkState.Name(status.state)}: only an active or proposed mark is lifted",
                reason="MARK_NOT_ACTIVE",
            )
        new = await self._step(
            caller.agency.id,
            stored,
            state=_R.MARK_STATE_UNMARKED,
            step="UNMARKED",
            digest=digest,
            unmark=signed,
        )
        log.info("risk.unmarked", mark_id=new.mark_id, police=caller.agency.id)
        return _R.UnmarkResponse(status=new)

    async def lift_on_appeal(
        self, mark_id: str, *, appeal_id: str, police: str, ruling: envelope_pb2.SignedMessage
    ) -> risk_pb2.MarkStatus | None:
        """UNMARK a mark a holder's appeal got lifted, on the police's signed ruling (the appeal
        checks verified the police own the mark's case at intake, and DecideAppeal that they signed
        it). Once: asked again (the decision, the events hook, a retried ruling, another replica at
        the same moment) it returns the mark as lifted and records the ledger entry again (the
        first answer may have been lost before it). None when nothing is left to lift."""
        digest = body_digest(ruling.payload)
        for _ in range(_LIFT_ATTEMPTS):
            stored = await self._settle(await self._store.get(mark_id))
            status = stored.record.status
            if status.lifted_by_appeal == appeal_id:
                await self._record(
                    status,
                    step=_APPEAL_LIFTED,
                    actor=police,
                    digest=digest,
                    at=from_timestamp(status.decided_at),
                )
                return status
            if status.state != _R.MARK_STATE_ACTIVE:
                # Expired or unmarked since the appeal was filed: it restricts nothing any more.
                return None
            try:
                new = await self._step(
                    police,
                    stored,
                    state=_R.MARK_STATE_UNMARKED,
                    step=_APPEAL_LIFTED,
                    digest=digest,
                    ruling=ruling,
                    appeal_id=appeal_id,
                )
            except ConflictError:
                continue  # changed meanwhile (maybe this very lifting, elsewhere): read it again
            log.info("risk.unmarked_on_appeal", mark_id=mark_id, police=police, appeal_id=appeal_id)
            return new
        raise ConflictError(
            "the mark kept changing while its appeal was lifting it; retry", reason="MARK_CHANGED"
        )

    async def _opened(
        self,
        caller: Caller,
        signed: envelope_pb2.SignedMessage,
        message_type: type[_Step],
        *,
        jws_type: str,
        field: str,
        what: str,
    ) -> tuple[_Step, StoredMark, str]:
        """A signed decision or unmark, verified; the mark it names, owned by the caller; its digest."""
        message, claims = signed_by_caller(
            message_type,
            signed,
            jws_type=jws_type,
            caller=caller,
            keys=self._registry,
            clock=self._clock,
            field=field,
        )
        stored = await self._owned(caller, message.mark_id, what=what)
        return message, stored, claims.digest

    async def _step(
        self,
        actor: str,
        stored: StoredMark,
        *,
        state: risk_pb2.MarkState.ValueType,
        step: str,
        digest: str,
        decision: envelope_pb2.SignedMessage | None = None,
        unmark: envelope_pb2.SignedMessage | None = None,
        ruling: envelope_pb2.SignedMessage | None = None,
        appeal_id: str = "",
    ) -> risk_pb2.MarkStatus:
        """Move the mark to ``state`` as the police ``actor`` decided (compare-and-set), index and
        record it. ``ruling`` and ``appeal_id``: the appeal decision that lifted it."""
        now = self._clock.now()
        new = _R.MarkStatus()
        new.CopyFrom(stored.record.status)
        new.state = state
        new.decided_by = actor
        new.decided_at.CopyFrom(to_timestamp(now))
        new.lifted_by_appeal = appeal_id
        if state == _R.MARK_STATE_ACTIVE:
            new.expires_at.CopyFrom(to_timestamp(now + timedelta(seconds=stored.record.valid_for_seconds)))
        changed = stored.record.but(status=new)
        if decision is not None:
            changed = changed.but(decision=decision)
        if unmark is not None:
            changed = changed.but(unmark=unmark)
        if ruling is not None:
            changed = changed.but(ruling=ruling)
        updated = await self._store.update(changed, revision=stored.revision)
        self._index.apply(updated.record, updated.revision)
        await self._record(new, step=step, actor=actor, digest=digest, at=now)
        return new

    async def _owned(self, caller: Caller, mark_id: str, *, what: str) -> StoredMark:
        stored = await self._store.get(mark_id)
        if stored.record.status.case_owner != caller.agency.id:
            raise PermissionDeniedError(
                f"only the police owning the mark's case may {what} it", reason="NOT_CASE_OWNER"
            )
        return await self._settle(stored)

    # -- list ---------------------------------------------------------------------------------

    async def list_marks(self, caller: Caller, case_number: str) -> risk_pb2.ListMarksResponse:
        regulator = caller.agency.kind is AgencyKind.REGULATOR
        found = [m for m in await self._store.all() if m.record.status.case_number == case_number]
        mine = [m for m in found if regulator or m.record.status.case_owner == caller.agency.id]
        if found and not mine:
            raise PermissionDeniedError(
                "the marks of a case are read by the police owning it and by regulators",
                reason="NOT_CASE_OWNER",
            )
        settled = [await self._settle(m) for m in mine]
        settled.sort(key=lambda m: (from_timestamp(m.record.status.marked_at), m.record.status.mark_id))
        return _R.ListMarksResponse(marks=[m.record.status for m in settled])

    # -- shared -------------------------------------------------------------------------------

    async def _settle(self, stored: StoredMark) -> StoredMark:
        """Record EXPIRED on an active mark past its expiry (lazily, when it is read)."""
        status = stored.record.status
        now = self._clock.now()
        if not is_expired(status, now):
            return stored
        new = _R.MarkStatus()
        new.CopyFrom(status)
        new.state = _R.MARK_STATE_EXPIRED
        try:
            updated = await self._store.update(stored.record.but(status=new), revision=stored.revision)
        except (ConflictError, UnavailableError):
            # Another replica settled it, or NATS is away: it reads as expired all the same.
            return StoredMark(stored.record.but(status=new), stored.revision)
        self._index.apply(updated.record, updated.revision)
        await self._record(
            new,
            step="EXPIRED",
            actor=BROKER_ID,
            digest=stored.record.mark_digest,
            at=from_timestamp(new.expires_at),
        )
        return updated

    async def _record(
        self, status: risk_pb2.MarkStatus, *, step: str, actor: str, digest: str, at: datetime
    ) -> None:
        parties = sorted({status.marked_by, status.case_owner})
        await self._ledger.record_mark(
            record_id=f"mark:{status.mark_id}:{step.lower()}",
            actor=actor,
            mark_id=status.mark_id,
            mark_step=step,
            case_number=status.case_number,
            parties=parties,
            subject_digest=digest,
            at=at,
        )

    async def _tell(self, status: risk_pb2.MarkStatus) -> None:
        if status.state != _R.MARK_STATE_ACTIVE:
            return
        try:
            await self.observer.seen(
                case=CaseKey(status.case_owner, status.case_number),
                identifiers=[Identifier(status.kind, status.identifier_digest)],
                source=requests_pb2.LINKAGE_SOURCE_MARK,
                made_by=status.mark_id,
            )
        except Exception as exc:
            log.warning("risk.observer_failed", mark_id=status.mark_id, error=type(exc).__name__)


def _same(previous: envelope_pb2.SignedMessage | None, digest: str) -> bool:
    """The signed message already recorded is this one (a retry)."""
    return previous is not None and body_digest(previous.payload) == digest


def _require_case(signed: envelope_pb2.SignedMessage) -> None:
    """A mark without a case is refused with its own reason, before anything else is read."""
    try:
        mark = _R.RiskMark.FromString(signed.payload)
    except DecodeError:
        return  # the full checks report it
    if not mark.HasField("case") or not mark.case.case_number or not mark.case.issuing_agency:
        raise InvalidRequestError(
            "a mark rests on a case: mark.case must name the police case (issuing_agency, case_number)",
            reason="CASE_REQUIRED",
        )
