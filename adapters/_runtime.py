"""The adapter runtime: an agency's inbox in, verified orders to its own system, signed events out.

Per message, in this order (each step in a module of its own)::

    take it from the inbox, GREEN before STANDARD             _inbox (on the shared ConsumerLoop)
    open the sealed body with the agency's X25519 key, verify _opening
      (does not open / refused -> FAILED event + dead letter, term)
    "started"; call the agency system; ACKNOWLEDGED only if _execution (idempotency, retries),
      it has not answered within the grace                   _acknowledge
    seal a data answer to the requester; redact the onward   _answers
      transfers, their full copy sealed to requester and broker
    sign the terminal event; record it; publish it            _execution, _publisher
    ack the inbox message

Nothing personal leaves the adapter in clear: not in events, dead letters or logs.

Up to ``concurrency`` messages are handled side by side, each in a task of its own whose steps
stay strictly in order; the journal's writes of all messages in flight share one commit
(``GroupCommitJournal``). Every message fetched but not yet answered gets an ``in_progress``
heartbeat every third of ``ack_wait``, so JetStream never hands it to another instance while this
one works on it. A graceful shutdown stops pulling, lets the messages in flight finish within
``shutdown_grace`` and naks the rest for another instance.
"""

from __future__ import annotations

import asyncio
import enum
from types import TracebackType
from typing import Any, Self

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from broker.protocol import (
    Agency,
    Clock,
    ConsumerLoop,
    DecryptionKeys,
    GaugeTimer,
    NatsError,
    Registry,
    RegistryError,
    SigningKey,
    close_connection,
    connect,
    encryption_kid,
    reason_name,
    request_type_name,
)

from ._answers import AnswerBuilder
from ._backends import AgencyBackend, backend_for, open_agency_channel
from ._config import AdapterConfig
from ._errors import AdapterConfigError, AdapterError
from ._execution import Executor, Interrupted
from ._idempotency import GroupCommitJournal, IdempotencyStore
from ._inbox import LANES, TASK_PREFIX, Settle, inbox_spec, settle
from ._metrics import AdapterMetrics
from ._opening import Refusal, key_ring, open_inbox_message
from ._publisher import EventPublisher

__all__ = ["LANES", "TASK_PREFIX", "AdapterRuntime"]

_log = structlog.get_logger(__name__)


class _Phase(enum.Enum):
    NEW = "new"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"


