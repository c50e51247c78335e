"""Warnings with outcomes and fraud reports with feedback, end to end: NATS, the broker, the
reference carriers, platforms and police desks behind their adapters.

- A warning the carrier answers UNREACHABLE (the line is recorded unreachable) makes the broker send
  a DISSUASION to the police of the person's region, which the desk executes (DISSUADED); a warning
  answered DISSUADED sends none; one answered CONTINUING by the platform, naming no region, goes
  to the police of the case owner's region. A warning the carrier never answers escalates at its
  execute deadline to the carrier's supervisor.
- A fraud report is received (ACKNOWLEDGED); the police's signed feedback ends it EXECUTED with the
  decision, which the reporting bank sees; the same signed feedback again is answered alike;
  another feedback, feedback by other police, on a request that is not a fraud report, or with a
  bad signature is refused with its reason, and nothing is stored. A report without feedback
  escalates at its execute deadline to the police's supervisor. The SLA report counts it all.

One stack for the module; the SLA policy gives GREEN warnings and fraud reports a few seconds.
"""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from greenchannel.v1 import bus_pb2, bus_pb2_grpc, common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from agencies import DEFAULT_SLA_POLICY_PATH
from agencies import _seed as seed
from agencies._common import Reach
from agencies.demo import Stack, StackConfig
from agencies.platform import PlatformCore
from agencies.police import PoliceDesk
from broker.cli._sla import sla_report_command
from broker.client import BusClient, FraudReporter, bearer_metadata, error_details
from broker.hub import load_sla_policy
from broker.protocol import (
    BROKER_ID,
    FRAUD_REPORT_FEEDBACK_TYPE,
    SystemClock,
    load_agency_signing_key,
    sign_message,
    to_timestamp,
)
from tests._wait import eventually
from tests.integration.cli_child import run_cli
from tests.integration.escalations import execute_escalated, supervisor_notices, supervisor_told
from tests.integration.stack_config import quick_stack_config
from tests.integration.stack_journal import events_settled

pytestmark = pytest.mark.integration

S = common_pb2
OWNER = "police-310115"  # owns the cases; region 310115
REGION_POLICE = "police-440305"  # the police of region 440305
REGION_SUPERVISOR = "police-440300"
REPORTER = "bank-icbc"
REGULATOR = "regulator-mps"
SILENT_CARRIER = "carrier-cucc"  # its adapter is stopped before it is warned
SILENT_NUMBER = "+8613012340099"
DONE = {
    S.REQUEST_STATE_EXECUTED,
    S.REQUEST_STATE_PARTIALLY_EXECUTED,
    S.REQUEST_STATE_REJECTED,
    S.REQUEST_STATE_FAILED,
}
RECEIVED = DONE | {S.REQUEST_STATE_ACKNOWLEDGED}


def short_green(tmp_path: Path) -> Path:
    """The shipped CN policy, with GREEN warnings (and the other green orders of that line) and GREEN
    fraud reports due within seconds; STANDARD keeps its hours and days."""
    text = DEFAULT_SLA_POLICY_PATH.read_text(encoding="utf-8")
    timings = 'priority = "green"\ndeliver = "30s"\nacknowledge = "2m"\n'
    orders = '"account_block", "warning"]\n' + timings + 'execute = "10m"'
    reports = 'types = ["fraud_report"]\n' + timings + 'execute = "1h"'
    for old in (orders, reports):
        assert text.count(old) == 1
        text = text.replace(
            old,
            old.replace('"30s"', '"2s"')
            .replace('"2m"', '"3s"')
            .replace('"10m"', '"6s"')
            .replace('"1h"', '"6s"'),
        )
    path = tmp_path / "short-green.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class World:
    stack: Stack
    root: Path


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("warning-outcomes")
    base = quick_stack_config(root / "keys", root / "data")
    config = StackConfig(
        keys_dir=base.keys_dir,
        data_dir=base.data_dir,
        adapter=base.adapter,
        sla=load_sla_policy(short_green(root)),
    )
    async with Stack(config) as stack:
        yield World(stack=stack, root=root)


def desk(stack: Stack, agency: str) -> PoliceDesk:
    core = stack.agencies[agency].core
    assert isinstance(core, PoliceDesk)
    return core


