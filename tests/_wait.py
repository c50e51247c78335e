"""Bounded polling for tests: wait for a condition, never for a fixed time.

A fixed sleep is a bet on how fast a busy machine is; a poll returns as soon as the condition
holds and fails only after a bound generous enough that a pass never depends on it.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 30.0,
    every: float = 0.05,
    what: str = "condition",
) -> None:
    """Return once ``predicate()`` (plain or async) is true; fail with ``what`` after ``within`` seconds.

    The bound only limits how long a failure takes to show: a pass returns at the first true answer.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = predicate()
        if inspect.isawaitable(answer):
            answer = await answer
        if answer:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"{what} not met within {within} s")
        await asyncio.sleep(every)
