from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from broker.protocol import (
    BROKER_AUDIENCE,
    BadSignatureError,
    ExpiredError,
    KeyNotValidError,
    LifetimeTooLongError,
    MalformedSignatureError,
    ManualClock,
    NotYetValidError,
    RevokedKeyError,
    SigningKey,
    StaticKeyStore,
    TokenClaims,
    UnknownKeyError,
    WrongAudienceError,
    b64url_decode,
    b64url_encode,
    body_digest,
    generate_signing_key,
    mint_bearer_token,
    sign_detached,
    verify_bearer_token,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
BANK = "bank-icbc"
POLICE = "police-310115"
BANK_KEY = generate_signing_key()
POLICE_KEY = generate_signing_key()
KEYS = StaticKeyStore({BANK: [BANK_KEY.public()], POLICE: [POLICE_KEY.public()]})
IAT = int(T0.timestamp())


def _mint(*, key: SigningKey = BANK_KEY, at: datetime = T0, ttl: timedelta = timedelta(minutes=2)) -> str:
    return mint_bearer_token(key, agency_id=BANK, clock=ManualClock(at), ttl=ttl)


def _verify(token: str, *, keys: StaticKeyStore = KEYS, at: datetime = T0, **kwargs: Any) -> TokenClaims:
    return verify_bearer_token(token, keys=keys, clock=ManualClock(at), **kwargs)


def _claims(**changes: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": BANK,
        "sub": BANK,
        "aud": BROKER_AUDIENCE,
        "iat": IAT,
        "exp": IAT + 120,
        "jti": "5f0c2c1e9b9e4c7e8f1f2a3b4c5d6e7f",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not _DROP}


def _craft(
    claims: dict[str, Any],
    *,
    key: SigningKey = BANK_KEY,
    headers: dict[str, Any] | None = None,
) -> str:
    # PyJWS rather than jwt.encode, which refuses some of the malformed claims tested here.
    return jwt.PyJWS().encode(
        json.dumps(claims).encode(),
        key.private,
        algorithm="EdDSA",
        headers={"kid": BANK_KEY.kid} if headers is None else headers,
    )


_DROP: Any = object()


# --- happy path --------------------------------------------------------------------------------


def test_round_trip() -> None:
    claims = _verify(_mint())
    assert claims.agency_id == BANK
    assert claims.kid == BANK_KEY.kid
    assert claims.iat == T0
    assert claims.exp == T0 + timedelta(minutes=2)
    assert len(claims.jti) == 32
    int(claims.jti, 16)


def test_jti_is_unique() -> None:
    assert len({_verify(_mint()).jti for _ in range(50)}) == 50


def test_token_shape() -> None:
    token = _mint()
    header = json.loads(b64url_decode(token.split(".")[0]))
    payload = json.loads(b64url_decode(token.split(".")[1]))
    assert header == {"alg": "EdDSA", "kid": BANK_KEY.kid, "typ": "JWT"}
    assert payload["iss"] == payload["sub"] == BANK
    assert payload["aud"] == "greenchannel-broker"
    assert payload["exp"] - payload["iat"] == 120


def test_unbound_token_has_no_req_claim() -> None:
    token = _mint()
    assert "req" not in json.loads(b64url_decode(token.split(".")[1]))
    assert _verify(token).request_digest is None


def test_token_bound_to_a_request_carries_its_payload_digest() -> None:
    payload = b"\x0a\x03the exact signed request bytes"
    token = mint_bearer_token(BANK_KEY, agency_id=BANK, clock=ManualClock(T0), request_payload=payload)
    claims = json.loads(b64url_decode(token.split(".")[1]))
    # The same value as the request signature's dig claim, so a foreign client has one digest to make.
    assert claims["req"] == body_digest(payload)
    assert claims["req"].startswith("sha-256:")
    assert _verify(token).request_digest == body_digest(payload)


def test_an_empty_payload_still_binds() -> None:
    token = mint_bearer_token(BANK_KEY, agency_id=BANK, clock=ManualClock(T0), request_payload=b"")
    assert _verify(token).request_digest == body_digest(b"")


def test_req_claim_from_a_foreign_issuer_is_read_as_is() -> None:
    # Whether it matches the call is the broker's check, with the request at hand.
    assert _verify(_craft(_claims(req="sha-256:anything"))).request_digest == "sha-256:anything"


def test_req_claim_is_covered_by_the_signature() -> None:
    token = mint_bearer_token(BANK_KEY, agency_id=BANK, clock=ManualClock(T0), request_payload=b"one")
    header, payload, signature = token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["req"] = body_digest(b"another")
    forged = ".".join([header, b64url_encode(json.dumps(claims).encode()), signature])
    with pytest.raises(BadSignatureError):
        _verify(forged)


def test_pyjwt_accepts_our_tokens() -> None:
    decoded = jwt.decode(
        _mint(),
        BANK_KEY.private.public_key(),
        algorithms=["EdDSA"],
        audience=BROKER_AUDIENCE,
        options={"verify_exp": False, "verify_iat": False},
    )
    assert decoded["sub"] == BANK


def test_injected_clock_not_wall_clock() -> None:
    # pyjwt's own checks would call these expired / not yet issued against the real time.
    past = datetime(2001, 9, 9, tzinfo=UTC)
    assert _verify(_mint(at=past), at=past).iat == past
    future = datetime(2090, 1, 1, tzinfo=UTC)
    assert _verify(_mint(at=future), at=future).iat == future


def test_custom_audience() -> None:
    token = mint_bearer_token(BANK_KEY, agency_id=BANK, clock=ManualClock(T0), audience="gc-admin")
    assert _verify(token, audience="gc-admin").agency_id == BANK
    with pytest.raises(WrongAudienceError):
        _verify(token)


def test_audience_array_from_foreign_issuer() -> None:
    assert _verify(_craft(_claims(aud=["other", BROKER_AUDIENCE]))).agency_id == BANK
    with pytest.raises(WrongAudienceError):
        _verify(_craft(_claims(aud=["other"])))


def test_fractional_numeric_dates_from_foreign_issuer() -> None:
    claims = _verify(_craft(_claims(iat=IAT + 0.5, exp=IAT + 60.5)), at=T0 + timedelta(seconds=1))
    assert claims.exp == T0 + timedelta(seconds=60.5)


# --- lifetime ----------------------------------------------------------------------------------


def test_five_minutes_allowed() -> None:
    assert _verify(_mint(ttl=timedelta(minutes=5))).exp == T0 + timedelta(minutes=5)


def test_mint_refuses_ttl_over_five_minutes() -> None:
    with pytest.raises(ValueError, match="ttl"):
        _mint(ttl=timedelta(minutes=5, seconds=1))
    with pytest.raises(ValueError, match="ttl"):
        _mint(ttl=timedelta(0))


def test_verify_refuses_ttl_over_five_minutes() -> None:
    token = _craft(_claims(exp=IAT + 301))
    with pytest.raises(LifetimeTooLongError):
        _verify(token)
    with pytest.raises(LifetimeTooLongError):
        _verify(_craft(_claims(exp=IAT + 86400 * 365)))
    assert _verify(token, max_ttl=timedelta(minutes=6)).agency_id == BANK


def test_exp_not_after_iat() -> None:
    with pytest.raises(MalformedSignatureError, match="exp"):
        _verify(_craft(_claims(exp=IAT)))


# --- time --------------------------------------------------------------------------------------


def test_expired() -> None:
    token = _mint()  # exp = T0 + 2 min
    assert _verify(token, at=T0 + timedelta(minutes=2, seconds=29)).jti
    with pytest.raises(ExpiredError):
        _verify(token, at=T0 + timedelta(minutes=2, seconds=30))
    with pytest.raises(ExpiredError):
        _verify(token, at=T0 + timedelta(minutes=2), skew=timedelta(0))


def test_issued_in_future() -> None:
    with pytest.raises(NotYetValidError):
        _verify(_mint(at=T0 + timedelta(seconds=31)))
    assert _verify(_mint(at=T0 + timedelta(seconds=30))).jti


def test_nbf_in_future() -> None:
    with pytest.raises(NotYetValidError):
        _verify(_craft(_claims(nbf=IAT + 60)))
    assert _verify(_craft(_claims(nbf=IAT + 30))).jti


# --- keys and signature ------------------------------------------------------------------------


def test_flipped_signature_byte() -> None:
    head, payload, signature = _mint().split(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 0x80
    with pytest.raises(BadSignatureError):
        _verify(f"{head}.{payload}.{b64url_encode(bytes(raw))}")


def test_tampered_claims() -> None:
    head, _, signature = _mint().split(".")
    payload = b64url_encode(json.dumps(_claims(exp=IAT + 300)).encode())
    with pytest.raises(BadSignatureError):
        _verify(f"{head}.{payload}.{signature}")


def test_other_agency_key_with_own_kid_is_unknown_key() -> None:
    # The police key signs a token claiming to be the bank: its kid is not among the bank's.
    with pytest.raises(UnknownKeyError):
        _verify(_craft(_claims(), key=POLICE_KEY, headers={"kid": POLICE_KEY.kid}))


def test_other_agency_key_with_victim_kid_is_bad_signature() -> None:
    with pytest.raises(BadSignatureError):
        _verify(_craft(_claims(), key=POLICE_KEY, headers={"kid": BANK_KEY.kid}))


def test_unknown_kid() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_craft(_claims(), headers={"kid": generate_signing_key().kid}))


def test_unknown_agency() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_craft(_claims(iss="bank-nowhere", sub="bank-nowhere")))


