"""``greenchannel adapter --config adapter.toml``: one agency's adapter as the agency runs it.

A real ``greenchannel broker`` process (embedded NATS with per-agency users), the reference bank
as the agency's own system, and the adapter as a process of its own configured only by its file.
Bad files are refused with the file and field named, before anything starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import tomllib
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from greenchannel.v1 import common_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters import (
    ADAPTER_HEALTH_SERVICE,
    AdapterConfigError,
    ServiceTls,
    StandaloneAdapter,
    load_adapter_file,
    load_adapter_materials,
)
from adapters._file_config import FIELDS
from agencies import build_reference_agency
from agencies.bank import BankCore
from broker.cli import main
from broker.client import BusClient
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub._tls import TlsFiles, server_credentials
from broker.protocol import (
    DEFAULT_INBOX_ACK_WAIT,
    NatsSettings,
    SystemClock,
    connect,
    ensure_agency_keys,
    ensure_streams,
    key_overlay_path,
    load_agency_signing_key,
    load_directory,
    stream_specs,
)

from .adapter_process import DIRECTORY, REPO, BrokerProcess, adapter_process, adapter_toml, broker_process
from .broker_world import BANK, POLICE, stop_payment
from .test_tls import Pki

pytestmark = pytest.mark.integration

_TERMINAL = frozenset(
    {
        common_pb2.REQUEST_STATE_EXECUTED,
        common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
        common_pb2.REQUEST_STATE_REJECTED,
        common_pb2.REQUEST_STATE_FAILED,
    }
)

_MINIMAL = """\
[agency]
id = "bank-icbc"
signing_key = "sig.pem"

[registry]
directory = "directory.toml"

[nats]
url = "nats://127.0.0.1:4222"

[service]
target = "127.0.0.1:50061"
allow_plaintext = true

[adapter]
journal_dir = "state"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "adapter.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _minimal_with_keys(state: Path, signer: str = BANK) -> str:
    """_MINIMAL (bank-icbc) with ``signer``'s signing key from ``state`` and the real directory."""
    signing = state / "keys" / signer / f"{load_agency_signing_key(state, signer).kid}.pem"
    return _MINIMAL.replace('"sig.pem"', f'"{signing}"').replace(
        'directory = "directory.toml"',
        f'directory = "{DIRECTORY}"\nkey_overlays = ["{key_overlay_path(state)}"]',
    )


def test_a_minimal_file_reads_with_paths_beside_it(tmp_path: Path) -> None:
    config = load_adapter_file(_write(tmp_path, _MINIMAL))
    assert config.adapter.agency_id == "bank-icbc"
    assert config.signing_key == tmp_path / "sig.pem"
    assert config.adapter.state_dir == tmp_path / "state"
    assert config.nats.servers == ("nats://127.0.0.1:4222",)
    assert config.nats.nkey_seed_file is None
    assert config.allow_plaintext
    assert config.tls is None
    assert config.health_listen is None
    assert config.adapter.concurrency == 32
    assert config.ack_wait is None  # the inbox consumers' own, once seen
    assert config.adapter.ack_wait == DEFAULT_INBOX_ACK_WAIT  # the shipped inbox default
    assert config.adapter.acknowledge_after == 0.25
    at_once = load_adapter_file(
        _write(
            tmp_path,
            _MINIMAL.replace('journal_dir = "state"', 'journal_dir = "state"\nacknowledge_after = 0'),
        )
    )
    assert at_once.adapter.acknowledge_after == 0


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (("nats://127.0.0.1:4222", "http://x"), "nats.url", "must be nats://host:port"),
        (('url = "nats://127.0.0.1:4222"', "url = []"), "nats.url", "at least one server"),
        (('id = "bank-icbc"', 'id = "Bank ICBC"'), "agency.id", "must be an agency id"),
        (('id = "bank-icbc"', 'id = "bank-icbc"\nsigning_kee = "x"'), "agency.signing_kee", "unknown field"),
        (('signing_key = "sig.pem"\n', ""), "agency.signing_key", "missing required field"),
        (('target = "127.0.0.1:50061"', 'target = "bank-core"'), "service.target", "host:port"),
        (("allow_plaintext = true", "allow_plaintext = 1"), "service.allow_plaintext", "true or false"),
        (("allow_plaintext = true", ""), "service", "no [service.tls]"),
        (
            ('target = "127.0.0.1:50061"', 'target = "core.bank:50061"'),
            "service.allow_plaintext",
            "this host",
        ),
        (('journal_dir = "state"', 'journal_dir = "state"\nconcurrency = 0'), "adapter.concurrency", ">= 1"),
        (
            ('journal_dir = "state"', 'journal_dir = "state"\nack_wait = "soon"'),
            "adapter.ack_wait",
            "seconds",
        ),
        (
            ('journal_dir = "state"', 'journal_dir = "state"\nacknowledge_after = -1'),
            "adapter.acknowledge_after",
            ">= 0",
        ),
        (("[adapter]", "[adaptor]"), "adaptor", "unknown table"),
        (
            ("allow_plaintext = true", '[service.tls]\ncert = "c.pem"\nca = "ca.pem"'),
            "service.tls.key",
            "cert and key go together",
        ),
    ],
)
def test_a_bad_field_is_named_with_its_file(
    tmp_path: Path, change: tuple[str, str], field: str, message: str
) -> None:
    path = _write(tmp_path, _MINIMAL.replace(*change))
    with pytest.raises(AdapterConfigError) as caught:
        load_adapter_file(path)
    assert str(caught.value).startswith(f"{path}: {field}: "), caught.value
    assert message in str(caught.value)


