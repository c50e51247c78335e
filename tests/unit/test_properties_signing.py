"""Property tests: every mutation of a signed, notarized or sealed message is refused with a typed error.

Hypothesis mutates the bytes that travel (request bodies, detached JWS signatures, notarized
envelopes and their headers, signed lifecycle events, sealed payloads, bearer tokens) and feeds
arbitrary bytes and text to every verifying entry point. The property, everywhere:

* a mutation that changes what travelled is refused with a :class:`ProtocolError` subclass (the
  specific one where the mutation determines it), never accepted;
* nothing else escapes: no ValueError, KeyError, TypeError, DecodeError, UnicodeError,
  binascii.Error or JSON error from a library leaks past the verifying module;
* the unmodified original still verifies (the mutation, not a broken fixture, is what is refused).

Runs are deterministic (``derandomize=True``), so CI sees the same examples every time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2, results_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.protocol import (
    BROKER_ID,
    DATA_ANSWER_CONTENT_TYPE,
    BadSignatureError,
    DigestMismatchError,
    InvalidMessageError,
    KeyUse,
    MalformedSignatureError,
    ManualClock,
    OpenedEnvelope,
    ProtocolError,
    PublicKey,
    SealedBodyError,
    SealingError,
    SigningKey,
    StaticKeyStore,
    UnknownKeyError,
    VerificationError,
    WrongAudienceError,
    WrongIssuerError,
    b64url_decode,
    b64url_encode,
    body_digest,
    decode_message,
    generate_signing_key,
    mint_bearer_token,
    notarize,
    open_envelope,
    open_sealed,
    parse_and_validate,
    seal,
    seal_for_recipient,
    sign_event,
    sign_request,
    unseal_envelope,
    verify_bearer_token,
    verify_detached,
    verify_event,
    verify_request,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
POLICE = "police-310115"
BANK = "bank-icbc"
OTHER_BANK = "bank-ccb"
REQUEST_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
SECRET = "账户持有人 张三 110101199001011234".encode()

# One profile for the module: deterministic, no per-example deadline (CI machines vary), and
# enough examples to reach every branch of the parsers without making the file slow.
PROPERTY = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings(PROPERTY, max_examples=200)

M = TypeVar("M", bound=Message)


# -- the world: keys, and one genuine message of every kind -------------------------------------


def _x25519_public(private: x25519.X25519PrivateKey) -> PublicKey:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey.from_raw(raw, use=KeyUse.ENC)


@dataclass(frozen=True)
class World:
    police: SigningKey
    bank: SigningKey
    other_bank: SigningKey
    broker: SigningKey
    bank_enc: x25519.X25519PrivateKey
    stranger_enc: x25519.X25519PrivateKey
    keys: StaticKeyStore
    signed_request: envelope_pb2.SignedMessage
    envelope: envelope_pb2.Envelope
    sealed_envelope: envelope_pb2.Envelope
    signed_event: envelope_pb2.SignedMessage
    sealed_answer: results_pb2.EncryptedPayload
    token: str

    @property
    def clock(self) -> ManualClock:
        return ManualClock(T0)


def _stop_payment() -> requests_pb2.Request:
    issued = Timestamp()
    issued.FromDatetime(T0)
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number="SH-2026-000123",
            issuing_agency=POLICE,
            legal_instrument_id="沪公(浦)止付字[2026]0001号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        recipient=BANK,
        issued_at=issued,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number="6222020200001234567", holder_name="王某某"),
            amount=common_pb2.Money(currency="CNY", minor_units=5_000_000),
        ),
    )


@cache
def world() -> World:
    police, bank, other_bank, broker = (generate_signing_key() for _ in range(4))
    bank_enc, stranger_enc = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    keys = StaticKeyStore(
        {
            POLICE: [police.public()],
            BANK: [bank.public(), _x25519_public(bank_enc)],
            OTHER_BANK: [other_bank.public()],
            BROKER_ID: [broker.public()],
        }
    )
    clock = ManualClock(T0)
    signed_request = sign_request(_stop_payment(), key=police, sender=POLICE, clock=clock)
    verified = verify_request(signed_request, keys=keys, sender=POLICE, clock=clock)
    envelope = notarize(
        verified,
        request_id=REQUEST_ID,
        recipient=BANK,
        deadlines=envelope_pb2.Deadlines(),
        broker_key=broker,
        clock=clock,
    )
    at = Timestamp()
    at.FromDatetime(T0)
    event = lifecycle_pb2.LifecycleEvent(
        event_id="01890a5d-ac96-774b-bcce-b302099a8058",
        request_id=REQUEST_ID,
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=BANK,
        at=at,
        request_digest=body_digest(envelope.body),
    )
    return World(
        police=police,
        bank=bank,
        other_bank=other_bank,
        broker=broker,
        bank_enc=bank_enc,
        stranger_enc=stranger_enc,
        keys=keys,
        signed_request=signed_request,
        envelope=envelope,
        sealed_envelope=seal_for_recipient(envelope, _x25519_public(bank_enc)),
        signed_event=sign_event(event, key=bank, clock=clock),
        sealed_answer=seal(
            SECRET,
            _x25519_public(bank_enc),
            request_id=REQUEST_ID,
            sender=POLICE,
            recipient=BANK,
            content_type=DATA_ANSWER_CONTENT_TYPE,
        ),
        token=mint_bearer_token(police, agency_id=POLICE, clock=clock),
    )


def copy(message: M) -> M:
    clone = type(message)()
    clone.CopyFrom(message)
    return clone


# -- the verifying entry points, as their callers use them --------------------------------------


def check_request(signed: envelope_pb2.SignedMessage) -> object:
    w = world()
    return verify_request(signed, keys=w.keys, sender=POLICE, clock=w.clock)


def check_envelope(envelope: envelope_pb2.Envelope) -> OpenedEnvelope:
    w = world()
    return open_envelope(envelope, keys=w.keys, recipient=BANK, clock=w.clock, decrypt=[w.bank_enc])


def check_event(signed: envelope_pb2.SignedMessage) -> object:
    w = world()
    return verify_event(signed, keys=w.keys, clock=w.clock)


def check_sealed(payload: results_pb2.EncryptedPayload) -> bytes:
    return open_sealed(payload, world().bank_enc, request_id=REQUEST_ID, sender=POLICE, recipient=BANK)


def check_token(token: str) -> object:
    w = world()
    return verify_bearer_token(token, keys=w.keys, clock=w.clock)


def refused(check: Callable[[], object], *expected: type[ProtocolError]) -> ProtocolError:
    """Run ``check``; it must raise one of ``expected`` (default: any ProtocolError), nothing else.

    Any other exception propagates and fails the property with its own traceback.
    """
    types = expected or (ProtocolError,)
    error: ProtocolError | None = None
    try:
        check()
    except ProtocolError as exc:
        error = exc
    assert error is not None, "the mutated message was accepted"
    assert isinstance(error, types), f"{type(error).__name__}: {error} (expected one of {types})"
    return error


def test_the_originals_verify() -> None:
    """The baseline every property below depends on: nothing is refused for a broken fixture."""
    w = world()
    check_request(w.signed_request)
    assert check_envelope(w.envelope).header.id == REQUEST_ID
    assert check_envelope(w.sealed_envelope).request == check_envelope(w.envelope).request
    check_event(w.signed_event)
    assert check_sealed(w.sealed_answer) == SECRET
    check_token(w.token)


# -- mutations ----------------------------------------------------------------------------------


@st.composite
def mutated_bytes(draw: st.DrawFn, original: bytes) -> bytes:
    """One edit anywhere: a bit flip, truncation, extension, insertion, deletion or overwrite."""
    size = len(original)
    op = draw(st.sampled_from(["flip", "truncate", "extend", "insert", "delete", "overwrite"]))
    if op == "flip" and size:
        i = draw(st.integers(0, size - 1))
        bit = 1 << draw(st.integers(0, 7))
        return original[:i] + bytes([original[i] ^ bit]) + original[i + 1 :]
    if op == "truncate" and size:
        return original[: draw(st.integers(0, size - 1))]
    if op == "insert":
        i = draw(st.integers(0, size))
        return original[:i] + draw(st.binary(min_size=1, max_size=16)) + original[i:]
    if op == "delete" and size:
        i = draw(st.integers(0, size - 1))
        j = draw(st.integers(i + 1, min(size, i + 16)))
        return original[:i] + original[j:]
    if op == "overwrite" and size:
        i = draw(st.integers(0, size - 1))
        patch = draw(st.binary(min_size=1, max_size=8))
        return original[:i] + patch + original[i + len(patch) :]
    return original + draw(st.binary(min_size=1, max_size=32))


# Characters an attacker may put into a JWS: its own alphabet, the separator, padding, and
# anything beyond ASCII (a protobuf string field carries any Unicode).
_JWS_CHARS = st.sampled_from(
    list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ")
) | (st.characters(codec="utf-8"))


@st.composite
def mutated_text(draw: st.DrawFn, original: str) -> str:
    """One edit of a string: the same operations as :func:`mutated_bytes`, on characters."""
    size = len(original)
    op = draw(st.sampled_from(["replace", "truncate", "extend", "insert", "delete"]))
    text = st.text(_JWS_CHARS, min_size=1, max_size=8)
    if op == "replace" and size:
        i = draw(st.integers(0, size - 1))
        return original[:i] + draw(_JWS_CHARS) + original[i + 1 :]
    if op == "truncate" and size:
        return original[: draw(st.integers(0, size - 1))]
    if op == "insert":
        i = draw(st.integers(0, size))
        return original[:i] + draw(text) + original[i:]
    if op == "delete" and size:
        i = draw(st.integers(0, size - 1))
        return original[:i] + original[draw(st.integers(i + 1, min(size, i + 8))) :]
    return original + draw(text)


def split_jws(token: str) -> tuple[dict[str, Any], str]:
    encoded_header, _, signature = token.partition("..")
    header: dict[str, Any] = json.loads(b64url_decode(encoded_header))
    return header, signature


@dataclass(frozen=True)
class RawJson:
    """A JSON number written as is: Python's encoder refuses ints of more than 4300 digits."""

    text: str


