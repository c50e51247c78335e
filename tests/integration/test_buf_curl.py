"""Any standard gRPC client can use the broker: the ``buf`` CLI (buf-bin wheel) against real brokers.

``buf curl`` knows nothing of GreenChannel: it learns the schema through server reflection,
speaks plaintext gRPC over HTTP/2 (``--protocol grpc --http2-prior-knowledge``) and sends
whatever metadata it is given. It runs as a subprocess while the brokers serve in this event
loop, so it is started with asyncio (a blocking subprocess call would starve the broker).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from google.protobuf import descriptor_pb2
from google.rpc import error_details_pb2  # type: ignore[import-untyped]
from greenchannel.v1 import bus_pb2
from grpc_health.v1 import health_pb2

from broker.client import bearer_metadata
from broker.hub import SERVICE_NAMES, Broker
from broker.protocol import SystemClock
from tests.integration.broker_world import BANK, FRAUD_ACCOUNT, POLICE, World, broker_world

pytestmark = pytest.mark.integration

BUF = Path(sys.executable).parent / "buf"
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
BUS_METHODS = frozenset(
    f"{service.full_name}/{method.name}"
    for service in [bus_pb2.DESCRIPTOR.services_by_name["BusService"]]
    for method in service.methods
)
# buf curl exits with the gRPC status code shifted left by three bits when the RPC fails.
UNAUTHENTICATED_EXIT = 16 << 3
_TIMEOUT = 30.0


@dataclass(frozen=True)
class BufRun:
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def error_reason(self) -> str:
        """ErrorInfo.reason from the error JSON buf prints for a failed RPC (Connect error format)."""
        error = json.loads(self.stderr)
        [info] = [d for d in error["details"] if d["type"] == "google.rpc.ErrorInfo"]
        value: str = info["value"]
        decoded = base64.b64decode(value + "=" * (-len(value) % 4))
        reason: str = error_details_pb2.ErrorInfo.FromString(decoded).reason
        return reason


@dataclass(frozen=True)
class Brokers:
    world: World
    reflecting: Broker
    silent: Broker
    """Started with ``BrokerConfig(reflection=False)``."""
    cache: Path
    """buf's cache directory, so the CLI writes nothing under $HOME."""
    health_schema: Path
    """A FileDescriptorSet of grpc.health.v1, for a client that is given the schema instead."""

    async def curl(self, *args: str) -> BufRun:
        process = await asyncio.create_subprocess_exec(
            str(BUF),
            "curl",
            "--protocol",
            "grpc",
            "--http2-prior-knowledge",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "BUF_CACHE_DIR": str(self.cache)},
        )
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), _TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise
        assert process.returncode is not None
        return BufRun(process.returncode, stdout.decode(), stderr.decode())

    def token_header(self, agency: str = POLICE) -> str:
        [(name, value)] = bearer_metadata(self.world.key(agency), agency_id=agency, clock=SystemClock())
        return f"{name}: {value}"


def _url(broker: Broker, method: str = "") -> str:
    return f"http://{broker.address}/{method}" if method else f"http://{broker.address}"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def brokers(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Brokers]:
    assert BUF.is_file(), f"{BUF} is missing: the buf-bin wheel installs it into the venv"
    root = tmp_path_factory.mktemp("buf-curl")
    descriptors = descriptor_pb2.FileDescriptorSet()
    health_pb2.DESCRIPTOR.CopyToProto(descriptors.file.add())
    schema = root / "health.binpb"
    schema.write_bytes(descriptors.SerializeToString())
    (root / "buf-cache").mkdir()
    async with broker_world(root) as world:
        yield Brokers(
            world=world,
            reflecting=await world.start_broker(),
            silent=await world.start_broker(reflection=False),
            cache=root / "buf-cache",
            health_schema=schema,
        )


