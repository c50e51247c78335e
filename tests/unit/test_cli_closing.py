"""``greenchannel return | appeal`` and ``submit release --amount`` without a stack: help, argument
checks (exit 2, nothing sent), the request built, and what is printed for an allocation, returns
and an appeal's lifting orders (human and JSON).

The end-to-end runs against a broker are in tests/integration: test_partial_release.py for the
partial release, test_cli_closing.py for return and appeal (README.md's examples as written).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import bus_pb2, common_pb2, lifecycle_pb2, requests_pb2, results_pb2, trail_pb2

from broker.cli import main
from broker.cli._closing import Payout, build_return, parse_payout
from broker.cli._main import parser_for
from broker.cli._render import status_lines
from broker.cli._render_closing import (
    allocation_document,
    allocation_lines,
    lifting_document,
    lifting_lines,
    payable_now,
    returns_document,
    returns_lines,
)
from broker.cli._requests import build_request
from broker.protocol import FINAL_STATES
from tests._readme import readme_examples

NOW = datetime(2026, 12, 3, 18, 0, tzinfo=UTC)
POLICE = "police-310115"
CASE = "SH-PD-2026-1203-0013"
ACCOUNT = ["--account", "6222020200007770013", "--holder", "赵某"]


def cny(minor_units: int) -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=minor_units)


def ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    # main() points structlog at this test's captured stderr; later tests in the same process
    # (a broker logging a refusal) would then write to a closed file.
    monkeypatch.setattr("broker.cli._main.configure_logging", lambda *args, **kwargs: None)


def exit_code(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as done:
        code = int(done.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


# -- help and argument checks ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["return", "plan"],
        ["return", "order"],
        ["appeal", "file"],
        ["appeal", "decide"],
        ["submit", "release"],
    ],
)
def test_every_new_subcommand_helps_with_json(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_code([*command, "--help"], capsys)
    assert code == 0
    assert "--json" in out


def test_the_top_level_help_lists_return_and_appeal(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_code(["--help"], capsys)
    assert code == 0
    assert "return" in out
    assert "appeal" in out


@pytest.mark.parametrize(
    ("pay", "words"),
    [
        ("6222020200001234567:王某", "VICTIM_ACCOUNT:HOLDER:AMOUNT"),
        ("6222020200001234567:王某:3000.00:x", "VICTIM_ACCOUNT:HOLDER:AMOUNT"),
        ("6222020200001234567::3000.00", "VICTIM_ACCOUNT:HOLDER:AMOUNT"),
        ("62 22:王某:3000.00", "not an account number"),
        ("6222020200001234567:王某:3000.001", "more than 2 decimal places"),
        ("6222020200001234567:王某:-5", "negative"),
        ("6222020200001234567:王某:1e3", "not a decimal amount"),
    ],
)
def test_return_order_refuses_a_bad_payout(pay: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["return", "order", "--as", POLICE, "--case", CASE, *ACCOUNT, "--pay", pay, "--json"]
    code, out, err = exit_code(argv, capsys)
    assert code == 2
    assert "--pay" in err
    assert words in err
    assert out == ""


def test_appeal_decide_needs_exactly_one_decision(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["appeal", "decide", "--as", POLICE, "0190aaaa-0000-7000-8000-000000000001", "--reason", "checked"]
    assert exit_code(base, capsys)[0] == 2
    assert exit_code([*base, "--uphold", "--lift"], capsys)[0] == 2


def test_appeal_file_refuses_a_missing_statement_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "--state-dir",
        str(tmp_path),
        "appeal",
        "file",
        "--as",
        "bank-icbc",
        "--restriction",
        "0190aaaa-0000-7000-8000-000000000001",
        "--ground",
        "not-involved",
        "--statement-file",
        str(tmp_path / "absent.txt"),
        "--ticket",
        "ICBC-AP-0001",
        "--broker",
        "127.0.0.1:1",
        "--json",
    ]
    code, out, err = exit_code(argv, capsys)
    assert code == 2
    assert "cannot read the appeal's files" in err
    assert json.loads(out)["error"]["message"].startswith("cannot read")
    # A ground the contract does not know is an argparse error.
    argv[argv.index("not-involved")] = "bored"
    assert exit_code(argv, capsys)[0] == 2


def test_release_living_expenses_needs_an_amount(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "--state-dir",
        str(tmp_path),
        "submit",
        "release",
        "--as",
        POLICE,
        "--case",
        CASE,
        "--target",
        "0190aaaa-0000-7000-8000-000000000001",
        "--account",
        "6222020200007770013",
        "--name",
        "赵某",
        "--living-expenses",
        "--broker",
        "127.0.0.1:1",
    ]
    code, _, err = exit_code(argv, capsys)
    assert code == 2
    assert "--living-expenses needs --amount" in err
    code, _, err = exit_code([*argv, "--amount", "0"], capsys)
    assert code == 2
    assert "zero" in err


# -- the requests built ---------------------------------------------------------------------------


def parsed(argv: list[str]) -> argparse.Namespace:
    return parser_for(argv).parse_args(argv)


def test_release_with_an_amount_for_living_expenses() -> None:
    args = parsed(
        [
            "submit",
            "release",
            "--as",
            POLICE,
            "--case",
            CASE,
            "--target",
            "0190aaaa-0000-7000-8000-000000000001",
            "--account",
            "6222020200007770013",
            "--name",
            "赵某",
            "--amount",
            "2000.50",
            "--living-expenses",
        ]
    )
    release = build_request(args, now=NOW).release
    assert release.amount == cny(200_050)
    assert release.purpose == requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    # Without --amount the release lifts all, as before.
    args.amount, args.living_expenses = None, False
    release = build_request(args, now=NOW).release
    assert not release.HasField("amount")
    assert release.purpose == requests_pb2.RELEASE_PURPOSE_UNSPECIFIED


def stop_payment(*extra: str) -> list[str]:
    return [
        "submit",
        "stop-payment",
        "--as",
        POLICE,
        "--case",
        CASE,
        "--account",
        "6222020200001234567",
        "--name",
        "李某",
        "--amount",
        "48000.00",
        *extra,
    ]


@pytest.mark.parametrize("kind", ["stop-payment", "freeze"])
def test_a_hold_names_the_victim_and_when_the_money_arrived(kind: str) -> None:
    argv = stop_payment(
        "--victim-account", "6225880137706512:陈某某:bank-cmb", "--deposited-at", "2026-11-21T09:30:00+08:00"
    )
    argv[1] = kind
    request = build_request(parsed(argv), now=NOW)
    body = request.stop_payment if kind == "stop-payment" else request.freeze
    assert body.victim_account == common_pb2.BankAccountRef(
        account_number="6225880137706512", holder_name="陈某某", bank="bank-cmb"
    )
    assert body.deposited_at.ToDatetime(tzinfo=UTC) == datetime(2026, 11, 21, 1, 30, tzinfo=UTC)
    # The bank is optional (routed by the number); without the options nothing is named, as before.
    named = parsed(stop_payment("--victim-account", "6225880137706512:陈某某"))
    body = build_request(named, now=NOW).stop_payment
    assert (body.victim_account.holder_name, body.victim_account.bank) == ("陈某某", "")
    assert not body.HasField("deposited_at")
    body = build_request(parsed(stop_payment()), now=NOW).stop_payment
    assert not body.HasField("victim_account")
    assert not body.HasField("deposited_at")


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--victim-account", "6225880137706512"], "ACCOUNT:HOLDER[:BANK]"),
        (["--victim-account", "6225880137706512::bank-cmb"], "ACCOUNT:HOLDER[:BANK]"),
        (["--victim-account", "62 25:陈某某"], "not an account number"),
        (["--victim-account", "6225880137706512:陈某某", "--deposited-at", "yesterday"], "ISO 8601"),
        (["--deposited-at", "2026-11-21T09:30:00+08:00"], "--deposited-at needs --victim-account"),
        (
            ["--victim-account", "6225880137706512:陈某某", "--deposited-at", "2999-01-01T00:00Z"],
            "in the future",
        ),
    ],
)
def test_stop_payment_refuses_a_bad_victim(
    extra: list[str], words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = exit_code(["--state-dir", str(tmp_path), *stop_payment(*extra)], capsys)
    assert code == 2
    assert words in err
    assert out == ""


def test_stop_payment_helps_with_the_victim_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = exit_code(["submit", "stop-payment", "--help"], capsys)
    assert code == 0
    assert "--victim-account ACCOUNT:HOLDER[:BANK]" in out
    assert "--deposited-at RFC3339" in out


def test_the_readme_examples_use_options_that_exist() -> None:
    examples = readme_examples()
    assert {tuple(argv[:2]) for argv in examples} >= {
        ("return", "plan"),
        ("return", "order"),
        ("appeal", "file"),
        ("appeal", "decide"),
        ("submit", "stop-payment"),
        ("submit", "release"),
    }
    for argv in examples:
        parser_for(argv).parse_args(argv)  # exits 2 on an option that does not exist


def test_return_order_builds_a_return_under_a_return_notice() -> None:
    args = parsed(
        [
            "return",
            "order",
            "--as",
            POLICE,
            "--case",
            CASE,
            *ACCOUNT,
            "--bank",
            "bank-icbc",
            "--pay",
            "6222020200001234567:王某:3000.00",
            "--pay",
            "6217000000000000001:钱某:0.01",
            "--instrument",
            "沪公(浦)返字[2026]1203号",
        ]
    )
    assert args.pay[0] == Payout(account="6222020200001234567", holder="王某", minor_units=300_000)
    request = build_return(args)
    assert request.case_ref.legal_instrument_type == common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE
    assert request.case_ref.legal_instrument_id == "沪公(浦)返字[2026]1203号"
    assert request.case_ref.issuing_agency == POLICE
    order = request.return_funds
    assert (order.account.account_number, order.account.bank) == ("6222020200007770013", "bank-icbc")
    assert [(p.victim_account.holder_name, p.amount.minor_units) for p in order.payouts] == [
        ("王某", 300_000),
        ("钱某", 1),
    ]


def test_parse_payout_keeps_the_parts() -> None:
    assert parse_payout(" 6222020200001234567 : 王某 : 12 ") == Payout("6222020200001234567", "王某", 1200)


# -- rendering ------------------------------------------------------------------------------------


def allocation() -> trail_pb2.Allocation:
    traced = trail_pb2.ClaimShare(
        case_number=CASE,
        issuing_agency=POLICE,
        victim_id="a1b2c3d4e5f60718293a4b5c",
        claim_id="0190aaaa-0000-7000-8000-00000000000a",
        claimed=cny(500_000),
        deposited_at=ts(NOW - timedelta(days=2)),
        rule=trail_pb2.ALLOCATION_RULE_DEPOSIT_ORDER,
        share=cny(500_000),
        returned=cny(100_000),
        reserved=cny(50_000),
    )
    untraced = trail_pb2.ClaimShare(
        case_number="GD-SZ-2026-0009",
        issuing_agency="police-440305",
        victim_id="ffeeddccbbaa998877665544",
        claim_id="0190aaaa-0000-7000-8000-00000000000b",
        claimed=cny(800_000),
        rule=trail_pb2.ALLOCATION_RULE_PRO_RATA,
        share=cny(300_000),
        payable_after=ts(NOW + timedelta(days=30)),
    )
    return trail_pb2.Allocation(
        node_id="0123456789abcdef0123",
        bank="bank-icbc",
        frozen=cny(900_000),
        claims=[traced, untraced],
        unallocated=cny(100_000),
        computed_at=ts(NOW),
        notice_ends_at=ts(NOW + timedelta(days=30)),
    )


def test_payable_now_is_what_is_left_of_a_share_past_its_notice() -> None:
    traced, untraced = allocation().claims
    assert payable_now(traced, NOW) == 350_000
    assert payable_now(untraced, NOW) == 0
    assert payable_now(untraced, NOW + timedelta(days=31)) == 300_000


def test_allocation_for_people_and_programs() -> None:
    lines = allocation_lines(allocation(), now=NOW)
    text = "\n".join(lines)
    assert "frozen 9,000.00 CNY, unallocated 1,000.00 CNY" in text
    header = lines[2]
    for column in (
        "case",
        "victim",
        "rule",
        "claimed",
        "share",
        "returned",
        "reserved",
        "payable now",
        "after",
    ):
        assert column in header
    assert "a1b2c3d4e5f6" in text
    assert "a1b2c3d4e5f60718" not in text
    traced_row = next(line for line in lines if CASE in line)
    assert "DEPOSIT_ORDER" in traced_row
    assert "3,500.00 CNY" in traced_row
    document = json.loads(json.dumps(allocation_document(allocation(), now=NOW)))
    traced, untraced = document["claims"]
    assert traced["payable_now"] == 350_000
    assert traced["rule"] == "DEPOSIT_ORDER"
    assert untraced["payable_now"] == 0
    assert untraced["payable_after"].startswith("2027-01-02")
    assert document["allocation"]["frozen"] == {"currency": "CNY", "minor_units": "900000"}
    assert allocation_lines(trail_pb2.Allocation(frozen=cny(0)), now=NOW)[-1] == "  no claims"


def test_returns_are_shown_redacted() -> None:
    result = results_pb2.Result(
        outcome=common_pb2.REQUEST_STATE_EXECUTED,
        amount_returned=cny(350_000),
        returns=[results_pb2.ReturnedPayout(payout_index=0, amount=cny(350_000), transfer_id="T1")],
    )
    lines = returns_lines(result, None)
    assert lines[0] == "  returned 3,500.00 CNY"
    assert "sealed" in lines[-1]
    assert "T1" in lines[-1]
    opened = results_pb2.ResultDetails(
        returns=[
            results_pb2.ReturnedPayout(
                payout_index=0,
                amount=cny(350_000),
                transfer_id="T1",
                victim_account=common_pb2.BankAccountRef(account_number="6222020200001234567"),
            )
        ]
    )
    assert "6222****4567" in returns_lines(result, opened)[-1]
    assert returns_document(result) == {
        "amount_returned": 350_000,
        "currency": "CNY",
        "returns": [{"payout_index": 0, "amount": 350_000, "currency": "CNY", "transfer_id": "T1"}],
    }


def test_an_appeal_with_its_lifting_orders() -> None:
    appeal = lifecycle_pb2.RequestStatus(
        id="0190aaaa-0000-7000-8000-0000000000a0",
        type=common_pb2.REQUEST_TYPE_APPEAL,
        state=common_pb2.REQUEST_STATE_EXECUTED,
        result=results_pb2.Result(
            outcome=common_pb2.REQUEST_STATE_EXECUTED, appeal=results_pb2.APPEAL_DECISION_LIFTED
        ),
    )
    lift = lifecycle_pb2.RequestStatus(
        id="0190aaaa-0000-7000-8000-0000000000a1",
        type=common_pb2.REQUEST_TYPE_RELEASE,
        recipient="bank-icbc",
        target_id="0190aaaa-0000-7000-8000-0000000000f0",
        parent_id=appeal.id,
        state=common_pb2.REQUEST_STATE_EXECUTED,
    )
    lines = lifting_lines(appeal, [lift])
    assert lines[0] == "appeal decision  LIFTED"
    assert any(lift.id in line and "RELEASE" in line and "EXECUTED" in line for line in lines)
    document = json.loads(json.dumps(lifting_document(appeal, [lift])))
    assert document["decision"] == "LIFTED"
    assert document["lifting"] == [
        {
            "id": lift.id,
            "type": "RELEASE",
            "recipient": "bank-icbc",
            "target_id": lift.target_id,
            "state": "EXECUTED",
            "reason": "",
        }
    ]
    undecided = lifecycle_pb2.RequestStatus(id=appeal.id, type=common_pb2.REQUEST_TYPE_APPEAL)
    assert lifting_lines(undecided, [])[0] == "appeal decision  not decided yet"
    assert lifting_document(undecided, None) == {"decision": None, "mark_id": None, "lifting": None}
    assert "not readable" in lifting_lines(undecided, None)[-1]


def test_a_release_shows_what_it_asked() -> None:
    seed = lifecycle_pb2.ReleaseSeed(
        amount=cny(200_000), purpose=requests_pb2.RELEASE_PURPOSE_LIVING_EXPENSES
    )
    status = lifecycle_pb2.RequestStatus(type=common_pb2.REQUEST_TYPE_RELEASE, release_seed=seed)
    status.result.amount_released.CopyFrom(cny(200_000))
    status.result.amount_frozen.CopyFrom(cny(800_000))
    lines = status_lines(status)
    assert any(line.split() == ["release", "2,000.00", "CNY", "for", "living", "expenses"] for line in lines)
    assert any(line.split() == ["released", "2,000.00", "CNY"] for line in lines)
    assert any(line.split() == ["frozen", "8,000.00", "CNY"] for line in lines)
    whole = lifecycle_pb2.RequestStatus(
        type=common_pb2.REQUEST_TYPE_RELEASE, release_seed=lifecycle_pb2.ReleaseSeed()
    )
    assert any(line.split() == ["release", "all", "of", "the", "hold"] for line in status_lines(whole))
    item = lifecycle_pb2.RequestStatus(
        type=common_pb2.REQUEST_TYPE_RELEASE,
        release_seed=lifecycle_pb2.ReleaseSeed(
            item_index=3, purpose=requests_pb2.RELEASE_PURPOSE_APPEAL_LIFTED
        ),
    )
    assert any(
        line.split() == ["release", "item", "3", "of", "the", "batch", "for", "appeal", "lifted"]
        for line in status_lines(item)
    )


# -- the commands against a stand-in client (the broker side lands with the other parts) ------------


class StandIn:
    """Answers the calls the closing commands make, recording them; stands in for BusClient."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.reached = common_pb2.REQUEST_STATE_EXECUTED
        """The state ``wait_for`` finds any request in."""

    async def wait_for(
        self, request_id: str, states: Collection[common_pb2.RequestState.ValueType], *, within: timedelta
    ) -> lifecycle_pb2.RequestStatus:
        self.calls.append(("wait_for", (request_id, frozenset(states))))
        return lifecycle_pb2.RequestStatus(
            id=request_id, type=common_pb2.REQUEST_TYPE_RELEASE, recipient="bank-icbc", state=self.reached
        )

    async def __aenter__(self) -> StandIn:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def allocation(
        self, case_number: str, account: common_pb2.BankAccountRef, *, issuing_agency: str = ""
    ) -> trail_pb2.Allocation:
        self.calls.append(("allocation", (case_number, account, issuing_agency)))
        return allocation()

    # The signature of BusClient.file_appeal (the appeals part), for this test only.
    async def file_appeal(
        self,
        restriction_request_id: str,
        *,
        ground: requests_pb2.AppealGround.ValueType,
        statement: requests_pb2.AppealStatement,
        ticket: str,
    ) -> lifecycle_pb2.RequestStatus:
        self.calls.append(("file_appeal", (restriction_request_id, ground, statement, ticket)))
        return lifecycle_pb2.RequestStatus(
            id="0190aaaa-0000-7000-8000-0000000000a0",
            type=common_pb2.REQUEST_TYPE_APPEAL,
            sender="bank-icbc",
            recipient=POLICE,
            state=common_pb2.REQUEST_STATE_SUBMITTED,
        )

    async def file_mark_appeal(
        self,
        mark_id: str,
        identifier: requests_pb2.HolderIdentifier,
        *,
        police: str,
        case_number: str,
        ground: requests_pb2.AppealGround.ValueType,
        statement: requests_pb2.AppealStatement,
        ticket: str,
    ) -> lifecycle_pb2.RequestStatus:
        self.calls.append(("file_mark_appeal", (mark_id, identifier, police, case_number, ground, ticket)))
        return lifecycle_pb2.RequestStatus(
            id="0190aaaa-0000-7000-8000-0000000000a0",
            type=common_pb2.REQUEST_TYPE_APPEAL,
            sender="bank-icbc",
            recipient=police,
            state=common_pb2.REQUEST_STATE_SUBMITTED,
            appealed_mark_id=mark_id,
        )

    async def decide_appeal(
        self, appeal_id: str, decision: results_pb2.AppealDecision.ValueType, reason: str
    ) -> bus_pb2.DecideAppealResponse:
        self.calls.append(("decide_appeal", (appeal_id, decision, reason)))
        status = lifecycle_pb2.RequestStatus(
            id=appeal_id,
            type=common_pb2.REQUEST_TYPE_APPEAL,
            state=common_pb2.REQUEST_STATE_EXECUTED,
            result=results_pb2.Result(outcome=common_pb2.REQUEST_STATE_EXECUTED, appeal=decision),
        )
        lift = lifecycle_pb2.RequestStatus(
            id="0190aaaa-0000-7000-8000-0000000000a1",
            type=common_pb2.REQUEST_TYPE_RELEASE,
            recipient="bank-icbc",
            target_id="0190aaaa-0000-7000-8000-0000000000f0",
            parent_id=appeal_id,
            state=common_pb2.REQUEST_STATE_SUBMITTED,
        )
        lifting = [lift] if decision == results_pb2.APPEAL_DECISION_LIFTED else []
        return bus_pb2.DecideAppealResponse(status=status, lifting=lifting)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> StandIn:
    bus = StandIn()
    monkeypatch.setattr("broker.cli._closing.client", lambda args: bus)
    return bus