def encode_json(document: object) -> bytes:
    raw: list[str] = []

    def placeholder(value: object) -> str:
        assert isinstance(value, RawJson)
        raw.append(value.text)
        return f"@raw{len(raw) - 1}@"

    text = json.dumps(document, separators=(",", ":"), default=placeholder)
    for i, value in enumerate(raw):
        text = text.replace(f'"@raw{i}@"', value)
    return text.encode()


def join_jws(header: dict[str, Any], signature: str) -> str:
    return f"{b64url_encode(encode_json(header))}..{signature}"


def flip_signature_bit(token: str, bit: int) -> str:
    """The same JWS with one bit of the Ed25519 signature flipped (still canonical base64url)."""
    encoded_header, _, encoded_signature = token.partition("..")
    signature = bytearray(b64url_decode(encoded_signature))
    signature[bit // 8] ^= 1 << (bit % 8)
    return f"{encoded_header}..{b64url_encode(bytes(signature))}"


# Header edits and the error each one must produce. ``None``: any VerificationError (the edit is
# refused for a reason that depends on which check runs first).
_IAT = int(T0.timestamp())
HEADER_EDITS: dict[str, tuple[Callable[[dict[str, Any]], None], type[ProtocolError]]] = {
    "alg=none": (lambda h: h.update(alg="none"), MalformedSignatureError),
    "alg=HS256": (lambda h: h.update(alg="HS256"), MalformedSignatureError),
    "alg missing": (lambda h: h.pop("alg"), MalformedSignatureError),
    "b64=true": (lambda h: h.update(b64=True), MalformedSignatureError),
    "b64 missing": (lambda h: h.pop("b64"), MalformedSignatureError),
    "crit removed": (lambda h: h.pop("crit"), MalformedSignatureError),
    "crit empty": (lambda h: h.update(crit=[]), MalformedSignatureError),
    "crit extended": (lambda h: h.update(crit=["b64", "exp"]), MalformedSignatureError),
    "typ changed": (lambda h: h.update(typ="JWT"), MalformedSignatureError),
    "iat as string": (lambda h: h.update(iat=str(_IAT)), MalformedSignatureError),
    "iat as float": (lambda h: h.update(iat=_IAT + 0.5), MalformedSignatureError),
    "iat as bool": (lambda h: h.update(iat=True), MalformedSignatureError),
    "iat out of range": (lambda h: h.update(iat=10**20), MalformedSignatureError),
    "iat with 5000 digits": (lambda h: h.update(iat=RawJson("1" + "0" * 4999)), MalformedSignatureError),
    "exp before iat": (lambda h: h.update(exp=h["iat"] - 1), MalformedSignatureError),
    "iat moved back": (lambda h: h.update(iat=h["iat"] - 60), BadSignatureError),
    "exp moved on": (lambda h: h.update(exp=h["exp"] + 3600), BadSignatureError),
    "jti changed": (lambda h: h.update(jti=h["jti"] + "0"), BadSignatureError),
    "dig of another body": (lambda h: h.update(dig=body_digest(b"another body")), DigestMismatchError),
    "dig malformed": (lambda h: h.update(dig="sha-256:short"), MalformedSignatureError),
    "dig as number": (lambda h: h.update(dig=1), MalformedSignatureError),
    "kid of another agency": (lambda h: h.update(kid=world().other_bank.kid), UnknownKeyError),
    "kid empty": (lambda h: h.update(kid=""), MalformedSignatureError),
    "kid as list": (lambda h: h.update(kid=[h["kid"]]), MalformedSignatureError),
    "iss changed": (lambda h: h.update(iss=OTHER_BANK), WrongIssuerError),
    "iss missing": (lambda h: h.pop("iss"), MalformedSignatureError),
    "aud changed": (lambda h: h.update(aud=OTHER_BANK), WrongAudienceError),
    "aud as list": (lambda h: h.update(aud=[h["aud"]]), MalformedSignatureError),
    "gct changed": (lambda h: h.update(gct="FREEZE"), MalformedSignatureError),
    "extra claim": (lambda h: h.update(amount=1), BadSignatureError),
}


# -- (a) signed requests ------------------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_a_mutated_request_body_is_refused(data: st.DataObject) -> None:
    original = world().signed_request
    payload = data.draw(mutated_bytes(original.payload))
    signed = envelope_pb2.SignedMessage(payload=payload, signature=original.signature)
    if payload == original.payload:
        check_request(signed)
        return
    # Undecodable or unknown-field bytes, a body now for someone else or of another type, or
    # (decodable, same audience and type) a body the signature's digest does not cover.
    refused(
        lambda: check_request(signed),
        InvalidMessageError,
        DigestMismatchError,
        WrongAudienceError,
        MalformedSignatureError,
    )


@PROPERTY
@given(st.data())
def test_a_mutated_request_signature_is_refused(data: st.DataObject) -> None:
    original = world().signed_request
    signature = data.draw(mutated_text(original.signature))
    signed = envelope_pb2.SignedMessage(payload=original.payload, signature=signature)
    if signature == original.signature:
        check_request(signed)
        return
    refused(lambda: check_request(signed), VerificationError)


@PROPERTY
@given(st.integers(0, 511))
def test_a_flipped_signature_bit_is_a_bad_signature(bit: int) -> None:
    original = world().signed_request
    signed = envelope_pb2.SignedMessage(
        payload=original.payload, signature=flip_signature_bit(original.signature, bit)
    )
    refused(lambda: check_request(signed), BadSignatureError)


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=list(HEADER_EDITS))
def test_an_edited_jws_header_is_refused_with_its_error(edit: str) -> None:
    change, expected = HEADER_EDITS[edit]
    original = world().signed_request
    header, signature = split_jws(original.signature)
    change(header)
    forged = envelope_pb2.SignedMessage(payload=original.payload, signature=join_jws(header, signature))
    refused(lambda: check_request(forged), expected)


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=list(HEADER_EDITS))
def test_an_edited_jws_header_resigned_by_an_outsider_is_refused(edit: str) -> None:
    """The attacker re-signs the edited header with its own key: the signature now matches, the
    key does not belong to the issuer (or an earlier check catches the edit)."""
    change, expected = HEADER_EDITS[edit]
    w = world()
    original = w.signed_request
    header, _ = split_jws(original.signature)
    change(header)
    encoded = b64url_encode(encode_json(header))
    signature = b64url_encode(w.other_bank.sign(encoded.encode("ascii") + b"." + original.payload))
    forged = envelope_pb2.SignedMessage(payload=original.payload, signature=f"{encoded}..{signature}")
    # A resigned header keeps the police kid unless the edit changed it: the outsider's
    # signature does not verify under the police key.
    allowed = BadSignatureError if expected is BadSignatureError else expected
    refused(lambda: check_request(forged), allowed)


