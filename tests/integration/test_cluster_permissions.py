"""The per-agency NATS accounts on a three-node JetStream cluster, as on the single server.

Every node runs the same accounts (JetStream in the broker's account, one account per agency,
each importing only its own inbox and outputs). An agency connected to any node is refused when
it forges what is not its own, and nothing changes in the replicated streams; what is its own
(its consumer's info, an event it signs for itself) works through whichever node it reached.
``test_nats_permissions`` has the full hostile table against one server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats.errors
import nats.js.errors
import pytest
import pytest_asyncio

from broker.embedded import EmbeddedNatsConfig
from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    EVENTS_STREAM,
    INBOX_STREAM,
    agency_inbox_prefix,
    connect,
    ensure_inbox_consumers,
    ensure_streams,
    event_subject,
    inbox_consumer,
    inbox_subject,
    nats_authorization,
    nats_seed_path,
    nats_settings_for,
    stream_specs,
)
from tests._cluster import EmbeddedCluster, EmbeddedClusterConfig
from tests.integration.hostile_nats import Hostile, raw_connect, violation

pytestmark = pytest.mark.integration

ABC = "bank-abc"
ICBC = "bank-icbc"
REQUEST_ID = "0190c7c2-7a80-7000-8000-00000000beef"


@dataclass(frozen=True)
class Secured:
    cluster: EmbeddedCluster
    keys: Path

    async def as_agency(self, agency: str, node: int) -> Hostile:
        """Connected to one node with the agency's own genuine seed and inbox prefix."""
        seed = nats_seed_path(self.keys, agency).read_bytes().strip()
        return await raw_connect(self.cluster.urls[node], seed=seed, inbox_prefix=agency_inbox_prefix(agency))

    async def streams(self) -> dict[str, tuple[int, int]]:
        """Messages and last sequence of the inbox and events streams, read as the broker."""
        nc = await connect(
            nats_settings_for(self.cluster.url, state_dir=self.keys, agency=None, name="snapshot")
        )
        try:
            js = nc.jetstream()
            found = {}
            for name in (INBOX_STREAM, EVENTS_STREAM):
                state = (await js.stream_info(name)).state
                found[name] = (state.messages, state.last_seq)
            return found
        finally:
            await nc.drain()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def secured(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    root = tmp_path_factory.mktemp("cluster-permissions")
    keys = root / "keys"
    authorization = nats_authorization(keys, [ABC, ICBC])
    config = EmbeddedClusterConfig(
        store_dir=root / "nats", name="perm", node=EmbeddedNatsConfig(authorization=authorization)
    )
    async with EmbeddedCluster(config) as cluster:
        # What the broker does on start: R3 streams, then the inbox consumers (agencies may not).
        nc = await connect(nats_settings_for(cluster.url, state_dir=keys, agency=None, name="broker"))
        try:
            js = nc.jetstream(timeout=30.0)
            await ensure_streams(js, stream_specs(replicas=3))
            await ensure_inbox_consumers(js, [ABC, ICBC])
            # A genuine order waiting in ICBC's inbox: a forged pull or ack would have something to take.
            await js.publish(inbox_subject(ICBC, "green", "stop_payment"), b"genuine", timeout=30.0)
        finally:
            await nc.drain()
        await cluster.wait_current(timeout=60.0)
        yield Secured(cluster=cluster, keys=keys)


async def test_forged_publishes_are_refused_on_every_node(secured: Secured) -> None:
    forged = {
        "an event in another agency's name": event_subject(ICBC, REQUEST_ID),
        "an order into another agency's inbox": inbox_subject(ICBC, "green", "stop_payment"),
        "an order into its own inbox": inbox_subject(ABC, "green", "freeze"),
        "the request state": f"gc.status.{REQUEST_ID}.{ABC}.{ICBC}.{ABC}.CASE-0001",
        "a ledger record": "gc.ledger.intake",
    }
    pull = f"{AGENCY_JS_API_PREFIX}.CONSUMER.MSG.NEXT.{INBOX_STREAM}.{inbox_consumer(ICBC, 'green')}"
    before = await secured.streams()
    for node in range(len(secured.cluster.nodes)):
        hostile = await secured.as_agency(ABC, node)
        try:
            js = hostile.nc.jetstream()
            for subject in forged.values():
                # Refused: no PubAck ever comes, and the server says why.
                with pytest.raises(nats.errors.TimeoutError):
                    await js.publish(
                        subject, b"forged", timeout=0.5, headers={"Nats-Msg-Id": str(uuid.uuid4())}
                    )
            with pytest.raises(nats.errors.TimeoutError):
                await hostile.nc.request(pull, b'{"batch":1}', timeout=0.5)
            await hostile.settle()
            await hostile.refused(*(violation("publish", s) for s in (*forged.values(), pull)))
            assert hostile.nc.is_connected, "a refusal must not cost the agency its connection"
        finally:
            await hostile.nc.close()
    assert await secured.streams() == before


async def test_without_credentials_no_node_lets_anyone_in(secured: Secured) -> None:
    for url in secured.cluster.urls:
        with pytest.raises(nats.errors.Error, match=r"(?i)authorization violation"):
            await raw_connect(url, seed=None)


async def test_an_agency_reaches_what_is_its_own_through_any_node(secured: Secured) -> None:
    """The accounts' imports hold cluster-wide: its consumer's info, and an event it signs itself."""
    before = await secured.streams()
    for node in range(len(secured.cluster.nodes)):
        own = await secured.as_agency(ABC, node)
        try:
            js = own.nc.jetstream(prefix=AGENCY_JS_API_PREFIX)
            info = await js.consumer_info(INBOX_STREAM, inbox_consumer(ABC, "green"))
            assert info.config.filter_subject == f"gc.inbox.{ABC}.green.>"
            ack = await own.nc.jetstream().publish(
                event_subject(ABC, REQUEST_ID),
                b"own",
                timeout=30.0,
                headers={"Nats-Msg-Id": str(uuid.uuid4())},
            )
            assert ack.stream == EVENTS_STREAM
        finally:
            await own.nc.close()
        assert own.errors == []
    after = await secured.streams()
    assert after[INBOX_STREAM] == before[INBOX_STREAM]
    assert after[EVENTS_STREAM][0] == before[EVENTS_STREAM][0] + len(secured.cluster.nodes)


async def test_another_agencys_consumer_is_out_of_reach(secured: Secured) -> None:
    hostile = await secured.as_agency(ABC, 0)
    try:
        js = hostile.nc.jetstream(prefix=AGENCY_JS_API_PREFIX)
        with pytest.raises((nats.errors.TimeoutError, nats.js.errors.Error)):
            await js.consumer_info(INBOX_STREAM, inbox_consumer(ICBC, "green"), timeout=0.5)
        subject = f"{AGENCY_JS_API_PREFIX}.CONSUMER.INFO.{INBOX_STREAM}.{inbox_consumer(ICBC, 'green')}"
        await hostile.refused(violation("publish", subject))
    finally:
        await hostile.nc.close()
