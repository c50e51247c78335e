"""Who is calling: bearer-token authentication of the Bus API, with a cluster-wide replay cache.

Every call carries ``authorization: Bearer <jwt>``, a token the agency signed with its own key
(:func:`broker.protocol.mint_bearer_token`), valid at most 5 minutes, used once. The
:class:`Authenticator` checks, cheapest first: the header, the issuer, the token
(:func:`broker.protocol.verify_bearer_token` against the registry), the TLS identity when
mTLS is required, and last the replay cache, so that only tokens with a valid signature can
write to it.

A token bound to a signed request (claim ``req`` = the digest of the request's payload) skips
the replay cache on the call that carries that request: replayed, it can only resend the very
same signed request, which intake answers as the first one. That saves one fsynced write per
Submit, Extend and Release. A bound token is refused on any other call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Any, Protocol

import grpc.aio
import nats.errors
import nats.js.errors
import structlog
from greenchannel.v1 import envelope_pb2
from nats.js.api import KeyValueConfig, StorageType
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue

from broker.protocol import (
    BROKER_AUDIENCE,
    REPLAY_BUCKET,
    Agency,
    BadSignatureError,
    Clock,
    ExpiredError,
    KeyNotValidError,
    LifetimeTooLongError,
    MalformedSignatureError,
    NotYetValidError,
    Registry,
    RevokedKeyError,
    TokenClaims,
    UnknownAgencyError,
    UnknownKeyError,
    VerificationError,
    WrongAudienceError,
    b64url_decode,
    body_digest,
    nats_error,
    verify_bearer_token,
)

from ._errors import AuthenticationError, UnavailableError
from ._refusals import note_caller

__all__ = [
    "REPLAY_TTL",
    "Authenticator",
    "Caller",
    "KvReplayCache",
    "ReplayCache",
    "open_replay_cache",
]

_log = structlog.get_logger(__name__)

REPLAY_TTL = timedelta(minutes=7)
"""How long the replay bucket keeps a token id.

A token is accepted while ``now < exp + 30 s`` with ``exp <= iat + 5 min`` and
``iat <= now + 30 s``: at most 6 minutes after its first use. The extra minute covers clocks
of broker replicas and NATS servers that disagree.
"""

_AUTHORIZATION = "authorization"
_SCHEME = "bearer"
_AGENCY_ID = re.compile(r"[a-z0-9][a-z0-9-]{1,62}")
_STREAM_NAME_IN_USE = 10058  # another replica created the bucket between our lookup and create


# -- replay cache ---------------------------------------------------------------------------------


class ReplayCache(Protocol):
    """Remembers token ids until they expire, so that every bearer token works exactly once."""

    async def first_use(self, jti: str, expires_at: datetime) -> bool:
        """Record ``jti``; True the first time it is seen, False on replay.

        The :class:`Authenticator` passes ``"<agency id>/<jti>"``: a jti is unique per issuer
        only, and one agency must not be able to burn another's token ids. ``expires_at`` is
        the token's ``exp``; the id must be remembered at least until then plus the skew.

        Raises :class:`~broker.hub.UnavailableError` if the cache cannot answer (callers must
        fail closed then: a token not recorded could be replayed).
        """
        ...


class KvReplayCache:
    """:class:`ReplayCache` on a NATS KV bucket, shared by every broker replica.

    ``kv.create`` succeeds only for a key that does not exist, atomically on the server, so
    two replicas presented the same token agree on which call was first. Entries vanish with
    the bucket's ``max_age``; ``expires_at`` only bounds how long they must live, which
    :data:`REPLAY_TTL` does for every token the :class:`Authenticator` accepts.
    """

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def first_use(self, jti: str, expires_at: datetime) -> bool:
        # Hashed: a jti is free text chosen by the agency's stack, and KV keys allow only
        # [-/_=.a-zA-Z0-9]; the hash also keeps the key length fixed.
        key = hashlib.sha256(jti.encode("utf-8")).hexdigest()
        try:
            await self._kv.create(key, expires_at.isoformat().encode("ascii"))
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except (nats.errors.Error, TimeoutError) as exc:
            error = nats_error(exc, "replay cache create")
            _log.warning("replay_cache.unavailable", error=str(error))
            raise UnavailableError("replay cache did not answer; retry shortly") from exc
        return True


async def open_replay_cache(
    js: JetStreamContext, *, bucket: str = REPLAY_BUCKET, replicas: int = 1
) -> KvReplayCache:
    """Bind the replay bucket, creating it (TTL :data:`REPLAY_TTL`) if it does not exist yet.

    Idempotent, and safe when several replicas start at once. A bucket found with a shorter
    TTL is extended: it would forget tokens that can still be replayed.
    """
    try:
        kv = await _bind_or_create(js, bucket, replicas)
        info = await js.stream_info(f"KV_{bucket}")
        max_age = info.config.max_age or 0.0  # 0 = kept forever
        if 0 < max_age < REPLAY_TTL.total_seconds():
            await js.update_stream(info.config.evolve(max_age=REPLAY_TTL.total_seconds()))
            _log.warning("replay_cache.ttl_extended", bucket=bucket, was_seconds=max_age)
    except (nats.errors.Error, TimeoutError) as exc:
        error = nats_error(exc, f"open replay bucket {bucket}")
        raise UnavailableError(f"cannot open replay bucket {bucket!r}: {error}") from exc
    return KvReplayCache(kv)


async def _bind_or_create(js: JetStreamContext, bucket: str, replicas: int) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket,
        description="GreenChannel bearer-token ids already used (replay protection)",
        history=1,
        ttl=REPLAY_TTL.total_seconds(),
        storage=StorageType.FILE,
        # On a cluster the cache must survive a node: every authenticated call writes to it.
        replicas=replicas,
    )
    try:
        kv = await js.create_key_value(config)
    except nats.js.errors.APIError as exc:
        if exc.err_code != _STREAM_NAME_IN_USE:
            raise
        return await js.key_value(bucket)
    _log.info("replay_cache.created", bucket=bucket, ttl_seconds=REPLAY_TTL.total_seconds())
    return kv


# -- server side --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Caller:
    """An authenticated caller of the Bus API."""

    agency: Agency
    """The calling agency, as the registry knows it."""
    token: TokenClaims
    """The verified bearer token."""
    tls_identity: str | None
    """The client certificate's identity (CN or SAN) when the call came over mTLS."""


