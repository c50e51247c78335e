"""Shared fixtures: one real nats-server for the whole session, a client per test.

The server is shared, so tests that need a pristine JetStream (the GC_* streams, the
ledger) start their own :class:`EmbeddedNats`; tests on the shared one use unique names.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js.client import JetStreamContext

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol import NatsSettings, connect


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def nats_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[EmbeddedNats]:
    """A nats-server with JetStream on a free port and a temporary file store."""
    store = tmp_path_factory.mktemp("nats-store")
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=store)) as server:
        yield server


@pytest_asyncio.fixture(loop_scope="session")
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[Client]:
    """A client connected to the session's server, drained after the test."""
    client = await connect(
        NatsSettings(servers=(nats_server.url,), name="greenchannel-tests", initial_connect_timeout=5.0)
    )
    try:
        yield client
    finally:
        if not client.is_closed:
            await client.drain()


@pytest_asyncio.fixture(loop_scope="session")
async def js(nc: Client) -> JetStreamContext:
    """The JetStream context of :func:`nc`."""
    context: JetStreamContext = nc.jetstream()
    return context
