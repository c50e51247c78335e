"""The broker's Prometheus metrics: what every component reports, defined in one place.

:class:`BrokerMetrics` is the switched-off default every component holds (its methods do
nothing); :class:`PrometheusBrokerMetrics` counts on a registry of its own, served by
:class:`~broker.protocol.MetricsEndpoint` when ``BrokerConfig.metrics.listen`` is set.

On the hot path only counters and histograms move, in memory, from facts the component already
has in hand (the status it just wrote, the refusal it is answering): no NATS call per message.
What costs a NATS request (consumer lag, inbox backlogs, the ledger's length and last
checkpoint) is read by :class:`~broker.protocol.GaugeTimer` every ``interval``.

Labels are bounded names only: request type, state, phase, priority, agency id (from the
directory), gRPC method, code and reason. Never a request id, case number, account or person.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import nats.js.errors
from greenchannel.v1 import common_pb2, lifecycle_pb2
from nats.js.client import JetStreamContext

from broker.protocol import (
    INBOX_STREAM,
    PRIORITIES,
    AgencyKind,
    ConsumerLoop,
    ConsumerMetrics,
    ConsumerObserver,
    Registry,
    inbox_consumer,
    phase_slug,
    request_type_name,
    state_name,
)

from ._ledger import read_ledger_figures

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["PHASE_BUCKETS", "Before", "BrokerMetrics", "PrometheusBrokerMetrics"]

PHASE_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600,
    4 * 3600, 8 * 3600, 24 * 3600, 72 * 3600,
)  # fmt: skip
"""Seconds from SUBMITTED to a phase being met: GREEN phases take milliseconds to minutes,
STANDARD ones hours to days (data requests: 8 h urgent, 3 days standard)."""


def _priority(value: common_pb2.Priority.ValueType) -> str:
    return "GREEN" if value == common_pb2.PRIORITY_GREEN else "STANDARD"


@dataclass(frozen=True, slots=True)
class Before:
    """A request's state and the phases it had met, before a write."""

    state: common_pb2.RequestState.ValueType
    met: frozenset[common_pb2.Phase.ValueType]


class BrokerMetrics:
    """Metrics switched off: every report is a no-op. The default of every component."""

    consumers: ConsumerObserver | None = None
    """What the consumer loops report to (None: nothing)."""

    def before(self, status: lifecycle_pb2.RequestStatus) -> Before | None:
        """What :meth:`status_written` compares with, taken before a change (None: off)."""
        return None

    def status_written(self, before: Before | None, status: lifecycle_pb2.RequestStatus) -> None:
        """A request's status was stored (``before``: from :meth:`before`; None for a new request)."""

    def refused(self, *, method: str, code: str, reason: str) -> None:
        """An API call was refused (an audited code)."""

    def event_refused(self, reason: str) -> None:
        """An event from an adapter was refused and changed nothing."""

    def deadline(self, kind: str, status: lifecycle_pb2.RequestStatus, phase: str) -> None:
        """A phase deadline's reminder (``kind`` "reminded") or breach ("breached") was recorded."""


