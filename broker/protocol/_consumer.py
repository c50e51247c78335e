"""The one pull-consumer loop: durable JetStream consumers (lanes) driving a handler.

Every consumer of GreenChannel runs on it: the broker's event and deadline loops (concurrent,
one request after another per key), the ledger sequencer (one batch at a time over two fair
lanes: a strict single chain) and an adapter's inbox (GREEN lane before STANDARD). The
guarantees are the loop's, so they hold for every one of them:

* **Ack after the handler.** The loop never acks. The handler acks (or terms, or naks) when it
  is done; a message whose handler raises is not acked and comes back: nothing is lost to a bug
  or a NATS hiccup. One that is left unsettled while the loop closes is naked, so another
  instance takes it at once; otherwise it comes back after ``ack_wait``.
* **Per-key order, bounded concurrency.** Up to ``concurrency`` messages are in hand at once;
  those with the same key (the request they are about) are handled one after another, in the
  order pulled, so one request's messages never race each other. Without a key they are
  independent; :func:`whole_stream` makes one strict chain.
* **Lanes.** With :attr:`LaneOrder.PRIORITY` a lane is pulled only when every lane before it has
  nothing to deliver and no message of it taken here is still holding the lower lanes back (a
  message holds them back until its handler calls :meth:`ConsumerLoop.release_lanes` or ends);
  a lane's ``limit`` bounds its messages in hand, so the lanes above always have room. Whether a
  lane has anything is asked of its consumer, not found out by a timed pull. When every lane is
  idle the loop waits on the first one. With :attr:`LaneOrder.FAIR` every lane always has a pull
  waiting, so a quiet lane never delays another.
* **Heartbeats.** Every message fetched and not yet settled gets ``in_progress`` every
  ``heartbeat_interval`` (a third of ``ack_wait``), so ``ack_wait`` can be short: when an
  instance dies, what it held goes to another within ``ack_wait``, not after a timeout chosen
  for the slowest handler.
* **Graceful drain.** Closing stops the pulls and lets the messages in hand finish (within
  ``shutdown_grace``, then they are cancelled), naks what is left unsettled, and unbinds.

Usage::

    spec = ConsumerSpec(name="gc-events", stream="GC_EVENTS", filter_subject="gc.events.>",
                        batch=64, fetch_timeout=1.0, ack_wait=6.0, concurrency=32)
    async with ConsumerLoop(js, spec, handle, key=subject_token(3)):
        ...                                  # handle(msg) runs for every message; it acks
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from ._errors import NatsError
from ._nats import fetch_batch, nats_error

__all__ = [
    "BatchHandler",
    "ConsumerLoop",
    "ConsumerObserver",
    "ConsumerSpec",
    "Lane",
    "LaneBacklog",
    "LaneBinder",
    "LaneOrder",
    "MessageHandler",
    "create_durable",
    "subject_token",
    "whole_stream",
]

log = structlog.get_logger(__name__)

MessageHandler = Callable[[Msg], Awaitable[None]]
"""Handles one message and settles it (ack / term / nak) when done."""

BatchHandler = Callable[["Lane", list[Msg]], Awaitable[None]]
"""Handles one pull of a lane (possibly empty: an idle round) and settles its messages."""


class ConsumerObserver(Protocol):
    """Told of every message a loop takes, before its handler runs (metrics: in memory, no I/O)."""

    def delivered(self, lane: Lane, msg: Msg) -> None: ...


@dataclass(frozen=True)
class LaneBacklog:
    """What a lane's durable consumer has waiting, as JetStream counts it."""

    lane: str
    """The lane's durable consumer."""
    pending: int
    """Messages not yet delivered (the consumer's lag)."""
    ack_pending: int
    """Messages delivered and not yet acknowledged, by any instance."""


class LaneBinder(Protocol):
    """Binds a pull subscription to a lane's durable consumer (creating or updating it)."""

    def __call__(
        self, js: JetStreamContext, lane: Lane, ack_wait: float
    ) -> Awaitable[JetStreamContext.PullSubscription]: ...


class LaneOrder(enum.Enum):
    """How the lanes of a loop share it."""

    PRIORITY = "priority"
    """A lane is pulled only when the lanes before it have nothing to deliver (GREEN before STANDARD)."""
    FAIR = "fair"
    """Every lane always has a pull waiting."""


