"""One durable pull consumer driving a handler: the shape of every background loop of the broker.

Every replica binds the same durable consumer, so JetStream hands each message to one of them.
A message whose handler raises is not acked and comes back after ``ack_wait``: nothing is lost
to a bug or a NATS hiccup. Closing stops the pulls; the messages in hand are finished first.

Messages are handled concurrently, up to ``concurrency`` at once, because each handler is
mostly NATS round trips: one at a time, a replica spent its time waiting. Messages with the
same key (the request they are about) are still handled one after another, in stream order,
so one request's events never race each other for its compare-and-set.

While a message is in hand it is kept alive with ``in_progress`` every third of ``ack_wait``,
so ``ack_wait`` can be short: when a replica dies, what it held goes to another one within
``ack_wait`` instead of waiting out a long timeout chosen for the slowest handler.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from broker.protocol import ProtocolError
from broker.protocol._nats import fetch_batch

__all__ = ["ConsumerLoop", "ConsumerSpec", "subject_token"]

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
    """Messages per pull (at most the free room under ``concurrency``)."""
    fetch_timeout: float
    """Seconds a pull waits when there is nothing to do (also bounds how fast close returns)."""
    ack_wait: float
    """Seconds before an unacked message goes to another replica; held ones are kept alive."""
    concurrency: int = 1
    """Messages in hand at once; those with the same key are handled one after another."""

    def __post_init__(self) -> None:
        if self.batch < 1 or self.concurrency < 1:
            raise ValueError(f"ConsumerSpec {self.name}: batch and concurrency must be >= 1")
        if self.ack_wait <= 0 or self.fetch_timeout <= 0:
            raise ValueError(f"ConsumerSpec {self.name}: ack_wait and fetch_timeout must be > 0")


def subject_token(index: int) -> Callable[[Msg], str]:
    """A key function: the ``index``-th token of the subject (e.g. the request id)."""

    def key(msg: Msg) -> str:
        tokens = msg.subject.split(".")
        return tokens[index] if -len(tokens) <= index < len(tokens) else ""

    return key


def _whole_stream(_msg: Msg) -> str:
    return ""


class ConsumerLoop:
    """``async with ConsumerLoop(js, spec, handler, key=...):`` runs ``handler(msg)`` for every message."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Callable[[Msg], Awaitable[None]],
        *,
        key: Callable[[Msg], str] | None = None,
    ) -> None:
        self._js = js
        self._spec = spec
        self._handler = handler
        # Without a key every message shares one: strictly one after another.
        self._key = key or _whole_stream
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._in_hand: dict[asyncio.Task[None], Msg] = {}
        self._tails: dict[str, asyncio.Task[None]] = {}

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
        self._heartbeat = asyncio.create_task(self._keep_alive(), name=f"{spec.name}-heartbeat")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Idempotent; returns once the loop has ended and the messages in hand are finished."""
        self._stopping.set()
        if self._task is not None:
            task, self._task = self._task, None
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._heartbeat is not None:
            heartbeat, self._heartbeat = self._heartbeat, None
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _run(self, sub: JetStreamContext.PullSubscription) -> None:
        spec = self._spec
        try:
            while not self._stopping.is_set():
                room = spec.concurrency - len(self._in_hand)
                if room <= 0:
                    await asyncio.wait(list(self._in_hand), return_when=asyncio.FIRST_COMPLETED)
                    continue
                try:
                    msgs = await fetch_batch(sub, min(spec.batch, room), spec.fetch_timeout)
                except ProtocolError as exc:
                    if self._stopping.is_set():
                        break  # the connection was closed to stop: no news
                    log.warning("consumer.fetch_failed", consumer=spec.name, error=str(exc))
                    await asyncio.sleep(spec.fetch_timeout)
                    continue
                for msg in msgs:
                    self._start(msg)
        finally:
            if self._in_hand:
                await asyncio.wait(list(self._in_hand))

    def _start(self, msg: Msg) -> None:
        key = self._key(msg)
        task = asyncio.create_task(self._handle_after(self._tails.get(key), msg))
        self._in_hand[task] = msg
        self._tails[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            self._in_hand.pop(finished, None)
            if self._tails.get(key) is finished:
                del self._tails[key]

        task.add_done_callback(done)

    async def _handle_after(self, previous: asyncio.Task[None] | None, msg: Msg) -> None:
        if previous is not None:
            # Its outcome is its own (logged there); only the order matters here.
            await asyncio.wait([previous])
        try:
            await self._handler(msg)
        except Exception:
            log.exception("consumer.handle_failed", consumer=self._spec.name)

    async def _keep_alive(self) -> None:
        """Tell JetStream every third of ack_wait that the messages in hand are still being worked on."""
        interval = self._spec.ack_wait / 3
        while True:
            await asyncio.sleep(interval)
            for msg in list(self._in_hand.values()):
                if msg.is_acked:
                    continue
                try:
                    await msg.in_progress()
                except nats.errors.Error:
                    # Disconnected: the message comes back after ack_wait and is handled again
                    # (every handler is idempotent), so there is nothing to repair here.
                    log.debug("consumer.heartbeat_failed", consumer=self._spec.name)
