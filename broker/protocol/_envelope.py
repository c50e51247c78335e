"""Signed requests, notarized envelopes and signed lifecycle events.

Three signatures, each over bytes that travel unchanged (protobuf serialization is not
canonical, so nothing is re-encoded before it is verified):

1. the sender signs the serialized ``Request`` (``SignedMessage``);
2. the broker notarizes it: it signs a serialized ``EnvelopeHeader`` that holds the id, the
   resolved recipient, the deadlines, its trusted receive time and the digests of the body and of
   the sender's signature;
3. each adapter signs the ``LifecycleEvent`` s it reports back.

The sender's signature is checked at the notarized receive time, not at delivery: a message that
waited in an inbox while a bank was offline is still the message the broker accepted.

A request body is personal data (account numbers, names, phone numbers), so the broker publishes
it sealed to the recipient (:func:`seal_for_recipient`): ``sealed_body`` instead of ``body``.
Digests and signatures stay over the clear bytes, so sealing changes none of them; the recipient
opens the body (:func:`unseal_envelope`) and verifies exactly what it would have verified in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta

from google.protobuf.message import DecodeError
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, requests_pb2

from ._clock import Clock, ManualClock
from ._errors import (
    DigestMismatchError,
    MalformedSignatureError,
    SealingError,
    VerificationError,
    WrongAudienceError,
)
from ._ids import new_uuid7
from ._keys import PublicKey, SigningKey
from ._registry import BROKER_ID
from ._sealing import REQUEST_CONTENT_TYPE, DecryptionKeys, open_sealed, seal
from ._signing import Claims, KeyStore, body_digest, sign_detached, verify_detached
from ._timestamps import to_timestamp
from ._validation import decode_message, parse_and_validate, validate_message

__all__ = [
    "APPEAL_RULING_TYPE",
    "BROKER_ID",
    "BUS_AUDIENCE",
    "FRAUD_REPORT_FEEDBACK_TYPE",
    "MARK_DECISION_TYPE",
    "RISK_MARK_TYPE",
    "RISK_UNMARK_TYPE",
    "OpenedEnvelope",
    "SealedBodyError",
    "VerifiedRequest",
    "notarize",
    "open_envelope",
    "request_type_of",
    "seal_for_recipient",
    "sign_event",
    "sign_message",
    "sign_request",
    "type_name",
    "unseal_envelope",
    "verify_event",
    "verify_request",
]

BUS_AUDIENCE = BROKER_ID
"""Audience a sender signs for when it leaves the recipient to the bus's routing."""

EVENT_TYPE = "EVENT"
NOTARIZATION_TYPE = "NOTARIZATION"
CANCELLATION_TYPE = "CANCELLATION"
APPEAL_RULING_TYPE = "APPEAL_RULING"
FRAUD_REPORT_FEEDBACK_TYPE = "FRAUD_REPORT_FEEDBACK"
RISK_MARK_TYPE = "RISK_MARK"
MARK_DECISION_TYPE = "MARK_DECISION"
RISK_UNMARK_TYPE = "RISK_UNMARK"

# A notarization must stay verifiable for as long as the request can matter: a freeze lasts six
# months and can be renewed, so a year with margin.
_NOTARIZATION_TTL = timedelta(days=400)

_BODY_TYPES: dict[str, common_pb2.RequestType.ValueType] = {
    "stop_payment": common_pb2.REQUEST_TYPE_STOP_PAYMENT,
    "freeze": common_pb2.REQUEST_TYPE_FREEZE,
    "release": common_pb2.REQUEST_TYPE_RELEASE,
    "extend": common_pb2.REQUEST_TYPE_EXTEND,
    "number_block": common_pb2.REQUEST_TYPE_NUMBER_BLOCK,
    "account_block": common_pb2.REQUEST_TYPE_ACCOUNT_BLOCK,
    "data_request": common_pb2.REQUEST_TYPE_DATA_REQUEST,
    "assistance": common_pb2.REQUEST_TYPE_ASSISTANCE,
    "warning": common_pb2.REQUEST_TYPE_WARNING,
    "fraud_report": common_pb2.REQUEST_TYPE_FRAUD_REPORT,
    "return_funds": common_pb2.REQUEST_TYPE_RETURN_FUNDS,
    "appeal": common_pb2.REQUEST_TYPE_APPEAL,
    "follow_up": common_pb2.REQUEST_TYPE_FOLLOW_UP,
    "linkage_notice": common_pb2.REQUEST_TYPE_LINKAGE_NOTICE,
    "dissuasion": common_pb2.REQUEST_TYPE_DISSUASION,
}


