"""The reference agency systems and their adapters, without a broker: ``greenchannel agencies``.

Each agency of the directory (regulators aside: they run no service), or those named, gets its
reference system as a real gRPC server and an adapter consuming its inbox, all in one process,
against the NATS where a broker runs elsewhere. The agencies' databases and the adapters' state
live under the data directory and survive a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import structlog
from nats.aio.client import Client

from adapters import AdapterConfig, AdapterRuntime, serve_adapter_metrics, wait_for_inbox
from agencies import build_reference_agency
from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    DEFAULT_INBOX_ACK_WAIT,
    Agency,
    AgencyKind,
    MetricsConfig,
    ProtocolError,
    Registry,
    SystemClock,
    close_connection,
    connect,
    ensure_agency_keys,
    ensure_nats_seeds,
    load_agency_encryption_keys,
    load_agency_signing_key,
    load_directory,
    nats_settings_for,
    requires_auth,
)

__all__ = ["AgenciesConfig", "AgencyFleet", "select_agencies"]

log = structlog.get_logger(__name__)

# Seconds a connection gets to drain on a graceful stop; NATS being down closes it at once.
_DRAIN_TIMEOUT = 5.0

_POLL = 0.25


@dataclass(frozen=True, kw_only=True)
class AgenciesConfig:
    """What to run and where its state lives."""

    keys_dir: Path
    """State directory with the agencies' keys (generated there on first use)."""
    data_dir: Path
    """Agency databases (``agencies/<id>.sqlite3``) and adapter state (``adapters/<id>/``)."""
    directory: Path
    """The agency directory."""
    nats_url: str
    """The broker's NATS: one URL or several, comma separated."""
    only: tuple[str, ...] = ()
    """Agency ids to run; empty: every agency that runs a service."""
    ack_wait: float = DEFAULT_INBOX_ACK_WAIT
    """Inbox ack wait in seconds: how long a message held by a crashed adapter waits to be redelivered."""
    idle_fetch_timeout: float = 0.25
    """Seconds an idle adapter's pull waits; bounds how long a graceful stop waits for each."""
    streams_timeout: float = 60.0
    """Seconds to wait for the broker to have created the inbox stream."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """The adapters' Prometheus metrics, every agency on one endpoint (off by default)."""


class AgencyFleet:
    """The selected agencies' systems and adapters: ``async with AgencyFleet(config) as fleet``.

    Leaving stops the adapters first (all at once, each finishing its message in hand), then the
    agency servers, then closes the databases and drains NATS.
    """

    def __init__(self, config: AgenciesConfig) -> None:
        self._config = config
        self._exit = contextlib.AsyncExitStack()
        self.adapters: dict[str, AdapterRuntime] = {}
        self.addresses: dict[str, str] = {}
        self._nats: dict[str, str] = {}
        self.metrics_address: str | None = None
        """``host:port`` of the adapters' metrics endpoint; None when off."""

    async def __aenter__(self) -> AgencyFleet:
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
        # One line for the whole stop; "unreachable" when NATS was down (nothing could be drained).
        outcomes = set(self._nats.values())
        nats = next((o for o in ("unreachable", "closed", "drained") if o in outcomes), "none")
        (log.warning if nats in ("unreachable", "closed") else log.info)(
            "agencies.stopped", agencies=len(self.adapters), nats=nats
        )

    async def _close_nats(self, agency_id: str, nc: Client) -> None:
        self._nats[agency_id] = await close_connection(nc, timeout=_DRAIN_TIMEOUT)

    async def _start(self) -> None:
        config = self._config
        clock = SystemClock()
        overlay = ensure_agency_keys(config.directory, config.keys_dir, clock=clock)
        registry = load_directory(config.directory, key_overlays=[overlay])
        served = select_agencies(registry, config.only)
        agencies_dir = config.data_dir / "agencies"
        agencies_dir.mkdir(parents=True, exist_ok=True)

        # Each adapter connects as its own agency's NATS user (harmless where the server has none).
        ensure_nats_seeds(config.keys_dir, [agency.id for agency in served], broker=False)
        clients: dict[str, Client] = {}
        for agency in served:
            clients[agency.id] = await connect(
                nats_settings_for(
                    config.nats_url,
                    state_dir=config.keys_dir,
                    agency=agency.id,
                    name=f"greenchannel-agency-{agency.id}",
                )
            )
            self._exit.push_async_callback(self._close_nats, agency.id, clients[agency.id])
        first = served[0].id
        auth = requires_auth(clients[first])
        await wait_for_inbox(clients[first], first, auth=auth, timeout=config.streams_timeout)

        servers = {}
        for agency in served:
            reference = build_reference_agency(agency, data_dir=agencies_dir, clock=clock)
            self._exit.callback(reference.close)
            servers[agency.id] = await self._exit.enter_async_context(reference.server())
            self.addresses[agency.id] = servers[agency.id].address
        # Registered after the servers, so it runs before them: adapters stop first, together.
        self._exit.push_async_callback(self._close_adapters)
        metrics, self.metrics_address = await serve_adapter_metrics(config.metrics.listen, self._exit)
        for agency in served:
            adapter = AdapterRuntime(
                AdapterConfig(
                    agency_id=agency.id,
                    agency_target=servers[agency.id].address,
                    state_dir=config.data_dir / "adapters" / agency.id,
                    ack_wait=config.ack_wait,
                    idle_fetch_timeout=config.idle_fetch_timeout,
                    js_api_prefix=AGENCY_JS_API_PREFIX if auth else "$JS.API",
                ),
                registry=registry,
                signing_key=load_agency_signing_key(config.keys_dir, agency.id),
                clock=clock,
                nats_client=clients[agency.id],
                decryption_keys=load_agency_encryption_keys(config.keys_dir, agency.id) or None,
                metrics=metrics,
                metrics_interval=config.metrics.interval,
            )
            self.adapters[agency.id] = adapter
            await adapter.start()
        log.info("agencies.started", agencies=len(self.adapters))

    async def _close_adapters(self) -> None:
        await asyncio.gather(*(adapter.aclose() for adapter in self.adapters.values()))


def select_agencies(registry: Registry, only: Sequence[str]) -> list[Agency]:
    """The agencies to run: ``only`` (in directory order), or every one that runs a service."""
    serving = [agency for agency in registry.agencies() if agency.kind is not AgencyKind.REGULATOR]
    if not only:
        return serving
    known = {agency.id: agency for agency in registry.agencies()}
    unknown = sorted(set(only) - set(known))
    if unknown:
        raise ProtocolError(f"not in the directory: {', '.join(unknown)}")
    regulators = sorted(a for a in only if known[a].kind is AgencyKind.REGULATOR)
    if regulators:
        raise ProtocolError(f"regulators run no agency service: {', '.join(regulators)}")
    wanted = set(only)
    return [agency for agency in serving if agency.id in wanted]