@pytest.mark.parametrize(
    "swap",
    ["header<->signature", "signature only", "header only", "payload segment filled", "two dots"],
)
def test_swapped_or_missing_jws_segments_are_malformed(swap: str) -> None:
    original = world().signed_request
    header, _, signature = original.signature.partition("..")
    token = {
        "header<->signature": f"{signature}..{header}",
        "signature only": f"..{signature}",
        "header only": f"{header}..",
        "payload segment filled": f"{header}.{b64url_encode(original.payload)}.{signature}",
        "two dots": f"{header}...{signature}",
    }[swap]
    forged = envelope_pb2.SignedMessage(payload=original.payload, signature=token)
    refused(lambda: check_request(forged), MalformedSignatureError)


# -- (b) notarized envelopes, as the adapter opens them -----------------------------------------


ENVELOPE_FIELDS = ["header", "body", "body_signature", "notary_signature"]


@PROPERTY
@given(st.sampled_from(ENVELOPE_FIELDS), st.data())
def test_a_mutated_envelope_field_is_refused(field: str, data: st.DataObject) -> None:
    original = world().envelope
    envelope = copy(original)
    value = getattr(original, field)
    mutated: object = (
        data.draw(mutated_bytes(value)) if isinstance(value, bytes) else data.draw(mutated_text(value))
    )
    setattr(envelope, field, mutated)
    if mutated == value:
        check_envelope(envelope)
        return
    # The notary signature covers the header, the header the digests of body and body signature:
    # a changed header, body or body signature is a digest mismatch, whatever the bytes now say.
    expected = {
        "header": (DigestMismatchError,),
        "body": (DigestMismatchError,),
        "body_signature": (DigestMismatchError,),
        "notary_signature": (VerificationError,),
    }[field]
    refused(lambda: check_envelope(envelope), *expected)


