"""How a reference bank core is set up."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from agencies._common import MEMORY

__all__ = ["BankConfig"]


@dataclass(frozen=True, kw_only=True)
class BankConfig:
    """A bank core's identity, store and rules."""

    agency_id: str
    """This bank's agency id (``bank-icbc``); an order naming another bank's account is NOT_FOUND."""
    database: str | Path = MEMORY
    """SQLite file, created if missing, or ``":memory:"``."""
    lookback: timedelta = timedelta(hours=72)
    """How far back outgoing transfers are listed as onward transfers when money is missing."""
    stop_payment_hold: timedelta = timedelta(hours=48)
    """How long a stop-payment hold lasts when the order does not say (``OrderContext.hold_until``)."""
    freeze_hold: timedelta = timedelta(days=183)
    """How long a freeze lasts when the order does not say: six months."""
