"""Detached message signatures: compact JWS, EdDSA (Ed25519), ``b64=false`` (RFC 7797).

The payload is the exact body bytes that travel (protobuf serialization is not canonical, so
nobody re-encodes anything), and the JWS payload segment is left empty. Because the payload is
opaque bytes, the claims live in the *protected header*::

    {"alg": "EdDSA", "b64": false, "crit": ["b64"], "kid": ..., "typ": "gc+jws",
     "iss": ..., "aud": ..., "jti": ..., "iat": ..., "exp": ..., "gct": ..., "dig": ...}

Serialized: ``<b64url(header)>..<b64url(signature)>``; signing input:
``ASCII(b64url(header)) || "." || body``.

The JWS is built and checked here with ``cryptography`` rather than through pyjwt's ``PyJWS``.
PyJWS does support ``b64=false`` with a detached payload, but it verifies the signature in the
same call that parses the header, so it cannot look the key up by issuer first, and it would
parse every header twice. Everything is pinned: ``alg`` must be ``EdDSA``, ``crit`` exactly
``["b64"]``, ``b64`` exactly ``false``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import json
import math
import re
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from ._clock import Clock
from ._errors import (
    BadSignatureError,
    DigestMismatchError,
    ExpiredError,
    KeyNotValidError,
    LifetimeTooLongError,
    MalformedSignatureError,
    NotYetValidError,
    RevokedKeyError,
    UnknownAgencyError,
    UnknownKeyError,
    WrongAudienceError,
    WrongIssuerError,
)
from ._keys import KeyUse, PublicKey, SigningKey, b64url_decode, b64url_encode

__all__ = [
    "Claims",
    "KeyStore",
    "StaticKeyStore",
    "body_digest",
    "sign_detached",
    "verify_detached",
]

_ALG = "EdDSA"
_TYP = "gc+jws"
_DIGEST_PREFIX = "sha-256:"
# A real header is ~400 characters. The cap bounds the work an unauthenticated sender can
# cause (base64 + JSON parsing happen before any signature check).
_MAX_TOKEN_CHARS = 8192
_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_DIGEST_RE = re.compile(r"sha-256:[A-Za-z0-9_-]{43}")
# Without a cap on exp - iat, revocation would be toothless: whoever steals a key revoked at T
# can sign with iat = T - 1 s and exp = year 2100. The cap bounds that window to T + cap.
_DEFAULT_MAX_TTL = timedelta(hours=1)


class KeyStore(Protocol):
    """Where verifiers find an agency's public keys (the registry, or a static map)."""

    def public_keys(self, agency_id: str) -> Sequence[PublicKey]:
        """All keys of ``agency_id``, current and retired. Empty (or UnknownKeyError /
        UnknownAgencyError) if the agency is unknown."""
        ...


class StaticKeyStore:
    """An in-memory :class:`KeyStore`; for tests and offline tools."""

    def __init__(self, mapping: Mapping[str, Sequence[PublicKey]]) -> None:
        # Copied so later changes to the caller's containers cannot alter what verifies.
        self._keys: dict[str, tuple[PublicKey, ...]] = {
            agency: tuple(keys) for agency, keys in mapping.items()
        }

    def public_keys(self, agency_id: str) -> Sequence[PublicKey]:
        return self._keys.get(agency_id, ())


@dataclass(frozen=True, kw_only=True)
class Claims:
    """What a verified detached signature asserts about the body."""

    iss: str
    """The signing agency."""
    aud: str
    """The agency the body is addressed to."""
    jti: str
    """Unique id of the signature, usually the message id."""
    iat: datetime
    """Signing time (UTC, whole seconds)."""
    exp: datetime
    """End of validity, exclusive (UTC, whole seconds)."""
    message_type: str
    """GreenChannel message type (the ``gct`` header), e.g. ``STOP_PAYMENT`` or ``EVENT``."""
    digest: str
    """``sha-256:<b64url>`` of the body."""
    kid: str
    """RFC 7638 thumbprint of the key that signed."""


def body_digest(body: bytes) -> str:
    """``"sha-256:" + base64url(sha256(body))``, the value of the ``dig`` claim."""
    return _DIGEST_PREFIX + b64url_encode(hashlib.sha256(body).digest())


# SigningKey.kid recomputes a thumbprint (~5 us, a fifth of an Ed25519 signature). Weak keys,
# so a rotated-out private key is not kept alive by this cache.
_KID_CACHE: weakref.WeakKeyDictionary[SigningKey, str] = weakref.WeakKeyDictionary()


def _kid_of(key: SigningKey) -> str:
    kid = _KID_CACHE.get(key)
    if kid is None:
        kid = _KID_CACHE[key] = key.kid
    return kid


