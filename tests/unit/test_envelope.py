"""Sender signature -> notarization -> opening by the recipient, and each way it must fail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2

from broker.protocol import (
    BROKER_ID,
    REQUEST_CONTENT_TYPE,
    BadSignatureError,
    DigestMismatchError,
    InvalidMessageError,
    KeyUse,
    ManualClock,
    PublicKey,
    SealedBodyError,
    SigningKey,
    StaticKeyStore,
    UnknownKeyError,
    WrongAudienceError,
    WrongIssuerError,
    body_digest,
    generate_signing_key,
    new_uuid7,
    notarize,
    open_envelope,
    seal_for_recipient,
    sign_event,
    sign_request,
    unseal_envelope,
    verify_event,
    verify_request,
)

T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


@dataclass
class World:
    clock: ManualClock = field(default_factory=lambda: ManualClock(T0))
    police: SigningKey = field(default_factory=generate_signing_key)
    bank: SigningKey = field(default_factory=generate_signing_key)
    other_bank: SigningKey = field(default_factory=generate_signing_key)
    broker: SigningKey = field(default_factory=generate_signing_key)

    @property
    def keys(self) -> StaticKeyStore:
        return StaticKeyStore(
            {
                "police-310115": [self.police.public()],
                "bank-icbc": [self.bank.public()],
                "bank-ccb": [self.other_bank.public()],
                BROKER_ID: [self.broker.public()],
            }
        )


def stop_payment(recipient: str = "bank-icbc", minor_units: int = 5_000_000) -> requests_pb2.Request:
    issued = Timestamp()
    issued.FromDatetime(T0)
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number="SH-2026-000123",
            issuing_agency="police-310115",
            legal_instrument_id="沪公(浦)止付字[2026]0001号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        recipient=recipient,
        issued_at=issued,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number="6222020200001234567", holder_name="王某某"),
            amount=common_pb2.Money(currency="CNY", minor_units=minor_units),
        ),
    )


def notarized(world: World, request: requests_pb2.Request | None = None) -> envelope_pb2.Envelope:
    signed = sign_request(
        request or stop_payment(), key=world.police, sender="police-310115", clock=world.clock
    )
    verified = verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)
    return notarize(
        verified,
        request_id=new_uuid7(world.clock),
        recipient="bank-icbc",
        deadlines=envelope_pb2.Deadlines(),
        broker_key=world.broker,
        clock=world.clock,
    )


def test_round_trip_sender_broker_recipient() -> None:
    world = World()
    envelope = notarized(world)
    opened = open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock)
    assert opened.header.sender == "police-310115"
    assert opened.header.type == common_pb2.REQUEST_TYPE_STOP_PAYMENT
    assert opened.request.stop_payment.amount.minor_units == 5_000_000
    assert opened.notary_claims.iss == BROKER_ID
    assert opened.sender_claims.iss == "police-310115"


def test_sender_signature_checked_at_notarized_time_not_delivery_time() -> None:
    """A message that waited a day in the inbox (bank offline) still opens."""
    world = World()
    envelope = notarized(world)
    world.clock.advance(timedelta(days=1))
    opened = open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock)
    assert opened.header.id


def test_envelope_for_another_recipient_is_refused() -> None:
    world = World()
    envelope = notarized(world)
    with pytest.raises(WrongAudienceError):
        open_envelope(envelope, keys=world.keys, recipient="bank-ccb", clock=world.clock)


def test_swapped_body_is_refused() -> None:
    world = World()
    envelope = notarized(world)
    other = sign_request(
        stop_payment(minor_units=1), key=world.police, sender="police-310115", clock=world.clock
    )
    envelope.body = other.payload
    envelope.body_signature = other.signature
    with pytest.raises(DigestMismatchError):
        open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock)


def test_tampered_header_is_refused() -> None:
    world = World()
    envelope = notarized(world)
    header = envelope_pb2.EnvelopeHeader.FromString(envelope.header)
    header.recipient = "bank-ccb"
    envelope.header = header.SerializeToString()
    with pytest.raises(DigestMismatchError):
        open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock)


def test_notarization_by_a_non_broker_key_is_refused() -> None:
    world = World()
    envelope = notarized(world)
    impostor = World(police=world.police, bank=world.bank, other_bank=world.other_bank)
    with pytest.raises(UnknownKeyError):
        open_envelope(envelope, keys=impostor.keys, recipient="bank-icbc", clock=world.clock)


def test_request_signed_by_another_agency_is_refused() -> None:
    world = World()
    signed = sign_request(stop_payment(), key=world.other_bank, sender="bank-ccb", clock=world.clock)
    with pytest.raises(WrongIssuerError):
        verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)


def test_request_claiming_police_but_signed_with_bank_key_is_refused() -> None:
    world = World()
    signed = sign_request(stop_payment(), key=world.bank, sender="police-310115", clock=world.clock)
    with pytest.raises(UnknownKeyError):
        verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)


def test_request_signed_for_another_recipient_is_refused() -> None:
    world = World()
    signed = sign_request(
        stop_payment(recipient="bank-ccb"), key=world.police, sender="police-310115", clock=world.clock
    )
    body = requests_pb2.Request.FromString(signed.payload)
    body.recipient = "bank-icbc"
    signed.payload = body.SerializeToString()
    with pytest.raises(WrongAudienceError):
        verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)


def test_invalid_request_lists_field_violations_after_a_valid_signature() -> None:
    world = World()
    request = stop_payment(minor_units=0)
    request.stop_payment.account.account_number = "12"
    signed = sign_request(request, key=world.police, sender="police-310115", clock=world.clock)
    with pytest.raises(InvalidMessageError) as caught:
        verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)
    fields = {v.field: v.rule for v in caught.value.violations}
    assert fields == {
        "request.stop_payment.account.account_number": "string.pattern",
        "request.stop_payment.amount": "amount.positive",
    }


def test_unknown_fields_are_refused() -> None:
    world = World()
    payload = stop_payment().SerializeToString() + b"\xa8\x06\x01"  # field 101, varint 1
    from broker.protocol import sign_message

    signed = sign_message(
        payload,
        key=world.police,
        issuer="police-310115",
        audience="bank-icbc",
        message_type="STOP_PAYMENT",
        clock=world.clock,
    )
    with pytest.raises(InvalidMessageError) as caught:
        verify_request(signed, keys=world.keys, sender="police-310115", clock=world.clock)
    assert caught.value.violations[0].rule == "wire.unknown_fields"


def _event(world: World, actor: str = "bank-icbc") -> lifecycle_pb2.LifecycleEvent:
    at = Timestamp()
    at.FromDatetime(world.clock.now())
    return lifecycle_pb2.LifecycleEvent(
        event_id=new_uuid7(world.clock),
        request_id=new_uuid7(world.clock),
        state=common_pb2.REQUEST_STATE_DELIVERED,
        actor=actor,
        at=at,
        request_digest=body_digest(b"the request body"),
    )


def test_event_round_trip() -> None:
    world = World()
    event = _event(world)
    signed = sign_event(event, key=world.bank, clock=world.clock)
    verified, claims = verify_event(signed, keys=world.keys, clock=world.clock)
    assert verified == event
    assert claims.iss == "bank-icbc"


def test_forged_event_naming_another_actor_is_refused() -> None:
    world = World()
    signed = sign_event(_event(world, actor="bank-icbc"), key=world.other_bank, clock=world.clock)
    with pytest.raises(UnknownKeyError):
        verify_event(signed, keys=world.keys, clock=world.clock)


def test_event_with_tampered_state_is_refused() -> None:
    world = World()
    signed = sign_event(_event(world), key=world.bank, clock=world.clock)
    event = lifecycle_pb2.LifecycleEvent.FromString(signed.payload)
    event.state = common_pb2.REQUEST_STATE_EXECUTED
    signed.payload = event.SerializeToString()
    with pytest.raises(DigestMismatchError):
        verify_event(signed, keys=world.keys, clock=world.clock)


def test_bad_signature_bytes_are_refused() -> None:
    world = World()
    signed = sign_event(_event(world), key=world.bank, clock=world.clock)
    head, _, sig = signed.signature.partition("..")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    signed.signature = f"{head}..{flipped}"
    with pytest.raises(BadSignatureError):
        verify_event(signed, keys=world.keys, clock=world.clock)


# -- sealed bodies ------------------------------------------------------------------------------


def enc_public(private: x25519.X25519PrivateKey) -> PublicKey:
    return PublicKey.from_raw(private.public_key().public_bytes_raw(), use=KeyUse.ENC)


def sealed(world: World, bank_key: x25519.X25519PrivateKey) -> envelope_pb2.Envelope:
    return seal_for_recipient(notarized(world), enc_public(bank_key))


def test_sealed_body_opens_for_the_recipient_and_verifies_as_in_clear() -> None:
    world = World()
    bank_key = x25519.X25519PrivateKey.generate()
    clear = notarized(world)
    envelope = seal_for_recipient(clear, enc_public(bank_key))
    assert envelope.body == b""
    assert envelope.sealed_body.content_type == REQUEST_CONTENT_TYPE
    # Header, notarization and sender signature are untouched: they stay over the clear bytes.
    assert (envelope.header, envelope.notary_signature, envelope.body_signature) == (
        clear.header,
        clear.notary_signature,
        clear.body_signature,
    )
    for secret in (b"6222020200001234567", "王某某".encode()):
        assert secret not in envelope.SerializeToString()

    opened = open_envelope(
        envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock, decrypt=bank_key
    )
    assert opened.request.stop_payment.account.account_number == "6222020200001234567"
    assert unseal_envelope(envelope, [bank_key], recipient="bank-icbc") == clear
    assert seal_for_recipient(envelope, enc_public(bank_key)) is envelope  # sealed once


def test_resealing_uses_a_fresh_ephemeral_key() -> None:
    world = World()
    bank_key = x25519.X25519PrivateKey.generate()
    clear = notarized(world)
    first = seal_for_recipient(clear, enc_public(bank_key))
    second = seal_for_recipient(clear, enc_public(bank_key))
    assert first.sealed_body.ephemeral_public_key != second.sealed_body.ephemeral_public_key
    assert unseal_envelope(first, bank_key, recipient="bank-icbc") == unseal_envelope(
        second, bank_key, recipient="bank-icbc"
    )


def test_an_envelope_in_clear_still_opens_without_a_key() -> None:
    world = World()
    envelope = notarized(world)
    assert unseal_envelope(envelope, None, recipient="bank-icbc") is envelope
    opened = open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock)
    assert opened.request.stop_payment.amount.minor_units == 5_000_000


def test_sealed_body_does_not_open_with_another_key_or_without_one() -> None:
    world = World()
    envelope = sealed(world, x25519.X25519PrivateKey.generate())
    for keys in (x25519.X25519PrivateKey.generate(), [x25519.X25519PrivateKey.generate()], None):
        with pytest.raises(SealedBodyError):
            open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock, decrypt=keys)


def tampered_ciphertext(envelope: envelope_pb2.Envelope) -> None:
    ciphertext = bytearray(envelope.sealed_body.ciphertext)
    ciphertext[0] ^= 1
    envelope.sealed_body.ciphertext = bytes(ciphertext)


def tampered_header(envelope: envelope_pb2.Envelope) -> None:
    # Another request id in the (unverified) header: the associated data no longer matches.
    header = envelope_pb2.EnvelopeHeader.FromString(envelope.header)
    header.id = new_uuid7(ManualClock(T0))
    envelope.header = header.SerializeToString()


def relabelled(envelope: envelope_pb2.Envelope) -> None:
    envelope.sealed_body.content_type = "greenchannel.v1.DataAnswer"


def both_bodies(envelope: envelope_pb2.Envelope) -> None:
    envelope.body = stop_payment(minor_units=1).SerializeToString()


@pytest.mark.parametrize("tamper", [tampered_ciphertext, tampered_header, relabelled, both_bodies])
def test_tampered_sealed_envelope_is_a_sealed_body_error(
    tamper: Callable[[envelope_pb2.Envelope], None],
) -> None:
    world = World()
    bank_key = x25519.X25519PrivateKey.generate()
    envelope = sealed(world, bank_key)
    tamper(envelope)
    with pytest.raises(SealedBodyError):
        unseal_envelope(envelope, bank_key, recipient="bank-icbc")


def test_sealed_body_opened_by_another_recipient_is_refused() -> None:
    """bank-ccb holding bank-icbc's key still cannot pass the envelope off as its own."""
    world = World()
    bank_key = x25519.X25519PrivateKey.generate()
    with pytest.raises(SealedBodyError):
        unseal_envelope(sealed(world, bank_key), bank_key, recipient="bank-ccb")


def test_a_forged_body_sealed_to_the_recipient_fails_the_digest() -> None:
    """Anyone can seal to a public key: what opens is still checked against the notarization."""
    world = World()
    bank_key = x25519.X25519PrivateKey.generate()
    envelope = notarized(world)
    forged = sign_request(
        stop_payment(minor_units=1), key=world.police, sender="police-310115", clock=world.clock
    )
    envelope.body = forged.payload
    envelope = seal_for_recipient(envelope, enc_public(bank_key))
    with pytest.raises(DigestMismatchError):
        open_envelope(envelope, keys=world.keys, recipient="bank-icbc", clock=world.clock, decrypt=bank_key)
