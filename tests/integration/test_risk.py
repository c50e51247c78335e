"""The risk registry and the pre-payment check end to end: NATS, the broker, every reference agency.

Police mark a mule account; a bank's check returns the grade; a short mark expires and is no longer
returned; a bank proposes, the police owning the case confirm; the police lift a mark; every hostile
call gets its own status and reason and stores nothing; the reference bank refuses a customer's
transfer to a HIGH-graded account and makes one to an unmarked account; and no identifier is in
clear anywhere in NATS (the marks bucket, the counts, the ledger). One stack for the module.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import nats.js.errors
import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, ledger_pb2, requests_pb2, risk_pb2, risk_pb2_grpc

from agencies import DEFAULT_POLICY
from agencies import _seed as seed
from agencies.bank import BankCore
from agencies.demo import Stack, customer_transfer
from broker.client import BusClient, bearer_metadata, error_details, read_ledger_file
from broker.hub._account_cases import CaseKey
from broker.hub._identifiers import Identifier
from broker.hub._risk_counts import RISK_COUNTS_BUCKET, CheckCounter
from broker.hub._risk_index import MarkIndex
from broker.hub._risk_marks import RISK_MARKS_BUCKET, MarkStore
from broker.hub._store import LazyBucket
from broker.protocol import NatsSettings, SystemClock, connect, generate_signing_key, load_agency_signing_key
from tests._wait import eventually
from tests.integration.cli_child import run_cli
from tests.integration.marks_case import open_case_for_marks
from tests.integration.stack_config import quick_stack_config

pytestmark = pytest.mark.integration

R = risk_pb2
S = common_pb2
POLICE = "police-310115"
OTHER_POLICE = "police-440300"
REGULATOR = "regulator-mps"
CASE = "SH-PD-2026-0714"
PHONE = "+8613900001234"
IMEI = "356789012345678"
CUSTOMER = "6225880199990001"  # a fresh customer of bank-cmb, opened by the test


def case_ref(number: str = CASE, owner: str = POLICE) -> common_pb2.CaseRef:
    return S.CaseRef(
        case_number=number,
        issuing_agency=owner,
        legal_instrument_id="沪公(浦)冻字[2026]0714号",
        legal_instrument_type=S.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE,
    )


def risk_policy(root: Path) -> Path:
    """The shipped policy with platforms not allowed to check and a rate a test can exceed."""
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    old = 'check = ["bank", "carrier", "platform", "police"]'
    assert text.count(old) == 1
    text = text.replace(old, 'check = ["bank", "carrier", "police"]')
    text = text.replace("check_rate = 1000", "check_rate = 200").replace(
        "check_burst = 2000", "check_burst = 200"
    )
    path = root / "risk-policy.toml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass
class Seen:
    """A MarkObserver recording what it is told."""

    calls: list[tuple[CaseKey, tuple[Identifier, ...], int, str]] = field(default_factory=list)

    async def seen(
        self,
        *,
        case: CaseKey,
        identifiers: Sequence[Identifier],
        source: requests_pb2.LinkageSource.ValueType,
        made_by: str,
    ) -> None:
        self.calls.append((case, tuple(identifiers), source, made_by))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("risk")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(root: Path) -> AsyncIterator[Stack]:
    from dataclasses import replace

    config = replace(quick_stack_config(root / "keys", root / "data"), policy=risk_policy(root))
    async with Stack(config) as running:
        async with running.client(POLICE) as police:
            # The case the marks rest on: a freeze of the mule account at bank-ccb.
            await open_case_for_marks(police, case_ref())
        yield running


@pytest.fixture
def seen(stack: Stack) -> Seen:
    observer = Seen()
    assert stack.broker is not None
    assert stack.broker.risk is not None
    stack.broker.risk.desk.observer = observer
    return observer


def account(number: str) -> risk_pb2.RiskIdentifier:
    return R.RiskIdentifier(bank_account=number)


async def refused(call: Awaitable[object]) -> tuple[grpc.StatusCode, str | None]:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        details = error_details(exc)
        return details.code, details.reason
    raise AssertionError("the call was not refused")


async def ledger_marks(stack: Stack) -> list[ledger_pb2.LedgerEntry]:
    async with stack.client(REGULATOR) as regulator:
        found: list[ledger_pb2.LedgerEntry] = []
        after = 0
        while True:
            page = await regulator.ledger_entries(after)
            found += [e for e in page.entries if e.kind == ledger_pb2.LEDGER_ENTRY_KIND_MARK]
            if page.next_after_seq >= page.head_seq or page.next_after_seq == after:
                return found
            after = page.next_after_seq


async def has_ledger_step(stack: Stack, mark_id: str, step: str) -> bool:
    return any(e.mark_id == mark_id and e.mark_step == step for e in await ledger_marks(stack))


# -- the registry ---------------------------------------------------------------------------------


async def test_a_police_mark_is_returned_by_a_banks_check(stack: Stack, seen: Seen) -> None:
    async with stack.client(POLICE) as police, stack.client("bank-icbc") as bank:
        message = police.risk.mark_message(
            account(seed.MULE_CCB_ACCOUNT),
            grade=R.RISK_GRADE_HIGH,
            reason=R.RISK_REASON_MULE_ACCOUNT,
            case=case_ref(),
        )
        marked = await police.risk.mark_signed(message)
        status = marked.status
        assert not marked.duplicate
        assert status.state == R.MARK_STATE_ACTIVE
        assert status.kind == requests_pb2.IDENTIFIER_KIND_BANK_ACCOUNT
        assert status.case_owner == POLICE
        assert status.marked_by == POLICE
        assert status.case_number == CASE
        assert seed.MULE_CCB_ACCOUNT not in status.identifier_digest
        # Default validity: the policy's 365 days.
        lasts = status.expires_at.ToDatetime() - status.marked_at.ToDatetime()
        assert lasts == timedelta(days=365)

        answer = await bank.risk.check([account(seed.MULE_CCB_ACCOUNT), account(seed.MULE_ABC_ACCOUNT)])
        assert [v.index for v in answer.verdicts] == [0, 1]
        assert answer.verdicts[0].grade == R.RISK_GRADE_HIGH
        assert answer.verdicts[0].reason == R.RISK_REASON_MULE_ACCOUNT
        assert answer.verdicts[0].marked_until == status.expires_at
        assert answer.verdicts[1].grade == R.RISK_GRADE_UNSPECIFIED

        # The same signed mark again is the same mark; another mark under its id is refused.
        again = await police.risk.mark_signed(message)
        assert again.duplicate
        assert again.status.mark_id == status.mark_id
        other = police.risk.mark(
            account(seed.MULE_CCB_ACCOUNT),
            grade=R.RISK_GRADE_LOW,
            reason=R.RISK_REASON_MULE_ACCOUNT,
            case=case_ref(),
            mark_id=status.mark_id,
        )
        assert await refused(other) == (grpc.StatusCode.ALREADY_EXISTS, "MARK_ID_TAKEN")

        listed = await police.risk.list_marks(CASE)
        assert status.mark_id in [m.mark_id for m in listed]
        counts = await bank.risk.check_counts()
        assert len(counts) == 1
        assert counts[0].agency == "bank-icbc"
        assert counts[0].checked >= 2
        assert counts[0].marked >= 1
    # The linkage seam heard of the active mark, with its digest only.
    assert (
        CaseKey(POLICE, CASE),
        (Identifier(requests_pb2.IDENTIFIER_KIND_BANK_ACCOUNT, status.identifier_digest),),
        requests_pb2.LINKAGE_SOURCE_MARK,
        status.mark_id,
    ) in seen.calls
    await eventually(lambda: has_ledger_step(stack, status.mark_id, "MARKED"), what="the MARKED ledger entry")


async def test_every_replica_sees_a_mark_made_on_another(stack: Stack) -> None:
    """A second index on the bucket (as another replica keeps) learns the mark from the watch."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="replica-two"))
    try:
        other = MarkIndex(MarkStore(LazyBucket(nc.jetstream(), RISK_MARKS_BUCKET)))
        async with other, stack.client(POLICE) as police:
            made = await police.risk.mark(
                R.RiskIdentifier(phone="+8613900005678"),
                grade=R.RISK_GRADE_MEDIUM,
                reason=R.RISK_REASON_FRAUD_NUMBER,
                case=case_ref(),
            )
            digest = made.status.identifier_digest

            def knows() -> bool:
                found = other.verdict(digest, SystemClock().now())
                return found is not None and found.grade == R.RISK_GRADE_MEDIUM

            await eventually(knows, what="the other replica's index holding the mark")
    finally:
        await nc.drain()


