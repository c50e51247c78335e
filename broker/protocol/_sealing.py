"""Sealing personal data to the one party that may read it: X25519 + HKDF-SHA256 + AES-256-GCM.

Three things are sealed, so the broker, NATS, the logs and the ledger only ever hold ciphertext:

* a data answer or assistance report (``DataAnswer``), by the answering adapter, to the requester;
* a request body (``Request``), by the broker, to the recipient (``Envelope.sealed_body``);
* a result's personal details (``ResultDetails``: the onward transfers in full), by the answering
  adapter, once to the requester and once to the broker, which chases the money in memory; the
  ``Result`` itself keeps a redacted copy (no account numbers, no names).

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
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from greenchannel.v1 import requests_pb2, results_pb2

from ._errors import InvalidMessageError, KeyFileError, SealingError
from ._keys import KeyUse, PublicKey, jwk_thumbprint
from ._registry import Agency, Registry
from ._validation import parse_and_validate

__all__ = [
    "DATA_ANSWER_CONTENT_TYPE",
    "REQUEST_CONTENT_TYPE",
    "RESULT_DETAILS_CONTENT_TYPE",
    "SEALING_LABEL",
    "DecryptionKeys",
    "current_broker_encryption_key",
    "current_encryption_key",
    "encryption_kid",
    "newest_encryption_key",
    "open_details",
    "open_sealed",
    "seal",
    "seal_result_details",
]

SEALING_LABEL = b"greenchannel/v1 data-answer"
"""Domain separation for the key derivation and the associated data."""

DATA_ANSWER_CONTENT_TYPE = results_pb2.DataAnswer.DESCRIPTOR.full_name
"""``greenchannel.v1.DataAnswer``: the content type of a sealed data answer or assistance report."""

REQUEST_CONTENT_TYPE = requests_pb2.Request.DESCRIPTOR.full_name
"""``greenchannel.v1.Request``: the content type of a sealed request body (``Envelope.sealed_body``)."""

RESULT_DETAILS_CONTENT_TYPE = results_pb2.ResultDetails.DESCRIPTOR.full_name
"""``greenchannel.v1.ResultDetails``: ``Result.sealed_details`` and ``Result.broker_details``."""

DecryptionKeys = x25519.X25519PrivateKey | Sequence[x25519.X25519PrivateKey]
"""One X25519 private key, or several: after a rotation the old key still opens what was sealed to it."""

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


def encryption_kid(private_key: x25519.X25519PrivateKey) -> str:
    """The kid of an X25519 private key's public half (RFC 7638 thumbprint, ``use = enc``)."""
    return jwk_thumbprint(_raw_public(private_key.public_key()), KeyUse.ENC)


def _same_kid(claimed: str, kid: str) -> bool:
    # Compared as bytes: hmac.compare_digest raises TypeError for a str with non-ASCII characters,
    # and the claimed kid is whatever the (unauthenticated) payload says.
    return hmac.compare_digest(claimed.encode("utf-8"), kid.encode("utf-8"))


def _key_for(payload: results_pb2.EncryptedPayload, keys: DecryptionKeys) -> x25519.X25519PrivateKey:
    """The key the payload was sealed to, chosen by kid, so a rotated key gives a clear answer."""
    if isinstance(keys, x25519.X25519PrivateKey):
        kid = encryption_kid(keys)
        if not _same_kid(payload.recipient_kid, kid):
            raise SealingError(f"sealed to key {payload.recipient_kid!r}, not to {kid!r}")
        return keys
    for key in keys:
        if _same_kid(payload.recipient_kid, encryption_kid(key)):
            return key
    raise SealingError(f"sealed to key {payload.recipient_kid!r}, none of the {len(keys)} keys given")


def open_sealed(
    payload: results_pb2.EncryptedPayload,
    private_key: DecryptionKeys,
    *,
    request_id: str,
    sender: str,
    recipient: str,
) -> bytes:
    """Decrypt a payload sealed to ``private_key`` for this request, from ``sender`` to ``recipient``.

    ``private_key`` may be several keys (the current and rotated-out ones); the payload's
    ``recipient_kid`` picks one. The content type is the payload's own; it is authenticated, so a
    relabelled payload fails.
    """
    if (
        len(payload.ephemeral_public_key) != _KEY_LEN
        or len(payload.nonce) != _NONCE_LEN
        or len(payload.ciphertext) < _TAG_LEN
    ):
        raise SealingError("not a sealed payload: wrong key, nonce or ciphertext length")
    private_key = _key_for(payload, private_key)
    recipient_public = _raw_public(private_key.public_key())
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


def _newest_encryption_key(keys: Sequence[PublicKey], *, at: datetime, owner: str) -> PublicKey:
    candidates = [
        (key.not_before or _EPOCH, position, key)
        for position, key in enumerate(keys)
        if key.use is KeyUse.ENC and key.valid_at(at)
    ]
    if not candidates:
        raise SealingError(f"{owner} has no encryption key valid at {at.isoformat()}")
    return max(candidates, key=lambda c: c[:2])[2]