def request_type_of(request: requests_pb2.Request) -> common_pb2.RequestType.ValueType:
    body = request.WhichOneof("body")
    if body is None:
        return common_pb2.REQUEST_TYPE_UNSPECIFIED
    return _BODY_TYPES[body]


def type_name(request_type: common_pb2.RequestType.ValueType) -> str:
    """``STOP_PAYMENT`` for REQUEST_TYPE_STOP_PAYMENT: the ``gct`` claim of a request signature."""
    return common_pb2.RequestType.Name(request_type).removeprefix("REQUEST_TYPE_")


def sign_message(
    payload: bytes,
    *,
    key: SigningKey,
    issuer: str,
    audience: str,
    message_type: str,
    clock: Clock,
    jti: str | None = None,
    ttl: timedelta = timedelta(minutes=10),
) -> envelope_pb2.SignedMessage:
    signature = sign_detached(
        payload,
        key=key,
        iss=issuer,
        aud=audience,
        jti=jti or new_uuid7(clock),
        message_type=message_type,
        clock=clock,
        ttl=ttl,
    )
    return envelope_pb2.SignedMessage(payload=payload, signature=signature)


def sign_request(
    request: requests_pb2.Request, *, key: SigningKey, sender: str, clock: Clock
) -> envelope_pb2.SignedMessage:
    """Serialize and sign a request as ``sender``, for its recipient or, if unnamed, for the bus."""
    return sign_message(
        request.SerializeToString(),
        key=key,
        issuer=sender,
        audience=request.recipient or BUS_AUDIENCE,
        message_type=type_name(request_type_of(request)),
        clock=clock,
    )


@dataclass(frozen=True, kw_only=True)
class VerifiedRequest:
    """A request whose sender signature and field rules have been checked."""

    request: requests_pb2.Request
    """The parsed request."""
    signed: envelope_pb2.SignedMessage
    """The bytes and signature exactly as received."""
    claims: Claims
    """What the sender's signature asserts."""

    @property
    def request_type(self) -> common_pb2.RequestType.ValueType:
        return request_type_of(self.request)


def verify_request(
    signed: envelope_pb2.SignedMessage,
    *,
    keys: KeyStore,
    sender: str,
    clock: Clock,
) -> VerifiedRequest:
    """Check a submitted request: the signature of ``sender`` first, then the contract's field rules.

    The signature is checked before the field rules so that nothing an unauthenticated party sent
    is examined further than needed to find out who it claims to be addressed to.
    """
    # The audience claim depends on the body (named recipient or the bus): decode, verify, validate.
    request = decode_message(requests_pb2.Request, signed.payload, prefix="request.")
    claims = verify_detached(
        signed.signature,
        signed.payload,
        keys=keys,
        audience=request.recipient or BUS_AUDIENCE,
        clock=clock,
        expected_issuer=sender,
        expected_type=type_name(request_type_of(request)),
    )
    validate_message(request, prefix="request.")
    return VerifiedRequest(request=request, signed=signed, claims=claims)