async def test_an_expired_mark_is_no_longer_returned(stack: Stack) -> None:
    async with stack.client(POLICE) as police, stack.client("bank-icbc") as bank:
        made = await police.risk.mark(
            R.RiskIdentifier(phone=PHONE),
            grade=R.RISK_GRADE_HIGH,
            reason=R.RISK_REASON_FRAUD_NUMBER,
            case=case_ref(),
            valid_for=timedelta(seconds=2),
        )
        mark_id = made.status.mark_id
        first = await bank.risk.check([R.RiskIdentifier(phone=PHONE)])
        # Marked, unless this machine took the whole two seconds between the two calls.
        assert first.verdicts[0].grade in (R.RISK_GRADE_HIGH, R.RISK_GRADE_UNSPECIFIED)

        async def unmarked() -> bool:
            answer = await bank.risk.check([R.RiskIdentifier(phone=PHONE)])
            return answer.verdicts[0].grade == R.RISK_GRADE_UNSPECIFIED

        await eventually(unmarked, what="the expired mark no longer returned")

        async def recorded_expired() -> bool:
            marks = {m.mark_id: m for m in await police.risk.list_marks(CASE)}
            return marks[mark_id].state == R.MARK_STATE_EXPIRED

        await eventually(recorded_expired, what="the mark recorded EXPIRED")
        # An expired mark is not lifted.
        assert await refused(police.risk.unmark(mark_id, reason="too late")) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "MARK_NOT_ACTIVE",
        )
    await eventually(lambda: has_ledger_step(stack, mark_id, "EXPIRED"), what="the EXPIRED ledger entry")