def warning(
    case_number: str,
    *,
    phone: str = "",
    account: common_pb2.PlatformAccountRef | None = None,
    region: str = "",
    priority: common_pb2.Priority.ValueType = S.PRIORITY_STANDARD,
) -> requests_pb2.Request:
    body = requests_pb2.Warning(template_id="fraud-call-warning", region=region)
    if account is not None:
        body.platform_account.CopyFrom(account)
        body.channel = requests_pb2.WARNING_CHANNEL_IN_APP
    else:
        body.phone.CopyFrom(common_pb2.PhoneRef(e164=phone))
        body.channel = requests_pb2.WARNING_CHANNEL_CALL
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=case_number,
            issuing_agency=OWNER,
            legal_instrument_id=f"{case_number}-W",
            legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
        ),
        priority=priority,
        warning=body,
    )


async def warned(police: BusClient, request: requests_pb2.Request) -> lifecycle_pb2.RequestStatus:
    status = await police.wait_for((await police.submit(request)).status.id, DONE)
    assert status.state == S.REQUEST_STATE_EXECUTED, status.result.detail
    return status


async def dissuasions_of(
    police: BusClient, warning_status: lifecycle_pb2.RequestStatus
) -> list[lifecycle_pb2.RequestStatus]:
    found: list[lifecycle_pb2.RequestStatus] = []

    async def sent() -> bool:
        found[:] = await police.dissuasions(warning_status)
        return len(found) >= 1

    await eventually(sent, within=20.0, what="the broker's DISSUASION sent")
    return found


async def test_an_unreachable_person_is_dissuaded_in_person_by_the_police_of_their_region(
    world: World,
) -> None:
    stack = world.stack
    async with stack.client(OWNER) as police:
        status = await warned(police, warning("QZ-2026-0001", phone=seed.UNREACHABLE_PHONE, region="440305"))
        assert status.recipient == "carrier-ctcc"
        assert status.result.warning == results_pb2.WARNING_OUTCOME_UNREACHABLE
        assert status.warning_seed.region == "440305"
        # The person travels sealed to the broker, never in clear in the status.
        assert seed.UNREACHABLE_PHONE not in status.SerializeToString().decode("latin-1")

        (dissuasion,) = await dissuasions_of(police, status)
        assert dissuasion.type == S.REQUEST_TYPE_DISSUASION
        assert (dissuasion.sender, dissuasion.recipient) == (BROKER_ID, REGION_POLICE)
        assert (dissuasion.parent_id, dissuasion.case_ref) == (status.id, status.case_ref)
        assert dissuasion.priority == S.PRIORITY_GREEN  # policy [warning] priority
        done = await police.wait_for(dissuasion.id, DONE)
        assert done.state == S.REQUEST_STATE_EXECUTED
        assert done.result.warning == results_pb2.WARNING_OUTCOME_DISSUADED

        # The outcome processed again (every outcome's hooks run until they succeed): still one.
        await events_settled(stack)
        assert [d.id for d in await police.dissuasions(status)] == [dissuasion.id]
    (visit,) = [v for v in desk(stack, REGION_POLICE).dissuasions() if v.warning_request_id == status.id]
    assert (visit.request_id, visit.region, visit.target) == (dissuasion.id, "440305", seed.UNREACHABLE_PHONE)
    assert (visit.warning_outcome, visit.outcome, visit.case_number) == (
        "UNREACHABLE",
        "DISSUADED",
        "QZ-2026-0001",
    )


async def test_a_dissuaded_person_is_not_visited(world: World) -> None:
    async with world.stack.client(OWNER) as police:
        status = await warned(
            police, warning("QZ-2026-0002", phone=seed.POTENTIAL_VICTIM_PHONE, region="440305")
        )
        assert status.result.warning == results_pb2.WARNING_OUTCOME_DISSUADED
        assert status.result.block.warned
        await events_settled(world.stack)
        assert await police.dissuasions(status) == []