def test_revoked_key() -> None:
    keys = StaticKeyStore({BANK: [BANK_KEY.public(revoked_at=T0)]})
    with pytest.raises(RevokedKeyError):
        _verify(_mint(), keys=keys)
    earlier = T0 - timedelta(seconds=10)
    assert _verify(_mint(at=earlier), keys=keys, at=earlier).jti


def test_key_outside_validity_window() -> None:
    keys = StaticKeyStore({BANK: [BANK_KEY.public(not_before=T0 + timedelta(days=1))]})
    with pytest.raises(KeyNotValidError):
        _verify(_mint(), keys=keys)
    keys = StaticKeyStore({BANK: [BANK_KEY.public(not_after=T0)]})
    with pytest.raises(KeyNotValidError):
        _verify(_mint(), keys=keys)


# --- structure ---------------------------------------------------------------------------------


def test_alg_none() -> None:
    token = jwt.encode(_claims(), "", algorithm="none", headers={"kid": BANK_KEY.kid})
    with pytest.raises(MalformedSignatureError, match="alg"):
        _verify(token)


def test_alg_hs256_keyed_with_public_key() -> None:
    token = jwt.encode(_claims(), BANK_KEY.raw_public, algorithm="HS256", headers={"kid": BANK_KEY.kid})
    with pytest.raises(MalformedSignatureError, match="alg"):
        _verify(token)