# Reason codes (google.rpc.ErrorInfo.reason) and what an integrator should do about each.
_REASONS: Mapping[type[VerificationError], tuple[str, str]] = MappingProxyType(
    {
        MalformedSignatureError: (
            "MALFORMED_TOKEN",
            "send a JWT (EdDSA, with iss = sub = agency id, aud, iat, exp, jti, and kid in the header)",
        ),
        WrongAudienceError: ("WRONG_AUDIENCE", f"mint the token with aud = {BROKER_AUDIENCE!r}"),
        UnknownKeyError: ("UNKNOWN_KEY", "sign with a key listed for your agency in the registry"),
        RevokedKeyError: ("REVOKED_KEY", "the key is revoked; sign with your agency's current key"),
        KeyNotValidError: (
            "KEY_NOT_VALID",
            "the key was not valid at the token's iat; sign with a key valid now",
        ),
        BadSignatureError: (
            "BAD_SIGNATURE",
            "sign with the private key whose kid is in the header, and do not alter the token",
        ),
        LifetimeTooLongError: ("TOKEN_LIFETIME_TOO_LONG", "mint tokens valid for at most 5 minutes"),
        ExpiredError: ("EXPIRED_TOKEN", "mint a fresh token for every call; check your clock"),
        NotYetValidError: ("NOT_YET_VALID", "iat lies in the future; check your clock (NTP)"),
    }
)


def _reason_of(exc: VerificationError) -> tuple[str, str]:
    matches = [cls for cls in _REASONS if isinstance(exc, cls)]
    if not matches:
        return "MALFORMED_TOKEN", "send a bearer token minted with your agency's signing key"
    # The most specific class wins: the one nearest in the exception's MRO.
    return _REASONS[min(matches, key=type(exc).__mro__.index)]


