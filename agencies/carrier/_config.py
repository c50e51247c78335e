"""How a reference carrier core is set up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agencies._common import MEMORY

__all__ = ["CarrierConfig"]


@dataclass(frozen=True, kw_only=True)
class CarrierConfig:
    """A carrier core's identity and store."""

    agency_id: str
    """This carrier's agency id (``carrier-cmcc``)."""
    database: str | Path = MEMORY
    """SQLite file, created if missing, or ``":memory:"``."""
