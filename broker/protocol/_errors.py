"""Errors of the protocol core.

The tree::

    ProtocolError
    ├── VerificationError            a signature or claim did not verify (never retried)
    │   ├── MalformedSignatureError  not a detached EdDSA JWS with b64=false / crit, or claims missing
    │   ├── UnknownKeyError          no key with that kid for the issuer
    │   ├── RevokedKeyError          the key was revoked at or before the signing time
    │   ├── KeyNotValidError         the signing time lies outside the key's validity window
    │   ├── BadSignatureError        the Ed25519 signature does not match header + body
    │   ├── DigestMismatchError      the body digest claim does not match the bytes that travelled
    │   ├── WrongAudienceError       the message was addressed to someone else
    │   ├── WrongIssuerError         signed by an agency other than the declared sender
    │   ├── ExpiredError             past `exp` (plus the allowed clock skew)
    │   ├── LifetimeTooLongError     `exp` lies further after `iat` than the verifier allows
    │   └── NotYetValidError         `iat` lies in the future beyond the allowed clock skew
    ├── InvalidMessageError          a message breaks the contract's field rules; lists every violation
    ├── KeyFileError                 a key file is missing, unreadable or not an Ed25519 / X25519 key
    ├── RegistryError                the agency directory is wrong; names the file and the field
    │   └── UnknownAgencyError       no agency with that id
    ├── NatsServerError              the embedded nats-server could not be started or stopped
    ├── NatsError                    a NATS / JetStream operation failed (nats-py error, translated)
    └── SealingError                 a data answer could not be sealed, or does not open (wrong key, tampered)

Library exceptions (cryptography, pyjwt, nats) are translated into these once, at the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BadSignatureError",
    "DigestMismatchError",
    "ExpiredError",
    "FieldViolation",
    "InvalidMessageError",
    "KeyFileError",
    "KeyNotValidError",
    "LifetimeTooLongError",
    "MalformedSignatureError",
    "NatsError",
    "NatsServerError",
    "NotYetValidError",
    "ProtocolError",
    "RegistryError",
    "RevokedKeyError",
    "SealingError",
    "UnknownAgencyError",
    "UnknownKeyError",
    "VerificationError",
    "WrongAudienceError",
    "WrongIssuerError",
]


class ProtocolError(Exception):
    """Root of every error raised by :mod:`broker.protocol`."""


class VerificationError(ProtocolError):
    """A signed message or token did not verify. Never retried: the bytes will not get better."""

    #: Stable machine-readable reason, used in gRPC error details and signed rejection events.
    reason: str = "VERIFICATION_FAILED"


class MalformedSignatureError(VerificationError):
    reason = "MALFORMED_SIGNATURE"


class UnknownKeyError(VerificationError):
    reason = "UNKNOWN_KEY"


class RevokedKeyError(VerificationError):
    reason = "REVOKED_KEY"


class KeyNotValidError(VerificationError):
    reason = "KEY_NOT_VALID"


class BadSignatureError(VerificationError):
    reason = "BAD_SIGNATURE"


class DigestMismatchError(VerificationError):
    reason = "DIGEST_MISMATCH"


class WrongAudienceError(VerificationError):
    reason = "WRONG_AUDIENCE"


class WrongIssuerError(VerificationError):
    reason = "WRONG_ISSUER"


class ExpiredError(VerificationError):
    reason = "EXPIRED"


class LifetimeTooLongError(VerificationError):
    """``exp - iat`` exceeds the verifier's limit.

    Separate from :class:`MalformedSignatureError` because the token is well formed: the
    signer asked for more lifetime than policy grants (bearer tokens: 5 minutes), and the cap
    is what bounds how long a revoked key's back-dated signatures can keep working.
    """

    reason = "LIFETIME_TOO_LONG"


class NotYetValidError(VerificationError):
    reason = "NOT_YET_VALID"


class InvalidMessageError(ProtocolError):
    """A message breaks the field rules declared in the contract (protovalidate annotations)."""

    def __init__(self, message: str, violations: tuple[FieldViolation, ...]) -> None:
        self.violations = violations
        listed = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"{message}: {listed}" if listed else message)


@dataclass(frozen=True, kw_only=True)
class FieldViolation:
    """One broken field rule, in the shape of google.rpc.BadRequest.FieldViolation."""

    field: str
    """Dotted path of the field, e.g. ``stop_payment.amount``."""
    rule: str
    """The rule id, e.g. ``int64.gt`` or ``amount.positive``."""
    description: str
    """What is wrong, for people."""


class KeyFileError(ProtocolError):
    """A key file is missing, unreadable, or holds the wrong kind of key."""


class RegistryError(ProtocolError):
    """The agency directory is invalid. The message names the file and the field."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        where = ", ".join(part for part in (file, f"field {field!r}" if field else None) if part)
        super().__init__(f"{where}: {message}" if where else message)


class UnknownAgencyError(RegistryError):
    """No agency with the given id is registered."""


class NatsServerError(ProtocolError):
    """The embedded nats-server could not be started, did not become ready, or did not stop."""


class NatsError(ProtocolError):
    """A NATS or JetStream operation failed. ``code`` / ``err_code`` are the server's, when it answered."""

    def __init__(self, message: str, *, code: int | None = None, err_code: int | None = None) -> None:
        self.code = code
        self.err_code = err_code
        super().__init__(message)


class SealingError(ProtocolError):
    """A payload could not be sealed to a recipient, or does not open.

    Beyond naming the key a payload was sealed to (public in the payload anyway), opening fails
    alike for a wrong key, tampered bytes and associated data bound to another request, sender,
    recipient or content type: telling those apart would only help a forger.
    """
