"""What the carrier keeps about a line, as read back from the store."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = ["CallRecord", "Cell", "LastSeen", "Line", "LineStatus", "SentWarning"]


class LineStatus(enum.StrEnum):
    ACTIVE = "active"
    CANCELLED = "cancelled"


@dataclass(frozen=True, kw_only=True)
class Line:
    """A subscriber line: number, SIM, the handset last seen with it, and what is blocked."""

    e164: str
    """The number, E.164."""
    iccid: str
    """SIM card serial."""
    imsi: str
    """Subscriber identity on the SIM."""
    imei: str
    """Handset last seen with the SIM; empty if none was seen."""
    subscriber_name: str
    """Real-name registration (实名制)."""
    id_type: str
    """Identity document kind used at registration."""
    id_number: str
    """Identity document number."""
    status: LineStatus
    """Active or cancelled."""
    activated_at: datetime
    """When the line was activated."""
    number_blocked: bool
    """Calls and texts to and from the number are barred."""
    sim_blocked: bool
    """The SIM card is barred from the network."""
    imei_blocked: bool
    """The handset is barred from the network (EIR blacklist)."""
    issuing_batch: str = ""
    """The SIM issuing batch the line's card came from; empty if not recorded."""

    def blocked_kinds(self) -> tuple[str, ...]:
        flags = (("number", self.number_blocked), ("sim", self.sim_blocked), ("imei", self.imei_blocked))
        return tuple(kind for kind, on in flags if on)


@dataclass(frozen=True, kw_only=True)
class CallRecord:
    """One call detail record of a line."""

    e164: str
    """The carrier's own line."""
    direction: str
    """``out`` (the line called) or ``in`` (the line was called)."""
    other_party: str
    """The other number, E.164."""
    started_at: datetime
    """Call set-up time."""
    duration_s: int
    """Seconds connected; 0 for an unanswered call."""
    cell_id: str
    """Serving cell of the line, if known."""


@dataclass(frozen=True, kw_only=True)
class SentWarning:
    """A warning delivered to a subscriber."""

    request_id: str
    """The order that asked for it."""
    e164: str
    """Whom it reached."""
    channel: str
    """``call`` or ``sms``."""
    template_id: str
    """The approved message template."""
    at: datetime
    """When it went out."""


@dataclass(frozen=True, kw_only=True)
class Cell:
    """A cell of the carrier's radio network and where it serves."""

    cell_id: str
    """Global cell identity, ``MCC-MNC-LAC-CI`` (``460-00-22801-40961``)."""
    base_station_id: str
    """The base station (eNodeB / gNodeB) the cell belongs to."""
    location_area: str
    """Location or tracking area, ``MCC-MNC-LAC``."""
    latitude: float
    """WGS 84 latitude of the cell's estimated serving area, degrees."""
    longitude: float
    """WGS 84 longitude, degrees."""
    accuracy_m: int
    """Radius of the serving area around the coordinates, metres."""


@dataclass(frozen=True, kw_only=True)
class LastSeen:
    """Where and when the network last saw a line active."""

    e164: str
    """The carrier's own line."""
    cell: Cell
    """The serving cell at that time."""
    at: datetime
    """Time of the last activity (call, text, data session, location update)."""
