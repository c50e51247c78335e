"""One agency's adapter as its own process: NATS as the agency's user, TLS to its system, health.

:class:`StandaloneAdapter` is what ``greenchannel adapter --config FILE`` runs, from an
:class:`~adapters.AdapterFileConfig` and the :class:`~adapters.AdapterMaterials` read from it:

    connect to NATS as the agency's nkey user
    wait (bounded) for the broker to have created the agency's inbox consumers
    open the channel to the agency's system (TLS unless plaintext was allowed)
    start the runtime, then the health service (SERVING once the inbox is consumed)

Health follows reality: NOT_SERVING while the NATS connection is lost (nats-py reconnects by
itself; SERVING again once it has), and from the first moment of shutdown on.

Leaving reverses it: health NOT_SERVING first (a load balancer stops routing to it), the runtime
finishes the messages in flight, then the channel closes and NATS drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from types import TracebackType
from typing import Any, Self

import grpc
import nats.errors
import nats.js.errors
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from nats.aio.client import Client

from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    INBOX_STREAM,
    PRIORITIES,
    Clock,
    NatsError,
    close_connection,
    connect,
    inbox_consumer,
    requires_auth,
)

from ._backends import backend_for, open_agency_channel
from ._errors import AdapterConfigError
from ._file_config import AdapterFileConfig, AdapterMaterials
from ._metrics import serve_adapter_metrics
from ._runtime import AdapterRuntime

__all__ = ["ADAPTER_HEALTH_SERVICE", "StandaloneAdapter", "wait_for_inbox"]

_DRAIN_TIMEOUT = 5.0
"""Seconds the NATS connection gets to drain on a graceful stop."""

_log = structlog.get_logger(__name__)

ADAPTER_HEALTH_SERVICE = "greenchannel.adapter"
"""Health service name (``""`` too): SERVING while the adapter consumes its inbox and NATS is
connected; NOT_SERVING while NATS is lost and from the start of shutdown."""

_POLL = 0.25


class StandaloneAdapter:
    """``async with StandaloneAdapter(config, materials, clock=...) as adapter:`` it runs."""

    def __init__(self, config: AdapterFileConfig, materials: AdapterMaterials, *, clock: Clock) -> None:
        self._config = config
        self._materials = materials
        self._clock = clock
        self._exit = contextlib.AsyncExitStack()
        self._health: health.aio.HealthServicer | None = None
        self._nats_connected = True  # connect() returns connected; the listener tells changes
        self.runtime: AdapterRuntime | None = None
        self.health_address: str | None = None
        self.metrics_address: str | None = None
        """``host:port`` of the metrics endpoint once serving; None without ``[metrics]``."""

    async def __aenter__(self) -> Self:
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
    def agency_id(self) -> str:
        return self._config.adapter.agency_id

    async def _start(self) -> None:
        config = self._config
        nc = await connect(config.nats, on_connection=self._nats_connection)
        self._exit.push_async_callback(_drain, nc)
        # Under per-agency users the inbox API is imported under the agency's own prefix.
        auth = requires_auth(nc)
        runtime_config = replace(config.adapter, js_api_prefix=AGENCY_JS_API_PREFIX if auth else "$JS.API")
        ack_wait = await wait_for_inbox(nc, self.agency_id, auth=auth, timeout=config.inbox_timeout)
        if ack_wait is not None:
            # The broker made the consumers and the adapter may not change them: their ack wait is
            # the one that counts (heartbeats go out every third of it).
            if config.ack_wait is not None and config.ack_wait != ack_wait:
                raise AdapterConfigError(
                    f"{config.source}: adapter.ack_wait: {config.ack_wait:g} s, but the broker created the "
                    f"inbox consumers of {self.agency_id} with {ack_wait:g} s; under per-agency NATS users "
                    "the broker sets it: leave adapter.ack_wait out, or ask the operator to change it"
                )
            runtime_config = replace(runtime_config, ack_wait=ack_wait)

        channel = open_agency_channel(
            config.adapter.agency_target,
            reconnect_backoff_max=config.adapter.reconnect_backoff_max,
            credentials=self._materials.channel_credentials,
            server_name=config.tls.server_name if config.tls is not None else None,
        )
        self._exit.push_async_callback(channel.close)
        metrics, self.metrics_address = await serve_adapter_metrics(config.metrics.listen, self._exit)
        runtime = AdapterRuntime(
            runtime_config,
            registry=self._materials.registry,
            signing_key=self._materials.signing_key,
            clock=self._clock,
            backend=backend_for(self._materials.agency.kind, channel),
            nats_client=nc,
            decryption_keys=self._materials.decryption_keys or None,
            metrics=metrics,
            metrics_interval=config.metrics.interval,
        )
        self.runtime = runtime
        await runtime.start()
        self._exit.push_async_callback(runtime.aclose)
        if config.health_listen is not None:
            await self._serve_health(config.health_listen)
        _log.info(
            "adapter.online", agency=self.agency_id, health=self.health_address, metrics=self.metrics_address
        )

    async def _serve_health(self, listen: str) -> None:
        server: Any = grpc.aio.server()
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        port = server.add_insecure_port(listen)
        await server.start()
        self._health = checks
        self.health_address = f"{listen.rsplit(':', 1)[0]}:{port}"

        async def stop() -> None:
            await checks.enter_graceful_shutdown()  # NOT_SERVING before the runtime drains
            await server.stop(1.0)

        # Registered last, so it runs first on the way out.
        self._exit.push_async_callback(stop)
        await self._report()

    async def _nats_connection(self, connected: bool) -> None:
        self._nats_connected = connected
        _log.info("adapter.nats_connection", agency=self.agency_id, connected=connected)
        await self._report()

    async def _report(self) -> None:
        """Set the health status from the NATS connection (a no-op once shutdown has begun)."""
        if self._health is None:
            return
        serving = health_pb2.HealthCheckResponse.SERVING
        status = serving if self._nats_connected else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", ADAPTER_HEALTH_SERVICE):
            # After enter_graceful_shutdown() the servicer ignores set(): NOT_SERVING stays.
            await self._health.set(name, status)


async def wait_for_inbox(
    nc: Client,
    agency: str,
    *,
    auth: bool,
    timeout: float,  # noqa: ASYNC109 -- bounds the whole wait, with a clear error at its end
) -> float | None:
    """Wait (at most ``timeout`` seconds) for the broker to have created ``agency``'s inbox.

    Adapters only bind: the broker creates the stream and, under per-agency NATS users (``auth``),
    the consumers too; such a user sees its own consumers and nothing else, so that is what is
    asked for, and its ack wait in seconds returned (None without per-agency users). Raises
    :class:`~broker.protocol.NatsError` when it is still missing.
    """
    js = nc.jetstream(prefix=AGENCY_JS_API_PREFIX) if auth else nc.jetstream()
    deadline = time.monotonic() + timeout
    told = False
    while True:
        try:
            if auth:
                info = await js.consumer_info(INBOX_STREAM, inbox_consumer(agency, PRIORITIES[0]))
                ack_wait: float | None = info.config.ack_wait
                return ack_wait
            await js.stream_info(INBOX_STREAM)
            return None
        except nats.js.errors.NotFoundError:
            pass
        except (nats.errors.Error, TimeoutError) as exc:
            _log.warning("adapter.nats_not_ready", error_type=type(exc).__name__)
        if time.monotonic() >= deadline:
            raise NatsError(
                f"the inbox of {agency} does not exist after {timeout:.0f}s: "
                "is the broker running on this NATS?"
            )
        if not told:
            _log.warning("adapter.waiting_for_broker", stream=INBOX_STREAM)
            told = True
        await asyncio.sleep(_POLL)


async def _drain(nc: Client) -> None:
    # Drained when NATS is there; closed at once when it is down (a drain would raise or hang).
    outcome = await close_connection(nc, timeout=_DRAIN_TIMEOUT)
    if outcome != "drained":
        _log.warning("adapter.nats_not_drained", nats=outcome)
