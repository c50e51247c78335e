"""What ``greenchannel submit | watch | status`` print: aligned tables for people, JSON for programs.

Human output never shows a full account number (``6222****4567``); JSON output is what the Bus API
returned to the caller, who is allowed to read it, plus computed fields. Short enum names
(``PARTIALLY_EXECUTED``) are used everywhere except inside the ``status`` object of a JSON
document, which is the request status in the protobuf JSON mapping, unchanged.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.client import ErrorDetails
from broker.protocol import FINAL_STATES, phase_slug, reason_name, request_type_name, state_name

__all__ = [
    "TimelineEntry",
    "answer_document",
    "answer_lines",
    "error_document",
    "error_lines",
    "event_document",
    "event_line",
    "mask_account",
    "money",
    "short_reason",
    "status_document",
    "status_lines",
    "submitted_lines",
    "table",
    "timeline",
    "timings_ms",
]

_NONE = "-"


# -- names and values -----------------------------------------------------------------------------


def short_reason(value: results_pb2.ReasonCode.ValueType) -> str:
    """``MISMATCH``; empty for no reason."""
    return reason_name(value) if value else ""


def _short_priority(value: common_pb2.Priority.ValueType) -> str:
    return common_pb2.Priority.Name(value).removeprefix("PRIORITY_")


def money(amount: common_pb2.Money) -> str:
    """``15,000.00 CNY``, from integer minor units (two decimals) without floating point."""
    units = amount.minor_units
    sign = "-" if units < 0 else ""
    whole, cents = divmod(abs(units), 100)
    return f"{sign}{whole:,}.{cents:02d} {amount.currency}".rstrip()


def mask_account(number: str) -> str:
    """``6222****4567``: enough to tell accounts apart, not enough to use one."""
    if len(number) > 8:
        return f"{number[:4]}****{number[-4:]}"
    return "****" + number[-2:]


def _local(ts: Timestamp, *, millis: bool = True) -> str:
    when = ts.ToDatetime(tzinfo=UTC).astimezone()
    text = when.strftime("%Y-%m-%d %H:%M:%S.%f")
    return text[:-3] if millis else text[:-7]


def _iso(ts: Timestamp) -> str | None:
    return ts.ToJsonString() if ts.seconds or ts.nanos else None


def _ms_between(start: Timestamp, end: Timestamp) -> float:
    delta = end.ToDatetime(tzinfo=UTC) - start.ToDatetime(tzinfo=UTC)
    # The broker reads its clock for the receipt and for the SUBMITTED record separately, so
    # that record can land a few microseconds "before" the submission.
    return max(0.0, round(delta.total_seconds() * 1000, 1))


# -- tables ---------------------------------------------------------------------------------------


def _width(text: str) -> int:
    # Chinese names and instrument numbers take two columns each on a terminal.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, indent: str = "") -> list[str]:
    """An aligned text table: header, a rule, then the rows; cells are ``str()``-ed."""
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return (
            indent + "  ".join(_pad(cell, width) for cell, width in zip(row, widths, strict=True))
        ).rstrip()

    return [line(cells[0]), line(["-" * w for w in widths]), *(line(row) for row in cells[1:])]


def _pairs(pairs: Iterable[tuple[str, str]], *, indent: str = "") -> list[str]:
    items = list(pairs)
    width = max((_width(k) for k, _ in items), default=0)
    return [f"{indent}{_pad(key, width)}  {value}".rstrip() for key, value in items]


# -- timeline -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TimelineEntry:
    """One step of a request, decoded from its signed lifecycle event."""

    seq: int
    """Position in the timeline, from 1."""
    state: str
    """Short state name."""
    actor: str
    """Agency id, or the broker's id."""
    at: Timestamp
    """When it happened, by the actor's clock."""
    recorded_at: Timestamp
    """When the broker recorded it."""
    reason: str
    """Short reason name, or empty."""
    detail: str
    """Free text for people (never personal data)."""
    phase: str
    """Phase concerned (escalations), or empty."""
    since_submission_ms: float
    """Broker receipt of the request to broker receipt of this event."""

    def as_json(self) -> dict[str, object]:
        return {
            "seq": self.seq,
            "state": self.state,
            "actor": self.actor,
            "at": _iso(self.at),
            "recorded_at": _iso(self.recorded_at),
            "reason": self.reason,
            "detail": self.detail,
            "phase": self.phase,
            "since_submission_ms": self.since_submission_ms,
        }


