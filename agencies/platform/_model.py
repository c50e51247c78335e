"""What the platform keeps about an account, as read back from the store."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "Login",
    "PlatformAccount",
    "PlatformAccountStatus",
    "Restriction",
    "SentWarning",
    "restricted_features",
]


class PlatformAccountStatus(enum.StrEnum):
    ACTIVE = "active"
    DEREGISTERED = "deregistered"
    """Closed by its user; data is kept, orders to restrict it are answered ACCOUNT_CLOSED."""


class Restriction(enum.IntEnum):
    """How far an account is restricted; the values are ``RestrictionLevel``'s."""

    NONE = 0
    PAYMENTS = 1
    """Payments and transfers stopped."""
    SUSPEND = 2
    """Messaging stopped too."""
    BAN = 3
    """The account is closed to its user."""


_FEATURES = {
    Restriction.NONE: (),
    Restriction.PAYMENTS: ("payments",),
    Restriction.SUSPEND: ("payments", "messaging"),
    Restriction.BAN: ("payments", "messaging", "login"),
}


def restricted_features(level: Restriction) -> tuple[str, ...]:
    """What a level stops, as reported in ``BlockOutcome.blocked``."""
    return _FEATURES[level]


@dataclass(frozen=True, kw_only=True)
class PlatformAccount:
    """A user account on one of the platform's services."""

    platform: str
    """Platform code (``wechat``)."""
    account_id: str
    """The platform's own account identifier."""
    display_name: str
    """Name shown to other users."""
    real_name: str
    """Real-name verification (实名认证)."""
    id_number: str
    """Identity document number from verification."""
    registered_phone: str
    """Phone number bound to the account, E.164."""
    status: PlatformAccountStatus
    """Active or deregistered."""
    restriction: Restriction
    """Current restriction level."""
    registered_at: datetime
    """When the account was registered."""


@dataclass(frozen=True, kw_only=True)
class Login:
    """One login to an account."""

    ip: str
    """Source IP address."""
    at: datetime
    """When."""
    device: str
    """Device description, if known."""


@dataclass(frozen=True, kw_only=True)
class SentWarning:
    """A warning delivered to a user."""

    request_id: str
    """The order that asked for it."""
    platform: str
    """Platform code."""
    account_id: str
    """Whom it reached."""
    channel: str
    """``in_app`` or ``call``."""
    template_id: str
    """The approved message template."""
    at: datetime
    """When it went out."""
