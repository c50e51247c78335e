"""The reference carrier's batch and selector blocks: per item, by index, nothing done twice."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from greenchannel.v1 import agency_pb2, carrier_pb2, common_pb2, requests_pb2, results_pb2

from agencies.carrier import CarrierConfig, CarrierCore
from broker.protocol import ManualClock, new_uuid7, validate_message

START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
CELL = "460-00-22801-40961"
BLOCKED = results_pb2.BLOCK_ITEM_STATE_BLOCKED
NOT_FOUND = results_pb2.BLOCK_ITEM_STATE_NOT_FOUND
ALREADY = results_pb2.BLOCK_ITEM_STATE_ALREADY_BLOCKED


def number(i: int) -> str:
    return f"+86150{i:08d}"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def core(clock: ManualClock) -> Iterator[CarrierCore]:
    with CarrierCore(CarrierConfig(agency_id="carrier-cmcc"), clock=clock) as carrier:
        for i in range(6):
            carrier.register_line(
                number(i),
                iccid=f"8986{i:016d}",
                imsi=f"46000{i:010d}",
                subscriber_name="某",
                issuing_batch="B2026-03" if i < 3 else "",
            )
        carrier.record_call(number(4), "+8613900000000", started_at=START, duration_s=30, cell_id=CELL)
        carrier.record_call(
            number(5), "+8613900000000", started_at=START + timedelta(hours=2), duration_s=30, cell_id=CELL
        )
        yield carrier


def order(
    clock: ManualClock, body: requests_pb2.NumberBlock, request_id: str = ""
) -> carrier_pb2.BlockNumberRequest:
    body.scope = body.scope or requests_pb2.BLOCK_SCOPE_NUMBER
    ctx = agency_pb2.OrderContext(request_id=request_id or new_uuid7(clock), sender="police-310115")
    return carrier_pb2.BlockNumberRequest(context=ctx, order=body)


def batch(*numbers: str) -> requests_pb2.NumberBlock:
    return requests_pb2.NumberBlock(phones=[common_pb2.PhoneRef(e164=n) for n in numbers])


def states(result: results_pb2.Result) -> list[int]:
    assert [item.index for item in result.block.items] == list(range(len(result.block.items)))
    return [item.state for item in result.block.items]


def test_a_batch_is_answered_item_by_item_with_totals(core: CarrierCore, clock: ManualClock) -> None:
    result = core.block_number(order(clock, batch(number(0), "+8615099999999", number(1)))).result
    validate_message(result)
    assert result.outcome == common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
    assert states(result) == [BLOCKED, NOT_FOUND, BLOCKED]
    assert result.block.totals == results_pb2.BlockTotals(blocked=2, not_found=1)
    assert "+86" not in str(result)  # indexes only, no identifiers
    line = core.line(number(0))
    assert line is not None
    assert line.number_blocked


def test_a_new_order_blocks_nothing_twice_and_a_replay_gets_the_same_answer(
    core: CarrierCore, clock: ManualClock
) -> None:
    first = order(clock, batch(number(0), number(1)))
    answer = core.block_number(first).result
    assert answer.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert core.block_number(first).result == answer
    again = core.block_number(order(clock, batch(number(1), number(0)))).result
    assert again.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert again.reason == results_pb2.REASON_CODE_ALREADY_DONE
    assert again.block.totals == results_pb2.BlockTotals(already_blocked=2)


def test_a_line_named_twice_is_blocked_once(core: CarrierCore, clock: ManualClock) -> None:
    result = core.block_number(order(clock, batch(number(2), number(2)))).result
    assert states(result) == [BLOCKED, ALREADY]
    assert result.outcome == common_pb2.REQUEST_STATE_EXECUTED


def test_none_blocked_is_rejected(core: CarrierCore, clock: ManualClock) -> None:
    result = core.block_number(order(clock, batch("+8615099999998", "+8615099999999"))).result
    assert result.outcome == common_pb2.REQUEST_STATE_REJECTED
    assert result.block.totals == results_pb2.BlockTotals(not_found=2)


def test_an_issuing_batch_selector_blocks_the_batchs_lines(core: CarrierCore, clock: ManualClock) -> None:
    body = requests_pb2.NumberBlock(selector=requests_pb2.NumberSelector(issuing_batch="B2026-03"))
    result = core.block_number(order(clock, body)).result
    assert result.block.totals == results_pb2.BlockTotals(blocked=3)
    blocked = [core.line(number(i)) for i in range(6)]
    assert [bool(ln and ln.number_blocked) for ln in blocked] == [True] * 3 + [False] * 3


def test_a_cell_selector_blocks_lines_seen_in_the_window(core: CarrierCore, clock: ManualClock) -> None:
    window = common_pb2.TimeRange()
    window.start.FromDatetime(START - timedelta(minutes=5))
    window.end.FromDatetime(START + timedelta(hours=1))
    body = requests_pb2.NumberBlock(
        selector=requests_pb2.NumberSelector(cell=requests_pb2.CellWindow(cell_id=CELL, window=window))
    )
    result = core.block_number(order(clock, body)).result
    assert result.block.totals == results_pb2.BlockTotals(blocked=1)
    four, five = core.line(number(4)), core.line(number(5))
    assert four is not None
    assert four.number_blocked
    assert five is not None
    assert not five.number_blocked


def test_an_empty_selector_result_is_rejected(core: CarrierCore, clock: ManualClock) -> None:
    body = requests_pb2.NumberBlock(selector=requests_pb2.NumberSelector(issuing_batch="NONE"))
    result = core.block_number(order(clock, body)).result
    assert result.outcome == common_pb2.REQUEST_STATE_REJECTED
    assert not result.block.items


def test_ten_thousand_items_in_one_order(clock: ManualClock) -> None:
    with CarrierCore(CarrierConfig(agency_id="carrier-cmcc"), clock=clock) as carrier:
        for i in range(10_000):
            carrier.register_line(
                number(i), iccid=f"8986{i:016d}", imsi=f"46000{i:010d}", subscriber_name="某"
            )
        result = carrier.block_number(order(clock, batch(*(number(i) for i in range(10_000))))).result
    validate_message(result)
    assert result.block.totals == results_pb2.BlockTotals(blocked=10_000)


def test_a_database_of_an_earlier_release_gains_the_issuing_batch(tmp_path: Path, clock: ManualClock) -> None:
    database = tmp_path / "carrier.db"
    with sqlite3.connect(database) as conn:
        conn.execute(
            "CREATE TABLE numbers (e164 TEXT PRIMARY KEY, iccid TEXT NOT NULL, imsi TEXT NOT NULL,"
            " imei TEXT NOT NULL DEFAULT '', subscriber_name TEXT NOT NULL, id_type TEXT NOT NULL DEFAULT '',"
            " id_number TEXT NOT NULL DEFAULT '', status TEXT NOT NULL, activated_at_us INTEGER NOT NULL,"
            " number_blocked INTEGER NOT NULL DEFAULT 0, sim_blocked INTEGER NOT NULL DEFAULT 0,"
            " imei_blocked INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID"
        )
        conn.execute(
            "INSERT INTO numbers (e164, iccid, imsi, subscriber_name, status, activated_at_us)"
            " VALUES ('+8615000000009', '1', '2', 'x', 'active', 0)"
        )
    conn.close()
    with CarrierCore(CarrierConfig(agency_id="carrier-cmcc", database=database), clock=clock) as carrier:
        line = carrier.line("+8615000000009")
        assert line is not None
        assert line.issuing_batch == ""


def lift(clock: ManualClock, target: str, item: int | None) -> carrier_pb2.LiftBlockRequest:
    ctx = agency_pb2.OrderContext(request_id=new_uuid7(clock), sender="broker")
    release = requests_pb2.Release(
        target_request_id=target, purpose=requests_pb2.RELEASE_PURPOSE_APPEAL_LIFTED, item_index=item
    )
    return carrier_pb2.LiftBlockRequest(context=ctx, order=release)


def test_an_appeal_lifts_one_item_of_a_batch(core: CarrierCore, clock: ManualClock) -> None:
    blocking = order(clock, batch(number(0), "+8615099999999", number(1)))
    core.block_number(blocking)
    target = blocking.context.request_id
    result = core.lift_block(lift(clock, target, 2)).result
    validate_message(result)
    assert result.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert list(result.block.items) == [results_pb2.BlockItem(index=2, state=BLOCKED)]
    assert result.block.totals == results_pb2.BlockTotals(blocked=1)
    assert "+86" not in str(result)
    lines = [core.line(number(i)) for i in (0, 1)]
    assert [line.number_blocked for line in lines if line is not None] == [True, False]
    # Lifted again (another order): nothing to undo. An item the batch did not block, and the
    # batch as a whole (no item): no such block here.
    again = core.lift_block(lift(clock, target, 2)).result
    assert (again.outcome, again.reason) == (
        common_pb2.REQUEST_STATE_EXECUTED,
        results_pb2.REASON_CODE_ALREADY_DONE,
    )
    assert list(again.block.items) == [results_pb2.BlockItem(index=2, state=ALREADY)]
    for item in (1, None):
        refused = core.lift_block(lift(clock, target, item)).result
        assert (refused.outcome, refused.reason) == (
            common_pb2.REQUEST_STATE_REJECTED,
            results_pb2.REASON_CODE_NOT_FOUND,
        )
    line = core.line(number(0))
    assert line is not None
    assert line.number_blocked
