"""The broker process: gRPC services over NATS JetStream, stateless itself.

Start-up order: directory and keys, NATS, streams and buckets, event consumer, then the gRPC
port (health SERVING last). Shutdown reverses it: health NOT_SERVING, stop intake and let
in-flight calls finish, stop the event consumer after its current event, drain NATS.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
import structlog
from greenchannel.v1 import (
    bus_pb2,
    bus_pb2_grpc,
    ledger_pb2,
    ledger_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    risk_pb2,
    risk_pb2_grpc,
)
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from broker.protocol import (
    Clock,
    ConsumerLoop,
    GaugeTimer,
    MetricsConfig,
    MetricsEndpoint,
    NatsSettings,
    Registry,
    SystemClock,
    close_connection,
    connect,
    ensure_streams,
    key_overlay_path,
    load_broker_encryption_key,
    load_broker_signing_key,
    new_registry,
    stream_specs,
)

from ._account_cases import IDENTIFIER_CASES_BUCKET, AccountCases, CaseIndex
from ._admission import Admission, AdmissionConfig
from ._appeals import AppealCheck, AppealDesk
from ._auth import Authenticator, open_replay_cache
from ._batch_split import BatchOutcomes
from ._bus import BusServicer
from ._case_links import CaseLinks
from ._deadlines_watch import DeadlineWatch, DeadlineWatchConfig
from ._decode_guard import DecodeGuard
from ._directory_reload import DirectoryReloadConfig, DirectoryReloader, ReloadListener
from ._directory_service import RegistryServicer
from ._dissuasions import Dissuasions
from ._events import BrokerEvents, EventProcessor, EventProcessorConfig, HoldLifecycle
from ._feedback import FeedbackDesk
from ._follow_ups import FollowUps
from ._identifiers import IdentifierDigests
from ._ledger import LedgerConfig, LedgerSequencer, LedgerWriter, ensure_ledger_streams
from ._ledger_service import LedgerServicer
from ._linkage import CaseLinker
from ._mark_appeals import MarkAppealCheck
from ._metrics import BrokerMetrics, PrometheusBrokerMetrics
from ._open_appeals import OpenAppeals
from ._policy import Policy, load_policy
from ._reflection import enable_reflection
from ._refusals import RefusalAudit, RefusalAuditConfig
from ._returns import ReturnRecords, Returns
from ._returns_service import ReturnsService
from ._risk import RiskConfig, RiskParts, open_risk
from ._sla_policy import SlaPolicy
from ._store import IdempotencyStore, RequestStore
from ._submit import Intake
from ._timers import DeadlineScheduler
from ._tls import TlsFiles, server_credentials
from ._trail import TrailChaser, TrailRecorder, sealed_onward_transfers
from ._trail_service import TrailService
from ._trail_store import TrailStore
from ._watchlog import WatchLog

__all__ = ["SERVICE_NAMES", "Broker", "BrokerConfig"]

log = structlog.get_logger(__name__)

SERVICE_NAMES = (
    bus_pb2.DESCRIPTOR.services_by_name["BusService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name,
    risk_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name,
)


@dataclass(frozen=True, kw_only=True)
class BrokerConfig:
    """Everything the broker needs; the CLI builds it from flags and the environment.

    Every file comes from the caller: the broker knows no default place for any of them.
    """

    nats: NatsSettings
    """Where NATS is (the CLI starts an embedded server when no URL is given)."""
    state_dir: Path
    """Holds the broker's private key and the key overlay of the directory."""
    directory: Path
    """The agency directory TOML."""
    key_overlays: tuple[Path, ...] = ()
    """Operator's overlay files of agencies' public keys (``greenchannel keys ... --write``),
    merged after the state directory's own overlay; each must exist."""
    reload: DirectoryReloadConfig = field(default_factory=DirectoryReloadConfig)
    """When the directory and overlays are re-read without a restart."""
    policy: Path
    """The authorization policy TOML."""
    sla: SlaPolicy
    """Green-channel SLA: phase deadlines, hold rules and the escalation ladder."""
    listen: str = "127.0.0.1:50051"
    """gRPC listen address; port 0 picks a free port."""
    reflection: bool = True
    """Serve gRPC server reflection (v1 and v1alpha), so any standard client can discover the services."""
    tls: TlsFiles | None = None
    """Serve TLS with client certificates (mTLS) instead of plaintext."""
    require_tls_identity: bool = False
    """With TLS: the client certificate must name the same agency as the bearer token."""
    events: EventProcessorConfig = field(default_factory=EventProcessorConfig)
    """How adapters' events are consumed."""
    timers: DeadlineWatchConfig = field(default_factory=DeadlineWatchConfig)
    """How fired deadline timers are consumed."""
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    """How the ledger's sequencer chains records and how often it signs checkpoints."""
    refusals: RefusalAuditConfig = field(default_factory=RefusalAuditConfig)
    """How refused calls are bounded on their way into the ledger (per key and window)."""
    risk: RiskConfig = field(default_factory=RiskConfig)
    """How the risk registry counts checks (flush interval) and waits for its index at start."""
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    """How many submissions are worked on at once; beyond, RESOURCE_EXHAUSTED at once."""
    max_message_bytes: int = 2 * 1024 * 1024
    """Largest gRPC message accepted; bigger ones get RESOURCE_EXHAUSTED before any work."""
    shutdown_grace: float = 5.0
    """Seconds in-flight calls get to finish on shutdown."""
    replicas: int = 1
    """JetStream replicas for streams and buckets (3 on a cluster)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus metrics: off (the default), or served on ``metrics.listen`` (docs/metrics.md)."""
    clock: Clock = field(default_factory=SystemClock)
    """Time source."""


