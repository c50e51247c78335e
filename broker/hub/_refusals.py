"""Every refused API call audited: a structured log event and a ledger entry, bounded under a flood.

What is recorded of a refusal: the caller (the authenticated agency; none when the call was
refused before it was known, e.g. a bad bearer token), the RPC method, the request type the call
carried when it could be read, the gRPC status code, the ``ErrorInfo`` reason and the time.
Never the token, the body or anything from it beyond its type: refusals are recorded without
personal data.

Audited codes: UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT, FAILED_PRECONDITION and
ALREADY_EXISTS, on every method of every service. NOT_FOUND is an answer rather than a refusal,
and UNAVAILABLE / ABORTED / RESOURCE_EXHAUSTED / INTERNAL are the broker's own trouble, logged
where they happen.

**Bounding rule: a fixed window per key, the excess aggregated into one summary entry.** The key
is (caller, method, code, reason). Within ``window`` of a key's first refusal, its first
``burst`` refusals are recorded one ledger entry each (``Refusal.count`` 1) and logged as
``request.refused``; the rest of that window are only counted, and when the window ends they
become ONE summary entry (``count`` = how many, ``since`` = the first of them) and one
``request.refusals_aggregated`` log line. A flood therefore costs at most ``burst + 1`` entries
per key per window, whatever its rate, and loses no count. Keys are bounded as well: callers are
registered agencies (or none), methods, codes and reasons are the broker's own names, and past
``max_keys`` keys every further key is counted under one overflow key. The counters live in
each broker replica: N replicas record at most N times as much.

Entries reach the ledger off the call's path: the refused call is answered at once, and one
writer task publishes from a bounded queue to the ledger intake. While the queue is full (NATS
slow or away) a refusal is counted into its window's summary instead of being queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import TracebackType
from typing import Protocol

import grpc
import structlog
from greenchannel.v1 import ledger_pb2

from broker.protocol import Clock, to_timestamp

from ._metrics import BrokerMetrics

__all__ = [
    "AUDITED_CODES",
    "CallFacts",
    "RefusalAudit",
    "RefusalAuditConfig",
    "RefusalSink",
    "RefusalWriter",
    "begin_call",
    "note_caller",
    "note_message_type",
]

log = structlog.get_logger(__name__)

AUDITED_CODES = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.ALREADY_EXISTS,
    }
)
"""Status codes that are refusals of the caller's call, and so are audited."""

_OVERFLOW = (None, "*", "*", "*")


# -- what a call has told about itself so far ------------------------------------------------------


@dataclass
class CallFacts:
    """What is known of the call in hand when it is refused; filled in as the call goes."""

    caller: str | None = None
    """The authenticated agency id; None until authentication succeeded."""
    message_type: str = ""
    """The request type the call carries (``STOP_PAYMENT``, ``CANCELLATION``), once read."""


# One per RPC: grpc.aio runs every call in its own task, so each call sees only its own facts.
_CALL: ContextVar[CallFacts | None] = ContextVar("greenchannel_call_facts", default=None)


def begin_call() -> CallFacts:
    """Start the facts of a new call (the gRPC guards do, before the servicer method runs)."""
    facts = CallFacts()
    _CALL.set(facts)
    return facts


def note_caller(agency_id: str) -> None:
    """The call is authenticated as ``agency_id`` (no-op outside a guarded call)."""
    facts = _CALL.get()
    if facts is not None:
        facts.caller = agency_id


def note_message_type(name: str) -> None:
    """The call carries a request of type ``name`` (no-op outside a guarded call)."""
    facts = _CALL.get()
    if facts is not None:
        facts.message_type = name


class RefusalSink(Protocol):
    """Where the gRPC guards report each refused call (servicers carry one as ``refusals``)."""

    def refused(self, *, method: str, code: grpc.StatusCode, reason: str, facts: CallFacts) -> None:
        """Called once per refused call, after its status is known and before it is sent."""
        ...


class RefusalWriter(Protocol):
    """The ledger side (:class:`~broker.hub._ledger.LedgerWriter`)."""

    async def record_refusal(
        self, *, record_id: str, caller: str | None, refusal: ledger_pb2.Refusal, at: datetime
    ) -> None: ...


# -- the audit ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RefusalAuditConfig:
    """How refusals are bounded (see the module docstring for the rule)."""

    burst: int = 20
    """Refusals per key and window recorded one entry each; the rest go into the summary."""

    window: timedelta = timedelta(minutes=1)
    """Length of a key's window, from its first refusal."""

    max_keys: int = 10_000
    """Keys counted at once; past it, new keys share one overflow key."""

    queue: int = 1_000
    """Single entries waiting for the ledger intake; when full, refusals are summarized instead."""

    flush_interval: float = 1.0
    """Seconds between looks for windows that ended (their summaries are then written)."""

    shutdown_timeout: float = 2.0
    """Seconds the entries still queued get on shutdown (NATS may be away: then they are dropped, said so)."""

    def __post_init__(self) -> None:
        if self.burst < 0 or self.max_keys < 1 or self.queue < 1:
            raise ValueError("RefusalAuditConfig: burst >= 0, max_keys >= 1 and queue >= 1")
        if self.window <= timedelta(0) or min(self.flush_interval, self.shutdown_timeout) <= 0:
            raise ValueError(
                "RefusalAuditConfig: window, flush_interval and shutdown_timeout must be positive"
            )


_Key = tuple[str | None, str, str, str]


