"""The adapter's Prometheus metrics, defined in one place.

:class:`AdapterMetrics` is the switched-off default (every report a no-op);
:class:`PrometheusAdapterMetrics` counts on a registry (served by
:class:`~broker.protocol.MetricsEndpoint`). One instance may serve several adapters of one process
(``greenchannel up``): every metric carries the agency id as a label.

On the hot path only counters and histograms move, in memory, from what the adapter has in hand;
the inbox lag is read every ``interval`` by :class:`~broker.protocol.GaugeTimer`. Labels are the
agency id, request type, outcome state, reason and gRPC code: bounded names, never a request id,
account or number.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from broker.protocol import ConsumerLoop, ConsumerMetrics, ConsumerObserver, MetricsEndpoint, new_registry

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["CALL_BUCKETS", "AdapterMetrics", "PrometheusAdapterMetrics", "serve_adapter_metrics"]

CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
"""Seconds of one order at the agency's system, retries included."""


class AdapterMetrics:
    """Metrics switched off: every report is a no-op."""

    consumers: ConsumerObserver | None = None
    """What the inbox loop reports to (None: nothing)."""

    def answered(self, agency: str, kind: str, state: str) -> None:
        """A terminal event (``state``: EXECUTED, REJECTED, FAILED, ... or ACKNOWLEDGED for a filing)
        was published for an order of type ``kind``."""

    def replayed(self, agency: str) -> None:
        """A redelivered order found its answer in the journal and published it again."""

    def refused(self, agency: str, reason: str) -> None:
        """An inbox message was refused before any call (does not open or verify, conflicting id)."""

    def called(self, agency: str, kind: str, seconds: float) -> None:
        """The agency's system answered an order after ``seconds`` (retries included)."""

    def retried(self, agency: str, code: str) -> None:
        """A call to the agency's system failed transiently (gRPC ``code``) and will be retried."""

    async def read_inbox(self, loop: ConsumerLoop) -> None:
        """Read the inbox lanes' backlog (on the timer)."""


class PrometheusAdapterMetrics(AdapterMetrics):
    """The adapters' metrics on ``registry`` (see docs/metrics.md for each name and label)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Histogram

        self.registry = registry
        self.consumers = self._consumers = ConsumerMetrics(registry)
        self._answered = Counter(
            "greenchannel_adapter_answers",
            "Orders answered with a signed terminal event, by agency, type and outcome state.",
            ["agency", "type", "state"],
            registry=registry,
        )
        self._replayed = Counter(
            "greenchannel_adapter_replays",
            "Redelivered orders answered again from the journal (the agency system is not called twice).",
            ["agency"],
            registry=registry,
        )
        self._refused = Counter(
            "greenchannel_adapter_refusals",
            "Inbox messages refused before any call to the agency system, by reason.",
            ["agency", "reason"],
            registry=registry,
        )
        self._calls = Histogram(
            "greenchannel_adapter_call_seconds",
            "Seconds an order spent at the agency's own system, retries included.",
            ["agency", "type"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self._retries = Counter(
            "greenchannel_adapter_call_retries",
            "Transient failures of calls to the agency's system (retried), by gRPC code.",
            ["agency", "code"],
            registry=registry,
        )

    def answered(self, agency: str, kind: str, state: str) -> None:
        self._answered.labels(agency, kind, state).inc()

    def replayed(self, agency: str) -> None:
        self._replayed.labels(agency).inc()

    def refused(self, agency: str, reason: str) -> None:
        self._refused.labels(agency, reason).inc()

    def called(self, agency: str, kind: str, seconds: float) -> None:
        self._calls.labels(agency, kind).observe(seconds)

    def retried(self, agency: str, code: str) -> None:
        self._retries.labels(agency, code).inc()

    async def read_inbox(self, loop: ConsumerLoop) -> None:
        await self._consumers.refresh(loop)


async def serve_adapter_metrics(
    listen: str | None, exit_stack: contextlib.AsyncExitStack
) -> tuple[AdapterMetrics, str | None]:
    """Adapters' metrics: counted and served on ``listen`` until ``exit_stack`` closes (with the
    address bound), or, without ``listen``, not kept at all."""
    if listen is None:
        return AdapterMetrics(), None
    metrics = PrometheusAdapterMetrics(new_registry())
    endpoint = await exit_stack.enter_async_context(MetricsEndpoint(listen, metrics.registry))
    return metrics, endpoint.address