def timeline(status: lifecycle_pb2.RequestStatus) -> list[TimelineEntry]:
    entries = []
    for recorded in status.events:
        event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        entries.append(
            TimelineEntry(
                seq=recorded.seq,
                state=state_name(event.state),
                actor=event.actor,
                at=event.at,
                recorded_at=recorded.recorded_at,
                reason=short_reason(event.reason),
                detail=event.detail,
                phase=phase_slug(event.phase) if event.phase else "",
                since_submission_ms=_ms_between(status.submitted_at, recorded.recorded_at),
            )
        )
    return entries


_REACHED = {
    "deliver": {"DELIVERED", "ACKNOWLEDGED", *(state_name(s) for s in FINAL_STATES)},
    "acknowledge": {"ACKNOWLEDGED", *(state_name(s) for s in FINAL_STATES)},
    "finish": {state_name(s) for s in FINAL_STATES},
}


def timings_ms(status: lifecycle_pb2.RequestStatus) -> dict[str, float | None]:
    """Milliseconds from the broker's receipt to delivery, acknowledgement and the final answer."""
    entries = timeline(status)
    return {
        name: next((e.since_submission_ms for e in entries if e.state in states), None)
        for name, states in _REACHED.items()
    }


# -- status ---------------------------------------------------------------------------------------


def status_document(
    status: lifecycle_pb2.RequestStatus,
    *,
    duplicate: bool | None = None,
    answer: results_pb2.DataAnswer | None = None,
    details: results_pb2.ResultDetails | None = None,
) -> dict[str, object]:
    """The JSON of ``submit --json`` and ``status --json``: a summary, timings, timeline, full status.

    The status is as the bus holds it (onward transfers redacted); ``details`` are the decrypted
    ones, under ``"details"``, when the caller could open them.
    """
    document: dict[str, object] = {
        "id": status.id,
        "type": request_type_name(status.type),
        "priority": _short_priority(status.priority),
        "sender": status.sender,
        "recipient": status.recipient,
        "case_number": status.case_ref.case_number,
        "state": state_name(status.state),
        "reason": short_reason(status.reason),
        "parent_id": status.parent_id,
        "hop": status.hop,
        "target_id": status.target_id,
        "submitted_at": _iso(status.submitted_at),
        "timings_ms": timings_ms(status),
        "timeline": [entry.as_json() for entry in timeline(status)],
        "status": MessageToDict(status, preserving_proto_field_name=True),
    }
    if status.result.block.items:
        totals = status.result.block.totals
        document["block_totals"] = {
            "items": len(status.result.block.items),
            "blocked": totals.blocked,
            "already_blocked": totals.already_blocked,
            "not_found": totals.not_found,
            "not_ours": totals.not_ours,
        }
    if status.appealed_mark_id:
        document["mark_id"] = status.appealed_mark_id
    if duplicate is not None:
        document["duplicate"] = duplicate
    if answer is not None:
        document["answer"] = answer_document(answer)
    if details is not None:
        document["details"] = MessageToDict(details, preserving_proto_field_name=True)
    return document


