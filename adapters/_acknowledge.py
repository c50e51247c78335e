"""ACKNOWLEDGED only when the agency system takes its time: a quick answer travels alone.

The broker reads an outcome that follows SUBMITTED directly as delivered, acknowledged and
answered at once (it marks each phase deadline the outcome meets as done), so for a request the
agency system answers within ``acknowledge_after`` an ACKNOWLEDGED would be a durable write on
the bus that tells nobody anything. A slower answer gets its ACKNOWLEDGED when the grace is over,
never later than a share of the time left to the request's first open deliver or acknowledge
deadline: the grace never makes the adapter miss a phase deadline it would have met.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog
from greenchannel.v1 import common_pb2, envelope_pb2

from broker.protocol import NatsError

__all__ = ["DeferredAcknowledge", "acknowledge_delay"]

_log = structlog.get_logger(__name__)

_DEADLINE_SHARE = 0.25
"""Of the time left to the first deliver or acknowledge deadline, the share the grace may take:
the rest is margin for the publish and for the broker to apply the event. Small enough that a
request taken early acknowledges before the SLA's reminder (at 50 % of a phase's budget) fires."""

_ACKNOWLEDGED_BY = frozenset({common_pb2.PHASE_DELIVER, common_pb2.PHASE_ACKNOWLEDGE})


def acknowledge_delay(header: envelope_pb2.EnvelopeHeader, *, now: datetime, grace: float) -> float:
    """Seconds the adapter may wait for the agency system's answer before it sends ACKNOWLEDGED.

    ``grace`` (``AdapterConfig.acknowledge_after``), capped at a share of the time left to the
    earliest deliver or acknowledge deadline in the notarized ``header``; 0 when that deadline has
    passed or ``grace`` is 0: acknowledge at once.
    """
    if grace <= 0:
        return 0.0
    dues = [
        phase.due_at.ToDatetime(tzinfo=UTC)
        for phase in header.deadlines.phases
        if phase.phase in _ACKNOWLEDGED_BY and phase.HasField("due_at")
    ]
    if not dues:
        return grace
    left = (min(dues) - now).total_seconds()
    return max(0.0, min(grace, left * _DEADLINE_SHARE))


class DeferredAcknowledge:
    """One request's ACKNOWLEDGED, published after ``delay`` seconds unless :meth:`settle` comes first.

    A timer, not a task: the quick answer (the common case) costs one timer handle and nothing
    is published. A publish that fails is tried again every ``retry`` seconds until the outcome is
    ready, so a NATS hiccup does not leave a long call unacknowledged past its deadline. Created on
    the running loop while the agency system is being called.
    """

    def __init__(self, send: Callable[[], Awaitable[None]], delay: float, *, retry: float) -> None:
        self._send = send
        self._retry = retry
        self._settled = asyncio.Event()
        self._sending: asyncio.Task[bool] | None = None
        self._timer = asyncio.get_running_loop().call_later(delay, self._fire)

    def _fire(self) -> None:
        self._sending = asyncio.ensure_future(self._publish())

    async def _publish(self) -> bool:
        while True:
            try:
                await self._send()
            except NatsError as exc:
                _log.warning("adapter.acknowledge_not_published", error_type=type(exc).__name__)
            else:
                return True
            # Again after a pause, unless the outcome is ready meanwhile: it then says more, and
            # the broker takes it straight from SUBMITTED.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), self._retry)
            if self._settled.is_set():
                return False

    async def settle(self) -> bool:
        """Before the outcome goes out: drop the ACKNOWLEDGED not yet begun, or await its PubAck.

        Returns whether it was published. An attempt under way is finished first (the outcome
        follows its PubAck); no further attempt is made.
        """
        self._timer.cancel()
        self._settled.set()
        sending = self._sending
        if sending is None:
            return False
        await asyncio.wait({sending})  # never raises; the outcome waits for the PubAck either way
        return not sending.cancelled() and sending.result()

    def abandon(self) -> None:
        """The request ends without an outcome (shutdown, an error): publish nothing more."""
        self._timer.cancel()
        self._settled.set()
        sending = self._sending
        if sending is None:
            return
        if sending.done():
            if not sending.cancelled():
                sending.exception()  # retrieved: nothing is left to say about it
        else:
            sending.cancel()
