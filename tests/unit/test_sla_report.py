"""The SLA report on hand-built request statuses: met, late, overdue, open, cancelled, percentiles,
victim follow-ups."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, results_pb2

from broker.client import (
    FeedbackCounts,
    FollowUpCounts,
    PhaseCounts,
    PhaseOutcome,
    WarningCounts,
    feedback_line,
    follow_up_line,
    human_duration,
    nearest_rank,
    phase_outcome,
    render_table,
    report_to_json,
    sla_report,
    warning_line,
)

T = common_pb2
S, M, H = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1)
T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
GREEN_BUDGET = (30 * S, 2 * M, 10 * M)
DELIVER, ACK, EXECUTE = T.PHASE_DELIVER, T.PHASE_ACKNOWLEDGE, T.PHASE_EXECUTE


def stamp(when: datetime) -> Timestamp:
    result = Timestamp()
    result.FromDatetime(when)
    return result


def recorded(state: T.RequestState.ValueType, at: datetime, seq: int) -> lifecycle_pb2.RecordedEvent:
    event = lifecycle_pb2.LifecycleEvent(event_id=str(uuid.uuid4()), state=state, at=stamp(at))
    return lifecycle_pb2.RecordedEvent(
        event=envelope_pb2.SignedMessage(payload=event.SerializeToString()), recorded_at=stamp(at), seq=seq
    )


def status(
    *,
    recipient: str = "bank-icbc",
    request_type: T.RequestType.ValueType = T.REQUEST_TYPE_STOP_PAYMENT,
    submitted: datetime = T0,
    budget: tuple[timedelta, timedelta, timedelta] = GREEN_BUDGET,
    done: tuple[timedelta | None, timedelta | None, timedelta | None] = (None, None, None),
    breached_flag: tuple[bool, bool, bool] = (False, False, False),
    state: T.RequestState.ValueType = T.REQUEST_STATE_SUBMITTED,
    events: tuple[tuple[T.RequestState.ValueType, timedelta], ...] = (),
) -> lifecycle_pb2.RequestStatus:
    result = lifecycle_pb2.RequestStatus(
        id=str(uuid.uuid4()),
        type=request_type,
        sender="police-310115",
        recipient=recipient,
        state=state,
        submitted_at=stamp(submitted),
        updated_at=stamp(submitted),
    )
    for phase, allowed, finished, flag in zip(
        (DELIVER, ACK, EXECUTE), budget, done, breached_flag, strict=True
    ):
        deadline = result.deadlines.phases.add(phase=phase, due_at=stamp(submitted + allowed), breached=flag)
        if finished is not None:
            deadline.done_at.CopyFrom(stamp(submitted + finished))
    result.events.append(recorded(T.REQUEST_STATE_SUBMITTED, submitted, 1))
    for seq, (event_state, after) in enumerate(events, start=2):
        result.events.append(recorded(event_state, submitted + after, seq))
    return result


def executed(
    after: timedelta,
    *,
    recipient: str = "bank-icbc",
    request_type: T.RequestType.ValueType = T.REQUEST_TYPE_STOP_PAYMENT,
) -> lifecycle_pb2.RequestStatus:
    """Delivered at 10 s and acknowledged at 1 min (both in budget), executed ``after`` receipt."""
    return status(
        recipient=recipient,
        request_type=request_type,
        done=(10 * S, 1 * M, after),
        state=T.REQUEST_STATE_EXECUTED,
    )


# -- one phase --------------------------------------------------------------------------------


def deadline(
    *, due: timedelta, done: timedelta | None = None, flag: bool = False
) -> envelope_pb2.PhaseDeadline:
    result = envelope_pb2.PhaseDeadline(phase=DELIVER, due_at=stamp(T0 + due), breached=flag)
    if done is not None:
        result.done_at.CopyFrom(stamp(T0 + done))
    return result


@pytest.mark.parametrize(
    ("phase", "now", "expected"),
    [
        pytest.param(deadline(due=30 * S, done=10 * S), T0 + H, PhaseOutcome.MET, id="done-early"),
        pytest.param(deadline(due=30 * S, done=30 * S), T0 + H, PhaseOutcome.MET, id="done-exactly-on-time"),
        pytest.param(deadline(due=30 * S, done=31 * S), T0 + H, PhaseOutcome.BREACHED, id="done-late"),
        pytest.param(deadline(due=30 * S), T0 + 31 * S, PhaseOutcome.BREACHED, id="overdue"),
        pytest.param(deadline(due=30 * S), T0 + 30 * S, PhaseOutcome.OPEN, id="due-now"),
        pytest.param(deadline(due=30 * S), T0 + 10 * S, PhaseOutcome.OPEN, id="open"),
        pytest.param(deadline(due=30 * S, done=10 * S, flag=True), T0, PhaseOutcome.BREACHED, id="flagged"),
        pytest.param(deadline(due=30 * S, flag=True), T0, PhaseOutcome.BREACHED, id="flagged-open"),
    ],
)
def test_phase_outcome(phase: envelope_pb2.PhaseDeadline, now: datetime, expected: PhaseOutcome) -> None:
    assert phase_outcome(phase, now=now) is expected


def test_phase_outcome_keeps_nanoseconds() -> None:
    phase = envelope_pb2.PhaseDeadline(
        due_at=Timestamp(seconds=100, nanos=500), done_at=Timestamp(seconds=100, nanos=501)
    )
    assert phase_outcome(phase, now=T0) is PhaseOutcome.BREACHED


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        sla_report([], now=datetime(2026, 3, 1))


# -- percentiles ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "percent", "expected"),
    [
        ([7], 50, 7),
        ([7], 95, 7),
        ([1, 2], 50, 1),  # the lower middle value
        ([1, 2], 95, 2),
        ([1, 2, 3], 50, 2),
        (list(range(1, 21)), 95, 19),  # rank ceil(0.95 * 20) = 19
        (list(range(1, 21)), 50, 10),
        (list(range(1, 101)), 95, 95),
        (list(range(1, 101)), 100, 100),
        (list(range(1, 11)), 95, 10),  # rank ceil(9.5) = 10
        (list(range(1, 11)), 1, 1),
    ],
)
def test_nearest_rank(values: list[int], percent: int, expected: int) -> None:
    assert nearest_rank(values, percent) == expected


def test_nearest_rank_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="no values"):
        nearest_rank([], 50)
    with pytest.raises(ValueError, match="percent"):
        nearest_rank([1], 0)


# -- the report -------------------------------------------------------------------------------


def test_empty_report() -> None:
    report = sla_report([], now=T0)
    assert (report.rows, report.requests, report.met, report.breached, report.open) == ((), 0, 0, 0, 0)
    assert "no requests" in render_table(report)
    assert report_to_json(report)["rows"] == []


def test_met_breached_late_breached_open_and_open() -> None:
    now = T0 + 30 * M
    statuses = [
        executed(5 * M),  # every phase met
        # Late on every phase: delivered at 45 s, acknowledged at 3 min, executed at 20 min.
        status(done=(45 * S, 3 * M, 20 * M), state=T.REQUEST_STATE_EXECUTED),
        # Delivered in time, then silence: acknowledge and execute are overdue at `now`.
        status(done=(10 * S, None, None), state=T.REQUEST_STATE_DELIVERED),
        # Submitted 1 minute before `now`: deliver overdue, acknowledge and execute still open.
        status(submitted=now - M, state=T.REQUEST_STATE_SUBMITTED),
    ]
    report = sla_report(statuses, now=now)
    [row] = report.rows
    assert (row.agency, row.request_type, row.requests) == ("bank-icbc", T.REQUEST_TYPE_STOP_PAYMENT, 4)
    assert row.phases[DELIVER] == PhaseCounts(met=2, breached=2, open=0)
    assert row.phases[ACK] == PhaseCounts(met=1, breached=2, open=1)
    assert row.phases[EXECUTE] == PhaseCounts(met=1, breached=2, open=1)
    assert (row.finished, row.cancelled) == (2, 0)
    assert (row.median_ms, row.p95_ms) == (5 * 60_000, 20 * 60_000)
    assert (report.met, report.breached, report.open) == (4, 6, 2)
    assert dict(report.breaches_by_agency) == {"bank-icbc": 6}


def test_breached_flag_counts_even_when_done_in_time() -> None:
    flagged = status(done=(10 * S, 1 * M, 5 * M), breached_flag=(False, False, True))
    [row] = sla_report([flagged], now=T0 + H).rows
    assert row.phases[EXECUTE] == PhaseCounts(breached=1)
    assert row.phases[DELIVER] == PhaseCounts(met=1)


def test_rows_per_agency_and_type_and_breaches_per_agency() -> None:
    now = T0 + H
    statuses = [
        executed(2 * M),
        executed(4 * M, request_type=T.REQUEST_TYPE_FREEZE),
        status(recipient="bank-ccb"),  # nothing done: 3 breaches
        status(recipient="carrier-cmcc", request_type=T.REQUEST_TYPE_NUMBER_BLOCK, done=(40 * S, None, None)),
        executed(1 * M, recipient="carrier-cmcc", request_type=T.REQUEST_TYPE_NUMBER_BLOCK),
    ]
    report = sla_report(statuses, now=now)
    assert [(r.agency, T.RequestType.Name(r.request_type)) for r in report.rows] == [
        ("bank-ccb", "REQUEST_TYPE_STOP_PAYMENT"),
        ("bank-icbc", "REQUEST_TYPE_FREEZE"),
        ("bank-icbc", "REQUEST_TYPE_STOP_PAYMENT"),
        ("carrier-cmcc", "REQUEST_TYPE_NUMBER_BLOCK"),
    ]
    assert dict(report.breaches_by_agency) == {"bank-ccb": 3, "carrier-cmcc": 3}
    assert report.requests == 5
    assert (report.met, report.breached, report.open) == (9, 6, 0)


def test_percentiles_on_known_data() -> None:
    # Twenty requests finishing after 1..20 minutes, in shuffled order.
    minutes = [7, 3, 20, 1, 15, 9, 12, 2, 18, 5, 11, 4, 19, 6, 14, 8, 17, 10, 16, 13]
    statuses = [status(budget=(H, H, H), done=(S, S, m * M), state=T.REQUEST_STATE_EXECUTED) for m in minutes]
    [row] = sla_report(statuses, now=T0 + H).rows
    assert row.finished == 20
    assert row.median_ms == 10 * 60_000  # rank 10 of 20
    assert row.p95_ms == 19 * 60_000  # rank 19 of 20
    assert row.phases[EXECUTE] == PhaseCounts(met=20)


def test_time_to_finish_falls_back_to_the_outcome_event() -> None:
    rejected = status(
        done=(10 * S, 1 * M, None),
        state=T.REQUEST_STATE_REJECTED,
        events=((T.REQUEST_STATE_DELIVERED, 10 * S), (T.REQUEST_STATE_REJECTED, 3 * M)),
    )
    [row] = sla_report([rejected], now=T0 + 5 * M).rows
    assert (row.finished, row.median_ms, row.p95_ms) == (1, 180_000, 180_000)


def test_clock_skew_never_gives_a_negative_time() -> None:
    skewed = status(done=(-1 * S, -1 * S, -1 * S), state=T.REQUEST_STATE_EXECUTED)
    [row] = sla_report([skewed], now=T0 + H).rows
    assert row.median_ms == 0


def test_cancelled_requests_stop_the_clock() -> None:
    early = status(state=T.REQUEST_STATE_CANCELLED, events=((T.REQUEST_STATE_CANCELLED, 10 * S),))
    late = status(state=T.REQUEST_STATE_CANCELLED, events=((T.REQUEST_STATE_CANCELLED, 45 * S),))
    [row] = sla_report([early, late], now=T0 + H).rows
    assert (row.requests, row.cancelled, row.finished) == (2, 2, 0)
    # Only `late` had let deliver run past due before it was cancelled; nothing else is owed.
    assert row.phases[DELIVER] == PhaseCounts(breached=1)
    assert row.phases[ACK] == PhaseCounts()
    assert row.phases[EXECUTE] == PhaseCounts()


def test_a_request_listed_twice_counts_once() -> None:
    one = executed(M)
    assert sla_report([one, one], now=T0 + H).requests == 1


# -- output -----------------------------------------------------------------------------------


def test_json_document() -> None:
    statuses = [executed(5 * M), status(recipient="carrier-cmcc", request_type=T.REQUEST_TYPE_NUMBER_BLOCK)]
    document = report_to_json(sla_report(statuses, now=T0 + H))
    json.dumps(document)  # serializable as it is
    assert document["generated_at"] == "2026-03-01T10:30:00Z"
    assert document["totals"] == {"met": 3, "breached": 3, "open": 0}
    assert document["breaches_by_agency"] == {"carrier-cmcc": 3}
    bank, carrier = document["rows"]
    assert bank == {
        "agency": "bank-icbc",
        "type": "stop_payment",
        "requests": 1,
        "finished": 1,
        "cancelled": 0,
        "phases": {
            "deliver": {"met": 1, "breached": 0, "open": 0},
            "acknowledge": {"met": 1, "breached": 0, "open": 0},
            "execute": {"met": 1, "breached": 0, "open": 0},
        },
        "time_to_finish_ms": {"median": 300_000.0, "p95": 300_000.0},
    }
    assert carrier["time_to_finish_ms"] == {"median": None, "p95": None}


def test_table_is_aligned_and_complete() -> None:
    statuses = [
        executed(5 * M),
        executed(20 * M),
        status(recipient="carrier-cmcc", request_type=T.REQUEST_TYPE_NUMBER_BLOCK),
    ]
    text = render_table(sla_report(statuses, now=T0 + H))
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("agency"))
    assert header.split() == [
        "agency",
        "type",
        "requests",
        "deliver",
        "acknowledge",
        "execute",
        "finished",
        "cancelled",
        "median",
        "p95",
    ]
    bank = next(line for line in lines if line.startswith("bank-icbc"))
    carrier = next(line for line in lines if line.startswith("carrier-cmcc"))
    assert bank.split() == [
        "bank-icbc",
        "stop_payment",
        "2",
        "2/0/0",
        "2/0/0",
        "1/1/0",
        "2",
        "0",
        "5m00s",
        "20m00s",
    ]
    assert carrier.split() == [
        "carrier-cmcc",
        "number_block",
        "1",
        "0/1/0",
        "0/1/0",
        "0/1/0",
        "0",
        "0",
        "-",
        "-",
    ]
    # Text columns are left-aligned, numbers right-aligned: cells line up under their headers.
    assert bank.index("stop_payment") == header.index("type") == carrier.index("number_block")
    end = header.index("deliver") + len("deliver")
    assert bank.index("2/0/0") + len("2/0/0") == end == carrier.index("0/1/0") + len("0/1/0")
    assert "total: 3 requests; deadlines met 5, breached 4, open 0" in text
    assert "breaches by agency: carrier-cmcc 3, bank-icbc 1" in text


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (None, "-"),
        (0, "0ms"),
        (850, "850ms"),
        (12_345, "12.3s"),
        (245_000, "4m05s"),
        (3 * 3_600_000 + 12 * 60_000, "3h12m"),
        (2 * 86_400_000 + 4 * 3_600_000, "2d04h"),
    ],
)
def test_human_duration(ms: float | None, text: str) -> None:
    assert human_duration(ms) == text


# -- victim follow-ups ------------------------------------------------------------------------


def follow_up(
    state: T.RequestState.ValueType,
    *,
    outcome: results_pb2.FollowUpOutcome.ValueType = results_pb2.FOLLOW_UP_OUTCOME_UNSPECIFIED,
    done: tuple[timedelta | None, timedelta | None, timedelta | None] = (None, None, None),
    breached_flag: tuple[bool, bool, bool] = (False, False, False),
) -> lifecycle_pb2.RequestStatus:
    """A FOLLOW_UP owed by the police within 3 days (execute)."""
    result = status(
        recipient="police-310115",
        request_type=T.REQUEST_TYPE_FOLLOW_UP,
        budget=(1 * H, 8 * H, 72 * H),
        done=done,
        breached_flag=breached_flag,
        state=state,
    )
    result.result.follow_up = outcome
    return result


def test_follow_ups_are_counted_due_done_reached_not_reached_and_overdue() -> None:
    statuses = [
        follow_up(T.REQUEST_STATE_EXECUTED, outcome=results_pb2.FOLLOW_UP_OUTCOME_REACHED, done=(S, S, H)),
        follow_up(T.REQUEST_STATE_EXECUTED, outcome=results_pb2.FOLLOW_UP_OUTCOME_REACHED, done=(S, S, H)),
        # Done late still counts as done (the SLA rows show the breach).
        follow_up(
            T.REQUEST_STATE_EXECUTED, outcome=results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED, done=(S, S, 80 * H)
        ),
        follow_up(T.REQUEST_STATE_DELIVERED, done=(S, None, None)),  # past its 3 days, never called back
        follow_up(T.REQUEST_STATE_ACKNOWLEDGED, breached_flag=(False, False, True)),  # flagged by the broker
        follow_up(T.REQUEST_STATE_CANCELLED),  # owed by nobody
        executed(10 * S),  # not a follow-up
    ]
    open_one = follow_up(T.REQUEST_STATE_SUBMITTED)
    open_one.submitted_at.CopyFrom(stamp(T0 + 60 * H))
    open_one.deadlines.phases[2].due_at.CopyFrom(stamp(T0 + 132 * H))  # due after now: not overdue
    statuses.append(open_one)
    report = sla_report([*statuses, statuses[0]], now=T0 + 100 * H)  # listed twice: counted once
    assert report.follow_ups == FollowUpCounts(due=6, done=3, reached=2, not_reached=1, overdue=2)
    assert report_to_json(report)["follow_ups"] == {
        "due": 6,
        "done": 3,
        "reached": 2,
        "not_reached": 1,
        "overdue": 2,
    }
    assert "victim follow-ups: 6 due, 3 done (reached 2, not reached 1), 2 overdue" in render_table(report)
    assert follow_up_line(report.follow_ups) in render_table(report)


def test_a_report_without_follow_ups_has_no_follow_up_line() -> None:
    report = sla_report([executed(10 * S)], now=T0 + H)
    assert report.follow_ups == FollowUpCounts()
    assert report_to_json(report)["follow_ups"]["due"] == 0
    assert "victim follow-ups" not in render_table(report)


# -- warning outcomes and fraud-report feedback -----------------------------------------------------


def warning_or_report(
    request_type: T.RequestType.ValueType,
    state: T.RequestState.ValueType,
    *,
    warning: results_pb2.WarningOutcome.ValueType = results_pb2.WARNING_OUTCOME_UNSPECIFIED,
    done: tuple[timedelta | None, timedelta | None, timedelta | None] = (None, None, None),
) -> lifecycle_pb2.RequestStatus:
    """A WARNING, DISSUASION or FRAUD_REPORT due within an hour (execute)."""
    result = status(
        recipient="police-440305",
        request_type=request_type,
        budget=(S, 2 * S, 1 * H),
        done=done,
        state=state,
    )
    result.result.warning = warning
    return result


def test_warning_outcomes_dissuasions_and_feedback_are_counted() -> None:
    W, FR, D = T.REQUEST_TYPE_WARNING, T.REQUEST_TYPE_FRAUD_REPORT, T.REQUEST_TYPE_DISSUASION
    EXE = T.REQUEST_STATE_EXECUTED
    statuses = [
        warning_or_report(W, EXE, warning=results_pb2.WARNING_OUTCOME_DISSUADED, done=(S, S, S)),
        warning_or_report(W, EXE, warning=results_pb2.WARNING_OUTCOME_UNREACHABLE, done=(S, S, S)),
        warning_or_report(W, EXE, warning=results_pb2.WARNING_OUTCOME_CONTINUING, done=(S, S, S)),
        warning_or_report(W, T.REQUEST_STATE_SUBMITTED),  # no outcome yet
        warning_or_report(W, T.REQUEST_STATE_CANCELLED),  # counts nowhere
        warning_or_report(D, EXE, warning=results_pb2.WARNING_OUTCOME_DISSUADED, done=(S, S, S)),
        warning_or_report(D, T.REQUEST_STATE_ACKNOWLEDGED, done=(S, S, None)),
        warning_or_report(FR, EXE, done=(S, S, 30 * M)),  # feedback in time
        warning_or_report(FR, EXE, done=(S, S, 2 * H)),  # feedback late
        warning_or_report(FR, T.REQUEST_STATE_ACKNOWLEDGED, done=(S, S, None)),  # overdue at now
        warning_or_report(FR, T.REQUEST_STATE_REJECTED, done=(S, S, S)),  # never reached the police
    ]
    report = sla_report(statuses, now=T0 + 10 * H)
    assert report.warnings == WarningCounts(
        warnings=4, dissuaded=1, continuing=1, unreachable=1, dissuasions=2, dissuasions_done=1
    )
    assert report.feedback == FeedbackCounts(due=3, in_time=1, late=1, overdue=1)
    document = report_to_json(report)
    assert document["warnings"]["dissuasions_sent"] == 2
    assert document["fraud_report_feedback"] == {"due": 3, "in_time": 1, "late": 1, "overdue": 1}
    table = render_table(report)
    assert warning_line(report.warnings) in table
    assert (
        "warnings: 4 (dissuaded 1, continuing 1, unreachable 1); in-person dissuasions: 2 sent, 1 done"
        in table
    )
    assert feedback_line(report.feedback) in table
    assert "fraud-report feedback: 3 due, 1 given in time, 1 late, 1 overdue" in table