@PROPERTY
@given(st.data())
def test_a_mutated_serialized_envelope_is_refused(data: st.DataObject) -> None:
    """The inbox message as bytes: mutated anywhere, it either does not decode or does not open."""
    original = world().sealed_envelope.SerializeToString()
    mutated = data.draw(mutated_bytes(original))

    def adapter_path() -> OpenedEnvelope:
        return check_envelope(decode_message(envelope_pb2.Envelope, mutated, prefix="envelope."))

    if mutated == original:
        adapter_path()
        return
    opened: OpenedEnvelope | None = None
    error: ProtocolError | None = None
    try:
        opened = adapter_path()
    except ProtocolError as exc:
        error = exc
    assert error is None or isinstance(error, VerificationError | InvalidMessageError), type(error)
    if opened is not None:
        # Protobuf accepts a few byte-level variants of the same message (a field repeated, the
        # last one winning): what opens must then be exactly what was notarized and signed.
        assert opened == check_envelope(world().sealed_envelope)


@PROPERTY
@given(st.data())
def test_a_resigned_header_from_an_outsider_is_refused(data: st.DataObject) -> None:
    """A header rewritten (another recipient, id, sender or deadline) and notarized by a bank."""
    w = world()
    header = envelope_pb2.EnvelopeHeader.FromString(w.envelope.header)
    change = data.draw(st.sampled_from(["recipient", "id", "sender", "hop", "type"]))
    if change == "recipient":
        header.recipient = OTHER_BANK
    elif change == "id":
        header.id = "01890a5d-ac96-774b-bcce-b302099a8059"
    elif change == "sender":
        header.sender = OTHER_BANK
    elif change == "hop":
        header.hop = data.draw(st.integers(1, 2**31 - 1))
    else:
        header.type = common_pb2.REQUEST_TYPE_FREEZE
    envelope = copy(w.envelope)
    envelope.header = header.SerializeToString()
    signer = data.draw(st.sampled_from([w.other_bank, w.police, w.bank]))
    from broker.protocol import sign_detached

    envelope.notary_signature = sign_detached(
        envelope.header,
        key=signer,
        iss=BROKER_ID,
        aud=BANK,
        jti=header.id,
        message_type="NOTARIZATION",
        clock=w.clock,
    )
    refused(lambda: check_envelope(envelope), UnknownKeyError)


