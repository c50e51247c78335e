"""What a failed call says about itself: the gRPC status and its google.rpc details, parsed.

The broker sends ``google.rpc.ErrorInfo`` (the stable ``reason``), ``BadRequest``,
``PreconditionFailure`` and ``RetryInfo`` in the ``grpc-status-details-bin`` trailer; any client
(the CLI, an agency's own tools, the adapters' tests) reads them with :func:`error_details`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no py.typed

__all__ = ["ErrorDetails", "error_details"]

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class ErrorDetails:
    """What a failed call says about itself, read from its status and google.rpc details."""

    code: grpc.StatusCode
    """The gRPC status code."""
    message: str
    """The status message, for people."""
    reason: str | None
    """``ErrorInfo.reason``: the stable machine-readable code (``EXPIRED_TOKEN``), if sent."""
    field_violations: tuple[tuple[str, str], ...]
    """``BadRequest`` violations as ``(field, description)`` pairs."""
    precondition_subjects: tuple[str, ...]
    """``PreconditionFailure`` subjects: what could not be routed."""
    retry_delay: timedelta | None = None
    """``RetryInfo.retry_delay``: present when retrying may succeed."""


def _details_of(trailing: Any) -> status_pb2.Status | None:
    for key, value in trailing or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def error_details(exc: grpc.aio.AioRpcError) -> ErrorDetails:
    """Parse a failed call's status and details (also works on a sync ``grpc.RpcError`` call).

    Details are optional: a status from a proxy or from grpc itself (deadline, handshake)
    has none, and then ``reason`` is ``None`` and the tuples are empty.
    """
    reason: str | None = None
    violations: list[tuple[str, str]] = []
    subjects: list[str] = []
    retry_delay: timedelta | None = None
    status = _details_of(exc.trailing_metadata())
    for packed in status.details if status is not None else ():
        if packed.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            packed.Unpack(info)
            reason = info.reason
        elif packed.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            packed.Unpack(bad)
            violations.extend((v.field, v.description) for v in bad.field_violations)
        elif packed.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            packed.Unpack(failure)
            subjects.extend(v.subject for v in failure.violations)
        elif packed.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            packed.Unpack(retry)
            retry_delay = retry.retry_delay.ToTimedelta()
    return ErrorDetails(
        code=exc.code(),
        message=exc.details() or "",
        reason=reason,
        field_violations=tuple(violations),
        precondition_subjects=tuple(subjects),
        retry_delay=retry_delay,
    )
