"""The whole bus on one machine: NATS, the broker, and every agency's system with its adapter.

This is what ``greenchannel up`` and ``greenchannel demo`` run. Each agency of the directory
(regulators aside: they run no service) gets its reference system as a real gRPC server and an
adapter consuming its inbox, exactly as it would be deployed at the agency, only all in one
process.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import TracebackType

import structlog
from nats.aio.client import Client

from adapters import AdapterConfig, AdapterRuntime, serve_adapter_metrics
from agencies import (
    DEFAULT_DIRECTORY,
    DEFAULT_POLICY,
    DEFAULT_SLA_POLICY_PATH,
    AgencyServer,
    ReferenceAgency,
    build_reference_agency,
)
from broker.client import BusClient
from broker.embedded import EmbeddedNatsConfig, nats_for
from broker.hub import Broker, BrokerConfig, EventProcessorConfig, LedgerConfig, SlaPolicy, load_sla_policy
from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    DEFAULT_INBOX_ACK_WAIT,
    AgencyKind,
    Clock,
    MetricsConfig,
    NatsSettings,
    Registry,
    SystemClock,
    close_connection,
    connect,
    ensure_agency_keys,
    ensure_inbox_consumers,
    load_agency_encryption_keys,
    load_agency_signing_key,
    load_directory,
    nats_authorization,
    nats_settings_for,
)

__all__ = ["Stack", "StackConfig"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class StackConfig:
    """What to run and where its state lives."""

    keys_dir: Path
    """State directory holding the keys (generated on first use) and nothing else of this run."""
    data_dir: Path
    """Where this run keeps NATS's store, the agencies' databases and the adapters' state."""
    directory: Path = DEFAULT_DIRECTORY
    """The agency directory."""
    policy: Path | None = None
    """Authorization policy; None is the sample policy the reference agencies ship."""
    nats_url: str | None = None
    """An existing NATS (JetStream on); None starts the embedded server."""
    listen: str = "127.0.0.1:0"
    """The broker's gRPC address."""
    sla: SlaPolicy = field(default_factory=lambda: load_sla_policy(DEFAULT_SLA_POLICY_PATH))
    """The green-channel SLA policy (deadlines, holds, escalation)."""
    ledger: LedgerConfig = field(default_factory=LedgerConfig)
    """How often the broker signs a checkpoint of the ledger, and how it chains records."""
    adapter: AdapterConfig | None = None
    """Template for every adapter's settings (agency id, target and state dir are filled in)."""
    seed_at: datetime | None = None
    """Anchor of the demo story's records; None is the current minute."""
    clock: Clock = field(default_factory=SystemClock)
    """Time source."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """The broker's Prometheus metrics (off by default)."""
    adapter_metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """The adapters' metrics, every agency of this process on one endpoint (off by default)."""
    nats_auth: bool = False
    """Per-agency NATS users on the embedded server (``greenchannel up`` / ``demo``): the broker and
    each adapter connect with their own nkey seed from ``keys_dir``. Ignored with ``nats_url``,
    whose server the operator configures (``greenchannel nats-authorization``)."""