async def test_a_bank_proposes_and_the_police_owning_the_case_confirm(stack: Stack, seen: Seen) -> None:
    handset = R.RiskIdentifier(imei=IMEI)
    async with (
        stack.client("bank-ccb") as bank,
        stack.client(POLICE) as police,
        stack.client(OTHER_POLICE) as other,
    ):
        proposed = await bank.risk.mark(
            handset, grade=R.RISK_GRADE_HIGH, reason=R.RISK_REASON_FRAUD_DEVICE, case=case_ref()
        )
        mark_id = proposed.status.mark_id
        assert proposed.status.state == R.MARK_STATE_PROPOSED
        assert proposed.status.marked_by == "bank-ccb"
        assert (await bank.risk.check([handset])).verdicts[0].grade == R.RISK_GRADE_UNSPECIFIED
        assert not [c for c in seen.calls if c[3] == mark_id]

        # Only the police owning the case decide.
        for stranger in (bank, other):
            decided = stranger.risk.decide_mark(mark_id, confirm=True)
            assert await refused(decided) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_CASE_OWNER")
        confirmed = await police.risk.decide_mark(mark_id, confirm=True, reason="handset seen in two cases")
        assert confirmed.state == R.MARK_STATE_ACTIVE
        assert confirmed.decided_by == POLICE
        verdict = (await bank.risk.check([handset])).verdicts[0]
        assert verdict.grade == R.RISK_GRADE_HIGH
        assert verdict.reason == R.RISK_REASON_FRAUD_DEVICE
        # Decided once.
        assert await refused(police.risk.decide_mark(mark_id, confirm=False)) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "MARK_NOT_PROPOSED",
        )
    assert [c for c in seen.calls if c[3] == mark_id]
    await eventually(lambda: has_ledger_step(stack, mark_id, "PROPOSED"), what="PROPOSED in the ledger")
    await eventually(lambda: has_ledger_step(stack, mark_id, "CONFIRMED"), what="CONFIRMED in the ledger")


