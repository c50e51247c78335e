"""The reference carrier core: blocks by scope, warnings, subscriber data, idempotency, the seed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import agency_pb2, carrier_pb2, common_pb2, requests_pb2, results_pb2

from agencies import _seed as story
from agencies._common import CarrierError, Reach
from agencies.carrier import CarrierConfig, CarrierCore, Cell
from broker.protocol import ManualClock, load_directory, new_uuid7, validate_message

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
PHONE = "+8615012340001"
ICCID = "89860012345678901234"
IMSI = "460001234567890"
IMEI = "356938035643809"

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
PARTIAL = common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def core(clock: ManualClock) -> Iterator[CarrierCore]:
    with CarrierCore(CarrierConfig(agency_id="carrier-cmcc"), clock=clock) as carrier:
        carrier.register_line(
            PHONE,
            iccid=ICCID,
            imsi=IMSI,
            imei=IMEI,
            subscriber_name="李某",
            id_type="居民身份证",
            id_number="450481199506300017",
            activated_at=START - timedelta(days=21),
        )
        yield carrier


def context(clock: ManualClock) -> agency_pb2.OrderContext:
    return agency_pb2.OrderContext(request_id=new_uuid7(clock), sender="police-310115")


def phone(e164: str = PHONE, *, iccid: str = "", imsi: str = "", imei: str = "") -> common_pb2.PhoneRef:
    return common_pb2.PhoneRef(e164=e164, iccid=iccid, imsi=imsi, imei=imei)


def block(
    clock: ManualClock,
    scope: requests_pb2.BlockScope.ValueType,
    *,
    ref: common_pb2.PhoneRef | None = None,
    unblock: bool = False,
) -> carrier_pb2.BlockNumberRequest:
    return carrier_pb2.BlockNumberRequest(
        context=context(clock),
        order=requests_pb2.NumberBlock(phone=ref or phone(), scope=scope, unblock=unblock),
    )


def warn(
    clock: ManualClock,
    *,
    ref: common_pb2.PhoneRef | None = None,
    channel: requests_pb2.WarningChannel.ValueType = requests_pb2.WARNING_CHANNEL_CALL,
) -> carrier_pb2.WarnSubscriberRequest:
    return carrier_pb2.WarnSubscriberRequest(
        context=context(clock),
        order=requests_pb2.Warning(phone=ref or phone(), channel=channel, template_id="fraud-call-warning"),
    )


def query(
    clock: ManualClock,
    category: requests_pb2.DataCategory.ValueType,
    *,
    ref: common_pb2.PhoneRef | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> carrier_pb2.QuerySubscriberDataRequest:
    order = requests_pb2.DataRequest(category=category, phone=ref or phone())
    if period is not None:
        order.period.start.CopyFrom(_ts(period[0]))
        order.period.end.CopyFrom(_ts(period[1]))
    return carrier_pb2.QuerySubscriberDataRequest(context=context(clock), order=order)


def _ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


# -- BlockNumber ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "kinds"),
    [
        (requests_pb2.BLOCK_SCOPE_NUMBER, ["number"]),
        (requests_pb2.BLOCK_SCOPE_SIM, ["sim"]),
        (requests_pb2.BLOCK_SCOPE_IMEI, ["imei"]),
        (requests_pb2.BLOCK_SCOPE_ALL, ["number", "sim", "imei"]),
    ],
)
def test_block_by_scope(
    core: CarrierCore, clock: ManualClock, scope: requests_pb2.BlockScope.ValueType, kinds: list[str]
) -> None:
    response = core.block_number(block(clock, scope))
    validate_message(response)
    result = response.result
    assert result.outcome == EXECUTED
    assert list(result.block.blocked) == kinds
    assert result.agency_reference.startswith("NB")
    line = core.line(PHONE)
    assert line is not None
    assert list(line.blocked_kinds()) == kinds
    # Kinds, never the identifiers themselves.
    assert all(value not in (PHONE, ICCID, IMSI, IMEI) for value in result.block.blocked)


def test_unblock_lifts_only_the_scope(core: CarrierCore, clock: ManualClock) -> None:
    core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_ALL))
    result = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_SIM, unblock=True)).result
    assert (result.outcome, list(result.block.blocked), result.detail) == (EXECUTED, ["sim"], "unblocked")
    line = core.line(PHONE)
    assert line is not None
    assert line.blocked_kinds() == ("number", "imei")


def test_blocking_what_is_blocked_is_done_already(core: CarrierCore, clock: ManualClock) -> None:
    core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_NUMBER))
    result = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_NUMBER)).result
    assert (result.outcome, result.reason) == (EXECUTED, results_pb2.REASON_CODE_ALREADY_DONE)
    unblock = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_IMEI, unblock=True)).result
    assert (unblock.outcome, unblock.reason) == (EXECUTED, results_pb2.REASON_CODE_ALREADY_DONE)


def test_unknown_number_is_not_found(core: CarrierCore, clock: ManualClock) -> None:
    result = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_ALL, ref=phone("+8613900000000"))).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_NOT_FOUND)


@pytest.mark.parametrize(
    "ref",
    [
        phone(iccid="89860000000000000000"),
        phone(imsi="460000000000000"),
        phone(imei="356938035643817"),
        phone(iccid=ICCID, imei="356938035643817"),
    ],
)
def test_identifiers_of_another_line_are_a_mismatch(
    core: CarrierCore, clock: ManualClock, ref: common_pb2.PhoneRef
) -> None:
    result = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_ALL, ref=ref)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_MISMATCH)
    assert all(value not in result.detail for value in (PHONE, ICCID, IMSI, IMEI))
    line = core.line(PHONE)
    assert line is not None
    assert line.blocked_kinds() == ()


def test_matching_identifiers_are_accepted(core: CarrierCore, clock: ManualClock) -> None:
    ref = phone(iccid=ICCID, imsi=IMSI, imei=IMEI)
    assert core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_ALL, ref=ref)).result.outcome == EXECUTED


def test_a_line_without_a_known_handset(core: CarrierCore, clock: ManualClock) -> None:
    core.register_line(
        "+8613900001111", iccid="89860000000000001111", imsi="460000000001111", subscriber_name="张某"
    )
    ref = phone("+8613900001111")
    imei_only = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_IMEI, ref=ref)).result
    assert (imei_only.outcome, imei_only.reason) == (REJECTED, results_pb2.REASON_CODE_NOT_FOUND)
    everything = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_ALL, ref=ref)).result
    assert (everything.outcome, everything.reason) == (PARTIAL, results_pb2.REASON_CODE_NOT_FOUND)
    assert list(everything.block.blocked) == ["number", "sim"]


def test_a_cancelled_line_is_closed(core: CarrierCore, clock: ManualClock) -> None:
    core.cancel_line(PHONE)
    result = core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_NUMBER)).result
    assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_ACCOUNT_CLOSED)


def test_block_is_executed_once_per_request(core: CarrierCore, clock: ManualClock) -> None:
    request = block(clock, requests_pb2.BLOCK_SCOPE_NUMBER)
    first = core.block_number(request)
    # Someone lifts the block in between: the redelivered order must not block again.
    core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_NUMBER, unblock=True))
    second = core.block_number(request)
    stored = core.execution(request.context.request_id)
    assert stored is not None
    assert stored.method == "CarrierService.BlockNumber"
    assert (
        second.SerializeToString(deterministic=True)
        == stored.response
        == first.SerializeToString(deterministic=True)
    )
    assert core.execution_count(request.context.request_id) == 1
    line = core.line(PHONE)
    assert line is not None
    assert not line.number_blocked


def test_invalid_block_orders_are_rejected(core: CarrierCore, clock: ManualClock) -> None:
    unspecified = block(clock, requests_pb2.BLOCK_SCOPE_UNSPECIFIED)
    bad_number = block(clock, requests_pb2.BLOCK_SCOPE_NUMBER, ref=phone("13900000000"))
    for request in (unspecified, bad_number):
        result = core.block_number(request).result
        assert (result.outcome, result.reason) == (REJECTED, results_pb2.REASON_CODE_INVALID_REQUEST)
        assert core.execution_count(request.context.request_id) == 0


# -- WarnSubscriber -------------------------------------------------------------------------------


def test_warning_is_recorded_and_reported(core: CarrierCore, clock: ManualClock) -> None:
    request = warn(clock, channel=requests_pb2.WARNING_CHANNEL_SMS)
    response = core.warn_subscriber(request)
    validate_message(response)
    assert response.result.outcome == EXECUTED
    assert response.result.block.warned
    assert response.result.warning == results_pb2.WARNING_OUTCOME_DISSUADED  # no record: reached
    assert core.warn_subscriber(request) == response
    (sent,) = core.warnings_to(PHONE)
    assert (sent.request_id, sent.channel, sent.template_id, sent.at) == (
        request.context.request_id,
        "sms",
        "fraud-call-warning",
        START,
    )


def test_a_warning_ends_as_the_carriers_record_of_the_line_says(
    core: CarrierCore, clock: ManualClock
) -> None:
    core.set_reach(PHONE, Reach.UNREACHABLE)  # powered off
    assert core.reach(PHONE) is Reach.UNREACHABLE
    unreachable = core.warn_subscriber(warn(clock)).result
    assert (unreachable.outcome, unreachable.warning) == (EXECUTED, results_pb2.WARNING_OUTCOME_UNREACHABLE)
    assert not unreachable.block.warned
    core.set_reach(PHONE, Reach.CONTINUING)
    continuing = core.warn_subscriber(warn(clock)).result
    assert (continuing.warning, continuing.block.warned) == (results_pb2.WARNING_OUTCOME_CONTINUING, True)
    core.set_reach(PHONE, None)
    assert core.warn_subscriber(warn(clock)).result.warning == results_pb2.WARNING_OUTCOME_DISSUADED
    assert len(core.warnings_to(PHONE)) == 3
    with pytest.raises(CarrierError):
        core.set_reach("+8613900000000", Reach.UNREACHABLE)


def test_warning_refusals(core: CarrierCore, clock: ManualClock) -> None:
    unknown = core.warn_subscriber(warn(clock, ref=phone("+8613900000000"))).result
    in_app = core.warn_subscriber(warn(clock, channel=requests_pb2.WARNING_CHANNEL_IN_APP)).result
    platform_user = carrier_pb2.WarnSubscriberRequest(
        context=context(clock),
        order=requests_pb2.Warning(
            platform_account=common_pb2.PlatformAccountRef(platform="wechat", account_id="wxid_x"),
            channel=requests_pb2.WARNING_CHANNEL_CALL,
            template_id="fraud-call-warning",
        ),
    )
    wrong_sim = core.warn_subscriber(warn(clock, ref=phone(iccid="89860000000000000000"))).result
    assert unknown.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert in_app.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert core.warn_subscriber(platform_user).result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert wrong_sim.reason == results_pb2.REASON_CODE_MISMATCH
    assert core.warnings_to(PHONE) == ()


# -- QuerySubscriberData --------------------------------------------------------------------------


def test_subscriber_data(core: CarrierCore, clock: ManualClock) -> None:
    core.block_number(block(clock, requests_pb2.BLOCK_SCOPE_SIM))
    response = core.query_subscriber_data(query(clock, requests_pb2.DATA_CATEGORY_SUBSCRIBER))
    validate_message(response)
    assert response.result.outcome == EXECUTED
    holder = dict(response.answer.holder)
    assert holder["name"] == "李某"
    assert (holder["iccid"], holder["imsi"], holder["imei"]) == (ICCID, IMSI, IMEI)
    assert holder["id_number"] == "450481199506300017"
    assert holder["blocked"] == "sim"
    assert "李某" not in response.result.detail


def test_call_records_in_a_period(core: CarrierCore, clock: ManualClock) -> None:
    for minutes, callee in ((90, "+8618912340002"), (40, "+8618912340002"), (5, "+8613712340003")):
        core.record_call(
            PHONE,
            callee,
            started_at=START - timedelta(minutes=minutes),
            duration_s=60 * minutes,
            cell_id="c1",
        )
    core.record_call(
        PHONE, "+8613712340003", direction="in", started_at=START - timedelta(minutes=20), duration_s=0
    )
    period = (START - timedelta(minutes=60), START - timedelta(minutes=5))
    response = core.query_subscriber_data(
        query(clock, requests_pb2.DATA_CATEGORY_CALL_RECORDS, period=period)
    )
    rows = [dict(r.fields) for r in response.answer.records]
    assert rows == [
        {
            "direction": "out",
            "caller": PHONE,
            "callee": "+8618912340002",
            "started_at": "2026-03-02T08:50:00Z",
            "duration_s": "2400",
            "cell_id": "c1",
        },
        {
            "direction": "in",
            "caller": "+8613712340003",
            "callee": PHONE,
            "started_at": "2026-03-02T09:10:00Z",
            "duration_s": "0",
            "cell_id": "",
        },
    ]


def test_data_request_refusals(core: CarrierCore, clock: ManualClock) -> None:
    unknown = core.query_subscriber_data(
        query(clock, requests_pb2.DATA_CATEGORY_SUBSCRIBER, ref=phone("+8613900000000"))
    )
    mismatch = core.query_subscriber_data(
        query(clock, requests_pb2.DATA_CATEGORY_SUBSCRIBER, ref=phone(imsi="460000000000000"))
    )
    no_period = core.query_subscriber_data(query(clock, requests_pb2.DATA_CATEGORY_CALL_RECORDS))
    bank_question = core.query_subscriber_data(query(clock, requests_pb2.DATA_CATEGORY_TRANSACTIONS))
    assert unknown.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert mismatch.result.reason == results_pb2.REASON_CODE_MISMATCH
    assert no_period.result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert bank_question.result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert not mismatch.answer.holder


CELL = Cell(
    cell_id="460-00-22801-40962",
    base_station_id="CMCC-SZ-eNB-160",
    location_area="460-00-22801",
    latitude=22.54421,
    longitude=114.05993,
    accuracy_m=300,
)


def test_location_is_the_last_seen_cell(core: CarrierCore, clock: ManualClock) -> None:
    core.add_cell(CELL)
    core.add_cell(Cell(**{**CELL.__dict__, "cell_id": "460-00-22801-40961"}))
    core.record_last_seen(PHONE, CELL.cell_id, START - timedelta(minutes=2))
    # An older sighting does not move the line back.
    core.record_last_seen(PHONE, "460-00-22801-40961", START - timedelta(minutes=30))
    for ref in (phone(), phone(imsi=IMSI), phone(imei=IMEI)):
        response = core.query_subscriber_data(query(clock, requests_pb2.DATA_CATEGORY_LOCATION, ref=ref))
        validate_message(response)
        assert response.result.outcome == EXECUTED
        assert dict(response.answer.holder) == {"e164": PHONE}
        assert [dict(r.fields) for r in response.answer.records] == [
            {
                "source": "last_seen",
                "cell_id": "460-00-22801-40962",
                "base_station_id": "CMCC-SZ-eNB-160",
                "location_area": "460-00-22801",
                "latitude": "22.544210",
                "longitude": "114.059930",
                "accuracy_m": "300",
                "last_activity_at": "2026-03-02T09:28:00Z",
                "imsi": IMSI,
                "imei": IMEI,
            }
        ]
        assert "22.5" not in response.result.detail


def test_location_refusals(core: CarrierCore, clock: ManualClock) -> None:
    never_seen = core.query_subscriber_data(query(clock, requests_pb2.DATA_CATEGORY_LOCATION))
    core.add_cell(CELL)
    core.record_last_seen(PHONE, CELL.cell_id, START)
    unknown = core.query_subscriber_data(
        query(clock, requests_pb2.DATA_CATEGORY_LOCATION, ref=phone("+8613900000000"))
    )
    other_handset = core.query_subscriber_data(
        query(clock, requests_pb2.DATA_CATEGORY_LOCATION, ref=phone(imei="356938035643800"))
    )
    assert never_seen.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert unknown.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert other_handset.result.reason == results_pb2.REASON_CODE_MISMATCH
    assert not unknown.answer.records
    assert not other_handset.answer.records
    with pytest.raises(CarrierError):
        core.record_last_seen(PHONE, "460-00-00000-00000", START)


def test_direct_calls_refuse_unknown_and_duplicate_lines(core: CarrierCore) -> None:
    with pytest.raises(CarrierError):
        core.register_line(PHONE, iccid=ICCID, imsi=IMSI, subscriber_name="李某")
    with pytest.raises(CarrierError):
        core.record_call("+8613900000000", PHONE, started_at=START, duration_s=1)


# -- the seeded story -----------------------------------------------------------------------------


def test_seeded_lines_route_to_their_carriers_and_tell_the_story(clock: ManualClock) -> None:
    registry = load_directory(DIRECTORY)
    for line in story.LINES:
        routed = registry.carrier_for_number(line.e164)
        assert routed is not None
        assert routed.id == line.carrier
    with (
        CarrierCore(CarrierConfig(agency_id="carrier-cmcc"), clock=clock) as cmcc,
        CarrierCore(CarrierConfig(agency_id="carrier-ctcc"), clock=clock) as ctcc,
        CarrierCore(CarrierConfig(agency_id="carrier-cucc"), clock=clock) as cucc,
    ):
        assert story.seed_carrier(cmcc, "carrier-cmcc", at=START) > 0
        assert story.seed_carrier(ctcc, "carrier-ctcc", at=START) > 0
        assert story.seed_carrier(cucc, "carrier-cucc", at=START) == 0
        assert story.seed_carrier(cmcc, "carrier-cmcc", at=START) == 0
        fraudster = cmcc.line(story.FRAUDSTER_PHONE)
        assert fraudster is not None
        assert (fraudster.iccid, fraudster.imsi, fraudster.imei) == (
            story.FRAUDSTER_ICCID,
            story.FRAUDSTER_IMSI,
            story.FRAUDSTER_IMEI,
        )
        assert cmcc.line(story.POTENTIAL_VICTIM_PHONE) is None
        assert ctcc.line(story.POTENTIAL_VICTIM_PHONE) is not None
        window = (START - timedelta(days=1), START)
        out = [
            c
            for c in cmcc.calls_of(story.FRAUDSTER_PHONE, *window)
            if c.other_party == story.POTENTIAL_VICTIM_PHONE
        ]
        incoming = ctcc.calls_of(story.POTENTIAL_VICTIM_PHONE, *window)
        assert [(c.started_at, c.duration_s) for c in out] == [(c.started_at, c.duration_s) for c in incoming]
        assert {c.direction for c in incoming} == {"in"}
        assert len(incoming) == 2
        # The fraudster's line was last seen on the cell of its latest call.
        latest = max(cmcc.calls_of(story.FRAUDSTER_PHONE, *window), key=lambda c: c.started_at)
        seen = cmcc.last_seen(story.FRAUDSTER_PHONE)
        assert seen is not None
        assert seen.cell.cell_id == latest.cell_id == story.FRAUDSTER_CELL
        assert seen.at >= latest.started_at
        for ln in story.LINES:
            carrier = cmcc if ln.carrier == "carrier-cmcc" else ctcc
            assert carrier.last_seen(ln.e164) is not None
