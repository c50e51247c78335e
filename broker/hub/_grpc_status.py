"""Hub errors as rich gRPC statuses (google.rpc error details); :mod:`broker.client` reads them back.

The server side translates every exception exactly once, in :func:`guard_unary` /
:func:`guard_stream`: protocol and NATS errors become :class:`~broker.hub.HubError`\\ s
(:func:`to_hub_error`), a HubError becomes a status code plus details (:func:`rpc_status`),
and anything unexpected becomes a bare ``INTERNAL`` whose traceback stays in the broker's log.

Details travel in the ``grpc-status-details-bin`` trailer as a ``google.rpc.Status``:

* ``google.rpc.ErrorInfo`` always: ``reason`` (the stable code), ``domain`` ``greenchannel.io``;
* ``google.rpc.BadRequest`` for :class:`~broker.hub.InvalidRequestError` (one violation per field);
* ``google.rpc.PreconditionFailure`` (type ``ROUTING``) for :class:`~broker.hub.UnroutableError`;
* ``google.rpc.RetryInfo`` for :class:`~broker.hub.UnavailableError` and :class:`~broker.hub.ConflictError`.

Clients read them with :func:`broker.client.error_details`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing
from datetime import timedelta
from types import MappingProxyType
from typing import Any, TypeVar

import grpc
import grpc.aio
import nats.errors
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2  # type: ignore[import-untyped]  # no py.typed
from grpc_status import rpc_status as _grpc_rpc_status

from broker.protocol import (
    FieldViolation,
    InvalidMessageError,
    NatsError,
    NatsServerError,
    VerificationError,
)

from ._errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConflictError,
    HubError,
    IllegalTransitionError,
    InvalidRequestError,
    NotFoundError,
    OverloadedError,
    PermissionDeniedError,
    PolicyError,
    UnavailableError,
    UnroutableError,
)
from ._refusals import CallFacts, RefusalSink, begin_call

__all__ = [
    "CODES",
    "ERROR_DOMAIN",
    "guard_stream",
    "guard_unary",
    "rpc_status",
    "status_code",
    "to_hub_error",
]

_log = structlog.get_logger(__name__)

ERROR_DOMAIN = "greenchannel.io"
"""``google.rpc.ErrorInfo.domain`` of every error the broker sends."""

CODES: Mapping[type[HubError], grpc.StatusCode] = MappingProxyType(
    {
        HubError: grpc.StatusCode.INTERNAL,
        AuthenticationError: grpc.StatusCode.UNAUTHENTICATED,
        PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
        InvalidRequestError: grpc.StatusCode.INVALID_ARGUMENT,
        UnroutableError: grpc.StatusCode.FAILED_PRECONDITION,
        IllegalTransitionError: grpc.StatusCode.FAILED_PRECONDITION,
        NotFoundError: grpc.StatusCode.NOT_FOUND,
        AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
        ConflictError: grpc.StatusCode.ABORTED,
        UnavailableError: grpc.StatusCode.UNAVAILABLE,
        OverloadedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
        PolicyError: grpc.StatusCode.INTERNAL,
    }
)
"""The status code of each hub error class (the tree in :mod:`broker.hub._errors`)."""

_INTERNAL_MESSAGE = "internal error"
# When to try again. A conflict clears as soon as the competing writer is done; NATS
# usually needs a leader election or a reconnect, which takes seconds.
_RETRY_AFTER: Mapping[type[HubError], timedelta] = MappingProxyType(
    {
        ConflictError: timedelta(milliseconds=200),
        UnavailableError: timedelta(seconds=1),
        OverloadedError: timedelta(milliseconds=250),
    }
)
# The details ride in one trailer; clients refuse metadata above 8 KiB by default (and then
# see only a bare INTERNAL), so a request that breaks every rule is reported in part.
_MAX_VIOLATIONS = 32
_MAX_TEXT = 512
_MAX_MESSAGE = 1024


def status_code(error: HubError) -> grpc.StatusCode:
    """The status code of ``error``: its class's entry in :data:`CODES`, else its nearest base's."""
    matches = [cls for cls in CODES if isinstance(error, cls)]
    # The most specific class wins: the one nearest in the error's MRO.
    return CODES[min(matches, key=type(error).__mro__.index)] if matches else grpc.StatusCode.INTERNAL


def to_hub_error(exc: BaseException, *, signature_field: str = "request.signature") -> HubError:
    """Translate any exception into a :class:`HubError`, once, at the gRPC boundary.

    ``signature_field`` names the field whose detached signature a
    :class:`~broker.protocol.VerificationError` is about, so the client learns which of its
    signatures failed. Errors that are not ours, and hub errors that are server faults (code
    ``INTERNAL``), are logged with their traceback and become a bare
    ``HubError("internal error")``: their text may carry internals and is never sent.
    """
    if isinstance(exc, HubError):
        if isinstance(exc, _InternalError) or status_code(exc) is not grpc.StatusCode.INTERNAL:
            return exc
        # A server fault (a broken policy file, say): its text names files and fields of the
        # broker's own configuration, so it is treated like any unexpected error.
        return _internal(exc)
    if isinstance(exc, InvalidMessageError):
        return InvalidRequestError(str(exc), exc.violations)
    if isinstance(exc, VerificationError):
        violation = FieldViolation(field=signature_field, rule=exc.reason, description=str(exc))
        return InvalidRequestError(
            f"{signature_field} did not verify: {exc}", (violation,), reason=exc.reason
        )
    if isinstance(exc, NatsError | NatsServerError | nats.errors.Error | TimeoutError):
        # The detail (stream names, server codes) helps the operator, not the caller.
        _log.warning("grpc.unavailable", error_type=type(exc).__name__, error=str(exc))
        return UnavailableError("the message bus did not answer; retry shortly")
    return _internal(exc)


class _InternalError(HubError):
    """What the client sees of a server fault; already logged, so translating it again is a no-op."""


def _internal(exc: BaseException) -> HubError:
    _log.error("grpc.internal_error", error_type=type(exc).__name__, exc_info=exc)
    return _InternalError(_INTERNAL_MESSAGE, reason="INTERNAL")


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(delta: timedelta) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromTimedelta(delta)
    return duration


def _retry_after(error: HubError) -> timedelta | None:
    own = getattr(error, "retry_after", None)  # an error that knows its own delay (a rate limit)
    if isinstance(own, timedelta):
        return own
    return next((delay for cls, delay in _RETRY_AFTER.items() if isinstance(error, cls)), None)


def rpc_status(error: HubError) -> grpc.Status:
    """The status to abort with: code from :data:`CODES`, ``str(error)`` as message, and details."""
    code = status_code(error)
    message = _truncate(str(error), _MAX_MESSAGE)
    retry_after = _retry_after(error)
    metadata = {"retryable": "true" if retry_after is not None else "false"}
    details = []
    if isinstance(error, InvalidRequestError):
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=_truncate(v.field, _MAX_TEXT),
                    description=_truncate(v.description, _MAX_TEXT),
                    reason=_truncate(v.rule, _MAX_TEXT),
                )
                for v in error.violations[:_MAX_VIOLATIONS]
            ]
        )
        if len(error.violations) > _MAX_VIOLATIONS:
            metadata["violations_omitted"] = str(len(error.violations) - _MAX_VIOLATIONS)
        details.append(_packed(bad))
    if isinstance(error, UnroutableError):
        metadata["subject"] = error.subject
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type="ROUTING", subject=error.subject, description=message
                )
            ]
        )
        details.append(_packed(failure))
    if retry_after is not None:
        details.append(_packed(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after))))
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN, metadata=metadata)
    status = status_pb2.Status(code=code.value[0], message=message, details=[_packed(info), *details])
    result: grpc.Status = _grpc_rpc_status.to_status(status)
    return result


# -- servicer decorators ------------------------------------------------------------------------

_Servicer = TypeVar("_Servicer")
_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


async def _abort(
    context: grpc.aio.ServicerContext, exc: Exception, *, servicer: object, method: str, facts: CallFacts
) -> None:
    error = to_hub_error(exc)
    # A servicer that carries a sink as ``refusals`` has every refusal audited (see _refusals).
    sink: RefusalSink | None = getattr(servicer, "refusals", None)
    if sink is not None:
        sink.refused(method=method, code=status_code(error), reason=error.reason, facts=facts)
    # AbortError is how grpc.aio ends the handler once the status is set; it must reach grpc.
    await context.abort_with_status(rpc_status(error))


def guard_unary(
    method: Callable[[_Servicer, _Request, grpc.aio.ServicerContext], Awaitable[_Response]],
) -> Callable[[_Servicer, _Request, grpc.aio.ServicerContext], Awaitable[_Response]]:
    """Decorate a unary-unary ``async def`` servicer method: every error leaves as a rich status.

    A servicer with a ``refusals`` attribute (a :class:`~broker.hub._refusals.RefusalSink`) has
    every refused call reported to it before the status goes out.

    ``context.abort`` raised inside the method (grpc.aio's ``AbortError``) and cancellation
    pass through untouched; grpc.aio would otherwise send an unexpected exception's text to
    the client as ``UNKNOWN``.
    """

    @functools.wraps(method)
    async def guarded(self: _Servicer, request: _Request, context: grpc.aio.ServicerContext) -> _Response:
        facts = begin_call()
        try:
            return await method(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the boundary: everything else becomes a status
            failure = exc
        # Outside the except block, so the AbortError does not carry the failure as __context__.
        await _abort(context, failure, servicer=self, method=method.__name__, facts=facts)
        raise AssertionError("abort_with_status returned")  # pragma: no cover - it always raises

    return guarded


def guard_stream(
    method: Callable[[_Servicer, _Request, grpc.aio.ServicerContext], AsyncIterator[_Response]],
) -> Callable[[_Servicer, _Request, grpc.aio.ServicerContext], AsyncIterator[_Response]]:
    """Decorate a unary-stream servicer method written as an async generator; as :func:`guard_unary`.

    Messages yielded before a failure are delivered; the failure then ends the stream as a status.
    """

    @functools.wraps(method)
    async def guarded(
        self: _Servicer, request: _Request, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[_Response]:
        failure: Exception | None = None
        facts = begin_call()
        try:
            # aclosing: when grpc stops iterating (client gone), the method's own cleanup runs now.
            async with aclosing(method(self, request, context)) as responses:  # type: ignore[type-var]
                async for response in responses:
                    yield response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # the boundary: everything else becomes a status
            failure = exc
        if failure is not None:
            await _abort(context, failure, servicer=self, method=method.__name__, facts=facts)

    return guarded