class PrometheusBrokerMetrics(BrokerMetrics):
    """The broker's metrics on ``registry`` (see docs/metrics.md for each name and label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.registry = registry
        self.consumers = self._consumers = ConsumerMetrics(registry)
        self._requests = Counter(
            "greenchannel_requests",
            "Requests that entered a state, by type, state and recipient agency.",
            ["type", "state", "agency"],
            registry=registry,
        )
        self._phases = Histogram(
            "greenchannel_phase_latency_seconds",
            "Seconds from SUBMITTED until a phase (deliver, acknowledge, execute) was met.",
            ["type", "phase", "priority"],
            buckets=PHASE_BUCKETS,
            registry=registry,
        )
        self._deadlines = Counter(
            "greenchannel_deadlines",
            "Phase deadlines reminded (at the reminder share) and breached (escalated), by recipient.",
            ["kind", "type", "phase", "agency"],
            registry=registry,
        )
        self._refusals = Counter(
            "greenchannel_refusals",
            "Refused API calls, by gRPC method, status code and ErrorInfo reason.",
            ["method", "code", "reason"],
            registry=registry,
        )
        self._event_refusals = Counter(
            "greenchannel_event_refusals",
            "Adapters' events refused by the broker (unverifiable, forged, out of order), by reason.",
            ["reason"],
            registry=registry,
        )
        self._inbox_pending = Gauge(
            "greenchannel_inbox_pending",
            "Messages waiting in an agency's inbox, not yet delivered to its adapter (read every interval).",
            ["agency", "priority"],
            registry=registry,
        )
        self._inbox_ack_pending = Gauge(
            "greenchannel_inbox_ack_pending",
            "Messages an agency's adapters hold and have not answered yet (read every interval).",
            ["agency", "priority"],
            registry=registry,
        )
        self._ledger_entries = Gauge(
            "greenchannel_ledger_entries",
            "Entries in the ledger chain (read every interval).",
            registry=registry,
        )
        self._checkpoint_seq = Gauge(
            "greenchannel_ledger_checkpoint_seq",
            "Last ledger entry covered by a signed checkpoint (read every interval).",
            registry=registry,
        )
        self._checkpoint_at = Gauge(
            "greenchannel_ledger_last_checkpoint_timestamp_seconds",
            "Unix time the last signed checkpoint was stored (read every interval).",
            registry=registry,
        )
        checkpoint_age = Gauge(
            "greenchannel_ledger_last_checkpoint_age_seconds",
            "Seconds since the last signed checkpoint was stored (grows while the ledger is idle).",
            registry=registry,
        )
        self._checkpoint_time = 0.0
        checkpoint_age.set_function(
            lambda: time.time() - self._checkpoint_time if self._checkpoint_time else 0.0
        )

    # -- on the hot path: in memory ---------------------------------------------------------------

    def before(self, status: lifecycle_pb2.RequestStatus) -> Before | None:
        met = frozenset(phase.phase for phase in status.deadlines.phases if phase.HasField("done_at"))
        return Before(state=status.state, met=met)

    def status_written(self, before: Before | None, status: lifecycle_pb2.RequestStatus) -> None:
        kind = request_type_name(status.type)
        if before is None or status.state != before.state:  # not a step that keeps the state
            self._requests.labels(kind, state_name(status.state), status.recipient).inc()
        if before is None or not status.HasField("submitted_at"):
            return
        submitted = status.submitted_at.ToNanoseconds()
        for phase in status.deadlines.phases:
            if phase.HasField("done_at") and phase.phase not in before.met:  # met by this write
                seconds = max(0.0, (phase.done_at.ToNanoseconds() - submitted) / 1e9)
                self._phases.labels(kind, phase_slug(phase.phase), _priority(status.priority)).observe(
                    seconds
                )

    def refused(self, *, method: str, code: str, reason: str) -> None:
        self._refusals.labels(method, code, reason or "UNSPECIFIED").inc()

    def event_refused(self, reason: str) -> None:
        self._event_refusals.labels(reason).inc()

    def deadline(self, kind: str, status: lifecycle_pb2.RequestStatus, phase: str) -> None:
        self._deadlines.labels(kind, request_type_name(status.type), phase, status.recipient).inc()

    # -- on the timer: a few NATS requests per interval ---------------------------------------------

    async def read_consumer(self, loop: ConsumerLoop) -> None:
        await self._consumers.refresh(loop)

    async def read_inboxes(self, js: JetStreamContext, registry: Registry) -> None:
        for agency in registry.agencies():
            if agency.kind is AgencyKind.REGULATOR:  # no inbox: nothing is addressed to one
                continue
            for priority in PRIORITIES:
                try:
                    info = await js.consumer_info(INBOX_STREAM, inbox_consumer(agency.id, priority))
                except nats.js.errors.NotFoundError:  # not created yet (a new agency): nothing to show
                    continue
                self._inbox_pending.labels(agency.id, priority).set(info.num_pending or 0)
                self._inbox_ack_pending.labels(agency.id, priority).set(info.num_ack_pending or 0)

    async def read_ledger(self, js: JetStreamContext) -> None:
        figures = await read_ledger_figures(js)
        self._ledger_entries.set(figures.entries)
        self._checkpoint_seq.set(figures.checkpoint_seq)
        if figures.checkpoint_at is not None:
            self._checkpoint_time = figures.checkpoint_at.timestamp()
            self._checkpoint_at.set(self._checkpoint_time)
