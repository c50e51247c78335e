"""Mutual TLS: a real grpc.aio server with certificates made at test time (never committed)."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import cast

import grpc
import grpc.aio
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from greenchannel.v1 import registry_pb2, registry_pb2_grpc
from nats.js.client import JetStreamContext

from broker.client import ErrorDetails, bearer_metadata, error_details
from broker.hub._auth import Authenticator, Caller, open_replay_cache
from broker.hub._grpc_status import guard_unary
from broker.hub._tls import TlsFiles, server_credentials
from broker.protocol import (
    ManualClock,
    channel_credentials,
    ensure_agency_keys,
    key_overlay_path,
    load_agency_signing_key,
    load_directory,
)

pytestmark = pytest.mark.integration

SAMPLE = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
BANK = "bank-icbc"
OTHER_BANK = "bank-ccb"
CALL_TIMEOUT = 10.0
# Certificates are checked against the wall clock by BoringSSL, not against ManualClock.
NOW = datetime.now(UTC)


# -- a throwaway PKI ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "GreenChannel tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


class Pki:
    """A CA that issues a server certificate for 127.0.0.1 / localhost and client certificates."""

    def __init__(self, directory: Path, label: str = "ca") -> None:
        self.directory = directory
        self.label = label
        self._key = _write_key(directory / f"{label}.key")
        self._name = _name(f"GreenChannel test CA {label}")
        cert = (
            self._builder(self._name, self._key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca = directory / f"{label}.pem"
        self.ca.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - timedelta(hours=1))
            .not_valid_after(NOW + timedelta(days=1))
        )

    def _issue(self, stem: str, common_name: str, *, server: bool) -> Issued:
        key_path = self.directory / f"{stem}.key"
        key = _write_key(key_path)
        builder = self._builder(_name(common_name), key.public_key()).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        cert_path = self.directory / f"{stem}.pem"
        cert_path.write_bytes(
            builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        )
        return Issued(cert=cert_path, key=key_path)

    def server(self) -> Issued:
        return self._issue(f"{self.label}-server", "greenchannel-broker", server=True)

    def client(self, agency_id: str) -> Issued:
        return self._issue(f"{self.label}-client-{agency_id}", agency_id, server=False)


# -- server ---------------------------------------------------------------------------------------


class RegistryDouble(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth
        self.callers: list[Caller] = []

    @guard_unary
    async def GetAgency(
        self, request: registry_pb2.GetAgencyRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetAgencyResponse:
        caller = await self.auth.authenticate(context)
        self.callers.append(caller)
        return registry_pb2.GetAgencyResponse(agency=registry_pb2.Agency(id=caller.agency.id))


@dataclass
class Env:
    pki: Pki
    state: Path
    clock: ManualClock
    port: int
    service: RegistryDouble
    identity_required: bool

    async def call(self, credentials: grpc.ChannelCredentials, agency_id: str = BANK) -> str:
        """Call GetAgency over TLS as ``agency_id``; returns the agency id the server saw."""
        metadata = bearer_metadata(
            load_agency_signing_key(self.state, agency_id), agency_id=agency_id, clock=self.clock
        )
        async with grpc.aio.secure_channel(f"127.0.0.1:{self.port}", credentials) as channel:
            stub = cast(
                "registry_pb2_grpc.RegistryServiceAsyncStub", registry_pb2_grpc.RegistryServiceStub(channel)
            )
            response: registry_pb2.GetAgencyResponse = await stub.GetAgency(
                registry_pb2.GetAgencyRequest(id=agency_id), metadata=metadata, timeout=CALL_TIMEOUT
            )
        return response.agency.id

    async def refused(self, credentials: grpc.ChannelCredentials, agency_id: str = BANK) -> ErrorDetails:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await self.call(credentials, agency_id)
        return error_details(caught.value)


async def _serve(
    tmp_path: Path, js: JetStreamContext, *, require_client_cert: bool, require_tls_identity: bool = True
) -> AsyncIterator[Env]:
    pki = Pki(tmp_path)
    state = tmp_path / "state"
    ensure_agency_keys(SAMPLE, state, clock=ManualClock(T0 - timedelta(days=1)))
    clock = ManualClock(T0)
    bucket = f"gc_replay_tls_{uuid.uuid4().hex[:12]}"
    auth = Authenticator(
        load_directory(SAMPLE, key_overlays=[key_overlay_path(state)]),
        await open_replay_cache(js, bucket=bucket),
        clock,
        require_tls_identity=require_tls_identity,
    )
    service = RegistryDouble(auth)  # type: ignore[abstract]  # one method; grpc answers UNIMPLEMENTED for the rest
    server = grpc.aio.server()
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(service, server)
    issued = pki.server()
    files = TlsFiles(cert=issued.cert, key=issued.key, ca=pki.ca)
    port = server.add_secure_port(
        "127.0.0.1:0", server_credentials(files, require_client_cert=require_client_cert)
    )
    await server.start()
    try:
        yield Env(
            pki=pki,
            state=state,
            clock=clock,
            port=port,
            service=service,
            identity_required=require_tls_identity,
        )
    finally:
        await server.stop(None)
        await js.delete_key_value(bucket)


@pytest_asyncio.fixture
async def mtls(tmp_path: Path, js: JetStreamContext) -> AsyncIterator[Env]:
    async for env in _serve(tmp_path, js, require_client_cert=True):
        yield env


@pytest_asyncio.fixture(params=[True, False], ids=["identity-required", "token-only"])
async def tls_only(
    request: pytest.FixtureRequest, tmp_path: Path, js: JetStreamContext
) -> AsyncIterator[Env]:
    """Server-only TLS; the Authenticator requires a TLS identity or not, as the param says."""
    async for env in _serve(tmp_path, js, require_client_cert=False, require_tls_identity=request.param):
        yield env


def _client(env: Env, agency_id: str) -> grpc.ChannelCredentials:
    issued = env.pki.client(agency_id)
    return channel_credentials(env.pki.ca, cert=issued.cert, key=issued.key)


# -- mTLS ----------------------------------------------------------------------------------------


async def test_the_certificate_of_the_tokens_agency_passes(mtls: Env) -> None:
    assert await mtls.call(_client(mtls, BANK)) == BANK
    (caller,) = mtls.service.callers
    assert caller.tls_identity == BANK
    assert caller.agency.id == BANK


async def test_a_client_without_a_certificate_fails_the_handshake(mtls: Env) -> None:
    details = await mtls.refused(channel_credentials(mtls.pki.ca))
    assert details.code is grpc.StatusCode.UNAVAILABLE
    assert details.reason is None  # the server never saw the call
    assert mtls.service.callers == []


async def test_a_certificate_from_another_ca_fails_the_handshake(mtls: Env, tmp_path: Path) -> None:
    (tmp_path / "rogue").mkdir()
    rogue = Pki(tmp_path / "rogue", label="rogue")
    issued = rogue.client(BANK)
    details = await mtls.refused(channel_credentials(mtls.pki.ca, cert=issued.cert, key=issued.key))
    assert details.code is grpc.StatusCode.UNAVAILABLE
    assert mtls.service.callers == []


async def test_a_certificate_of_another_agency_is_a_tls_identity_mismatch(mtls: Env) -> None:
    details = await mtls.refused(_client(mtls, OTHER_BANK), agency_id=BANK)
    assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TLS_IDENTITY_MISMATCH")
    assert BANK in details.message


async def test_server_only_tls_needs_no_client_certificate_unless_identity_is_required(
    tls_only: Env,
) -> None:
    no_cert = channel_credentials(tls_only.pki.ca)
    with_cert = _client(tls_only, BANK)
    if not tls_only.identity_required:
        assert await tls_only.call(no_cert) == BANK
        assert await tls_only.call(with_cert) == BANK
        assert [caller.tls_identity for caller in tls_only.service.callers] == [None, None]
        return
    # grpc does not ask for a client certificate here, so none is ever seen: a misconfiguration
    # that refuses every call rather than letting one through on the token alone.
    for credentials in (no_cert, with_cert):
        details = await tls_only.refused(credentials)
        assert (details.code, details.reason) == (grpc.StatusCode.UNAUTHENTICATED, "TLS_IDENTITY_MISMATCH")
        assert "mTLS" in details.message


# -- configuration errors -------------------------------------------------------------------------


def test_missing_files_are_named(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    issued = pki.server()
    missing = tmp_path / "nope.pem"
    with pytest.raises(ValueError, match=str(missing)):
        server_credentials(TlsFiles(cert=missing, key=issued.key, ca=pki.ca))
    with pytest.raises(ValueError, match=str(missing)):
        server_credentials(TlsFiles(cert=issued.cert, key=missing, ca=pki.ca))
    with pytest.raises(ValueError, match=str(missing)):
        server_credentials(TlsFiles(cert=issued.cert, key=issued.key, ca=missing))
    with pytest.raises(ValueError, match=str(missing)):
        channel_credentials(missing)


def test_unreadable_and_wrong_files_are_named(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    issued = pki.server()
    other = pki.client(BANK)
    with pytest.raises(ValueError, match=f"{issued.key}.*no PEM certificate"):
        server_credentials(TlsFiles(cert=issued.key, key=issued.key, ca=pki.ca))
    with pytest.raises(ValueError, match=f"{issued.cert}.*not an unencrypted PEM private key"):
        server_credentials(TlsFiles(cert=issued.cert, key=issued.cert, ca=pki.ca))
    with pytest.raises(ValueError, match=f"{other.key} does not belong to certificate {issued.cert}"):
        server_credentials(TlsFiles(cert=issued.cert, key=other.key, ca=pki.ca))
    with pytest.raises(ValueError, match="cannot be read"):
        channel_credentials(tmp_path)  # a directory


def test_a_client_certificate_needs_its_key(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    issued = pki.client(BANK)
    with pytest.raises(ValueError, match="together"):
        channel_credentials(pki.ca, cert=issued.cert)
    with pytest.raises(ValueError, match="together"):
        channel_credentials(pki.ca, key=issued.key)
