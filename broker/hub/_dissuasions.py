"""In-person dissuasion (见面劝阻): a warning that did not dissuade escalates to the police.

A WARNING ends with the carrier's or platform's outcome (``result.warning``): DISSUADED,
CONTINUING or UNREACHABLE. When policy says the outcome escalates (``[warning] escalate_on``,
default unreachable and continuing), the broker sends a DISSUASION itself, signed by the broker
(:meth:`broker.hub._submit.Intake.originate`, as the victim follow-ups), to the police of the
person's region (``Warning.region``, else the region of the police owning the case; the directory's
``police_for_region``), under the warning's case reference with the warning as its parent. Its
deadlines are the SLA policy's ``dissuasion`` ones; unanswered, it escalates like any request.

The person is named in the DISSUASION as the warning named them. The broker keeps no one in
clear: at intake, the warning's body is sealed to the broker's own X25519 key
(:func:`broker.hub._warning_seed.warning_seed`, ``RequestStatus.warning_seed``) and opened here,
in memory, only to write the DISSUASION, which travels sealed to the police like every order.

The DISSUASION goes out under an idempotency key derived from the warning id, so the outcome hook
(:meth:`Dissuasions.after_outcome`, run for every outcome the events consumer processes, again
until it succeeds) sends it once however often it runs. A warning that never gets an outcome is
not escalated here: its execute deadline escalates it to the carrier's or platform's duty desk and
supervisor (the ladder of :mod:`broker.hub._deadlines_watch`).
"""

from __future__ import annotations

import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.protocol import BROKER_ID, Registry, SealingError, open_sealed

from ._policy import WarningPolicy
from ._submit import Intake

__all__ = ["Dissuasions", "dissuasion_key", "dissuasion_order"]

log = structlog.get_logger(__name__)


def dissuasion_key(warning_id: str) -> str:
    """The broker's idempotency key of a warning's DISSUASION: sent once, however often asked."""
    return f"dissuasion-{warning_id}"


def dissuasion_order(
    warning: lifecycle_pb2.RequestStatus,
    body: requests_pb2.Warning,
    *,
    police: str,
    region: str,
    priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN,
) -> requests_pb2.Request:
    """The broker's DISSUASION of a failed warning, to ``police``, naming the person as it did."""
    order = requests_pb2.Request(
        case_ref=warning.case_ref,
        priority=priority,
        recipient=police,
        parent_id=warning.id,
        dissuasion=requests_pb2.Dissuasion(
            warning_request_id=warning.id, warning_outcome=warning.result.warning, region=region
        ),
    )
    if body.WhichOneof("target") == "phone":
        order.dissuasion.phone.CopyFrom(body.phone)
    else:
        order.dissuasion.platform_account.CopyFrom(body.platform_account)
    return order


class Dissuasions:
    """Sends the in-person dissuasion of warnings that failed (an outcome hook of the events consumer)."""

    def __init__(
        self,
        *,
        intake: Intake,
        registry: Registry,
        policy: WarningPolicy,
        broker_key: x25519.X25519PrivateKey,
    ) -> None:
        self._intake = intake
        self._registry = registry
        self._policy = policy
        self._broker_key = broker_key

    async def after_outcome(self, status: lifecycle_pb2.RequestStatus) -> None:
        """A warning that ended in an outcome policy escalates: its DISSUASION (idempotent; raises
        on failure)."""
        await self.send(status)

    async def send(self, status: lifecycle_pb2.RequestStatus) -> lifecycle_pb2.RequestStatus | None:
        """Send (once) the DISSUASION of a failed warning; the order as accepted, or None."""
        if (
            status.type != common_pb2.REQUEST_TYPE_WARNING
            or status.state != common_pb2.REQUEST_STATE_EXECUTED
            or not self._policy.escalates(status.result.warning)
        ):
            return None
        body = self._opened(status)
        if body is None:
            return None
        region = status.warning_seed.region
        police = self._registry.police_for_region(region) if region else None
        if police is None:
            # No police serve the region in the directory: the case owner goes.
            police_id = status.case_ref.issuing_agency
            region = region or self._registry.get(police_id).region
        else:
            police_id = police.id
        order = dissuasion_order(
            status, body, police=police_id, region=region, priority=self._policy.priority
        )
        sent = await self._intake.originate(order, idempotency_key=dissuasion_key(status.id))
        log.info(
            "warning.dissuasion_sent",
            request_id=status.id,
            dissuasion=sent.id,
            recipient=sent.recipient,
            outcome=results_pb2.WarningOutcome.Name(status.result.warning),
        )
        return sent

    def _opened(self, status: lifecycle_pb2.RequestStatus) -> requests_pb2.Warning | None:
        """The warning's body from its seed; None (logged) when there is none or it does not open."""
        if not status.warning_seed.HasField("warning"):
            log.warning("warning.no_seed", request_id=status.id)
            return None
        try:
            clear = open_sealed(
                status.warning_seed.warning,
                self._broker_key,
                request_id=status.id,
                sender=BROKER_ID,
                recipient=BROKER_ID,
            )
        except SealingError as exc:
            log.warning("warning.seed_not_opened", request_id=status.id, error=str(exc))
            return None
        return requests_pb2.Warning.FromString(clear)
