"""What the pages show, computed from the Bus API's messages: plain dicts for templates and JSON.

Pure functions of statuses, trails and ``now``: the same input gives the same page, so they are
tested without a browser.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, trail_pb2

from broker.client import PHASES, SlaReport, human_duration, report_to_json, sla_report
from broker.protocol import (
    CANCELLABLE_STATES,
    FINAL_STATES,
    HOLD_TYPES,
    HOLDING_STATES,
    phase_slug,
    reason_name,
    request_type_name,
    state_name,
)

__all__ = [
    "case_requests",
    "is_open",
    "money_text",
    "next_deadline",
    "request_row",
    "sla_view",
    "trail_graph",
]

_T = trail_pb2
# A hold's own later states: extended (still holding until its new lapse), released, lapsed.
_AFTER_HOLD = frozenset(
    {common_pb2.REQUEST_STATE_EXTENDED, common_pb2.REQUEST_STATE_RELEASED, common_pb2.REQUEST_STATE_EXPIRED}
)


def _ms(stamp: Timestamp) -> int:
    return stamp.ToMilliseconds()


def _iso(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _shown(stamp: Timestamp, *, millis: bool = False) -> str:
    """``2026-12-03 21:07:43`` (UTC, as the header's clock), with milliseconds for timelines."""
    text = stamp.ToDatetime(tzinfo=UTC).isoformat(sep=" ", timespec="milliseconds" if millis else "seconds")
    return text.removesuffix("+00:00")


def money_text(money: common_pb2.Money) -> str:
    """``15,000.00 CNY``."""
    return f"{Decimal(money.minor_units).scaleb(-2):,.2f} {money.currency}".strip()


def _holding(status: lifecycle_pb2.RequestStatus, now: datetime) -> bool:
    return (
        status.type in HOLD_TYPES
        and status.state in HOLDING_STATES
        and status.deadlines.HasField("hold_expires_at")
        and status.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) > now
    )


def is_open(status: lifecycle_pb2.RequestStatus, *, now: datetime) -> bool:
    """Still the duty officer's business: not answered yet, or a hold in force."""
    unanswered = status.state not in FINAL_STATES and status.state not in _AFTER_HOLD
    return unanswered or _holding(status, now)


def next_deadline(status: lifecycle_pb2.RequestStatus, *, now: datetime) -> tuple[str, Timestamp] | None:
    """The next thing due: the earliest phase deadline not done yet, else the hold's lapse."""
    if status.state not in FINAL_STATES:
        pending = [d for d in status.deadlines.phases if not d.HasField("done_at") and d.due_at.seconds]
        if pending:
            first = min(pending, key=lambda d: _ms(d.due_at))
            return phase_slug(first.phase), first.due_at
    if _holding(status, now):
        return "hold lapses", status.deadlines.hold_expires_at
    return None


def request_row(
    status: lifecycle_pb2.RequestStatus, *, now: datetime, warn_phase: timedelta, warn_hold: timedelta
) -> dict[str, Any]:
    """One line of the Now page (and of an SSE update)."""
    due = next_deadline(status, now=now)
    urgency = "ok"
    if due is not None:
        label, at = due
        left = at.ToDatetime(tzinfo=UTC) - now
        warn = warn_hold if label == "hold lapses" else warn_phase
        urgency = "breached" if left.total_seconds() <= 0 else "soon" if left <= warn else "ok"
    holding = _holding(status, now)
    return {
        "id": status.id,
        "type": request_type_name(status.type),
        "state": state_name(status.state),
        "sender": status.sender,
        "recipient": status.recipient,
        "case": status.case_ref.case_number,
        "priority": common_pb2.Priority.Name(status.priority).removeprefix("PRIORITY_"),
        "hop": status.hop,
        "submitted_at": _iso(status.submitted_at),
        "submitted_text": _shown(status.submitted_at),
        "submitted_ms": _ms(status.submitted_at),
        "due_label": due[0] if due else "",
        "due_at": _iso(due[1]) if due else "",
        "due_ms": _ms(due[1]) if due else 0,
        "urgency": urgency,
        # Changes whenever the row would render differently: the page keeps rows whose version
        # it already shows (and an action form an officer has open in them).
        "version": f"{status.state}:{urgency}:{_ms(due[1]) if due else 0}:{_ms(status.updated_at)}",
        "open": is_open(status, now=now),
        "holding": holding,
        "can_cancel": status.state in CANCELLABLE_STATES,
        "can_hold_actions": holding,
        "can_convert": holding and status.type == common_pb2.REQUEST_TYPE_STOP_PAYMENT,
    }