def submitted_lines(response: bus_pb2.SubmitResponse, *, agency: str) -> list[str]:
    """What ``submit`` without ``--wait`` prints: the id and how to follow it."""
    status = response.status
    first = (
        f"submitted {status.id}: {request_type_name(status.type)} {status.sender} -> {status.recipient} "
        f"({_short_priority(status.priority)}), case {status.case_ref.case_number}, "
        f"state {state_name(status.state)}"
    )
    lines = [first]
    if response.duplicate:
        lines.append("  (this idempotency key was used before: this is the request it created)")
    due = [
        f"{phase_slug(p.phase)} by {_local(p.due_at, millis=False)}"
        for p in status.deadlines.phases
        if p.HasField("due_at")
    ]
    if due:
        lines.append("  due: " + ", ".join(due))
    lines.append(f"  follow: greenchannel watch --as {agency} --request {status.id}")
    return lines


def _yes_no(flag: bool) -> str:
    return "yes" if flag else "no"


def _deadline_lines(status: lifecycle_pb2.RequestStatus) -> list[str]:
    deadlines = status.deadlines
    rows = []
    for phase in deadlines.phases:
        done = phase.HasField("done_at")
        late = (
            done and phase.HasField("due_at") and phase.done_at.ToNanoseconds() > phase.due_at.ToNanoseconds()
        )
        rows.append(
            (
                phase_slug(phase.phase),
                _local(phase.due_at) if phase.HasField("due_at") else _NONE,
                _local(phase.done_at) if done else "open",
                _yes_no(phase.breached or late),
            )
        )
    lines = ["deadlines", *table(("phase", "due", "done", "breached"), rows, indent="  ")] if rows else []
    if deadlines.HasField("hold_expires_at"):
        lines.append(f"  hold expires at {_local(deadlines.hold_expires_at, millis=False)}")
    return lines


def _onward_lines(result: results_pb2.Result, details: results_pb2.ResultDetails | None) -> list[str]:
    """The transfers, decrypted if ``details`` are given, else as the bus holds them (redacted)."""
    onward = details.onward_transfers if details is not None else result.onward_transfers
    if not onward:
        return []
    currencies = {t.amount.currency for t in onward}
    total = (
        money(
            common_pb2.Money(currency=currencies.pop(), minor_units=sum(t.amount.minor_units for t in onward))
        )
        if len(currencies) == 1
        else "mixed currencies"
    )
    rows = [
        (
            t.to_bank or (f"outside ({t.to_bank_code})" if t.to_bank_code else "outside"),
            mask_account(t.to_account) if t.to_account else "sealed",
            money(t.amount),
            _local(t.at, millis=False) if t.HasField("at") else _NONE,
        )
        for t in onward
    ]
    return [
        f"  onward transfers  {len(onward)}, total {total}",
        *table(("bank", "account", "amount", "at"), rows, indent="    "),
    ]