async def test_the_police_lift_a_mark(stack: Stack) -> None:
    target = account(seed.MULE_ICBC_ACCOUNT)
    async with (
        stack.client(POLICE) as police,
        stack.client(OTHER_POLICE) as other,
        stack.client("bank-abc") as bank,
    ):
        made = await police.risk.mark(
            target, grade=R.RISK_GRADE_MEDIUM, reason=R.RISK_REASON_RENTED_OUT, case=case_ref()
        )
        mark_id = made.status.mark_id
        assert (await bank.risk.check([target])).verdicts[0].grade == R.RISK_GRADE_MEDIUM
        lift = other.risk.unmark(mark_id, reason="not theirs")
        assert await refused(lift) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_CASE_OWNER")
        lifted = await police.risk.unmark(mark_id, reason="appeal upheld")
        assert lifted.state == R.MARK_STATE_UNMARKED
        assert lifted.decided_by == POLICE
        assert (await bank.risk.check([target])).verdicts[0].grade == R.RISK_GRADE_UNSPECIFIED
    await eventually(lambda: has_ledger_step(stack, mark_id, "UNMARKED"), what="UNMARKED in the ledger")


# -- hostile calls: a specific refusal each, nothing stored ------------------------------------------


async def stored_mark_ids(stack: Stack) -> set[str]:
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="risk-probe"))
    try:
        kv = await nc.jetstream().key_value(RISK_MARKS_BUCKET)
        try:
            return set(await kv.keys())
        except nats.js.errors.NoKeysError:
            return set()
    finally:
        await nc.drain()


