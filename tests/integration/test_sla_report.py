"""``greenchannel sla report`` against a real broker: requests met, late, overdue, open and cancelled.

One ManualClock drives the broker, the clients and the hand-played adapters, so every done_at is
exactly where the story puts it and the counts are known in advance. It starts at the real time:
anything measured on NATS' own clock (message schedules) stays far in the future of the test.
"""

from __future__ import annotations

import argparse
import io
import json
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.cli._sla import add_parser as add_sla_parser
from broker.cli._sla import run as run_sla
from broker.cli._sla import sla_report_command
from broker.client import BusClient
from broker.protocol import ManualClock, OpenedEnvelope, SystemClock, event_subject, sign_event
from tests.integration.broker_world import BANK, FRAUD_ACCOUNT, POLICE, World, broker_world, stop_payment

pytestmark = pytest.mark.integration

CARRIER = "carrier-cmcc"
REGULATOR = "regulator-pboc"
S, M = timedelta(seconds=1), timedelta(minutes=1)
T = common_pb2


def own_account(case_number: str) -> str:
    """An account of the fraud account's bank for each case: cases sharing one would be linked
    (串并), and the linkage notices would be requests of this report too."""
    return FRAUD_ACCOUNT[:-4] + case_number[-4:]


def own_stop(case_number: str) -> requests_pb2.Request:
    return stop_payment(case_number=case_number, account=own_account(case_number))


def freeze(case_number: str) -> requests_pb2.Request:
    request = stop_payment(
        case_number=case_number, account=own_account(case_number), priority=T.PRIORITY_STANDARD
    )
    request.case_ref.legal_instrument_type = T.LEGAL_INSTRUMENT_TYPE_FREEZE_NOTICE
    request.freeze.CopyFrom(
        requests_pb2.Freeze(account=request.stop_payment.account, amount=request.stop_payment.amount)
    )
    return request


def number_block(case_number: str) -> requests_pb2.Request:
    return requests_pb2.Request(
        case_ref=T.CaseRef(
            case_number=case_number,
            issuing_agency=POLICE,
            legal_instrument_id="沪公(浦)停机字[2026]0001号",
            legal_instrument_type=T.LEGAL_INSTRUMENT_TYPE_BLOCK_ORDER,
        ),
        priority=T.PRIORITY_GREEN,
        recipient=CARRIER,
        number_block=requests_pb2.NumberBlock(
            phone=T.PhoneRef(e164="+8615012340001"), scope=requests_pb2.BLOCK_SCOPE_NUMBER
        ),
    )


async def adapter_event(
    world: World,
    clock: ManualClock,
    opened: OpenedEnvelope,
    state: T.RequestState.ValueType,
    *,
    agency: str = BANK,
    result: results_pb2.Result | None = None,
) -> None:
    """Sign and publish an adapter's event dated at the clock's now (World's helper uses wall time)."""
    at = Timestamp()
    at.FromDatetime(clock.now())
    event = lifecycle_pb2.LifecycleEvent(
        event_id=str(uuid.uuid4()),
        request_id=opened.header.id,
        state=state,
        actor=agency,
        at=at,
        request_digest=opened.header.body_digest,
    )
    if result is not None:
        event.result.CopyFrom(result)
    signed = sign_event(event, key=world.key(agency), clock=clock)
    await world.js.publish(
        event_subject(agency, event.request_id),
        signed.SerializeToString(),
        headers={"Nats-Msg-Id": event.event_id},
    )


EXECUTED = results_pb2.Result(
    outcome=T.REQUEST_STATE_EXECUTED,
    amount_held=T.Money(currency="CNY", minor_units=4_800_000),
    agency_reference="HOLD-1",
)


