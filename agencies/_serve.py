"""Serving a reference agency system over gRPC, and building one for any agency of the directory.

:class:`AgencyServer` runs one agency service plus standard health checking (and reflection, so
``grpcurl`` works against the examples) on a grpc.aio server. It can be stopped and started again
on the same port: that is how tests take an agency's system "down" and bring it back while the
adapter keeps its channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc
import structlog
from greenchannel.v1 import bank_pb2_grpc, carrier_pb2_grpc, platform_pb2_grpc, police_pb2_grpc, requests_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from agencies._common import AgencyCore, AgencyServerError
from agencies._seed import seed_anchor, seed_bank, seed_carrier, seed_platform
from agencies.bank import BANK_SERVICE, BankConfig, BankCore, BankServicer
from agencies.carrier import CARRIER_SERVICE, CarrierConfig, CarrierCore, CarrierServicer
from agencies.platform import PLATFORM_SERVICE, PlatformConfig, PlatformCore, PlatformServicer
from agencies.police import POLICE_SERVICE, AssistanceRule, PoliceDesk, PoliceDeskConfig, PoliceServicer
from broker.protocol import Agency, AgencyKind, Clock

__all__ = ["AgencyServer", "ReferenceAgency", "ServicerAdder", "build_reference_agency", "serve_agency"]

_log = structlog.get_logger(__name__)

ServicerAdder = Callable[[Any, Any], None]
"""A generated ``add_<Service>Servicer_to_server(servicer, server)`` function."""


@dataclass(frozen=True)
class _Serving:
    """Lifecycle state: a started grpc.aio server and its health servicer."""

    server: Any
    checks: health.aio.HealthServicer


class _Idle:
    """Lifecycle state: nothing bound (never started, or stopped)."""


_IDLE = _Idle()


class AgencyServer:
    """One agency service on a grpc.aio server, with health checking; restartable on its port.

    The first :meth:`start` binds ``host:port`` (port 0 picks a free port); every later start binds
    the same port again. :meth:`stop` reports NOT_SERVING, lets calls in flight finish within the
    grace period, then closes; both are idempotent. As an async context manager it starts on entry
    and stops on exit.
    """

    def __init__(
        self,
        add_servicer: ServicerAdder,
        servicer: object,
        *,
        service_name: str = "",
        host: str = "127.0.0.1",
        port: int = 0,
        grace: float = 2.0,
    ) -> None:
        """``service_name`` (e.g. ``greenchannel.v1.BankService``) gets its own health status."""
        self._add_servicer = add_servicer
        self._servicer = servicer
        self._service_name = service_name
        self._host = host
        self._port = port
        self._grace = grace
        self._state: _Serving | _Idle = _IDLE

    @property
    def port(self) -> int:
        """The bound port; 0 until the first start when asked for port 0."""
        return self._port

    @property
    def address(self) -> str:
        """``host:port`` to dial, e.g. ``127.0.0.1:50123``."""
        if self._port == 0:
            raise AgencyServerError("the server has not been started: no port bound yet")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{host}:{self._port}"

    @property
    def serving(self) -> bool:
        return isinstance(self._state, _Serving)

    async def start(self) -> None:
        """Bind and serve; does nothing when already serving."""
        if isinstance(self._state, _Serving):
            return
        # SO_REUSEPORT off: binding a port someone else holds must fail, not silently share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._add_servicer(self._servicer, server)
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        names = [reflection.SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
        if self._service_name:
            names.append(self._service_name)
        reflection.enable_server_reflection(names, server)
        try:
            bound = server.add_insecure_port(f"{self._host}:{self._port}")
        except RuntimeError as exc:
            raise AgencyServerError(f"cannot bind {self._host}:{self._port}") from exc
        if bound == 0:
            raise AgencyServerError(f"cannot bind {self._host}:{self._port}")
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        if self._service_name:
            await checks.set(self._service_name, health_pb2.HealthCheckResponse.SERVING)
        self._state, self._port = _Serving(server, checks), bound
        _log.info("agency_server.started", service=self._service_name, address=self.address)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, finish calls in flight (up to ``grace`` seconds), close. Idempotent."""
        state = self._state
        if not isinstance(state, _Serving):
            return
        self._state = _IDLE
        await state.checks.enter_graceful_shutdown()
        await state.server.stop(self._grace if grace is None else grace)
        _log.info("agency_server.stopped", service=self._service_name, address=self.address)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