async def test_hostile_marks_are_refused_and_store_nothing(stack: Stack) -> None:
    def mark_as(
        client: BusClient, *, case: common_pb2.CaseRef | None = None, valid_for: timedelta | None = None
    ) -> Callable[[], Awaitable[object]]:
        identifier = account(seed.MULE_CCB2_ACCOUNT)

        async def call() -> object:
            message = client.risk.mark_message(
                identifier,
                grade=R.RISK_GRADE_HIGH,
                reason=R.RISK_REASON_MULE_ACCOUNT,
                case=case if case is not None else case_ref(),
                valid_for=valid_for,
                mark_id=mark_ids[-1],
            )
            return await client.risk.mark_signed(message)

        return call

    mark_ids: list[str] = []
    async with (
        stack.client(POLICE) as police,
        stack.client(OTHER_POLICE) as other,
        stack.client("carrier-cmcc") as carrier,
        stack.client("bank-abc") as stranger_bank,
        stack.client(REGULATOR) as regulator,
    ):
        table: list[tuple[str, Callable[[], Awaitable[object]], grpc.StatusCode, str]] = [
            (
                "a carrier (policy: no)",
                mark_as(carrier),
                grpc.StatusCode.PERMISSION_DENIED,
                "MARK_NOT_ALLOWED",
            ),
            ("a regulator", mark_as(regulator), grpc.StatusCode.PERMISSION_DENIED, "MARK_NOT_ALLOWED"),
            (
                "without a case",
                mark_as(police, case=S.CaseRef()),
                grpc.StatusCode.INVALID_ARGUMENT,
                "CASE_REQUIRED",
            ),
            (
                "on a case the broker does not know",
                mark_as(police, case=case_ref("SH-PD-2026-9999")),
                grpc.StatusCode.FAILED_PRECONDITION,
                "UNKNOWN_CASE",
            ),
            (
                "on a case owned by a bank",
                mark_as(police, case=case_ref(owner="bank-icbc")),
                grpc.StatusCode.FAILED_PRECONDITION,
                "CASE_NOT_POLICE",
            ),
            (
                "by police on another police's case",
                mark_as(other),
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_CASE_OWNER",
            ),
            (
                "proposed by a bank no party to the case",
                mark_as(stranger_bank),
                grpc.StatusCode.PERMISSION_DENIED,
                "NOT_CASE_PARTY",
            ),
            (
                "for longer than policy allows",
                mark_as(police, valid_for=timedelta(days=1827)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "VALIDITY_TOO_LONG",
            ),
        ]
        for what, call, code, reason in table:
            mark_ids.append(str(uuid.uuid4()))
            assert await refused(call()) == (code, reason), what
        assert await refused(police.risk.unmark(str(uuid.uuid4()), reason="none")) == (
            grpc.StatusCode.NOT_FOUND,
            "NO_SUCH_MARK",
        )
    stored = await stored_mark_ids(stack)
    assert not stored & set(mark_ids)
    entries = await ledger_marks(stack)
    assert not {e.mark_id for e in entries} & set(mark_ids)


async def test_hostile_checks_are_refused(stack: Stack, root: Path) -> None:
    probe = [account(seed.MULE_CCB_ACCOUNT)]
    async with stack.client("platform-wechat") as platform:
        assert await refused(platform.risk.check(probe)) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "CHECK_NOT_ALLOWED",
        )
    # Not a member: an agency the directory does not list, with a key of its own.
    async with BusClient(
        stack.broker_address, agency_id="bank-ghost", signing_key=generate_signing_key()
    ) as ghost:
        assert await refused(ghost.risk.check(probe)) == (grpc.StatusCode.UNAUTHENTICATED, "UNKNOWN_AGENCY")
    # A member with a forged key.
    async with BusClient(
        stack.broker_address, agency_id="bank-icbc", signing_key=generate_signing_key()
    ) as forged:
        code, _ = await refused(forged.risk.check(probe))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    # A token bound (claim req) to other bytes than the check it comes with.
    async with stack.client("bank-icbc") as bank:
        stub = risk_pb2_grpc.RiskServiceStub(bank.channel)
        request = R.CheckRequest(identifiers=probe, purpose=R.CHECK_PURPOSE_PAYMENT)
        key = load_agency_signing_key(root / "keys", "bank-icbc")
        other = R.CheckRequest(identifiers=[account(seed.MULE_ABC_ACCOUNT)], purpose=R.CHECK_PURPOSE_PAYMENT)
        metadata = bearer_metadata(
            key, agency_id="bank-icbc", clock=SystemClock(), request_payload=other.SerializeToString()
        )
        assert await refused(stub.Check(request, metadata=metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED,
            "TOKEN_NOT_FOR_THIS_REQUEST",
        )
        # Bound to its own bytes it is good, and (bound) good again: it can only repeat this check.
        metadata = bearer_metadata(
            key, agency_id="bank-icbc", clock=SystemClock(), request_payload=request.SerializeToString()
        )
        for _ in range(2):
            answer = await stub.Check(request, metadata=metadata)
            assert answer.verdicts[0].grade == R.RISK_GRADE_HIGH
    # A flood beyond the per-agency rate (200 identifiers per second, 200 at once).
    async with stack.client("bank-cmb") as flooding:
        batch = [account(seed.MULE_ABC_ACCOUNT)] * 100
        for _ in range(50):
            try:
                await flooding.risk.check(batch)
            except grpc.aio.AioRpcError as exc:
                details = error_details(exc)
                break
        else:
            raise AssertionError("a flood of checks was never throttled")
        assert details.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.reason == "CHECK_RATE_EXCEEDED"
        assert details.retry_delay is not None
        assert details.retry_delay > timedelta(0)
        counts = await flooding.risk.check_counts()
        assert counts[0].throttled >= 1
        assert counts[0].checked >= 100
        # Each agency reads its own counts; a regulator reads every agency's.
        assert await refused(flooding.risk.check_counts("bank-icbc")) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "NOT_OWN_COUNTS",
        )
    async with stack.client(REGULATOR) as regulator:
        every = {c.agency for c in await regulator.risk.check_counts()}
        assert {"bank-cmb", "bank-icbc"} <= every