class Broker:
    """One broker replica. ``async with Broker(config) as broker: ... broker.port``."""

    def __init__(self, config: BrokerConfig) -> None:
        self._config = config
        self._nc: Client | None = None
        self._server: grpc.aio.Server | None = None
        self._health: health.aio.HealthServicer | None = None
        self._events: EventProcessor | None = None
        self._deadlines: DeadlineWatch | None = None
        self._ledger: LedgerSequencer | None = None
        self._refusals: RefusalAudit | None = None
        self._reloader: DirectoryReloader | None = None
        self._reload_listeners: list[ReloadListener] = []
        self._metrics_timer: GaugeTimer | None = None
        self._metrics_endpoint: MetricsEndpoint | None = None
        self.metrics_address: str | None = None
        """``host:port`` of the metrics endpoint once serving; None when metrics are off."""
        self._risk: RiskParts | None = None
        self.risk: RiskParts | None = None
        """The risk registry's parts once started (``risk.desk.observer`` takes case linkage)."""
        self.admission = Admission(config.admission)
        """Submissions in hand, and the bound beyond which they are shed."""
        self._port = 0
        self._closed = False
        self.registry: Registry | None = None
        self.policy: Policy | None = None

    @property
    def port(self) -> int:
        return self._port

    @property
    def address(self) -> str:
        host = self._config.listen.rsplit(":", 1)[0]
        return f"{host}:{self._port}"

    async def __aenter__(self) -> Broker:
        try:
            await self._start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _start(self) -> None:
        config = self._config
        self._reloader = reloader = DirectoryReloader(
            directory=config.directory,
            state_overlay=key_overlay_path(config.state_dir),
            overlays=config.key_overlays,
            config=config.reload,
        )
        # Every component holds the live registry, so one swap reaches them all at once.
        registry = reloader.registry
        for listener in self._reload_listeners:
            reloader.add_listener(listener)
        policy = load_policy(config.policy)
        broker_key = load_broker_signing_key(config.state_dir)
        self.registry, self.policy = registry, policy

        metrics = PrometheusBrokerMetrics(new_registry()) if config.metrics.enabled else BrokerMetrics()
        self._nc = await connect(config.nats)
        js = self._nc.jetstream()
        await ensure_streams(js, stream_specs(config.replicas))
        await ensure_ledger_streams(js, replicas=config.replicas)
        ledger = LedgerWriter(js)
        refusals = self._refusals = RefusalAudit(ledger, config.clock, config.refusals, metrics=metrics)
        await refusals.__aenter__()
        requests = RequestStore(js, metrics=metrics)
        idempotency = await IdempotencyStore.open(js, replicas=config.replicas)
        replay = await open_replay_cache(js, replicas=config.replicas)
        watchlog = WatchLog(js)
        scheduler = DeadlineScheduler(js, reminder_at=config.sla.escalation.reminder_at)
        auth = Authenticator(registry, replay, config.clock, require_tls_identity=config.require_tls_identity)
        trail_recorder = TrailRecorder.for_broker(
            store=TrailStore(js, replicas=config.replicas),
            registry=registry,
            policy=policy,
            broker_key=broker_key,
            clock=config.clock,
        )
        trail_store = trail_recorder.store
        account_cases = AccountCases(js, replicas=config.replicas)
        # The trail's own book: a mark, a hold and a block on one account share the digest.
        digests = IdentifierDigests(book=trail_recorder.book, registry=registry)
        case_links = CaseLinks(js, replicas=config.replicas)
        return_records = ReturnRecords(js, replicas=config.replicas)
        # Before intake: a holder's appeal against a mark is checked against the registry.
        self._risk = self.risk = await open_risk(
            js,
            config=config.risk,
            auth=auth,
            registry=registry,
            policy=policy,
            watchlog=watchlog,
            ledger=ledger,
            clock=config.clock,
            refusals=refusals,
            replicas=config.replicas,
            digests=digests,
        )
        returns = Returns(
            records=return_records,
            index=account_cases,
            trails=trail_store,
            requests=requests,
            cases=watchlog,
            recorder=trail_recorder,
            registry=registry,
            policy=policy.returns,
            clock=config.clock,
        )
        intake = Intake(
            returns=returns,
            trail=trail_recorder,
            cases=watchlog,
            registry=registry,
            policy=policy,
            deadlines=config.sla.deadlines,
            holds=config.sla.holds,
            scheduler=scheduler,
            requests=requests,
            idempotency=idempotency,
            js=js,
            broker_key=broker_key,
            clock=config.clock,
            appeals=AppealCheck(
                requests=requests,
                open_appeals=OpenAppeals(js, requests=requests, clock=config.clock, replicas=config.replicas),
                marks=MarkAppealCheck(
                    marks=self._risk.marks, digests=digests, registry=registry, clock=config.clock
                ),
            ),
            digests=digests,
        )
        linker = CaseLinker(
            index=CaseIndex(js, IDENTIFIER_CASES_BUCKET, replicas=config.replicas),
            links=case_links,
            intake=intake,
            requests=requests,
            cases=watchlog,
            registry=registry,
            clock=config.clock,
        )
        # The broker's own X25519 key: it opens the onward transfers it chases and the warnings it
        # escalates, both sealed to it.
        broker_x25519 = load_broker_encryption_key(config.state_dir)
        trail_chaser = TrailChaser(
            recorder=trail_recorder,
            requests=requests,
            sender=intake,
            source=sealed_onward_transfers(broker_x25519),
            cases=watchlog,
            index=account_cases,
        )
        broker_events = BrokerEvents(requests=requests, broker_key=broker_key, clock=config.clock)
        appeals = AppealDesk(
            requests=requests,
            broker_events=broker_events,
            intake=intake,
            registry=registry,
            js=js,
            clock=config.clock,
            marks=self._risk.desk,
        )
        self._events = EventProcessor(
            js=js,
            registry=registry,
            requests=requests,
            clock=config.clock,
            config=config.events,
            ledger=ledger,
            holds=HoldLifecycle(
                requests=requests, broker_events=broker_events, scheduler=scheduler, cases=watchlog
            ),
            trail=trail_chaser,
            returns=returns,
            appeals=appeals,
            follow_ups=FollowUps(records=return_records, intake=intake),
            batches=BatchOutcomes(requests=requests, broker_events=broker_events),
            dissuasions=Dissuasions(
                intake=intake,
                registry=registry,
                policy=policy.warning,
                broker_key=broker_x25519,
            ),
            linkage=linker,
            metrics=metrics,
        )
        await self._events.__aenter__()
        self._deadlines = DeadlineWatch(
            js=js,
            registry=registry,
            requests=requests,
            broker_events=broker_events,
            scheduler=scheduler,
            releaser=intake,
            broker_key=broker_key,
            clock=config.clock,
            escalation=config.sla.escalation,
            config=config.timers,
            metrics=metrics,
            linkage=linker,
        )
        await self._deadlines.__aenter__()
        self._ledger = LedgerSequencer(
            js, broker_key, config.clock, config.ledger, observer=metrics.consumers
        )
        await self._ledger.__aenter__()

        bus = BusServicer(
            auth=auth,
            intake=intake,
            requests=requests,
            watchlog=watchlog,
            policy=policy,
            registry=registry,
            broker_events=broker_events,
            clock=config.clock,
            trail=TrailService(auth=auth, chaser=trail_chaser, policy=policy, refusals=refusals),
            returns=ReturnsService(auth=auth, returns=returns, refusals=refusals),
            admission=self.admission,
            refusals=refusals,
            appeals=appeals,
            feedback=FeedbackDesk(
                requests=requests, broker_events=broker_events, registry=registry, clock=config.clock
            ),
        )
        # Case linkage hears of ACTIVE marks and answers ListLinks (it is made after intake).
        self._risk.desk.observer = linker
        self._risk.servicer.links = linker
        await self._listen(bus, auth=auth, registry=registry, js=js, refusals=refusals)
        if isinstance(metrics, PrometheusBrokerMetrics):
            loops = (self._events.consumer, self._deadlines.consumer, self._ledger.consumer)
            await self._serve_metrics(metrics, js, registry, loops)
        await reloader.__aenter__()
        log.info("broker.started", address=self.address, tls=config.tls is not None, agencies=len(registry))

    async def _serve_metrics(
        self,
        metrics: PrometheusBrokerMetrics,
        js: JetStreamContext,
        registry: Registry,
        loops: tuple[ConsumerLoop, ...],
    ) -> None:
        """The gauges that cost a NATS request on a timer; the endpoint in a thread of its own."""
        reads = [*(functools.partial(metrics.read_consumer, loop) for loop in loops)]
        reads.append(functools.partial(metrics.read_inboxes, js, registry))
        reads.append(functools.partial(metrics.read_ledger, js))
        self._metrics_timer = GaugeTimer(self._config.metrics.interval, reads, name="broker")
        self._metrics_timer.start()
        assert self._config.metrics.listen is not None
        self._metrics_endpoint = MetricsEndpoint(self._config.metrics.listen, metrics.registry)
        self.metrics_address = self._metrics_endpoint.start()

    async def _listen(
        self,
        bus: BusServicer,
        *,
        auth: Authenticator,
        registry: Registry,
        js: JetStreamContext,
        refusals: RefusalAudit,
    ) -> None:
        """Serve the Bus, Registry, Ledger, health and reflection services on the configured port."""
        config = self._config
        server = grpc.aio.server(
            interceptors=[DecodeGuard(refusals)],
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.max_send_message_length", 4 * config.max_message_bytes),
            ],
        )
        bus_pb2_grpc.add_BusServiceServicer_to_server(bus, server)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(auth=auth, registry=registry, refusals=refusals), server
        )
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
            LedgerServicer(auth=auth, js=js, refusals=refusals), server
        )
        if self._risk is not None:
            risk_pb2_grpc.add_RiskServiceServicer_to_server(self._risk.servicer, server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        if config.reflection:
            enable_reflection(
                (*SERVICE_NAMES, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name), server
            )
        if config.tls is not None:
            self._port = server.add_secure_port(config.listen, server_credentials(config.tls))
        else:
            self._port = server.add_insecure_port(config.listen)
        await server.start()
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def aclose(self) -> None:
        """Graceful and idempotent: stop intake, finish in-flight work, then close NATS."""
        if self._closed:
            return
        self._closed = True
        nats = "none"
        if self._reloader is not None:
            await self._reloader.aclose()
        if self._metrics_timer is not None:
            await self._metrics_timer.aclose()
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(self._config.shutdown_grace)
        if self._risk is not None:
            # No check comes in any more: the last counts go to KV now.
            await self._risk.aclose()
        if self._refusals is not None:
            # No call comes in any more: the last summaries go to the ledger intake now.
            await self._refusals.aclose()
        # Each loop finishes the message in hand after its current pull; together, not in turn.
        loops = [loop for loop in (self._events, self._deadlines, self._ledger) if loop is not None]
        stopping: list[Coroutine[Any, Any, object]] = [loop.aclose() for loop in loops]
        if self._nc is not None and not self._nc.is_connected:
            # NATS is away: the loops could not finish anything, and each attempt would wait out
            # its timeout. Closed last in the gather, after every loop has marked itself stopping,
            # so their pulls fail at once and quietly; what was not acked is redelivered to a
            # replica that runs, and the ledger's head is signed by the next checkpoint.
            nats = "unreachable"
            stopping.append(close_connection(self._nc, timeout=0))
        await asyncio.gather(*stopping)
        if self._nc is not None and not self._nc.is_closed:
            nats = await close_connection(self._nc, timeout=self._config.shutdown_grace)
        if self._metrics_endpoint is not None:
            await asyncio.to_thread(self._metrics_endpoint.close)
        if nats in ("unreachable", "closed"):
            log.warning("broker.stopped", nats=nats)
        else:
            log.info("broker.stopped", nats=nats)

    async def reload_directory(self) -> bool:
        """Re-read the directory and key overlays now (SIGHUP); False keeps the old registry."""
        if self._reloader is None:
            return False
        return await self._reloader.reload()

    def on_directory_reload(self, listener: ReloadListener) -> None:
        """Call ``listener(old, new)`` after each successful reload (register before start too)."""
        self._reload_listeners.append(listener)
        if self._reloader is not None:
            self._reloader.add_listener(listener)

    async def serve_forever(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()
