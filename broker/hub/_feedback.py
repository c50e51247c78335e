"""Feedback on fraud reports (Anti-Telecom Fraud Law art. 26): the police answer every report.

A bank, carrier or platform reports fraud to the police of a region; the police adapter records
the report as received (ACKNOWLEDGED: ``ReceiveFraudReport`` files it, as ``FileAppeal`` files an
appeal). The police give their feedback later through ``BusService.GiveFeedback`` with a signed
``FraudReportFeedback`` (JWS type ``FRAUD_REPORT_FEEDBACK``): acted on, or not actionable, with a
reason. The feedback is the report's outcome, recorded by the broker (EXECUTED with
``result.feedback``, the reason in ``detail``), its event carrying the police's signed feedback so
the ledger proves who answered, and how. The reporting agency sees it like any outcome (Get,
Watch). A report without feedback by its execute deadline escalates to the police's duty desk and
supervisor like any overdue request (:mod:`broker.hub._deadlines_watch`).

Once: a second, different feedback is refused (``FEEDBACK_ALREADY_GIVEN``) and stores nothing; the
same signed feedback again (a retry whose response was lost) is answered as the first time. Only
the police the report reached may answer it (``NOT_REPORT_RECIPIENT``), and only a FRAUD_REPORT
(``NOT_A_FRAUD_REPORT``), while it is open (``REPORT_CLOSED``: it was cancelled, or the police
adapter refused or failed it).
"""

from __future__ import annotations

import uuid

import structlog
from greenchannel.v1 import bus_pb2, common_pb2, envelope_pb2, lifecycle_pb2, results_pb2

from broker.protocol import FRAUD_REPORT_FEEDBACK_TYPE, Clock, Registry

from ._auth import Caller
from ._decisions import decided_request, record_decision
from ._errors import IllegalTransitionError
from ._events import BrokerEvents
from ._open_appeals import OPEN_APPEAL_STATES
from ._signed import signed_by_caller
from ._store import RequestStore

__all__ = ["FeedbackDesk"]

log = structlog.get_logger(__name__)

_S = common_pb2
# uuid5 namespace of the broker's feedback events: one id per (report, signed feedback), so the same
# signed feedback applied twice is one event, and another one is a second outcome (refused).
_FEEDBACK_NAMESPACE = uuid.UUID("9c4e2a71-5b3d-5f08-8e6a-1d2c3b4a5f60")


class FeedbackDesk:
    """The police's feedback on the fraud reports that reached them."""

    def __init__(
        self, *, requests: RequestStore, broker_events: BrokerEvents, registry: Registry, clock: Clock
    ) -> None:
        self._requests = requests
        self._events = broker_events
        self._registry = registry
        self._clock = clock

    async def give(self, caller: Caller, signed: envelope_pb2.SignedMessage) -> bus_pb2.GiveFeedbackResponse:
        """Record the caller's signed feedback as the report's outcome (once)."""
        feedback, claims = signed_by_caller(
            lifecycle_pb2.FraudReportFeedback,
            signed,
            jws_type=FRAUD_REPORT_FEEDBACK_TYPE,
            caller=caller,
            keys=self._registry,
            clock=self._clock,
            field="feedback",
        )
        report = await decided_request(
            self._requests,
            caller,
            feedback.report_request_id,
            request_type=_S.REQUEST_TYPE_FRAUD_REPORT,
            what="a fraud report",
            not_recipient="NOT_REPORT_RECIPIENT",
            not_type="NOT_A_FRAUD_REPORT",
        )
        event_id = str(uuid.uuid5(_FEEDBACK_NAMESPACE, f"{report.id}/{claims.jti}"))
        if report.state not in OPEN_APPEAL_STATES and report.state != _S.REQUEST_STATE_EXECUTED:
            raise IllegalTransitionError(
                f"the report ended without feedback (it is {_S.RequestState.Name(report.state)})",
                reason="REPORT_CLOSED",
            )
        # The police's own case the report went into, if any, is their reference for the reporter.
        result = results_pb2.Result(
            outcome=_S.REQUEST_STATE_EXECUTED,
            feedback=feedback.decision,
            detail=feedback.reason,
            agency_reference=feedback.case_number,
        )
        status, given = await record_decision(
            self._events,
            report,
            event_id=event_id,
            result=result,
            signed=signed,
            what="fraud report",
            reason="FEEDBACK_ALREADY_GIVEN",
        )
        if given:
            log.info(
                "fraud_report.feedback_given",
                request_id=report.id,
                police=caller.agency.id,
                decision=results_pb2.FeedbackDecision.Name(feedback.decision),
            )
        return bus_pb2.GiveFeedbackResponse(status=status)