def test_return_plan_prints_the_allocation(stand_in: StandIn, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["return", "plan", "--as", POLICE, "--case", CASE, *ACCOUNT, "--bank", "bank-icbc", "--json"]
    code, out, _ = exit_code(argv, capsys)
    assert code == 0
    document = json.loads(out)
    assert document["case_number"] == CASE
    assert [claim["rule"] for claim in document["claims"]] == ["DEPOSIT_ORDER", "PRO_RATA"]
    (name, (case_number, account, owner)), *_ = stand_in.calls
    assert (name, case_number, account.bank, account.holder_name) == ("allocation", CASE, "bank-icbc", "赵某")
    assert owner == ""  # the caller's own case
    code, out, _ = exit_code(argv[:-1], capsys)
    assert code == 0
    assert "payable now" in out
    # A regulator names the case's owner.
    argv[argv.index("--as") + 1] = "regulator-pboc"
    assert exit_code([*argv, "--owner", POLICE], capsys)[0] == 0
    assert stand_in.calls[-1][1][2] == POLICE


def test_appeal_file_passes_the_statement_and_documents(
    stand_in: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = tmp_path / "statement.txt"
    statement.write_text("  这笔钱是我的工资。\n", encoding="utf-8")
    payslip = tmp_path / "payslip.pdf"
    payslip.write_bytes(b"%PDF-1.7 ...")
    argv = [
        "appeal",
        "file",
        "--as",
        "bank-icbc",
        "--restriction",
        "0190aaaa-0000-7000-8000-0000000000f0",
        "--ground",
        "legitimate-funds",
        "--statement-file",
        str(statement),
        "--document",
        str(payslip),
        "--ticket",
        "ICBC-AP-0001",
        "--json",
    ]
    code, out, _ = exit_code(argv, capsys)
    assert code == 0
    assert json.loads(out)["type"] == "APPEAL"
    ((name, (restriction, ground, sent, ticket)),) = stand_in.calls
    assert (name, restriction, ticket) == (
        "file_appeal",
        "0190aaaa-0000-7000-8000-0000000000f0",
        "ICBC-AP-0001",
    )
    assert ground == requests_pb2.APPEAL_GROUND_LEGITIMATE_FUNDS
    assert isinstance(sent, requests_pb2.AppealStatement)
    assert sent.statement == "这笔钱是我的工资。"
    assert [(d.name, d.media_type, d.content) for d in sent.documents] == [
        ("payslip.pdf", "application/pdf", b"%PDF-1.7 ...")
    ]


def test_appeal_decide_prints_the_decision_and_the_lifting_orders(
    stand_in: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    appeal_id = "0190aaaa-0000-7000-8000-0000000000a0"
    argv = ["appeal", "decide", "--as", POLICE, appeal_id, "--lift", "--reason", "wages", "--json"]
    code, out, _ = exit_code(argv, capsys)
    assert code == 0
    document = json.loads(out)
    assert document["status"]["result"]["appeal"] == "APPEAL_DECISION_LIFTED"
    assert document["appeal"]["decision"] == "LIFTED"
    assert [order["target_id"] for order in document["appeal"]["lifting"]] == [
        "0190aaaa-0000-7000-8000-0000000000f0"
    ]
    assert stand_in.calls == [("decide_appeal", (appeal_id, results_pb2.APPEAL_DECISION_LIFTED, "wages"))]
    code, out, _ = exit_code([*argv[:5], "--uphold", "--reason", "checked"], capsys)
    assert code == 0
    assert "appeal decision  UPHELD" in out
    assert "lifting orders: none (the restriction stays)" in out


def test_appeal_decide_waits_for_the_lifting_orders(
    stand_in: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    appeal_id = "0190aaaa-0000-7000-8000-0000000000a0"
    argv = ["appeal", "decide", "--as", POLICE, appeal_id, "--lift", "--reason", "wages", "--wait", "--json"]
    code, out, err = exit_code(argv, capsys)
    assert code == 0
    assert [order["state"] for order in json.loads(out)["appeal"]["lifting"]] == ["EXECUTED"]
    assert "lifting order(s)" in err
    assert stand_in.calls[-1] == ("wait_for", ("0190aaaa-0000-7000-8000-0000000000a1", FINAL_STATES))
    # A lifting order the bank did not execute: the decision stands, the exit status says so.
    stand_in.reached = common_pb2.REQUEST_STATE_FAILED
    code, out, err = exit_code(argv, capsys)
    assert code == 3
    assert [order["state"] for order in json.loads(out)["appeal"]["lifting"]] == ["FAILED"]
    assert "not executed" in err


def test_appeal_file_waits_until_the_police_filed_it(
    stand_in: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    statement = tmp_path / "statement.txt"
    statement.write_text("mine", encoding="utf-8")
    argv = [
        *("appeal", "file", "--as", "bank-icbc", "--restriction", "0190aaaa-0000-7000-8000-0000000000f0"),
        *("--ground", "not-involved", "--statement-file", str(statement), "--ticket", "T-1", "--wait"),
    ]
    stand_in.reached = common_pb2.REQUEST_STATE_ACKNOWLEDGED
    code, out, err = exit_code(argv, capsys)
    assert code == 0
    assert "ACKNOWLEDGED" in out
    assert "waiting up to 60 s for the police to file the appeal" in err
    _, (_, states) = stand_in.calls[-1]
    assert states == FINAL_STATES | {common_pb2.REQUEST_STATE_ACKNOWLEDGED}
    stand_in.reached = common_pb2.REQUEST_STATE_REJECTED
    assert exit_code(argv, capsys)[0] == 3


def test_a_follow_up_shows_whether_the_victim_was_reached_and_the_advice() -> None:
    status = lifecycle_pb2.RequestStatus(type=common_pb2.REQUEST_TYPE_FOLLOW_UP)
    status.result.outcome = common_pb2.REQUEST_STATE_EXECUTED
    status.result.follow_up = results_pb2.FOLLOW_UP_OUTCOME_NOT_REACHED
    status.result.detail = "no answer after three calls"
    lines = status_lines(status)
    assert any(line.split() == ["follow-up", "NOT_REACHED"] for line in lines)
    assert any(line.split() == ["detail", "no", "answer", "after", "three", "calls"] for line in lines)


MARK = "0190aaaa-0000-7000-8000-0000000000b0"


def _mark_appeal_argv(tmp_path: Path, *extra: str) -> list[str]:
    statement = tmp_path / "statement.txt"
    statement.write_text("the account is my own salary account", encoding="utf-8")
    return [
        *("appeal", "file", "--as", "bank-icbc", "--mark", MARK),
        *("--ground", "not-involved", "--statement-file", str(statement), "--ticket", "ICBC-AP-0002"),
        *extra,
    ]


def test_appeal_file_names_a_mark_and_the_holders_identifier(
    stand_in: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = _mark_appeal_argv(
        tmp_path, "--identifier", "account:6222020200001234567", "--police", POLICE, "--case", CASE, "--json"
    )
    code, out, _ = exit_code(argv, capsys)
    assert code == 0
    assert json.loads(out)["mark_id"] == MARK
    ((name, (mark_id, identifier, police, case_number, ground, ticket)),) = stand_in.calls
    assert (name, mark_id, police, case_number, ticket) == (
        "file_mark_appeal",
        MARK,
        POLICE,
        CASE,
        "ICBC-AP-0002",
    )
    assert identifier == requests_pb2.HolderIdentifier(bank_account="6222020200001234567")
    assert ground == requests_pb2.APPEAL_GROUND_NOT_INVOLVED


@pytest.mark.parametrize(
    ("extra", "said"),
    [
        (("--identifier", "account:6222020200001234567", "--case", CASE), "--mark needs --police"),
        (("--identifier", "imei:356938035643809", "--police", POLICE, "--case", CASE), "handset"),
    ],
    ids=["no police", "a handset"],
)
def test_appeal_file_refuses_an_incomplete_mark_appeal_before_any_call(
    stand_in: StandIn, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: tuple[str, ...], said: str
) -> None:
    code, _, err = exit_code(_mark_appeal_argv(tmp_path, *extra), capsys)
    assert code == 2
    assert said in err
    assert stand_in.calls == []


def test_a_mark_appeal_decided_shows_the_mark_not_lifting_orders() -> None:
    appeal = lifecycle_pb2.RequestStatus(
        type=common_pb2.REQUEST_TYPE_APPEAL,
        appealed_mark_id=MARK,
        result=results_pb2.Result(appeal=results_pb2.APPEAL_DECISION_LIFTED),
    )
    assert lifting_lines(appeal, []) == [
        "appeal decision  LIFTED",
        f"  risk mark {MARK}: lifted by the broker",
    ]
    assert lifting_document(appeal, [])["mark_id"] == MARK
