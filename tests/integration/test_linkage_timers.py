"""Case linkage of requests nobody answers: their first deadline timer links them.

A real broker and NATS, no agency systems: two police forces stop the same account in their own
cases and no bank ever answers. The deliver reminder (the fast SLA's 0.3 s) links the cases, both
owners get their notice on their inboxes, and the link is listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2

from broker.client import BusClient
from tests._sla import DEFAULT_SLA_POLICY
from tests._wait import eventually
from tests.integration.broker_world import POLICE, broker_world, stop_payment

pytestmark = pytest.mark.integration

NANSHAN = "police-440305"
FAST = DEFAULT_SLA_POLICY.scaled(0.02)


async def _has_links(bus: BusClient, case_number: str) -> bool:
    return bool(await bus.risk.links(case_number))


async def test_requests_nobody_answers_are_linked_by_their_first_timer(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(sla=FAST)
        async with world.client(broker, POLICE) as pudong:
            await pudong.submit(stop_payment(case_number="SH-PD-2026-0101"))
        async with world.client(broker, NANSHAN) as nanshan:
            await nanshan.submit(stop_payment(case_number="SZ-NS-2026-0102", issuing_agency=NANSHAN))
            await eventually(
                lambda: _has_links(nanshan, "SZ-NS-2026-0102"), within=60, what="the unanswered cases linked"
            )
            (link,) = await nanshan.risk.links("SZ-NS-2026-0102")
            stop = await nanshan.list_all(
                types=[common_pb2.REQUEST_TYPE_STOP_PAYMENT], case_number="SZ-NS-2026-0102"
            )
        # Nobody answered: the stop-payment is still SUBMITTED, reminded by the broker only.
        assert [s.state for s in stop] == [common_pb2.REQUEST_STATE_SUBMITTED]
        assert sorted((c.owner, c.case_number) for c in link.cases) == [
            (POLICE, "SH-PD-2026-0101"),
            (NANSHAN, "SZ-NS-2026-0102"),
        ]
        assert link.cross_region
        # Each owner's notice is on its inbox, signed by the broker (the link is listed once they are).
        for owner in (POLICE, NANSHAN):
            got = [o for o in await world.inbox(owner) if o.request.WhichOneof("body") == "linkage_notice"]
            assert [o.request.linkage_notice.link_id for o in got] == [link.link_id], owner
            assert got[0].header.sender == "greenchannel-broker"
