"""A hostile client straight on NATS: a raw nats-py connection that keeps the server's refusals.

Shared by the permission tables of the single server and of the cluster.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client

from tests._wait import eventually

__all__ = ["SETTLE", "Hostile", "raw_connect", "violation"]

SETTLE = 0.2
"""Seconds a refused client waits for a stray delivery it must NOT get. An absence cannot be
polled for; the refusals it must get are waited for (:meth:`Hostile.refused`), not slept on."""


@dataclass
class Hostile:
    """A raw nats-py connection that records the server's asynchronous errors."""

    nc: Client
    errors: list[str] = field(default_factory=list)

    async def settle(self) -> None:
        await self.nc.flush(timeout=10)
        await asyncio.sleep(SETTLE)

    async def refused(self, *expected: str) -> None:
        """Wait until every one of ``expected`` is among the errors the server sent back."""

        def all_seen() -> bool:
            return all(any(text in error.lower() for error in self.errors) for text in expected)

        await eventually(all_seen, within=10.0, what=f"the refusals {expected} (got {self.errors})")


async def raw_connect(url: str, *, seed: bytes | None, inbox_prefix: str = "_INBOX") -> Hostile:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(
        url,
        nkeys_seed_str=seed.decode() if seed is not None else None,
        inbox_prefix=inbox_prefix,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        connect_timeout=5,
        error_cb=on_error,
    )
    return Hostile(nc, errors)


def violation(kind: str, subject: str) -> str:
    """The text of nats-py's error for a permissions violation (it lowercases the server's -ERR)."""
    return f'permissions violation for {kind} to "{subject}"'.lower()
