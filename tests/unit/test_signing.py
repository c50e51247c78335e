from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from broker.protocol import (
    BadSignatureError,
    Claims,
    DigestMismatchError,
    ExpiredError,
    KeyNotValidError,
    KeyUse,
    LifetimeTooLongError,
    MalformedSignatureError,
    ManualClock,
    NotYetValidError,
    PublicKey,
    RevokedKeyError,
    SigningKey,
    StaticKeyStore,
    UnknownAgencyError,
    UnknownKeyError,
    VerificationError,
    WrongAudienceError,
    WrongIssuerError,
    b64url_decode,
    b64url_encode,
    body_digest,
    generate_signing_key,
    sign_detached,
    verify_detached,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
POLICE = "police-310115"
BANK = "bank-icbc"
# Protobuf bytes are arbitrary binary, not text.
BODY = b"\x08\x01\x12\x10stop-payment\x00\xff\xfe" + bytes(range(256))

POLICE_KEY = generate_signing_key()
BANK_KEY = generate_signing_key()
KEYS = StaticKeyStore({POLICE: [POLICE_KEY.public()], BANK: [BANK_KEY.public()]})


def _sign(
    body: bytes = BODY,
    *,
    key: SigningKey = POLICE_KEY,
    iss: str = POLICE,
    at: datetime = T0,
    ttl: timedelta = timedelta(minutes=10),
) -> str:
    return sign_detached(
        body,
        key=key,
        iss=iss,
        aud=BANK,
        jti="0190f1e2-0000-7000-8000-000000000001",
        message_type="STOP_PAYMENT",
        clock=ManualClock(at),
        ttl=ttl,
    )


def _verify(
    token: str,
    body: bytes = BODY,
    *,
    keys: StaticKeyStore = KEYS,
    at: datetime = T0,
    **kwargs: Any,
) -> Claims:
    return verify_detached(token, body, keys=keys, audience=BANK, clock=ManualClock(at), **kwargs)


def _header(token: str) -> dict[str, Any]:
    header: dict[str, Any] = json.loads(b64url_decode(token.partition(".")[0]))
    return header


def _forge(
    header: dict[str, Any],
    body: bytes = BODY,
    *,
    key: SigningKey | None = POLICE_KEY,
    raw: bytes | None = None,
) -> str:
    """A token with an arbitrary header, validly signed by ``key`` unless ``raw`` is given."""
    encoded = b64url_encode(json.dumps(header).encode())
    if raw is None:
        assert key is not None
        raw = key.sign(encoded.encode() + b"." + body)
    return f"{encoded}..{b64url_encode(raw)}"


def _good_header(**changes: Any) -> dict[str, Any]:
    header = _header(_sign())
    header.update(changes)
    return {k: v for k, v in header.items() if v is not _DROP}


_DROP: Any = object()
_SIG64 = b64url_encode(b"x" * 64)


# --- happy path --------------------------------------------------------------------------------


def test_round_trip() -> None:
    token = _sign()
    claims = _verify(token)
    assert claims == Claims(
        iss=POLICE,
        aud=BANK,
        jti="0190f1e2-0000-7000-8000-000000000001",
        iat=T0,
        exp=T0 + timedelta(minutes=10),
        message_type="STOP_PAYMENT",
        digest=body_digest(BODY),
        kid=POLICE_KEY.kid,
    )
    assert _verify(token, expected_issuer=POLICE, expected_type="STOP_PAYMENT") == claims


def test_serialized_form_is_detached_with_claims_in_protected_header() -> None:
    token = _sign()
    encoded_header, payload, signature = token.split(".")
    assert payload == ""
    assert len(b64url_decode(signature)) == 64
    assert _header(token) == {
        "alg": "EdDSA",
        "b64": False,
        "crit": ["b64"],
        "kid": POLICE_KEY.kid,
        "typ": "gc+jws",
        "iss": POLICE,
        "aud": BANK,
        "jti": "0190f1e2-0000-7000-8000-000000000001",
        "iat": int(T0.timestamp()),
        "exp": int(T0.timestamp()) + 600,
        "gct": "STOP_PAYMENT",
        "dig": "sha-256:" + b64url_encode(hashlib.sha256(BODY).digest()),
    }
    # RFC 7797 signing input: the header segment, a dot, then the raw body bytes.
    POLICE_KEY.public().ed25519().verify(b64url_decode(signature), encoded_header.encode() + b"." + BODY)


def test_iat_is_truncated_to_whole_seconds() -> None:
    claims = _verify(_sign(at=T0 + timedelta(milliseconds=999)))
    assert claims.iat == T0


def test_body_digest_format() -> None:
    assert body_digest(b"") == "sha-256:47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"


def test_pyjwt_accepts_our_signatures() -> None:
    token = _sign()
    decoded = jwt.PyJWS().decode_complete(
        token, key=POLICE_KEY.private.public_key(), algorithms=["EdDSA"], detached_payload=BODY
    )
    assert decoded["payload"] == BODY
    assert decoded["header"]["gct"] == "STOP_PAYMENT"


def test_we_accept_pyjwt_detached_signatures() -> None:
    headers = {k: v for k, v in _header(_sign()).items() if k not in {"alg", "b64", "crit"}}
    token = jwt.PyJWS().encode(
        BODY, POLICE_KEY.private, algorithm="EdDSA", headers=headers, is_payload_detached=True
    )
    assert _verify(token).kid == POLICE_KEY.kid


def test_empty_body() -> None:
    assert _verify(_sign(b""), b"").digest == body_digest(b"")


def test_every_failure_is_a_verification_error() -> None:
    for error in (MalformedSignatureError, UnknownKeyError, LifetimeTooLongError, DigestMismatchError):
        assert issubclass(error, VerificationError)


# --- signature and body ------------------------------------------------------------------------


def test_flipped_signature_byte() -> None:
    encoded_header, _, signature = _sign().split(".")
    raw = bytearray(b64url_decode(signature))
    raw[10] ^= 0x01
    with pytest.raises(BadSignatureError):
        _verify(f"{encoded_header}..{b64url_encode(bytes(raw))}")


def test_tampered_body() -> None:
    token = _sign()
    with pytest.raises(DigestMismatchError):
        _verify(token, BODY + b"\x00")
    with pytest.raises(DigestMismatchError):
        _verify(token, b"")


def test_tampered_digest_claim_matching_tampered_body() -> None:
    # An attacker who changes the body and rewrites "dig" to match passes the digest check;
    # the header is signed, so the signature is what catches it.
    token = _sign()
    _, _, signature = token.split(".")
    tampered = BODY.replace(b"stop-payment", b"freeze------")
    header = _good_header(dig=body_digest(tampered))
    forged = f"{b64url_encode(json.dumps(header).encode())}..{signature}"
    with pytest.raises(BadSignatureError):
        _verify(forged, tampered)


def test_tampered_digest_claim_alone_is_reported_as_digest_mismatch() -> None:
    _, _, signature = _sign().split(".")
    header = _good_header(dig=body_digest(b"something else"))
    forged = f"{b64url_encode(json.dumps(header).encode())}..{signature}"
    with pytest.raises(DigestMismatchError):
        _verify(forged)


def test_tampered_claim_in_header() -> None:
    _, _, signature = _sign().split(".")
    header = _good_header(exp=int(T0.timestamp()) + 1200)
    with pytest.raises(BadSignatureError):
        _verify(f"{b64url_encode(json.dumps(header).encode())}..{signature}")


def test_other_agency_key_claiming_sender_with_own_kid_is_unknown_key() -> None:
    # The bank signs with its own key but says iss=police: the header's kid is the bank's,
    # which is not among the police's keys, so the lookup fails before any crypto.
    token = _sign(key=BANK_KEY, iss=POLICE)
    with pytest.raises(UnknownKeyError):
        _verify(token)


def test_other_agency_key_claiming_sender_with_sender_kid_is_bad_signature() -> None:
    # Copying the police kid into the header finds the police key, and the bank's signature
    # does not verify under it.
    header = _good_header()
    with pytest.raises(BadSignatureError):
        _verify(_forge(header, key=BANK_KEY))


# --- keys --------------------------------------------------------------------------------------


def test_unknown_kid() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_forge(_good_header(kid=generate_signing_key().kid)))


