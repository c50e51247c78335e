"""The SLA report: per responsible agency and request type, which phase deadlines were met.

Built from request statuses alone (what ``BusService.List`` returns), so it runs anywhere a
regulator can read, and two runs over the same statuses and ``now`` give the same report.

How a phase deadline counts:

- **met**: done at or before it was due (``done_at <= due_at``);
- **breached**: done late, or not done and already past due, or flagged ``breached`` by the broker;
- **open**: not done and not yet due.

A request cancelled before a phase was done stops its clock at the cancellation: a phase already
past due then is breached, the others count neither way (nobody owes them any more).

Victim follow-ups (回访, FOLLOW_UP requests the broker sends the police after a return) are also
counted on their own (:class:`FollowUpCounts`), so a supervisor sees who was never called back:
how many are due, how many were done (the victim reached or not), and how many are overdue (not
done and past their execute deadline, or flagged breached by the broker). Warnings are counted
by how they ended (:class:`WarningCounts`: dissuaded, continuing, unreachable) beside the in-person
dissuasions the broker sent for the failed ones; fraud reports by the police's feedback
(:class:`FeedbackCounts`: given in time, given late, overdue).

Time to finish runs from the broker's receive time (``submitted_at``) to the end of the execute
phase (its ``done_at``; failing that, when the broker recorded the first outcome event). Median and
95th percentile use the **nearest-rank** definition: the p-th percentile of n sorted values is the
value at rank ``ceil(p * n / 100)`` (from 1), so it is always an observed time, and the median of an
even count is the lower of the two middle values.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2

from broker.protocol import EXECUTED_STATES, OUTCOME_STATES, phase_slug, request_type_slug, to_timestamp

__all__ = [
    "PHASES",
    "FeedbackCounts",
    "FollowUpCounts",
    "PhaseCounts",
    "PhaseOutcome",
    "SlaReport",
    "SlaRow",
    "WarningCounts",
    "feedback_line",
    "follow_up_line",
    "human_duration",
    "nearest_rank",
    "phase_outcome",
    "render_table",
    "report_to_json",
    "sla_report",
    "warning_line",
]

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Phase: TypeAlias = common_pb2.Phase.ValueType

PHASES: tuple[_Phase, ...] = (
    common_pb2.PHASE_DELIVER,
    common_pb2.PHASE_ACKNOWLEDGE,
    common_pb2.PHASE_EXECUTE,
)
"""The phases a request is measured on, in order."""

_NS_PER_MS = 1_000_000


class PhaseOutcome(StrEnum):
    MET = "met"
    BREACHED = "breached"
    OPEN = "open"


@dataclass(frozen=True, kw_only=True)
class PhaseCounts:
    """How many deadlines of one phase were met, breached, or are still open."""

    met: int = 0
    """Done by the deadline."""
    breached: int = 0
    """Done late, or past due and not done."""
    open: int = 0
    """Not done, not yet due."""

    def __add__(self, other: PhaseCounts) -> PhaseCounts:
        return PhaseCounts(
            met=self.met + other.met, breached=self.breached + other.breached, open=self.open + other.open
        )


@dataclass(frozen=True, kw_only=True)
class SlaRow:
    """One responsible agency and one request type."""

    agency: str
    """The recipient: the agency that owes every phase."""
    request_type: _RequestType
    """The request type."""
    requests: int
    """Requests of this type addressed to this agency."""
    phases: Mapping[_Phase, PhaseCounts]
    """Counts per phase (deliver, acknowledge, execute), every phase present."""
    finished: int
    """Requests that reached an outcome (executed, partially executed, rejected, failed)."""
    cancelled: int
    """Requests the sender cancelled before they were acknowledged."""
    median_ms: float | None
    """Median time to finish in milliseconds (nearest rank); None when nothing finished."""
    p95_ms: float | None
    """95th percentile of the time to finish in milliseconds (nearest rank); None when nothing finished."""

    @property
    def met(self) -> int:
        return sum(counts.met for counts in self.phases.values())

    @property
    def breached(self) -> int:
        return sum(counts.breached for counts in self.phases.values())

    @property
    def open(self) -> int:
        return sum(counts.open for counts in self.phases.values())


@dataclass(frozen=True, kw_only=True)
class FollowUpCounts:
    """Victim follow-ups (FOLLOW_UP requests): who was called back, who was not, who is overdue."""

    due: int = 0
    """Follow-ups owed: every FOLLOW_UP not cancelled."""
    done: int = 0
    """Answered EXECUTED by the police (the call was made and recorded)."""
    reached: int = 0
    """Of those, the victim was reached."""
    not_reached: int = 0
    """Of those, the victim could not be reached."""
    overdue: int = 0
    """Not done and past the execute deadline (or flagged breached): never called back in time."""


@dataclass(frozen=True, kw_only=True)
class WarningCounts:
    """Warnings (预警劝阻) by how they ended, and the in-person dissuasions (见面劝阻) sent after them."""

    warnings: int = 0
    """WARNINGs not cancelled."""
    dissuaded: int = 0
    """Ended DISSUADED: the person was reached and stopped."""
    continuing: int = 0
    """Ended CONTINUING: reached, but going on."""
    unreachable: int = 0
    """Ended UNREACHABLE: not reached."""
    dissuasions: int = 0
    """DISSUASIONs the broker sent to the police (not cancelled)."""
    dissuasions_done: int = 0
    """Of those, answered EXECUTED by the police (the visit was made and recorded)."""

    def __add__(self, other: WarningCounts) -> WarningCounts:
        return WarningCounts(
            **{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__}
        )


@dataclass(frozen=True, kw_only=True)
class FeedbackCounts:
    """Fraud reports (FRAUD_REPORT) by the police's feedback (Anti-Telecom Fraud Law art. 26)."""

    due: int = 0
    """Reports owed feedback: every FRAUD_REPORT not cancelled, refused or failed."""
    in_time: int = 0
    """Feedback given by the execute deadline."""
    late: int = 0
    """Feedback given after the execute deadline."""
    overdue: int = 0
    """No feedback, and past the execute deadline (or flagged breached)."""

    def __add__(self, other: FeedbackCounts) -> FeedbackCounts:
        return FeedbackCounts(
            **{name: getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__}
        )


