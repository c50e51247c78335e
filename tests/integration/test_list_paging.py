"""List pages stay under gRPC's default 4 MiB receive limit however big the statuses are.

Real nats-server and broker; the statuses are written straight into the request store with long
timelines (as requests with many events, extensions and breaches get), then listed through a
BusClient with gRPC's default channel limits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import bus_pb2, common_pb2, envelope_pb2, lifecycle_pb2

from broker.hub._bus import PAGE_BYTES
from broker.hub._store import RequestStore
from broker.protocol import new_uuid7
from tests.integration.broker_world import BANK, POLICE, broker_world

pytestmark = pytest.mark.integration

_GRPC_DEFAULT_RECEIVE = 4 * 1024 * 1024


def big_status(case_number: str, *, events: int = 24, payload: int = 2048) -> lifecycle_pb2.RequestStatus:
    now = Timestamp()
    now.GetCurrentTime()
    status = lifecycle_pb2.RequestStatus(
        id=new_uuid7(),
        type=common_pb2.REQUEST_TYPE_STOP_PAYMENT,
        sender=POLICE,
        recipient=BANK,
        case_ref=common_pb2.CaseRef(case_number=case_number, issuing_agency=POLICE),
        state=common_pb2.REQUEST_STATE_EXECUTED,
        submitted_at=now,
        updated_at=now,
    )
    for seq in range(1, events + 1):
        status.events.add(
            event=envelope_pb2.SignedMessage(payload=bytes([seq]) * payload, signature="s" * 100),
            recorded_at=now,
            seq=seq,
        )
    return status


async def test_pages_of_big_statuses_stay_under_the_grpc_limit_and_cover_everything(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        store = RequestStore(world.js)
        case = "LIST-BIG-0001"
        created = [big_status(case) for _ in range(160)]
        for status in created:
            assert (await store.create(status, msg_id=status.id)).stored
        # A hundred of these (the default page) would be about 5 MiB: over the client's limit.
        assert sum(s.ByteSize() for s in created[:100]) > _GRPC_DEFAULT_RECEIVE

        async with world.client(broker) as police:
            for page_size in (0, 1000):  # the default page, and the largest a client may ask for
                listed: list[str] = []
                pages: list[bus_pb2.ListResponse] = []
                token = ""
                while True:
                    page = await police.list(case_number=case, page_size=page_size, page_token=token)
                    pages.append(page)
                    listed.extend(s.id for s in page.requests)
                    token = page.next_page_token
                    if not token:
                        break
                assert listed == sorted((s.id for s in created), reverse=True), "each once, newest first"
                assert len(pages) > 1
                assert all(0 < p.ByteSize() <= PAGE_BYTES for p in pages)


async def test_small_statuses_still_fill_a_whole_page(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        store = RequestStore(world.js)
        case = "LIST-SMALL-0001"
        for _ in range(30):
            status = big_status(case, events=1, payload=16)
            assert (await store.create(status, msg_id=status.id)).stored
        async with world.client(broker) as police:
            first = await police.list(case_number=case, page_size=25)
            second = await police.list(case_number=case, page_size=25, page_token=first.next_page_token)
        assert (len(first.requests), len(second.requests)) == (25, 5)
        assert second.next_page_token == ""
