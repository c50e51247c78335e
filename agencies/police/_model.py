"""What the desk keeps, as read back from the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["AssistanceCase", "FiledAppeal", "FiledReport", "InPersonDissuasion", "VictimFollowUp"]


@dataclass(frozen=True, kw_only=True)
class AssistanceCase:
    """An assistance request the desk answered."""

    request_id: str
    """The request."""
    reference: str
    """The desk's ticket number, answered as ``agency_reference``."""
    sender: str
    """Requesting police agency."""
    case_number: str
    """The requesting agency's case."""
    kind: str
    """``AssistanceKind`` name without its prefix, e.g. ``LOCATE``."""
    region: str
    """Region where help was asked."""
    task: str
    """The task in words."""
    decision: str
    """``completed`` or ``declined``."""
    at: datetime
    """When the desk answered."""


@dataclass(frozen=True, kw_only=True)
class FiledReport:
    """A fraud report filed by the desk."""

    request_id: str
    """The report's request id."""
    reference: str
    """The desk's filing number."""
    sender: str
    """Reporting bank, carrier or platform."""
    kind: str
    """``FraudReportKind`` name without its prefix, e.g. ``MULE_ACCOUNT``."""
    summary: str
    """What was seen, in words."""
    accounts: int
    """Number of bank accounts named."""
    phones: int
    """Number of lines named."""
    platform_accounts: int
    """Number of platform accounts named."""
    amount: int | None
    """Money involved, minor units, if given."""
    currency: str
    """Its currency, if given."""
    observed_at: datetime | None
    """When it was seen, if given."""
    region: str
    """Region the report concerns, if given."""
    received_at: datetime
    """When the desk filed it."""


@dataclass(frozen=True, kw_only=True)
class FiledAppeal:
    """A holder's appeal the desk filed for decision (the decision goes back through the Bus API)."""

    request_id: str
    """The appeal's request id: what the desk decides on (``BusClient.decide_appeal``)."""
    reference: str
    """The desk's filing number."""
    sender: str
    """The bank, carrier or platform that applied the restriction and passed the appeal on."""
    case_number: str
    """The desk's case the restriction belongs to."""
    ticket: str
    """The restricting agency's appeal ticket (the appeal's legal instrument id)."""
    restriction_request_id: str
    """The restriction appealed; empty when a risk mark is."""
    ground: str
    """``AppealGround`` name without its prefix, e.g. ``NOT_INVOLVED``."""
    statement: str
    """The holder's statement, opened by the police adapter: only the police read it."""
    documents: int
    """Number of supporting documents."""
    received_at: datetime
    """When the desk filed it."""
    mark_id: str = ""
    """The risk mark appealed (the holder's identifier is in the appeal the desk received)."""


@dataclass(frozen=True, kw_only=True)
class VictimFollowUp:
    """A victim follow-up (回访) the desk made after a return, as the broker asked."""

    request_id: str
    """The FOLLOW_UP's request id."""
    reference: str
    """The desk's record number."""
    case_number: str
    """The desk's case the return belongs to."""
    return_request_id: str
    """The RETURN_FUNDS that paid the victim."""
    payout_index: int
    """The payout's position in that order."""
    victim_id: str
    """Keyed digest of the victim's account (never the account)."""
    returned: int
    """Money returned, minor units."""
    currency: str
    """Its currency."""
    outcome: str
    """``REACHED`` or ``NOT_REACHED``."""
    advice: str
    """The advice given (or why the victim was not reached)."""
    at: datetime
    """When the desk recorded it."""


@dataclass(frozen=True, kw_only=True)
class LinkageRecord:
    """A linkage notice (串并) the desk took: another case touched an identifier of one of ours."""

    request_id: str
    """The LINKAGE_NOTICE's request id."""
    reference: str
    """The desk's record number."""
    case_number: str
    """The desk's case the notice came under (the coordinator's copy: the case that made the link)."""
    link_id: str
    """The link (the same for every notice of one identifier and set of cases)."""
    kind: str
    """What the cases share: ``BANK_ACCOUNT``, ``PHONE``, ``IMEI`` or ``PLATFORM_ACCOUNT``."""
    digest: str
    """The broker's keyed digest of the identifier (never the identifier)."""
    cases: tuple[str, ...]
    """Every linked case as ``owner/case number``."""
    cross_region: bool
    """True when the owners are in different regions."""
    coordinator: str
    """The police agency suggested to coordinate, or empty."""
    at: datetime
    """When the desk recorded it."""


@dataclass(frozen=True, kw_only=True)
class InPersonDissuasion:
    """An in-person dissuasion (见面劝阻) the desk made after a warning failed, as the broker asked."""

    request_id: str
    """The DISSUASION's request id."""
    reference: str
    """The desk's record number."""
    case_number: str
    """The case the failed warning belongs to."""
    warning_request_id: str
    """The WARNING that did not dissuade."""
    warning_outcome: str
    """How that warning ended: ``UNREACHABLE`` or ``CONTINUING``."""
    region: str
    """Where the person was looked for."""
    target: str
    """Whom: the phone number, or ``platform:account``."""
    outcome: str
    """How the visit ended: ``DISSUADED``, ``CONTINUING`` or ``UNREACHABLE``."""
    at: datetime
    """When the desk recorded it."""
