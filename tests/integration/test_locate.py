"""Locating a line (DATA_CATEGORY_LOCATION) through the whole stack: NATS, broker, adapters and the
reference carrier, seeded with the story.

The police ask where the fraudster's phone is; the carrier answers from where its network last saw
the line, sealed to the requester: only the requester's key opens it, the records carry the seed's
cell, and the deadlines are the location ones (minutes), not a data request's 8 hours. Nothing of
the answer is in clear on NATS (inbox, events, watch, ledger) or in the logs.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from agencies import _seed as seed
from agencies.demo import Stack
from broker.protocol import SealingError, load_agency_encryption_key, open_sealed
from tests.integration.stack_config import quick_stack_config
from tests.integration.test_privacy import all_logs, describe, hits, scan_streams

pytestmark = pytest.mark.integration

POLICE = "police-310115"
OTHER_POLICE = "police-440300"
CARRIER = "carrier-cmcc"
UNKNOWN_LINE = "+8615099990000"  # a China Mobile segment, no such line
DONE = {
    common_pb2.REQUEST_STATE_EXECUTED,
    common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
    common_pb2.REQUEST_STATE_REJECTED,
    common_pb2.REQUEST_STATE_FAILED,
}


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("locate-keys")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory, keys_dir: Path) -> AsyncIterator[Stack]:
    root = tmp_path_factory.mktemp("locate")
    async with Stack(quick_stack_config(keys_dir, root / "data")) as running:
        yield running


def locate(
    e164: str, priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN
) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number="SH-PD-2026-1121",
            issuing_agency=POLICE,
            legal_instrument_id="沪公(浦)调证字[2026]1122号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_EVIDENCE_NOTICE,
        ),
        priority=priority,
        data_request=requests_pb2.DataRequest(
            category=requests_pb2.DATA_CATEGORY_LOCATION, phone=common_pb2.PhoneRef(e164=e164)
        ),
    )


def phase_budgets(status: lifecycle_pb2.RequestStatus) -> dict[int, timedelta]:
    """Each phase's deadline, counted from the deliver deadline (received + deliver budget)."""
    due = {p.phase: p.due_at.ToDatetime() for p in status.deadlines.phases}
    return {phase: at - due[common_pb2.PHASE_DELIVER] for phase, at in due.items()}


def open_answer(keys_dir: Path, status: lifecycle_pb2.RequestStatus, agency: str) -> results_pb2.DataAnswer:
    key = load_agency_encryption_key(keys_dir, agency)
    clear = open_sealed(
        status.result.encrypted_payload,
        key,
        request_id=status.id,
        sender=status.recipient,
        recipient=status.sender,
    )
    return results_pb2.DataAnswer.FromString(clear)


async def test_police_locate_the_fraudsters_line_sealed_to_them_in_minutes(
    stack: Stack, keys_dir: Path
) -> None:
    with all_logs() as logs:
        async with stack.client(POLICE) as police:
            accepted = await police.submit(locate(seed.FRAUDSTER_PHONE))
            status = await police.wait_for(accepted.status.id, DONE)
        scan = await scan_streams(stack.nats_url)
    assert status.state == common_pb2.REQUEST_STATE_EXECUTED, status.result.detail
    assert status.recipient == CARRIER

    # Location deadlines: deliver 30s, acknowledge 2m, execute 15m; not a data request's 8 hours.
    assert phase_budgets(status) == {
        common_pb2.PHASE_DELIVER: timedelta(0),
        common_pb2.PHASE_ACKNOWLEDGE: timedelta(minutes=2) - timedelta(seconds=30),
        common_pb2.PHASE_EXECUTE: timedelta(minutes=15) - timedelta(seconds=30),
    }

    answer = open_answer(keys_dir, status, POLICE)
    cell = next(c.cell for c in seed.CELLS if c.cell.cell_id == seed.FRAUDSTER_CELL)
    [record] = [dict(r.fields) for r in answer.records]
    assert record["source"] == "last_seen"
    assert record["cell_id"] == seed.FRAUDSTER_CELL == seed.CALLS[-1].caller_cell
    assert record["base_station_id"] == cell.base_station_id
    assert record["location_area"] == cell.location_area
    assert (float(record["latitude"]), float(record["longitude"])) == (cell.latitude, cell.longitude)
    assert int(record["accuracy_m"]) == cell.accuracy_m
    assert record["imei"] == seed.FRAUDSTER_IMEI
    assert record["last_activity_at"].endswith("Z")

    # Another police agency's key does not open it.
    with pytest.raises(SealingError):
        open_answer(keys_dir, status, OTHER_POLICE)

    # Nothing of the answer (nor of the story) is in clear on NATS, in the ledger or in the logs.
    findings = list(scan.findings)
    if found := hits(logs.getvalue().encode("utf-8")):
        findings.append(describe("structlog / logging output", found))
    assert not findings, "personal data in clear:\n" + "\n".join(findings)
    assert scan.messages.get("GC_EVENTS", 0) > 0
    assert scan.messages.get("GC_WATCH", 0) > 0


async def test_an_unknown_line_is_not_found_and_standard_location_is_hours(stack: Stack) -> None:
    async with stack.client(POLICE) as police:
        accepted = await police.submit(locate(UNKNOWN_LINE, common_pb2.PRIORITY_STANDARD))
        status = await police.wait_for(accepted.status.id, DONE)
    assert status.state == common_pb2.REQUEST_STATE_REJECTED
    assert status.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert not status.result.encrypted_payload.ciphertext
    # Standard location: deliver 1h, execute 4h (the data request's own standard is 3 days).
    assert phase_budgets(status)[common_pb2.PHASE_EXECUTE] == timedelta(hours=3)
