"""The default green-channel SLA table (the shipped CN policy), hold validity, computed deadlines, scaling."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import TypeAlias

import pytest
from greenchannel.v1 import common_pb2

from broker.hub import DeadlineTable, PhaseBudget
from tests._sla import DEFAULT_DEADLINES

RequestType: TypeAlias = common_pb2.RequestType.ValueType
Priority: TypeAlias = common_pb2.Priority.ValueType
T = common_pb2
GREEN, STANDARD = T.PRIORITY_GREEN, T.PRIORITY_STANDARD
S, M, H, D = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
RECEIVED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

URGENT = (30 * S, 2 * M, 10 * M)
TABLE: list[tuple[RequestType, Priority, tuple[timedelta, timedelta, timedelta]]] = [
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
    (T.REQUEST_TYPE_RETURN_FUNDS, GREEN, (30 * S, 2 * M, 3 * D)),
    (T.REQUEST_TYPE_APPEAL, GREEN, (30 * S, 2 * M, 48 * H)),
    (T.REQUEST_TYPE_APPEAL, STANDARD, (1 * H, 8 * H, 7 * D)),
    *(
        (request_type, STANDARD, (1 * H, 8 * H, 3 * D))
        for request_type in common_pb2.RequestType.values()
        if request_type not in (T.REQUEST_TYPE_UNSPECIFIED, T.REQUEST_TYPE_APPEAL)
    ),
]


@pytest.mark.parametrize(
    ("request_type", "priority", "expected"),
    [pytest.param(t, p, e, id=f"{T.RequestType.Name(t)}-{T.Priority.Name(p)}") for t, p, e in TABLE],
)
def test_default_budgets(
    request_type: RequestType, priority: Priority, expected: tuple[timedelta, timedelta, timedelta]
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
    for request_type, priority, (deliver, acknowledge, execute) in TABLE:
        budget = scaled.budgets(request_type, priority)
        assert budget == PhaseBudget(
            deliver=deliver * factor, acknowledge=acknowledge * factor, execute=execute * factor
        )
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
