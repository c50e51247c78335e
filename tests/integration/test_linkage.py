"""Case linkage (串并) end to end: NATS, the broker, every reference agency.

Pudong (police-310115) freezes a mule account and marks another one HIGH under its case; Nanshan
(police-440305), in another region, then freezes the marked account under a case of its own. Both
owners get one signed linkage notice naming the other case (the account by digest only), and so
does the coordinator the directory suggests (police-310000, supervising the earliest case's owner,
as the two regions share no police supervisor). A third case of Pudong's on the frozen mule account
links within one region: no coordinator. ``cases linked`` lists the links; only police read them.
Every notice is executed once however often the events are processed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, requests_pb2, risk_pb2

from agencies import _seed as seed
from agencies.demo import Stack
from agencies.police import LinkageRecord, PoliceDesk
from broker.client import BusClient, FraudReporter, error_details
from broker.hub._account_cases import IDENTIFIER_CASES_BUCKET
from broker.hub._case_links import CASE_LINKS_BUCKET
from tests._wait import eventually
from tests.integration.cli_child import run_cli
from tests.integration.stack_config import quick_stack_config
from tests.integration.test_privacy import scan_streams

pytestmark = pytest.mark.integration

S = common_pb2
PUDONG = "police-310115"
NANSHAN = "police-440305"
SHANGHAI = "police-310000"
SHENZHEN = "police-440300"
CASE_A = "SH-PD-2026-0901"
CASE_B = "SZ-NS-2026-0902"
CASE_C = "SH-PD-2026-0903"
REPORT = "CCB-FR-2026-0904"


def case_ref(number: str, owner: str) -> common_pb2.CaseRef:
    return S.CaseRef(
        case_number=number,
        issuing_agency=owner,
        legal_instrument_id=f"{number}-冻结通知书",
        legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
    )


def freeze(number: str, owner: str, account: str, holder: str) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=case_ref(number, owner),
        priority=S.PRIORITY_GREEN,
        freeze=requests_pb2.Freeze(
            account=S.BankAccountRef(account_number=account, holder_name=holder),
            amount=S.Money(currency="CNY", minor_units=1_000),
        ),
    )


async def settled(bus: BusClient, request: requests_pb2.Request) -> str:
    accepted = await bus.submit(request)
    await bus.wait_for(
        accepted.status.id,
        {S.REQUEST_STATE_EXECUTED, S.REQUEST_STATE_PARTIALLY_EXECUTED, S.REQUEST_STATE_REJECTED},
    )
    return accepted.status.id


def desk(stack: Stack, agency: str) -> PoliceDesk:
    core = stack.agencies[agency].core
    assert isinstance(core, PoliceDesk)
    return core


def notices(stack: Stack, agency: str) -> list[LinkageRecord]:
    return list(desk(stack, agency).linkage_notices())


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("linkage")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
    async with Stack(quick_stack_config(root / "keys", root / "data")) as running:
        async with running.client(PUDONG) as pudong:
            await settled(pudong, freeze(CASE_A, PUDONG, seed.MULE_CCB_ACCOUNT, seed.MULE_CCB_HOLDER))
            marked = await pudong.risk.mark(
                risk_pb2.RiskIdentifier(bank_account=seed.MULE_ABC_ACCOUNT),
                grade=risk_pb2.RISK_GRADE_HIGH,
                reason=risk_pb2.RISK_REASON_MULE_ACCOUNT,
                case=case_ref(CASE_A, PUDONG),
            )
            assert marked.status.state == risk_pb2.MARK_STATE_ACTIVE
        async with running.client(NANSHAN) as nanshan:
            await settled(nanshan, freeze(CASE_B, NANSHAN, seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER))
        yield running


@pytest.mark.asyncio(loop_scope="session")
async def test_a_second_case_on_a_marked_account_notifies_both_owners_and_the_coordinator(
    stack: Stack,
) -> None:
    await eventually(
        lambda: all(notices(stack, agency) for agency in (PUDONG, NANSHAN, SHANGHAI)),
        within=60,
        what="linkage notices at Pudong, Nanshan and the coordinator",
    )
    got = {agency: notices(stack, agency) for agency in (PUDONG, NANSHAN, SHANGHAI)}
    # One notice each, all of one link: the account by digest, never in clear.
    assert all(len(found) == 1 for found in got.values()), got
    links = {found[0].link_id for found in got.values()}
    assert len(links) == 1
    notice = got[NANSHAN][0]
    assert notice.kind == "BANK_ACCOUNT"
    assert seed.MULE_ABC_ACCOUNT not in notice.digest
    assert sorted(notice.cases) == sorted([f"{PUDONG}/{CASE_A}", f"{NANSHAN}/{CASE_B}"])
    assert notice.cross_region
    assert notice.coordinator == SHANGHAI
    # Each owner took it under its own case; the coordinator under the case that made the link.
    assert got[PUDONG][0].case_number == CASE_A
    assert got[NANSHAN][0].case_number == CASE_B
    assert got[SHANGHAI][0].case_number == CASE_B
    assert not notices(stack, SHENZHEN)
    # Executed once each (the adapters' journals), signed by the broker as LINKAGE_NOTICEs.
    for agency, found in got.items():
        assert desk(stack, agency).execution_count(found[0].request_id) == 1
        async with stack.client(agency) as bus:
            status = await bus.get(found[0].request_id)
            listed = await bus.list_all(
                types=[S.REQUEST_TYPE_LINKAGE_NOTICE], case_number=found[0].case_number
            )
        # Listed with the case's requests (the owner of case B also sees the coordinator's copy).
        assert found[0].request_id in {s.id for s in listed}
        assert status.type == S.REQUEST_TYPE_LINKAGE_NOTICE
        assert status.state == S.REQUEST_STATE_EXECUTED
        assert status.sender == "greenchannel-broker"


@pytest.mark.asyncio(loop_scope="session")
async def test_the_owners_list_the_link_with_how_each_case_touched_it(stack: Stack, root: Path) -> None:
    async with stack.client(NANSHAN) as nanshan:
        await eventually(lambda: _has_links(nanshan, CASE_B), within=30, what="Nanshan's case lists its link")
        (link,) = await nanshan.risk.links(CASE_B)
    by_case = {case.case_number: case for case in link.cases}
    assert by_case[CASE_A].owner == PUDONG
    assert by_case[CASE_A].region == "310115"
    assert by_case[CASE_A].source == requests_pb2.LINKAGE_SOURCE_MARK
    assert by_case[CASE_B].source == requests_pb2.LINKAGE_SOURCE_REQUEST
    assert by_case[CASE_B].region == "440305"
    assert link.coordinator == SHANGHAI
    # The same link from Pudong's side, through the CLI.
    linked = ("cases", "linked", CASE_A, "--as", PUDONG)
    code, out, err = await run_cli(stack.broker_address, root / "keys", *linked, "--json")
    assert code == 0, err
    assert [entry["link_id"] for entry in json.loads(out)["links"]] == [link.link_id]
    code, out, err = await run_cli(stack.broker_address, root / "keys", *linked)
    assert code == 0, err
    assert CASE_B in out
    assert "coordinator police-310000" in out


async def _has_links(bus: BusClient, case_number: str) -> bool:
    return bool(await bus.risk.links(case_number))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_link_between_one_forces_own_cases_is_listed_without_a_notice(stack: Stack) -> None:
    async with stack.client(PUDONG) as pudong:
        await settled(pudong, freeze(CASE_C, PUDONG, seed.MULE_CCB_ACCOUNT, seed.MULE_CCB_HOLDER))
        await eventually(lambda: _has_links(pudong, CASE_C), within=60, what="case C lists its link")
        (link,) = await pudong.risk.links(CASE_C)
        # A link is listed once its notices (if any) are submitted: none went out for this one.
        sent = await pudong.list_all(types=[S.REQUEST_TYPE_LINKAGE_NOTICE], case_number=CASE_C)
    assert sorted(f"{c.owner}/{c.case_number}" for c in link.cases) == [
        f"{PUDONG}/{CASE_A}",
        f"{PUDONG}/{CASE_C}",
    ]
    assert (link.cross_region, link.coordinator) == (False, "")
    assert sent == []
    # The earlier case lists both of its links now: the marked account and the frozen one.
    async with stack.client(PUDONG) as pudong:
        assert len(await pudong.risk.links(CASE_A)) == 2


@pytest.mark.asyncio(loop_scope="session")
async def test_only_police_read_a_cases_links(stack: Stack) -> None:
    async with stack.client("bank-abc") as bank:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await bank.risk.links(CASE_B)
    details = error_details(refused.value)
    assert (details.code, details.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_CASE_PARTY")
    # Another police force asking for a case number it does not own sees nothing of it.
    async with stack.client(SHENZHEN) as shenzhen:
        assert await shenzhen.risk.links(CASE_B) == []


@pytest.mark.asyncio(loop_scope="session")
async def test_a_bank_fraud_report_on_a_linked_account_links_the_police_it_reached(stack: Stack) -> None:
    """A fraud report's case is the bank's reference, owned for linkage by the police it reached."""
    report = requests_pb2.FraudReport(
        kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT,
        summary="Account received small credits from unrelated payers and forwarded them at once.",
        accounts=[S.BankAccountRef(account_number=seed.MULE_CCB_ACCOUNT, holder_name=seed.MULE_CCB_HOLDER)],
        region="440305",
    )
    async with stack.client("bank-ccb") as bank:
        sent = await FraudReporter(bank).send(report, reference=REPORT, priority=S.PRIORITY_GREEN)
    assert sent.recipient == NANSHAN

    def reached() -> list[LinkageRecord]:
        return [n for n in notices(stack, NANSHAN) if n.case_number == REPORT]

    await eventually(lambda: bool(reached()), within=60, what="Nanshan's notice of the report's link")
    (notice,) = reached()
    assert sorted(notice.cases) == sorted([f"{PUDONG}/{CASE_A}", f"{PUDONG}/{CASE_C}", f"{NANSHAN}/{REPORT}"])
    # Pudong hears of it under one of its own cases; no account number travels in the notice.
    assert any(n.link_id == notice.link_id for n in notices(stack, PUDONG))
    async with stack.client(NANSHAN) as nanshan:
        await eventually(lambda: _has_links(nanshan, REPORT), within=30, what="the report's link listed")
        (link,) = await nanshan.risk.links(REPORT)
    sources = {case.case_number: case.source for case in link.cases}
    assert sources[REPORT] == requests_pb2.LINKAGE_SOURCE_FRAUD_REPORT
    assert sources[CASE_C] == requests_pb2.LINKAGE_SOURCE_REQUEST


@pytest.mark.asyncio(loop_scope="session")
async def test_no_identifier_is_in_clear_in_the_index_or_the_links(stack: Stack) -> None:
    """Runs last: every stream, the identifier index and the links included, read back whole."""
    scan = await scan_streams(stack.nats_url)
    assert scan.messages.get(f"KV_{IDENTIFIER_CASES_BUCKET}", 0) >= 3, scan.messages
    assert scan.messages.get(f"KV_{CASE_LINKS_BUCKET}", 0) >= 3, scan.messages
    assert not scan.findings, "personal data in clear:\n" + "\n".join(scan.findings)