async def test_check_counts_survive_a_restart(stack: Stack) -> None:
    """Counts flushed at shutdown are what the next counter (a restarted broker) starts from."""
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="counts-probe"))
    try:
        bucket = LazyBucket(nc.jetstream(), RISK_COUNTS_BUCKET)
        agency = f"bank-probe-{uuid.uuid4().hex[:6]}"
        async with CheckCounter(bucket, clock=SystemClock(), flush_interval=60) as first:
            first.count(agency, checked=7, marked=2)
            first.throttle(agency)
        second = CheckCounter(bucket, clock=SystemClock())
        [counted] = await second.counts(agency)
        assert (counted.checked, counted.marked, counted.throttled) == (7, 2, 1)
    finally:
        await nc.drain()


# -- the pre-payment check at the reference bank ------------------------------------------------------


async def test_a_transfer_to_a_high_graded_account_is_refused(stack: Stack) -> None:
    core = stack.agencies["bank-cmb"].core
    assert isinstance(core, BankCore)
    if core.account(CUSTOMER) is None:
        core.open_account(CUSTOMER, "测试客户", currency="CNY", balance=1_000_000)
    async with stack.client(POLICE) as police:
        await police.risk.mark(
            account(seed.MULE_CCB2_ACCOUNT),
            grade=R.RISK_GRADE_HIGH,
            reason=R.RISK_REASON_MULE_ACCOUNT,
            case=case_ref(),
        )
    before = core.balance(CUSTOMER)
    refused_transfer = await customer_transfer(
        stack,
        bank="bank-cmb",
        from_account=CUSTOMER,
        to_account=seed.MULE_CCB2_ACCOUNT,
        to_bank="bank-ccb",
        amount=50_000,
    )
    assert not refused_transfer.made
    assert (refused_transfer.grade, refused_transfer.reason) == (
        "RISK_GRADE_HIGH",
        "RISK_REASON_MULE_ACCOUNT",
    )
    assert core.balance(CUSTOMER) == before  # no money moved

    made = await customer_transfer(
        stack,
        bank="bank-cmb",
        from_account=CUSTOMER,
        to_account=seed.MULE_ABC_ACCOUNT,
        to_bank="bank-abc",
        amount=50_000,
    )
    assert made.made
    assert made.transfer_id
    assert made.grade == "RISK_GRADE_UNSPECIFIED"
    assert core.balance(CUSTOMER) == before - 50_000


# -- the command line ------------------------------------------------------------------------------