@asynccontextmanager
async def serve_agency(
    servicer_adder: ServicerAdder,
    servicer: object,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    service_name: str = "",
    grace: float = 2.0,
) -> AsyncIterator[AgencyServer]:
    """Serve ``servicer`` until the block ends: ``async with serve_agency(add, s) as server: ...``."""
    async with AgencyServer(
        servicer_adder, servicer, service_name=service_name, host=host, port=port, grace=grace
    ) as server:
        yield server


@dataclass(frozen=True, kw_only=True)
class ReferenceAgency:
    """A reference system for one agency of the directory: its core, servicer and how to serve it."""

    agency: Agency
    """The directory entry it stands for."""
    core: AgencyCore
    """:class:`BankCore`, :class:`CarrierCore`, :class:`PlatformCore` or :class:`PoliceDesk`."""
    servicer: object
    """The gRPC servicer over ``core``."""
    add_servicer: ServicerAdder
    """The generated ``add_<Service>Servicer_to_server``."""
    service_name: str
    """Full gRPC service name, e.g. ``greenchannel.v1.BankService``."""

    def server(self, *, host: str = "127.0.0.1", port: int = 0, grace: float = 2.0) -> AgencyServer:
        """A (not yet started) server for this agency's service."""
        return AgencyServer(
            self.add_servicer,
            self.servicer,
            service_name=self.service_name,
            host=host,
            port=port,
            grace=grace,
        )

    def close(self) -> None:
        """Close the core's database; safe to call twice."""
        self.core.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def build_reference_agency(
    agency: Agency,
    *,
    data_dir: Path,
    clock: Clock,
    seed: bool = True,
    seed_at: datetime | None = None,
    assistance_rules: Mapping[requests_pb2.AssistanceKind.ValueType, AssistanceRule] | None = None,
) -> ReferenceAgency:
    """The reference system for ``agency``'s kind, its state in ``data_dir/<agency id>.sqlite3``.

    With ``seed``, the demo story's rows belonging to this agency are inserted (once: an agency
    already seeded is left alone). Pass every agency the same ``seed_at`` so their records agree to
    the microsecond; by default it is the clock's current minute. Police desks serve their
    directory regions and complete every assistance kind unless ``assistance_rules`` say otherwise.
    Regulators run no agency service: asking for one is a ValueError.
    """
    database = data_dir / f"{agency.id}.sqlite3"
    anchor = seed_at or seed_anchor(clock.now())
    if agency.kind is AgencyKind.BANK:
        bank = BankCore(BankConfig(agency_id=agency.id, database=database), clock=clock)
        if seed:
            seed_bank(bank, agency.id, at=anchor)
        return ReferenceAgency(
            agency=agency,
            core=bank,
            servicer=BankServicer(bank),
            add_servicer=bank_pb2_grpc.add_BankServiceServicer_to_server,
            service_name=BANK_SERVICE,
        )
    if agency.kind is AgencyKind.CARRIER:
        carrier = CarrierCore(CarrierConfig(agency_id=agency.id, database=database), clock=clock)
        if seed:
            seed_carrier(carrier, agency.id, at=anchor)
        return ReferenceAgency(
            agency=agency,
            core=carrier,
            servicer=CarrierServicer(carrier),
            add_servicer=carrier_pb2_grpc.add_CarrierServiceServicer_to_server,
            service_name=CARRIER_SERVICE,
        )
    if agency.kind is AgencyKind.PLATFORM:
        platform = PlatformCore(
            PlatformConfig(agency_id=agency.id, platform_codes=agency.platform_codes, database=database),
            clock=clock,
        )
        if seed:
            seed_platform(platform, agency.id, at=anchor)
        return ReferenceAgency(
            agency=agency,
            core=platform,
            servicer=PlatformServicer(platform),
            add_servicer=platform_pb2_grpc.add_PlatformServiceServicer_to_server,
            service_name=PLATFORM_SERVICE,
        )
    if agency.kind is AgencyKind.POLICE:
        desk = PoliceDesk(
            PoliceDeskConfig(
                agency_id=agency.id,
                database=database,
                rules=dict(assistance_rules or {}),
                regions=agency.police_regions,
            ),
            clock=clock,
        )
        return ReferenceAgency(
            agency=agency,
            core=desk,
            servicer=PoliceServicer(desk),
            add_servicer=police_pb2_grpc.add_PoliceServiceServicer_to_server,
            service_name=POLICE_SERVICE,
        )
    raise ValueError(f"agencies of kind {agency.kind} run no agency service")