@dataclass
class _Window:
    started: datetime
    recorded: int = 0
    suppressed: int = 0
    first_suppressed: datetime | None = None
    types: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class _Record:
    record_id: str
    caller: str | None
    refusal: ledger_pb2.Refusal
    at: datetime


class RefusalAudit:
    """A :class:`RefusalSink` that logs and records refusals, bounded per key and window.

    ``async with RefusalAudit(writer, clock, config):`` runs the writer and the summary flusher;
    leaving the block writes every pending summary and what is queued (within
    ``shutdown_timeout``), then stops.
    """

    def __init__(
        self,
        writer: RefusalWriter,
        clock: Clock,
        config: RefusalAuditConfig | None = None,
        *,
        metrics: BrokerMetrics | None = None,
    ) -> None:
        self._metrics = metrics or BrokerMetrics()
        self._writer = writer
        self._clock = clock
        self._config = config or RefusalAuditConfig()
        self._windows: dict[_Key, _Window] = {}
        self._queue: asyncio.Queue[_Record] = asyncio.Queue()
        self._singles = 0  # single entries in the queue (summaries do not count against the bound)
        self._tasks: list[asyncio.Task[None]] = []
        self._replica = uuid.uuid4().hex[:12]
        self._closed = False
        self.counted = 0
        """Refusals seen (for metrics and tests)."""
        self.lost = 0
        """Entries that could not be written to the ledger (NATS away); each was logged."""

    async def __aenter__(self) -> RefusalAudit:
        self._tasks = [
            asyncio.create_task(self._write_forever(), name="refusal-writer"),
            asyncio.create_task(self._flush_forever(), name="refusal-flusher"),
        ]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- the sink ---------------------------------------------------------------------------------

    def refused(self, *, method: str, code: grpc.StatusCode, reason: str, facts: CallFacts) -> None:
        if code not in AUDITED_CODES:
            return
        self.counted += 1
        self._metrics.refused(method=method, code=code.name, reason=reason)
        now = self._clock.now()
        key: _Key = (facts.caller, method, code.name, reason)
        window = self._windows.get(key)
        if window is not None and now - window.started >= self._config.window:
            self._summarize(key, window, now)
            window = None
        if window is None:
            if len(self._windows) >= self._config.max_keys:
                key = _OVERFLOW
                window = self._windows.get(key)
            if window is None:
                window = self._windows[key] = _Window(started=now)
        if (
            window.recorded < self._config.burst
            and key is not _OVERFLOW
            and self._singles < self._config.queue
            and not self._closed
        ):
            window.recorded += 1
            refusal = ledger_pb2.Refusal(
                method=method, message_type=facts.message_type, code=code.name, reason=reason, count=1
            )
            self._put(_Record(f"refusal:{uuid.uuid4().hex}", facts.caller, refusal, now), single=True)
            log.warning(
                "request.refused",
                caller=facts.caller,
                method=method,
                message_type=facts.message_type or None,
                code=code.name,
                reason=reason,
            )
            return
        window.suppressed += 1
        window.first_suppressed = window.first_suppressed or now
        window.types.add(facts.message_type)

    # -- summaries ---------------------------------------------------------------------------------

    def _summarize(self, key: _Key, window: _Window, now: datetime) -> None:
        """The window of ``key`` ended: its counted refusals become one summary entry."""
        self._windows.pop(key, None)
        if not window.suppressed:
            return
        caller, method, code, reason = key
        types = window.types - {""}
        since = window.first_suppressed or window.started
        refusal = ledger_pb2.Refusal(
            method=method,
            message_type=types.pop() if len(types) == 1 else "",
            code=code,
            reason=reason,
            count=window.suppressed,
            since=to_timestamp(since),
        )
        record_id = f"refusals:{self._replica}:{uuid.uuid4().hex}"
        self._put(_Record(record_id, caller, refusal, now), single=False)
        log.warning(
            "request.refusals_aggregated",
            caller=caller,
            method=method,
            code=code,
            reason=reason,
            count=window.suppressed,
            since=since.isoformat(),
        )

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of the windows that ended (of all windows, with ``everything``)."""
        now = self._clock.now()
        for key, window in list(self._windows.items()):
            if everything or now - window.started >= self._config.window:
                self._summarize(key, window, now)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.flush_interval)
            self.flush()

    # -- writing ---------------------------------------------------------------------------------

    def _put(self, record: _Record, *, single: bool) -> None:
        if single:
            self._singles += 1
        self._queue.put_nowait(record)

    async def _write_forever(self) -> None:
        while True:
            record = await self._queue.get()
            try:
                await self._writer.record_refusal(
                    record_id=record.record_id, caller=record.caller, refusal=record.refusal, at=record.at
                )
            except Exception as exc:  # the ledger intake is away: said so, never the call's problem
                self.lost += 1
                log.warning(
                    "request.refusal_not_recorded",
                    caller=record.caller,
                    reason=record.refusal.reason,
                    count=record.refusal.count,
                    error=str(exc) or type(exc).__name__,
                )
            finally:
                if record.refusal.count == 1 and not record.refusal.HasField("since"):
                    self._singles -= 1
                self._queue.task_done()

    async def aclose(self) -> None:
        """Write every pending summary and what is queued, within ``shutdown_timeout``; stop. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.flush(everything=True)
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and not writer.done():
            try:
                await asyncio.wait_for(self._queue.join(), timeout=self._config.shutdown_timeout)
            except TimeoutError:
                left = self._queue.qsize()
                self.lost += left
                log.warning(
                    "request.refusals_not_recorded", count=left, why="shutdown while the ledger is away"
                )
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