SEALED_FIELDS = ["ephemeral_public_key", "nonce", "ciphertext", "recipient_kid", "content_type"]


@PROPERTY
@given(st.sampled_from(SEALED_FIELDS), st.data())
def test_a_mutated_sealed_body_is_refused_as_a_sealed_body_error(field: str, data: st.DataObject) -> None:
    original = world().sealed_envelope
    envelope = copy(original)
    value = getattr(original.sealed_body, field)
    mutated: object = (
        data.draw(mutated_bytes(value)) if isinstance(value, bytes) else data.draw(mutated_text(value))
    )
    setattr(envelope.sealed_body, field, mutated)
    if mutated == value:
        check_envelope(envelope)
        return
    refused(lambda: check_envelope(envelope), SealedBodyError)


def test_a_body_sealed_to_someone_else_is_refused() -> None:
    w = world()
    envelope = seal_for_recipient(w.envelope, _x25519_public(w.stranger_enc))
    refused(lambda: check_envelope(envelope), SealedBodyError)


def test_an_envelope_with_a_clear_and_a_sealed_body_is_refused() -> None:
    envelope = copy(world().sealed_envelope)
    envelope.body = world().envelope.body
    refused(lambda: check_envelope(envelope), SealedBodyError)


# -- (c) signed lifecycle events ----------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_a_mutated_event_payload_is_refused(data: st.DataObject) -> None:
    original = world().signed_event
    payload = data.draw(mutated_bytes(original.payload))
    signed = envelope_pb2.SignedMessage(payload=payload, signature=original.signature)
    if payload == original.payload:
        check_event(signed)
        return
    # Another actor in the bytes names another issuer (WrongIssuer) or, unknown, no key at all.
    refused(
        lambda: check_event(signed),
        InvalidMessageError,
        DigestMismatchError,
        WrongIssuerError,
        UnknownKeyError,
        MalformedSignatureError,
    )


