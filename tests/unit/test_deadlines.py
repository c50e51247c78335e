"""The default green-channel SLA table (the shipped CN policy), hold validity, computed deadlines,
working days, scaling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import TypeAlias

import pytest
from greenchannel.v1 import common_pb2, requests_pb2

from broker.hub import DeadlineTable, PhaseBudget, WorkingCalendar, WorkingDays
from tests._sla import DEFAULT_DEADLINES

RequestType: TypeAlias = common_pb2.RequestType.ValueType
Priority: TypeAlias = common_pb2.Priority.ValueType
T = common_pb2
GREEN, STANDARD = T.PRIORITY_GREEN, T.PRIORITY_STANDARD
S, M, H, D = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
RECEIVED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

Budget: TypeAlias = timedelta | WorkingDays
WD3 = WorkingDays(count=3)
URGENT = (30 * S, 2 * M, 10 * M)
TABLE: list[tuple[RequestType, Priority, tuple[Budget, Budget, Budget]]] = [
    (T.REQUEST_TYPE_STOP_PAYMENT, GREEN, URGENT),
    (T.REQUEST_TYPE_FREEZE, GREEN, URGENT),
    (T.REQUEST_TYPE_RELEASE, GREEN, URGENT),
    (T.REQUEST_TYPE_EXTEND, GREEN, URGENT),
    (T.REQUEST_TYPE_NUMBER_BLOCK, GREEN, URGENT),
    (T.REQUEST_TYPE_ACCOUNT_BLOCK, GREEN, URGENT),
    (T.REQUEST_TYPE_WARNING, GREEN, URGENT),
    (T.REQUEST_TYPE_DATA_REQUEST, GREEN, (30 * S, 2 * M, 8 * H)),
    (T.REQUEST_TYPE_ASSISTANCE, GREEN, (30 * S, 2 * M, 24 * H)),
    (T.REQUEST_TYPE_FRAUD_REPORT, GREEN, (30 * S, 2 * M, 1 * H)),
    # 资金返还: 3 working days of the policy's calendar (the 2016 rules), at both priorities.
    (T.REQUEST_TYPE_RETURN_FUNDS, GREEN, (30 * S, 2 * M, WD3)),
    (T.REQUEST_TYPE_RETURN_FUNDS, STANDARD, (1 * H, 8 * H, WD3)),
    (T.REQUEST_TYPE_APPEAL, GREEN, (30 * S, 2 * M, 48 * H)),
    (T.REQUEST_TYPE_APPEAL, STANDARD, (1 * H, 8 * H, 7 * D)),
    (T.REQUEST_TYPE_FOLLOW_UP, GREEN, (30 * S, 2 * M, WD3)),
    (T.REQUEST_TYPE_FOLLOW_UP, STANDARD, (1 * H, 8 * H, WD3)),
    (T.REQUEST_TYPE_LINKAGE_NOTICE, GREEN, (30 * S, 2 * M, 1 * H)),
    (T.REQUEST_TYPE_DISSUASION, GREEN, (30 * S, 2 * M, 2 * H)),
    (T.REQUEST_TYPE_DISSUASION, STANDARD, (1 * H, 8 * H, 24 * H)),
    *(
        (request_type, STANDARD, (1 * H, 8 * H, 3 * D))
        for request_type in common_pb2.RequestType.values()
        if request_type
        not in (
            T.REQUEST_TYPE_UNSPECIFIED,
            T.REQUEST_TYPE_APPEAL,
            T.REQUEST_TYPE_RETURN_FUNDS,
            T.REQUEST_TYPE_FOLLOW_UP,
            T.REQUEST_TYPE_DISSUASION,
        )
    ),
]


@pytest.mark.parametrize(
    ("request_type", "priority", "expected"),
    [pytest.param(t, p, e, id=f"{T.RequestType.Name(t)}-{T.Priority.Name(p)}") for t, p, e in TABLE],
)
def test_default_budgets(
    request_type: RequestType, priority: Priority, expected: tuple[Budget, Budget, Budget]
) -> None:
    budget = DEFAULT_DEADLINES.budgets(request_type, priority)
    assert (budget.deliver, budget.acknowledge, budget.execute) == expected


def test_table_covers_every_type_and_priority() -> None:
    assert len(TABLE) == 2 * (len(common_pb2.RequestType.values()) - 1)


@pytest.mark.parametrize(
    ("request_type", "priority"),
    [
        (T.REQUEST_TYPE_UNSPECIFIED, GREEN),
        (T.REQUEST_TYPE_FREEZE, T.PRIORITY_UNSPECIFIED),
        (common_pb2.RequestType.ValueType(99), GREEN),
    ],
)
def test_uncovered_type_or_priority(request_type: RequestType, priority: Priority) -> None:
    with pytest.raises(ValueError, match="no SLA"):
        DEFAULT_DEADLINES.budgets(request_type, priority)


@pytest.mark.parametrize(
    ("request_type", "expected"),
    [
        (T.REQUEST_TYPE_STOP_PAYMENT, 48 * H),
        (T.REQUEST_TYPE_FREEZE, 183 * D),
        (T.REQUEST_TYPE_EXTEND, 24 * H),
        (T.REQUEST_TYPE_RELEASE, None),
        (T.REQUEST_TYPE_NUMBER_BLOCK, None),
        (T.REQUEST_TYPE_ACCOUNT_BLOCK, None),
        (T.REQUEST_TYPE_DATA_REQUEST, None),
        (T.REQUEST_TYPE_ASSISTANCE, None),
        (T.REQUEST_TYPE_WARNING, None),
        (T.REQUEST_TYPE_FRAUD_REPORT, None),
        (T.REQUEST_TYPE_UNSPECIFIED, None),
    ],
)
def test_hold_validity(request_type: RequestType, expected: timedelta | None) -> None:
    assert DEFAULT_DEADLINES.hold_validity(request_type) == expected


def test_stop_payment_deadlines() -> None:
    deadlines = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_STOP_PAYMENT, GREEN, RECEIVED)
    assert [(p.phase, p.due_at.ToDatetime(tzinfo=UTC)) for p in deadlines.phases] == [
        (T.PHASE_DELIVER, RECEIVED + 30 * S),
        (T.PHASE_ACKNOWLEDGE, RECEIVED + 2 * M),
        (T.PHASE_EXECUTE, RECEIVED + 10 * M),
    ]
    assert all(not p.HasField("done_at") and not p.breached for p in deadlines.phases)
    assert deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) == RECEIVED + 48 * H


def test_freeze_hold_is_six_months() -> None:
    deadlines = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_FREEZE, STANDARD, RECEIVED)
    assert deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) == datetime(2026, 8, 31, 9, 30, tzinfo=UTC)
    assert deadlines.phases[2].due_at.ToDatetime(tzinfo=UTC) == RECEIVED + 3 * D


@pytest.mark.parametrize(
    "request_type",
    [
        T.REQUEST_TYPE_EXTEND,  # moves the target's hold; the hub computes that expiry
        T.REQUEST_TYPE_RELEASE,
        T.REQUEST_TYPE_DATA_REQUEST,
        T.REQUEST_TYPE_FRAUD_REPORT,
    ],
)
def test_no_hold_expiry_for_other_types(request_type: RequestType) -> None:
    deadlines = DEFAULT_DEADLINES.deadlines(request_type, GREEN, RECEIVED)
    assert not deadlines.HasField("hold_expires_at")
    assert len(deadlines.phases) == 3


def test_data_request_urgent_is_eight_hours() -> None:
    deadlines = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_DATA_REQUEST, GREEN, RECEIVED)
    assert deadlines.phases[2].due_at.ToDatetime(tzinfo=UTC) == RECEIVED + 8 * H


def test_received_at_with_offset_is_converted() -> None:
    beijing = RECEIVED.astimezone(timezone(timedelta(hours=8)))
    a = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_FREEZE, GREEN, beijing)
    b = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_FREEZE, GREEN, RECEIVED)
    assert a == b


def test_naive_received_at_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_FREEZE, GREEN, datetime(2026, 3, 1, 9, 30))


def test_sub_second_deadlines_keep_their_precision() -> None:
    fast = DEFAULT_DEADLINES.scaled(0.001)
    deadlines = fast.deadlines(T.REQUEST_TYPE_STOP_PAYMENT, GREEN, RECEIVED)
    assert deadlines.phases[0].due_at.ToDatetime(tzinfo=UTC) == RECEIVED + timedelta(milliseconds=30)


# -- scaling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.001, 0.5, 2.0])
def test_scaled_multiplies_every_duration(factor: float) -> None:
    scaled = DEFAULT_DEADLINES.scaled(factor)
    for request_type, priority, phases in TABLE:
        # A scaled table has no calendar: working days become a day each, scaled.
        deliver, acknowledge, execute = (
            (phase.nominal if isinstance(phase, WorkingDays) else phase) * factor for phase in phases
        )
        budget = scaled.budgets(request_type, priority)
        assert budget == PhaseBudget(deliver=deliver, acknowledge=acknowledge, execute=execute)
    for request_type in common_pb2.RequestType.values():
        original = DEFAULT_DEADLINES.hold_validity(request_type)
        assert scaled.hold_validity(request_type) == (None if original is None else original * factor)


def test_scaled_leaves_the_original_alone() -> None:
    DEFAULT_DEADLINES.scaled(0.01)
    assert DEFAULT_DEADLINES.budgets(T.REQUEST_TYPE_FREEZE, GREEN).deliver == 30 * S


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan")])
def test_scaled_needs_a_positive_factor(factor: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        DEFAULT_DEADLINES.scaled(factor)


# -- building tables -------------------------------------------------------------------------------


def test_phase_budget_checks() -> None:
    with pytest.raises(ValueError, match="positive"):
        PhaseBudget(deliver=timedelta(0), acknowledge=M, execute=H)
    with pytest.raises(ValueError, match="shrink"):
        PhaseBudget(deliver=H, acknowledge=M, execute=D)


def test_custom_table() -> None:
    budget = PhaseBudget(deliver=S, acknowledge=2 * S, execute=3 * S)
    table = DeadlineTable(
        budgets={(T.REQUEST_TYPE_STOP_PAYMENT, GREEN): budget},
        holds={T.REQUEST_TYPE_STOP_PAYMENT: 5 * S},
    )
    assert table.budgets(T.REQUEST_TYPE_STOP_PAYMENT, GREEN) is budget
    deadlines = table.deadlines(T.REQUEST_TYPE_STOP_PAYMENT, GREEN, RECEIVED)
    assert deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) == RECEIVED + 5 * S
    with pytest.raises(ValueError, match="no SLA"):
        table.budgets(T.REQUEST_TYPE_FREEZE, GREEN)
    with pytest.raises(ValueError, match="positive"):
        DeadlineTable(budgets={}, holds={T.REQUEST_TYPE_FREEZE: timedelta(0)})


# -- working days ------------------------------------------------------------------------------------

BEIJING = timezone(timedelta(hours=8))


def execute_due(received: datetime, request_type: RequestType = T.REQUEST_TYPE_RETURN_FUNDS) -> datetime:
    """When the shipped CN table makes a GREEN request of ``request_type`` due, in Beijing time."""
    deadlines = DEFAULT_DEADLINES.deadlines(request_type, GREEN, received)
    assert [d.phase for d in deadlines.phases][-1] == T.PHASE_EXECUTE
    return deadlines.phases[-1].due_at.ToDatetime(tzinfo=UTC).astimezone(BEIJING)


def test_a_return_received_on_a_friday_is_due_the_wednesday_after() -> None:
    friday = datetime(2026, 3, 6, 10, 0, tzinfo=BEIJING)
    assert execute_due(friday) == datetime(2026, 3, 11, 10, 0, tzinfo=BEIJING)
    # Only the execute phase is in working days; deliver and acknowledge keep their seconds.
    phases = DEFAULT_DEADLINES.deadlines(T.REQUEST_TYPE_RETURN_FUNDS, GREEN, friday).phases
    assert phases[0].due_at.ToDatetime(tzinfo=UTC) == friday + 30 * S
    assert phases[1].due_at.ToDatetime(tzinfo=UTC) == friday + 2 * M


def test_received_on_a_weekend_counts_from_the_next_working_day() -> None:
    # Saturday: Monday, Tuesday and Wednesday are the three working days; due at the end of Wednesday.
    assert execute_due(datetime(2026, 3, 7, 10, 0, tzinfo=BEIJING)) == datetime(
        2026, 3, 12, 0, 0, tzinfo=BEIJING
    )
    # Friday 20:00 in UTC is already Saturday in Beijing, where the calendar keeps its days.
    friday_evening_utc = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)
    assert execute_due(friday_evening_utc) == datetime(2026, 3, 12, 0, 0, tzinfo=BEIJING)


def test_a_holiday_week_does_not_count_and_its_make_up_saturday_does() -> None:
    # 2026: 1-7 October off (国庆节), Saturday 10 October worked (调休).
    before = datetime(2026, 9, 30, 15, 0, tzinfo=BEIJING)
    assert execute_due(before) == datetime(2026, 10, 10, 15, 0, tzinfo=BEIJING)
    during = datetime(2026, 10, 2, 15, 0, tzinfo=BEIJING)
    assert execute_due(during) == datetime(2026, 10, 11, 0, 0, tzinfo=BEIJING)


def test_a_make_up_saturday_is_a_working_day() -> None:
    # 2026: Saturday 14 February worked, 15-23 February off (春节).
    calendar = DEFAULT_DEADLINES.calendar
    assert calendar.is_working_day(datetime(2026, 2, 14).date())
    assert not calendar.is_working_day(datetime(2026, 2, 16).date())
    friday = datetime(2026, 2, 13, 10, 0, tzinfo=BEIJING)
    assert calendar.add_working_days(friday, 1) == datetime(2026, 2, 14, 10, 0, tzinfo=BEIJING)
    assert execute_due(friday) == datetime(2026, 2, 25, 10, 0, tzinfo=BEIJING)
    on_the_saturday = datetime(2026, 2, 14, 10, 0, tzinfo=BEIJING)
    assert execute_due(on_the_saturday) == datetime(2026, 2, 26, 10, 0, tzinfo=BEIJING)


def test_a_fixed_duration_before_working_days_never_comes_after_them() -> None:
    # Every day a working day; Berlin moves its clocks forward on 29 March 2026, so one working day
    # from Saturday 10:00 is 23 hours: the execute deadline is held at the acknowledge deadline.
    calendar = WorkingCalendar(time_zone="Europe/Berlin", weekend=frozenset())
    table = DeadlineTable(
        budgets={
            (T.REQUEST_TYPE_RETURN_FUNDS, GREEN): PhaseBudget(
                deliver=H, acknowledge=D, execute=WorkingDays(count=1)
            )
        },
        holds={},
        calendar=calendar,
    )
    received = datetime(2026, 3, 28, 9, 0, tzinfo=UTC)
    assert calendar.add_working_days(received, 1) == received + 23 * H
    due = [
        p.due_at.ToDatetime(tzinfo=UTC)
        for p in table.deadlines(T.REQUEST_TYPE_RETURN_FUNDS, GREEN, received).phases
    ]
    assert due == [received + H, received + D, received + D]
    assert table.scaled(0.5).budgets(T.REQUEST_TYPE_RETURN_FUNDS, GREEN).execute == 12 * H


def test_working_day_checks() -> None:
    with pytest.raises(ValueError, match="1 or more"):
        WorkingDays(count=0)
    with pytest.raises(ValueError, match="in working days too"):
        PhaseBudget(deliver=H, acknowledge=WorkingDays(count=1), execute=2 * D)
    with pytest.raises(ValueError, match="shrink"):
        PhaseBudget(deliver=H, acknowledge=2 * D, execute=WorkingDays(count=1))
    assert PhaseBudget(deliver=H, acknowledge=D, execute=WorkingDays(count=1)).execute == WorkingDays(count=1)
    with pytest.raises(ValueError, match="unknown time zone"):
        WorkingCalendar(time_zone="Mars/Olympus_Mons")
    with pytest.raises(ValueError, match="no working day"):
        WorkingCalendar(weekend=frozenset(range(1, 8)))
    with pytest.raises(ValueError, match="not a weekend day"):
        WorkingCalendar(make_up_days=frozenset({datetime(2026, 10, 9).date()}))
    saturday = datetime(2026, 10, 10).date()
    with pytest.raises(ValueError, match="both a holiday"):
        WorkingCalendar(holidays=frozenset({saturday}), make_up_days=frozenset({saturday}))
    with pytest.raises(ValueError, match="timezone-aware"):
        WorkingCalendar().add_working_days(datetime(2026, 3, 6, 10, 0), 1)
    with pytest.raises(ValueError, match="1 or more"):
        WorkingCalendar().add_working_days(RECEIVED, 0)


def test_a_budget_narrowed_to_a_data_category() -> None:
    location, subscriber = requests_pb2.DATA_CATEGORY_LOCATION, requests_pb2.DATA_CATEGORY_SUBSCRIBER
    data = T.REQUEST_TYPE_DATA_REQUEST
    hours = PhaseBudget(deliver=30 * S, acknowledge=2 * M, execute=8 * H)
    minutes = PhaseBudget(deliver=30 * S, acknowledge=2 * M, execute=15 * M)
    table = DeadlineTable(
        budgets={(data, GREEN): hours}, holds={}, by_category={(data, GREEN, location): minutes}
    )
    assert table.budgets(data, GREEN, location) is minutes
    assert table.budgets(data, GREEN, subscriber) is hours
    assert table.budgets(data, GREEN) is hours
    execute = table.deadlines(data, GREEN, RECEIVED, category=location).phases[-1]
    assert execute.phase == T.PHASE_EXECUTE
    assert execute.due_at.ToDatetime(tzinfo=UTC) == RECEIVED + 15 * M
    other = table.deadlines(data, GREEN, RECEIVED, category=subscriber).phases[-1]
    assert other.due_at.ToDatetime(tzinfo=UTC) == RECEIVED + 8 * H
    assert table.scaled(2).budgets(data, GREEN, location).execute == 30 * M
    # A narrowed budget never stands alone: every other category needs the type's own.
    with pytest.raises(ValueError, match="every other category"):
        DeadlineTable(budgets={}, holds={}, by_category={(data, GREEN, location): minutes})
    with pytest.raises(ValueError, match="UNSPECIFIED"):
        DeadlineTable(budgets={(data, GREEN): hours}, holds={}, by_category={(data, GREEN, 0): minutes})
