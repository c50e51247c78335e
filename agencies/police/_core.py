"""The reference police desk: takes assistance requests by rule, files fraud reports and appeals,
records victim follow-ups and in-person dissuasions, in SQLite."""

from __future__ import annotations

from functools import partial

from greenchannel.v1 import police_pb2

from agencies._common import AgencyCore
from broker.protocol import Clock

from . import _orders as orders
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
from ._schema import POLICE_SCHEMA

__all__ = ["PoliceDesk"]


class PoliceDesk(AgencyCore):
    """One police agency's desk for incoming bus traffic. Thread-safe; close it when done."""

    def __init__(self, config: PoliceDeskConfig, *, clock: Clock | None = None) -> None:
        super().__init__(
            agency_id=config.agency_id, database=config.database, schema=POLICE_SCHEMA, clock=clock
        )
        self._config = config
        with self._db.transaction() as conn:
            store.upgrade(conn)

    @property
    def config(self) -> PoliceDeskConfig:
        return self._config

    # -- PoliceService ----------------------------------------------------------------------------

    def handle_assistance(
        self, request: police_pb2.HandleAssistanceRequest
    ) -> police_pb2.HandleAssistanceResponse:
        """Complete with a report, or decline, by the configured rule for the assistance kind."""
        return self._run(
            "PoliceService.HandleAssistance",
            request,
            police_pb2.HandleAssistanceResponse,
            partial(orders.handle_assistance, self._config),
        )

    def receive_fraud_report(
        self, request: police_pb2.ReceiveFraudReportRequest
    ) -> police_pb2.ReceiveFraudReportResponse:
        """File a fraud report from a bank, carrier or platform."""
        return self._run(
            "PoliceService.ReceiveFraudReport",
            request,
            police_pb2.ReceiveFraudReportResponse,
            partial(orders.receive_fraud_report, self._config),
            body="report",
        )

    def file_appeal(self, request: police_pb2.FileAppealRequest) -> police_pb2.FileAppealResponse:
        """File a holder's appeal (its statement opened by the adapter) for the desk to decide."""
        return self._run(
            "PoliceService.FileAppeal",
            request,
            police_pb2.FileAppealResponse,
            partial(orders.file_appeal, request.statement),
        )

    def follow_up_victim(
        self, request: police_pb2.FollowUpVictimRequest
    ) -> police_pb2.FollowUpVictimResponse:
        """Call a victim back after a return (by the configured rule) and record it."""
        return self._run(
            "PoliceService.FollowUpVictim",
            request,
            police_pb2.FollowUpVictimResponse,
            partial(orders.follow_up_victim, self._config),
        )

    def dissuade_in_person(
        self, request: police_pb2.DissuadeInPersonRequest
    ) -> police_pb2.DissuadeInPersonResponse:
        """Dissuade a person in person after a failed warning (by the configured rule); record it."""
        return self._run(
            "PoliceService.DissuadeInPerson",
            request,
            police_pb2.DissuadeInPersonResponse,
            partial(orders.dissuade_in_person, self._config),
        )

    def receive_linkage_notice(
        self, request: police_pb2.ReceiveLinkageNoticeRequest
    ) -> police_pb2.ReceiveLinkageNoticeResponse:
        """Record the broker's linkage notice (串并) against the desk's case."""
        return self._run(
            "PoliceService.ReceiveLinkageNotice",
            request,
            police_pb2.ReceiveLinkageNoticeResponse,
            orders.receive_linkage_notice,
            body="notice",
        )

    # -- the desk's own records -------------------------------------------------------------------

    def assistance_cases(self) -> tuple[AssistanceCase, ...]:
        """Assistance requests answered, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.assistance_cases(conn))

    def fraud_reports(self) -> tuple[FiledReport, ...]:
        """Fraud reports filed, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.fraud_reports(conn))

    def appeals(self) -> tuple[FiledAppeal, ...]:
        """Appeals filed, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.appeals(conn))

    def follow_ups(self) -> tuple[VictimFollowUp, ...]:
        """Victim follow-ups recorded, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.follow_ups(conn))

    def linkage_notices(self) -> tuple[LinkageRecord, ...]:
        """Linkage notices taken, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.linkage_notices(conn))

    def dissuasions(self) -> tuple[InPersonDissuasion, ...]:
        """In-person dissuasions recorded, oldest first."""
        with self._db.transaction() as conn:
            return tuple(store.dissuasions(conn))