@dataclass(frozen=True, kw_only=True)
class SlaReport:
    """SLA compliance over a set of requests, as of ``generated_at``."""

    generated_at: datetime
    """The ``now`` open deadlines were judged against."""
    rows: tuple[SlaRow, ...]
    """Sorted by agency, then request type name."""
    requests: int
    """Requests counted."""
    met: int
    """Phase deadlines met, over every row."""
    breached: int
    """Phase deadlines breached, over every row."""
    open: int
    """Phase deadlines still open, over every row."""
    breaches_by_agency: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    """Breached phase deadlines per responsible agency; agencies without breaches are left out."""
    follow_ups: FollowUpCounts = field(default_factory=FollowUpCounts)
    """Victim follow-ups after returns."""
    warnings: WarningCounts = field(default_factory=WarningCounts)
    """Warning outcomes and the in-person dissuasions they set off."""
    feedback: FeedbackCounts = field(default_factory=FeedbackCounts)
    """The police's feedback on fraud reports."""


def _ns(stamp: Timestamp) -> int:
    return stamp.ToNanoseconds()


def _ns_of(when: datetime) -> int:
    return to_timestamp(when).ToNanoseconds()


def phase_outcome(deadline: envelope_pb2.PhaseDeadline, *, now: datetime) -> PhaseOutcome:
    """Met, breached or open, judged at ``now`` (timezone-aware)."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return _outcome(deadline, _ns_of(now))


def _outcome(deadline: envelope_pb2.PhaseDeadline, now_ns: int) -> PhaseOutcome:
    due = _ns(deadline.due_at)
    if deadline.breached:
        return PhaseOutcome.BREACHED
    if deadline.HasField("done_at"):
        return PhaseOutcome.MET if _ns(deadline.done_at) <= due else PhaseOutcome.BREACHED
    return PhaseOutcome.BREACHED if now_ns > due else PhaseOutcome.OPEN


def nearest_rank(sorted_values: Sequence[int], percent: int) -> int:
    """The ``percent``-th percentile (1..100) of ascending ``sorted_values``, nearest-rank definition."""
    if not sorted_values:
        raise ValueError("no values")
    if not 0 < percent <= 100:
        raise ValueError("percent must be in 1..100")
    rank = -(-percent * len(sorted_values) // 100)  # ceil without floating point
    return sorted_values[rank - 1]


def _events(status: lifecycle_pb2.RequestStatus) -> Iterable[tuple[lifecycle_pb2.LifecycleEvent, int]]:
    for recorded in sorted(status.events, key=lambda r: r.seq):
        try:
            event = lifecycle_pb2.LifecycleEvent.FromString(recorded.event.payload)
        except DecodeError:
            continue  # the broker stored it, so it decoded once; a report must not die on one entry
        yield event, _ns(recorded.recorded_at)


def _finish_ns(status: lifecycle_pb2.RequestStatus) -> int | None:
    """Nanoseconds from receipt to the outcome; None when there is no outcome yet."""
    end: int | None = None
    for phase in status.deadlines.phases:
        if phase.phase == common_pb2.PHASE_EXECUTE and phase.HasField("done_at"):
            end = _ns(phase.done_at)
    if end is None:
        end = next((at for event, at in _events(status) if event.state in OUTCOME_STATES), None)
    if end is None:
        return None
    # done_at is the agency's clock, submitted_at the broker's: skew must not make time run backwards.
    return max(0, end - _ns(status.submitted_at))


def _cancelled_at(status: lifecycle_pb2.RequestStatus) -> int | None:
    if status.state != common_pb2.REQUEST_STATE_CANCELLED:
        return None
    at = next(
        (at for event, at in _events(status) if event.state == common_pb2.REQUEST_STATE_CANCELLED),
        None,
    )
    return at if at is not None else _ns(status.updated_at)


def _follow_up(status: lifecycle_pb2.RequestStatus, now_ns: int) -> FollowUpCounts:
    """One FOLLOW_UP counted (cancelled ones are owed by nobody and count nowhere)."""
    if status.state == common_pb2.REQUEST_STATE_CANCELLED:
        return FollowUpCounts()
    if status.state in EXECUTED_STATES:
        outcome = status.result.follow_up
        return FollowUpCounts(
            due=1,
            done=1,
            reached=int(outcome == results_pb2.FOLLOW_UP_OUTCOME_REACHED),
            not_reached=int(outcome == results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED),
        )
    overdue = any(
        d.phase == common_pb2.PHASE_EXECUTE
        and d.HasField("due_at")
        and _outcome(d, now_ns) is PhaseOutcome.BREACHED
        for d in status.deadlines.phases
    )
    return FollowUpCounts(due=1, overdue=int(overdue))


def _execute_deadline(status: lifecycle_pb2.RequestStatus) -> envelope_pb2.PhaseDeadline | None:
    return next(
        (d for d in status.deadlines.phases if d.phase == common_pb2.PHASE_EXECUTE and d.HasField("due_at")),
        None,
    )


_WARNING_OUTCOME_FIELDS = {
    results_pb2.WARNING_OUTCOME_DISSUADED: "dissuaded",
    results_pb2.WARNING_OUTCOME_CONTINUING: "continuing",
    results_pb2.WARNING_OUTCOME_UNREACHABLE: "unreachable",
}


def _warning(status: lifecycle_pb2.RequestStatus) -> WarningCounts:
    """One WARNING or DISSUASION counted (cancelled ones count nowhere)."""
    if status.state == common_pb2.REQUEST_STATE_CANCELLED:
        return WarningCounts()
    executed = status.state in EXECUTED_STATES
    if status.type == common_pb2.REQUEST_TYPE_DISSUASION:
        return WarningCounts(dissuasions=1, dissuasions_done=int(executed))
    outcome = _WARNING_OUTCOME_FIELDS.get(status.result.warning) if executed else None
    return WarningCounts(warnings=1, **({outcome: 1} if outcome else {}))


def _feedback(status: lifecycle_pb2.RequestStatus, now_ns: int) -> FeedbackCounts:
    """One FRAUD_REPORT counted: owed feedback unless it ended without reaching the police."""
    if status.state in (
        common_pb2.REQUEST_STATE_CANCELLED,
        common_pb2.REQUEST_STATE_REJECTED,
        common_pb2.REQUEST_STATE_FAILED,
    ):
        return FeedbackCounts()
    deadline = _execute_deadline(status)
    judged = _outcome(deadline, now_ns) if deadline is not None else PhaseOutcome.OPEN
    if status.state in EXECUTED_STATES:
        late = deadline is not None and judged is PhaseOutcome.BREACHED
        return FeedbackCounts(due=1, in_time=int(not late), late=int(late))
    return FeedbackCounts(due=1, overdue=int(judged is PhaseOutcome.BREACHED))


def _sum_follow_ups(counts: Iterable[FollowUpCounts]) -> FollowUpCounts:
    totals = dict.fromkeys(("due", "done", "reached", "not_reached", "overdue"), 0)
    for c in counts:
        for name in totals:
            totals[name] += getattr(c, name)
    return FollowUpCounts(**totals)


@dataclass
class _Tally:
    requests: int = 0
    cancelled: int = 0
    phases: dict[_Phase, PhaseCounts] = field(default_factory=lambda: dict.fromkeys(PHASES, PhaseCounts()))
    finish_ns: list[int] = field(default_factory=list)

    def count(self, phase: _Phase, outcome: PhaseOutcome) -> None:
        self.phases[phase] = self.phases[phase] + PhaseCounts(**{outcome.value: 1})

    def row(self, agency: str, request_type: _RequestType) -> SlaRow:
        times = sorted(self.finish_ns)
        return SlaRow(
            agency=agency,
            request_type=request_type,
            requests=self.requests,
            phases=MappingProxyType(dict(self.phases)),
            finished=len(times),
            cancelled=self.cancelled,
            median_ms=nearest_rank(times, 50) / _NS_PER_MS if times else None,
            p95_ms=nearest_rank(times, 95) / _NS_PER_MS if times else None,
        )


def sla_report(statuses: Iterable[lifecycle_pb2.RequestStatus], *, now: datetime) -> SlaReport:
    """The report over ``statuses``, open deadlines judged at ``now`` (timezone-aware)."""
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    now_ns = _ns_of(now)
    tallies: dict[tuple[str, _RequestType], _Tally] = {}
    seen: set[str] = set()
    follow_ups: list[FollowUpCounts] = []
    warnings = WarningCounts()
    feedback = FeedbackCounts()
    for status in statuses:
        if status.id in seen:
            continue  # pages of a live listing can overlap; a request counts once
        seen.add(status.id)
        if status.type == common_pb2.REQUEST_TYPE_FOLLOW_UP:
            follow_ups.append(_follow_up(status, now_ns))
        elif status.type in (common_pb2.REQUEST_TYPE_WARNING, common_pb2.REQUEST_TYPE_DISSUASION):
            warnings += _warning(status)
        elif status.type == common_pb2.REQUEST_TYPE_FRAUD_REPORT:
            feedback += _feedback(status, now_ns)
        tally = tallies.setdefault((status.recipient, status.type), _Tally())
        tally.requests += 1
        stopped = _cancelled_at(status)
        if stopped is not None:
            tally.cancelled += 1
        for deadline in status.deadlines.phases:
            if deadline.phase not in PHASES or not deadline.HasField("due_at"):
                continue
            outcome = _outcome(deadline, now_ns if stopped is None else min(stopped, now_ns))
            if outcome is PhaseOutcome.OPEN and stopped is not None:
                continue  # cancelled before it was due: owed by nobody now
            tally.count(deadline.phase, outcome)
        finish = _finish_ns(status)
        if finish is not None:
            tally.finish_ns.append(finish)
    rows = tuple(
        tally.row(agency, request_type)
        for (agency, request_type), tally in sorted(
            tallies.items(), key=lambda item: (item[0][0], request_type_slug(item[0][1]))
        )
    )
    breaches: dict[str, int] = {}
    for row in rows:
        if row.breached:
            breaches[row.agency] = breaches.get(row.agency, 0) + row.breached
    return SlaReport(
        generated_at=now,
        rows=rows,
        requests=sum(row.requests for row in rows),
        met=sum(row.met for row in rows),
        breached=sum(row.breached for row in rows),
        open=sum(row.open for row in rows),
        breaches_by_agency=MappingProxyType(breaches),
        follow_ups=_sum_follow_ups(follow_ups),
        warnings=warnings,
        feedback=feedback,
    )


# -- output -----------------------------------------------------------------------------------


def report_to_json(report: SlaReport) -> dict[str, Any]:
    """A JSON-ready document; times in milliseconds, type and phase names in lower case."""
    return {
        "generated_at": report.generated_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "percentiles": "nearest-rank",
        "requests": report.requests,
        "totals": {"met": report.met, "breached": report.breached, "open": report.open},
        "breaches_by_agency": dict(report.breaches_by_agency),
        "follow_ups": {
            "due": report.follow_ups.due,
            "done": report.follow_ups.done,
            "reached": report.follow_ups.reached,
            "not_reached": report.follow_ups.not_reached,
            "overdue": report.follow_ups.overdue,
        },
        "warnings": {
            "warnings": report.warnings.warnings,
            "dissuaded": report.warnings.dissuaded,
            "continuing": report.warnings.continuing,
            "unreachable": report.warnings.unreachable,
            "dissuasions_sent": report.warnings.dissuasions,
            "dissuasions_done": report.warnings.dissuasions_done,
        },
        "fraud_report_feedback": {
            "due": report.feedback.due,
            "in_time": report.feedback.in_time,
            "late": report.feedback.late,
            "overdue": report.feedback.overdue,
        },
        "rows": [
            {
                "agency": row.agency,
                "type": request_type_slug(row.request_type),
                "requests": row.requests,
                "finished": row.finished,
                "cancelled": row.cancelled,
                "phases": {
                    phase_slug(phase): {"met": counts.met, "breached": counts.breached, "open": counts.open}
                    for phase, counts in row.phases.items()
                },
                "time_to_finish_ms": {"median": row.median_ms, "p95": row.p95_ms},
            }
            for row in report.rows
        ],
    }


def human_duration(ms: float | None) -> str:
    """``850ms``, ``12.3s``, ``4m05s``, ``3h12m``, ``2d04h``; ``-`` for None."""
    if ms is None:
        return "-"
    if ms < 1000:
        return f"{ms:.0f}ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def _width(text: str) -> int:
    # Wide (CJK) characters take two columns on a terminal.
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _aligned(header: Sequence[str], rows: Sequence[Sequence[str]], numeric: frozenset[int]) -> list[str]:
    widths = [max(_width(line[i]) for line in (header, *rows)) for i in range(len(header))]
    lines = []
    for line in (header, *rows):
        cells = []
        for i, cell in enumerate(line):
            pad = " " * (widths[i] - _width(cell))
            cells.append(pad + cell if i in numeric else cell + pad)
        lines.append("  ".join(cells).rstrip())
    return lines


def render_table(report: SlaReport) -> str:
    """An aligned table for people: one line per (agency, type), then totals and breaches per agency."""
    when = report.generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if not report.rows:
        return f"SLA report as of {when}: no requests\n"
    header = (
        "agency",
        "type",
        "requests",
        *(phase_slug(p) for p in PHASES),
        "finished",
        "cancelled",
        "median",
        "p95",
    )
    rows = [
        (
            row.agency,
            request_type_slug(row.request_type),
            str(row.requests),
            *(f"{c.met}/{c.breached}/{c.open}" for c in (row.phases[p] for p in PHASES)),
            str(row.finished),
            str(row.cancelled),
            human_duration(row.median_ms),
            human_duration(row.p95_ms),
        )
        for row in report.rows
    ]
    lines = [
        f"SLA report as of {when}",
        "phases: deadlines met/breached/open (a request cancelled before a phase was due owes it no more)",
        "time to finish: from receipt to the outcome; median and p95 by nearest rank",
        "",
        *_aligned(header, rows, numeric=frozenset(range(2, len(header)))),
        "",
        f"total: {report.requests} requests; deadlines met {report.met}, "
        f"breached {report.breached}, open {report.open}",
    ]
    if report.breaches_by_agency:
        ranked = sorted(report.breaches_by_agency.items(), key=lambda item: (-item[1], item[0]))
        lines.append("breaches by agency: " + ", ".join(f"{agency} {count}" for agency, count in ranked))
    else:
        lines.append("breaches by agency: none")
    if report.follow_ups.due:
        lines.append(follow_up_line(report.follow_ups))
    if report.warnings.warnings or report.warnings.dissuasions:
        lines.append(warning_line(report.warnings))
    if report.feedback.due:
        lines.append(feedback_line(report.feedback))
    return "\n".join(lines) + "\n"


def follow_up_line(counts: FollowUpCounts) -> str:
    """``victim follow-ups: N due, M done (reached R, not reached U), K overdue``."""
    return (
        f"victim follow-ups: {counts.due} due, {counts.done} done (reached {counts.reached},"
        f" not reached {counts.not_reached}), {counts.overdue} overdue"
    )


def warning_line(counts: WarningCounts) -> str:
    """``warnings: N (dissuaded D, continuing C, unreachable U); in-person dissuasions: S sent, E done``."""
    return (
        f"warnings: {counts.warnings} (dissuaded {counts.dissuaded}, continuing {counts.continuing},"
        f" unreachable {counts.unreachable}); in-person dissuasions: {counts.dissuasions} sent,"
        f" {counts.dissuasions_done} done"
    )


def feedback_line(counts: FeedbackCounts) -> str:
    """``fraud-report feedback: N due, I given in time, L late, O overdue``."""
    return (
        f"fraud-report feedback: {counts.due} due, {counts.in_time} given in time, {counts.late} late,"
        f" {counts.overdue} overdue"
    )