@PROPERTY
@given(st.data())
def test_a_mutated_event_signature_is_refused(data: st.DataObject) -> None:
    original = world().signed_event
    signature = data.draw(mutated_text(original.signature))
    signed = envelope_pb2.SignedMessage(payload=original.payload, signature=signature)
    if signature == original.signature:
        check_event(signed)
        return
    refused(lambda: check_event(signed), VerificationError)


@PROPERTY
@given(st.integers(0, 511))
def test_a_flipped_event_signature_bit_is_a_bad_signature(bit: int) -> None:
    original = world().signed_event
    signed = envelope_pb2.SignedMessage(
        payload=original.payload, signature=flip_signature_bit(original.signature, bit)
    )
    refused(lambda: check_event(signed), BadSignatureError)


@pytest.mark.parametrize("edit", list(HEADER_EDITS), ids=list(HEADER_EDITS))
def test_an_edited_event_header_is_refused(edit: str) -> None:
    change, expected = HEADER_EDITS[edit]
    original = world().signed_event
    header, signature = split_jws(original.signature)
    change(header)
    if edit == "gct changed":
        expected = MalformedSignatureError
    forged = envelope_pb2.SignedMessage(payload=original.payload, signature=join_jws(header, signature))
    refused(lambda: check_event(forged), expected)


# -- (d) sealed payloads ------------------------------------------------------------------------


@PROPERTY
@given(st.sampled_from(SEALED_FIELDS), st.data())
def test_a_mutated_sealed_payload_does_not_open(field: str, data: st.DataObject) -> None:
    original = world().sealed_answer
    payload = copy(original)
    value = getattr(original, field)
    mutated: object = (
        data.draw(mutated_bytes(value)) if isinstance(value, bytes) else data.draw(mutated_text(value))
    )
    setattr(payload, field, mutated)
    if mutated == value:
        assert check_sealed(payload) == SECRET
        return
    refused(lambda: check_sealed(payload), SealingError)


@PROPERTY
@given(
    st.sampled_from(["request_id", "sender", "recipient"]),
    st.text(st.characters(codec="utf-8"), max_size=40),
)
def test_a_sealed_payload_rebound_to_another_request_or_pair_does_not_open(field: str, value: str) -> None:
    binding = {"request_id": REQUEST_ID, "sender": POLICE, "recipient": BANK}
    if binding[field] == value:
        return
    binding[field] = value
    payload = world().sealed_answer
    refused(lambda: open_sealed(payload, world().bank_enc, **binding), SealingError)


def test_a_payload_sealed_to_someone_else_does_not_open() -> None:
    payload = seal(
        SECRET,
        _x25519_public(world().stranger_enc),
        request_id=REQUEST_ID,
        sender=POLICE,
        recipient=BANK,
        content_type=DATA_ANSWER_CONTENT_TYPE,
    )
    refused(lambda: check_sealed(payload), SealingError)
    # Nor with the stranger's key under another request: the binding holds for the right key too.
    refused(
        lambda: open_sealed(payload, world().stranger_enc, request_id="x", sender=POLICE, recipient=BANK),
        SealingError,
    )


# -- bearer tokens ------------------------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_a_mutated_bearer_token_is_refused(data: st.DataObject) -> None:
    original = world().token
    token = data.draw(mutated_text(original))
    if token == original:
        check_token(token)
        return
    refused(lambda: check_token(token), VerificationError)