async def test_reflection_lists_every_bus_method_and_health(brokers: Brokers) -> None:
    methods = await brokers.curl("--list-methods", _url(brokers.reflecting))
    assert methods.returncode == 0, methods.stderr
    listed = set(methods.stdout.split())
    assert {m for m in listed if m.startswith("greenchannel.v1.BusService/")} == BUS_METHODS
    assert f"{HEALTH}/Check" in listed

    services = await brokers.curl("--list-services", _url(brokers.reflecting))
    assert services.returncode == 0, services.stderr
    assert {*SERVICE_NAMES, HEALTH} <= set(services.stdout.split())


@pytest.mark.parametrize("protocol", ["grpc-v1", "grpc-v1alpha"])
async def test_reflection_speaks_v1_and_v1alpha(brokers: Brokers, protocol: str) -> None:
    services = await brokers.curl("--reflect-protocol", protocol, "--list-services", _url(brokers.reflecting))
    assert services.returncode == 0, services.stderr
    listed = set(services.stdout.split())
    assert {*SERVICE_NAMES, HEALTH} <= listed
    assert {"grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"} <= listed


async def test_reflection_describes_itself_under_v1(brokers: Brokers) -> None:
    # Listing methods resolves every listed service's schema, reflection's own v1 file included.
    described = await brokers.curl(
        "--reflect-protocol", "grpc-v1", "--list-methods", _url(brokers.reflecting)
    )
    assert described.returncode == 0, described.stderr
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in described.stdout.split()


async def test_health_check_reports_serving_for_the_server_and_each_service(brokers: Brokers) -> None:
    for service in ("", *SERVICE_NAMES):
        check = await brokers.curl(
            "-d", json.dumps({"service": service}), _url(brokers.reflecting, f"{HEALTH}/Check")
        )
        assert check.returncode == 0, check.stderr
        assert check.json() == {"status": "SERVING"}


# buf tries v1 first and falls back to v1alpha; each pinned, the schema comes through that one alone.
@pytest.mark.parametrize("protocol", [None, "grpc-v1", "grpc-v1alpha"])
async def test_a_real_call_through_reflection_resolves_the_account(
    brokers: Brokers, protocol: str | None
) -> None:
    pinned = ("--reflect-protocol", protocol) if protocol else ()
    resolved = await brokers.curl(
        *pinned,
        "-H",
        brokers.token_header(),
        "-d",
        json.dumps({"account_number": FRAUD_ACCOUNT}),
        _url(brokers.reflecting, "greenchannel.v1.RegistryService/ResolveAccount"),
    )
    assert resolved.returncode == 0, resolved.stderr
    agency = resolved.json()["agency"]
    assert (agency["id"], agency["kind"]) == (BANK, "AGENCY_KIND_BANK")


async def test_a_standard_client_gets_the_same_refusals_with_their_details(brokers: Brokers) -> None:
    url = _url(brokers.reflecting, "greenchannel.v1.RegistryService/ResolveAccount")
    body = json.dumps({"account_number": FRAUD_ACCOUNT})

    anonymous = await brokers.curl("-d", body, url)
    assert anonymous.returncode == UNAUTHENTICATED_EXIT
    assert json.loads(anonymous.stderr)["code"] == "unauthenticated"
    assert anonymous.error_reason() == "MISSING_TOKEN"

    header = brokers.token_header()
    first = await brokers.curl("-H", header, "-d", body, url)
    replayed = await brokers.curl("-H", header, "-d", body, url)
    assert first.returncode == 0, first.stderr
    assert replayed.returncode == UNAUTHENTICATED_EXIT
    assert replayed.error_reason() == "REPLAYED_TOKEN"


async def test_without_reflection_listing_fails_while_the_server_still_answers(brokers: Brokers) -> None:
    listing = await brokers.curl("--list-methods", _url(brokers.silent))
    assert listing.returncode != 0
    assert "unimplemented" in listing.stderr.lower(), listing.stderr
    assert listing.stdout == ""

    # The same broker serves a client that brings its own schema: only reflection is off.
    check = await brokers.curl(
        "--schema", str(brokers.health_schema), "-d", "{}", _url(brokers.silent, f"{HEALTH}/Check")
    )
    assert check.returncode == 0, check.stderr
    assert check.json() == {"status": "SERVING"}
