"""The event loop the long-running roles (broker, adapter, agencies, up, demo) run on.

uvloop where it is installed (the default install on Linux and macOS): asyncio's own loop spends
a quarter of these processes' CPU in its callback and task machinery (py-spy, ``make bench``),
which libuv does in C; a gRPC round trip measured 580 us on uvloop against 700 us on asyncio's
loop on this machine. Elsewhere (Windows, or a minimal install) asyncio's loop, which behaves
the same, only slower.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["run"]

_T = TypeVar("_T")


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on the fastest loop available."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
