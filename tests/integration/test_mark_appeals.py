"""Appeals (申诉) against risk marks end to end: NATS, the broker, every reference agency behind its
adapter, by the appeal rules restrictions follow.

The holder appeals through the agency serving the marked identifier (a bank its customer's account,
a carrier its subscriber's number); the police desk files it (only the police read the statement);
the police decide with DecideAppeal. LIFTED: the broker unmarks the mark itself, so RiskService.Check
no longer returns it and ListMarks shows it lifted by that appeal; UPHELD: the mark stays. Every
hostile appeal gets its own status and reason, and stores nothing. One stack for the module.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import nats.js.errors
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, ledger_pb2, lifecycle_pb2, requests_pb2, results_pb2, risk_pb2

from agencies import _seed as seed
from agencies.demo import Stack
from broker.client import BusClient
from broker.hub._appeals import open_appeal_key
from broker.hub._decisions import ruling_of
from broker.hub._open_appeals import OPEN_APPEALS_BUCKET
from broker.hub._store import open_bucket
from broker.protocol import NatsSettings, connect
from tests._wait import eventually
from tests.integration.appeal_calls import police_desk, refused
from tests.integration.cli_child import run_cli
from tests.integration.marks_case import open_case_for_marks
from tests.integration.stack_config import quick_stack_config
from tests.integration.stack_journal import journal_size

pytestmark = pytest.mark.integration

R = risk_pb2
S = common_pb2
POLICE = "police-310115"
OTHER_POLICE = "police-440300"
CASE = "SH-PD-2026-0915"
STATEMENT = "holder-statement-5c1e: this is my salary account, I never lent it to anybody"
FILED = {
    S.REQUEST_STATE_ACKNOWLEDGED,
    S.REQUEST_STATE_EXECUTED,
    S.REQUEST_STATE_REJECTED,
    S.REQUEST_STATE_FAILED,
}
# Numbers that route to bank-ccb (its prefix), none of them marked by another test.
CCB_CUSTOMER = seed.MULE_CCB_ACCOUNT
CCB_OTHER = seed.MULE_CCB_ACCOUNT[:-4] + "1111"
CCB_UNMARKED = seed.MULE_CCB_ACCOUNT[:-4] + "2222"
CCB_PENDING = seed.MULE_CCB_ACCOUNT[:-4] + "3333"
CCB_BY_CLI = seed.MULE_CCB_ACCOUNT[:-4] + "4444"
PHONE = "+8613900004321"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mark-appeals")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
    async with Stack(quick_stack_config(root / "keys", root / "data")) as running:
        async with running.client(POLICE) as police:
            await open_case_for_marks(police, case_ref(S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE))
        yield running


def case_ref(instrument: common_pb2.LegalInstrumentType.ValueType) -> common_pb2.CaseRef:
    return S.CaseRef(
        case_number=CASE,
        issuing_agency=POLICE,
        legal_instrument_id="沪公(浦)冻字[2026]0915号",
        legal_instrument_type=instrument,
    )


async def mark(police: BusClient, identifier: risk_pb2.RiskIdentifier) -> risk_pb2.MarkStatus:
    made = await police.risk.mark(
        identifier,
        grade=R.RISK_GRADE_HIGH,
        reason=R.RISK_REASON_RENTED_OUT,
        case=case_ref(S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE),
    )
    assert made.status.state == R.MARK_STATE_ACTIVE
    return made.status


async def appeal(
    agency: BusClient,
    mark_id: str,
    held: requests_pb2.HolderIdentifier,
    *,
    police: str = POLICE,
    case_number: str = CASE,
) -> lifecycle_pb2.RequestStatus:
    return await agency.file_mark_appeal(
        mark_id,
        held,
        police=police,
        case_number=case_number,
        ground=requests_pb2.APPEAL_GROUND_MISTAKEN_IDENTITY,
        statement=requests_pb2.AppealStatement(statement=STATEMENT),
        ticket=f"SS-{uuid.uuid4().hex[:8]}",
    )


def held_account(number: str) -> requests_pb2.HolderIdentifier:
    return requests_pb2.HolderIdentifier(bank_account=number)


async def grade(agency: BusClient, identifier: risk_pb2.RiskIdentifier) -> int:
    return (await agency.risk.check([identifier])).verdicts[0].grade


async def listed(police: BusClient, mark_id: str) -> risk_pb2.MarkStatus:
    return {m.mark_id: m for m in await police.risk.list_marks(CASE)}[mark_id]


async def ledger_steps(police: BusClient, mark_id: str) -> list[str]:
    steps: list[str] = []
    after = 0
    while True:
        page = await police.ledger_entries(after)
        steps += [
            e.mark_step
            for e in page.entries
            if e.kind == ledger_pb2.LEDGER_ENTRY_KIND_MARK and e.mark_id == mark_id
        ]
        if page.next_after_seq >= page.head_seq or page.next_after_seq == after:
            return steps
        after = page.next_after_seq


async def open_key_exists(stack: Stack, key: str) -> bool:
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="test-open-appeals"))
    try:
        kv = await open_bucket(nc.jetstream(), OPEN_APPEALS_BUCKET)
        try:
            await kv.get(key)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return False
        return True
    finally:
        await nc.drain()


async def test_a_bank_appeals_a_mark_on_its_customers_account_and_the_police_lift_it(stack: Stack) -> None:
    marked = R.RiskIdentifier(bank_account=CCB_CUSTOMER)
    async with (
        stack.client(POLICE) as police,
        stack.client("bank-ccb") as bank,
        stack.client("bank-icbc") as icbc,
    ):
        status = await mark(police, marked)
        assert await grade(icbc, marked) == R.RISK_GRADE_HIGH

        filed = await appeal(bank, status.mark_id, held_account(CCB_CUSTOMER))
        assert filed.type == S.REQUEST_TYPE_APPEAL
        assert (filed.recipient, filed.case_ref.case_number) == (POLICE, CASE)
        assert filed.case_ref.legal_instrument_type == S.LEGAL_INSTRUMENT_TYPE_APPEAL
        assert filed.appealed_mark_id == status.mark_id
        assert filed.target_id == ""
        # The police adapter opens the statement and files it: ACKNOWLEDGED, not an outcome.
        assert (await police.wait_for(filed.id, FILED)).state == S.REQUEST_STATE_ACKNOWLEDGED
        (record,) = [a for a in police_desk(stack, POLICE).appeals() if a.request_id == filed.id]
        assert (record.sender, record.mark_id, record.restriction_request_id) == (
            "bank-ccb",
            status.mark_id,
            "",
        )
        assert record.statement == STATEMENT

        decided = await police.decide_appeal(filed.id, results_pb2.APPEAL_DECISION_LIFTED, "salary account")
        assert decided.status.result.appeal == results_pb2.APPEAL_DECISION_LIFTED
        assert list(decided.lifting) == []  # nothing to order: the registry is the broker's own

        # Check no longer returns it; ListMarks shows it lifted by the appeal, decided by the police.
        assert await grade(icbc, marked) == R.RISK_GRADE_UNSPECIFIED
        lifted = await listed(police, status.mark_id)
        assert lifted.state == R.MARK_STATE_UNMARKED
        assert (lifted.lifted_by_appeal, lifted.decided_by) == (filed.id, POLICE)
        # The appealing bank reads the decision on its appeal, as for a restriction.
        assert (await bank.get(filed.id)).result.appeal == results_pb2.APPEAL_DECISION_LIFTED

        # Processed again (the events hook, a retry): the same lifting, nothing more.
        assert stack.broker is not None
        assert stack.broker.risk is not None
        ruling = ruling_of(decided.status)
        assert ruling is not None
        again = await stack.broker.risk.desk.lift_on_appeal(
            status.mark_id, appeal_id=filed.id, police=POLICE, ruling=ruling
        )
        assert again == lifted

        async def in_the_ledger() -> bool:
            return "APPEAL_LIFTED" in await ledger_steps(police, status.mark_id)

        await eventually(in_the_ledger, what="the APPEAL_LIFTED ledger entry")
        assert (await ledger_steps(police, status.mark_id)).count("APPEAL_LIFTED") == 1

        # Lifted once: a police Unmark now finds nothing active, a second appeal nothing marked.
        await refused(
            police.risk.unmark(status.mark_id, reason="again"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "MARK_NOT_ACTIVE",
        )
        await refused(
            appeal(bank, status.mark_id, held_account(CCB_CUSTOMER)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_MARKED",
        )


async def test_an_upheld_appeal_leaves_the_mark(stack: Stack) -> None:
    carrier = stack.registry.carrier_for_number(PHONE)  # type: ignore[union-attr]
    assert carrier is not None
    marked = R.RiskIdentifier(phone=PHONE)
    async with (
        stack.client(POLICE) as police,
        stack.client(carrier.id) as serving,
        stack.client("bank-icbc") as icbc,
    ):
        status = await mark(police, marked)
        filed = await appeal(serving, status.mark_id, requests_pb2.HolderIdentifier(phone=PHONE))
        await police.wait_for(filed.id, FILED)
        decided = await police.decide_appeal(
            filed.id, results_pb2.APPEAL_DECISION_UPHELD, "number seen calling victims"
        )
        assert decided.status.result.appeal == results_pb2.APPEAL_DECISION_UPHELD
        assert list(decided.lifting) == []
        assert await grade(icbc, marked) == R.RISK_GRADE_HIGH
        kept = await listed(police, status.mark_id)
        assert (kept.state, kept.lifted_by_appeal) == (R.MARK_STATE_ACTIVE, "")
        assert (await serving.get(filed.id)).result.appeal == results_pb2.APPEAL_DECISION_UPHELD


async def test_hostile_mark_appeals_are_refused_and_store_nothing(stack: Stack) -> None:
    async with (
        stack.client(POLICE) as police,
        stack.client("bank-ccb") as ccb,
        stack.client("bank-icbc") as icbc,
    ):
        status = await mark(police, R.RiskIdentifier(bank_account=CCB_OTHER))
        unmarked = await mark(police, R.RiskIdentifier(bank_account=CCB_UNMARKED))
        await police.risk.unmark(unmarked.mark_id, reason="mistaken mark")
        size = await journal_size(stack)
        key = open_appeal_key(requests_pb2.Appeal(mark_id=status.mark_id))

        # An agency not serving the identifier; the serving bank naming an identifier that is not
        # the marked one: the same refusal, before anything about the mark is told.
        await refused(
            appeal(icbc, status.mark_id, held_account(CCB_OTHER)),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_HOLDERS_AGENCY",
        )
        await refused(
            appeal(icbc, str(uuid.uuid4()), held_account(CCB_OTHER)),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_HOLDERS_AGENCY",
        )
        await refused(
            appeal(ccb, status.mark_id, held_account(CCB_CUSTOMER[:-4] + "9999")),
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_HOLDERS_AGENCY",
        )
        # No such mark; a mark no longer in force; the wrong police or case.
        await refused(
            appeal(ccb, str(uuid.uuid4()), held_account(CCB_OTHER)), grpc.StatusCode.NOT_FOUND, "NO_SUCH_MARK"
        )
        await refused(
            appeal(ccb, unmarked.mark_id, held_account(CCB_UNMARKED)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_MARKED",
        )
        await refused(
            appeal(ccb, status.mark_id, held_account(CCB_OTHER), police=OTHER_POLICE),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_CASE",
        )
        await refused(
            appeal(ccb, status.mark_id, held_account(CCB_OTHER), case_number="SH-PD-2026-0001"),
            grpc.StatusCode.FAILED_PRECONDITION,
            "WRONG_CASE",
        )
        assert await journal_size(stack) == size
        assert not await open_key_exists(stack, key)
        assert (await listed(police, status.mark_id)).state == R.MARK_STATE_ACTIVE


async def test_a_second_open_appeal_on_a_mark_is_refused(stack: Stack) -> None:
    async with stack.client(POLICE) as police, stack.client("bank-ccb") as ccb:
        status = await mark(police, R.RiskIdentifier(bank_account=CCB_PENDING))
        first = await appeal(ccb, status.mark_id, held_account(CCB_PENDING))
        await police.wait_for(first.id, FILED)
        size = await journal_size(stack)
        await refused(
            appeal(ccb, status.mark_id, held_account(CCB_PENDING)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "APPEAL_PENDING",
        )
        assert await journal_size(stack) == size
        # Decided (upheld), the mark may be appealed again.
        await police.decide_appeal(first.id, results_pb2.APPEAL_DECISION_UPHELD, "rented out, confirmed")
        second = await appeal(ccb, status.mark_id, held_account(CCB_PENDING))
        assert second.id != first.id


async def test_the_appeal_commands_on_a_mark(stack: Stack, root: Path) -> None:
    async def cli(*args: str) -> dict[str, Any]:
        code, out, err = await run_cli(stack.broker_address, root / "keys", "appeal", *args, "--json")
        assert code == 0, err
        document: dict[str, Any] = json.loads(out)
        return document

    statement = root / "statement.txt"
    statement.write_text(STATEMENT, encoding="utf-8")
    marked = R.RiskIdentifier(bank_account=CCB_BY_CLI)
    async with stack.client(POLICE) as police, stack.client("bank-icbc") as icbc:
        status = await mark(police, marked)
        filed = await cli(
            *("file", "--as", "bank-ccb", "--mark", status.mark_id, "--identifier", f"account:{CCB_BY_CLI}"),
            *("--police", POLICE, "--case", CASE, "--ground", "mistaken-identity"),
            *("--statement-file", str(statement), "--ticket", "CCB-AP-0001", "--wait"),
        )
        assert (filed["type"], filed["state"], filed["mark_id"]) == ("APPEAL", "ACKNOWLEDGED", status.mark_id)
        decided = await cli("decide", "--as", POLICE, filed["id"], "--lift", "--reason", "salary account")
        assert decided["appeal"] == {"decision": "LIFTED", "mark_id": status.mark_id, "lifting": []}
        assert await grade(icbc, marked) == R.RISK_GRADE_UNSPECIFIED
        assert (await listed(police, status.mark_id)).lifted_by_appeal == filed["id"]