def test_alg_header_swapped_on_valid_eddsa_token() -> None:
    head, payload, signature = _mint().split(".")
    header = json.loads(b64url_decode(head))
    header["alg"] = "ES256"
    with pytest.raises(MalformedSignatureError, match="alg"):
        _verify(f"{b64url_encode(json.dumps(header).encode())}.{payload}.{signature}")


@pytest.mark.parametrize("claim", ["jti", "iss", "sub", "iat", "exp", "aud"])
def test_missing_claim(claim: str) -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(_craft(_claims(**{claim: _DROP})))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("jti", ""),
        ("jti", 42),
        ("iss", ["bank-icbc"]),
        ("sub", "bank-other"),
        ("iat", "1767225600"),
        ("iat", True),
        ("exp", None),
        ("exp", 10**30),
        ("aud", 7),
        ("aud", []),
        ("nbf", "soon"),
        ("req", ""),
        ("req", 7),
        ("req", ["sha-256:x"]),
        ("req", None),
    ],
)
def test_mistyped_claim(claim: str, value: object) -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(_craft(_claims(**{claim: value})))


def test_missing_kid() -> None:
    with pytest.raises(MalformedSignatureError, match="kid"):
        _verify(_craft(_claims(), headers={}))


def test_detached_message_signature_is_not_a_bearer_token() -> None:
    detached = sign_detached(
        b"body",
        key=BANK_KEY,
        iss=BANK,
        aud=BROKER_AUDIENCE,
        jti="x",
        message_type="EVENT",
        clock=ManualClock(T0),
    )
    with pytest.raises(MalformedSignatureError):
        _verify(detached)


@pytest.mark.parametrize(
    "token",
    ["", "abc", "a.b", "a.b.c", "a.b.c.d", "....", "eyJhbGciOiJFZERTQSJ9.e30.", "A" * 5000, "é.é.é"],
)
def test_garbage(token: str) -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(token)