def _result_lines(
    status: lifecycle_pb2.RequestStatus, details: results_pb2.ResultDetails | None
) -> list[str]:
    if not status.HasField("result"):
        return []
    result = status.result
    outcome = state_name(result.outcome)
    if result.reason:
        outcome += f" ({short_reason(result.reason)})"
    pairs = [("outcome", outcome)]
    if result.detail:
        pairs.append(("detail", result.detail))
    if result.HasField("amount_released"):
        pairs.append(("released", money(result.amount_released)))
    if result.HasField("amount_returned"):
        pairs.append(("returned", money(result.amount_returned)))
    if result.appeal:
        pairs.append(
            ("appeal", results_pb2.AppealDecision.Name(result.appeal).removeprefix("APPEAL_DECISION_"))
        )
    if result.follow_up:
        pairs.append(
            (
                "follow-up",
                results_pb2.FollowUpOutcome.Name(result.follow_up).removeprefix("FOLLOW_UP_OUTCOME_"),
            )
        )
    if result.warning:
        pairs.append(
            ("warning", results_pb2.WarningOutcome.Name(result.warning).removeprefix("WARNING_OUTCOME_"))
        )
    if result.feedback:
        pairs.append(
            (
                "feedback",
                results_pb2.FeedbackDecision.Name(result.feedback).removeprefix("FEEDBACK_DECISION_"),
            )
        )
    if result.HasField("amount_held"):
        pairs.append(("held", money(result.amount_held)))
    if result.HasField("amount_frozen"):
        pairs.append(("frozen", money(result.amount_frozen)))
    if result.HasField("hold_until"):
        pairs.append(("hold until", _local(result.hold_until, millis=False)))
    if result.agency_reference:
        pairs.append(("agency reference", result.agency_reference))
    if result.HasField("block"):
        blocked = ", ".join(result.block.blocked) or _NONE
        pairs.append(("blocked", f"{blocked}; warned: {_yes_no(result.block.warned)}"))
        if result.block.items:
            totals = result.block.totals
            pairs.append(
                (
                    "items",
                    f"{len(result.block.items)}: {totals.blocked} blocked, {totals.already_blocked} already"
                    f" blocked, {totals.not_found} not found, {totals.not_ours} not ours",
                )
            )
    if result.assistance:
        pairs.append(("assistance", results_pb2.AssistanceDecision.Name(result.assistance).split("_")[-1]))
    if result.HasField("encrypted_payload"):
        sealed = result.encrypted_payload
        pairs.append(
            (
                "sealed answer",
                f"{sealed.content_type or 'payload'}, {len(sealed.ciphertext)} bytes (open with --decrypt)",
            )
        )
    if result.HasField("sealed_details") and details is None:
        pairs.append(
            ("onward details", f"accounts and names sealed to {status.sender} (open with --decrypt)")
        )
    return ["result", *_pairs(pairs, indent="  "), *_onward_lines(result, details)]


def _timeline_lines(status: lifecycle_pb2.RequestStatus) -> list[str]:
    rows = [
        (
            e.seq,
            e.state,
            e.actor,
            _local(e.at),
            f"{e.since_submission_ms:.1f}",
            " ".join(part for part in (e.reason, e.phase, e.detail) if part) or _NONE,
        )
        for e in timeline(status)
    ]
    return ["timeline", *table(("seq", "state", "actor", "at", "+ms", "note"), rows, indent="  ")]


def _release_asked(seed: lifecycle_pb2.ReleaseSeed) -> str:
    """``2,000.00 CNY for living expenses``: what a RELEASE asked to lift."""
    if seed.HasField("item_index"):
        asked = f"item {seed.item_index} of the batch"
    else:
        asked = money(seed.amount) if seed.HasField("amount") else "all of the hold"
    if seed.purpose == requests_pb2.RELEASE_PURPOSE_UNSPECIFIED:
        return asked
    why = requests_pb2.ReleasePurpose.Name(seed.purpose).removeprefix("RELEASE_PURPOSE_")
    return f"{asked} for {why.lower().replace('_', ' ')}"


def status_lines(
    status: lifecycle_pb2.RequestStatus, *, details: results_pb2.ResultDetails | None = None
) -> list[str]:
    """The human view of ``status`` (and of ``submit --wait``): header, deadlines, result, timeline.

    Onward transfers are the decrypted ``details`` when given (accounts still masked), else the
    redacted ones the bus holds.
    """
    case = status.case_ref
    instrument = common_pb2.LegalInstrumentType.Name(case.legal_instrument_type).removeprefix(
        "LEGAL_INSTRUMENT_TYPE_"
    )
    state = state_name(status.state)
    if status.reason:
        state += f" ({short_reason(status.reason)})"
    offset = status.submitted_at.ToDatetime(tzinfo=UTC).astimezone().isoformat()[-6:]
    header = [
        ("request", status.id),
        ("type", f"{request_type_name(status.type)}, priority {_short_priority(status.priority)}"),
        ("route", f"{status.sender} -> {status.recipient}"),
        (
            "case",
            f"{case.case_number} ({instrument} {case.legal_instrument_id}, owner {case.issuing_agency})",
        ),
        ("state", state),
        ("chain", f"parent {status.parent_id or _NONE}, hop {status.hop}"),
        *([("target", status.target_id)] if status.target_id else []),
        *([("mark", f"risk mark {status.appealed_mark_id}")] if status.appealed_mark_id else []),
        *([("release", _release_asked(status.release_seed))] if status.HasField("release_seed") else []),
        (
            "submitted",
            f"{_local(status.submitted_at)} (times are local, UTC{offset})",
        ),
    ]
    sections = [
        _pairs(header),
        _deadline_lines(status),
        _result_lines(status, details),
        _timeline_lines(status),
    ]
    lines: list[str] = []
    for section in sections:
        if section:
            if lines:
                lines.append("")
            lines.extend(section)
    return lines