def test_keys_that_do_not_belong_to_the_agency_are_refused_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    ensure_agency_keys(DIRECTORY, state, clock=SystemClock())
    path = _write(tmp_path, _minimal_with_keys(state, signer=POLICE))
    with pytest.raises(AdapterConfigError, match=r"agency\.signing_key: key \S+ is not a registered"):
        load_adapter_materials(load_adapter_file(path))
    # Through the command: one line naming the file and field, exit 1, no journal created.
    monkeypatch.setattr("broker.cli._main.configure_logging", lambda *_a, **_k: None)
    assert main(["adapter", "--config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: agency.signing_key:" in err
    assert not (tmp_path / "state" / "adapter").exists()
    assert not (tmp_path / "state").joinpath("journal").exists()


async def _stop_payment_executed(broker: BrokerProcess, bank: BankCore) -> None:
    """police-310115 stops 10,000.00 on the seeded fraud account; the bank holds it, once."""
    police_key = load_agency_signing_key(broker.state_dir, POLICE)
    async with BusClient(broker.address, agency_id=POLICE, signing_key=police_key) as police:
        # 10,000.00 of the 15,000.00 the seeded fraud account still holds: executed in full.
        submitted = await police.submit(stop_payment(minor_units=1_000_000))
        request_id = submitted.status.id
        status = await police.wait_for(request_id, _TERMINAL, within=timedelta(seconds=60))
    assert common_pb2.RequestState.Name(status.state) == "REQUEST_STATE_EXECUTED"
    assert status.recipient == BANK
    assert len(bank.holds_for(request_id)) == 1


async def test_the_reference_bank_runs_behind_greenchannel_adapter(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "operator") as broker:
        registry = load_directory(DIRECTORY, key_overlays=[key_overlay_path(broker.state_dir)])
        with build_reference_agency(registry.get(BANK), data_dir=tmp_path, clock=SystemClock()) as bank:
            assert isinstance(bank.core, BankCore)
            async with bank.server() as server:
                config = tmp_path / "bank" / "adapter.toml"
                config.parent.mkdir()
                journal = tmp_path / "bank" / "journal"
                config.write_text(adapter_toml(broker, BANK, target=server.address, journal=journal))
                check = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "broker.cli", "adapter", "--config", str(config), "--check",
                    stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await check.communicate()
                assert check.returncode == 0
                assert b"ok (bank bank-icbc)" in out
                # --json: the same status as one JSON object.
                check = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "broker.cli", "adapter", "--config", str(config),
                    "--check", "--json", stdout=asyncio.subprocess.PIPE,
                )  # fmt: skip
                out, _ = await check.communicate()
                assert check.returncode == 0
                checked = json.loads(out)
                assert (checked["event"], checked["agency"], checked["kind"], checked["ok"]) == (
                    "adapter.checked", BANK, "bank", True
                )  # fmt: skip
                assert not journal.exists()  # --check starts nothing

                # The broker made the inbox consumers with its ack wait: another one is refused.
                other = tmp_path / "bank" / "other-ack-wait.toml"
                other.write_text(
                    adapter_toml(broker, BANK, target=server.address, journal=journal, ack_wait=45.0)
                )
                refused = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "broker.cli", "adapter", "--config", str(other),
                    stderr=asyncio.subprocess.PIPE,
                )  # fmt: skip
                _, err = await refused.communicate()
                assert refused.returncode == 1
                assert f"{other}: adapter.ack_wait: 45 s, but the broker created" in err.decode()
                async with adapter_process(config) as adapter:
                    async with grpc.aio.insecure_channel(adapter.health_address) as channel:
                        reply = await health_pb2_grpc.HealthStub(channel).Check(
                            health_pb2.HealthCheckRequest(service=ADAPTER_HEALTH_SERVICE), timeout=10
                        )
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING
                    await _stop_payment_executed(broker, bank.core)
                    # SIGTERM: drains and exits 0.
                    assert await adapter.stop() == 0
                assert journal.is_dir()