async def test_a_continuing_user_is_visited_by_the_police_of_the_case_owners_region(world: World) -> None:
    stack = world.stack
    platform = stack.agencies["platform-wechat"].core
    assert isinstance(platform, PlatformCore)
    platform.set_reach(seed.WECHAT, seed.POTENTIAL_VICTIM_WECHAT_ID, Reach.CONTINUING)
    account = common_pb2.PlatformAccountRef(platform=seed.WECHAT, account_id=seed.POTENTIAL_VICTIM_WECHAT_ID)
    async with stack.client(OWNER) as police:
        status = await warned(police, warning("QZ-2026-0003", account=account))
        assert status.recipient == "platform-wechat"
        assert status.result.warning == results_pb2.WARNING_OUTCOME_CONTINUING
        (dissuasion,) = await dissuasions_of(police, status)
        # No Warning.region: the police of the case owner's region (310115) go.
        assert dissuasion.recipient == OWNER
        done = await police.wait_for(dissuasion.id, DONE)
        assert done.state == S.REQUEST_STATE_EXECUTED
    (visit,) = [v for v in desk(stack, OWNER).dissuasions() if v.warning_request_id == status.id]
    assert (visit.region, visit.warning_outcome) == ("310115", "CONTINUING")
    assert visit.target == f"{seed.WECHAT}:{seed.POTENTIAL_VICTIM_WECHAT_ID}"


async def report(
    bank: BusClient, reference: str, *, priority: common_pb2.Priority.ValueType
) -> lifecycle_pb2.RequestStatus:
    body = requests_pb2.FraudReport(
        kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT,
        summary="Account received 9 small credits from unrelated payers and forwarded them within minutes.",
        accounts=[
            common_pb2.BankAccountRef(
                account_number=seed.MULE_ICBC_ACCOUNT, holder_name=seed.MULE_ICBC_HOLDER
            )
        ],
        region="440305",
    )
    sent = await FraudReporter(bank).send(body, reference=reference, priority=priority)
    assert sent.recipient == REGION_POLICE
    return sent


def signed_feedback(
    world: World,
    police: str,
    report_id: str,
    decision: results_pb2.FeedbackDecision.ValueType = results_pb2.FEEDBACK_DECISION_ACTED_ON,
) -> bus_pb2.GiveFeedbackRequest:
    key = load_agency_signing_key(world.root / "keys", police)
    feedback = lifecycle_pb2.FraudReportFeedback(
        report_request_id=report_id,
        decision=decision,
        reason="joined to case QZ-2026-0101: the account is a mule of the ring",
        case_number="QZ-2026-0101",
        issued_at=to_timestamp(SystemClock().now()),
    )
    signed = sign_message(
        feedback.SerializeToString(),
        key=key,
        issuer=police,
        audience=BROKER_ID,
        message_type=FRAUD_REPORT_FEEDBACK_TYPE,
        clock=SystemClock(),
    )
    return bus_pb2.GiveFeedbackRequest(feedback=signed)


def token(world: World, police: str) -> tuple[tuple[str, str], ...]:
    """A fresh bearer token of ``police`` (one per call)."""
    key = load_agency_signing_key(world.root / "keys", police)
    return bearer_metadata(key, agency_id=police, clock=SystemClock())


async def test_feedback_ends_a_fraud_report_and_the_reporter_sees_it(world: World) -> None:
    stack = world.stack
    async with stack.client(REPORTER) as bank:
        sent = await report(bank, "ICBC-FR-2026-0101", priority=S.PRIORITY_STANDARD)
        received = await bank.wait_for(sent.id, RECEIVED)
        assert received.state == S.REQUEST_STATE_ACKNOWLEDGED  # received, the feedback owed
        assert any(filed.request_id == sent.id for filed in desk(stack, REGION_POLICE).fraud_reports())

        request = signed_feedback(world, REGION_POLICE, sent.id)
        async with grpc.aio.insecure_channel(stack.broker_address) as channel:
            stub = bus_pb2_grpc.BusServiceStub(channel)
            given = await stub.GiveFeedback(request, metadata=token(world, REGION_POLICE))
            # The same signed feedback again (an answer lost on the way): answered alike.
            again = await stub.GiveFeedback(request, metadata=token(world, REGION_POLICE))
        assert given.status.state == S.REQUEST_STATE_EXECUTED
        assert again.status == given.status
        result = given.status.result
        assert result.feedback == results_pb2.FEEDBACK_DECISION_ACTED_ON
        assert result.detail == "joined to case QZ-2026-0101: the account is a mule of the ring"
        assert result.agency_reference == "QZ-2026-0101"

        # The reporting bank sees the decision, and the event carries the police's signed feedback.
        seen = await bank.wait_for(sent.id, DONE)
        assert seen.result.feedback == results_pb2.FEEDBACK_DECISION_ACTED_ON
        decided = next(
            e
            for e in map(lifecycle_pb2.LifecycleEvent.FromString, (r.event.payload for r in seen.events))
            if e.state == S.REQUEST_STATE_EXECUTED
        )
        assert decided.actor == BROKER_ID
        assert decided.ruling == request.feedback


