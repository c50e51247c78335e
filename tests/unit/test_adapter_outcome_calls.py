"""The adapter's call table for warning outcomes and fraud-report feedback: an EXECUTED warning (or
in-person dissuasion) must say how it ended (result.warning) or the adapter fails it; a fraud
report's EXECUTED means received (ACKNOWLEDGED: the feedback comes through the Bus API).

A recording stub stands in for the agency's gRPC service (integration tests run the real ones).
"""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from greenchannel.v1 import (
    agency_pb2,
    carrier_pb2,
    common_pb2,
    envelope_pb2,
    platform_pb2,
    police_pb2,
    requests_pb2,
    results_pb2,
)

from adapters import GrpcAgencyBackend, backend_for
from adapters._answers import AnswerBuilder
from agencies import DEFAULT_DIRECTORY
from broker.protocol import AgencyKind, OpenedEnvelope, SystemClock, load_directory
from tests.unit.test_adapter_appeal_calls import Recorder, claims

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
FAILED = common_pb2.REQUEST_STATE_FAILED
WARNING = requests_pb2.Warning(
    phone=common_pb2.PhoneRef(e164="+8618912340009"),
    channel=requests_pb2.WARNING_CHANNEL_CALL,
    template_id="fraud-call-warning",
)


def opened(request: requests_pb2.Request, request_type: common_pb2.RequestType.ValueType) -> OpenedEnvelope:
    header = envelope_pb2.EnvelopeHeader(
        id="01890000-0000-7000-8000-000000000003", sender="police-310115", type=request_type
    )
    return OpenedEnvelope(header=header, request=request, sender_claims=claims(), notary_claims=claims())


def backend(kind: AgencyKind, response: Any) -> tuple[GrpcAgencyBackend, Recorder]:
    found = backend_for(kind, grpc.aio.insecure_channel("127.0.0.1:1"))
    assert isinstance(found, GrpcAgencyBackend)
    stub = Recorder(response)
    found._stub = stub
    return found, stub


def answers() -> AnswerBuilder:
    return AnswerBuilder(
        agency_id="carrier-ctcc", registry=load_directory(DEFAULT_DIRECTORY), clock=SystemClock()
    )


WARNINGS = [
    (AgencyKind.CARRIER, "WarnSubscriber", carrier_pb2.WarnSubscriberResponse, "warning", WARNING),
    (AgencyKind.PLATFORM, "WarnUser", platform_pb2.WarnUserResponse, "warning", WARNING),
    (
        AgencyKind.POLICE,
        "DissuadeInPerson",
        police_pb2.DissuadeInPersonResponse,
        "dissuasion",
        requests_pb2.Dissuasion(
            warning_request_id="01890000-0000-7000-8000-000000000004",
            warning_outcome=results_pb2.WARNING_OUTCOME_UNREACHABLE,
            phone=common_pb2.PhoneRef(e164="+8618912340009"),
            region="440305",
        ),
    ),
]


@pytest.mark.parametrize(("kind", "method", "response", "body", "order"), WARNINGS)
async def test_an_executed_warning_without_its_outcome_breaks_the_contract(
    kind: AgencyKind, method: str, response: Any, body: str, order: Any
) -> None:
    request = requests_pb2.Request(**{body: order})
    request_type = (
        common_pb2.REQUEST_TYPE_DISSUASION if body == "dissuasion" else common_pb2.REQUEST_TYPE_WARNING
    )
    silent, stub = backend(kind, response(result=results_pb2.Result(outcome=EXECUTED)))
    outcome = await silent.execute(opened(request, request_type), agency_pb2.OrderContext(), timeout=1.0)
    assert [called for called, _ in stub.sent] == [method]
    answer = answers().answer_from(opened(request, request_type), outcome)
    assert (answer.result.outcome, answer.result.reason) == (FAILED, results_pb2.REASON_CODE_INTERNAL)
    assert "result.warning" in answer.result.detail
    assert answer.deadletter == "INTERNAL"

    told = response(
        result=results_pb2.Result(outcome=EXECUTED, warning=results_pb2.WARNING_OUTCOME_UNREACHABLE)
    )
    speaking, _ = backend(kind, told)
    outcome = await speaking.execute(opened(request, request_type), agency_pb2.OrderContext(), timeout=1.0)
    answer = answers().answer_from(opened(request, request_type), outcome)
    assert (answer.result.outcome, answer.result.warning) == (
        EXECUTED,
        results_pb2.WARNING_OUTCOME_UNREACHABLE,
    )
    # A refusal needs no outcome.
    refused = response(
        result=results_pb2.Result(
            outcome=common_pb2.REQUEST_STATE_REJECTED, reason=results_pb2.REASON_CODE_NOT_FOUND
        )
    )
    refusing, _ = backend(kind, refused)
    outcome = await refusing.execute(opened(request, request_type), agency_pb2.OrderContext(), timeout=1.0)
    assert answers().answer_from(opened(request, request_type), outcome).result.reason == (
        results_pb2.REASON_CODE_NOT_FOUND
    )


async def test_a_fraud_report_executed_means_received() -> None:
    received = police_pb2.ReceiveFraudReportResponse(result=results_pb2.Result(outcome=EXECUTED))
    police, stub = backend(AgencyKind.POLICE, received)
    report = requests_pb2.Request(
        fraud_report=requests_pb2.FraudReport(kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT, summary="x")
    )
    outcome = await police.execute(
        opened(report, common_pb2.REQUEST_TYPE_FRAUD_REPORT), agency_pb2.OrderContext(), timeout=1.0
    )
    assert outcome.filed  # recorded ACKNOWLEDGED; the police's feedback is the outcome
    ((method, sent),) = stub.sent
    assert (method, sent.report.summary) == ("ReceiveFraudReport", "x")
    assert police.supports(common_pb2.REQUEST_TYPE_DISSUASION)
