"""Time conversions between the store (integer microseconds, UTC), Python and the wire.

The store keeps instants as integer microseconds since the epoch: they compare and index exactly,
which ISO text only does as long as every writer spells it the same way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from broker.protocol import from_timestamp, to_timestamp

__all__ = ["from_timestamp", "from_us", "rfc3339", "to_timestamp", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(when: datetime) -> int:
    if when.tzinfo is None:
        raise ValueError("naive datetime: every instant must be timezone-aware")
    return (when - _EPOCH) // timedelta(microseconds=1)


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


def rfc3339(when: datetime) -> str:
    """``2026-01-01T08:30:00Z``: the spelling data answers use for instants."""
    text = when.astimezone(UTC).isoformat()
    return text.removesuffix("+00:00") + "Z"