async def test_hostile_feedback_is_refused_with_its_reason_and_nothing_stored(world: World) -> None:
    stack = world.stack
    async with stack.client(REPORTER) as bank, stack.client(OWNER) as police:
        (answered,) = [
            s
            for s in await bank.list_all(case_number="ICBC-FR-2026-0101", types=[S.REQUEST_TYPE_FRAUD_REPORT])
            if s.state == S.REQUEST_STATE_EXECUTED
        ]
        (visit,) = [
            s for s in await police.list_all(case_number="QZ-2026-0001", types=[S.REQUEST_TYPE_DISSUASION])
        ]
    async with grpc.aio.insecure_channel(stack.broker_address) as channel:
        stub = bus_pb2_grpc.BusServiceStub(channel)

        async def refused(
            request: bus_pb2.GiveFeedbackRequest, caller: str = REGION_POLICE
        ) -> tuple[grpc.StatusCode, str]:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.GiveFeedback(request, metadata=token(world, caller))
            return caught.value.code(), error_details(caught.value).reason or ""

        # Other police than the ones the report reached.
        assert await refused(signed_feedback(world, OWNER, answered.id), OWNER) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_REPORT_RECIPIENT",
        )
        # A second, different feedback.
        second = signed_feedback(
            world, REGION_POLICE, answered.id, results_pb2.FEEDBACK_DECISION_NOT_ACTIONABLE
        )
        assert await refused(second) == (grpc.StatusCode.FAILED_PRECONDITION, "FEEDBACK_ALREADY_GIVEN")
        # Feedback on a request addressed to those police that is not a fraud report (a DISSUASION).
        assert await refused(signed_feedback(world, REGION_POLICE, visit.id)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "NOT_A_FRAUD_REPORT",
        )
        # A feedback signed by other police than the caller, and one whose signature is broken.
        foreign = signed_feedback(world, OWNER, answered.id)
        assert await refused(foreign) == (grpc.StatusCode.INVALID_ARGUMENT, "WRONG_ISSUER")
        broken = signed_feedback(world, REGION_POLICE, answered.id)
        broken.feedback.payload += b" "
        code, reason = await refused(broken)
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in {"BAD_SIGNATURE", "DIGEST_MISMATCH", "CONTRACT_VIOLATION", "INVALID_REQUEST"}
        unsigned = signed_feedback(world, REGION_POLICE, answered.id)
        unsigned.feedback.signature = ""
        assert await refused(unsigned) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST")  # required
    async with stack.client(REPORTER) as bank:
        after = await bank.get(answered.id)
    # Nothing stored: the report is as it was answered.
    assert after == answered
    assert after.result.feedback == results_pb2.FEEDBACK_DECISION_ACTED_ON
    async with stack.client(OWNER) as police:
        assert (await police.get(visit.id)).events == visit.events