def test_unknown_issuer() -> None:
    with pytest.raises(UnknownKeyError):
        _verify(_sign(iss="police-999999"))


def test_store_raising_unknown_agency_is_translated() -> None:
    class Registry:
        def public_keys(self, agency_id: str) -> Sequence[PublicKey]:
            raise UnknownAgencyError(f"no agency {agency_id}")

    with pytest.raises(UnknownKeyError) as info:
        verify_detached(_sign(), BODY, keys=Registry(), audience=BANK, clock=ManualClock(T0))
    assert isinstance(info.value.__cause__, UnknownAgencyError)


def test_encryption_key_cannot_verify() -> None:
    enc = PublicKey.from_raw(
        x25519.X25519PrivateKey.generate().public_key().public_bytes_raw(), use=KeyUse.ENC
    )
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(), enc]})
    with pytest.raises(UnknownKeyError, match="encryption"):
        _verify(_forge(_good_header(kid=enc.kid)), keys=keys)


def test_revoked_key_refuses_signatures_after_revocation() -> None:
    revoked_at = T0 + timedelta(hours=1)
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(revoked_at=revoked_at)]})
    later = revoked_at + timedelta(minutes=5)
    with pytest.raises(RevokedKeyError):
        _verify(_sign(at=later), keys=keys, at=later)
    with pytest.raises(RevokedKeyError):
        _verify(_sign(at=revoked_at), keys=keys, at=revoked_at)


