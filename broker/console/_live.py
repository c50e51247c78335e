"""Server-sent events for the Now page, fed by the broker's Watch.

Each browser connection gets the open list at once (``snapshot``), then one ``row`` event per
request that changed (its fresh status, read with Get), and the whole list again every
``refresh`` (holds lapse on the broker's clock without an event to this agency's Watch).

A Watch from now on cannot say when the broker has started following, so an event between the
first read of the list and that moment would be missed: the list is read once more ``settle``
after connecting, which covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import grpc
import structlog

from broker.client import BusClient

__all__ = ["event_stream", "sse"]

log = structlog.get_logger(__name__)

Rows = Callable[[], Awaitable[list[dict[str, Any]]]]
Row = Callable[[str], Awaitable[dict[str, Any] | None]]


def sse(event: str, data: object) -> bytes:
    """One server-sent event (JSON data on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _follow(bus: BusClient, changed: asyncio.Queue[str]) -> None:
    try:
        async for update in bus.watch(only_new=True):
            changed.put_nowait(update.request_id)
    except grpc.aio.AioRpcError as exc:
        log.warning("console.watch_failed", code=exc.code().name)


async def event_stream(
    bus: BusClient, *, rows: Rows, row: Row, refresh: timedelta, settle: timedelta = timedelta(seconds=2)
) -> AsyncIterator[bytes]:
    """The Now page's event stream until the browser goes away."""
    changed: asyncio.Queue[str] = asyncio.Queue()
    watcher = asyncio.create_task(_follow(bus, changed))
    loop = asyncio.get_running_loop()
    try:
        yield sse("snapshot", await rows())
        next_read = loop.time() + min(settle, refresh).total_seconds()
        while True:
            try:
                request_id = await asyncio.wait_for(changed.get(), max(0.0, next_read - loop.time()))
            except TimeoutError:
                yield sse("snapshot", await rows())
                next_read = loop.time() + refresh.total_seconds()
                continue
            pending = {request_id}
            while not changed.empty():
                pending.add(changed.get_nowait())
            for one in sorted(pending):
                current = await row(one)
                if current is not None:
                    yield sse("row", current)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
