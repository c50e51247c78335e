"""The desk's handling of each order, run inside the journalled transaction of :class:`PoliceDesk`."""

from __future__ import annotations

import sqlite3
from datetime import datetime

from greenchannel.v1 import agency_pb2, police_pb2, requests_pb2, results_pb2

from agencies._common import executed, from_timestamp, new_reference, rejected, rfc3339

from . import _store as store
from ._config import PoliceDeskConfig
from ._model import (
    AssistanceCase,
    FiledAppeal,
    FiledReport,
    InPersonDissuasion,
    LinkageRecord,
    VictimFollowUp,
)

__all__ = [
    "dissuade_in_person",
    "file_appeal",
    "follow_up_victim",
    "handle_assistance",
    "receive_fraud_report",
    "receive_linkage_notice",
]


def handle_assistance(
    config: PoliceDeskConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Assistance,
) -> police_pb2.HandleAssistanceResponse:
    kind = requests_pb2.AssistanceKind.Name(order.kind).removeprefix("ASSISTANCE_KIND_")
    reference = new_reference("XC", now)  # 协查
    rule = config.rule_for(order.kind)
    decline_reason = rule.decline_reason if not rule.complete else ""
    if config.regions and not order.region.startswith(config.regions):
        decline_reason = "region not served by this desk"
    store.insert_assistance(
        conn,
        AssistanceCase(
            request_id=ctx.request_id,
            reference=reference,
            sender=ctx.sender,
            case_number=ctx.case_ref.case_number,
            kind=kind,
            region=order.region,
            task=order.task,
            decision="declined" if decline_reason else "completed",
            at=now,
        ),
    )
    if decline_reason:
        result = rejected(results_pb2.REASON_CODE_DECLINED, decline_reason)
        result.assistance = results_pb2.ASSISTANCE_DECISION_DECLINED
        result.agency_reference = reference
        return police_pb2.HandleAssistanceResponse(result=result)
    report = results_pb2.DataAnswer()
    report.records.add().fields.update(
        {
            "kind": kind,
            "region": order.region,
            "findings": rule.findings,
            "subjects": str(len(order.accounts) + len(order.phones) + len(order.platform_accounts)),
            "completed_at": rfc3339(now),
            "desk": config.agency_id,
            "reference": reference,
        }
    )
    result = executed("assistance completed; report attached")
    result.assistance = results_pb2.ASSISTANCE_DECISION_COMPLETED
    result.agency_reference = reference
    return police_pb2.HandleAssistanceResponse(result=result, report=report)


def receive_fraud_report(
    config: PoliceDeskConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    report: requests_pb2.FraudReport,
) -> police_pb2.ReceiveFraudReportResponse:
    reference = new_reference("FR", now)
    store.insert_report(
        conn,
        FiledReport(
            request_id=ctx.request_id,
            reference=reference,
            sender=ctx.sender,
            kind=requests_pb2.FraudReportKind.Name(report.kind).removeprefix("FRAUD_REPORT_KIND_"),
            summary=report.summary,
            accounts=len(report.accounts),
            phones=len(report.phones),
            platform_accounts=len(report.platform_accounts),
            amount=report.amount.minor_units if report.HasField("amount") else None,
            currency=report.amount.currency if report.HasField("amount") else "",
            observed_at=from_timestamp(report.observed_at) if report.HasField("observed_at") else None,
            region=report.region,
            received_at=now,
        ),
    )
    # Received: the desk's feedback (acted on / not actionable) comes later, through the Bus API.
    result = executed("report received")
    result.agency_reference = reference
    return police_pb2.ReceiveFraudReportResponse(result=result)