def notarize(
    verified: VerifiedRequest,
    *,
    request_id: str,
    recipient: str,
    deadlines: envelope_pb2.Deadlines,
    broker_key: SigningKey,
    clock: Clock,
) -> envelope_pb2.Envelope:
    """Countersign an accepted request with the broker key and a trusted receive time."""
    request = verified.request
    header = envelope_pb2.EnvelopeHeader(
        id=request_id,
        type=verified.request_type,
        sender=verified.claims.iss,
        recipient=recipient,
        case_ref=request.case_ref,
        parent_id=request.parent_id,
        hop=request.hop,
        priority=request.priority,
        issued_at=request.issued_at,
        received_at=to_timestamp(clock.now()),
        deadlines=deadlines,
        body_digest=body_digest(verified.signed.payload),
        body_signature_digest=body_digest(verified.signed.signature.encode("ascii")),
    )
    header_bytes = header.SerializeToString()
    notary_signature = sign_detached(
        header_bytes,
        key=broker_key,
        iss=BROKER_ID,
        aud=recipient,
        jti=request_id,
        message_type=NOTARIZATION_TYPE,
        clock=clock,
        ttl=_NOTARIZATION_TTL,
    )
    return envelope_pb2.Envelope(
        header=header_bytes,
        notary_signature=notary_signature,
        body=verified.signed.payload,
        body_signature=verified.signed.signature,
    )


@dataclass(frozen=True, kw_only=True)
class OpenedEnvelope:
    """An envelope whose notarization and sender signature have both been verified."""

    header: envelope_pb2.EnvelopeHeader
    """What the broker notarized."""
    request: requests_pb2.Request
    """What the sender signed."""
    sender_claims: Claims
    """The sender's signature claims."""
    notary_claims: Claims
    """The broker's signature claims."""


class SealedBodyError(VerificationError):
    """A sealed request body does not open: not sealed to this recipient's key, tampered, rebound to
    another request or pair, or the recipient holds no key. Treated like a bad signature."""

    reason = "SEALED_BODY"


def seal_for_recipient(envelope: envelope_pb2.Envelope, recipient_key: PublicKey) -> envelope_pb2.Envelope:
    """The envelope with its body sealed to ``recipient_key`` (the recipient's current ``enc`` key).

    The associated data binds the notarized id, sender and recipient; a fresh ephemeral key each
    time, so a re-publish of the same request carries other ciphertext (give it the same
    ``Nats-Msg-Id``). An envelope already sealed is returned as it is.
    """
    if envelope.HasField("sealed_body"):
        return envelope
    header = envelope_pb2.EnvelopeHeader.FromString(envelope.header)
    return envelope_pb2.Envelope(
        header=envelope.header,
        notary_signature=envelope.notary_signature,
        body_signature=envelope.body_signature,
        sealed_body=seal(
            envelope.body,
            recipient_key,
            request_id=header.id,
            sender=header.sender,
            recipient=header.recipient,
            content_type=REQUEST_CONTENT_TYPE,
        ),
    )


def unseal_envelope(
    envelope: envelope_pb2.Envelope, keys: DecryptionKeys | None, *, recipient: str
) -> envelope_pb2.Envelope:
    """The envelope with its sealed body opened into ``body``; an unsealed one as it is.

    Only decrypts: :func:`open_envelope` then verifies everything, including the header whose id
    and sender the associated data was taken from (a forged header fails there, or here). Raises
    :class:`SealedBodyError` when the body does not open with ``keys`` (None: this party holds no
    decryption key), and when an envelope carries both a clear and a sealed body.
    """
    if not envelope.HasField("sealed_body"):
        return envelope
    if envelope.body:
        raise SealedBodyError("the envelope carries both a clear and a sealed body")
    sealed = envelope.sealed_body
    if sealed.content_type != REQUEST_CONTENT_TYPE:
        raise SealedBodyError(f"the sealed body is a {sealed.content_type!r}, not a Request")
    if keys is None:
        raise SealedBodyError(f"{recipient} holds no decryption key to open a sealed request body")
    header = envelope_pb2.EnvelopeHeader()
    try:
        header.ParseFromString(envelope.header)
    except DecodeError as exc:
        raise SealedBodyError("the envelope header does not decode") from exc
    try:
        body = open_sealed(sealed, keys, request_id=header.id, sender=header.sender, recipient=recipient)
    except SealingError as exc:
        raise SealedBodyError(f"the sealed body does not open: {exc}") from exc
    return envelope_pb2.Envelope(
        header=envelope.header,
        notary_signature=envelope.notary_signature,
        body=body,
        body_signature=envelope.body_signature,
    )


