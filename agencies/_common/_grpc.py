"""The one place agency servicers turn core calls into gRPC answers.

Cores are synchronous (SQLite); they run on worker threads so a slow disk never stalls the event
loop that also answers health checks. Orders the core refuses are ordinary responses carrying a
REJECTED result; only failures of the system itself become gRPC errors, so the adapter can tell
"the bank said no" (sign and publish) from "the bank is not working" (retry later).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
import structlog
from google.protobuf.message import Message

from ._errors import StorageError

__all__ = ["answer"]

_log = structlog.get_logger(__name__)
Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp", bound=Message)


async def answer(call: Callable[[Req], Resp], request: Req, context: Any, *, method: str) -> Resp:
    """Run ``call(request)`` off the event loop; system failures abort with UNAVAILABLE / INTERNAL."""
    try:
        return await asyncio.to_thread(call, request)
    except StorageError as exc:
        # Nothing was committed (the transaction rolled back): a retry executes the order anew.
        _log.warning("agency.storage_failed", method=method, error=type(exc.__cause__ or exc).__name__)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "agency storage unavailable; retry")
        raise  # unreachable: abort raises
    except Exception as exc:
        # Type and place only: an exception message or a traceback's locals might quote the order.
        _log.error("agency.order_crashed", method=method, error=type(exc).__name__, at=_where(exc))
        await context.abort(grpc.StatusCode.INTERNAL, "agency system error")
        raise


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return ""
    last = frames[-1]
    return f"{last.filename}:{last.lineno}"
