"""Checks of a ``PoliceService``: assistance requests, fraud reports, appeals, victim follow-ups,
in-person dissuasion and linkage notices."""

from __future__ import annotations

from datetime import UTC, datetime

from greenchannel.v1 import common_pb2, police_pb2, police_pb2_grpc, requests_pb2, results_pb2

from ._blocking import warning_outcome
from ._generic import Check, Sample, deadline_check, malformed_check, replay_check
from ._probe import Probe, expect, expect_outcome, new_request_id, timestamp

__all__ = ["POLICE_CHECKS", "police_stub"]

police_stub = police_pb2_grpc.PoliceServiceStub

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED


def _assistance_request(probe: Probe, *, request_id: str | None = None) -> police_pb2.HandleAssistanceRequest:
    return police_pb2.HandleAssistanceRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_ASSISTANCE_LETTER
        ),
        order=requests_pb2.Assistance(
            region=probe.fixture.police_region,
            kind=requests_pb2.ASSISTANCE_KIND_LOCATE,
            task="conformance check: locate the handset of a fictional suspect",
        ),
    )


def _report_request(probe: Probe, *, request_id: str | None = None) -> police_pb2.ReceiveFraudReportRequest:
    return police_pb2.ReceiveFraudReportRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_NONE),
        report=requests_pb2.FraudReport(
            kind=requests_pb2.FRAUD_REPORT_KIND_FRAUD_CALLS,
            summary="conformance check: a fictional number calling many subscribers",
            phones=[common_pb2.PhoneRef(e164="+8617000000001")],
            observed_at=timestamp(datetime.now(UTC)),
            region=probe.fixture.police_region,
        ),
    )


def _appeal_request(probe: Probe, *, request_id: str | None = None) -> police_pb2.FileAppealRequest:
    # The sealed statement travels as the restricting agency sealed it (the desk never opens it:
    # the adapter did); its clear copy comes beside it.
    sealed = results_pb2.EncryptedPayload(
        ephemeral_public_key=bytes(32),
        nonce=bytes(12),
        ciphertext=bytes(16),
        recipient_kid="A" * 43,
        content_type=requests_pb2.AppealStatement.DESCRIPTOR.full_name,
    )
    return police_pb2.FileAppealRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_APPEAL),
        order=requests_pb2.Appeal(
            restriction_request_id=new_request_id(),
            ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED,
            statement=sealed,
        ),
        statement=requests_pb2.AppealStatement(statement="conformance check: a fictional holder's appeal"),
    )


def _follow_up_request(probe: Probe, *, request_id: str | None = None) -> police_pb2.FollowUpVictimRequest:
    return police_pb2.FollowUpVictimRequest(
        context=probe.context(
            request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE
        ),
        order=requests_pb2.FollowUp(
            return_request_id=new_request_id(),
            payout_index=0,
            victim_id="conformance-check-victim-digest",
            returned=common_pb2.Money(currency="CNY", minor_units=100),
        ),
    )


def _dissuasion_request(probe: Probe, *, request_id: str | None = None) -> police_pb2.DissuadeInPersonRequest:
    return police_pb2.DissuadeInPersonRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER),
        order=requests_pb2.Dissuasion(
            warning_request_id=new_request_id(),
            warning_outcome=results_pb2.WARNING_OUTCOME_UNREACHABLE,
            phone=common_pb2.PhoneRef(e164="+8617000000002"),
            region=probe.fixture.police_region,
        ),
    )


def _linkage_request(
    probe: Probe, *, request_id: str | None = None
) -> police_pb2.ReceiveLinkageNoticeRequest:
    seen = timestamp(datetime.now(UTC))
    cases = [
        requests_pb2.LinkedCase(
            case_number=number,
            owner=owner,
            first_seen=seen,
            source=requests_pb2.LINKAGE_SOURCE_REQUEST,
        )
        for number, owner in (
            ("CONFORMANCE-0001", "police-conformance-a"),
            ("CONFORMANCE-0002", "police-conformance-b"),
        )
    ]
    return police_pb2.ReceiveLinkageNoticeRequest(
        context=probe.context(request_id=request_id, instrument=common_pb2.LEGAL_INSTRUMENT_TYPE_NONE),
        notice=requests_pb2.LinkageNotice(
            link_id=new_request_id(),
            kind=requests_pb2.IDENTIFIER_KIND_BANK_ACCOUNT,
            identifier_digest="0" * 64,
            cases=cases,
            made_by=new_request_id(),
            linked_at=seen,
        ),
    )


async def _check_linkage(probe: Probe) -> str:
    answer = await probe.call("ReceiveLinkageNotice", _linkage_request(probe))
    expect_outcome(answer.result, EXECUTED, what="ReceiveLinkageNotice")
    return "recorded"