def test_revoked_key_keeps_earlier_signatures_valid() -> None:
    revoked_at = T0 + timedelta(hours=1)
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(revoked_at=revoked_at)]})
    before = revoked_at - timedelta(seconds=1)
    token = _sign(at=before)
    # Verified after the revocation (a queued message): still valid, it was signed before.
    assert _verify(token, keys=keys, at=revoked_at + timedelta(minutes=5)).iat == before


def test_backdated_signature_with_revoked_key_is_bounded_by_max_ttl() -> None:
    # A thief back-dates iat to just before the revocation; the lifetime cap stops them from
    # choosing a far-away exp.
    revoked_at = T0 + timedelta(hours=1)
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(revoked_at=revoked_at)]})
    now = revoked_at + timedelta(days=1)
    forged = _sign(at=revoked_at - timedelta(seconds=1), ttl=timedelta(days=365))
    with pytest.raises(LifetimeTooLongError):
        _verify(forged, keys=keys, at=now)
    within_cap = _sign(at=revoked_at - timedelta(seconds=1), ttl=timedelta(hours=1))
    with pytest.raises(ExpiredError):
        _verify(within_cap, keys=keys, at=now)


def test_max_ttl_is_configurable() -> None:
    token = _sign(ttl=timedelta(hours=2))
    with pytest.raises(LifetimeTooLongError):
        _verify(token)
    assert _verify(token, max_ttl=None).exp == T0 + timedelta(hours=2)
    assert _verify(token, max_ttl=timedelta(hours=2)).exp == T0 + timedelta(hours=2)


def test_signed_before_not_before() -> None:
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(not_before=T0 + timedelta(hours=1))]})
    with pytest.raises(KeyNotValidError):
        _verify(_sign(at=T0), keys=keys)


def test_signed_after_not_after() -> None:
    keys = StaticKeyStore({POLICE: [POLICE_KEY.public(not_after=T0)]})
    with pytest.raises(KeyNotValidError):
        _verify(_sign(at=T0), keys=keys)  # not_after is exclusive
    with pytest.raises(KeyNotValidError):
        _verify(_sign(at=T0 + timedelta(days=1)), keys=keys, at=T0 + timedelta(days=1))
    assert _verify(_sign(at=T0 - timedelta(seconds=1)), keys=keys).kid == POLICE_KEY.kid


def test_key_rotation() -> None:
    old, new = POLICE_KEY, generate_signing_key()
    cutover = T0 + timedelta(days=30)
    keys = StaticKeyStore(
        {POLICE: [old.public(not_after=cutover), new.public(not_before=cutover - timedelta(days=1))]}
    )
    before, after = cutover - timedelta(minutes=1), cutover + timedelta(minutes=1)

    assert _verify(_sign(key=old, at=before), keys=keys, at=before).kid == old.kid
    # Verified after the cutover: still valid, signed while the old key was current.
    assert _verify(_sign(key=old, at=before), keys=keys, at=after).kid == old.kid
    with pytest.raises(KeyNotValidError):
        _verify(_sign(key=old, at=after), keys=keys, at=after)
    assert _verify(_sign(key=new, at=before), keys=keys, at=before).kid == new.kid
    assert _verify(_sign(key=new, at=after), keys=keys, at=after).kid == new.kid

    # Later the old key is revoked outright (say, it leaked): its earlier signatures survive.
    revoked_at = cutover + timedelta(days=1)
    keys = StaticKeyStore(
        {
            POLICE: [
                old.public(not_after=cutover, revoked_at=revoked_at),
                new.public(not_before=cutover - timedelta(days=1)),
            ]
        }
    )
    assert _verify(_sign(key=old, at=before), keys=keys, at=before).kid == old.kid
    at_revocation = revoked_at + timedelta(seconds=1)
    with pytest.raises(RevokedKeyError):
        _verify(_sign(key=old, at=at_revocation), keys=keys, at=at_revocation)


# --- time --------------------------------------------------------------------------------------


