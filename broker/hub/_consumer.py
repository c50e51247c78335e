"""One durable pull consumer driving a handler: the shape of every background loop of the broker.

Every replica binds the same durable consumer, so JetStream hands each message to one of them.
A message whose handler raises is not acked and comes back after ``ack_wait``: nothing is lost
to a bug or a NATS hiccup. Closing stops the pulls; the message in hand is finished first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol import ProtocolError
from broker.protocol._nats import fetch_batch

__all__ = ["ConsumerLoop", "ConsumerSpec"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class ConsumerSpec:
    """Which messages and how they are pulled."""

    name: str
    """Durable consumer name, shared by the replicas."""
    stream: str
    """The stream."""
    filter_subject: str
    """Subjects to consume."""
    batch: int
    """Messages per pull."""
    fetch_timeout: float
    """Seconds a pull waits when there is nothing to do (also bounds how fast close returns)."""
    ack_wait: float
    """Seconds before an unacked message goes to another replica."""


class ConsumerLoop:
    """``async with ConsumerLoop(js, spec, handler):`` runs ``handler(msg)`` for every message."""

    def __init__(
        self, js: JetStreamContext, spec: ConsumerSpec, handler: Callable[[Msg], Awaitable[None]]
    ) -> None:
        self._js = js
        self._spec = spec
        self._handler = handler
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> ConsumerLoop:
        spec = self._spec
        sub = await self._js.pull_subscribe(
            spec.filter_subject,
            durable=spec.name,
            stream=spec.stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=spec.ack_wait,
                max_deliver=-1,
            ),
        )
        self._task = asyncio.create_task(self._run(sub), name=spec.name)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Idempotent; returns once the loop has ended."""
        self._stopping.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        spec = self._spec
        while not self._stopping.is_set():
            try:
                msgs = await fetch_batch(sub, spec.batch, spec.fetch_timeout)
            except ProtocolError as exc:
                log.warning("consumer.fetch_failed", consumer=spec.name, error=str(exc))
                await asyncio.sleep(spec.fetch_timeout)
                continue
            for msg in msgs:
                try:
                    await self._handler(msg)
                except Exception:
                    log.exception("consumer.handle_failed", consumer=spec.name)
