"""``greenchannel list`` / ``cancel`` without a broker: what is open and due next, the filters the
options make, the table and the page document, usage errors; and the one ``--json`` mechanism."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from greenchannel.v1 import bus_pb2, common_pb2, envelope_pb2, lifecycle_pb2

from broker.cli._list import list_filters
from broker.cli._main import main, parser_for
from broker.cli._output import announce, complain, emit
from broker.cli._render_list import list_document, list_lines
from broker.client import OPEN_STATES, about_to_breach, next_deadline
from broker.protocol import InvalidMessageError, to_timestamp
from tests._readme import readme_examples

NOW = datetime(2026, 12, 3, 21, 0, tzinfo=UTC)
P = common_pb2


def _phase(
    phase: common_pb2.Phase.ValueType, due_in: float, *, done: bool = False, breached: bool = False
) -> envelope_pb2.PhaseDeadline:
    deadline = envelope_pb2.PhaseDeadline(
        phase=phase, due_at=to_timestamp(NOW + timedelta(seconds=due_in)), breached=breached
    )
    if done:
        deadline.done_at.CopyFrom(to_timestamp(NOW))
    return deadline


def _status(request_id: str, *phases: envelope_pb2.PhaseDeadline) -> lifecycle_pb2.RequestStatus:
    return lifecycle_pb2.RequestStatus(
        id=request_id,
        type=P.REQUEST_TYPE_STOP_PAYMENT,
        sender="police-310115",
        recipient="bank-icbc",
        case_ref=P.CaseRef(case_number="SH-PD-2026-1203-0001"),
        priority=P.PRIORITY_GREEN,
        state=P.REQUEST_STATE_DELIVERED,
        submitted_at=to_timestamp(NOW - timedelta(seconds=20)),
        deadlines=envelope_pb2.Deadlines(phases=list(phases)),
    )


def test_the_next_deadline_is_the_earliest_neither_met_nor_breached() -> None:
    status = _status(
        "r1",
        _phase(P.PHASE_DELIVER, -10, done=True),
        _phase(P.PHASE_ACKNOWLEDGE, -5, breached=True),
        _phase(P.PHASE_EXECUTE, 600),
    )
    deadline = next_deadline(status)
    assert deadline is not None
    assert deadline.phase == P.PHASE_EXECUTE
    assert about_to_breach(status, now=NOW, within=timedelta(minutes=10))
    assert not about_to_breach(status, now=NOW, within=timedelta(minutes=9))
    assert next_deadline(_status("r2", _phase(P.PHASE_DELIVER, -1, done=True))) is None
    assert not about_to_breach(_status("r3"), now=NOW, within=timedelta(days=1))
    # Past due and not yet recorded as breached: about to breach.
    assert about_to_breach(_status("r4", _phase(P.PHASE_DELIVER, -3)), now=NOW, within=timedelta(minutes=1))


def test_open_means_waiting_for_the_answer() -> None:
    assert {P.RequestState.Name(s) for s in OPEN_STATES} == {
        "REQUEST_STATE_SUBMITTED",
        "REQUEST_STATE_DELIVERED",
        "REQUEST_STATE_ACKNOWLEDGED",
    }


def _args(*argv: str) -> argparse.Namespace:
    full = ["list", "--as", "police-310115", *argv]
    return parser_for(full).parse_args(full)


def test_the_options_make_the_list_filters() -> None:
    filters = list_filters(
        _args("--open", "--type", "stop-payment", "--type", "freeze", "--case", "SH-1", "--role", "sent")
    )
    assert set(filters.states) == set(OPEN_STATES)
    assert list(filters.types) == [P.REQUEST_TYPE_STOP_PAYMENT, P.REQUEST_TYPE_FREEZE]
    assert (filters.case_number, filters.role) == ("SH-1", bus_pb2.ROLE_SENDER)
    assert list_filters(_args("--breach-within", "5")).states  # implies --open
    assert list_filters(_args("--role", "received")).role == bus_pb2.ROLE_RECIPIENT
    with pytest.raises(InvalidMessageError) as caught:
        list_filters(_args("--case", "no spaces allowed"))
    assert caught.value.violations[0].field == "list.case_number"


@pytest.mark.parametrize(
    "argv",
    [
        ("--limit", "0"),
        ("--limit", "1001"),
        ("--all", "--page-token", "abc"),
        ("--role", "both"),
        ("--type", "parking-ticket"),
        ("--breach-within", "-5"),
    ],
)
def test_bad_list_options_are_usage_errors(argv: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["list", "--as", "police-310115", *argv])
    assert done.value.code == 2
    assert "usage: greenchannel list" in capsys.readouterr().err


def test_a_malformed_request_id_is_not_sent(capsys: pytest.CaptureFixture[str]) -> None:
    # 127.0.0.1:1: nothing listens there; the id is refused before any connection or key.
    assert main(["cancel", "not-an-id", "--as", "police-310115", "--broker", "127.0.0.1:1", "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"]["field_violations"][0]["field"] == "cancellation.request_id"
    assert "greenchannel cancel: the request breaks the contract" in captured.err


def test_the_table_marks_what_is_about_to_breach_and_says_how_long_is_left() -> None:
    near = _status("0190aaaa-0000-7000-8000-00000000000b", _phase(P.PHASE_DELIVER, 25))
    late = _status("0190aaaa-0000-7000-8000-00000000000a", _phase(P.PHASE_EXECUTE, -90))
    lines = list_lines([near, late], now=NOW, breaching=frozenset({near.id}), more="--page-token T")
    assert lines[0].split() == ["id", "type", "state", "route", "case", "submitted", "next", "deadline"]
    [near_row] = [line for line in lines if near.id in line]
    [late_row] = [line for line in lines if late.id in line]
    assert near_row.startswith("!")
    assert near_row.endswith("deliver in 25.0s")
    assert not late_row.startswith("!")
    assert late_row.endswith("execute overdue 1m30s")
    assert "police-310115 -> bank-icbc" in near_row
    assert lines[-1] == "more: --page-token T"
    assert list_lines([], now=NOW) == ["no requests match"]


def test_the_page_document_carries_each_requests_next_deadline() -> None:
    status = _status(
        "r1", _phase(P.PHASE_ACKNOWLEDGE, 90, breached=False), _phase(P.PHASE_DELIVER, 0, done=True)
    )
    status.deadlines.phases[1].breached = True
    document = list_document([status], now=NOW, next_page_token="", breaching=frozenset())
    [row] = cast(list[dict[str, Any]], document["requests"])
    assert row["next_deadline"] == {
        "phase": "acknowledge",
        "due_at": "2026-12-03T21:01:30Z",
        "seconds_left": 90.0,
    }
    assert row["breached"] == ["deliver"]
    assert row["about_to_breach"] is False
    assert (row["type"], row["state"], row["priority"]) == ("STOP_PAYMENT", "DELIVERED", "GREEN")
    assert document["as_of"] == "2026-12-03T21:00:00Z"
    [plain] = cast(list[dict[str, Any]], list_document([status], now=NOW, next_page_token="")["requests"])
    assert "about_to_breach" not in plain


def test_one_json_mechanism_for_documents_status_lines_and_failures(
    capsys: pytest.CaptureFixture[str],
) -> None:
    as_json, as_text = argparse.Namespace(json=True), argparse.Namespace(json=False)
    emit(as_json, {"名": 1}, ["not this"])
    emit(as_text, {"not": "this"}, ["line one", "line two"])
    announce(as_json, "up.ready", "not this", broker="127.0.0.1:50051")
    announce(as_text, "up.ready", ["ready", "try: ..."], broker="x")
    out = capsys.readouterr().out.splitlines()
    assert out == [
        '{"名": 1}',
        "line one",
        "line two",
        '{"event": "up.ready", "broker": "127.0.0.1:50051"}',
        "ready",
        "try: ...",
    ]
    complain("up", as_json, ["cannot start: port in use", "  detail"])
    captured = capsys.readouterr()
    assert json.loads(captured.out) == {
        "error": {"code": "FAILED", "reason": None, "message": "cannot start: port in use"}
    }
    assert captured.err == "greenchannel up: cannot start: port in use\n  detail\n"


def test_the_readme_shows_list_and_cancel_as_the_parser_takes_them() -> None:
    examples = [argv for argv in readme_examples() if argv[0] in ("list", "cancel")]
    assert {argv[0] for argv in examples} == {"list", "cancel"}
    for argv in examples:
        args = parser_for(argv).parse_args(argv)
        if args.command == "list":
            list_filters(args)  # and the filters pass the contract's rules


def test_a_long_running_command_that_cannot_start_says_so_in_json(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GREENCHANNEL_NATS_URL", raising=False)
    assert main(["agencies", "--json"]) == 1
    captured = capsys.readouterr()
    assert "$GREENCHANNEL_NATS_URL" in json.loads(captured.out)["error"]["message"]
    assert captured.err.startswith("greenchannel agencies: set $GREENCHANNEL_NATS_URL")
