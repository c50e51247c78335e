"""Errors of the broker's hub. Each maps to one gRPC status code, at the gRPC boundary only.

The tree::

    HubError
    ├── AuthenticationError     UNAUTHENTICATED     no, bad, expired or replayed token; unknown agency
    ├── PermissionDeniedError   PERMISSION_DENIED   policy forbids it, or not the caller's request
    ├── InvalidRequestError     INVALID_ARGUMENT    field rules or body signature failed; lists violations
    ├── UnroutableError         FAILED_PRECONDITION no recipient can be resolved for the request
    ├── IllegalTransitionError  FAILED_PRECONDITION the lifecycle does not allow this step now
    ├── NotFoundError           NOT_FOUND           no such request
    ├── AlreadyExistsError      ALREADY_EXISTS      the idempotency key is bound to another request
    ├── ConflictError           ABORTED             concurrent updates kept winning; the caller may retry
    ├── UnavailableError        UNAVAILABLE         NATS / JetStream did not answer; the caller may retry
    ├── OverloadedError         RESOURCE_EXHAUSTED  too many submissions in hand; retry after RetryInfo
    └── PolicyError             INTERNAL            a policy file is invalid; names the file and the field

``reason`` is a stable machine-readable code sent as google.rpc.ErrorInfo.reason.
"""

from __future__ import annotations

from broker.protocol import FieldViolation

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "ConflictError",
    "HubError",
    "IllegalTransitionError",
    "InvalidRequestError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PolicyError",
    "UnavailableError",
    "UnroutableError",
]


class HubError(Exception):
    """Root of the hub's errors."""

    reason: str = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class AuthenticationError(HubError):
    reason = "UNAUTHENTICATED"


class PermissionDeniedError(HubError):
    reason = "PERMISSION_DENIED"


class InvalidRequestError(HubError):
    reason = "INVALID_REQUEST"

    def __init__(
        self, message: str, violations: tuple[FieldViolation, ...] = (), *, reason: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.violations = violations


class UnroutableError(HubError):
    reason = "UNROUTABLE"

    def __init__(self, message: str, *, subject: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        #: What could not be routed, for google.rpc.PreconditionFailure (e.g. "stop_payment.account").
        self.subject = subject


class IllegalTransitionError(HubError):
    reason = "ILLEGAL_TRANSITION"


class NotFoundError(HubError):
    reason = "NOT_FOUND"


class AlreadyExistsError(HubError):
    """What the call would create exists already, and differs from what the call carries."""

    reason = "ALREADY_EXISTS"


class ConflictError(HubError):
    reason = "CONFLICT"


class UnavailableError(HubError):
    reason = "UNAVAILABLE"


class OverloadedError(HubError):
    """Too much in hand right now; the caller should retry after the RetryInfo delay."""

    reason = "OVERLOADED"


class PolicyError(HubError):
    """A policy file is invalid. The message names the file and the field.

    Raised while loading configuration, before anything is served; it reaches a gRPC boundary
    only as a server fault.
    """

    reason = "INVALID_POLICY"

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        where = ", ".join(part for part in (file, f"field {field!r}" if field else None) if part)
        super().__init__(f"{where}: {message}" if where else message)