class Authenticator:
    """Authenticates each gRPC call from its bearer token (and, optionally, its client certificate).

    Deny by default: every failure raises :class:`~broker.hub.AuthenticationError` whose
    ``reason`` says what to fix; a replay cache that cannot answer raises
    :class:`~broker.hub.UnavailableError` (the call is refused, and may be retried with a new
    token).
    """

    def __init__(
        self,
        registry: Registry,
        replay: ReplayCache,
        clock: Clock,
        *,
        audience: str = BROKER_AUDIENCE,
        require_tls_identity: bool = False,
    ) -> None:
        """``require_tls_identity``: the client certificate must name the token's agency; needs a
        server built with ``server_credentials(..., require_client_cert=True)``."""
        self._registry = registry
        self._replay = replay
        self._clock = clock
        self._audience = audience
        self._require_tls_identity = require_tls_identity

    @property
    def registry(self) -> Registry:
        """The registry tokens are checked against."""
        return self._registry

    def use_registry(self, registry: Registry) -> None:
        """Check later calls against ``registry`` (a reloaded directory: new keys, revocations)."""
        self._registry = registry

    async def authenticate(
        self,
        context: grpc.aio.ServicerContext,
        *,
        request: envelope_pb2.SignedMessage | None = None,
    ) -> Caller:
        """The caller of the RPC ``context`` belongs to; raises AuthenticationError otherwise.

        ``request``: the signed request the call carries (Submit, Extend, Release). A token
        bound to it (claim ``req``) is not recorded in the replay cache; a token bound to
        anything else, or bound on a call that carries no request, is refused."""
        token = self._bearer_token(context.invocation_metadata())
        registry = self._registry
        try:
            claims = verify_bearer_token(token, keys=registry, clock=self._clock, audience=self._audience)
        except UnknownKeyError as exc:
            issuer = _unverified_issuer(token)
            if issuer is not None and issuer not in registry:
                raise _failure(
                    "UNKNOWN_AGENCY",
                    f"agency {issuer!r} is not registered; use your agency id from the directory as iss",
                    agency_id=None,
                ) from exc
            raise self._rejected(exc, issuer) from exc
        except VerificationError as exc:
            raise self._rejected(exc, _unverified_issuer(token)) from exc
        try:
            agency = registry.get(claims.agency_id)
        except UnknownAgencyError as exc:
            # Only the broker's own identity gets here: its keys verify, but it is no agency.
            raise _failure(
                "UNKNOWN_AGENCY", f"{claims.agency_id!r} is not an agency", agency_id=None
            ) from exc
        tls_identity = self._tls_identity(context, claims.agency_id)
        if claims.request_digest is not None:
            _check_binding(claims, request)
        elif not await self._replay.first_use(f"{claims.agency_id}/{claims.jti}", claims.exp):
            raise _failure(
                "REPLAYED_TOKEN",
                f"token {claims.jti!r} was already used; mint a fresh token for every call",
                agency_id=claims.agency_id,
            )
        note_caller(agency.id)  # from here on, a refusal of this call is recorded as this agency's
        return Caller(agency=agency, token=claims, tls_identity=tls_identity)

    @staticmethod
    def _bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        values = [value for key, value in metadata or () if key.lower() == _AUTHORIZATION]
        if not values:
            raise _failure(
                "MISSING_TOKEN",
                "send metadata 'authorization: Bearer <token>' with a token minted for this call",
                agency_id=None,
            )
        if len(values) > 1:
            raise _failure("MALFORMED_TOKEN", "send exactly one 'authorization' header", agency_id=None)
        value = values[0]
        scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
        token = token.strip()
        if scheme.lower() != _SCHEME or not token or " " in token:
            raise _failure(
                "MALFORMED_TOKEN",
                "the 'authorization' header must be 'Bearer <token>'",
                agency_id=None,
            )
        return token

    def _rejected(self, exc: VerificationError, issuer: str | None) -> AuthenticationError:
        reason, hint = _reason_of(exc)
        # The verifier's text names claims, kids and times, all public; never key material.
        return _failure(reason, f"bearer token rejected: {exc}; {hint}", agency_id=issuer)

    def _tls_identity(self, context: grpc.aio.ServicerContext, agency_id: str) -> str | None:
        names = _certificate_names(context.auth_context())
        if not self._require_tls_identity:
            return names[0] if names else None
        if not names:
            raise _failure(
                "TLS_IDENTITY_MISMATCH",
                "this broker requires mTLS: connect with your agency's client certificate",
                agency_id=agency_id,
            )
        if agency_id not in names:
            raise _failure(
                "TLS_IDENTITY_MISMATCH",
                f"the client certificate does not name {agency_id!r}; use the certificate issued to "
                "the agency that signs the token",
                agency_id=agency_id,
            )
        return agency_id


def _check_binding(claims: TokenClaims, request: envelope_pb2.SignedMessage | None) -> None:
    """A token bound (``req``) to a signed request is good only for the call that carries it."""
    if request is None:
        raise _failure(
            "TOKEN_NOT_FOR_THIS_REQUEST",
            "the token is bound to a signed request (claim 'req') but this call carries none; mint"
            " a token without 'req' for it",
            agency_id=claims.agency_id,
        )
    if claims.request_digest != body_digest(request.payload):
        raise _failure(
            "TOKEN_NOT_FOR_THIS_REQUEST",
            "the token's claim 'req' is not the digest of this call's signed request; set 'req' to"
            ' body_digest(payload) of the request you send ("sha-256:" + base64url(SHA-256)), or'
            " leave it out",
            agency_id=claims.agency_id,
        )


def _certificate_names(auth_context: Mapping[str, Sequence[bytes]] | None) -> list[str]:
    """Common name first, then subject alternative names, of the verified client certificate."""
    names: list[str] = []
    for prop in ("x509_common_name", "x509_subject_alternative_name"):
        for raw in (auth_context or {}).get(prop, ()):
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if name not in names:
                names.append(name)
    return names


def _unverified_issuer(token: str) -> str | None:
    """``iss`` of a token whose signature did not verify: for the error message and the log only."""
    try:
        payload: Any = json.loads(b64url_decode(token.split(".")[1]))
    except (IndexError, ValueError):
        return None
    issuer = payload.get("iss") if isinstance(payload, dict) else None
    # Attacker-controlled: only something shaped like an agency id reaches the log.
    return issuer if isinstance(issuer, str) and _AGENCY_ID.fullmatch(issuer) else None


def _failure(reason: str, message: str, *, agency_id: str | None) -> AuthenticationError:
    # Never the token: it is a credential until it expires.
    _log.warning("grpc.auth_failed", reason=reason, agency_id=agency_id)
    return AuthenticationError(message, reason=reason)