async def test_the_risk_commands(stack: Stack, root: Path) -> None:
    async def cli(*args: str) -> dict[str, Any]:
        code, out, err = await run_cli(stack.broker_address, root / "keys", "risk", *args)
        assert code == 0, err
        document: dict[str, Any] = json.loads(out)
        return document

    number = "6228480018800000001"
    made = await cli(
        "mark",
        f"account:{number}",
        "--as",
        POLICE,
        "--grade",
        "high",
        "--reason",
        "mule-account",
        "--case",
        CASE,
        "--valid-days",
        "30",
        "--json",
    )
    mark_id = made["status"]["mark_id"]
    assert made["status"]["state"] == "MARK_STATE_ACTIVE"
    checked = await cli("check", f"account:{number}", "phone:+8613900009999", "--as", "bank-icbc", "--json")
    assert checked["verdicts"][0]["grade"] == "RISK_GRADE_HIGH"
    assert checked["verdicts"][1].get("grade", "RISK_GRADE_UNSPECIFIED") == "RISK_GRADE_UNSPECIFIED"
    listed = await cli("marks", CASE, "--as", POLICE, "--json")
    assert mark_id in [m["mark_id"] for m in listed["marks"]]
    lifted = await cli("unmark", mark_id, "--as", POLICE, "--reason", "mistaken", "--json")
    assert lifted["status"]["state"] == "MARK_STATE_UNMARKED"
    counts = await cli("counts", "--as", "bank-icbc", "--json")
    assert counts["counts"][0]["agency"] == "bank-icbc"
    code, _out, err = await run_cli(
        stack.broker_address,
        root / "keys",
        "risk",
        "mark",
        f"account:{number}",
        "--as",
        "carrier-cmcc",
        "--grade",
        "low",
        "--reason",
        "mule-account",
        "--case",
        CASE,
        "--owner",
        POLICE,
    )
    assert code == 1
    assert "MARK_NOT_ALLOWED" in err


# -- privacy: no identifier in clear in NATS --------------------------------------------------------


async def test_no_identifier_is_in_clear_anywhere_in_nats(stack: Stack) -> None:
    """Runs last: every mark, check and count of this module is in the streams it scans."""
    needles = [
        seed.MULE_CCB_ACCOUNT,
        seed.MULE_CCB2_ACCOUNT,
        seed.MULE_ICBC_ACCOUNT,
        seed.MULE_ABC_ACCOUNT,
        PHONE,
        PHONE.removeprefix("+"),
        IMEI,
        "+8613900005678",
        CUSTOMER,
    ]
    nc = await connect(NatsSettings.from_url(stack.nats_url, name="risk-privacy-scan"))
    scanned: dict[str, int] = {}
    findings: list[str] = []
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name
            assert name is not None
            scanned[name] = 0
            if not info.state.messages:
                continue
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    msg = await js.get_msg(name, seq)
                except nats.js.errors.NotFoundError:
                    continue
                scanned[name] += 1
                headers = "".join(f"{k}: {v}\n" for k, v in (msg.headers or {}).items())
                blob = (msg.subject or "").encode() + headers.encode() + (msg.data or b"")
                findings += [f"{name} seq {seq}: {n[:4]}..." for n in needles if n.encode() in blob]
    finally:
        await nc.drain()
    assert scanned.get(f"KV_{RISK_MARKS_BUCKET}", 0) >= 5, scanned
    assert scanned.get(f"KV_{RISK_COUNTS_BUCKET}", 0) >= 1, scanned
    assert any(name.startswith("GC_LEDGER") and n for name, n in scanned.items()), scanned
    assert not findings, "identifiers in clear:\n" + "\n".join(findings)


async def test_the_ledger_with_mark_entries_verifies_offline(stack: Stack, root: Path) -> None:
    export = root / "ledger.jsonl"
    code, _out, err = await run_cli(
        stack.broker_address, root / "keys", "ledger", "export", "--as", REGULATOR, "--out", str(export)
    )
    assert code == 0, err
    entries = [
        ledger_pb2.LedgerEntry.FromString(r.entry) for r in read_ledger_file(export).records if r.entry
    ]
    steps = {e.mark_step for e in entries if e.kind == ledger_pb2.LEDGER_ENTRY_KIND_MARK}
    assert {"MARKED", "PROPOSED", "CONFIRMED", "UNMARKED", "EXPIRED"} <= steps
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "broker.cli", "--state-dir", str(root / "keys"), "ledger", "verify", str(export), "--json"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err_bytes = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, (out.decode(), err_bytes.decode())