class AdapterRuntime:
    """Runs one agency's adapter: an async context manager around the inbox's consumer loop.

    ``backend`` defaults to the agency kind's gRPC service at ``config.agency_target`` (the runtime
    then owns the channel); ``nats_client`` defaults to a connection made from ``config.nats``
    (the runtime then owns and drains it). What is handed in is never closed here.
    ``decryption_keys`` are the agency's X25519 private keys, which open sealed request bodies;
    without them every sealed request is refused (FAILED, SIGNATURE_INVALID), only clear ones run.
    ``metrics``: where the adapter counts (default: nowhere); with real metrics the inbox's lag is
    read every ``metrics_interval`` seconds.
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
        metrics: AdapterMetrics | None = None,
        metrics_interval: float = 5.0,
    ) -> None:
        self._metrics = metrics or AdapterMetrics()
        self._metrics_timer: GaugeTimer | None = None
        self._metrics_interval = metrics_interval
        self._config = config
        self._registry = registry
        self._key = signing_key
        self._decryption_keys = key_ring(decryption_keys)
        self._clock = clock
        self._backend = backend
        self._nc = nats_client
        self._owns_nc = nats_client is None
        self._channel: Any = None  # the grpc.aio.Channel, when the runtime opened it
        self._store: IdempotencyStore | None = None
        self._journal: GroupCommitJournal | None = None
        self._loop: ConsumerLoop | None = None
        self._publisher: EventPublisher | None = None
        self._executor: Executor | None = None
        self._phase = _Phase.NEW
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
        config = self._config
        try:
            agency = self._check_identity()
            if self._backend is None:
                channel = open_agency_channel(
                    config.agency_target, reconnect_backoff_max=config.reconnect_backoff_max
                )
                self._channel = channel
                self._backend = backend_for(agency.kind, channel, keys=self._decryption_keys)
            if self._nc is None:
                if config.nats is None:
                    raise AdapterConfigError("AdapterConfig.nats is required when no NATS client is given")
                self._nc = await connect(config.nats)
            js = self._nc.jetstream(prefix=config.js_api_prefix)
            self._store = IdempotencyStore.in_state_dir(config.state_dir, clock=self._clock)
            self._journal = GroupCommitJournal(self._store)
            self._publisher = EventPublisher(
                js,
                agency_id=self.agency_id,
                signing_key=self._key,
                registry=self._registry,
                clock=self._clock,
                publish_timeout=config.publish_timeout,
            )
            metrics = self._metrics
            self._loop = ConsumerLoop(js, inbox_spec(config), self._handle, observer=metrics.consumers)
            self._executor = Executor(
                config,
                journal=self._journal,
                backend=self._backend,
                publisher=self._publisher,
                answers=AnswerBuilder(agency_id=self.agency_id, registry=self._registry, clock=self._clock),
                loop=self._loop,
                settle=self._settle,
                clock=self._clock,
                metrics=metrics,
            )
            await self._loop.start()
            if metrics.consumers is not None:
                loop = self._loop
                self._metrics_timer = GaugeTimer(
                    self._metrics_interval,
                    [lambda: metrics.read_inbox(loop)],
                    name=f"adapter-{self.agency_id}",
                )
                self._metrics_timer.start()
        except BaseException:
            await self._release()
            self._phase = _Phase.CLOSED
            self._closed.set()
            raise
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
        try:
            if self._loop is not None:
                await self._loop.drain()
            if self._journal is not None:
                await self._journal.aclose()
        finally:
            await self._release()
            self._phase = _Phase.CLOSED
            self._closed.set()
            _log.info("adapter.stopped", agency=self.agency_id)

    async def _release(self) -> None:
        """Nak what is held, unbind, close what the runtime opened. Safe on a half-started runtime."""
        if self._metrics_timer is not None:
            await self._metrics_timer.aclose()
        if self._loop is not None:
            await self._loop.aclose()
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

    # -- one message ----------------------------------------------------------------------------

    async def _handle(self, msg: Msg) -> None:
        """Process one message; nothing that goes wrong with it stops the loop or the others."""
        metadata = msg.metadata
        with structlog.contextvars.bound_contextvars(stream_seq=metadata.sequence.stream):
            try:
                await self._process(msg)
            except Interrupted:
                return  # left unsettled: the loop naks it on close
            except (NatsError, AdapterError) as exc:
                # NATS or the local store failed mid-way: every step is idempotent, so try again later.
                _log.warning("adapter.message_retry_later", error_type=type(exc).__name__, error=str(exc))
                await self._settle(msg, "nak")
            except Exception as exc:
                # Only the type: the message text of an unexpected error may quote the request.
                _log.error("adapter.message_failed", error_type=type(exc).__name__)
                await self._settle(msg, "nak")

    async def _process(self, msg: Msg) -> None:
        assert self._publisher is not None, "started runtimes have a publisher"
        assert self._executor is not None, "started runtimes have an executor"
        order = open_inbox_message(
            msg,
            agency_id=self.agency_id,
            keys=self._decryption_keys,
            registry=self._registry,
            clock=self._clock,
        )
        if isinstance(order, Refusal):
            self._metrics.refused(self.agency_id, reason_name(order.reason))
            await self._publisher.refusal(
                msg, order.envelope, order.reason, error=order.error, fields=list(order.fields)
            )
            await self._settle(msg, "term")
            return
        header = order.opened.header
        with structlog.contextvars.bound_contextvars(
            request_id=order.request_id, request_type=request_type_name(header.type), sender=header.sender
        ):
            await self._executor.execute(msg, order)

    async def _settle(self, msg: Msg, how: Settle) -> None:
        await settle(msg, how, timeout=self._config.publish_timeout, nak_delay=self._config.nak_delay)
