"""gRPC bearer tokens: short-lived JWTs (EdDSA, attached payload) signed with the agency key.

Claims: ``iss`` = ``sub`` = agency id, ``aud`` (the broker), ``iat``, ``exp`` (at most
``max_ttl`` after ``iat``), ``jti`` (required; the caller records it in the replay cache until
``exp``), and optionally ``req``: the :func:`body_digest` of the payload of the one signed request
the call carries. A token bound that way is good only for a call carrying that request, so the
broker needs no replay-cache write for it (a replay can only resend the very same request, which
intake deduplicates). The header carries the ``kid``.

pyjwt mints the tokens. Verification is done here, as for detached signatures: one strict parse
(canonical base64url, no duplicate members), ``alg`` pinned to EdDSA, the Ed25519 signature over
the segments as read, and every time decision through the injected clock, never the wall clock.
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.exceptions import InvalidSignature

from ._clock import Clock
from ._errors import (
    BadSignatureError,
    MalformedSignatureError,
    NotYetValidError,
    WrongAudienceError,
)
from ._keys import SigningKey
from ._registry import BROKER_ID
from ._signing import (
    KeyStore,
    _check_times,
    _ed25519_key,
    _find_signing_key,
    _kid_of,
    _numeric_date,
    _reject_constant,
    _strict_b64url_decode,
    _unique_members,
    body_digest,
    claim_text,
)

__all__ = ["BROKER_AUDIENCE", "TokenClaims", "mint_bearer_token", "verify_bearer_token"]

BROKER_AUDIENCE = BROKER_ID
"""Default ``aud`` of bearer tokens presented to the broker's Bus API."""

_ALG = "EdDSA"
_MAX_TTL = timedelta(minutes=5)
_MAX_TOKEN_CHARS = 4096

# pyjwt mints tokens; verifying them (one strict parse, the signature, every claim with typed
# errors and the injected clock) is done here, as for detached signatures.
_JWT = jwt.PyJWT()


@dataclass(frozen=True, kw_only=True)
class TokenClaims:
    """What a verified bearer token proves."""

    agency_id: str
    """The authenticated agency (``iss`` = ``sub``)."""
    jti: str
    """Token id; record it in the replay cache until ``exp``."""
    iat: datetime
    """Issue time (UTC)."""
    exp: datetime
    """Expiry (UTC, exclusive)."""
    kid: str
    """The agency key that signed the token."""
    request_digest: str | None = None
    """The ``req`` claim: :func:`body_digest` of the signed request's payload the token is bound
    to; None for a token not bound to a request (then only the replay cache stops a replay)."""


