"""Errors of the adapter runtime.

The tree::

    AdapterError                     root of everything the adapters raise
    ├── AdapterConfigError           the adapter cannot run as configured (identity, key, kind)
    ├── UnsupportedRequestError      the agency's kind does not handle this request type
    ├── IdempotencyConflictError     a request id came back with another body than the one recorded
    └── AgencyCallError              the agency system's gRPC call failed; ``code`` is the gRPC status name
        └── AgencyUnavailableError   a transient failure (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED)

gRPC errors are translated into these once, in :mod:`adapters._backends`. Messages never hold
what the agency system said in its status details: those may describe a customer.
"""

from __future__ import annotations

__all__ = [
    "AdapterConfigError",
    "AdapterError",
    "AgencyCallError",
    "AgencyUnavailableError",
    "IdempotencyConflictError",
    "UnsupportedRequestError",
]


class AdapterError(Exception):
    """Root of every error raised by :mod:`adapters`."""


class AdapterConfigError(AdapterError):
    """The adapter cannot run as configured: unknown agency, foreign signing key, a kind without a service."""


class UnsupportedRequestError(AdapterError):
    """The agency's kind has no service call for this request type; nothing was called."""


class IdempotencyConflictError(AdapterError):
    """A request id was recorded with another body digest: the same id cannot mean two orders."""


class AgencyCallError(AdapterError):
    """The agency system answered a call with a gRPC error, or did not answer at all."""

    def __init__(self, message: str, *, code: str) -> None:
        self.code = code
        super().__init__(message)


class AgencyUnavailableError(AgencyCallError):
    """A transient failure: worth retrying with the same request id (agency calls are idempotent)."""
