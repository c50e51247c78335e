"""The adapter runtime: an agency's inbox in, verified orders to its own system, signed events out.

Per message, in this order::

    open the sealed body with the agency's X25519 key      does not open -> refused as a bad signature
    verify (notarization, sender signature, field rules)   refused -> FAILED event + dead letter, term
    DELIVERED, then ACKNOWLEDGED, and "started" recorded   (a type the kind does not handle: REJECTED)
      meanwhile; all three durable before going on
    call the agency system (retried while transient, heartbeats meanwhile)
    seal a data answer to the requester; redact the onward transfers, their full copy sealed to
    the requester and to the broker; sign the terminal event; record it; publish it
    ack the inbox message

Nothing personal leaves the adapter in clear: not in events, dead letters or logs.

A redelivery finds the terminal event recorded and publishes the same bytes again; one that finds
only "started" (a crash or shutdown mid-call) calls again with the same request id, which every
agency service absorbs.

Up to ``concurrency`` messages are handled side by side, each in a task of its own whose steps
stay strictly in order; two copies of one request id (a redelivery, a duplicate) never run at the
same time: the second waits for the first and then replays its answer. What one message waits for
(PubAcks, the journal's fsync) it shares with the others in flight: DELIVERED and ACKNOWLEDGED
are sent back to back on the one connection and their PubAcks awaited together (JetStream stores
the publishes of one connection to one stream in the order sent, so the broker still reads
DELIVERED < ACKNOWLEDGED < outcome: the outcome goes out only after both PubAcks came back), and
the journal's writes of all messages in flight share one commit (``GroupCommitJournal``).

GREEN is always taken before STANDARD: STANDARD is only pulled when the GREEN consumer has nothing
to deliver and no GREEN message taken here is still on its way to the agency system, and at most
``standard_concurrency`` STANDARD messages are in flight, so GREEN always has slots; when both
lanes are idle the runtime waits on GREEN. Every message fetched but not yet answered gets an
``in_progress`` heartbeat every third of ``ack_wait``, so JetStream never hands it to another
instance while this one works on it. A graceful shutdown stops pulling, lets the messages in
flight finish within ``shutdown_grace`` and naks the rest for another instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self

import nats.errors
import nats.js.errors
import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, envelope_pb2, results_pb2
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.client import JetStreamContext

from broker.protocol._clock import Clock
from broker.protocol._envelope import (
    BROKER_ID,
    OpenedEnvelope,
    SealedBodyError,
    open_envelope,
    sign_event,
    type_name,
    unseal_envelope,
)
from broker.protocol._errors import (
    InvalidMessageError,
    NatsError,
    RegistryError,
    SealingError,
    VerificationError,
)
from broker.protocol._keys import PublicKey, SigningKey
from broker.protocol._nats import close_connection, connect, fetch_batch, nats_error
from broker.protocol._registry import Agency, Registry
from broker.protocol._sealing import (
    DATA_ANSWER_CONTENT_TYPE,
    DecryptionKeys,
    current_broker_encryption_key,
    current_encryption_key,
    encryption_kid,
    seal,
    seal_result_details,
)
from broker.protocol._signing import body_digest
from broker.protocol._subjects import (
    DEADLETTER_STREAM,
    EVENTS_STREAM,
    INBOX_STREAM,
    deadletter_subject,
    event_subject,
    inbox_consumer,
    inbox_filter,
    validate_request_id,
)
from broker.protocol._validation import validate_message

from ._backends import AgencyBackend, BackendOutcome, backend_for, open_agency_channel
from ._config import AdapterConfig
from ._context import order_context
from ._errors import (
    AdapterConfigError,
    AdapterError,
    AgencyCallError,
    AgencyUnavailableError,
    IdempotencyConflictError,
    UnsupportedRequestError,
)
from ._events import (
    build_event,
    deadletter_record,
    event_id_for,
    reason_name,
    refusal_event_id,
    replayable,
    state_name,
)
from ._idempotency import ExecutionRecord, ExecutionState, GroupCommitJournal, IdempotencyStore
from ._retry import Backoff

__all__ = ["LANES", "TASK_PREFIX", "AdapterRuntime"]

_log = structlog.get_logger(__name__)

LANES = ("green", "standard")
"""Inbox lanes, in the order they are served."""

TASK_PREFIX = "greenchannel-adapter"
"""Name prefix of every task a runtime starts (``<prefix>-<agency>-consume`` / ``-heartbeat`` /
``-message``)."""

# gRPC codes that say the order itself was wrong, not the agency system.
_INVALID_REQUEST_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})
# After a NATS failure in the consume loop: wait this long before pulling again.
_FETCH_ERROR_PAUSE = 1.0

_FAILED = common_pb2.REQUEST_STATE_FAILED


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class _Interrupted(Exception):
    """Shutdown began while a message waited to retry; it goes back to the stream unanswered."""


@dataclass(frozen=True, kw_only=True)
class _Answer:
    """The terminal answer to one request, and whether an operator should look at it."""

    result: results_pb2.Result
    deadletter: str | None = None
    """Reason name to dead-letter the request under, when the adapter (not the agency) failed it."""
    error: str = ""
    """Name of the error behind an adapter-made failure, for the dead letter."""


def _failure(
    reason: results_pb2.ReasonCode.ValueType,
    detail: str,
    *,
    error: str,
    outcome: common_pb2.RequestState.ValueType = _FAILED,
) -> _Answer:
    return _Answer(
        result=results_pb2.Result(outcome=outcome, reason=reason, detail=detail),
        deadletter=reason_name(reason) if outcome == _FAILED else None,
        error=error,
    )


class AdapterRuntime:
    """Runs one agency's adapter: an async context manager around the consume loop.

    ``backend`` defaults to the agency kind's gRPC service at ``config.agency_target`` (the runtime
    then owns the channel); ``nats_client`` defaults to a connection made from ``config.nats``
    (the runtime then owns and drains it). What is handed in is never closed here.
    ``decryption_keys`` are the agency's X25519 private keys, which open sealed request bodies;
    without them every sealed request is refused (FAILED, SIGNATURE_INVALID), only clear ones run.
    """

    def __init__(
        self,
        config: AdapterConfig,
        *,
        registry: Registry,
        signing_key: SigningKey,
        clock: Clock,
        backend: AgencyBackend | None = None,
        nats_client: Client | None = None,
        decryption_keys: DecryptionKeys | None = None,
    ) -> None:
        self._config = config
        self._registry = registry
        self._key = signing_key
        self._decryption_keys = _key_ring(decryption_keys)
        self._clock = clock
        self._backend = backend
        self._nc = nats_client
        self._owns_nc = nats_client is None
        self._channel: Any = None  # the grpc.aio.Channel, when the runtime opened it
        self._js: JetStreamContext | None = None
        self._store: IdempotencyStore | None = None
        self._journal: GroupCommitJournal | None = None
        self._subs: dict[str, JetStreamContext.PullSubscription] = {}
        # Fetched, not yet acked / termed / naked, with their lane; kept alive by heartbeats.
        self._held: dict[int, tuple[Msg, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # one per message in flight
        self._in_lane: dict[str, int] = dict.fromkeys(LANES, 0)  # messages in flight per lane
        # GREEN messages in flight that have not reached the agency call yet: STANDARD waits for them.
        self._green_waiting: set[int] = set()
        self._requests: dict[str, asyncio.Future[None]] = {}  # request ids in flight -> done
        self._wake = asyncio.Event()  # a slot came free, or shutdown began
        self._stopping = asyncio.Event()
        self._phase = _Phase.NEW
        self._consume_task: asyncio.Task[None] | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def agency_id(self) -> str:
        return self._config.agency_id

    @property
    def running(self) -> bool:
        """Whether the consume loop runs (started and not closing)."""
        return self._phase is _Phase.RUNNING

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Check the identity, bind the two inbox consumers and start consuming."""
        if self._phase is not _Phase.NEW:
            raise AdapterError(f"adapter {self.agency_id} was already started")
        self._phase = _Phase.RUNNING
        try:
            agency = self._check_identity()
            if self._backend is None:
                channel = open_agency_channel(
                    self._config.agency_target, reconnect_backoff_max=self._config.reconnect_backoff_max
                )
                self._channel = channel
                self._backend = backend_for(agency.kind, channel)
            if self._nc is None:
                if self._config.nats is None:
                    raise AdapterConfigError("AdapterConfig.nats is required when no NATS client is given")
                self._nc = await connect(self._config.nats)
            self._js = self._nc.jetstream(prefix=self._config.js_api_prefix)
            self._store = IdempotencyStore.in_state_dir(self._config.state_dir, clock=self._clock)
            self._journal = GroupCommitJournal(self._store)
            for lane in LANES:
                self._subs[lane] = await self._bind(self._js, lane)
        except BaseException:
            await self._release()
            self._phase = _Phase.CLOSED
            self._closed.set()
            raise
        name = f"{TASK_PREFIX}-{self.agency_id}"
        self._consume_task = asyncio.create_task(self._consume(), name=f"{name}-consume")
        self._heartbeat_task = asyncio.create_task(self._heartbeat(), name=f"{name}-heartbeat")
        _log.info("adapter.started", agency=self.agency_id, kind=str(agency.kind))

    async def aclose(self) -> None:
        """Stop fetching, let the messages in flight finish (nak the rest after the grace), release all.

        Idempotent; concurrent callers all return once the runtime is closed.
        """
        if self._phase is _Phase.CLOSED:
            return
        if self._phase is _Phase.CLOSING:
            await self._closed.wait()
            return
        if self._phase is _Phase.NEW:
            self._phase = _Phase.CLOSED
            self._closed.set()
            return
        self._phase = _Phase.CLOSING
        self._stopping.set()
        self._wake.set()
        try:
            # The consume loop starts no message once stopping is set, so these are all there are.
            tasks = {
                task for task in (self._consume_task, *self._tasks) if task is not None and not task.done()
            }
            if tasks:
                # A pull ends within idle_fetch_timeout, so the grace covers it too.
                grace = self._config.shutdown_grace + self._config.idle_fetch_timeout
                _done, pending = await asyncio.wait(tasks, timeout=grace)
                if pending:
                    _log.warning(
                        "adapter.shutdown_cancels_in_flight", agency=self.agency_id, tasks=len(pending)
                    )
                    for task in pending:
                        task.cancel()
                    await asyncio.wait(pending)
            if self._journal is not None:
                await self._journal.aclose()
            await self._nak_held()
        finally:
            await self._release()
            self._phase = _Phase.CLOSED
            self._closed.set()
            _log.info("adapter.stopped", agency=self.agency_id)

    async def _release(self) -> None:
        """Stop heartbeats, unbind, close what the runtime opened. Safe on a half-started runtime."""
        heartbeat = self._heartbeat_task
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        for sub in self._subs.values():
            with contextlib.suppress(nats.errors.Error, ValueError):
                await sub.unsubscribe()
        self._subs.clear()
        if self._store is not None:
            self._store.close()
        channel = self._channel
        if channel is not None:
            self._channel = None
            await channel.close()
        if self._owns_nc and self._nc is not None and not self._nc.is_closed:
            # Drained when NATS is there; closed at once when it is down (a drain would hang).
            outcome = await close_connection(self._nc, timeout=self._config.shutdown_grace)
            if outcome != "drained":
                _log.warning("adapter.nats_not_drained", agency=self.agency_id, nats=outcome)

    def _check_identity(self) -> Agency:
        try:
            agency = self._registry.get(self.agency_id)
        except RegistryError as exc:
            raise AdapterConfigError(f"agency {self.agency_id!r} is not in the registry") from exc
        if self._key.kid not in {key.kid for key in agency.signing_keys()}:
            # The broker would refuse every event this adapter signs.
            raise AdapterConfigError(
                f"signing key {self._key.kid} is not a registered key of {self.agency_id!r}"
            )
        keys = self._decryption_keys
        if keys is None:
            _log.warning("adapter.no_decryption_key", agency=self.agency_id)
        elif not {encryption_kid(key) for key in keys} & {key.kid for key in agency.encryption_keys()}:
            # Nothing is ever sealed to an unregistered key: every sealed request would be refused.
            raise AdapterConfigError(
                f"none of the {len(keys)} decryption keys is a registered key of {self.agency_id!r}"
            )
        return agency

    async def _bind(self, js: JetStreamContext, lane: str) -> JetStreamContext.PullSubscription:
        """Create or update the lane's durable consumer, then bind a pull subscription to it."""
        durable = inbox_consumer(self.agency_id, lane)
        config = ConsumerConfig(
            name=durable,
            durable_name=durable,
            filter_subject=inbox_filter(self.agency_id, lane),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._config.ack_wait,
            # Never give up on a message: while the agency system is down the inbox waits.
            max_deliver=-1,
        )
        try:
            # Under per-agency NATS users the broker creates the consumer and the adapter may not.
            if not await _provisioned(js, config):
                await js.add_consumer(INBOX_STREAM, config)
            return await js.pull_subscribe_bind(durable=durable, stream=INBOX_STREAM)
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, f"bind inbox consumer {durable}") from exc

    # -- consuming ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        config = self._config
        # Under load slots come free one at a time; a pull for each would cost a consumer info
        # and a fetch round trip per message. So with work in flight a pull waits (at most
        # poll_timeout) for a quarter of a batch of free slots.
        refill = max(1, min(config.batch_size, config.concurrency) // 4)
        while not self._stopping.is_set():
            free = config.concurrency - len(self._tasks)
            if free < 1:
                self._wake.clear()
                await self._wake.wait()
                continue
            if free < refill:
                await self._slots_free(refill, within=config.poll_timeout)
                free = config.concurrency - len(self._tasks)  # still >= 1: tasks only finish meanwhile
            try:
                lane, msgs = await self._next_batch(free)
            except NatsError as exc:
                _log.warning("adapter.fetch_failed", error=str(exc))
                await self._pause(_FETCH_ERROR_PAUSE)
                continue
            except Exception as exc:
                # The loop must outlive anything a pull can raise, or the inbox silently stops.
                _log.error("adapter.fetch_failed", error_type=type(exc).__name__)
                await self._pause(_FETCH_ERROR_PAUSE)
                continue
            for msg in msgs:
                self._held[id(msg)] = (msg, lane)
            if self._stopping.is_set():
                break  # still held: aclose naks them for another instance
            for msg in msgs:
                self._start_message(msg, lane)

    async def _slots_free(self, wanted: int, *, within: float) -> None:
        """Return once ``wanted`` slots are free, after ``within`` seconds, or at shutdown."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self._config.concurrency - len(self._tasks) < wanted and not self._stopping.is_set():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), remaining)

    def _start_message(self, msg: Msg, lane: str) -> None:
        self._in_lane[lane] += 1
        if lane == "green":
            self._green_waiting.add(id(msg))
        task = asyncio.create_task(self._handle(msg, lane), name=f"{TASK_PREFIX}-{self.agency_id}-message")
        self._tasks.add(task)
        task.add_done_callback(self._message_done)

    def _message_done(self, task: asyncio.Task[None]) -> None:
        # Here, not in the task's own finally: the loop counts free slots by tasks not yet done.
        self._tasks.discard(task)
        self._wake.set()

    async def _next_batch(self, free: int) -> tuple[str, list[Msg]]:
        """GREEN if it has anything, else STANDARD, else wait on GREEN; at most ``free`` messages.

        Whether a lane has anything is asked of its consumer (one API round trip) rather than
        found out by a timed pull, which would cost every STANDARD message the pull's timeout.
        """
        config = self._config
        green, standard = self._subs["green"], self._subs["standard"]
        if await self._has_work("green"):
            msgs = await fetch_batch(green, min(config.batch_size, free), config.poll_timeout)
            if msgs:
                return "green", msgs
        # Only now, with GREEN found empty and every GREEN taken here already at its agency
        # system, is STANDARD pulled, into the slots STANDARD may use.
        standard_free = min(
            free, min(config.standard_concurrency, config.concurrency) - self._in_lane["standard"]
        )
        if (
            standard_free > 0
            and not self._green_waiting
            and not self._stopping.is_set()
            and await self._has_work("standard")
        ):
            msgs = await fetch_batch(
                standard, min(config.standard_batch_size, standard_free), config.poll_timeout
            )
            if msgs:
                return "standard", msgs
        if self._stopping.is_set():
            return "green", []
        # Nothing to take now: wait on GREEN, so a green-channel order is taken the moment it
        # lands; only briefly while STANDARD is held back by GREEN in flight or its slot bound.
        held_back = bool(self._green_waiting) or standard_free < 1
        wait = config.poll_timeout if held_back else config.idle_fetch_timeout
        return "green", await fetch_batch(green, min(config.batch_size, free), wait)

    async def _has_work(self, lane: str) -> bool:
        """Whether the lane's consumer has messages to deliver or redeliver, besides those held here.

        ``num_ack_pending`` counts messages naked for redelivery, and also any another instance
        holds: then a pull may come back empty, which costs one ``poll_timeout``, nothing more.
        """
        held = sum(1 for _msg, where in self._held.values() if where == lane)
        return await _has_work(self._subs[lane], held=held)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _heartbeat(self) -> None:
        """Tell JetStream every held message is still being worked on, every ack_wait / 3."""
        while True:
            await asyncio.sleep(self._config.heartbeat_interval)
            for msg, _lane in list(self._held.values()):
                try:
                    await msg.in_progress()
                except (nats.errors.Error, TimeoutError) as exc:
                    _log.debug("adapter.heartbeat_failed", error_type=type(exc).__name__)

    async def _nak_held(self) -> None:
        for msg, _lane in list(self._held.values()):
            self._held.pop(id(msg), None)
            try:
                await msg.nak()
            except (nats.errors.Error, TimeoutError) as exc:
                # It comes back after ack_wait anyway.
                _log.warning("adapter.nak_failed", error_type=type(exc).__name__)

    async def _handle(self, msg: Msg, lane: str) -> None:
        """Process one message; nothing that goes wrong with it stops the loop or the others."""
        metadata = msg.metadata
        try:
            with structlog.contextvars.bound_contextvars(stream_seq=metadata.sequence.stream):
                try:
                    await self._process(msg)
                except _Interrupted:
                    return  # stays held; aclose naks it
                except (NatsError, AdapterError) as exc:
                    # NATS or the local store failed mid-way: every step is idempotent, so try again later.
                    _log.warning("adapter.message_retry_later", error_type=type(exc).__name__, error=str(exc))
                    await self._settle(msg, "nak")
                except Exception as exc:
                    # Only the type: the message text of an unexpected error may quote the request.
                    _log.error("adapter.message_failed", error_type=type(exc).__name__)
                    await self._settle(msg, "nak")
        finally:
            self._in_lane[lane] -= 1
            self._green_waiting.discard(id(msg))

    async def _settle(self, msg: Msg, how: Literal["ack", "term", "nak"]) -> None:
        """Ack, term or nak ``msg`` and stop holding it."""
        try:
            if how == "ack":
                await msg.ack_sync(timeout=self._config.publish_timeout)
            elif how == "term":
                await msg.term()
            else:
                await msg.nak(delay=self._config.nak_delay)
        except (nats.errors.Error, TimeoutError) as exc:
            # Redelivered after ack_wait; the idempotency store answers it then.
            _log.warning("adapter.settle_failed", how=how, error_type=type(exc).__name__)
        finally:
            # Only now: until the server has the ack, the lane's ack_pending still counts it as ours.
            self._held.pop(id(msg), None)

    @contextlib.asynccontextmanager
    async def _exclusive(self, request_id: str) -> AsyncIterator[None]:
        """One message per request id at a time: a second copy waits for the first to finish."""
        waited = False
        while (busy := self._requests.get(request_id)) is not None:
            if not waited:
                _log.info("adapter.duplicate_waits_for_first")
                waited = True
            await asyncio.wait({busy})
        if waited and self._stopping.is_set():
            raise _Interrupted
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._requests[request_id] = done
        try:
            yield
        finally:
            del self._requests[request_id]
            done.set_result(None)

    # -- one message ----------------------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        try:
            envelope = envelope_pb2.Envelope.FromString(msg.data)
        except DecodeError:
            await self._refuse(msg, None, results_pb2.REASON_CODE_INVALID_REQUEST, error="DecodeError")
            return
        try:
            # From here on ``envelope`` is the clear one, so a refusal is bound to the opened body.
            envelope = unseal_envelope(envelope, self._decryption_keys, recipient=self.agency_id)
            opened = open_envelope(envelope, keys=self._registry, recipient=self.agency_id, clock=self._clock)
            request_id = validate_request_id(opened.header.id)
        except SealedBodyError as exc:
            # The message names key ids and what failed, never content.
            _log.warning("adapter.sealed_body_not_opened", detail=str(exc))
            await self._refuse(
                msg, envelope, results_pb2.REASON_CODE_SIGNATURE_INVALID, error=type(exc).__name__
            )
            return
        except VerificationError as exc:
            await self._refuse(
                msg, envelope, results_pb2.REASON_CODE_SIGNATURE_INVALID, error=type(exc).__name__
            )
            return
        except InvalidMessageError as exc:
            await self._refuse(
                msg,
                envelope,
                results_pb2.REASON_CODE_INVALID_REQUEST,
                error=type(exc).__name__,
                fields=[violation.field for violation in exc.violations],
            )
            return
        except ValueError:
            await self._refuse(msg, envelope, results_pb2.REASON_CODE_INVALID_REQUEST, error="ValueError")
            return
        with structlog.contextvars.bound_contextvars(
            request_id=request_id,
            request_type=type_name(opened.header.type),
            sender=opened.header.sender,
        ):
            await self._execute(msg, opened, request_id, body_digest(envelope.body))

    async def _execute(self, msg: Msg, opened: OpenedEnvelope, request_id: str, digest: str) -> None:
        async with self._exclusive(request_id):
            await self._execute_alone(msg, opened, request_id, digest)

    async def _execute_alone(self, msg: Msg, opened: OpenedEnvelope, request_id: str, digest: str) -> None:
        """Execute (or replay) ``request_id``; no other message of that id runs meanwhile."""
        journal = self._require_journal()
        try:
            # On the loop, no thread hop: a point read of the last commit, and with this request id
            # held exclusively here, nothing of it can be in the middle of a write.
            record = journal.peek(request_id)
            if record is not None and record.request_digest != digest:
                raise IdempotencyConflictError(f"request {request_id} was recorded with another body")
            if record is not None and record.state is ExecutionState.TERMINAL:
                await self._replay(msg, record)
                return
            if not self._require_backend().supports(opened.header.type):
                await self._publish_states(opened, digest, common_pb2.REQUEST_STATE_DELIVERED)
                answer = _failure(
                    results_pb2.REASON_CODE_NOT_AUTHORIZED,
                    f"{self.agency_id} does not handle {type_name(opened.header.type)} requests",
                    error="UnsupportedRequestError",
                    outcome=common_pb2.REQUEST_STATE_REJECTED,
                )
                await self._finish(msg, opened, digest, answer)
                return
            # "started" is committed while DELIVERED and ACKNOWLEDGED travel: the agency system is
            # called only once all three are durable. A publish that fails leaves "started" behind
            # with no call made; the next delivery counts one start too many, nothing worse.
            started, _ = await asyncio.gather(
                journal.mark_started(request_id, digest),
                self._publish_states(
                    opened, digest, common_pb2.REQUEST_STATE_DELIVERED, common_pb2.REQUEST_STATE_ACKNOWLEDGED
                ),
            )
            if started.state is ExecutionState.TERMINAL:
                await self._replay(msg, started)
                return
            if started.starts > 1:
                _log.info("adapter.resuming", starts=started.starts)
            # At its agency system: from now on this GREEN message no longer holds STANDARD back.
            self._green_waiting.discard(id(msg))
            answer = await self._call_agency(opened)
        except IdempotencyConflictError:
            # The same id with another body: answering either way would misattribute a result.
            _log.error("adapter.request_id_conflict")
            await self._deadletter(msg, request_id, "CONFLICTING_REQUEST", "IdempotencyConflictError")
            await self._settle(msg, "term")
            return
        await self._finish(msg, opened, digest, answer)

    async def _replay(self, msg: Msg, record: ExecutionRecord) -> None:
        await self._publish_terminal(record)
        _log.info("adapter.replayed_terminal_event", event_id=record.event_id)
        await self._settle(msg, "ack")

    async def _publish_terminal(self, record: ExecutionRecord) -> None:
        """Publish the recorded terminal event: the same id, and the same bytes while they verify."""
        if record.terminal_event is None or record.event_id is None:
            raise AdapterError(f"request {record.request_id} has no terminal event recorded")
        data = replayable(record.terminal_event, key=self._key, keys=self._registry, clock=self._clock)
        if data != record.terminal_event:
            _log.info("adapter.terminal_event_resigned", event_id=record.event_id)
        await self._publish(
            event_subject(self.agency_id, record.request_id), data, record.event_id, stream=EVENTS_STREAM
        )

    async def _call_agency(self, opened: OpenedEnvelope) -> _Answer:
        """Call the agency system until it answers, a non-transient error, or the retry budget ends."""
        config = self._config
        backend = self._require_backend()
        context = order_context(opened)
        loop = asyncio.get_running_loop()
        started = loop.time()
        backoff = Backoff(config.retry_initial, config.retry_max)
        attempt = 0
        while True:
            attempt += 1
            try:
                outcome = await backend.execute(opened, context, timeout=config.call_timeout)
            except AgencyUnavailableError as exc:
                elapsed = loop.time() - started
                if elapsed >= config.retry_budget:
                    _log.warning("adapter.agency_unavailable", attempts=attempt, code=exc.code)
                    return _failure(
                        results_pb2.REASON_CODE_AGENCY_UNAVAILABLE,
                        f"agency system unavailable: {attempt} attempts in {elapsed:.1f} s, last {exc.code}",
                        error=type(exc).__name__,
                    )
                delay = min(backoff.next(), config.retry_budget - elapsed)
                _log.info("adapter.agency_retry", attempt=attempt, code=exc.code, delay=round(delay, 3))
                await self._pause(delay)
                if self._stopping.is_set():
                    raise _Interrupted from exc
                continue
            except AgencyCallError as exc:
                _log.warning("adapter.agency_call_failed", attempt=attempt, code=exc.code)
                reason = (
                    results_pb2.REASON_CODE_INVALID_REQUEST
                    if exc.code in _INVALID_REQUEST_CODES
                    else results_pb2.REASON_CODE_INTERNAL
                )
                return _failure(
                    reason, f"agency system refused the call: {exc.code}", error=type(exc).__name__
                )
            except UnsupportedRequestError as exc:
                return _failure(
                    results_pb2.REASON_CODE_NOT_AUTHORIZED,
                    str(exc),
                    error=type(exc).__name__,
                    outcome=common_pb2.REQUEST_STATE_REJECTED,
                )
            return self._answer_from(opened, outcome)

    def _answer_from(self, opened: OpenedEnvelope, outcome: BackendOutcome) -> _Answer:
        """The agency's result, checked against the contract, with any data answer sealed and the
        onward transfers redacted (their full copy sealed to the requester and the broker)."""
        result = results_pb2.Result()
        result.CopyFrom(outcome.result)
        # Only the adapter seals; whatever the agency system put here is not ours to forward.
        for sealed_field in ("encrypted_payload", "sealed_details", "broker_details"):
            result.ClearField(sealed_field)
        try:
            validate_message(result, prefix="result.")
        except InvalidMessageError as exc:
            _log.warning("adapter.agency_result_invalid", fields=[v.field for v in exc.violations])
            return _failure(
                results_pb2.REASON_CODE_INTERNAL,
                "agency system answered with a result that breaks the contract",
                error=type(exc).__name__,
            )
        if outcome.answer is not None:
            try:
                result.encrypted_payload.CopyFrom(self._seal_answer(opened, outcome.answer))
            except SealingError as exc:
                _log.warning("adapter.answer_not_sealed", error=str(exc))
                return _failure(
                    results_pb2.REASON_CODE_INTERNAL,
                    "the answer could not be sealed to the requester",
                    error=type(exc).__name__,
                )
        if result.onward_transfers:
            result = self._seal_details(opened, result)
        return _Answer(result=result)

    def _seal_details(self, opened: OpenedEnvelope, result: results_pb2.Result) -> results_pb2.Result:
        """Redact the onward transfers; seal their full copy to the requester and to the broker.

        The agency has already acted (a hold is in place), so a copy that cannot be sealed is left
        out and logged rather than turning the answer into a failure; the transfers are redacted
        whatever happens.
        """
        now = self._clock.now()
        requester = opened.header.sender
        requester_key: PublicKey | None = None
        broker_key: PublicKey | None = None
        try:
            broker_key = current_broker_encryption_key(self._registry, at=now)
        except SealingError as exc:
            _log.warning("adapter.details_not_sealed_to_broker", error=str(exc))
        if requester == BROKER_ID:
            # The broker asked itself (a chase, the release of a lapsed hold): both copies are its own.
            requester_key = broker_key
        else:
            try:
                requester_key = current_encryption_key(self._registry.get(requester), at=now)
            except (RegistryError, SealingError) as exc:
                _log.warning("adapter.details_not_sealed_to_requester", error=str(exc))

        def sealed(to_requester: PublicKey | None, to_broker: PublicKey | None) -> results_pb2.Result:
            return seal_result_details(
                result,
                request_id=opened.header.id,
                sender=self.agency_id,
                recipient=requester,
                requester_key=to_requester,
                broker_key=to_broker,
            )

        try:
            return sealed(requester_key, broker_key)
        except SealingError as exc:
            _log.warning("adapter.details_not_sealed", error=str(exc))
            return sealed(None, None)

    def _seal_answer(
        self, opened: OpenedEnvelope, answer: results_pb2.DataAnswer
    ) -> results_pb2.EncryptedPayload:
        requester = opened.header.sender
        try:
            agency = self._registry.get(requester)
        except RegistryError as exc:
            raise SealingError(f"requester {requester!r} is not in the registry") from exc
        return seal(
            answer.SerializeToString(),
            current_encryption_key(agency, at=self._clock.now()),
            request_id=opened.header.id,
            sender=self.agency_id,
            recipient=requester,
            content_type=DATA_ANSWER_CONTENT_TYPE,
        )

    async def _finish(self, msg: Msg, opened: OpenedEnvelope, digest: str, answer: _Answer) -> None:
        """Sign, record, publish the terminal event; dead-letter adapter-made failures; ack."""
        request_id = opened.header.id
        result = answer.result
        event = build_event(
            event_id=event_id_for(request_id, result.outcome),
            request_id=request_id,
            state=result.outcome,
            actor=self.agency_id,
            at=self._clock.now(),
            request_digest=digest,
            reason=result.reason,
            detail=result.detail,
            result=result,
        )
        signed = sign_event(event, key=self._key, clock=self._clock).SerializeToString()
        # Recorded (durably) before it is published: from here on a redelivery replays it, never
        # re-executes.
        record = await self._require_journal().record_terminal(
            request_id, digest, event_id=event.event_id, signed_event=signed
        )
        if record.terminal_event == signed:
            # Signed a moment ago: publish as is (no re-verification, unlike a replay).
            publish = self._publish(
                event_subject(self.agency_id, request_id), signed, event.event_id, stream=EVENTS_STREAM
            )
        else:
            publish = self._publish_terminal(record)  # another answer was recorded first: it stands
        if answer.deadletter is not None:
            # Independent streams: the operator's record travels beside the answer.
            await asyncio.gather(publish, self._deadletter(msg, request_id, answer.deadletter, answer.error))
        else:
            await publish
        _log.info(
            "adapter.answered",
            state=state_name(result.outcome),
            reason=reason_name(result.reason),
            sealed=result.HasField("encrypted_payload"),
            onward_transfers=len(result.onward_transfers),
            details_sealed=result.HasField("sealed_details"),
        )
        await self._settle(msg, "ack")

    async def _publish_states(
        self, opened: OpenedEnvelope, digest: str, *states: common_pb2.RequestState.ValueType
    ) -> None:
        """Publish progress events of ``opened`` in this order; return once all are PubAck'ed."""
        request_id = opened.header.id
        subject = event_subject(self.agency_id, request_id)
        batch: list[tuple[bytes, str]] = []
        for state in states:
            event = build_event(
                event_id=event_id_for(request_id, state),
                request_id=request_id,
                state=state,
                actor=self.agency_id,
                at=self._clock.now(),
                request_digest=digest,
            )
            batch.append(
                (sign_event(event, key=self._key, clock=self._clock).SerializeToString(), event.event_id)
            )
        await self._publish_in_order(subject, batch, stream=EVENTS_STREAM)

    # -- refusals and dead letters --------------------------------------------------------------

    async def _refuse(
        self,
        msg: Msg,
        envelope: envelope_pb2.Envelope | None,
        reason: results_pb2.ReasonCode.ValueType,
        *,
        error: str,
        fields: list[str] | None = None,
    ) -> None:
        """A message that did not verify: never executed, answered FAILED if it names a request."""
        request_id = _claimed_request_id(envelope, msg)
        _log.warning(
            "adapter.refused",
            claimed_request_id=request_id,
            reason=reason_name(reason),
            error_type=error,
        )
        if envelope is not None and request_id is not None:
            digest = _received_digest(envelope)
            detail = f"the message did not verify ({error}); nothing was executed"
            event = build_event(
                event_id=refusal_event_id(request_id, digest),
                request_id=request_id,
                state=_FAILED,
                actor=self.agency_id,
                at=self._clock.now(),
                request_digest=digest,
                reason=reason,
                detail=detail,
                result=results_pb2.Result(outcome=_FAILED, reason=reason, detail=detail),
            )
            signed = sign_event(event, key=self._key, clock=self._clock)
            await self._publish(
                event_subject(self.agency_id, request_id),
                signed.SerializeToString(),
                event.event_id,
                stream=EVENTS_STREAM,
            )
        await self._deadletter(msg, request_id, reason_name(reason), error, fields=fields or [])
        await self._settle(msg, "term")

    async def _deadletter(
        self,
        msg: Msg,
        request_id: str | None,
        reason: str,
        error: str,
        *,
        fields: list[str] | None = None,
    ) -> None:
        metadata = msg.metadata
        record = deadletter_record(
            agency=self.agency_id,
            reason=reason,
            error=error,
            at=self._clock.now(),
            stream=metadata.stream,
            stream_seq=metadata.sequence.stream,
            subject=msg.subject,
            deliveries=metadata.num_delivered,
            request_id=request_id,
            fields=fields or [],
        )
        # One record per inbox message, however often it is redelivered.
        msg_id = f"deadletter/{self.agency_id}/{metadata.stream}/{metadata.sequence.stream}"
        await self._publish(deadletter_subject(self.agency_id), record, msg_id, stream=DEADLETTER_STREAM)

    # -- plumbing -------------------------------------------------------------------------------

    async def _publish(self, subject: str, data: bytes, msg_id: str, *, stream: str) -> None:
        js = self._js
        assert js is not None
        try:
            ack = await js.publish(
                subject,
                data,
                timeout=self._config.publish_timeout,
                stream=stream,
                headers={"Nats-Msg-Id": msg_id},
            )
        except (nats.errors.Error, TimeoutError) as exc:
            raise nats_error(exc, f"publish to {subject}") from exc
        if ack.duplicate:
            _log.debug("adapter.publish_deduplicated", subject=subject, msg_id=msg_id)

    async def _publish_in_order(self, subject: str, batch: list[tuple[bytes, str]], *, stream: str) -> None:
        """Publish ``(data, msg_id)`` pairs to ``subject`` in order, awaiting their PubAcks together.

        ``publish_async`` returns once a message is in this connection's write buffer, so each one
        is sent after the one before; the server stores the publishes of one connection to one
        stream in the order they arrive. One round trip for all of them instead of one each.
        """
        js = self._js
        assert js is not None
        acks: list[asyncio.Future[PubAck]] = []
        try:
            for data, msg_id in batch:
                acks.append(
                    await js.publish_async(subject, data, stream=stream, headers={"Nats-Msg-Id": msg_id})
                )
            async with asyncio.timeout(self._config.publish_timeout):
                results = await asyncio.gather(*acks)
        except (nats.errors.Error, TimeoutError) as exc:
            for ack in acks:
                ack.cancel()  # also drops it from the context's table of pending acks
            raise nats_error(exc, f"publish to {subject}") from exc
        for (_data, msg_id), result in zip(batch, results, strict=True):
            if result.duplicate:
                _log.debug("adapter.publish_deduplicated", subject=subject, msg_id=msg_id)

    def _require_journal(self) -> GroupCommitJournal:
        assert self._journal is not None, "started runtimes have a journal"
        return self._journal

    def _require_backend(self) -> AgencyBackend:
        assert self._backend is not None, "started runtimes have a backend"
        return self._backend


async def _provisioned(js: JetStreamContext, want: ConsumerConfig) -> bool:
    """Whether the lane's consumer already exists as ``want`` describes it: then only bind."""
    assert want.durable_name is not None
    try:
        have = (await js.consumer_info(INBOX_STREAM, want.durable_name)).config
    except nats.js.errors.NotFoundError:
        return False
    return (
        have.filter_subject == want.filter_subject
        and have.ack_policy == want.ack_policy
        and have.ack_wait == want.ack_wait
        and have.max_deliver == want.max_deliver
        and have.deliver_subject is None
    )


async def _has_work(sub: JetStreamContext.PullSubscription, *, held: int) -> bool:
    """Whether the lane's consumer has messages to deliver or redeliver, ``held`` of its
    ``num_ack_pending`` being this runtime's own (in flight here, not to be pulled again)."""
    try:
        info = await sub.consumer_info()
    except (nats.errors.Error, TimeoutError) as exc:
        raise nats_error(exc, "consumer info") from exc
    return bool(info.num_pending) or (info.num_ack_pending or 0) > held


def _key_ring(keys: DecryptionKeys | None) -> tuple[x25519.X25519PrivateKey, ...] | None:
    if keys is None:
        return None
    return (keys,) if isinstance(keys, x25519.X25519PrivateKey) else tuple(keys)


def _received_digest(envelope: envelope_pb2.Envelope) -> str:
    """Digest of the body as received: the clear body, or (not opened) the sealed one.

    A sealed body that did not open cannot be the body the broker notarized as far as anyone can
    tell, so its refusal must not carry the notarized digest: the broker then records it as a
    forged copy instead of failing the genuine request.
    """
    if envelope.HasField("sealed_body"):
        return body_digest(envelope.sealed_body.SerializeToString())
    return body_digest(envelope.body)


def _claimed_request_id(envelope: envelope_pb2.Envelope | None, msg: Msg) -> str | None:
    """The request id an unverified message claims: its (unverified) header's, else its Nats-Msg-Id."""
    candidates: list[str] = []
    if envelope is not None:
        header = envelope_pb2.EnvelopeHeader()
        with contextlib.suppress(DecodeError):
            header.ParseFromString(envelope.header)
            candidates.append(header.id)
    if msg.headers:
        candidates.append(msg.headers.get("Nats-Msg-Id", ""))
    for candidate in candidates:
        try:
            return validate_request_id(candidate)
        except ValueError:
            continue
    return None
