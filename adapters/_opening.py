"""Opening an inbox message: the sealed body with the agency's X25519 key, then verification.

An inbox message either opens (broker notarization, sender signature and the contract's field
rules all check out) or is refused with a reason; a refused one is never executed. Nothing of the
body ever reaches a log: refusals name key ids and what failed, never content.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import structlog
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.message import DecodeError
from greenchannel.v1 import envelope_pb2, results_pb2
from nats.aio.msg import Msg

from broker.protocol import (
    Clock,
    DecryptionKeys,
    InvalidMessageError,
    OpenedEnvelope,
    Registry,
    SealedBodyError,
    VerificationError,
    body_digest,
    open_envelope,
    unseal_envelope,
    validate_request_id,
)

__all__ = [
    "KeyRing",
    "Opened",
    "Refusal",
    "claimed_request_id",
    "key_ring",
    "open_inbox_message",
    "received_digest",
]

_log = structlog.get_logger(__name__)

KeyRing = tuple[x25519.X25519PrivateKey, ...]


@dataclass(frozen=True, kw_only=True)
class Opened:
    """A message that verified: the order, its request id and the digest of its clear body."""

    opened: OpenedEnvelope
    request_id: str
    digest: str


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A message that did not: why, and the envelope as far as it was read (None: not even that)."""

    envelope: envelope_pb2.Envelope | None
    reason: results_pb2.ReasonCode.ValueType
    error: str
    """Name of the error behind the refusal (never its text: that may quote the body)."""
    fields: tuple[str, ...] = ()
    """Fields that broke the contract's rules."""


def open_inbox_message(
    msg: Msg, *, agency_id: str, keys: KeyRing | None, registry: Registry, clock: Clock
) -> Opened | Refusal:
    """Unseal and verify ``msg`` for ``agency_id``."""
    try:
        envelope = envelope_pb2.Envelope.FromString(msg.data)
    except DecodeError:
        return Refusal(envelope=None, reason=results_pb2.REASON_CODE_INVALID_REQUEST, error="DecodeError")
    try:
        # From here on ``envelope`` is the clear one, so a refusal is bound to the opened body.
        envelope = unseal_envelope(envelope, keys, recipient=agency_id)
        opened = open_envelope(envelope, keys=registry, recipient=agency_id, clock=clock)
        request_id = validate_request_id(opened.header.id)
    except SealedBodyError as exc:
        # The message names key ids and what failed, never content.
        _log.warning("adapter.sealed_body_not_opened", detail=str(exc))
        return Refusal(
            envelope=envelope, reason=results_pb2.REASON_CODE_SIGNATURE_INVALID, error=type(exc).__name__
        )
    except VerificationError as exc:
        return Refusal(
            envelope=envelope, reason=results_pb2.REASON_CODE_SIGNATURE_INVALID, error=type(exc).__name__
        )
    except InvalidMessageError as exc:
        return Refusal(
            envelope=envelope,
            reason=results_pb2.REASON_CODE_INVALID_REQUEST,
            error=type(exc).__name__,
            fields=tuple(violation.field for violation in exc.violations),
        )
    except ValueError:
        return Refusal(envelope=envelope, reason=results_pb2.REASON_CODE_INVALID_REQUEST, error="ValueError")
    return Opened(opened=opened, request_id=request_id, digest=body_digest(envelope.body))


def key_ring(keys: DecryptionKeys | None) -> KeyRing | None:
    if keys is None:
        return None
    return (keys,) if isinstance(keys, x25519.X25519PrivateKey) else tuple(keys)


def received_digest(envelope: envelope_pb2.Envelope) -> str:
    """Digest of the body as received: the clear body, or (not opened) the sealed one.

    A sealed body that did not open cannot be the body the broker notarized as far as anyone can
    tell, so its refusal must not carry the notarized digest: the broker then records it as a
    forged copy instead of failing the genuine request.
    """
    if envelope.HasField("sealed_body"):
        return body_digest(envelope.sealed_body.SerializeToString())
    return body_digest(envelope.body)


def claimed_request_id(envelope: envelope_pb2.Envelope | None, msg: Msg) -> str | None:
    """The request id an unverified message claims: its (unverified) header's, else its Nats-Msg-Id."""
    candidates: list[str] = []
    if envelope is not None:
        header = envelope_pb2.EnvelopeHeader()
        with contextlib.suppress(DecodeError):
            header.ParseFromString(envelope.header)
            candidates.append(header.id)
    if msg.headers:
        candidates.append(msg.headers.get("Nats-Msg-Id", ""))
    for candidate in candidates:
        try:
            return validate_request_id(candidate)
        except ValueError:
            continue
    return None