def _signer(token: str) -> str:
    """The ``kid`` in a detached JWS's protected header (who signed, which key)."""
    header = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))
    except (binascii.Error, ValueError):
        return ""
    kid = decoded.get("kid", "") if isinstance(decoded, dict) else ""
    return str(kid)


def timeline(status: lifecycle_pb2.RequestStatus) -> list[dict[str, Any]]:
    """The request's signed events: state, actor, times, the signing key's id."""
    rows = []
    for recorded in status.events:
        try:
            event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        except DecodeError:
            continue
        reason = reason_name(event.reason) if event.reason else ""
        rows.append(
            {
                "seq": recorded.seq,
                "state": state_name(event.state),
                "actor": event.actor,
                "at": _shown(event.at, millis=True),
                "recorded_at": _shown(recorded.recorded_at, millis=True),
                "reason": reason,
                "phase": phase_slug(event.phase) if event.phase else "",
                "detail": event.detail,
                "kid": _signer(recorded.event.signature),
            }
        )
    return rows


def case_requests(statuses: Iterable[lifecycle_pb2.RequestStatus], *, now: datetime) -> list[dict[str, Any]]:
    """Every request of a case, oldest first, each with its timeline."""
    rows = []
    for status in sorted(statuses, key=lambda s: _ms(s.submitted_at)):
        row = request_row(status, now=now, warn_phase=timedelta(0), warn_hold=timedelta(0))
        row["timeline"] = timeline(status)
        rows.append(row)
    return rows