def sign_detached(
    body: bytes,
    *,
    key: SigningKey,
    iss: str,
    aud: str,
    jti: str,
    message_type: str,
    clock: Clock,
    ttl: timedelta = timedelta(minutes=10),
) -> str:
    """Sign ``body`` as ``iss`` for ``aud``; returns ``<header>..<signature>``."""
    for name, value in (("iss", iss), ("aud", aud), ("jti", jti), ("message_type", message_type)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string")
    ttl_seconds = int(ttl.total_seconds())
    if ttl_seconds < 1:
        raise ValueError(f"ttl must be at least one second, got {ttl}")
    iat = math.floor(clock.now().timestamp())
    header = {
        "alg": _ALG,
        "b64": False,
        "crit": ["b64"],
        "kid": _kid_of(key),
        "typ": _TYP,
        "iss": iss,
        "aud": aud,
        "jti": jti,
        "iat": iat,
        "exp": iat + ttl_seconds,
        "gct": message_type,
        "dig": body_digest(body),
    }
    encoded_header = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    signature = key.sign(encoded_header.encode("ascii") + b"." + body)
    return f"{encoded_header}..{b64url_encode(signature)}"


def verify_detached(
    token: str,
    body: bytes,
    *,
    keys: KeyStore,
    audience: str,
    clock: Clock,
    expected_issuer: str | None = None,
    expected_type: str | None = None,
    skew: timedelta = timedelta(seconds=30),
    max_ttl: timedelta | None = _DEFAULT_MAX_TTL,
) -> Claims:
    """Verify a detached signature over ``body`` and return its claims.

    Checks run cheapest first, and every failure raises a specific
    :class:`~broker.protocol.VerificationError`: structure (Malformed), issuer, audience and
    message type, key lookup (UnknownKey), key state at ``iat`` (RevokedKey / KeyNotValid),
    body digest (DigestMismatch), signature (BadSignature), then time: lifetime cap
    (LifetimeTooLong), ``exp`` (Expired), ``iat`` (NotYetValid).

    ``clock`` need not be the wall clock: a verifier checking a queued message may pass the
    broker's notarized receive time. ``max_ttl=None`` lifts the cap on ``exp - iat``.
    """
    encoded_header, signature, header = _parse(token)
    claims = _claims(header)

    if expected_issuer is not None and claims.iss != expected_issuer:
        raise WrongIssuerError(f"signed by {claims.iss!r}, expected {expected_issuer!r}")
    if claims.aud != audience:
        raise WrongAudienceError(f"addressed to {claims.aud!r}, not {audience!r}")
    if expected_type is not None and claims.message_type != expected_type:
        raise MalformedSignatureError(
            f"signature is for message type {claims.message_type!r}, expected {expected_type!r}"
        )

    public = _find_signing_key(keys, claims.iss, claims.kid, claims.iat)

    # The digest is not needed for security (the signature covers the body anyway); it is
    # checked first so that a body altered in transit is reported as such, not as a forgery.
    if not hmac.compare_digest(body_digest(body), claims.digest):
        raise DigestMismatchError(f"body does not match the digest signed in {claims.jti!r}")
    try:
        _ed25519_key(public.raw).verify(signature, encoded_header.encode("ascii") + b"." + body)
    except InvalidSignature as exc:
        raise BadSignatureError(f"signature of {claims.jti!r} does not verify") from exc

    _check_times(claims.iat, claims.exp, clock=clock, skew=skew, max_ttl=max_ttl)
    return claims


def _find_signing_key(keys: KeyStore, issuer: str, kid: str, iat: datetime) -> PublicKey:
    """The issuer's signing key ``kid``, if it could sign at ``iat``.

    A key revoked at T refuses signatures dated at or after T; what it signed before T stays
    valid, because revocation says "do not trust this key from now on", not "everything it
    ever signed is forged" (which would void every past message of a rotated agency). The
    hole that leaves, back-dating with a stolen key, is bounded by the cap on ``exp - iat``.
    """
    try:
        candidates = keys.public_keys(issuer)
    except UnknownAgencyError as exc:
        raise UnknownKeyError(f"unknown issuer {issuer!r}") from exc
    public = next((k for k in candidates if k.kid == kid), None)
    if public is None:
        raise UnknownKeyError(f"issuer {issuer!r} has no key {kid!r}")
    if public.use is not KeyUse.SIG:
        raise UnknownKeyError(f"key {kid!r} of {issuer!r} is an encryption key, not a signing key")
    if public.revoked_at is not None and iat >= public.revoked_at:
        raise RevokedKeyError(f"key {kid!r} of {issuer!r} was revoked at {public.revoked_at.isoformat()}")
    if not public.valid_at(iat):
        raise KeyNotValidError(f"key {kid!r} of {issuer!r} was not valid at {iat.isoformat()}")
    return public


def _check_times(
    iat: datetime,
    exp: datetime,
    *,
    clock: Clock,
    skew: timedelta,
    max_ttl: timedelta | None,
) -> None:
    """Lifetime cap, expiry (``exp`` exclusive, RFC 7519) and ``iat`` not in the future."""
    if max_ttl is not None and exp - iat > max_ttl:
        raise LifetimeTooLongError(f"lifetime {exp - iat} exceeds {max_ttl}")
    now = clock.now()
    if now - skew >= exp:
        raise ExpiredError(f"expired at {exp.isoformat()}")
    if iat > now + skew:
        raise NotYetValidError(f"issued at {iat.isoformat()}, in the future")


@lru_cache(maxsize=1024)
def _ed25519_key(raw: bytes) -> ed25519.Ed25519PublicKey:
    # Keyed by the raw bytes, not the kid, so a cache entry can never disagree with its key.
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


def _parse(token: str) -> tuple[str, bytes, dict[str, Any]]:
    """Split and decode; returns (encoded header, signature bytes, header object)."""
    if not isinstance(token, str):
        raise MalformedSignatureError("signature must be a str")
    if len(token) > _MAX_TOKEN_CHARS:
        raise MalformedSignatureError(f"signature longer than {_MAX_TOKEN_CHARS} characters")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedSignatureError("not a compact JWS (need three dot-separated parts)")
    encoded_header, payload, encoded_signature = parts
    if payload:
        raise MalformedSignatureError("payload part must be empty (detached, RFC 7797)")
    header_bytes = _strict_b64url_decode(encoded_header, "header")
    signature = _strict_b64url_decode(encoded_signature, "signature")
    if len(signature) != 64:
        raise MalformedSignatureError(f"an Ed25519 signature has 64 bytes, got {len(signature)}")
    try:
        header = json.loads(
            header_bytes.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as exc:
        # ValueError covers UnicodeDecodeError and JSONDecodeError, and also what json raises for
        # an integer of more than 4300 digits (sys.int_info.str_digits_check_threshold), which
        # fits in a header under the size cap.
        raise MalformedSignatureError("header is not UTF-8 JSON") from exc
    if not isinstance(header, dict):
        raise MalformedSignatureError("header is not a JSON object")
    return encoded_header, signature, header


def _strict_b64url_decode(text: str, what: str) -> bytes:
    """base64url without padding, canonical only (one string per byte sequence)."""
    if len(text) % 4 == 1 or not _B64URL.fullmatch(text):
        raise MalformedSignatureError(f"{what} is not unpadded base64url")
    try:
        data = b64url_decode(text)
    except (binascii.Error, ValueError) as exc:
        raise MalformedSignatureError(f"{what} is not unpadded base64url") from exc
    # Non-zero trailing bits decode to the same bytes; refusing them keeps tokens unmalleable.
    if b64url_encode(data) != text:
        raise MalformedSignatureError(f"{what} is not canonical base64url")
    return data


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # RFC 7515 §4: duplicate header names must be rejected (or the last taken). Rejecting
    # stops two parsers from disagreeing about which "aud" was signed.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise MalformedSignatureError("duplicate member in header")
    return result


def _reject_constant(name: str) -> Any:
    raise MalformedSignatureError(f"{name} is not valid JSON")


def _claims(header: dict[str, Any]) -> Claims:
    if header.get("alg") != _ALG:
        # Pinned, never taken from the token: "none" and HS256 (keyed with the public key)
        # are the classic forgeries.
        raise MalformedSignatureError(f"alg must be {_ALG!r}, got {header.get('alg')!r}")
    if header.get("b64") is not False:
        raise MalformedSignatureError("b64 must be false (unencoded detached payload)")
    crit = header.get("crit")
    if not isinstance(crit, list) or crit != ["b64"]:
        raise MalformedSignatureError('crit must be exactly ["b64"]')
    if header.get("typ") != _TYP:
        raise MalformedSignatureError(f"typ must be {_TYP!r}")
    iat = _time(header, "iat")
    exp = _time(header, "exp")
    if exp <= iat:
        raise MalformedSignatureError("exp must lie after iat")
    digest = claim_text(header, "dig")
    if not _DIGEST_RE.fullmatch(digest):
        raise MalformedSignatureError("dig must be 'sha-256:' + base64url(32 bytes)")
    return Claims(
        iss=claim_text(header, "iss"),
        aud=claim_text(header, "aud"),
        jti=claim_text(header, "jti"),
        iat=iat,
        exp=exp,
        message_type=claim_text(header, "gct"),
        digest=digest,
        kid=claim_text(header, "kid"),
    )


def claim_text(header: Mapping[str, Any], name: str) -> str:
    """A required non-empty string claim, or MalformedSignatureError. Shared with bearer tokens."""
    value = header.get(name)
    if not isinstance(value, str) or not value:
        raise MalformedSignatureError(f"claim {name!r} must be a non-empty string")
    return value


def _time(header: Mapping[str, Any], name: str) -> datetime:
    value = header.get(name)
    # bool is an int subclass; true must not pass as 1970-01-01T00:00:01.
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedSignatureError(f"claim {name!r} must be an integer (seconds since epoch)")
    return _numeric_date(value, name)


def _numeric_date(value: float, name: str) -> datetime:
    """A JWT NumericDate as an aware UTC datetime; Malformed if out of range."""
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError) as exc:
        raise MalformedSignatureError(f"claim {name!r} is out of range") from exc