async def test_the_adapter_reaches_its_bank_over_mutual_tls(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    served, client = pki.server(), pki.client(BANK)
    async with broker_process(tmp_path / "operator") as broker:
        registry = load_directory(DIRECTORY, key_overlays=[key_overlay_path(broker.state_dir)])
        with build_reference_agency(registry.get(BANK), data_dir=tmp_path, clock=SystemClock()) as bank:
            assert isinstance(bank.core, BankCore)
            # The bank's system accepts only TLS clients with a certificate from its CA.
            server = grpc.aio.server()
            bank.add_servicer(bank.servicer, server)
            credentials = server_credentials(TlsFiles(cert=served.cert, key=served.key, ca=pki.ca))
            port = server.add_secure_port("127.0.0.1:0", credentials)
            await server.start()
            try:
                config = tmp_path / "bank" / "adapter.toml"
                config.parent.mkdir()
                tls = {"ca": pki.ca, "cert": client.cert, "key": client.key}
                config.write_text(
                    adapter_toml(
                        broker, BANK, target=f"127.0.0.1:{port}", journal=tmp_path / "journal", tls=tls
                    )
                )
                async with adapter_process(config) as adapter:
                    await _stop_payment_executed(broker, bank.core)
                    assert await adapter.stop() == 0
            finally:
                await server.stop(None)


def test_tls_files_are_read_and_checked_before_anything_starts(tmp_path: Path) -> None:
    """A client key that is not the certificate's fails at load (and --check), not at a handshake."""
    state = tmp_path / "state"
    ensure_agency_keys(DIRECTORY, state, clock=SystemClock())
    pki = Pki(tmp_path)
    mine, other = pki.client(BANK), pki.client(POLICE)
    tls = f'[service.tls]\nca = "{pki.ca}"\ncert = "{mine.cert}"\nkey = "{other.key}"\n'
    text = _minimal_with_keys(state).replace("allow_plaintext = true\n", tls)
    path = _write(tmp_path, text)
    with pytest.raises(AdapterConfigError) as caught:
        load_adapter_materials(load_adapter_file(path))
    assert str(caught.value).startswith(f"{path}: service.tls: private key file {other.key} does not belong")

    path.write_text(text.replace(f'key = "{other.key}"', f'key = "{mine.key}"'), encoding="utf-8")
    assert load_adapter_materials(load_adapter_file(path)).channel_credentials is not None


_HEALTH_BOUND = 120.0  # bounds a status that never comes; not a timing assertion


async def _follow_health(address: str, seen: list[int]) -> None:
    """Append every status the adapter's health Watch stream reports, until the stream ends."""
    async with grpc.aio.insecure_channel(address) as channel:
        stream = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service=ADAPTER_HEALTH_SERVICE)
        )
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for reply in stream:
                seen.append(reply.status)