def open_envelope(
    envelope: envelope_pb2.Envelope,
    *,
    keys: KeyStore,
    recipient: str,
    clock: Clock,
    decrypt: DecryptionKeys | None = None,
) -> OpenedEnvelope:
    """Verify an envelope as its recipient: broker notarization, then sender signature, then fields.

    A sealed body is opened first with ``decrypt``, the recipient's X25519 key(s); without them a
    sealed envelope raises :class:`SealedBodyError`. An envelope in clear needs no key.
    """
    envelope = unseal_envelope(envelope, decrypt, recipient=recipient)
    notary_claims = verify_detached(
        envelope.notary_signature,
        envelope.header,
        keys=keys,
        audience=recipient,
        clock=clock,
        expected_issuer=BROKER_ID,
        expected_type=NOTARIZATION_TYPE,
        max_ttl=None,
    )
    header = parse_and_validate(envelope_pb2.EnvelopeHeader, envelope.header, prefix="header.")
    if header.recipient != recipient:
        raise WrongAudienceError(f"notarized for {header.recipient!r}, not {recipient!r}")
    if (
        body_digest(envelope.body) != header.body_digest
        # UTF-8, not ASCII: the notarized signature was ASCII, so it encodes alike, and a forged
        # one with other characters must be a digest mismatch, not a UnicodeEncodeError.
        or body_digest(envelope.body_signature.encode("utf-8")) != header.body_signature_digest
    ):
        raise DigestMismatchError("body or its signature differ from what the broker notarized")
    request = decode_message(requests_pb2.Request, envelope.body, prefix="request.")
    sender_claims = verify_detached(
        envelope.body_signature,
        envelope.body,
        keys=keys,
        audience=request.recipient or BUS_AUDIENCE,
        clock=ManualClock(header.received_at.ToDatetime(tzinfo=UTC)),
        expected_issuer=header.sender,
        expected_type=type_name(header.type),
    )
    validate_message(request, prefix="request.")
    if request_type_of(request) != header.type or (request.recipient and request.recipient != recipient):
        raise MalformedSignatureError("the notarized header does not describe the signed request")
    return OpenedEnvelope(
        header=header, request=request, sender_claims=sender_claims, notary_claims=notary_claims
    )


def sign_event(
    event: lifecycle_pb2.LifecycleEvent, *, key: SigningKey, clock: Clock
) -> envelope_pb2.SignedMessage:
    """Sign a lifecycle event as its actor, for the broker."""
    return sign_message(
        event.SerializeToString(),
        key=key,
        issuer=event.actor,
        audience=BROKER_ID,
        message_type=EVENT_TYPE,
        clock=clock,
        jti=event.event_id,
        ttl=timedelta(minutes=30),
    )


def verify_event(
    signed: envelope_pb2.SignedMessage, *, keys: KeyStore, clock: Clock
) -> tuple[lifecycle_pb2.LifecycleEvent, Claims]:
    """Verify an event: signed by the actor it names, for the broker, and valid by the contract."""
    event = decode_message(lifecycle_pb2.LifecycleEvent, signed.payload, prefix="event.")
    claims = verify_detached(
        signed.signature,
        signed.payload,
        keys=keys,
        audience=BROKER_ID,
        clock=clock,
        expected_issuer=event.actor,
        expected_type=EVENT_TYPE,
    )
    if claims.jti != event.event_id:
        raise MalformedSignatureError("event signature was made for another event")
    validate_message(event, prefix="event.")
    return event, claims