async def test_sla_report_as_regulator_counts_what_happened(tmp_path: Path) -> None:
    clock = ManualClock(SystemClock().now())
    t0 = clock.now()
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(clock=clock)
        police = BusClient(broker.address, agency_id=POLICE, signing_key=world.key(POLICE), clock=clock)
        async with police:
            # Every request is received at t0 (the clock stands still), under the CN default SLA:
            # green 30 s / 2 min / 10 min, standard 1 h / 8 h / 3 d.
            on_time = (await police.submit(own_stop("SH-PD-2026-0001"))).status.id
            late = (await police.submit(own_stop("SH-PD-2026-0002"))).status.id
            silent = (await police.submit(own_stop("SH-PD-2026-0003"))).status.id
            standard = (await police.submit(freeze("SH-PD-2026-0004"))).status.id
            withdrawn = (await police.submit(own_stop("SH-PD-2026-0005"))).status.id
            blocked = (await police.submit(number_block("SH-PD-2026-0006"))).status.id
            await police.cancel(withdrawn, "the victim's payment never left")

            bank = {o.header.id: o for o in await world.inbox(BANK)}
            carrier = {o.header.id: o for o in await world.inbox(CARRIER)}
            story: list[tuple[timedelta, str, T.RequestState.ValueType]] = [
                (10 * S, on_time, T.REQUEST_STATE_DELIVERED),
                (10 * S, silent, T.REQUEST_STATE_DELIVERED),
                (10 * S, standard, T.REQUEST_STATE_DELIVERED),
                (40 * S, blocked, T.REQUEST_STATE_DELIVERED),  # 10 s late
                (45 * S, late, T.REQUEST_STATE_DELIVERED),  # 15 s late
                (1 * M, on_time, T.REQUEST_STATE_ACKNOWLEDGED),
                (3 * M, late, T.REQUEST_STATE_ACKNOWLEDGED),  # 1 min late
                (5 * M, on_time, T.REQUEST_STATE_EXECUTED),
                (20 * M, late, T.REQUEST_STATE_EXECUTED),  # 10 min late
            ]
            for after, request_id, state in story:
                clock.set(t0 + after)
                is_carrier = request_id in carrier
                await adapter_event(
                    world,
                    clock,
                    carrier[request_id] if is_carrier else bank[request_id],
                    state,
                    agency=CARRIER if is_carrier else BANK,
                    result=EXECUTED if state == T.REQUEST_STATE_EXECUTED else None,
                )
            for request_id, state in [
                (on_time, T.REQUEST_STATE_EXECUTED),
                (late, T.REQUEST_STATE_EXECUTED),
                (silent, T.REQUEST_STATE_DELIVERED),
                (standard, T.REQUEST_STATE_DELIVERED),
                (blocked, T.REQUEST_STATE_DELIVERED),
            ]:
                await police.wait_for(request_id, {state}, within=timedelta(seconds=60))

        clock.set(t0 + 30 * M)
        out, err = io.StringIO(), io.StringIO()
        code = await sla_report_command(
            broker=broker.address,
            agency_id=REGULATOR,
            state_dir=world.state_dir,
            as_json=True,
            clock=clock,
            out=out,
            err=err,
        )
        assert (code, err.getvalue()) == (0, "")
        report = json.loads(out.getvalue())

        def counts(met: int, breached: int, open_: int) -> dict[str, int]:
            return {"met": met, "breached": breached, "open": open_}

        assert report["requests"] == 6
        assert [(row["agency"], row["type"]) for row in report["rows"]] == [
            (BANK, "freeze"),
            (BANK, "stop_payment"),
            (CARRIER, "number_block"),
        ]
        frozen, stopped, block = report["rows"]
        assert frozen["phases"] == {
            "deliver": counts(1, 0, 0),
            "acknowledge": counts(0, 0, 1),
            "execute": counts(0, 0, 1),
        }
        # on_time met everything; late breached everything; silent breached acknowledge and
        # execute by staying quiet; withdrawn was cancelled before anything was due.
        assert stopped["phases"] == {
            "deliver": counts(2, 1, 0),
            "acknowledge": counts(1, 2, 0),
            "execute": counts(1, 2, 0),
        }
        assert (stopped["requests"], stopped["finished"], stopped["cancelled"]) == (4, 2, 1)
        assert stopped["time_to_finish_ms"] == {"median": 300_000.0, "p95": 1_200_000.0}
        assert block["phases"] == {
            "deliver": counts(0, 1, 0),
            "acknowledge": counts(0, 1, 0),
            "execute": counts(0, 1, 0),
        }
        assert block["time_to_finish_ms"] == {"median": None, "p95": None}
        assert report["totals"] == counts(5, 8, 2)
        assert report["breaches_by_agency"] == {BANK: 5, CARRIER: 3}

        # The same numbers as a table for people.
        table = io.StringIO()
        assert (
            await sla_report_command(
                broker=broker.address,
                agency_id=REGULATOR,
                state_dir=world.state_dir,
                as_json=False,
                clock=clock,
                out=table,
            )
            == 0
        )
        assert "breaches by agency: bank-icbc 5, carrier-cmcc 3" in table.getvalue()


async def test_paging_reads_every_request(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        async with world.client(broker) as police:
            ids = {
                (await police.submit(stop_payment(case_number=f"SH-PD-2026-{i:04d}"))).status.id
                for i in range(5)
            }
        async with world.client(broker, REGULATOR) as regulator:
            first = await regulator.list(page_size=2)
            assert first.next_page_token  # more than one page to follow
            statuses = await regulator.list_all()
        assert {s.id for s in statuses} == ids


async def test_broker_and_key_failures_are_reported(tmp_path: Path) -> None:
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker()
        err = io.StringIO()
        unknown = await sla_report_command(
            broker=broker.address, agency_id="police-999999", state_dir=world.state_dir, as_json=True, err=err
        )
        assert unknown == 1
        assert "no usable" in err.getvalue()
        # A regulator's key that the broker does not know: signed by another state directory.
        other = tmp_path / "other"
        from broker.protocol import ensure_agency_keys
        from tests.integration.broker_world import DIRECTORY

        ensure_agency_keys(DIRECTORY, other, clock=SystemClock())
        err = io.StringIO()
        refused = await sla_report_command(
            broker=broker.address, agency_id=REGULATOR, state_dir=other, as_json=True, err=err
        )
        assert refused == 1
        assert "UNAUTHENTICATED" in err.getvalue()


def test_cli_parser_and_runner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="greenchannel")
    parser.add_argument("--state-dir", type=Path, default=tmp_path)
    add_sla_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sla", "report", "--as", REGULATOR, "--json"])
    assert (args.command, args.sla_command, args.agency, args.json) == ("sla", "report", REGULATOR, True)
    assert args.broker == "127.0.0.1:50051"
    with pytest.raises(SystemExit):
        parser.parse_args(["sla", "report"])  # --as is required
    with pytest.raises(SystemExit):
        parser.parse_args(["sla", "report", "--as", "Regulator PBOC"])
    # No keys in this state directory: a clear message, exit code 1, nothing on stdout.
    assert run_sla(args) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "no usable" in captured.err