async def _until(seen: list[int], statuses: list[int], what: str) -> None:
    deadline = asyncio.get_running_loop().time() + _HEALTH_BOUND
    while seen[-len(statuses) :] != statuses:
        assert asyncio.get_running_loop().time() < deadline, f"health never showed {what}: {seen}"
        await asyncio.sleep(0.05)


async def test_health_is_not_serving_while_nats_is_lost_and_during_shutdown(tmp_path: Path) -> None:
    serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    state = tmp_path / "state"
    ensure_agency_keys(DIRECTORY, state, clock=SystemClock())
    # A server this process may stop and start again on the same port (no preexec_fn fork: gRPC runs).
    server_config = EmbeddedNatsConfig(store_dir=tmp_path / "nats", parent_death_signal=False)
    async with EmbeddedNats(server_config) as nats_server:
        setup = await connect(NatsSettings(servers=(nats_server.url,), name="test-setup"))
        try:
            await ensure_streams(setup.jetstream(), stream_specs())  # the broker's part: the inbox
        finally:
            await setup.close()
        text = _minimal_with_keys(state).replace("nats://127.0.0.1:4222", nats_server.url)
        text = text.replace('journal_dir = "state"', 'journal_dir = "journal"')
        path = _write(tmp_path, text + '\n[health]\nlisten = "127.0.0.1:0"\n')
        config = load_adapter_file(path)
        seen: list[int] = []
        async with StandaloneAdapter(config, load_adapter_materials(config), clock=SystemClock()) as adapter:
            assert adapter.health_address is not None
            follower = asyncio.create_task(_follow_health(adapter.health_address, seen))
            try:
                await _until(seen, [serving], "SERVING once the inbox is consumed")
                await nats_server.stop()
                await _until(seen, [serving, not_serving], "NOT_SERVING while NATS is down")
                await nats_server.start()
                await _until(seen, [serving, not_serving, serving], "SERVING again after the reconnect")
            except BaseException:
                follower.cancel()
                raise
        # Leaving: NOT_SERVING before the runtime drains, then the health server goes away.
        await asyncio.wait_for(follower, _HEALTH_BOUND)
        assert seen == [serving, not_serving, serving, not_serving]


def test_the_example_file_shows_every_field_and_reads() -> None:
    path = REPO / "examples" / "adapter" / "adapter.toml"
    config = load_adapter_file(path)
    base = path.parent
    assert config.adapter.agency_id == "bank-icbc"
    assert config.signing_key == base / "keys" / "signing.pem"
    assert config.encryption_keys == (base / "keys" / "encryption.pem",)
    assert config.directory == base / "directory.toml"
    assert config.key_overlays == (base / "directory-keys.toml",)
    assert len(config.nats.servers) == 2
    assert config.nats.nkey_seed_file == base / "keys" / "bank-icbc.nk"
    assert config.nats.inbox_prefix == "_INBOX_bank-icbc"
    assert config.adapter.agency_target == "core.bank-icbc.internal:50061"
    assert config.tls == ServiceTls(
        ca=base / "tls" / "bank-ca.pem",
        cert=base / "tls" / "adapter.pem",
        key=base / "tls" / "adapter.key",
        server_name="core.bank-icbc.internal",
    )
    assert not config.allow_plaintext
    assert config.adapter.state_dir == Path("/var/lib/greenchannel/bank-icbc")
    assert config.health_listen == "127.0.0.1:8081"
    # Every field of the format is in the example: it is the reference an agency copies.
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    for table, fields in FIELDS.items():
        section = document
        for part in table.split("."):
            section = section[part]
        assert set(fields) <= set(section), table