def mint_bearer_token(
    key: SigningKey,
    *,
    agency_id: str,
    clock: Clock,
    ttl: timedelta = timedelta(minutes=2),
    audience: str = BROKER_AUDIENCE,
    request_payload: bytes | None = None,
) -> str:
    """A bearer token for ``agency_id``; ``ttl`` at most 5 minutes, as the broker requires.

    ``request_payload``: the ``payload`` bytes of the signed request the call carries (Submit,
    Extend, Release). The token is then bound to that request (claim ``req``) and good for no
    other call, which spares the broker a durable replay-cache write."""
    if not agency_id:
        raise ValueError("agency_id must be a non-empty string")
    ttl_seconds = int(ttl.total_seconds())
    # Refused here rather than minted and refused by the broker on first use.
    if not 1 <= ttl_seconds <= _MAX_TTL.total_seconds():
        raise ValueError(f"ttl must be between 1 s and {_MAX_TTL}, got {ttl}")
    iat = math.floor(clock.now().timestamp())
    claims = {
        "iss": agency_id,
        "sub": agency_id,
        "aud": audience,
        "iat": iat,
        "exp": iat + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    if request_payload is not None:
        claims["req"] = body_digest(request_payload)
    return _JWT.encode(claims, key.private, algorithm=_ALG, headers={"kid": _kid_of(key)})


def verify_bearer_token(
    token: str,
    *,
    keys: KeyStore,
    clock: Clock,
    audience: str = BROKER_AUDIENCE,
    skew: timedelta = timedelta(seconds=30),
    max_ttl: timedelta = _MAX_TTL,
) -> TokenClaims:
    """Authenticate a bearer token. Does not consult the replay cache: the caller does, with
    the returned ``jti`` and ``exp``.

    Failures, in check order: MalformedSignatureError (not a JWT, alg other than EdDSA, a
    missing or mistyped claim, ``sub`` != ``iss``), WrongAudienceError, UnknownKeyError,
    RevokedKeyError / KeyNotValidError (key state at ``iat``), BadSignatureError,
    LifetimeTooLongError (``exp - iat`` > ``max_ttl``), ExpiredError, NotYetValidError.
    Whether a ``req`` claim matches the call is the caller's check too (it has the request).
    """
    if not isinstance(token, str) or len(token) > _MAX_TOKEN_CHARS:
        raise MalformedSignatureError(f"bearer token must be a str of at most {_MAX_TOKEN_CHARS} chars")
    # Unverified first: the issuer names the key set to look in; the signature over these very
    # segments is checked once the key is found.
    header, payload = _peek(token)

    if header.get("alg") != _ALG:
        raise MalformedSignatureError(f"alg must be {_ALG!r}, got {header.get('alg')!r}")
    kid = claim_text(header, "kid")
    agency_id = claim_text(payload, "iss")
    if claim_text(payload, "sub") != agency_id:
        raise MalformedSignatureError("sub must equal iss (the agency authenticates as itself)")
    jti = claim_text(payload, "jti")
    iat = _time(payload, "iat")
    exp = _time(payload, "exp")
    if exp <= iat:
        raise MalformedSignatureError("exp must lie after iat")
    nbf = _time(payload, "nbf") if "nbf" in payload else None
    request_digest = claim_text(payload, "req") if "req" in payload else None
    if not _audience_matches(payload.get("aud"), audience):
        raise WrongAudienceError(f"token is not for {audience!r}")

    public = _find_signing_key(keys, agency_id, kid, iat)
    # The signature over the very segments read above (RFC 7515 §5.2), as verify_detached checks
    # a detached one: one parse, so nothing can read differently between choosing and verifying.
    signing_input, _, signature = token.rpartition(".")
    try:
        _ed25519_key(public.raw).verify(
            _strict_b64url_decode(signature, "token signature"), signing_input.encode("ascii")
        )
    except InvalidSignature as exc:
        raise BadSignatureError(f"token {jti!r} of {agency_id!r} does not verify") from exc

    _check_times(iat, exp, clock=clock, skew=skew, max_ttl=max_ttl)
    if nbf is not None and nbf > clock.now() + skew:
        raise NotYetValidError(f"token not valid before {nbf.isoformat()}")
    return TokenClaims(agency_id=agency_id, jti=jti, iat=iat, exp=exp, kid=kid, request_digest=request_digest)


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, not verified yet: they choose the key, whose signature
    over these very segments is then checked. Parsed as strictly as detached signatures are."""
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedSignatureError("not a JWT: expected three base64url segments")
    try:
        header = json.loads(
            _strict_b64url_decode(parts[0], "token header"),
            object_pairs_hook=_unique_members,
            parse_constant=_reject_constant,
        )
        payload = json.loads(
            _strict_b64url_decode(parts[1], "token claims"),
            object_pairs_hook=_unique_members,
            parse_constant=_reject_constant,
        )
    except ValueError as exc:
        raise MalformedSignatureError(f"not a JWT: {exc}") from exc
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise MalformedSignatureError("not a JWT: its header and claims must be JSON objects")
    return header, payload


def _audience_matches(aud: object, audience: str) -> bool:
    # RFC 7519 §4.1.3 allows a string or an array; tokens minted by agencies' own stacks may
    # use either.
    if isinstance(aud, str):
        return aud == audience
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return audience in aud
    raise MalformedSignatureError("aud must be a string or a non-empty array of strings")


def _time(claims: dict[str, Any], name: str) -> datetime:
    value = claims.get(name)
    # RFC 7519 NumericDate may carry fractions; bool is excluded although it subclasses int.
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise MalformedSignatureError(f"claim {name!r} must be a number (seconds since epoch)")
    return _numeric_date(value, name)
