"""The reference police desk: assistance by rule (complete with a report, or decline), fraud reports,
victim follow-ups (reached or not, by the desk's rule)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import agency_pb2, common_pb2, police_pb2, requests_pb2, results_pb2

from agencies.police import AssistanceRule, DissuasionRule, FollowUpRule, PoliceDesk, PoliceDeskConfig
from broker.protocol import ManualClock, new_uuid7, validate_message

START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)

LOCATE = requests_pb2.ASSISTANCE_KIND_LOCATE
DETAIN = requests_pb2.ASSISTANCE_KIND_DETAIN


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def desk(clock: ManualClock) -> Iterator[PoliceDesk]:
    config = PoliceDeskConfig(
        agency_id="police-440305",
        rules={DETAIN: AssistanceRule.decline("detention needs a local warrant; contact the duty desk")},
        default_rule=AssistanceRule.accept_and_complete("device located; cell 460-00-22801-40961"),
        regions=("440305",),
    )
    with PoliceDesk(config, clock=clock) as police:
        yield police


def context(clock: ManualClock) -> agency_pb2.OrderContext:
    return agency_pb2.OrderContext(
        request_id=new_uuid7(clock),
        sender="police-310115",
        case_ref=common_pb2.CaseRef(
            case_number="SH-PD-2026-0302-0007",
            issuing_agency="police-310115",
            legal_instrument_id="沪公(浦)协字[2026]0302号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_ASSISTANCE_LETTER,
        ),
    )


def assistance(
    clock: ManualClock, kind: requests_pb2.AssistanceKind.ValueType = LOCATE, *, region: str = "440305"
) -> police_pb2.HandleAssistanceRequest:
    return police_pb2.HandleAssistanceRequest(
        context=context(clock),
        order=requests_pb2.Assistance(
            region=region,
            kind=kind,
            task="locate the handset last seen in Nanshan",
            phones=[common_pb2.PhoneRef(e164="+8615012340001")],
        ),
    )


def test_assistance_completed_with_a_report(desk: PoliceDesk, clock: ManualClock) -> None:
    request = assistance(clock)
    response = desk.handle_assistance(request)
    validate_message(response)
    result = response.result
    assert (result.outcome, result.assistance) == (
        common_pb2.REQUEST_STATE_EXECUTED,
        results_pb2.ASSISTANCE_DECISION_COMPLETED,
    )
    (record,) = response.report.records
    fields = dict(record.fields)
    assert fields["kind"] == "LOCATE"
    assert fields["findings"] == "device located; cell 460-00-22801-40961"
    assert fields["subjects"] == "1"
    assert fields["completed_at"] == "2026-03-02T09:30:00Z"
    assert fields["reference"] == result.agency_reference
    (case,) = desk.assistance_cases()
    assert (case.request_id, case.decision, case.sender, case.case_number) == (
        request.context.request_id,
        "completed",
        "police-310115",
        "SH-PD-2026-0302-0007",
    )


def test_assistance_declined_by_rule(desk: PoliceDesk, clock: ManualClock) -> None:
    response = desk.handle_assistance(assistance(clock, DETAIN))
    validate_message(response)
    result = response.result
    assert (result.outcome, result.reason, result.assistance) == (
        common_pb2.REQUEST_STATE_REJECTED,
        results_pb2.REASON_CODE_DECLINED,
        results_pb2.ASSISTANCE_DECISION_DECLINED,
    )
    assert result.detail == "detention needs a local warrant; contact the duty desk"
    assert not response.report.records
    assert [c.decision for c in desk.assistance_cases()] == ["declined"]


def test_assistance_outside_the_desks_regions_is_declined(desk: PoliceDesk, clock: ManualClock) -> None:
    result = desk.handle_assistance(assistance(clock, region="310115")).result
    assert (result.reason, result.assistance) == (
        results_pb2.REASON_CODE_DECLINED,
        results_pb2.ASSISTANCE_DECISION_DECLINED,
    )


def test_a_desk_without_rules_completes_everything(clock: ManualClock) -> None:
    with PoliceDesk(PoliceDeskConfig(agency_id="police-310000"), clock=clock) as desk:
        result = desk.handle_assistance(assistance(clock, DETAIN, region="310115")).result
    assert result.assistance == results_pb2.ASSISTANCE_DECISION_COMPLETED


def test_assistance_is_answered_once(desk: PoliceDesk, clock: ManualClock) -> None:
    request = assistance(clock)
    first = desk.handle_assistance(request)
    clock.advance(timedelta(hours=1))
    second = desk.handle_assistance(request)
    stored = desk.execution(request.context.request_id)
    assert stored is not None
    assert stored.response == first.SerializeToString(deterministic=True)
    assert second.SerializeToString(deterministic=True) == stored.response
    assert len(desk.assistance_cases()) == 1


def test_invalid_assistance_is_rejected(desk: PoliceDesk, clock: ManualClock) -> None:
    empty_task = assistance(clock)
    empty_task.order.task = ""
    bad_region = assistance(clock, region="999")
    for request in (empty_task, bad_region):
        result = desk.handle_assistance(request).result
        assert result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert desk.assistance_cases() == ()


def test_a_declining_rule_needs_a_reason() -> None:
    with pytest.raises(ValueError, match="reason"):
        AssistanceRule(complete=False)


def _report(clock: ManualClock) -> police_pb2.ReceiveFraudReportRequest:
    observed = Timestamp()
    observed.FromDatetime(START - timedelta(minutes=10))
    report = requests_pb2.FraudReport(
        kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT,
        summary="account received 50,000.00 and forwarded 35,000.00 within 15 minutes",
        accounts=[
            common_pb2.BankAccountRef(account_number="6222020200001234567", holder_name="李某"),
            common_pb2.BankAccountRef(account_number="6217000010087654321", holder_name="王某某"),
        ],
        amount=common_pb2.Money(currency="CNY", minor_units=5_000_000),
        observed_at=observed,
        region="310115",
    )
    return police_pb2.ReceiveFraudReportRequest(
        context=agency_pb2.OrderContext(request_id=new_uuid7(clock), sender="bank-icbc"), report=report
    )


def test_fraud_report_is_filed_once(desk: PoliceDesk, clock: ManualClock) -> None:
    request = _report(clock)
    response = desk.receive_fraud_report(request)
    validate_message(response)
    assert response.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert response.result.agency_reference.startswith("FR")
    assert desk.receive_fraud_report(request) == response
    (filed,) = desk.fraud_reports()
    assert (filed.request_id, filed.sender, filed.kind) == (
        request.context.request_id,
        "bank-icbc",
        "MULE_ACCOUNT",
    )
    assert (filed.accounts, filed.phones, filed.platform_accounts) == (2, 0, 0)
    assert (filed.amount, filed.currency, filed.region) == (5_000_000, "CNY", "310115")
    assert filed.observed_at == START - timedelta(minutes=10)
    assert filed.summary.startswith("account received")
    assert desk.execution_count(request.context.request_id) == 1


def test_invalid_fraud_report_is_rejected(desk: PoliceDesk, clock: ManualClock) -> None:
    request = _report(clock)
    request.report.summary = ""
    result = desk.receive_fraud_report(request).result
    assert result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    missing = police_pb2.ReceiveFraudReportRequest(context=request.context)
    assert desk.receive_fraud_report(missing).result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert desk.fraud_reports() == ()


def follow_up_request(clock: ManualClock, index: int = 0) -> police_pb2.FollowUpVictimRequest:
    ctx = context(clock)
    ctx.case_ref.legal_instrument_type = common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE
    return police_pb2.FollowUpVictimRequest(
        context=ctx,
        order=requests_pb2.FollowUp(
            return_request_id=str(uuid.uuid4()),
            payout_index=index,
            victim_id="vd-" + "a" * 40,
            returned=common_pb2.Money(currency="CNY", minor_units=40_000),
        ),
    )


def test_a_follow_up_is_recorded_and_answered_reached_with_the_advice(
    desk: PoliceDesk, clock: ManualClock
) -> None:
    request = follow_up_request(clock, 1)
    response = desk.follow_up_victim(request)
    validate_message(response)
    result = response.result
    assert result.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert result.follow_up == results_pb2.FOLLOW_UP_OUTCOME_REACHED
    assert result.detail == FollowUpRule().advice
    (record,) = desk.follow_ups()
    assert record.request_id == request.context.request_id
    assert record.reference == result.agency_reference
    assert (record.return_request_id, record.payout_index) == (request.order.return_request_id, 1)
    assert (record.victim_id, record.returned, record.currency) == (request.order.victim_id, 40_000, "CNY")
    assert (record.outcome, record.case_number) == ("REACHED", "SH-PD-2026-0302-0007")
    # Delivered again: recorded once, answered the same.
    clock.advance(timedelta(minutes=5))
    again = desk.follow_up_victim(request)
    assert again.SerializeToString(deterministic=True) == response.SerializeToString(deterministic=True)
    assert len(desk.follow_ups()) == 1


def test_the_desks_rule_decides_not_reached_and_the_advice(clock: ManualClock) -> None:
    rule = FollowUpRule(reached=False, advice="no answer after three calls; letter sent")
    with PoliceDesk(PoliceDeskConfig(agency_id="police-310000", follow_up=rule), clock=clock) as desk:
        result = desk.follow_up_victim(follow_up_request(clock)).result
        assert (result.follow_up, result.detail) == (
            results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED,
            "no answer after three calls; letter sent",
        )
        assert [r.outcome for r in desk.follow_ups()] == ["NOT_REACHED"]


def test_an_invalid_follow_up_is_rejected_and_not_recorded(desk: PoliceDesk, clock: ManualClock) -> None:
    request = follow_up_request(clock)
    request.order.return_request_id = "not-a-uuid"
    result = desk.follow_up_victim(request).result
    assert result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert desk.follow_ups() == ()


def test_a_follow_up_rule_needs_its_advice() -> None:
    with pytest.raises(ValueError, match="advice"):
        FollowUpRule(advice=" ")


def dissuasion_request(clock: ManualClock) -> police_pb2.DissuadeInPersonRequest:
    return police_pb2.DissuadeInPersonRequest(
        context=context(clock),
        order=requests_pb2.Dissuasion(
            warning_request_id=str(uuid.uuid4()),
            warning_outcome=results_pb2.WARNING_OUTCOME_UNREACHABLE,
            phone=common_pb2.PhoneRef(e164="+8618912340009"),
            region="310115",
        ),
    )


def test_an_in_person_dissuasion_is_recorded_and_answered_with_its_outcome(
    desk: PoliceDesk, clock: ManualClock
) -> None:
    request = dissuasion_request(clock)
    response = desk.dissuade_in_person(request)
    validate_message(response)
    result = response.result
    assert (result.outcome, result.warning) == (
        common_pb2.REQUEST_STATE_EXECUTED,
        results_pb2.WARNING_OUTCOME_DISSUADED,
    )
    assert result.detail == DissuasionRule().note
    (record,) = desk.dissuasions()
    assert (record.request_id, record.reference) == (request.context.request_id, result.agency_reference)
    assert (record.warning_request_id, record.warning_outcome) == (
        request.order.warning_request_id,
        "UNREACHABLE",
    )
    assert (record.region, record.target, record.outcome) == ("310115", "+8618912340009", "DISSUADED")
    # Delivered again: recorded once, answered the same.
    assert desk.dissuade_in_person(request) == response
    assert len(desk.dissuasions()) == 1


def test_the_desks_rule_decides_how_the_visit_ends(clock: ManualClock) -> None:
    rule = DissuasionRule(outcome=results_pb2.WARNING_OUTCOME_CONTINUING, note="visited; insists on paying")
    with PoliceDesk(PoliceDeskConfig(agency_id="police-310115", dissuasion=rule), clock=clock) as desk:
        result = desk.dissuade_in_person(dissuasion_request(clock)).result
        assert (result.warning, result.detail) == (
            results_pb2.WARNING_OUTCOME_CONTINUING,
            "visited; insists on paying",
        )
    with pytest.raises(ValueError, match="outcome"):
        DissuasionRule(outcome=results_pb2.WARNING_OUTCOME_UNSPECIFIED)
