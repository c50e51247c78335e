"""Requests that are not even the message they claim to be get INVALID_ARGUMENT, not UNKNOWN.

grpc decodes a request with the method's deserializer before any servicer code runs; bytes that
do not parse as the request message make grpc answer ``UNKNOWN "Unexpected DecodeError"`` with
no details. This interceptor gives every method a deserializer that keeps such bytes as
:class:`Undecodable`, and a behaviour that answers them like any other bad input: a rich
INVALID_ARGUMENT status with ``ErrorInfo(reason=MALFORMED_MESSAGE)``. Nothing has been read,
stored or published by then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from ._errors import InvalidRequestError
from ._grpc_status import rpc_status
from ._refusals import CallFacts, RefusalSink

__all__ = ["DecodeGuard", "Undecodable"]


class Undecodable:
    """What the deserializer returns for bytes that are not the request message."""

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error


def _refusal(request: Undecodable) -> grpc.Status:
    return rpc_status(
        InvalidRequestError(
            f"the request is not a valid protobuf message of this method's type: {request.error}",
            reason="MALFORMED_MESSAGE",
        )
    )


def _tolerant(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return Undecodable(type(exc).__name__)

    return decode


def _unary(behaviour: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], audit: _Audit) -> Any:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            audit()
            await context.abort_with_status(_refusal(request))
        return await behaviour(request, context)

    return guarded


def _streaming(
    behaviour: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], audit: _Audit
) -> Any:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        if isinstance(request, Undecodable):
            audit()
            await context.abort_with_status(_refusal(request))
        async for response in behaviour(request, context):
            yield response

    return guarded


_Audit = Callable[[], None]


class DecodeGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc ships no stubs
    """Wraps unary-request methods (all GreenChannel has); others pass through untouched.

    With ``refusals``, every undecodable request is reported there (its caller is not known yet).
    """

    def __init__(self, refusals: RefusalSink | None = None) -> None:
        self._refusals = refusals
        # The wrapped handler of each method, built once: grpc hands back the same handler object
        # for a method on every call, so wrapping it anew per call only cost time.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def _audit(self, method: str) -> _Audit:
        name = method.rsplit("/", 1)[-1]

        def audit() -> None:
            if self._refusals is not None:
                self._refusals.refused(
                    method=name,
                    code=grpc.StatusCode.INVALID_ARGUMENT,
                    reason="MALFORMED_MESSAGE",
                    facts=CallFacts(),
                )

        return audit

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_streaming:
            return handler
        method = handler_call_details.method
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        decode = _tolerant(handler.request_deserializer)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler.unary_unary, self._audit(method)),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _streaming(handler.unary_stream, self._audit(method)),
                request_deserializer=decode,
                response_serializer=handler.response_serializer,
            )
        return handler
