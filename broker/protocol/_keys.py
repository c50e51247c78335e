"""Agency keys: Ed25519 for signatures, X25519 for encrypted data answers.

A key is named by its ``kid``, the RFC 7638 JWK thumbprint of its public part, so any party
can recompute the name from the key itself and a directory cannot mislabel a key.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from ._errors import KeyFileError

__all__ = [
    "KeyUse",
    "PublicKey",
    "SigningKey",
    "b64url_decode",
    "b64url_encode",
    "generate_signing_key",
    "jwk_set",
    "jwk_thumbprint",
    "load_signing_key",
    "public_jwk",
    "save_signing_key",
]


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class KeyUse(enum.StrEnum):
    """What a public key is for (the JWK ``use`` parameter)."""

    SIG = "sig"
    """Ed25519, verifies message signatures and bearer tokens."""
    ENC = "enc"
    """X25519, receives encrypted data answers."""


_CURVE = {KeyUse.SIG: "Ed25519", KeyUse.ENC: "X25519"}


def jwk_thumbprint(raw_public: bytes, use: KeyUse = KeyUse.SIG) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url) of an OKP public key (RFC 8037)."""
    # RFC 7638 §3.2: only the required members, lexicographic order, no whitespace.
    members = {"crv": _CURVE[use], "kty": "OKP", "x": b64url_encode(raw_public)}
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return b64url_encode(hashlib.sha256(canonical).digest())


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The key as an RFC 8037 OKP JWK; its ``kid`` is the RFC 7638 thumbprint of these members."""
    jwk = {
        "kty": "OKP",
        "crv": _CURVE[key.use],
        "x": b64url_encode(key.raw),
        "kid": key.kid,
        "use": key.use.value,
    }
    if key.use is KeyUse.SIG:
        jwk["alg"] = "EdDSA"  # RFC 8037 §3.1; an X25519 key serves several ECDH-ES algorithms
    return jwk


def jwk_set(keys: Iterable[PublicKey]) -> dict[str, list[dict[str, str]]]:
    """An RFC 7517 JWK Set of public keys (validity windows stay in the directory)."""
    return {"keys": [public_jwk(key) for key in keys]}


@dataclass(frozen=True, kw_only=True)
class PublicKey:
    """A public key as the registry holds it."""

    kid: str
    """RFC 7638 thumbprint of ``raw``."""
    raw: bytes
    """The 32 raw public key bytes."""
    use: KeyUse = KeyUse.SIG
    """Signatures (Ed25519) or encryption (X25519)."""
    not_before: datetime | None = None
    """Start of validity; None means valid since forever."""
    not_after: datetime | None = None
    """End of validity (exclusive); None means no planned end."""
    revoked_at: datetime | None = None
    """When the key was revoked; anything it signed at or after this instant is refused."""

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise ValueError(f"public key {self.kid!r} must be 32 bytes, got {len(self.raw)}")
        if self.kid != jwk_thumbprint(self.raw, self.use):
            raise ValueError(f"kid {self.kid!r} is not the RFC 7638 thumbprint of its key")

    @classmethod
    def from_raw(cls, raw: bytes, *, use: KeyUse = KeyUse.SIG, **window: datetime | None) -> PublicKey:
        return cls(kid=jwk_thumbprint(raw, use), raw=raw, use=use, **window)

    def valid_at(self, when: datetime) -> bool:
        """Whether the key could sign at ``when``: inside its window and not revoked yet."""
        if self.not_before is not None and when < self.not_before:
            return False
        if self.not_after is not None and when >= self.not_after:
            return False
        return self.revoked_at is None or when < self.revoked_at

    def ed25519(self) -> ed25519.Ed25519PublicKey:
        if self.use is not KeyUse.SIG:
            raise KeyFileError(f"key {self.kid} is an encryption key, not a signing key")
        return ed25519.Ed25519PublicKey.from_public_bytes(self.raw)

    def x25519(self) -> x25519.X25519PublicKey:
        if self.use is not KeyUse.ENC:
            raise KeyFileError(f"key {self.kid} is a signing key, not an encryption key")
        return x25519.X25519PublicKey.from_public_bytes(self.raw)


@dataclass(frozen=True)
class SigningKey:
    """An agency's (or the broker's) Ed25519 private key and its kid."""

    private: ed25519.Ed25519PrivateKey

    @property
    def raw_public(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @property
    def kid(self) -> str:
        return jwk_thumbprint(self.raw_public, KeyUse.SIG)

    def public(self, **window: datetime | None) -> PublicKey:
        return PublicKey.from_raw(self.raw_public, use=KeyUse.SIG, **window)

    def sign(self, data: bytes) -> bytes:
        return self.private.sign(data)


def generate_signing_key() -> SigningKey:
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


def save_signing_key(key: SigningKey, path: Path) -> None:
    """Write the private key as PKCS#8 PEM, readable by the owner only. Never overwrites."""
    pem = key.private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: an existing key is never silently replaced; rotation writes a new file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def load_signing_key(path: Path) -> SigningKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read key file: {exc.strerror}") from exc
    try:
        private = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 key, found {type(private).__name__}")
    return SigningKey(private)
