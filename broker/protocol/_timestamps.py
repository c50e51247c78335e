"""Conversions between aware ``datetime`` and ``google.protobuf.Timestamp``, defined once."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

__all__ = ["from_timestamp", "optional_timestamp", "to_timestamp"]


def to_timestamp(when: datetime) -> Timestamp:
    """The instant ``when`` on the wire (a naive one is read as UTC, as protobuf does)."""
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def optional_timestamp(when: datetime | None) -> Timestamp | None:
    """:func:`to_timestamp`, passing None through (an unset field)."""
    return None if when is None else to_timestamp(when)


def from_timestamp(stamp: Timestamp) -> datetime:
    """The wire instant as an aware UTC ``datetime``."""
    return stamp.ToDatetime(tzinfo=UTC)
