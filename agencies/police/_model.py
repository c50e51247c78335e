"""What the desk keeps, as read back from the store."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

__all__ = ["AssistanceCase", "FiledReport"]


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
