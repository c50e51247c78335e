"""Data answers sealed to the requester: they open only with its key, for this request, unaltered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from greenchannel.v1 import results_pb2

from broker.protocol import (
    DATA_ANSWER_CONTENT_TYPE,
    Agency,
    AgencyKind,
    DecryptionKeys,
    KeyUse,
    PublicKey,
    Registry,
    SealingError,
    current_broker_encryption_key,
    current_encryption_key,
    generate_signing_key,
    open_sealed,
    seal,
)

REQUEST_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
SENDER = "bank-icbc"
RECIPIENT = "police-310115"
SECRET = "账户持有人 张三 110101199001011234".encode()
T0 = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def enc_public(private: x25519.X25519PrivateKey, **window: datetime | None) -> PublicKey:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return PublicKey.from_raw(raw, use=KeyUse.ENC, **window)


def sealed_to(private: x25519.X25519PrivateKey, plaintext: bytes = SECRET) -> results_pb2.EncryptedPayload:
    return seal(
        plaintext,
        enc_public(private),
        request_id=REQUEST_ID,
        sender=SENDER,
        recipient=RECIPIENT,
        content_type=DATA_ANSWER_CONTENT_TYPE,
    )


def open_with(private: DecryptionKeys, payload: results_pb2.EncryptedPayload, **override: str) -> bytes:
    binding = {"request_id": REQUEST_ID, "sender": SENDER, "recipient": RECIPIENT} | override
    return open_sealed(payload, private, **binding)


def test_round_trip_and_payload_shape() -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = sealed_to(private)
    assert open_with(private, payload) == SECRET
    assert len(payload.ephemeral_public_key) == 32
    assert len(payload.nonce) == 12
    assert len(payload.ciphertext) == len(SECRET) + 16
    assert payload.recipient_kid == enc_public(private).kid
    assert payload.content_type == "greenchannel.v1.DataAnswer"
    assert SECRET not in payload.SerializeToString()


def test_each_seal_uses_a_fresh_ephemeral_key_and_nonce() -> None:
    private = x25519.X25519PrivateKey.generate()
    first, second = sealed_to(private), sealed_to(private)
    assert first.ephemeral_public_key != second.ephemeral_public_key
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext


def test_empty_plaintext_round_trips() -> None:
    private = x25519.X25519PrivateKey.generate()
    assert open_with(private, sealed_to(private, b"")) == b""


def test_wrong_private_key_fails() -> None:
    payload = sealed_to(x25519.X25519PrivateKey.generate())
    with pytest.raises(SealingError, match="sealed to key"):
        open_with(x25519.X25519PrivateKey.generate(), payload)


def test_wrong_private_key_fails_even_when_the_kid_is_relabelled() -> None:
    other = x25519.X25519PrivateKey.generate()
    payload = sealed_to(x25519.X25519PrivateKey.generate())
    payload.recipient_kid = enc_public(other).kid
    with pytest.raises(SealingError, match="does not open"):
        open_with(other, payload)


@pytest.mark.parametrize("field", ["ciphertext", "nonce", "ephemeral_public_key"])
def test_tampered_bytes_fail(field: str) -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = sealed_to(private)
    value = bytearray(getattr(payload, field))
    value[0] ^= 0x01
    setattr(payload, field, bytes(value))
    with pytest.raises(SealingError):
        open_with(private, payload)


def test_truncated_ciphertext_fails() -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = sealed_to(private)
    payload.ciphertext = payload.ciphertext[:15]
    with pytest.raises(SealingError, match="length"):
        open_with(private, payload)


def test_low_order_ephemeral_key_fails() -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = sealed_to(private)
    payload.ephemeral_public_key = bytes(32)  # the all-zero point: every shared secret is zero
    with pytest.raises(SealingError):
        open_with(private, payload)


@pytest.mark.parametrize(
    "override",
    [
        {"request_id": "01890a5d-ac96-774b-bcce-b302099a8058"},
        {"sender": "bank-ccb"},
        {"recipient": "police-310000"},
    ],
)
def test_associated_data_binds_request_sender_and_recipient(override: dict[str, str]) -> None:
    private = x25519.X25519PrivateKey.generate()
    with pytest.raises(SealingError, match="does not open"):
        open_with(private, sealed_to(private), **override)


def test_associated_data_binds_the_content_type() -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = sealed_to(private)
    payload.content_type = "greenchannel.v1.DataRecord"
    with pytest.raises(SealingError, match="does not open"):
        open_with(private, payload)


def test_fields_cannot_be_shifted_between_sender_and_recipient() -> None:
    private = x25519.X25519PrivateKey.generate()
    payload = seal(
        SECRET,
        enc_public(private),
        request_id=REQUEST_ID,
        sender="bank-a",
        recipient="bc",
        content_type=DATA_ANSWER_CONTENT_TYPE,
    )
    with pytest.raises(SealingError):
        open_sealed(payload, private, request_id=REQUEST_ID, sender="bank-ab", recipient="c")


def test_sealing_to_a_signing_key_is_refused() -> None:
    with pytest.raises(SealingError, match="not an encryption key"):
        seal(
            SECRET,
            generate_signing_key().public(),
            request_id=REQUEST_ID,
            sender=SENDER,
            recipient=RECIPIENT,
            content_type=DATA_ANSWER_CONTENT_TYPE,
        )


def police_with(*keys: PublicKey) -> Agency:
    return Agency(
        id=RECIPIENT,
        kind=AgencyKind.POLICE,
        name="Pudong Anti-Fraud Centre",
        region="310115",
        duty_contact="duty-desk@police-310115",
        keys=keys,
    )


def test_key_rotation_old_answers_open_with_the_old_key_new_answers_use_the_new_key() -> None:
    old_private, new_private = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    rotated_at = T0 + timedelta(days=30)
    old_public = enc_public(old_private, not_before=T0, not_after=rotated_at + timedelta(hours=1))
    new_public = enc_public(new_private, not_before=rotated_at)

    before = police_with(old_public)
    assert current_encryption_key(before, at=T0 + timedelta(days=1)) == old_public
    old_answer = seal(
        SECRET,
        current_encryption_key(before, at=T0 + timedelta(days=1)),
        request_id=REQUEST_ID,
        sender=SENDER,
        recipient=RECIPIENT,
        content_type=DATA_ANSWER_CONTENT_TYPE,
    )

    after = police_with(old_public, new_public)
    # During the overlap both are valid; the newer one is chosen.
    assert current_encryption_key(after, at=rotated_at + timedelta(minutes=5)) == new_public
    assert current_encryption_key(after, at=rotated_at + timedelta(days=2)) == new_public
    new_answer = seal(
        SECRET,
        current_encryption_key(after, at=rotated_at + timedelta(days=2)),
        request_id=REQUEST_ID,
        sender=SENDER,
        recipient=RECIPIENT,
        content_type=DATA_ANSWER_CONTENT_TYPE,
    )

    assert open_with(old_private, old_answer) == SECRET
    assert open_with(new_private, new_answer) == SECRET
    with pytest.raises(SealingError):
        open_with(new_private, old_answer)
    with pytest.raises(SealingError):
        open_with(old_private, new_answer)


def test_no_valid_encryption_key_is_an_error() -> None:
    private = x25519.X25519PrivateKey.generate()
    revoked = enc_public(private, not_before=T0, revoked_at=T0 + timedelta(days=1))
    with pytest.raises(SealingError, match="no encryption key"):
        current_encryption_key(police_with(revoked), at=T0 + timedelta(days=2))
    with pytest.raises(SealingError, match="no encryption key"):
        current_encryption_key(police_with(), at=T0)


def test_a_key_ring_picks_the_key_each_answer_was_sealed_to() -> None:
    old_private, new_private = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    ring = [new_private, old_private]  # what an agency keeps after rotating its encryption key
    assert open_with(ring, sealed_to(old_private)) == SECRET
    assert open_with(ring, sealed_to(new_private)) == SECRET
    with pytest.raises(SealingError, match="none of the 1 keys"):
        open_with([new_private], sealed_to(old_private))


def test_the_broker_encryption_key_comes_from_the_registry() -> None:
    private = x25519.X25519PrivateKey.generate()
    sig = generate_signing_key().public(not_before=T0)
    enc = enc_public(private, not_before=T0)
    registry = Registry([], broker_keys=[sig, enc])
    assert current_broker_encryption_key(registry, at=T0) == enc
    with pytest.raises(SealingError, match="the broker has no encryption key"):
        current_broker_encryption_key(Registry([], broker_keys=[sig]), at=T0)
