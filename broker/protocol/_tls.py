"""TLS material read from PEM files, checked once, and the client credentials built from it.

Shared by every gRPC client (an adapter calling its agency's system, a client calling the broker)
and by the broker's server side (:mod:`broker.hub`), which builds its server credentials from
:func:`read_key_pair` and :func:`read_certificates`. Files are read and checked when the
credentials are built, so a wrong path or a key that does not belong to its certificate fails at
start with the path in the message, instead of every handshake later with an opaque TLS alert.
Errors are ``ValueError`` naming the file, never quoting it (it could be a private key).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

__all__ = ["channel_credentials", "is_loopback", "read_certificates", "read_key_pair"]


def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (``127.0.0.0/8``, ``::1``; brackets allowed): where
    plaintext and unauthenticated listeners stay on the host itself."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"{what} file {path} does not exist") from exc
    except OSError as exc:
        raise ValueError(f"{what} file {path} cannot be read: {exc.strerror}") from exc


def read_certificates(path: Path, what: str) -> tuple[bytes, list[x509.Certificate]]:
    """(the PEM bytes, the certificates in them) of ``path``; ``what`` names it in errors."""
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise ValueError(f"{what} file {path} holds no PEM certificate") from exc
    return data, certs


def read_key_pair(cert_path: Path, key_path: Path) -> tuple[bytes, bytes]:
    """(key PEM, certificate chain PEM), checked to belong together."""
    cert_pem, chain = read_certificates(cert_path, "certificate")
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


def channel_credentials(
    ca: Path, *, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client TLS trusting ``ca`` for the server; ``cert`` and ``key`` (together) for mTLS."""
    if (cert is None) != (key is None):
        raise ValueError("client certificate and private key must be given together")
    ca_pem, _ = read_certificates(ca, "CA")
    if cert is None or key is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    key_pem, cert_pem = read_key_pair(cert, key)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem
    )