def file_appeal(
    statement: requests_pb2.AppealStatement,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    appeal: requests_pb2.Appeal,
) -> police_pb2.FileAppealResponse:
    """File the appeal for decision; EXECUTED means filed (the decision comes later, by people)."""
    reference = new_reference("SS", now)  # 申诉
    store.insert_appeal(
        conn,
        FiledAppeal(
            request_id=ctx.request_id,
            reference=reference,
            sender=ctx.sender,
            case_number=ctx.case_ref.case_number,
            ticket=ctx.case_ref.legal_instrument_id,
            restriction_request_id=appeal.restriction_request_id,
            ground=requests_pb2.AppealGround.Name(appeal.ground).removeprefix("APPEAL_GROUND_"),
            statement=statement.statement,
            documents=len(statement.documents),
            received_at=now,
            mark_id=appeal.mark_id,
        ),
    )
    result = executed("appeal filed for decision")
    result.agency_reference = reference
    return police_pb2.FileAppealResponse(result=result)


def follow_up_victim(
    config: PoliceDeskConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.FollowUp,
) -> police_pb2.FollowUpVictimResponse:
    """Call the victim back (by the desk's rule) and record it; EXECUTED with the outcome."""
    rule = config.follow_up
    outcome = (
        results_pb2.FOLLOW_UP_OUTCOME_REACHED if rule.reached else results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED
    )
    reference = new_reference("HF", now)  # 回访
    store.insert_follow_up(
        conn,
        VictimFollowUp(
            request_id=ctx.request_id,
            reference=reference,
            case_number=ctx.case_ref.case_number,
            return_request_id=order.return_request_id,
            payout_index=order.payout_index,
            victim_id=order.victim_id,
            returned=order.returned.minor_units,
            currency=order.returned.currency,
            outcome=results_pb2.FollowUpOutcome.Name(outcome).removeprefix("FOLLOW_UP_OUTCOME_"),
            advice=rule.advice,
            at=now,
        ),
    )
    result = executed(rule.advice)
    result.follow_up = outcome
    result.agency_reference = reference
    return police_pb2.FollowUpVictimResponse(result=result)


def dissuade_in_person(
    config: PoliceDeskConfig,
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.Dissuasion,
) -> police_pb2.DissuadeInPersonResponse:
    """Go and dissuade the person (by the desk's rule) and record it; EXECUTED with the outcome."""
    rule = config.dissuasion
    if order.WhichOneof("target") == "phone":
        target = order.phone.e164
    else:
        target = f"{order.platform_account.platform}:{order.platform_account.account_id}"
    reference = new_reference("QZ", now)  # 劝阻
    store.insert_dissuasion(
        conn,
        InPersonDissuasion(
            request_id=ctx.request_id,
            reference=reference,
            case_number=ctx.case_ref.case_number,
            warning_request_id=order.warning_request_id,
            warning_outcome=results_pb2.WarningOutcome.Name(order.warning_outcome).removeprefix(
                "WARNING_OUTCOME_"
            ),
            region=order.region,
            target=target,
            outcome=results_pb2.WarningOutcome.Name(rule.outcome).removeprefix("WARNING_OUTCOME_"),
            at=now,
        ),
    )
    result = executed(rule.note)
    result.warning = rule.outcome
    result.agency_reference = reference
    return police_pb2.DissuadeInPersonResponse(result=result)


def receive_linkage_notice(
    conn: sqlite3.Connection,
    now: datetime,
    ctx: agency_pb2.OrderContext,
    order: requests_pb2.LinkageNotice,
) -> police_pb2.ReceiveLinkageNoticeResponse:
    """Record a linkage notice against the case it came under; EXECUTED (the desk's analysts take
    it from there: the notice names the other cases, never their people)."""
    reference = new_reference("CB", now)  # 串并
    store.insert_linkage(
        conn,
        LinkageRecord(
            request_id=ctx.request_id,
            reference=reference,
            case_number=ctx.case_ref.case_number,
            link_id=order.link_id,
            kind=requests_pb2.IdentifierKind.Name(order.kind).removeprefix("IDENTIFIER_KIND_"),
            digest=order.identifier_digest,
            cases=tuple(f"{case.owner}/{case.case_number}" for case in order.cases),
            cross_region=order.cross_region,
            coordinator=order.coordinator,
            at=now,
        ),
    )
    result = executed(f"linked with {len(order.cases) - 1} other case(s)")
    result.agency_reference = reference
    return police_pb2.ReceiveLinkageNoticeResponse(result=result)