def test_expired() -> None:
    token = _sign()  # exp = T0 + 10 min
    exp = T0 + timedelta(minutes=10)
    assert _verify(token, at=exp).jti  # within the 30 s skew
    assert _verify(token, at=exp + timedelta(seconds=29)).jti
    with pytest.raises(ExpiredError):
        _verify(token, at=exp + timedelta(seconds=30))
    with pytest.raises(ExpiredError):
        _verify(token, at=exp + timedelta(days=1))


def test_expired_without_skew() -> None:
    exp = T0 + timedelta(minutes=10)
    assert _verify(_sign(), at=exp - timedelta(seconds=1), skew=timedelta(0)).jti
    with pytest.raises(ExpiredError):
        _verify(_sign(), at=exp, skew=timedelta(0))


def test_issued_in_future_beyond_skew() -> None:
    with pytest.raises(NotYetValidError):
        _verify(_sign(at=T0 + timedelta(seconds=31)))


def test_issued_in_future_within_skew() -> None:
    assert _verify(_sign(at=T0 + timedelta(seconds=30))).iat == T0 + timedelta(seconds=30)


def test_skew_is_configurable() -> None:
    token = _sign(at=T0 + timedelta(seconds=5))
    with pytest.raises(NotYetValidError):
        _verify(token, skew=timedelta(seconds=4))
    assert _verify(token, skew=timedelta(seconds=5)).jti


def test_sign_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="ttl"):
        _sign(ttl=timedelta(milliseconds=500))
    with pytest.raises(ValueError, match="iss"):
        _sign(iss="")


# --- addressing --------------------------------------------------------------------------------


def test_wrong_audience() -> None:
    with pytest.raises(WrongAudienceError):
        verify_detached(_sign(), BODY, keys=KEYS, audience="bank-abc", clock=ManualClock(T0))


def test_wrong_issuer() -> None:
    with pytest.raises(WrongIssuerError):
        _verify(_sign(), expected_issuer="police-110000")


def test_wrong_message_type() -> None:
    with pytest.raises(MalformedSignatureError, match="message type"):
        _verify(_sign(), expected_type="FREEZE")


# --- structure ---------------------------------------------------------------------------------


def test_alg_none_with_empty_signature() -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(_forge(_good_header(alg="none"), raw=b""))


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "ES256", "Ed25519", "eddsa", None, 1])
def test_alg_other_than_eddsa_refused_even_with_valid_ed25519_signature(alg: object) -> None:
    with pytest.raises(MalformedSignatureError, match="alg"):
        _verify(_forge(_good_header(alg=alg)))


def test_alg_missing() -> None:
    with pytest.raises(MalformedSignatureError, match="alg"):
        _verify(_forge(_good_header(alg=_DROP)))


def test_hs256_keyed_with_public_key_refused() -> None:
    # Key confusion: HMAC keyed with the (public) Ed25519 key bytes.
    header = _good_header(alg="HS256")
    encoded = b64url_encode(json.dumps(header).encode())
    mac = hmac.new(POLICE_KEY.raw_public, encoded.encode() + b"." + BODY, hashlib.sha256).digest()
    with pytest.raises(MalformedSignatureError):
        _verify(_forge(header, raw=mac))


@pytest.mark.parametrize("b64", [_DROP, True, "false", 0, None])
def test_b64_must_be_false(b64: object) -> None:
    with pytest.raises(MalformedSignatureError, match="b64"):
        _verify(_forge(_good_header(b64=b64)))


@pytest.mark.parametrize("crit", [_DROP, [], ["b64", "exp"], ["exp"], "b64", ["b64", "b64"], None])
def test_crit_must_be_exactly_b64(crit: object) -> None:
    with pytest.raises(MalformedSignatureError, match="crit"):
        _verify(_forge(_good_header(crit=crit)))


@pytest.mark.parametrize("typ", [_DROP, "JWT", "gc+jwt"])
def test_typ_must_be_gc_jws(typ: object) -> None:
    with pytest.raises(MalformedSignatureError, match="typ"):
        _verify(_forge(_good_header(typ=typ)))


def test_attached_payload_refused() -> None:
    encoded_header, _, signature = _sign().split(".")
    with pytest.raises(MalformedSignatureError, match="payload"):
        _verify(f"{encoded_header}.{b64url_encode(BODY)}.{signature}")


def test_unencoded_payload_in_token_refused() -> None:
    encoded_header, _, signature = _sign().split(".")
    with pytest.raises(MalformedSignatureError):
        _verify(f"{encoded_header}.hello.{signature}")


