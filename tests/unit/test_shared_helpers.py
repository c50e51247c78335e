"""The shared state sets, enum names and timestamp conversions of broker.protocol."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from greenchannel.v1 import common_pb2, results_pb2

from broker.protocol import (
    EXECUTED_STATES,
    FINAL_STATES,
    HOLDING_STATES,
    OUTCOME_STATES,
    REQUEST_TYPES_BY_SLUG,
    from_timestamp,
    optional_timestamp,
    reason_name,
    request_type_name,
    request_type_slug,
    state_name,
    to_timestamp,
)

_S = common_pb2


def test_state_sets_nest_as_the_lifecycle_does() -> None:
    assert EXECUTED_STATES < OUTCOME_STATES < FINAL_STATES
    assert EXECUTED_STATES < HOLDING_STATES
    assert _S.REQUEST_STATE_CANCELLED in FINAL_STATES
    assert _S.REQUEST_STATE_CANCELLED not in OUTCOME_STATES
    assert _S.REQUEST_STATE_EXTENDED in HOLDING_STATES
    assert _S.REQUEST_STATE_FAILED not in HOLDING_STATES


def test_names_and_slugs_round_trip_and_unknown_numbers_stay_numbers() -> None:
    assert request_type_name(_S.REQUEST_TYPE_STOP_PAYMENT) == "STOP_PAYMENT"
    assert request_type_slug(_S.REQUEST_TYPE_STOP_PAYMENT) == "stop_payment"
    assert state_name(_S.REQUEST_STATE_PARTIALLY_EXECUTED) == "PARTIALLY_EXECUTED"
    assert reason_name(results_pb2.REASON_CODE_SIGNATURE_INVALID) == "SIGNATURE_INVALID"
    assert state_name(999) == "999"  # type: ignore[arg-type]
    assert "unspecified" not in REQUEST_TYPES_BY_SLUG
    for slug, value in REQUEST_TYPES_BY_SLUG.items():
        assert request_type_slug(value) == slug


def test_timestamps_keep_the_instant() -> None:
    when = datetime(2026, 12, 3, 20, 30, 1, 250_000, tzinfo=timezone(timedelta(hours=8)))
    back = from_timestamp(to_timestamp(when))
    assert back == when
    assert back.tzinfo is UTC
    assert optional_timestamp(None) is None
    assert optional_timestamp(when) == to_timestamp(when)
