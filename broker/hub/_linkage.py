"""Case linkage (串并): when a case touches an identifier another case touched, tell both owners.

What a case touches: the suspect identifiers its requests and fraud reports name (digested at
intake into ``RequestStatus.identifiers``, :mod:`broker.hub._request_identifiers`) and the
identifiers its risk marks name (:class:`broker.hub._risk_registry.MarkObserver`). Each goes into
the identifier index (``gc_identifier_cases``, :class:`~broker.hub._account_cases.CaseIndex`),
keyed by the trail's digest, so a mark, a hold and a block on one account all meet.

When an identifier's index holds cases of two police forces or more, the broker sends each case
owner a signed LINKAGE_NOTICE (:meth:`broker.hub._submit.Intake.originate`, as the victim
follow-ups) under that owner's own case reference: the link (kind, digest, the cases by number,
owner and region), never the other case's personal data. Owners in different regions get a
coordinator: the lowest police agency supervising all of them in the directory, else the police
supervising the owner of the earliest case; it gets the notice too, under the case that made the
link. Cases of one force only are linked without a notice (it sees its own cases). Either way the
link is listed (:meth:`CaseLinker.links_of`, from the index as it stands; ``gc_case_links`` only
records which identifiers link a case).

**Once.** A link's id is derived from the identifier and the set of cases, and each notice goes
out under the idempotency key ``link-<link id>-<recipient>``: processing an event again, or a
second replica doing the same, sends nothing twice. A third case on the identifier is a new set,
so a new link id: every owner hears of it. The index write and the reads are idempotent too.

**When.** For a request, on the first event the events consumer applies for it (the recipient's
acknowledgement or outcome) or on its first deadline timer, whichever comes first (both processed
again until they succeed); not at Submit, which stays one write. A request its recipient never
answers is linked by its deliver reminder. For a mark, when it becomes ACTIVE. Transient NATS
failures raise (the event is processed again); a notice that cannot be sent for a lasting reason (a
recipient without keys) is logged and skipped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime

import structlog
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from broker.protocol import AgencyKind, Clock, Registry, RegistryError, to_timestamp

from ._account_cases import CaseIndex, CaseKey
from ._case_links import CaseLinks
from ._errors import HubError, UnavailableError
from ._identifiers import Identifier
from ._store import RequestStore
from ._submit import Intake
from ._watchlog import WatchLog

__all__ = ["MAX_LINKED_CASES", "CaseLinker", "link_id", "linkage_key"]

log = structlog.get_logger(__name__)

MAX_LINKED_CASES = 64
"""Cases one notice names (the contract's cap): the earliest ones, and always the new one."""

_LINK_NAMESPACE = uuid.UUID("0f8e3c52-6f7a-4d7e-9a43-6c1b2f6f4d11")
_REMEMBERED = 4096  # request ids this replica has linked


def link_id(identifier: Identifier, cases: Sequence[CaseKey]) -> str:
    """The link of ``identifier`` among ``cases``: the same for the same identifier and cases."""
    names = ",".join(f"{case.issuing_agency}/{case.case_number}" for case in sorted(cases))
    return str(uuid.uuid5(_LINK_NAMESPACE, f"{int(identifier.kind)}:{identifier.digest}|{names}"))


def linkage_key(link: str, recipient: str) -> str:
    """The broker's idempotency key of one recipient's notice of one link."""
    return f"link-{link}-{recipient}"


class CaseLinker:
    """Indexes what cases touch and sends the linkage notices; an event hook and a mark observer."""

    def __init__(
        self,
        *,
        index: CaseIndex,
        links: CaseLinks,
        intake: Intake,
        requests: RequestStore,
        cases: WatchLog,
        registry: Registry,
        clock: Clock,
    ) -> None:
        self._index = index
        self._links = links
        self._intake = intake
        self._requests = requests
        self._cases = cases
        self._registry = registry
        self._clock = clock
        self._done: OrderedDict[str, None] = OrderedDict()

    # -- the two ways a case touches identifiers ---------------------------------------------------

    async def after_event(self, status: lifecycle_pb2.RequestStatus) -> None:
        """A request's event: link what its body named, once per request on this replica."""
        if not status.identifiers or status.id in self._done:
            return
        owner = self._owner(status)
        if owner is not None:
            source = (
                requests_pb2.LINKAGE_SOURCE_FRAUD_REPORT
                if status.type == common_pb2.REQUEST_TYPE_FRAUD_REPORT
                else requests_pb2.LINKAGE_SOURCE_REQUEST
            )
            identifiers = [Identifier(i.kind, i.digest) for i in status.identifiers]
            at = status.submitted_at.ToDatetime(tzinfo=UTC)
            await self._link(owner, status.case_ref, identifiers, source, made_by=status.id, at=at)
        self._done[status.id] = None
        while len(self._done) > _REMEMBERED:
            self._done.popitem(last=False)

    async def seen(
        self,
        *,
        case: CaseKey,
        identifiers: Sequence[Identifier],
        source: requests_pb2.LinkageSource.ValueType,
        made_by: str,
    ) -> None:
        """A mark became ACTIVE on ``case`` (the risk registry's observer)."""
        case_ref = await self._case_ref(case)
        if case_ref is None:
            log.warning("linkage.case_unknown", case_owner=case.issuing_agency, made_by=made_by)
            return
        await self._link(case, case_ref, identifiers, source, made_by=made_by, at=self._clock.now())

    # -- linking ----------------------------------------------------------------------------------

    def _owner(self, status: lifecycle_pb2.RequestStatus) -> CaseKey | None:
        """The police owning the request's case: its issuing agency, or for a fraud report a bank,
        carrier or platform files, the police it reached. None when no police owns it."""
        for candidate in (status.case_ref.issuing_agency, status.recipient):
            if self._is_police(candidate):
                return CaseKey(candidate, status.case_ref.case_number)
        return None

    def _is_police(self, agency: str) -> bool:
        try:
            return self._registry.get(agency).kind is AgencyKind.POLICE
        except RegistryError:
            return False

    async def _case_ref(self, case: CaseKey) -> common_pb2.CaseRef | None:
        """A case's reference as its first request gave it (a mark names only owner and number)."""
        ids = await self._cases.request_ids(case.issuing_agency, case.case_number)
        if not ids:
            return None
        return (await self._requests.get(ids[0])).status.case_ref

    async def _link(
        self,
        case: CaseKey,
        case_ref: common_pb2.CaseRef,
        identifiers: Sequence[Identifier],
        source: requests_pb2.LinkageSource.ValueType,
        *,
        made_by: str,
        at: datetime,
    ) -> None:
        entry = lifecycle_pb2.IndexedCase(
            case_ref=case_ref,
            linked=requests_pb2.LinkedCase(
                case_number=case.case_number,
                owner=case.issuing_agency,
                region=self._region(case.issuing_agency),
                first_seen=to_timestamp(at),
                source=source,
            ),
        )
        await asyncio.gather(
            *(self._link_one(identifier, case, entry, made_by=made_by) for identifier in identifiers)
        )

    async def _link_one(
        self, identifier: Identifier, case: CaseKey, entry: lifecycle_pb2.IndexedCase, *, made_by: str
    ) -> None:
        await self._index.add(identifier.digest, case, entry.SerializeToString(deterministic=True))
        keys = await self._index.cases(identifier.digest)
        if len(keys) < 2:
            return
        linked = await self._entries(identifier, keys, case)
        if len(linked) < 2:
            return
        notice = self._notice(identifier, linked, made_by=made_by, at=self._clock.now())
        owners = {e.linked.owner for e in linked}
        if len(owners) > 1:
            await asyncio.gather(
                *(self._send(notice, to, ref) for to, ref in self._recipients(notice, linked, case).items())
            )
        # One police force's own cases linked with each other: listed (ListLinks), no notice; it
        # sees its own cases' requests already, and the notices are for forces to find each other.
        # Listed once the notices are out: a listed link's notices are on their way.
        await asyncio.gather(
            *(self._links.add(CaseKey(e.linked.owner, e.linked.case_number), identifier) for e in linked)
        )
        log.info(
            "linkage.linked",
            link_id=notice.link_id,
            cases=len(notice.cases),
            owners=len(owners),
            cross_region=notice.cross_region,
            coordinator=notice.coordinator,
            made_by=made_by,
        )

    async def links_of(self, case: CaseKey) -> list[requests_pb2.LinkageNotice]:
        """The links of ``case`` as they stand (every case now on each identifier), most recently
        joined first; ``made_by`` is left empty and ``linked_at`` is when the last case joined."""
        found = []
        for identifier in await self._links.identifiers(case):
            linked = await self._entries(identifier, await self._index.cases(identifier.digest), case)
            if len(linked) > 1:
                joined = max(e.linked.first_seen.ToDatetime(tzinfo=UTC) for e in linked)
                found.append(self._notice(identifier, linked, made_by="", at=joined))
        return sorted(found, key=lambda link: link.linked_at.ToNanoseconds(), reverse=True)

    def _recipients(
        self, notice: requests_pb2.LinkageNotice, linked: Sequence[lifecycle_pb2.IndexedCase], case: CaseKey
    ) -> dict[str, common_pb2.CaseRef]:
        """One notice per police agency (it names every case anyway): each owner under the case that
        made the link if it is theirs, else under their earliest linked case; the coordinator under
        the case that made the link."""
        here = (case.issuing_agency, case.case_number)
        mine = next((e for e in linked if (e.linked.owner, e.linked.case_number) == here), linked[-1])
        recipients: dict[str, common_pb2.CaseRef] = {}
        for entry in linked:
            if self._is_police(entry.linked.owner):
                recipients.setdefault(entry.linked.owner, entry.case_ref)
        if mine.linked.owner in recipients:
            recipients[mine.linked.owner] = mine.case_ref
        if notice.coordinator:
            recipients.setdefault(notice.coordinator, mine.case_ref)
        return recipients

    async def _entries(
        self, identifier: Identifier, keys: Sequence[CaseKey], case: CaseKey
    ) -> list[lifecycle_pb2.IndexedCase]:
        """The indexed cases, earliest first: at most :data:`MAX_LINKED_CASES`, ``case`` always in."""
        values = await asyncio.gather(*(self._index.value(identifier.digest, key) for key in keys))
        found: list[lifecycle_pb2.IndexedCase] = []
        for key, value in zip(keys, values, strict=True):
            try:
                entry = lifecycle_pb2.IndexedCase.FromString(value or b"")
            except DecodeError:
                log.warning("linkage.bad_index_entry", case_owner=key.issuing_agency)
                continue
            if entry.HasField("case_ref"):
                found.append(entry)
        found.sort(key=lambda e: (e.linked.first_seen.ToNanoseconds(), e.linked.owner, e.linked.case_number))
        if len(found) > MAX_LINKED_CASES:
            here = (case.issuing_agency, case.case_number)
            newest = [e for e in found if (e.linked.owner, e.linked.case_number) == here]
            found = [e for e in found if e not in newest][: MAX_LINKED_CASES - len(newest)] + newest
        return found

    def _notice(
        self,
        identifier: Identifier,
        linked: Sequence[lifecycle_pb2.IndexedCase],
        *,
        made_by: str,
        at: datetime,
    ) -> requests_pb2.LinkageNotice:
        owners = [e.linked.owner for e in linked]
        cross_region = len({e.linked.region for e in linked}) > 1
        return requests_pb2.LinkageNotice(
            link_id=link_id(identifier, [CaseKey(e.linked.owner, e.linked.case_number) for e in linked]),
            kind=identifier.kind,
            identifier_digest=identifier.digest,
            cases=[e.linked for e in linked],
            made_by=made_by[:64],
            linked_at=to_timestamp(at),
            cross_region=cross_region,
            coordinator=self._coordinator(owners) if cross_region else "",
        )

    def _coordinator(self, owners: Sequence[str]) -> str:
        """The lowest police agency supervising every owner; else the police supervising the
        earliest case's owner; else none."""
        chains = [self._police_above(owner) for owner in dict.fromkeys(owners)]
        for candidate in chains[0]:
            if all(candidate in chain for chain in chains[1:]):
                return candidate
        return chains[0][0] if chains[0] else ""

    def _police_above(self, agency: str) -> list[str]:
        """The police agencies above ``agency`` in the directory's supervisor chain, nearest first
        (the directory refuses unknown supervisors and cycles)."""
        try:
            supervisor = self._registry.get(agency).supervisor
        except RegistryError:
            return []  # left the directory since its case was indexed
        chain: list[str] = []
        while supervisor is not None:
            if self._is_police(supervisor):
                chain.append(supervisor)
            supervisor = self._registry.get(supervisor).supervisor
        return chain

    def _region(self, agency: str) -> str:
        try:
            return self._registry.get(agency).region or ""
        except RegistryError:
            return ""

    async def _send(
        self, notice: requests_pb2.LinkageNotice, recipient: str, case_ref: common_pb2.CaseRef
    ) -> None:
        order = requests_pb2.Request(
            case_ref=case_ref, priority=common_pb2.PRIORITY_GREEN, recipient=recipient, linkage_notice=notice
        )
        try:
            sent = await self._intake.originate(order, idempotency_key=linkage_key(notice.link_id, recipient))
        except UnavailableError:
            raise  # NATS away: the event is processed again
        except HubError as exc:
            # A lasting refusal (the recipient has no keys, the directory changed): retrying the
            # event would not help; the link stays listed (ListLinks) for the owner to find.
            log.warning(
                "linkage.notice_not_sent", link_id=notice.link_id, recipient=recipient, error=str(exc)
            )
            return
        log.info("linkage.notice_sent", link_id=notice.link_id, recipient=recipient, request_id=sent.id)