@dataclass(frozen=True, kw_only=True)
class Lane:
    """One durable consumer of the loop."""

    durable: str
    """Durable consumer name, shared by every instance consuming the lane."""
    stream: str
    """The stream."""
    filter_subject: str
    """Subjects the lane consumes."""
    batch: int = 1
    """Messages per pull (at most the free room)."""
    limit: int | None = None
    """Most messages of this lane in hand at once; None: up to the loop's concurrency."""
    label: str = ""
    """Name in logs; the durable name when empty."""
    max_ack_pending: int | None = None
    """The consumer's bound on unacked messages (-1: none); None: the server's default."""
    bind: LaneBinder | None = None
    """How to bind; None: :func:`create_durable`."""

    def __post_init__(self) -> None:
        if self.batch < 1 or (self.limit is not None and self.limit < 1):
            raise ValueError(f"Lane {self.durable}: batch and limit must be >= 1")

    @property
    def name(self) -> str:
        return self.label or self.durable


@dataclass(frozen=True, kw_only=True)
class ConsumerSpec:
    """Which messages and how they are pulled.

    A single-lane loop names its consumer with ``name``, ``stream``, ``filter_subject`` and
    ``batch``; a loop of several lanes lists them in ``lanes`` (in priority order).
    """

    name: str
    """The loop's name (task names, logs); the durable consumer name of a single-lane loop."""
    fetch_timeout: float
    """Seconds a pull waits when there is nothing to do (also bounds how fast close returns)."""
    ack_wait: float
    """Seconds before an unacked message goes to another instance; held ones are kept alive."""
    stream: str = ""
    """Single lane: the stream."""
    filter_subject: str = ""
    """Single lane: subjects to consume."""
    batch: int = 1
    """Single lane: messages per pull (at most the free room under ``concurrency``)."""
    concurrency: int = 1
    """Messages in hand at once; those with the same key are handled one after another."""
    lanes: tuple[Lane, ...] = ()
    """The lanes, first served first; empty: the single lane named above."""
    order: LaneOrder = LaneOrder.PRIORITY
    """How the lanes share the loop."""
    poll_timeout: float | None = None
    """Seconds a short pull waits (a lane that has work, or while lower lanes are held back);
    None: ``fetch_timeout``."""
    refill: int = 1
    """With work in hand, wait (at most ``poll_timeout``) until this many slots are free before
    pulling again: under load a pull per freed slot costs a round trip per message."""
    heartbeat_interval: float | None = None
    """Seconds between ``in_progress`` heartbeats of held messages; None: ``ack_wait / 3``."""
    shutdown_grace: float | None = None
    """Seconds the messages in hand get to finish on close before they are cancelled; None: no limit."""
    fetch_error_pause: float | None = None
    """Seconds to wait after a failed pull; None: ``fetch_timeout``."""
    resolved_lanes: tuple[Lane, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        lanes = self.lanes or (
            Lane(durable=self.name, stream=self.stream, filter_subject=self.filter_subject, batch=self.batch),
        )
        if not self.lanes and not (self.stream and self.filter_subject):
            raise ValueError(f"ConsumerSpec {self.name}: give stream and filter_subject, or lanes")
        if self.batch < 1 or self.concurrency < 1 or self.refill < 1:
            raise ValueError(f"ConsumerSpec {self.name}: batch, concurrency and refill must be >= 1")
        if self.ack_wait <= 0 or self.fetch_timeout <= 0:
            raise ValueError(f"ConsumerSpec {self.name}: ack_wait and fetch_timeout must be > 0")
        object.__setattr__(self, "resolved_lanes", lanes)

    @property
    def heartbeat(self) -> float:
        return self.heartbeat_interval or self.ack_wait / 3

    @property
    def short_poll(self) -> float:
        return self.poll_timeout or self.fetch_timeout


def subject_token(index: int) -> Callable[[Msg], str]:
    """A key function: the ``index``-th token of the subject (e.g. the request id)."""

    def key(msg: Msg) -> str:
        tokens = msg.subject.split(".")
        return tokens[index] if -len(tokens) <= index < len(tokens) else ""

    return key


def whole_stream(_msg: Msg) -> str:
    """A key function: every message shares one key, so they are handled strictly one after another."""
    return ""


async def create_durable(
    js: JetStreamContext, lane: Lane, ack_wait: float
) -> JetStreamContext.PullSubscription:
    """The default binder: the lane's durable consumer (explicit acks, every message), created if missing."""
    return await js.pull_subscribe(
        lane.filter_subject,
        durable=lane.durable,
        stream=lane.stream,
        config=ConsumerConfig(
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=ack_wait,
            # Never give up on a message: a handler that keeps failing is a bug to fix, not data to drop.
            max_deliver=-1,
            max_ack_pending=lane.max_ack_pending,
        ),
    )


@dataclass(eq=False)
class _Held:
    msg: Msg
    lane: int
    holds_back: bool


class ConsumerLoop:
    """``async with ConsumerLoop(js, spec, handler, key=...):`` runs ``handler(msg)`` for every message.

    With ``batch_handler`` instead, each pull is handed over whole, one at a time (idle rounds
    too, as an empty list): for a consumer that must see its records as one ordered run.
    """

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: MessageHandler | None = None,
        *,
        key: Callable[[Msg], str] | None = None,
        batch_handler: BatchHandler | None = None,
        observer: ConsumerObserver | None = None,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("ConsumerLoop takes exactly one of handler and batch_handler")
        self._js = js
        self._spec = spec
        self._lanes = spec.resolved_lanes
        self._handler = handler
        self._batch_handler = batch_handler
        self._key = key
        self._observer = observer
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._task: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()  # a slot came free, or shutdown began
        self._held: dict[int, _Held] = {}  # id(msg) -> fetched, not yet finished
        self._in_hand: dict[asyncio.Task[None], int] = {}  # handler task -> lane index
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._drained = False
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Whether closing has begun (handlers that retry should give up and leave the message)."""
        return self._stopping.is_set()

    async def wait_stopping(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when closing begins: an interruptible pause for handlers."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def __aenter__(self) -> ConsumerLoop:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind every lane and start pulling; on failure nothing is left bound."""
        spec = self._spec
        try:
            for lane in self._lanes:
                bind = lane.bind or create_durable
                self._subs.append(await bind(self._js, lane, spec.ack_wait))
        except BaseException:
            await self._unbind()
            raise
        self._task = asyncio.create_task(self._run(), name=spec.name)
        self._heartbeat = asyncio.create_task(self._keep_alive(), name=f"{spec.name}-heartbeat")

    async def drain(self) -> None:
        """Stop pulling and let the messages in hand finish (cancelled after ``shutdown_grace``).

        What is then left unsettled stays held (and heartbeated) until :meth:`aclose` naks it.
        """
        if self._drained:
            return
        self._drained = True
        self._stopping.set()
        self._wake.set()
        spec = self._spec
        task = self._task
        if task is None:
            return
        # A pull ends within fetch_timeout, so the grace covers it too.
        grace = None if spec.shutdown_grace is None else spec.shutdown_grace + spec.fetch_timeout
        _done, pending = await asyncio.wait({task, *self._in_hand}, timeout=grace)
        if pending:
            log.warning("consumer.shutdown_cancels_in_flight", consumer=spec.name, tasks=len(pending))
            for waiting in pending:
                waiting.cancel()
            await asyncio.wait(pending)

    async def aclose(self) -> None:
        """Drain, nak what is left unsettled, stop heartbeats, unbind. Idempotent."""
        await self.drain()
        if self._closed:
            return
        self._closed = True
        heartbeat, self._heartbeat = self._heartbeat, None
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        await self._nak_held()
        await self._unbind()

    async def _unbind(self) -> None:
        for sub in self._subs:
            with contextlib.suppress(nats.errors.Error, ValueError):
                await sub.unsubscribe()
        self._subs.clear()

    # -- priority -------------------------------------------------------------------------------------

    def release_lanes(self, msg: Msg) -> None:
        """``msg`` no longer holds the lower lanes back (e.g. it reached the slow part of its work)."""
        held = self._held.get(id(msg))
        if held is not None:
            held.holds_back = False

    def _held_back(self, lane: int) -> bool:
        return any(held.holds_back and held.lane < lane for held in self._held.values())

    def _lane_room(self, lane: int, free: int) -> int:
        limit = self._lanes[lane].limit
        if limit is None:
            return free
        in_lane = sum(1 for index in self._in_hand.values() if index == lane)
        return min(free, min(limit, self._spec.concurrency) - in_lane)

    # -- the loop -------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            if self._batch_handler is not None:
                await self._run_batches(self._batch_handler)
            else:
                await self._run_messages()
        finally:
            if self._in_hand:
                await asyncio.wait(list(self._in_hand))

    async def _run_messages(self) -> None:
        spec = self._spec
        while not self._stopping.is_set():
            free = spec.concurrency - len(self._in_hand)
            if free < 1:
                self._wake.clear()
                await self._wake.wait()
                continue
            if free < spec.refill and self._in_hand:
                await self._slots_free(spec.refill, within=spec.short_poll)
                free = spec.concurrency - len(self._in_hand)  # still >= 1: tasks only finish meanwhile
            try:
                lane, msgs = await self._next_batch(free)
            except Exception as exc:
                # The loop must outlive anything a pull can raise, or the consumer silently stops.
                if not self._stopping.is_set():  # stopping: NATS may have been closed on purpose
                    log.warning("consumer.fetch_failed", consumer=spec.name, error_type=type(exc).__name__)
                await self.wait_stopping(spec.fetch_error_pause or spec.fetch_timeout)
                continue
            for msg in msgs:
                self._held[id(msg)] = _Held(msg=msg, lane=lane, holds_back=True)
            if self._stopping.is_set():
                break  # still held: aclose naks them for another instance
            for msg in msgs:
                self._start(msg, lane)

    async def _slots_free(self, wanted: int, *, within: float) -> None:
        """Return once ``wanted`` slots are free, after ``within`` seconds, or at shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._spec.concurrency - len(self._in_hand) < wanted and not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    async def _next_batch(self, free: int) -> tuple[int, list[Msg]]:
        """The first lane (in order) that has anything, else wait on the first lane."""
        spec = self._spec
        top = self._lanes[0]
        if len(self._lanes) == 1:
            return 0, await self._fetch(0, min(top.batch, free), spec.fetch_timeout)
        held_back = False
        for index, lane in enumerate(self._lanes):
            room = self._lane_room(index, free)
            if index > 0 and self._held_back(index):
                held_back = True
                break
            if room < 1:
                held_back = True  # at its own limit: look again soon
                continue
            if self._stopping.is_set():
                return 0, []
            if await self._has_work(index):
                msgs = await self._fetch(index, min(lane.batch, room), spec.short_poll)
                if msgs:
                    return index, msgs
        if self._stopping.is_set():
            return 0, []
        # Nothing to take now: wait on the first lane, so its message is taken the moment it lands;
        # only briefly while a lower lane is held back (by the lanes above or its own limit).
        wait = spec.short_poll if held_back else spec.fetch_timeout
        room = min(top.batch, self._lane_room(0, free))
        if room < 1:
            await self.wait_stopping(wait)
            return 0, []
        return 0, await self._fetch(0, room, wait)

    async def _fetch(self, lane: int, count: int, wait: float) -> list[Msg]:
        return await fetch_batch(self._subs[lane], count, wait)

    async def _has_work(self, lane: int) -> bool:
        """Whether the lane's consumer has messages to deliver or redeliver, besides those held here.

        ``num_ack_pending`` counts messages naked for redelivery, and also any another instance
        holds: then a pull may come back empty, which costs one ``poll_timeout``, nothing more.
        """
        held = sum(1 for message in self._held.values() if message.lane == lane)
        try:
            info = await self._subs[lane].consumer_info()
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, "consumer info") from exc
        return bool(info.num_pending) or (info.num_ack_pending or 0) > held

    async def backlog(self) -> list[LaneBacklog]:
        """Each lane's backlog (one consumer-info request per lane), for metrics read on a timer."""
        backlog = []
        for lane, sub in zip(self._lanes, list(self._subs), strict=False):
            try:
                info = await sub.consumer_info()
            except (nats.errors.Error, TimeoutError) as exc:
                raise nats_error(exc, "consumer info") from exc
            backlog.append(LaneBacklog(lane.durable, info.num_pending or 0, info.num_ack_pending or 0))
        return backlog

    def _start(self, msg: Msg, lane: int) -> None:
        if self._observer is not None:
            self._observer.delivered(self._lanes[lane], msg)
        key = None if self._key is None else self._key(msg)
        previous = None if key is None else self._tails.get(key)
        task = asyncio.create_task(self._handle_after(previous, msg), name=f"{self._spec.name}-message")
        self._in_hand[task] = lane
        if key is not None:
            self._tails[key] = task

        def done(finished: asyncio.Task[None]) -> None:
            # Here, not in the task's own finally: the loop counts free slots by tasks not yet done.
            self._in_hand.pop(finished, None)
            if key is not None and self._tails.get(key) is finished:
                del self._tails[key]
            self._release(msg)
            self._wake.set()

        task.add_done_callback(done)

    def _release(self, msg: Msg) -> None:
        """The handler is done with ``msg``: settled, or to come back after ack_wait.

        While closing, an unsettled one stays held, so :meth:`aclose` naks it for another instance.
        """
        if msg.is_acked or not self._stopping.is_set():
            self._held.pop(id(msg), None)
        else:
            held = self._held.get(id(msg))
            if held is not None:
                held.holds_back = False

    async def _handle_after(self, previous: asyncio.Task[None] | None, msg: Msg) -> None:
        if previous is not None:
            # Its outcome is its own (logged there); only the order matters here.
            await asyncio.wait([previous])
        assert self._handler is not None
        try:
            await self._handler(msg)
        except Exception:
            # Not acked: it comes back. Handlers that may quote personal data catch their own errors.
            log.exception("consumer.handle_failed", consumer=self._spec.name)

    async def _run_batches(self, handler: BatchHandler) -> None:
        """One pull at a time handed over whole; FAIR keeps one pull waiting on every lane."""
        spec = self._spec
        pulls: dict[asyncio.Task[list[Msg]], int] = {}
        try:
            while not self._stopping.is_set():
                lanes = range(len(self._lanes)) if spec.order is LaneOrder.FAIR else range(1)
                for index in set(lanes) - set(pulls.values()):
                    lane = self._lanes[index]
                    pulls[asyncio.create_task(self._fetch(index, lane.batch, spec.fetch_timeout))] = index
                done, _ = await asyncio.wait(list(pulls), return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    index = pulls.pop(task)
                    try:
                        msgs = task.result()
                    except (NatsError, nats.errors.Error, TimeoutError) as exc:
                        if not self._stopping.is_set():  # stopping: NATS may have been closed on purpose
                            error_type = type(exc).__name__
                            log.warning("consumer.fetch_failed", consumer=spec.name, error_type=error_type)
                        await self.wait_stopping(spec.fetch_error_pause or spec.fetch_timeout)
                        continue
                    for msg in msgs:
                        self._held[id(msg)] = _Held(msg=msg, lane=index, holds_back=False)
                        if self._observer is not None:
                            self._observer.delivered(self._lanes[index], msg)
                    try:
                        await handler(self._lanes[index], msgs)
                    except Exception:
                        # Not acked: they come back; the loop goes on with the next pull.
                        log.exception("consumer.handle_failed", consumer=spec.name)
                    finally:
                        for msg in msgs:
                            self._release(msg)
        finally:
            # A pull ends by itself within fetch_timeout; what it brought is naked on close.
            if pulls:
                await asyncio.wait(list(pulls))
                for task, index in pulls.items():
                    if not task.cancelled() and task.exception() is None:
                        for msg in task.result():
                            self._held[id(msg)] = _Held(msg=msg, lane=index, holds_back=False)

    # -- keeping messages alive -------------------------------------------------------------------------

    async def _keep_alive(self) -> None:
        """Tell JetStream every heartbeat interval that the messages held here are still being worked on."""
        while True:
            await asyncio.sleep(self._spec.heartbeat)
            for held in list(self._held.values()):
                if held.msg.is_acked:
                    continue
                try:
                    await held.msg.in_progress()
                except (nats.errors.Error, TimeoutError):
                    # Disconnected: the message comes back after ack_wait and is handled again
                    # (every handler is idempotent), so there is nothing to repair here.
                    log.debug("consumer.heartbeat_failed", consumer=self._spec.name)

    async def _nak_held(self) -> None:
        for held in list(self._held.values()):
            self._held.pop(id(held.msg), None)
            if held.msg.is_acked:
                continue
            try:
                await held.msg.nak()
            except (nats.errors.Error, TimeoutError) as exc:
                # It comes back after ack_wait anyway.
                log.warning("consumer.nak_failed", consumer=self._spec.name, error_type=type(exc).__name__)