@PROPERTY
@given(st.integers(0, 511))
def test_a_flipped_bearer_token_signature_bit_is_a_bad_signature(bit: int) -> None:
    encoded_header, encoded_payload, encoded_signature = world().token.split(".")
    signature = bytearray(b64url_decode(encoded_signature))
    signature[bit // 8] ^= 1 << (bit % 8)
    token = f"{encoded_header}.{encoded_payload}.{b64url_encode(bytes(signature))}"
    refused(lambda: check_token(token), BadSignatureError)


TOKEN_EDITS: dict[str, tuple[str, Callable[[dict[str, Any]], None], type[ProtocolError]]] = {
    "alg none": ("header", lambda h: h.update(alg="none"), MalformedSignatureError),
    "alg HS256": ("header", lambda h: h.update(alg="HS256"), MalformedSignatureError),
    "kid of another agency": ("header", lambda h: h.update(kid=world().other_bank.kid), UnknownKeyError),
    "kid missing": ("header", lambda h: h.pop("kid"), MalformedSignatureError),
    "header is a list": ("header", lambda h: h.clear(), MalformedSignatureError),
    "iss changed": ("payload", lambda p: p.update(iss=OTHER_BANK, sub=OTHER_BANK), UnknownKeyError),
    "sub differs": ("payload", lambda p: p.update(sub=OTHER_BANK), MalformedSignatureError),
    "aud changed": ("payload", lambda p: p.update(aud=BANK), WrongAudienceError),
    "aud empty list": ("payload", lambda p: p.update(aud=[]), MalformedSignatureError),
    "exp moved on": ("payload", lambda p: p.update(exp=p["exp"] + 60), BadSignatureError),
    "exp infinite": ("payload", lambda p: p.update(exp=float("inf")), MalformedSignatureError),
    "exp huge": ("payload", lambda p: p.update(exp=10**30), MalformedSignatureError),
    "iat with 5000 digits": (
        "payload",
        lambda p: p.update(iat=RawJson("1" + "0" * 4999)),
        MalformedSignatureError,
    ),
    "jti missing": ("payload", lambda p: p.pop("jti"), MalformedSignatureError),
    "nbf as string": ("payload", lambda p: p.update(nbf="soon"), MalformedSignatureError),
}


@pytest.mark.parametrize("edit", list(TOKEN_EDITS), ids=list(TOKEN_EDITS))
def test_an_edited_bearer_token_is_refused_with_its_error(edit: str) -> None:
    part, change, expected = TOKEN_EDITS[edit]
    encoded = world().token.split(".")
    index = 0 if part == "header" else 1
    claims: dict[str, Any] = json.loads(b64url_decode(encoded[index]))
    change(claims)
    document: object = [] if edit == "header is a list" else claims
    # allow_nan: an attacker's JSON encoder writes Infinity if asked to.
    encoded[index] = b64url_encode(encode_json(document))
    refused(lambda: check_token(".".join(encoded)), expected)


# -- (e) arbitrary input to every parser entry point --------------------------------------------


_B64URL_TEXT = st.text(
    st.sampled_from(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")), max_size=200
)
_ANY_TEXT = st.text(st.characters(codec="utf-8"), max_size=200) | _B64URL_TEXT


@st.composite
def json_jws(draw: st.DrawFn) -> str:
    """A syntactically plausible detached JWS whose header is arbitrary JSON."""
    header = draw(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=6)
            ),
            max_leaves=12,
        )
        | st.fixed_dictionaries(
            {
                "alg": st.just("EdDSA"),
                "b64": st.just(False),
                "crit": st.just(["b64"]),
                "typ": st.just("gc+jws"),
            },
            optional={
                name: st.integers() | st.text(max_size=12) | st.none() | st.lists(st.text(max_size=4))
                for name in ("kid", "iss", "aud", "jti", "iat", "exp", "gct", "dig")
            },
        )
    )
    encoded = b64url_encode(json.dumps(header).encode())
    signature = draw(st.binary(min_size=64, max_size=64) | st.binary(max_size=80))
    return f"{encoded}..{b64url_encode(signature)}"


@FUZZ
@given(_ANY_TEXT | json_jws(), st.binary(max_size=200))
def test_arbitrary_input_to_verify_detached_is_refused(token: str, body: bytes) -> None:
    w = world()
    refused(
        lambda: verify_detached(token, body, keys=w.keys, audience=BANK, clock=w.clock), VerificationError
    )