async def test_the_cli_submits_a_warning_for_a_region_and_gives_feedback_once(world: World) -> None:
    stack, keys = world.stack, world.root / "keys"
    code, out, err = await run_cli(
        stack.broker_address,
        keys,
        "submit",
        "warning",
        "--as",
        OWNER,
        "--case",
        "QZ-2026-0005",
        "--priority",
        "standard",
        "--phone",
        seed.UNREACHABLE_PHONE,
        "--channel",
        "sms",
        "--template",
        "fraud-call-warning",
        "--region",
        "440305",
        "--wait",
        "--json",
    )
    assert code == 0, (out, err)
    submitted = json.loads(out)
    assert submitted["status"]["result"]["warning"] == "WARNING_OUTCOME_UNREACHABLE"
    async with stack.client(OWNER) as police:
        (dissuasion,) = await dissuasions_of(police, await police.get(submitted["id"]))
        assert dissuasion.recipient == REGION_POLICE
        await police.wait_for(dissuasion.id, DONE)

    async with stack.client(REPORTER) as bank:
        sent = await report(bank, "ICBC-FR-2026-0103", priority=S.PRIORITY_STANDARD)
        await bank.wait_for(sent.id, RECEIVED)
    give = (
        "feedback",
        "give",
        sent.id,
        "--as",
        REGION_POLICE,
        "--not-actionable",
        "--reason",
        "no loss reported",
    )
    code, out, err = await run_cli(stack.broker_address, keys, *give, "--json")
    assert code == 0, (out, err)
    answered = json.loads(out)
    assert (answered["state"], answered["status"]["result"]["feedback"]) == (
        "EXECUTED",
        "FEEDBACK_DECISION_NOT_ACTIONABLE",
    )
    code, out, err = await run_cli(stack.broker_address, keys, *give, "--json")
    assert code == 1
    assert json.loads(out)["error"]["reason"] == "FEEDBACK_ALREADY_GIVEN"
    assert "FEEDBACK_ALREADY_GIVEN" in err


async def test_overdue_feedback_and_an_unanswered_warning_escalate_and_the_report_counts_them(
    world: World,
) -> None:
    stack = world.stack
    async with supervisor_notices(stack.nats_settings("test-notices"), REGION_SUPERVISOR) as notices:
        async with stack.client(REPORTER) as bank:
            overdue = await report(bank, "ICBC-FR-2026-0102", priority=S.PRIORITY_GREEN)
            await bank.wait_for(overdue.id, RECEIVED)
            status, breach = await execute_escalated(bank, overdue.id, what="the report's feedback overdue")
            assert status.state == S.REQUEST_STATE_ACKNOWLEDGED  # escalation annotates, it answers nothing
            assert breach.actor == BROKER_ID
            assert REGION_SUPERVISOR in breach.detail
        await supervisor_told(
            notices, overdue.id, what="the police's supervisor told of the overdue feedback"
        )

    # A warning the carrier never answers (its adapter is stopped) escalates through the same ladder.
    await stack.adapters[SILENT_CARRIER].aclose()
    async with supervisor_notices(stack.nats_settings("test-notices-2"), "regulator-miit") as notices:
        async with stack.client(OWNER) as police:
            sent = (
                await police.submit(warning("QZ-2026-0004", phone=SILENT_NUMBER, priority=S.PRIORITY_GREEN))
            ).status
            assert sent.recipient == SILENT_CARRIER
            status, breach = await execute_escalated(police, sent.id, what="the warning's outcome overdue")
            assert status.state not in DONE
            assert not status.result.warning
        await supervisor_told(
            notices, sent.id, what="the carrier's supervisor told of the unanswered warning"
        )

    out = io.StringIO()
    code = await sla_report_command(
        broker=stack.broker_address, agency_id=REGULATOR, state_dir=world.root / "keys", as_json=True, out=out
    )
    assert code == 0
    document = json.loads(out.getvalue())
    assert document["warnings"] == {
        "warnings": 5,
        "dissuaded": 1,
        "continuing": 1,
        "unreachable": 2,
        "dissuasions_sent": 3,
        "dissuasions_done": 3,
    }
    assert document["fraud_report_feedback"] == {"due": 3, "in_time": 2, "late": 0, "overdue": 1}
    table = io.StringIO()
    code = await sla_report_command(
        broker=stack.broker_address,
        agency_id=REGULATOR,
        state_dir=world.root / "keys",
        as_json=False,
        out=table,
    )
    assert code == 0
    text = table.getvalue()
    assert (
        "warnings: 5 (dissuaded 1, continuing 1, unreachable 2); in-person dissuasions: 3 sent, 3 done"
        in text
    )
    assert "fraud-report feedback: 3 due, 2 given in time, 0 late, 1 overdue" in text