async def _check_assistance(probe: Probe) -> str:
    answer = await probe.call("HandleAssistance", _assistance_request(probe))
    result = answer.result
    decision = result.assistance
    if decision == results_pb2.ASSISTANCE_DECISION_COMPLETED:
        expect_outcome(result, EXECUTED, what="HandleAssistance COMPLETED")
        expect(answer.HasField("report"), "HandleAssistance COMPLETED without a report")
    elif decision == results_pb2.ASSISTANCE_DECISION_DECLINED:
        expect_outcome(result, REJECTED, results_pb2.REASON_CODE_DECLINED, what="HandleAssistance DECLINED")
    elif decision == results_pb2.ASSISTANCE_DECISION_ACCEPTED:
        expect_outcome(result, EXECUTED, what="HandleAssistance ACCEPTED")
    else:
        expect(False, "HandleAssistance: result.assistance says neither accepted, declined nor completed")
    return results_pb2.AssistanceDecision.Name(decision).removeprefix("ASSISTANCE_DECISION_")


async def _check_report(probe: Probe) -> str:
    answer = await probe.call("ReceiveFraudReport", _report_request(probe))
    expect_outcome(answer.result, EXECUTED, what="ReceiveFraudReport")
    return "received (the feedback follows through BusService.GiveFeedback)"


async def _check_dissuasion(probe: Probe) -> str:
    answer = await probe.call("DissuadeInPerson", _dissuasion_request(probe))
    expect_outcome(answer.result, EXECUTED, what="DissuadeInPerson")
    return warning_outcome(answer.result, what="DissuadeInPerson")


async def _check_appeal(probe: Probe) -> str:
    answer = await probe.call("FileAppeal", _appeal_request(probe))
    expect_outcome(answer.result, EXECUTED, what="FileAppeal")
    return "filed"


async def _check_follow_up(probe: Probe) -> str:
    answer = await probe.call("FollowUpVictim", _follow_up_request(probe))
    expect_outcome(answer.result, EXECUTED, what="FollowUpVictim")
    outcome = answer.result.follow_up
    expect(
        outcome in (results_pb2.FOLLOW_UP_OUTCOME_REACHED, results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED),
        "FollowUpVictim: result.follow_up says neither reached nor not reached",
    )
    return results_pb2.FollowUpOutcome.Name(outcome).removeprefix("FOLLOW_UP_OUTCOME_")


_FOLLOW_UP = Sample(
    method="FollowUpVictim", build=lambda probe, rid: _follow_up_request(probe, request_id=rid)
)
_DISSUASION = Sample(
    method="DissuadeInPerson", build=lambda probe, rid: _dissuasion_request(probe, request_id=rid)
)
_LINKAGE = Sample(
    method="ReceiveLinkageNotice",
    build=lambda probe, rid: _linkage_request(probe, request_id=rid),
    order_field="notice",
)
_APPEAL = Sample(method="FileAppeal", build=lambda probe, rid: _appeal_request(probe, request_id=rid))
_ASSISTANCE = Sample(
    method="HandleAssistance", build=lambda probe, rid: _assistance_request(probe, request_id=rid)
)
_REPORT = Sample(
    method="ReceiveFraudReport",
    build=lambda probe, rid: _report_request(probe, request_id=rid),
    order_field="report",
)

POLICE_CHECKS: tuple[Check, ...] = (
    Check(
        name="police.handle_assistance",
        proves="an assistance request is accepted, declined or completed with a report",
        run=_check_assistance,
    ),
    Check(
        name="police.receive_fraud_report",
        proves="a fraud report is received (EXECUTED means received; the feedback comes later)",
        run=_check_report,
    ),
    Check(
        name="police.file_appeal",
        proves="a holder's appeal is filed for decision (EXECUTED means filed)",
        run=_check_appeal,
    ),
    Check(
        name="police.follow_up_victim",
        proves="a victim follow-up is recorded: EXECUTED, the victim reached or not",
        run=_check_follow_up,
    ),
    Check(
        name="police.dissuade_in_person",
        proves="an in-person dissuasion is recorded: EXECUTED, with how it ended (result.warning)",
        run=_check_dissuasion,
    ),
    Check(
        name="police.receive_linkage_notice",
        proves="a linkage notice (串并) is recorded against the case it came under: EXECUTED",
        run=_check_linkage,
    ),
    replay_check("police", _REPORT),
    replay_check("police", _APPEAL),
    replay_check("police", _FOLLOW_UP),
    replay_check("police", _DISSUASION),
    replay_check("police", _LINKAGE),
    # Declining is a legitimate answer; whatever it is, a repeat must get the same one.
    replay_check("police", _ASSISTANCE, outcome=None),
    malformed_check("police", (_ASSISTANCE, _REPORT)),
    deadline_check("police", _REPORT),
)