def newest_encryption_key(keys: Sequence[PublicKey], *, at: datetime, owner: str) -> PublicKey:
    """The newest ``enc`` key among ``keys`` valid at ``at`` (as :func:`current_encryption_key`),
    for a client holding an agency's keys as the registry service listed them."""
    return _newest_encryption_key(keys, at=at, owner=owner)


def current_encryption_key(agency: Agency, *, at: datetime) -> PublicKey:
    """The agency's newest ``enc`` key valid at ``at``: what new answers are sealed to.

    Newest is the latest ``not_before``, then the later entry (overlay keys follow directory
    keys), the same order key provisioning uses to pick the private half.
    """
    return _newest_encryption_key(agency.keys, at=at, owner=f"agency {agency.id!r}")


def current_broker_encryption_key(registry: Registry, *, at: datetime) -> PublicKey:
    """The broker's newest ``enc`` key valid at ``at``: what results' ``broker_details`` are sealed to."""
    return _newest_encryption_key(registry.broker_keys(), at=at, owner="the broker")


# -- result details ---------------------------------------------------------------------------


def _public_view(transfer: results_pb2.OnwardTransfer) -> tuple[object, ...]:
    return (
        transfer.transfer_id,
        transfer.to_bank,
        transfer.to_bank_code,
        transfer.amount.currency,
        transfer.amount.minor_units,
        transfer.at.seconds,
        transfer.at.nanos,
    )


def _payout_view(payout: results_pb2.ReturnedPayout) -> tuple[object, ...]:
    return (payout.payout_index, payout.transfer_id, payout.amount.currency, payout.amount.minor_units)


def seal_result_details(
    result: results_pb2.Result,
    *,
    request_id: str,
    sender: str,
    recipient: str,
    requester_key: PublicKey | None,
    broker_key: PublicKey | None,
) -> results_pb2.Result:
    """A copy of ``result`` whose onward transfers and returned payouts are redacted, their full
    copy sealed alongside.

    ``sender`` is the agency that answers, ``recipient`` the requester. The full transfers and
    payouts go into ``sealed_details`` (to ``requester_key``); the transfers alone into
    ``broker_details`` (to ``broker_key``, which chases them and has no use for victims' accounts).
    Both copies have the same associated data (request id, sender, recipient); a key that is None
    leaves its copy out, but everything is redacted all the same. A result with neither is
    returned unchanged.
    """
    sealed = results_pb2.Result()
    sealed.CopyFrom(result)
    sealed.ClearField("sealed_details")
    sealed.ClearField("broker_details")
    if not result.onward_transfers and not result.returns:
        return sealed
    plaintext = results_pb2.ResultDetails(
        onward_transfers=result.onward_transfers, returns=result.returns
    ).SerializeToString()
    # A redacted transfer keeps how much went to which bank, when, and under which id: enough to
    # follow the case and to match the sealed copy; never the receiving account or the name.
    for transfer in sealed.onward_transfers:
        transfer.to_account = ""
        transfer.to_holder_name = ""
    # A redacted payout keeps its index, amount and transfer id; never the victim's account.
    for payout in sealed.returns:
        payout.ClearField("victim_account")
    binding = {"request_id": request_id, "sender": sender, "recipient": recipient}
    if requester_key is not None:
        sealed.sealed_details.CopyFrom(
            seal(plaintext, requester_key, content_type=RESULT_DETAILS_CONTENT_TYPE, **binding)
        )
    if broker_key is not None and result.onward_transfers:
        for_broker = results_pb2.ResultDetails(onward_transfers=result.onward_transfers).SerializeToString()
        sealed.broker_details.CopyFrom(
            seal(for_broker, broker_key, content_type=RESULT_DETAILS_CONTENT_TYPE, **binding)
        )
    return sealed


def open_details(
    result: results_pb2.Result,
    payload: results_pb2.EncryptedPayload,
    private_key: DecryptionKeys,
    *,
    request_id: str,
    sender: str,
    recipient: str,
) -> results_pb2.ResultDetails:
    """Open one sealed copy (``payload``) of ``result``'s details, from ``sender`` (who answered).

    Checked beyond the decryption: the content type, the contract's field rules, and that the
    transfers are those the signed result lists in redacted form (same ids, banks, amounts and
    times, in order). Every failure is a :class:`SealingError`.
    """
    if payload.content_type != RESULT_DETAILS_CONTENT_TYPE:
        raise SealingError(f"the sealed details are a {payload.content_type!r}, not ResultDetails")
    clear = open_sealed(payload, private_key, request_id=request_id, sender=sender, recipient=recipient)
    try:
        details = parse_and_validate(results_pb2.ResultDetails, clear, prefix="result_details.")
    except InvalidMessageError as exc:
        fields = ", ".join(v.field for v in exc.violations)
        raise SealingError(f"the sealed details break the contract ({fields})") from exc
    listed = [_public_view(t) for t in result.onward_transfers]
    if [_public_view(t) for t in details.onward_transfers] != listed:
        raise SealingError("the sealed details do not match the onward transfers the result lists")
    if details.returns and [_payout_view(p) for p in details.returns] != [
        _payout_view(p) for p in result.returns
    ]:
        raise SealingError("the sealed details do not match the payouts the result lists")
    return details