class Stack:
    """``async with Stack(config) as stack:`` everything runs; leaving stops it in reverse order."""

    def __init__(self, config: StackConfig) -> None:
        self._config = config
        self._exit = contextlib.AsyncExitStack()
        self.registry: Registry | None = None
        self.broker: Broker | None = None
        self.nats_url = ""
        self._nats_auth = False
        self.agencies: dict[str, ReferenceAgency] = {}
        self.servers: dict[str, AgencyServer] = {}
        self.adapters: dict[str, AdapterRuntime] = {}
        self.adapter_metrics_address: str | None = None
        """``host:port`` of the adapters' metrics endpoint; None when off."""

    async def __aenter__(self) -> Stack:
        try:
            await self._start()
        except BaseException:
            await self._exit.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._exit.aclose()

    @property
    def broker_metrics_address(self) -> str | None:
        """``host:port`` of the broker's metrics endpoint; None when off."""
        return None if self.broker is None else self.broker.metrics_address

    @property
    def broker_address(self) -> str:
        assert self.broker is not None, "the stack is not running"
        return self.broker.address

    def nats_settings(self, name: str, agency: str | None = None) -> NatsSettings:
        """Settings to reach this stack's NATS as the broker (``agency=None``) or as ``agency``.

        Without per-agency users both are plain; the broker's are the operator's way in.
        """
        if not self._nats_auth:
            return NatsSettings.from_url(self.nats_url, name=name)
        return nats_settings_for(self.nats_url, state_dir=self._config.keys_dir, agency=agency, name=name)

    def client(self, agency_id: str) -> BusClient:
        """A BusClient speaking for ``agency_id`` with its own key."""
        key = load_agency_signing_key(self._config.keys_dir, agency_id)
        return BusClient(self.broker_address, agency_id=agency_id, signing_key=key, clock=self._config.clock)

    async def _start(self) -> None:
        config = self._config
        clock = config.clock
        overlay = ensure_agency_keys(config.directory, config.keys_dir, clock=clock)
        registry = load_directory(config.directory, key_overlays=[overlay])
        self.registry = registry
        config.data_dir.mkdir(parents=True, exist_ok=True)

        auth = config.nats_auth and not config.nats_url
        authorization = (
            nats_authorization(config.keys_dir, [a.id for a in registry.agencies()]) if auth else None
        )
        self.nats_url = await self._exit.enter_async_context(
            nats_for(
                config.nats_url,
                EmbeddedNatsConfig(store_dir=config.data_dir / "nats", authorization=authorization),
            )
        )
        self._nats_auth = auth
        settings = self.nats_settings("greenchannel-broker")
        broker_config = BrokerConfig(
            nats=settings,
            state_dir=config.keys_dir,
            directory=config.directory,
            policy=config.policy if config.policy is not None else DEFAULT_POLICY,
            listen=config.listen,
            sla=config.sla,
            ledger=config.ledger,
            events=EventProcessorConfig(fetch_timeout=0.5),
            metrics=config.metrics,
            clock=clock,
        )
        self.broker = await self._exit.enter_async_context(Broker(broker_config))

        served = [agency for agency in registry.agencies() if agency.kind is not AgencyKind.REGULATOR]
        if auth:
            # Adapters may not create their consumers under per-agency users: the broker's side does.
            await self._provision_inboxes([agency.id for agency in served])
        # Without per-agency users one NATS connection carries every adapter of this process.
        shared = None if auth else await connect(self.nats_settings("greenchannel-adapters"))
        clients: dict[str, Client] = {}
        for agency in served:
            if shared is not None:
                clients[agency.id] = shared
                continue
            # Registered before the adapters' close, so drained only after the adapters stopped.
            clients[agency.id] = await connect(
                self.nats_settings(f"greenchannel-adapter-{agency.id}", agency.id)
            )
            self._exit.push_async_callback(_drain, clients[agency.id])
        if shared is not None:
            self._exit.push_async_callback(_drain, shared)
        agencies_dir = config.data_dir / "agencies"
        agencies_dir.mkdir(exist_ok=True)
        for agency in served:
            reference = build_reference_agency(
                agency, data_dir=agencies_dir, clock=clock, seed_at=config.seed_at
            )
            self._exit.callback(reference.close)
            self.agencies[agency.id] = reference
            self.servers[agency.id] = await self._exit.enter_async_context(reference.server())
        # Adapters stop first, all at once: each waits out its current pull, and one after the
        # other that would make a shutdown take as long as all of them together.
        self._exit.push_async_callback(self._close_adapters)
        metrics, self.adapter_metrics_address = await serve_adapter_metrics(
            config.adapter_metrics.listen, self._exit
        )
        for agency in served:
            adapter = AdapterRuntime(
                self._adapter_config(agency.id, self.servers[agency.id].address),
                registry=registry,
                signing_key=load_agency_signing_key(config.keys_dir, agency.id),
                decryption_keys=load_agency_encryption_keys(config.keys_dir, agency.id),
                clock=clock,
                nats_client=clients[agency.id],
                metrics=metrics,
                metrics_interval=config.adapter_metrics.interval,
            )
            self.adapters[agency.id] = adapter
            await adapter.start()
        log.info("stack.started", broker=self.broker.address, agencies=len(self.agencies))

    def _adapter_config(self, agency_id: str, target: str) -> AdapterConfig:
        state = self._config.data_dir / "adapters" / agency_id
        prefix = AGENCY_JS_API_PREFIX if self._nats_auth else "$JS.API"
        if self._config.adapter is None:
            return AdapterConfig(
                agency_id=agency_id, agency_target=target, state_dir=state, js_api_prefix=prefix
            )
        return replace(
            self._config.adapter,
            agency_id=agency_id,
            agency_target=target,
            state_dir=state,
            js_api_prefix=prefix,
        )

    async def _provision_inboxes(self, agency_ids: list[str]) -> None:
        template = self._config.adapter
        nc = await connect(self.nats_settings("greenchannel-provision"))
        try:
            await ensure_inbox_consumers(
                nc.jetstream(),
                agency_ids,
                ack_wait=template.ack_wait if template is not None else DEFAULT_INBOX_ACK_WAIT,
            )
        finally:
            await _drain(nc)

    async def _close_adapters(self) -> None:
        await asyncio.gather(*(adapter.aclose() for adapter in self.adapters.values()))


async def _drain(nc: Client) -> None:
    # Drained when NATS is there; closed at once when it is down (nats-py's drain would raise).
    await close_connection(nc, timeout=5.0)
