"""What ``greenchannel list`` prints: one row per request for people, a page document for programs.

Rows are newest first, as the Bus API's List returns them. The *next deadline* is the earliest
phase deadline neither met nor breached (:func:`broker.client.next_deadline`); its time left is
counted from ``now``, negative once it has passed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from greenchannel.v1 import common_pb2, lifecycle_pb2

from broker.client import human_duration, next_deadline
from broker.protocol import phase_slug, request_type_name, state_name

from ._render import short_reason, table

__all__ = ["list_document", "list_lines", "summary_document"]

_NONE = "-"


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _next(status: lifecycle_pb2.RequestStatus, now: datetime) -> tuple[str, datetime, float] | None:
    """(phase, due at, seconds left) of the next deadline."""
    deadline = next_deadline(status)
    if deadline is None:
        return None
    due = deadline.due_at.ToDatetime(tzinfo=UTC)
    return phase_slug(deadline.phase), due, (due - now).total_seconds()


def summary_document(
    status: lifecycle_pb2.RequestStatus, *, now: datetime, breaching: bool | None = None
) -> dict[str, object]:
    """One request of ``list --json``: what a row shows, with times in RFC 3339 (UTC)."""
    upcoming = _next(status, now)
    document: dict[str, object] = {
        "id": status.id,
        "type": request_type_name(status.type),
        "state": state_name(status.state),
        "reason": short_reason(status.reason),
        "priority": common_pb2.Priority.Name(status.priority).removeprefix("PRIORITY_"),
        "sender": status.sender,
        "recipient": status.recipient,
        "case_number": status.case_ref.case_number,
        "target_id": status.target_id,
        "submitted_at": _iso(status.submitted_at.ToDatetime(tzinfo=UTC)),
        "breached": [phase_slug(p.phase) for p in status.deadlines.phases if p.breached],
        "next_deadline": None
        if upcoming is None
        else {"phase": upcoming[0], "due_at": _iso(upcoming[1]), "seconds_left": round(upcoming[2], 3)},
    }
    if status.deadlines.HasField("hold_expires_at"):
        document["hold_expires_at"] = _iso(status.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC))
    if breaching is not None:
        document["about_to_breach"] = breaching
    return document


def list_document(
    statuses: Sequence[lifecycle_pb2.RequestStatus],
    *,
    now: datetime,
    next_page_token: str,
    breaching: frozenset[str] | None = None,
) -> dict[str, object]:
    """``list --json``: the requests and the token of the next page (empty at the end)."""
    return {
        "as_of": _iso(now),
        "requests": [
            summary_document(s, now=now, breaching=None if breaching is None else s.id in breaching)
            for s in statuses
        ],
        "next_page_token": next_page_token,
    }


def _due_text(status: lifecycle_pb2.RequestStatus, now: datetime) -> str:
    upcoming = _next(status, now)
    if upcoming is None:
        return _NONE
    phase, _due, left = upcoming
    if left < 0:
        return f"{phase} overdue {human_duration(-left * 1000)}"
    return f"{phase} in {human_duration(left * 1000)}"


def list_lines(
    statuses: Sequence[lifecycle_pb2.RequestStatus],
    *,
    now: datetime,
    breaching: frozenset[str] = frozenset(),
    more: str | None = None,
) -> list[str]:
    """The table of ``list``; ``!`` marks a request about to breach; ``more`` is how to go on."""
    if not statuses:
        lines = ["no requests match"]
    else:
        rows = [
            (
                "!" if s.id in breaching else "",
                s.id,
                request_type_name(s.type),
                state_name(s.state) + (f" ({short_reason(s.reason)})" if s.reason else ""),
                f"{s.sender} -> {s.recipient}",
                s.case_ref.case_number,
                s.submitted_at.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S"),
                _due_text(s, now),
            )
            for s in statuses
        ]
        lines = table(("", "id", "type", "state", "route", "case", "submitted", "next deadline"), rows)
    if more:
        lines += ["", f"more: {more}"]
    return lines