# -- data answers ---------------------------------------------------------------------------------


def answer_document(answer: results_pb2.DataAnswer) -> dict[str, Any]:
    return {
        "holder": dict(sorted(answer.holder.items())),
        "records": [dict(sorted(record.fields.items())) for record in answer.records],
    }


def answer_lines(answer: results_pb2.DataAnswer) -> list[str]:
    """The decrypted answer: holder fields as a two-column table, then the records."""
    lines = ["answer (decrypted)"]
    if answer.holder:
        lines += table(("field", "value"), sorted(answer.holder.items()), indent="  ")
    else:
        lines.append("  no holder fields")
    if answer.records:
        columns = sorted({name for record in answer.records for name in record.fields})
        rows = [[record.fields.get(c, "") for c in columns] for record in answer.records]
        lines += ["", f"  {len(answer.records)} records", *table(columns, rows, indent="  ")]
    return lines


# -- watch ----------------------------------------------------------------------------------------


def event_document(update: bus_pb2.WatchResponse, *, request_type: str) -> dict[str, object]:
    """One line of ``watch --json``."""
    event = lifecycle_pb2.LifecycleEvent.FromString(update.event.event.payload)
    return {
        "request_id": update.request_id,
        "cursor": update.cursor,
        "seq": update.event.seq,
        "type": request_type,
        "state": state_name(update.state),
        "event_state": state_name(event.state),
        "actor": event.actor,
        "at": _iso(event.at),
        "recorded_at": _iso(update.event.recorded_at),
        "reason": short_reason(event.reason),
        "detail": event.detail,
    }


def event_line(update: bus_pb2.WatchResponse, *, request_type: str) -> str:
    """One line of ``watch``: time, short request id, type, state, actor, reason."""
    event = lifecycle_pb2.LifecycleEvent.FromString(update.event.event.payload)
    # The tail of a UUIDv7 is random; its head is a timestamp shared by requests made together.
    short_id = update.request_id[-8:]
    when = _local(event.at).split(" ")[1]
    reason = short_reason(event.reason)
    note = " ".join(part for part in (reason, event.detail) if part)
    cells = (
        when,
        short_id,
        f"{request_type:<13}",
        f"{state_name(event.state):<18}",
        f"{event.actor:<20}",
        note,
    )
    return "  ".join(cells).rstrip()


# -- errors ---------------------------------------------------------------------------------------


def error_document(details: ErrorDetails) -> dict[str, object]:
    return {
        "error": {
            "code": details.code.name,
            "reason": details.reason,
            "message": details.message,
            "field_violations": [{"field": f, "description": d} for f, d in details.field_violations],
            "precondition_subjects": list(details.precondition_subjects),
            "retry_after_s": details.retry_delay.total_seconds() if details.retry_delay is not None else None,
        }
    }


def error_lines(details: ErrorDetails) -> list[str]:
    """A failed call for people: code and reason, message, then each violation on its own line."""
    head = details.code.name
    if details.reason and details.reason != head:
        head += f" ({details.reason})"
    lines = [f"{head}: {details.message}" if details.message else head]
    lines += [f"  {field}: {description}" for field, description in details.field_violations]
    lines += [f"  cannot route: {subject}" for subject in details.precondition_subjects]
    if details.retry_delay is not None:
        lines.append(f"  retry after {details.retry_delay.total_seconds():g} s")
    return lines
