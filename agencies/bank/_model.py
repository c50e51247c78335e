"""What the bank core keeps: accounts, transfers and holds, as read back from the store."""

from __future__ import annotations

import enum
import unicodedata
from dataclasses import dataclass
from datetime import datetime

__all__ = ["Account", "AccountStatus", "Hold", "HoldKind", "HoldStatus", "Transfer", "same_holder"]


class AccountStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class HoldKind(enum.StrEnum):
    STOP_PAYMENT = "stop_payment"
    """紧急止付: short, lapses on its own unless extended or converted."""
    FREEZE = "freeze"
    """快速冻结: under a freeze notice, months long."""


class HoldStatus(enum.StrEnum):
    ACTIVE = "active"
    RELEASED = "released"
    EXPIRED = "expired"
    """Ran out; reported for an active row whose end has passed even before ``expire_holds``."""
    CONVERTED = "converted"
    """A stop-payment hold taken over by a freeze."""


@dataclass(frozen=True, kw_only=True)
class Account:
    """An account of this bank."""

    account_number: str
    """Account or card number."""
    holder_name: str
    """Holder's name as the bank records it."""
    currency: str
    """ISO 4217 code of the account."""
    balance: int
    """Booked balance in minor units, holds not deducted."""
    status: AccountStatus
    """Open or closed."""
    id_type: str
    """Kind of identity document the account was opened with."""
    id_number: str
    """Number of that document."""
    phone: str
    """Contact number on file."""
    opened_at: datetime
    """When the account was opened."""


@dataclass(frozen=True, kw_only=True)
class Transfer:
    """A transfer touching an account of this bank."""

    transfer_id: str
    """The bank's (or the clearing system's) transfer reference."""
    from_account: str
    """Paying account."""
    from_bank: str
    """Paying bank's agency id; empty when it is this bank or unknown."""
    to_account: str
    """Receiving account."""
    to_bank: str
    """Receiving bank's agency id; empty for banks outside the directory."""
    to_bank_code: str
    """Receiving bank's clearing code, for banks outside the directory."""
    to_holder: str
    """Beneficiary name as the payment instruction gave it."""
    amount: int
    """Minor units."""
    currency: str
    """ISO 4217 code."""
    at: datetime
    """When the money moved."""


@dataclass(frozen=True, kw_only=True)
class Hold:
    """A stop-payment hold or a freeze."""

    hold_id: str
    """The bank's reference, answered as ``agency_reference``."""
    request_id: str
    """The order that created it."""
    account_number: str
    """The account it holds money on."""
    amount: int
    """Minor units held."""
    kind: HoldKind
    """Stop-payment or freeze."""
    created_at: datetime
    """When it was placed."""
    expires_at: datetime
    """When it lapses."""
    status: HoldStatus
    """Effective status at the time it was read (an active hold past its end reads as expired)."""
    converted_from: str | None
    """For a freeze that converted a stop-payment hold: that hold's id."""
    released: int = 0
    """Minor units lifted by releases so far (partial ones lowered ``amount`` by as much)."""


def _normalized(name: str) -> str:
    # NFC so a composed and a decomposed spelling of the same name compare equal; runs of
    # whitespace collapse because forms and OCR disagree about spaces, never about letters.
    return " ".join(unicodedata.normalize("NFC", name).split())


def same_holder(recorded: str, given: str) -> bool:
    """Whether the name a request gives is the recorded holder name (after NFC and whitespace)."""
    return _normalized(recorded) == _normalized(given)
