"""Sealing personal data to the requesting agency: X25519 + HKDF-SHA256 + AES-256-GCM.

The shape of HPKE base mode (RFC 9180) built from its primitives, as the contract's
``EncryptedPayload`` describes it:

1. a fresh ephemeral X25519 key per payload, agreed with the recipient's ``enc`` key;
2. HKDF-SHA256, empty salt, ``info = LABEL || ephemeral public || recipient public``, 32 bytes;
3. AES-256-GCM with a random 12-byte nonce; the associated data binds the request id, the sender
   and recipient agency ids and the content type, each length-prefixed, so a ciphertext cannot be
   replayed into another request's answer or relabelled, and no field can borrow bytes from its
   neighbour (``("ab", "c")`` and ``("a", "bc")`` encode differently).

Only the recipient, holding the X25519 private key, can open it; the broker and NATS see ciphertext.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from greenchannel.v1 import results_pb2

from ._errors import KeyFileError, SealingError
from ._keys import KeyUse, PublicKey, jwk_thumbprint
from ._registry import Agency

__all__ = [
    "DATA_ANSWER_CONTENT_TYPE",
    "SEALING_LABEL",
    "current_encryption_key",
    "open_sealed",
    "seal",
]

SEALING_LABEL = b"greenchannel/v1 data-answer"
"""Domain separation for the key derivation and the associated data."""

DATA_ANSWER_CONTENT_TYPE = results_pb2.DataAnswer.DESCRIPTOR.full_name
"""``greenchannel.v1.DataAnswer``: the content type of a sealed data answer or assistance report."""

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_MAX_CONTENT_TYPE = 128  # the contract's limit on EncryptedPayload.content_type
_EPOCH = datetime.min.replace(tzinfo=UTC)


def _raw_public(key: x25519.X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _length_prefixed(parts: Iterable[bytes]) -> bytes:
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _associated_data(*, request_id: str, sender: str, recipient: str, content_type: str) -> bytes:
    return _length_prefixed(
        (SEALING_LABEL, *(text.encode("utf-8") for text in (request_id, sender, recipient, content_type)))
    )


def _derive_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=hashes.SHA256(),
        length=_KEY_LEN,
        salt=None,  # RFC 5869: an absent salt is HashLen zero bytes, the same as an empty one
        info=SEALING_LABEL + ephemeral_public + recipient_public,
    )
    return hkdf.derive(shared)


def seal(
    plaintext: bytes,
    recipient_key: PublicKey,
    *,
    request_id: str,
    sender: str,
    recipient: str,
    content_type: str,
) -> results_pb2.EncryptedPayload:
    """Encrypt ``plaintext`` to ``recipient_key`` (an ``enc`` key), bound to this request and pair."""
    if len(content_type) > _MAX_CONTENT_TYPE:
        raise SealingError(f"content type longer than {_MAX_CONTENT_TYPE} characters")
    try:
        recipient_public = recipient_key.x25519()
    except KeyFileError as exc:
        raise SealingError(f"key {recipient_key.kid} of {recipient!r} is not an encryption key") from exc
    ephemeral = x25519.X25519PrivateKey.generate()
    ephemeral_public = _raw_public(ephemeral.public_key())
    try:
        shared = ephemeral.exchange(recipient_public)
    except ValueError as exc:  # a low-order point: the "shared" secret would be all zeros
        raise SealingError(f"key {recipient_key.kid} of {recipient!r} is not a usable X25519 key") from exc
    key = _derive_key(shared, ephemeral_public, recipient_key.raw)
    nonce = os.urandom(_NONCE_LEN)
    aad = _associated_data(
        request_id=request_id, sender=sender, recipient=recipient, content_type=content_type
    )
    return results_pb2.EncryptedPayload(
        ephemeral_public_key=ephemeral_public,
        nonce=nonce,
        ciphertext=AESGCM(key).encrypt(nonce, plaintext, aad),
        recipient_kid=recipient_key.kid,
        content_type=content_type,
    )


def open_sealed(
    payload: results_pb2.EncryptedPayload,
    private_key: x25519.X25519PrivateKey,
    *,
    request_id: str,
    sender: str,
    recipient: str,
) -> bytes:
    """Decrypt a payload sealed to ``private_key`` for this request, from ``sender`` to ``recipient``.

    The content type is the payload's own; it is authenticated, so a relabelled payload fails.
    """
    if (
        len(payload.ephemeral_public_key) != _KEY_LEN
        or len(payload.nonce) != _NONCE_LEN
        or len(payload.ciphertext) < _TAG_LEN
    ):
        raise SealingError("not a sealed payload: wrong key, nonce or ciphertext length")
    recipient_public = _raw_public(private_key.public_key())
    kid = jwk_thumbprint(recipient_public, KeyUse.ENC)
    # Compared first so a rotated key gives a clear answer: this payload is for another key.
    if not hmac.compare_digest(payload.recipient_kid, kid):
        raise SealingError(f"sealed to key {payload.recipient_kid!r}, not to {kid!r}")
    try:
        shared = private_key.exchange(x25519.X25519PublicKey.from_public_bytes(payload.ephemeral_public_key))
    except ValueError as exc:
        raise SealingError("the ephemeral key is not a usable X25519 key") from exc
    key = _derive_key(shared, payload.ephemeral_public_key, recipient_public)
    aad = _associated_data(
        request_id=request_id, sender=sender, recipient=recipient, content_type=payload.content_type
    )
    try:
        return AESGCM(key).decrypt(payload.nonce, payload.ciphertext, aad)
    except InvalidTag as exc:
        raise SealingError("the payload does not open with this key for this request") from exc


def current_encryption_key(agency: Agency, *, at: datetime) -> PublicKey:
    """The agency's newest ``enc`` key valid at ``at``: what new answers are sealed to.

    Newest is the latest ``not_before``, then the later entry (overlay keys follow directory
    keys), the same order key provisioning uses to pick the private half.
    """
    candidates = [
        (key.not_before or _EPOCH, position, key)
        for position, key in enumerate(agency.keys)
        if key.use is KeyUse.ENC and key.valid_at(at)
    ]
    if not candidates:
        raise SealingError(f"agency {agency.id!r} has no encryption key valid at {at.isoformat()}")
    return max(candidates, key=lambda c: c[:2])[2]
