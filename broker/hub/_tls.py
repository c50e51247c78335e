"""Optional mutual TLS for the broker's gRPC server and its clients.

Files are read and checked once, when the credentials are built, so a wrong path or a key
that does not belong to its certificate stops the broker at startup with the path in the
message, instead of failing every handshake later with an opaque TLS alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["TlsFiles", "channel_credentials", "server_credentials"]


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM files of one TLS endpoint."""

    cert: Path
    """This endpoint's certificate, optionally followed by its intermediate CA certificates."""
    key: Path
    """The unencrypted private key of ``cert`` (PKCS#8 or traditional PEM)."""
    ca: Path
    """CA certificates trusted to issue the *other* side's certificates."""


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise ValueError(f"{what} file {path} cannot be read: {exc.strerror}") from exc


def _certificates(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what} file {path} holds no PEM certificate") from exc
    return data, certs


def _key_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """(key PEM, certificate chain PEM), checked to belong together."""
    cert_pem, chain = _certificates(cert_path, "certificate")
    key_pem = _read(key_path, "private key")
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        # Never the exception text: it could quote the key file.
        raise ValueError(f"private key file {key_path} is not an unencrypted PEM private key") from exc
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, public) != chain[0].public_key().public_bytes(der, public):
        raise ValueError(f"private key file {key_path} does not belong to certificate {cert_path}")
    return key_pem, cert_pem


def server_credentials(files: TlsFiles, *, require_client_cert: bool = True) -> grpc.ServerCredentials:
    """Server TLS. With ``require_client_cert`` (mTLS) a client without a certificate issued by
    ``files.ca`` fails the handshake. Without it, grpc does not even ask for client certificates,
    so the bearer token alone authenticates and ``Authenticator(require_tls_identity=True)``
    refuses every call."""
    key_pem, cert_pem = _key_pair(files.cert, files.key)
    ca_pem, _ = _certificates(files.ca, "CA")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_cert,
    )


def channel_credentials(
    ca: Path, *, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS trusting ``ca`` for the server; ``cert`` and ``key`` (together) for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("client certificate and private key must be given together")
    ca_pem, _ = _certificates(ca, "CA")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    key_pem, cert_pem = _key_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