@pytest.mark.parametrize("claim", ["iss", "aud", "jti", "iat", "exp", "gct", "dig", "kid"])
def test_missing_claim(claim: str) -> None:
    with pytest.raises(MalformedSignatureError, match=claim):
        _verify(_forge(_good_header(**{claim: _DROP})))


@pytest.mark.parametrize(
    ("claim", "value"),
    [
        ("iss", ""),
        ("iss", 7),
        ("aud", [BANK]),
        ("jti", None),
        ("kid", {"k": 1}),
        ("gct", 1),
        ("iat", "1767225600"),
        ("iat", 1767225600.5),
        ("iat", True),
        ("exp", 10**30),
        ("exp", -(10**30)),
        ("dig", "sha-1:abc"),
        ("dig", "sha-256:" + "A" * 42),
        ("dig", body_digest(BODY) + "="),
    ],
)
def test_mistyped_claim(claim: str, value: object) -> None:
    with pytest.raises(MalformedSignatureError, match=claim):
        _verify(_forge(_good_header(**{claim: value})))


def test_exp_not_after_iat() -> None:
    iat = int(T0.timestamp())
    with pytest.raises(MalformedSignatureError, match="exp"):
        _verify(_forge(_good_header(iat=iat, exp=iat)))


def test_duplicate_header_member_refused() -> None:
    encoded_header = _sign().split(".")[0]
    raw = b64url_decode(encoded_header)
    duplicated = raw[:-1] + b',"aud":"bank-abc"}'
    encoded = b64url_encode(duplicated)
    signature = POLICE_KEY.sign(encoded.encode() + b"." + BODY)
    with pytest.raises(MalformedSignatureError, match="duplicate"):
        _verify(f"{encoded}..{b64url_encode(signature)}")


def test_nan_in_header_refused() -> None:
    encoded = b64url_encode(json.dumps(_good_header(iat=float("nan"))).encode())
    with pytest.raises(MalformedSignatureError):
        _verify(f"{encoded}..{b64url_encode(POLICE_KEY.sign(encoded.encode() + b'.' + BODY))}")


def test_padded_base64_refused() -> None:
    encoded_header, _, signature = _sign().split(".")
    padded = base64.urlsafe_b64encode(b64url_decode(signature)).decode()
    assert padded.endswith("=")
    with pytest.raises(MalformedSignatureError, match="base64url"):
        _verify(f"{encoded_header}..{padded}")


def test_non_canonical_base64_refused() -> None:
    # 64 bytes -> 86 characters; the last one carries 2 unused bits. Setting them yields the
    # same bytes from a different string, which must not verify.
    encoded_header, _, signature = _sign().split(".")
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet[alphabet.index(signature[-1]) | 0b01]
    variant = signature[:-1] + last
    assert variant != signature
    assert b64url_decode(variant) == b64url_decode(signature)
    with pytest.raises(MalformedSignatureError, match="canonical"):
        _verify(f"{encoded_header}..{variant}")


def test_standard_base64_alphabet_refused() -> None:
    encoded_header, _, signature = _sign().split(".")
    with pytest.raises(MalformedSignatureError):
        _verify(f"{encoded_header}..{signature.replace('-', '+').replace('_', '/')}a+/")


def test_wrong_signature_length() -> None:
    encoded_header = _sign().split(".")[0]
    with pytest.raises(MalformedSignatureError, match="64 bytes"):
        _verify(f"{encoded_header}..{b64url_encode(b'x' * 63)}")


@pytest.mark.parametrize(
    "token",
    [
        "",
        ".",
        "..",
        "...",
        "a.b.c",
        "not a token",
        "eyJ..",
        "!!!!..AAAA",
        b64url_encode(b"not json") + ".." + _SIG64,
        b64url_encode(b"[1,2]") + ".." + _SIG64,
        b64url_encode(b"\xff\xfe{}") + ".." + _SIG64,
        b64url_encode(b"[" * 5000) + ".." + _SIG64,
        b64url_encode(b"{}") + ".." + _SIG64,
        "é..é",
        "A" * 10000,
    ],
)
def test_garbage(token: str) -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(token)


def test_non_string_token() -> None:
    with pytest.raises(MalformedSignatureError):
        _verify(_sign().encode())  # type: ignore[arg-type]


def test_static_key_store_copies_its_input() -> None:
    mapping = {POLICE: [POLICE_KEY.public()]}
    keys = StaticKeyStore(mapping)
    mapping[POLICE].clear()
    assert _verify(_sign(), keys=keys).kid == POLICE_KEY.kid
    assert keys.public_keys("nobody") == ()