def trail_graph(trail: trail_pb2.Trail, accounts: Mapping[str, common_pb2.BankAccountRef]) -> dict[str, Any]:
    """The trail as graph elements (Cytoscape's JSON): accounts with what they hold, transfers as
    edges, the money that escaped as highlighted leads."""
    nodes: list[dict[str, Any]] = []
    edges: list[dict[str, Any]] = []
    node_of_request = {r.request_id: n.node_id for n in trail.nodes for r in n.requests if r.request_id}
    for node in trail.nodes:
        account = accounts.get(node.node_id)
        name = (
            f"{account.account_number} {account.holder_name}".strip() if account else f"#{node.node_id[:10]}"
        )
        nodes.append(
            {
                "data": {
                    "id": node.node_id,
                    "label": f"{node.bank}\n{name}\nheld {money_text(node.held)}",
                    "bank": node.bank,
                    "account": account.account_number if account else "",
                    "held_minor": node.held.minor_units,
                    "traced_minor": node.traced.minor_units,
                    "held": money_text(node.held),
                    "traced": money_text(node.traced),
                    "depth": node.depth,
                    "kind": "held" if node.held.minor_units else "empty",
                }
            }
        )
        for request in node.requests:
            parent = node_of_request.get(request.parent_id)
            if parent and parent != node.node_id:
                edges.append(
                    {
                        "data": {
                            "id": f"t-{request.request_id}",
                            "source": parent,
                            "target": node.node_id,
                            "label": money_text(request.asked),
                            "amount_minor": request.asked.minor_units,
                            "kind": "chased",
                        }
                    }
                )
    for index, lead in enumerate(trail.leads):
        if lead.reason == _T.LEAD_REASON_CYCLE:
            continue
        target = f"lead-{index}"
        where = lead.to_bank or (f"bank {lead.to_bank_code}" if lead.to_bank_code else "unknown bank")
        reason = _T.LeadReason.Name(lead.reason).removeprefix("LEAD_REASON_").lower().replace("_", " ")
        nodes.append(
            {
                "data": {
                    "id": target,
                    "label": f"{where}\nescaped {money_text(lead.amount)}\n({reason})",
                    "bank": where,
                    "held_minor": 0,
                    "escaped_minor": lead.amount.minor_units,
                    "escaped": money_text(lead.amount),
                    "kind": "escaped",
                }
            }
        )
        source = lead.from_node_id or node_of_request.get(lead.from_request_id, "")
        if source:
            edges.append(
                {
                    "data": {
                        "id": f"l-{index}",
                        "source": source,
                        "target": target,
                        "label": money_text(lead.transfer_amount or lead.amount),
                        "amount_minor": lead.amount.minor_units,
                        "kind": "escaped",
                    }
                }
            )
    held = sum(n.held.minor_units for n in trail.nodes)
    escaped = sum(
        lead.amount.minor_units for lead in trail.leads if lead.reason != _T.LEAD_REASON_CYCLE
    ) + sum(m.minor_units for m in trail.unlisted_lead_amounts)
    currency = next((n.held.currency for n in trail.nodes if n.held.currency), "CNY")
    levels = max((n.depth for n in trail.nodes), default=0) + 1 + (1 if trail.leads else 0)
    return {
        "elements": {"nodes": nodes, "edges": edges},
        "levels": levels,
        "held": money_text(common_pb2.Money(currency=currency, minor_units=held)),
        "escaped": money_text(common_pb2.Money(currency=currency, minor_units=escaped)),
        "held_minor": held,
        "escaped_minor": escaped,
        "chasing": trail.chasing,
        "settled": trail.settled,
        "accounts": [n["data"] for n in nodes],
    }


def _hour(stamp: Timestamp) -> str:
    at = stamp.ToDatetime(tzinfo=UTC)
    return at.strftime("%Y-%m-%d %H:00")


def sla_view(statuses: Sequence[lifecycle_pb2.RequestStatus], *, now: datetime) -> dict[str, Any]:
    """The figures behind ``sla report`` (the same function computes them), summed for charts per
    agency, type and phase, and met / breached per hour of submission."""
    report: SlaReport = sla_report(statuses, now=now)
    by_agency: dict[str, dict[str, int]] = {}
    by_type: dict[str, dict[str, int]] = {}
    by_phase: dict[str, dict[str, int]] = {
        phase_slug(p): {"met": 0, "breached": 0, "open": 0} for p in PHASES
    }
    for row in report.rows:
        for key, table in ((row.agency, by_agency), (request_type_name(row.request_type), by_type)):
            counts = table.setdefault(key, {"met": 0, "breached": 0, "open": 0})
            counts["met"] += row.met
            counts["breached"] += row.breached
            counts["open"] += row.open
        for phase, phase_counts in row.phases.items():
            slot = by_phase[phase_slug(phase)]
            slot["met"] += phase_counts.met
            slot["breached"] += phase_counts.breached
            slot["open"] += phase_counts.open
    buckets: dict[str, list[lifecycle_pb2.RequestStatus]] = {}
    for status in statuses:
        buckets.setdefault(_hour(status.submitted_at), []).append(status)
    over_time = []
    for hour in sorted(buckets):
        part = sla_report(buckets[hour], now=now)
        over_time.append({"hour": hour, "met": part.met, "breached": part.breached, "open": part.open})
    document = report_to_json(report)
    document["generated_text"] = report.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    for row in document["rows"]:
        row["median"] = human_duration(row["time_to_finish_ms"]["median"])
        row["p95"] = human_duration(row["time_to_finish_ms"]["p95"])
    return {
        "report": document,
        "by_agency": by_agency,
        "by_type": by_type,
        "by_phase": by_phase,
        "over_time": over_time,
    }
