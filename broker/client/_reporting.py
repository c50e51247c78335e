"""Fraud reports from an agency to the police: the other direction of the bus.

A bank, carrier or platform that sees fraud (a mule account, a SIM farm, a customer about to
pay a fraudster) reports it through the bus like any request: signed with the agency's key,
routed to the police of the region it concerns (or a named police agency), tracked to a final
state. The report travels under the agency's own reference, not a police case.
"""

from __future__ import annotations

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from ._bus import BusClient

__all__ = ["FraudReporter"]


class FraudReporter:
    """Sends FRAUD_REPORTs as the agency ``bus`` speaks for."""

    def __init__(self, bus: BusClient) -> None:
        self._bus = bus

    def request(
        self,
        report: requests_pb2.FraudReport,
        *,
        reference: str,
        recipient: str = "",
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_STANDARD,
    ) -> requests_pb2.Request:
        """The report as a request; ``reference`` is the agency's own report number."""
        return requests_pb2.Request(
            case_ref=common_pb2.CaseRef(
                case_number=reference,
                issuing_agency=self._bus.agency_id,
                legal_instrument_id=reference,
                legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_NONE,
            ),
            priority=priority,
            recipient=recipient,
            fraud_report=report,
        )

    async def send(
        self,
        report: requests_pb2.FraudReport,
        *,
        reference: str,
        recipient: str = "",
        priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_STANDARD,
    ) -> lifecycle_pb2.RequestStatus:
        """Submit the report; returns its status as accepted (follow it with the bus's watch)."""
        accepted = await self._bus.submit(
            self.request(report, reference=reference, recipient=recipient, priority=priority)
        )
        return accepted.status
