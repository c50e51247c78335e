"""Operator metrics, the part every role shares: the endpoint, the consumers' figures, the gauge timer.

The broker (:mod:`broker.hub._metrics`) and the adapters (:mod:`adapters._metrics`) each define
their own metrics on a registry of their own; what both need lives here:

* :class:`MetricsConfig`: off, or on ``host:port`` (``GET /metrics``, Prometheus text format);
* :class:`MetricsEndpoint`: prometheus_client's HTTP server for one registry, in its own thread;
* :class:`ConsumerMetrics`: what every :class:`~broker.protocol.ConsumerLoop` reports: messages
  and redeliveries as they are taken (counted in memory, no NATS call), and each lane's lag read
  by :class:`GaugeTimer` every ``interval`` (one consumer-info request per lane, never per message).

``prometheus_client`` is an extra (``greenchannel[broker]``, ``greenchannel[adapter]``): it is
imported only when metrics are switched on, so the core install runs without it. Labels carry
bounded names only (consumer, agency, type, state, phase, reason), never ids, cases or accounts.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog
from nats.aio.msg import Msg

from ._consumer import ConsumerLoop, Lane
from ._errors import ProtocolError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter

__all__ = [
    "ConsumerMetrics",
    "GaugeTimer",
    "MetricsConfig",
    "MetricsEndpoint",
    "listen_problem",
    "new_registry",
]

log = structlog.get_logger(__name__)

_LISTEN = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})")


def listen_problem(value: str) -> str | None:
    """What is wrong with a ``host:port`` listen address, or None when it is fine."""
    match = _LISTEN.fullmatch(value)
    if match is None or int(match["port"]) > 65535:
        return "must be host:port (e.g. '127.0.0.1:9464'; port 0 picks a free port)"
    return None


@dataclass(frozen=True, kw_only=True)
class MetricsConfig:
    """Whether and where a role serves its Prometheus metrics."""

    listen: str | None = None
    """``host:port`` of the endpoint (``GET /metrics``); port 0 picks a free port. None: no
    metrics at all (nothing is counted, prometheus_client is not even imported)."""
    interval: float = 5.0
    """Seconds between reads of the gauges that cost a NATS request (consumer lag, ledger length)."""

    def __post_init__(self) -> None:
        if self.listen is not None and (problem := listen_problem(self.listen)) is not None:
            raise ValueError(f"MetricsConfig.listen: {problem}")
        if not self.interval > 0:
            raise ValueError(f"MetricsConfig.interval must be > 0, got {self.interval}")

    @property
    def enabled(self) -> bool:
        return self.listen is not None


def new_registry() -> CollectorRegistry:
    """A registry of its own for one role (several roles may share a process, as in ``up``)."""
    try:
        from prometheus_client import CollectorRegistry
    except ImportError as exc:  # the extra is missing
        raise ProtocolError(
            "metrics need prometheus-client: pip install 'greenchannel[broker]' or 'greenchannel[adapter]'"
        ) from exc
    return CollectorRegistry(auto_describe=True)


class MetricsEndpoint:
    """Serves one registry on ``listen`` from prometheus_client's own HTTP server thread.

    Scrapes run in that thread and read only what is in memory: a scrape never waits for the
    event loop or for NATS. ``async with MetricsEndpoint(listen, registry) as endpoint:``.
    """

    def __init__(self, listen: str, registry: CollectorRegistry) -> None:
        if (problem := listen_problem(listen)) is not None:
            raise ValueError(f"metrics listen address {listen!r}: {problem}")
        self._listen = listen
        self._registry = registry
        self._server: Any = None
        self._thread: Any = None
        self.address = ""
        """``host:port`` actually bound (the real port when 0 was asked for)."""

    def start(self) -> str:
        from prometheus_client import start_http_server

        host, _, port = self._listen.rpartition(":")
        try:
            self._server, self._thread = start_http_server(
                int(port), addr=host.strip("[]"), registry=self._registry
            )
        except OSError as exc:  # the port is taken, the host is not this machine's
            raise OSError(exc.errno, f"cannot serve metrics on {self._listen}: {exc.strerror}") from exc
        self.address = f"{host}:{self._server.server_port}"
        log.info("metrics.serving", address=self.address)
        return self.address

    def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        self._thread.join(timeout=5.0)

    async def __aenter__(self) -> MetricsEndpoint:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # shutdown() waits for the server thread's poll loop (up to half a second): not on the loop.
        await asyncio.to_thread(self.close)


class ConsumerMetrics:
    """The figures of every consumer loop of a role, labelled by consumer (lane) name.

    A :class:`~broker.protocol.ConsumerObserver`: hand it to a loop as ``observer``; and
    :meth:`refresh` reads each lane's backlog (for :class:`GaugeTimer`).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter, Gauge

        self._taken = Counter(
            "greenchannel_consumer_messages",
            "Messages taken from a JetStream consumer (deliveries, first and later).",
            ["consumer"],
            registry=registry,
        )
        self._redelivered = Counter(
            "greenchannel_consumer_redeliveries",
            "Messages taken that JetStream had delivered before (ack wait ran out, nak, a crashed instance).",
            ["consumer"],
            registry=registry,
        )
        self._pending = Gauge(
            "greenchannel_consumer_pending",
            "Consumer lag: messages in the stream not yet delivered to the consumer (read every interval).",
            ["consumer"],
            registry=registry,
        )
        self._ack_pending = Gauge(
            "greenchannel_consumer_ack_pending",
            "Messages delivered and not yet acknowledged, by every instance (read every interval).",
            ["consumer"],
            registry=registry,
        )
        self._children: dict[str, tuple[Counter, Counter]] = {}

    def delivered(self, lane: Lane, msg: Msg) -> None:
        children = self._children.get(lane.durable)
        if children is None:
            children = self._children[lane.durable] = (
                self._taken.labels(lane.durable),
                self._redelivered.labels(lane.durable),
            )
        children[0].inc()
        if (msg.metadata.num_delivered or 1) > 1:
            children[1].inc()

    async def refresh(self, loop: ConsumerLoop) -> None:
        """Read the backlog of every lane of ``loop`` (one request per lane) into the gauges."""
        for backlog in await loop.backlog():
            self._pending.labels(backlog.lane).set(backlog.pending)
            self._ack_pending.labels(backlog.lane).set(backlog.ack_pending)


class GaugeTimer:
    """Runs ``reads`` every ``interval`` seconds in a task of its own, until closed.

    A read that fails leaves its gauges as they were (NATS away: the figures stay at their last
    value until it is back); it is logged once, not on every round.
    """

    def __init__(self, interval: float, reads: Sequence[Callable[[], Awaitable[None]]], *, name: str) -> None:
        self._interval = interval
        self._reads = tuple(reads)
        self._name = name
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        failing: set[str] = set()
        while True:
            for read in self._reads:
                what = getattr(read, "__qualname__", repr(read))
                try:
                    await read()
                except Exception as exc:
                    if what not in failing:
                        failing.add(what)
                        log.warning("metrics.read_failed", timer=self._name, error_type=type(exc).__name__)
                else:
                    failing.discard(what)
            await asyncio.sleep(self._interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"{self._name}-metrics")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def __aenter__(self) -> GaugeTimer:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