@FUZZ
@given(st.binary(max_size=400), _ANY_TEXT | json_jws())
def test_arbitrary_signed_messages_are_refused(payload: bytes, signature: str) -> None:
    signed = envelope_pb2.SignedMessage(payload=payload, signature=signature)
    refused(lambda: check_request(signed))
    refused(lambda: check_event(signed))


@FUZZ
@given(st.binary(max_size=600))
def test_arbitrary_bytes_as_an_inbox_message_are_refused(data: bytes) -> None:
    refused(lambda: check_envelope(decode_message(envelope_pb2.Envelope, data)))


@FUZZ
@given(
    st.binary(max_size=300),
    st.binary(max_size=300),
    _ANY_TEXT,
    _ANY_TEXT,
    st.booleans(),
)
def test_arbitrary_envelopes_are_refused(
    header: bytes, body: bytes, notary: str, body_signature: str, sealed: bool
) -> None:
    envelope = envelope_pb2.Envelope(
        header=header, notary_signature=notary, body=body, body_signature=body_signature
    )
    if sealed:
        envelope.sealed_body.ciphertext = body
    refused(lambda: check_envelope(envelope))
    if sealed:
        refused(lambda: unseal_envelope(envelope, [world().bank_enc], recipient=BANK), SealedBodyError)


@FUZZ
@given(
    st.binary(max_size=40),
    st.binary(max_size=20),
    st.binary(max_size=80),
    _ANY_TEXT,
    _ANY_TEXT,
)
def test_arbitrary_sealed_payloads_do_not_open(
    ephemeral: bytes, nonce: bytes, ciphertext: bytes, kid: str, content_type: str
) -> None:
    payload = results_pb2.EncryptedPayload(
        ephemeral_public_key=ephemeral,
        nonce=nonce,
        ciphertext=ciphertext,
        recipient_kid=kid,
        content_type=content_type,
    )
    refused(lambda: check_sealed(payload), SealingError)
    # With the right kid the key lookup passes and the cryptography is what refuses.
    payload.recipient_kid = world().sealed_answer.recipient_kid
    refused(lambda: check_sealed(payload), SealingError)


@FUZZ
@given(_ANY_TEXT | st.builds(lambda a, b, c: f"{a}.{b}.{c}", _B64URL_TEXT, _B64URL_TEXT, _B64URL_TEXT))
def test_arbitrary_bearer_tokens_are_refused(token: str) -> None:
    refused(lambda: check_token(token), VerificationError)


@FUZZ
@given(
    st.sampled_from(["request", "event", "header", "signed", "envelope", "payload"]), st.binary(max_size=300)
)
def test_arbitrary_bytes_to_the_message_parsers_are_refused_or_parsed(kind: str, data: bytes) -> None:
    message_type: type[Message] = {
        "request": requests_pb2.Request,
        "event": lifecycle_pb2.LifecycleEvent,
        "header": envelope_pb2.EnvelopeHeader,
        "signed": envelope_pb2.SignedMessage,
        "envelope": envelope_pb2.Envelope,
        "payload": results_pb2.EncryptedPayload,
    }[kind]
    violations: tuple[object, ...] = ("parsed",)
    try:
        parse_and_validate(message_type, data, prefix=f"{kind}.")
    except InvalidMessageError as exc:
        violations = exc.violations
    assert violations, "an InvalidMessageError always lists what is wrong"


@pytest.mark.parametrize("length", [0, 1, 31, 33, 64])
def test_a_sealed_payload_with_a_wrong_length_key_does_not_open(length: int) -> None:
    payload = copy(world().sealed_answer)
    payload.ephemeral_public_key = bytes(range(length))
    refused(lambda: check_sealed(payload), SealingError)


def test_a_low_order_ephemeral_key_does_not_open() -> None:
    payload = copy(world().sealed_answer)
    payload.ephemeral_public_key = bytes(32)  # the all-zero point: the shared secret would be zero
    refused(lambda: check_sealed(payload), SealingError)


def test_signed_times_are_checked_after_the_signature() -> None:
    """Not a mutation: the genuine request long after it expired is refused as expired, typed."""
    w = world()
    from broker.protocol import ExpiredError

    later = ManualClock(T0 + timedelta(days=1))
    refused(lambda: verify_request(w.signed_request, keys=w.keys, sender=POLICE, clock=later), ExpiredError)
