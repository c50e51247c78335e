"""The web console without a browser: its settings, what its pages compute, its vendored files,
and what it imports (the browser tests are tests/integration/test_console.py)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, envelope_pb2, lifecycle_pb2, trail_pb2
from starlette.requests import Request

from broker.cli import main
from broker.client import PHASES, sla_report
from broker.console import ConsoleConfig, ConsoleError, _csrf, parse_listen
from broker.console._views import is_open, next_deadline, request_row, sla_view, trail_graph
from broker.protocol import to_timestamp
from tests.unit.test_import_isolation import CLI, HUB, loaded_after, under

VENDOR = Path(__file__).resolve().parents[2] / "broker" / "console" / "static" / "vendor"
NOW = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
S = common_pb2


# -- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_the_console_listens_on_loopback(host: str) -> None:
    assert ConsoleConfig(agency_id="police-310115", broker="b:1", state_dir=Path(), host=host).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::", "console.example"])
def test_it_refuses_any_other_address_unless_told(host: str) -> None:
    with pytest.raises(ConsoleError, match="--allow-remote"):
        ConsoleConfig(agency_id="police-310115", broker="b:1", state_dir=Path(), host=host)
    allowed = ConsoleConfig(
        agency_id="police-310115", broker="b:1", state_dir=Path(), host=host, allow_remote=True
    )
    assert allowed.allow_remote


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("8080", "127.0.0.1:", ":8080", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ConsoleError):
            parse_listen(bad)


def test_the_command_refuses_a_public_address_before_serving(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--state-dir", str(tmp_path), "console", "--as", "police-310115", "--listen", "0.0.0.0:8080"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0" in err
    assert "--allow-remote" in err
    assert main([*argv, "--json"]) == 1
    assert "--allow-remote" in json.loads(capsys.readouterr().out)["error"]["message"]


def test_a_console_that_cannot_reach_its_broker_says_so_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "--agency", "police-310115", "--out", str(tmp_path), "--overlay"]) == 0
    capsys.readouterr()
    argv = ["--state-dir", str(tmp_path), "console", "--as", "police-310115", "--listen", "127.0.0.1:0"]
    # Port 1 on loopback: nothing listens, the start-up's call to the broker is refused at once.
    assert main([*argv, "--broker", "127.0.0.1:1", "--json"]) == 1
    assert "did not start" in json.loads(capsys.readouterr().out)["error"]["message"]


# -- the Now page -----------------------------------------------------------------------------------


def _status(
    state: common_pb2.RequestState.ValueType,
    *,
    phases: Sequence[tuple[common_pb2.Phase.ValueType, timedelta, bool]] = (),
    hold: timedelta | None = None,
    kind: common_pb2.RequestType.ValueType = S.REQUEST_TYPE_STOP_PAYMENT,
) -> lifecycle_pb2.RequestStatus:
    status = lifecycle_pb2.RequestStatus(
        id="01a23dbd-0000-7000-8000-000000000001",
        type=kind,
        sender="police-310115",
        recipient="bank-icbc",
        case_ref=S.CaseRef(case_number="SH-PD-2026-1203-0015", issuing_agency="police-310115"),
        priority=S.PRIORITY_GREEN,
        state=state,
        submitted_at=to_timestamp(NOW - timedelta(minutes=1)),
    )
    for phase, due_in, done in phases:
        deadline = envelope_pb2.PhaseDeadline(phase=phase, due_at=to_timestamp(NOW + due_in))
        if done:
            deadline.done_at.CopyFrom(to_timestamp(NOW - timedelta(seconds=30)))
        status.deadlines.phases.append(deadline)
    if hold is not None:
        status.deadlines.hold_expires_at.CopyFrom(to_timestamp(NOW + hold))
    return status


def _row(status: lifecycle_pb2.RequestStatus) -> dict[str, object]:
    return request_row(status, now=NOW, warn_phase=timedelta(minutes=10), warn_hold=timedelta(hours=12))


def test_an_unanswered_request_counts_down_to_its_first_open_phase() -> None:
    status = _status(
        S.REQUEST_STATE_DELIVERED,
        phases=[
            (S.PHASE_DELIVER, timedelta(minutes=-1), True),
            (S.PHASE_ACKNOWLEDGE, timedelta(minutes=30), False),
            (S.PHASE_EXECUTE, timedelta(hours=2), False),
        ],
    )
    assert is_open(status, now=NOW)
    due = next_deadline(status, now=NOW)
    assert due is not None
    assert due[0] == "acknowledge"
    row = _row(status)
    assert (row["due_label"], row["urgency"], row["can_cancel"]) == ("acknowledge", "ok", True)
    assert row["due_ms"] == to_timestamp(NOW + timedelta(minutes=30)).ToMilliseconds()


def test_close_deadlines_are_about_to_breach_and_past_ones_breached() -> None:
    soon = _status(S.REQUEST_STATE_SUBMITTED, phases=[(S.PHASE_DELIVER, timedelta(minutes=5), False)])
    late = _status(S.REQUEST_STATE_SUBMITTED, phases=[(S.PHASE_DELIVER, timedelta(seconds=-5), False)])
    assert _row(soon)["urgency"] == "soon"
    assert _row(late)["urgency"] == "breached"


def test_a_hold_in_force_stays_open_until_it_lapses_or_is_released() -> None:
    held = _status(S.REQUEST_STATE_PARTIALLY_EXECUTED, hold=timedelta(hours=47))
    row = _row(held)
    assert row["open"]
    assert row["holding"]
    assert row["can_convert"]
    assert (row["due_label"], row["urgency"], row["can_cancel"]) == ("hold lapses", "ok", False)
    assert _row(_status(S.REQUEST_STATE_EXTENDED, hold=timedelta(hours=6)))["urgency"] == "soon"
    assert not is_open(_status(S.REQUEST_STATE_RELEASED, hold=timedelta(hours=47)), now=NOW)
    assert not is_open(_status(S.REQUEST_STATE_EXECUTED, hold=timedelta(hours=-1)), now=NOW)
    freeze = _row(_status(S.REQUEST_STATE_EXECUTED, hold=timedelta(days=180), kind=S.REQUEST_TYPE_FREEZE))
    assert freeze["can_hold_actions"]
    assert not freeze["can_convert"]
    # An answered request that holds nothing is done.
    block = _status(S.REQUEST_STATE_EXECUTED, kind=S.REQUEST_TYPE_NUMBER_BLOCK)
    assert not is_open(block, now=NOW)
    assert next_deadline(block, now=NOW) is None


# -- the case page ----------------------------------------------------------------------------------


def _money(minor: int) -> common_pb2.Money:
    return S.Money(currency="CNY", minor_units=minor)


def test_the_trail_graph_has_accounts_transfers_and_what_escaped() -> None:
    T = trail_pb2
    root = T.TrailNode(
        node_id="n-root", bank="bank-icbc", depth=0, traced=_money(4_800_000), held=_money(1_500_000)
    )
    root.requests.add(request_id="r1", hop=0, asked=_money(4_800_000), held=_money(1_500_000))
    child = T.TrailNode(
        node_id="n-child", bank="bank-ccb", depth=1, traced=_money(2_000_000), held=_money(300_000)
    )
    child.requests.add(request_id="r2", parent_id="r1", hop=1, asked=_money(2_000_000), held=_money(300_000))
    trail = T.Trail(nodes=[root, child], chasing=True, settled=True)
    trail.leads.add(
        from_request_id="r2",
        from_node_id="n-child",
        hop=2,
        to_bank_code="307584007998",
        amount=_money(500_000),
        transfer_amount=_money(500_000),
        reason=T.LEAD_REASON_OUTSIDE_DIRECTORY,
    )
    # A transfer back to an account already on its path is held there, not escaped.
    trail.leads.add(
        from_request_id="r2", from_node_id="n-child", hop=2, amount=_money(100), reason=T.LEAD_REASON_CYCLE
    )
    accounts = {"n-root": S.BankAccountRef(account_number="6222020200001234567", holder_name="李某")}

    graph = trail_graph(trail, accounts)
    nodes = {n["data"]["id"]: n["data"] for n in graph["elements"]["nodes"]}
    edges = [e["data"] for e in graph["elements"]["edges"]]
    assert nodes["n-root"]["held_minor"] == 1_500_000
    assert nodes["n-root"]["label"] == "bank-icbc\n6222020200001234567 李某\nheld 15,000.00 CNY"
    assert nodes["n-child"]["label"].startswith("bank-ccb\n#n-child")  # not opened: its digest only
    assert nodes["lead-0"]["kind"] == "escaped"
    assert nodes["lead-0"]["escaped_minor"] == 500_000
    assert "lead-1" not in nodes
    assert {(e["source"], e["target"], e["kind"], e["amount_minor"]) for e in edges} == {
        ("n-root", "n-child", "chased", 2_000_000),
        ("n-child", "lead-0", "escaped", 500_000),
    }
    assert (graph["held"], graph["escaped"]) == ("18,000.00 CNY", "5,000.00 CNY")
    assert graph["levels"] == 3


# -- the SLA page -----------------------------------------------------------------------------------


def test_the_sla_charts_sum_the_figures_of_sla_report() -> None:
    met = _status(S.REQUEST_STATE_EXECUTED, phases=[(p, timedelta(minutes=1), True) for p in PHASES])
    late = _status(S.REQUEST_STATE_SUBMITTED, phases=[(S.PHASE_DELIVER, timedelta(minutes=-1), False)])
    late.id = "01a23dbd-0000-7000-8000-000000000002"
    late.recipient = "bank-ccb"
    view = sla_view([met, late], now=NOW)
    report = sla_report([met, late], now=NOW)
    assert view["report"]["totals"] == {"met": report.met, "breached": report.breached, "open": report.open}
    assert view["by_agency"] == {
        "bank-icbc": {"met": 3, "breached": 0, "open": 0},
        "bank-ccb": {"met": 0, "breached": 1, "open": 0},
    }
    assert view["by_phase"]["deliver"] == {"met": 1, "breached": 1, "open": 0}
    assert view["by_type"] == {"STOP_PAYMENT": {"met": 3, "breached": 1, "open": 0}}
    assert view["over_time"] == [{"hour": "2026-12-03 20:00", "met": 3, "breached": 1, "open": 0}]


# -- vendored libraries and imports -------------------------------------------------------------


def test_the_vendored_libraries_are_the_recorded_builds() -> None:
    manifest = json.loads((VENDOR / "VENDORED.json").read_text())
    files = manifest["files"]
    on_disk = {p.name for p in VENDOR.iterdir()} - {"VENDORED.json"}
    assert on_disk == set(files)
    for name, entry in files.items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == entry["sha256"], name
        assert entry["license"] == "MIT"
        if "license_file" in entry:
            assert (VENDOR / entry["license_file"]).is_file()
    assert sum((VENDOR / name).stat().st_size for name in files) < 1_000_000


def test_the_console_is_a_client_of_the_bus_only() -> None:
    loaded = loaded_after("import broker.console")
    assert under(loaded, *HUB) == []
    assert under(loaded, *CLI) == []
    assert under(loaded, "agencies", "adapters", "broker.embedded") == []


def test_the_cli_loads_the_console_only_when_it_runs() -> None:
    loaded = loaded_after("from broker.cli._main import parser_for\nparser_for(['console', '--help'])\n")
    assert "broker.cli._console" in loaded
    assert under(loaded, "broker.console", "starlette", "uvicorn", "jinja2") == []


# -- CSRF ---------------------------------------------------------------------------------------


def _post(cookie: str | None, origin: str | None) -> Request:
    headers = [(b"host", b"127.0.0.1:8080")]
    if cookie is not None:
        headers.append((b"cookie", f"{_csrf.COOKIE}={cookie}".encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def test_an_action_needs_the_browsers_own_token_from_its_own_origin() -> None:
    token = "t" * 43
    assert _csrf.check(_post(token, "http://127.0.0.1:8080"), token) is None
    assert _csrf.check(_post(token, None), token) is None  # same-origin form posts may omit it
    assert "CSRF" in (_csrf.check(_post(token, None), "u" * 43) or "")
    assert "CSRF" in (_csrf.check(_post(None, None), token) or "")
    assert "CSRF" in (_csrf.check(_post("", None), "") or "")  # no cookie, no token: still refused
    assert "another site" in (_csrf.check(_post(token, "http://evil.example"), token) or "")
