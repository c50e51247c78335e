"""Optional mutual TLS for the broker's gRPC server.

The PEM files are read and checked by the protocol core (:mod:`broker.protocol`), which also
builds the client side (``channel_credentials``); the hub adds only the server credentials.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

from broker.protocol import read_certificates, read_key_pair

__all__ = ["TlsFiles", "server_credentials"]


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """PEM files of one TLS endpoint."""

    cert: Path
    """This endpoint's certificate, optionally followed by its intermediate CA certificates."""
    key: Path
    """The unencrypted private key of ``cert`` (PKCS#8 or traditional PEM)."""
    ca: Path
    """CA certificates trusted to issue the *other* side's certificates."""


def server_credentials(files: TlsFiles, *, require_client_cert: bool = True) -> grpc.ServerCredentials:
    """Server TLS. With ``require_client_cert`` (mTLS) a client without a certificate issued by
    ``files.ca`` fails the handshake. Without it, grpc does not even ask for client certificates,
    so the bearer token alone authenticates and ``Authenticator(require_tls_identity=True)``
    refuses every call."""
    key_pem, cert_pem = read_key_pair(files.cert, files.key)
    ca_pem, _ = read_certificates(files.ca, "CA")
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=ca_pem,
        require_client_auth=require_client_cert,
    )
