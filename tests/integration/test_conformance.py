"""The conformance kit against the reference agencies and against deliberately broken banks.

Each reference agency of the sample directory is built empty, seeded with the kit's own fixture
(the same records an implementer in another language seeds) and served on a real grpc.aio port;
the kit must pass against every one, once through the real ``greenchannel`` CLI. Broken banks are
small grpc.aio ``BankService`` servers that delegate to a reference bank but break one rule each;
the kit must fail them, naming the check, and the CLI must exit non-zero.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from greenchannel.v1 import bank_pb2, bank_pb2_grpc, carrier_pb2_grpc, common_pb2

from adapters.conformance import (
    CHECKS,
    ConformanceFixture,
    ConformanceReport,
    default_fixture_text,
    load_fixture,
    run_checks,
)
from agencies import AgencyServer, ReferenceAgency, build_reference_agency, serve_agency
from agencies.bank import BankCore
from agencies.carrier import CarrierCore, Cell
from agencies.platform import PlatformCore
from broker.cli import main as cli_main
from broker.protocol import Registry, SystemClock, load_directory
from tests.integration.node_process import installed_node_example, node_bank
from tests.integration.test_tls import Pki

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _logs_stay_where_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cli_main`` runs in this process: left alone, it would bind structlog to this test's
    captured stderr, closed after it, and every later test that logs would fail on it."""
    monkeypatch.setattr("broker.cli._main.configure_logging", lambda *_a, **_k: None)


ROOT = Path(__file__).resolve().parents[2]
DIRECTORY = ROOT / "agencies" / "directory.toml"
AGENCY_OF_KIND = {
    "bank": "bank-icbc",
    "carrier": "carrier-cmcc",
    "platform": "platform-wechat",
    "police": "police-310115",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DIRECTORY)


@pytest.fixture(scope="module")
def fixture() -> ConformanceFixture:
    return load_fixture()


# -- seeding the reference agencies with the conformance fixture -----------------------------------


def seed_bank(core: BankCore, fx: ConformanceFixture, at: datetime) -> None:
    with core.batch():
        for acct in fx.bank_accounts.values():
            core.open_account(acct.number, acct.holder, currency=fx.currency, balance=acct.balance)
        for t in fx.transfers:
            core.transfer(
                t.from_account,
                t.to_account,
                t.to_bank,
                t.amount,
                at - timedelta(minutes=t.minutes_before),
                t.transfer_id,
                from_bank=t.from_bank,
                to_holder=t.to_holder,
            )


def seed_carrier(core: CarrierCore, fx: ConformanceFixture) -> None:
    """The fixture's lines, each last seen on one cell (so ``carrier.location`` gets records)."""
    cell = Cell(
        cell_id="460-00-10001-00001",
        base_station_id="CONFORMANCE-eNB-1",
        location_area="460-00-10001",
        latitude=31.2304,
        longitude=121.4737,
        accuracy_m=500,
    )
    with core.batch():
        core.add_cell(cell)
        for line in fx.lines.values():
            core.register_line(
                line.e164, iccid=line.iccid, imsi=line.imsi, imei=line.imei, subscriber_name=line.subscriber
            )
            core.record_last_seen(line.e164, cell.cell_id, core.clock.now())


def seed_platform(core: PlatformCore, fx: ConformanceFixture) -> None:
    with core.batch():
        for acct in fx.platform_accounts.values():
            core.register_account(
                fx.platform_code, acct.account_id, display_name=acct.display_name, real_name=acct.real_name
            )


@asynccontextmanager
async def reference(
    registry: Registry, kind: str, data_dir: Path, fx: ConformanceFixture
) -> AsyncIterator[tuple[ReferenceAgency, AgencyServer]]:
    """The reference system of ``kind``, empty but for the conformance fixture, served on port 0."""
    clock = SystemClock()
    with build_reference_agency(
        registry.get(AGENCY_OF_KIND[kind]), data_dir=data_dir, clock=clock, seed=False
    ) as agency:
        core: Any = agency.core
        if kind == "bank":
            seed_bank(core, fx, clock.now())
        elif kind == "carrier":
            seed_carrier(core, fx)
        elif kind == "platform":
            seed_platform(core, fx)
        async with agency.server(grace=0.5) as server:
            yield agency, server


async def check(kind: str, address: str, fx: ConformanceFixture, **kw: Any) -> ConformanceReport:
    async with grpc.aio.insecure_channel(address) as channel:
        return await run_checks(kind, channel, target=address, fixture=fx, **kw)


def failures(report: ConformanceReport) -> dict[str, str]:
    return {o.name: o.reason for o in report.outcomes if not o.passed}


# -- the reference agencies conform ------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bank", "carrier", "platform", "police"])
async def test_reference_agency_passes_every_check(
    kind: str, registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with reference(registry, kind, tmp_path, fixture) as (_agency, server):
        report = await check(kind, server.address, fixture)
        assert failures(report) == {}, report.render_table()
        assert report.passed
        assert len(report.outcomes) >= 5
        assert all(o.name.startswith(f"{kind}.") for o in report.outcomes)
        if kind == "carrier":
            [located] = [o for o in report.outcomes if o.name == "carrier.location"]
            assert "1 location record(s) answered" in located.detail
            assert "carrier.batch.lift_item" in {o.name for o in report.outcomes}
        # Each check undid what it did: the same seeded system passes a second run.
        again = await check(kind, server.address, fixture)
        assert failures(again) == {}, again.render_table()


async def test_bank_checks_leave_no_money_held(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with reference(registry, "bank", tmp_path, fixture) as (agency, server):
        report = await check("bank", server.address, fixture)
        assert report.passed, report.render_table()
        core: Any = agency.core
        for acct in fixture.bank_accounts.values():
            assert core.available(acct.number) == core.balance(acct.number)


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        "conformance",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_certifies_the_reference_bank(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with reference(registry, "bank", tmp_path, fixture) as (_agency, server):
        code, out, err = await run_cli("bank", "--target", server.address, "--plaintext")
        assert code == 0, out + err
        assert "bank.mismatch.holder_name" in out
        assert "bank.partial_execution.onward_transfers" in out
        assert "FAIL" not in out
        assert "conforms" in out.splitlines()[-1]

        code, out, err = await run_cli("bank", "--target", server.address, "--plaintext", "--json")
        assert code == 0, out + err
        report = json.loads(out)
        assert report["passed"] is True
        assert report["kind"] == "bank"
        assert {c["name"] for c in report["checks"]} >= {"bank.idempotency.stop_payment", "bank.deadline"}


async def test_cli_certifies_the_node_bank() -> None:
    """examples/node/bank.js, seeded from the shipped fixture file itself, passes every check."""
    example = installed_node_example()
    fixture_file = ROOT / "adapters" / "conformance" / "fixture.json"
    async with node_bank(example, "--fixture", str(fixture_file)) as (address, _bank):
        code, out, err = await run_cli("bank", "--target", address, "--plaintext", "--json")
        assert code == 0, out + err
        report = json.loads(out)
        failed = {c["name"]: c["reason"] for c in report["checks"] if not c["passed"]}
        assert failed == {}
        assert report["passed"] is True
        assert {c["name"] for c in report["checks"]} == {check.name for check in CHECKS["bank"][1]}
        # Every check undid what it did: the same bank process conforms a second time, as a table.
        code, out, err = await run_cli("bank", "--target", address, "--plaintext")
        assert code == 0, out + err
        assert "FAIL" not in out
        assert "conforms" in out.splitlines()[-1]


async def test_cli_certifies_a_bank_behind_mutual_tls(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    server_files, client_files = pki.server(), pki.client("conformance")
    credentials = grpc.ssl_server_credentials(
        [(server_files.key.read_bytes(), server_files.cert.read_bytes())],
        root_certificates=pki.ca.read_bytes(),
        require_client_auth=True,
    )
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    async with reference(registry, "bank", data_dir, fixture) as (agency, _plain):
        server = grpc.aio.server()
        agency.add_servicer(agency.servicer, server)
        port = server.add_secure_port("127.0.0.1:0", credentials)
        await server.start()
        try:
            target = f"localhost:{port}"
            tls = ["--tls-ca", str(pki.ca)]
            client = ["--tls-cert", str(client_files.cert), "--tls-key", str(client_files.key)]
            code, out, err = await run_cli("bank", "--target", target, *tls, *client)
            assert code == 0, out + err
            assert "conforms" in out.splitlines()[-1]
            # Without its certificate the kit cannot reach the bank: one clear row.
            only_ca = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
            async with grpc.aio.secure_channel(target, only_ca) as channel:
                report = await run_checks("bank", channel, target=target, fixture=fixture, call_timeout=1.0)
            assert [o.name for o in report.outcomes] == ["bank.reachable"]
        finally:
            await server.stop(None)


def test_cli_refuses_to_guess_transport(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["conformance", "bank", "--target", "127.0.0.1:1"]) == 2
    assert "--plaintext" in capsys.readouterr().err


def test_cli_lists_checks_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["conformance", "platform", "--list-checks"]) == 0
    assert capsys.readouterr().out.splitlines()[0].startswith("platform.block_account: ")
    argv = ["conformance", "bank", "--target", "127.0.0.1:1", "--plaintext", "--check", "bank.nope"]
    assert cli_main(argv) == 2
    assert "bank.nope" in capsys.readouterr().err
    assert cli_main(["conformance", "bank", "--print-fixture"]) == 0
    assert json.loads(capsys.readouterr().out)["bank"]["accounts"]["onward"]["balance"] == 0


@pytest.mark.parametrize(
    ("write", "args", "said"),
    [
        (lambda p: p.write_text("{not json"), ["--fixture", "{file}"], "cannot read the fixture"),
        (lambda p: p.write_text('{"version": 1}'), ["--fixture", "{file}"], "missing field 'bank.accounts"),
        (
            lambda p: p.write_text(default_fixture_text().replace('"balance": 0', '"balance": "0"')),
            ["--fixture", "{file}"],
            "bank.accounts.onward.balance' must be an integer",
        ),
        (None, ["--fixture", "{file}"], "cannot read the fixture"),
        (None, ["--tls-ca", "{file}"], "cannot read"),
        (lambda p: p.write_text("x"), ["--tls-ca", "{file}", "--tls-cert", "{file}"], "go together"),
        (lambda p: p.write_text("x"), ["--plaintext", "--tls-ca", "{file}"], "excludes"),
    ],
    ids=["not-json", "no-accounts", "wrong-type", "no-fixture", "no-ca", "cert-without-key", "plain-and-tls"],
)
def test_cli_names_what_is_wrong_and_starts_nothing(
    write: Callable[[Path], Any] | None,
    args: list[str],
    said: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "given"
    if write is not None:
        write(path)
    transport = [] if "--tls-ca" in args or "--plaintext" in args else ["--plaintext"]
    argv = ["conformance", "bank", "--target", "127.0.0.1:1", *transport]
    argv += [a.replace("{file}", str(path)) for a in args]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert said in err, err
    assert err.startswith("greenchannel conformance: ")


async def test_an_unreachable_target_is_one_failed_row(fixture: ConformanceFixture) -> None:
    # Bind and release a port so that nothing listens on it.
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await server.stop(None)
    report = await check("bank", f"127.0.0.1:{port}", fixture, call_timeout=1.0)
    assert not report.passed
    assert [o.name for o in report.outcomes] == ["bank.reachable"]
    assert "no connection" in report.outcomes[0].reason


# -- broken banks fail, naming the check ----------------------------------------------------------


Handler = Callable[[Any, Any], Awaitable[Any]]


class BrokenBank(bank_pb2_grpc.BankServiceServicer):
    """A bank that delegates to a reference servicer except where a test overrides a method."""

    def __init__(self, inner: Any, **overrides: Handler) -> None:
        self._inner = inner
        self._overrides = overrides

    def _pick(self, name: str) -> Handler:
        override = self._overrides.get(name)
        return override if override is not None else getattr(self._inner, name)

    async def StopPayment(self, request: Any, context: Any) -> Any:
        return await self._pick("StopPayment")(request, context)

    async def Freeze(self, request: Any, context: Any) -> Any:
        return await self._pick("Freeze")(request, context)

    async def ReleaseHold(self, request: Any, context: Any) -> Any:
        return await self._pick("ReleaseHold")(request, context)

    async def ExtendHold(self, request: Any, context: Any) -> Any:
        return await self._pick("ExtendHold")(request, context)

    async def QueryBankData(self, request: Any, context: Any) -> Any:
        return await self._pick("QueryBankData")(request, context)

    async def ReturnFunds(self, request: Any, context: Any) -> Any:
        return await self._pick("ReturnFunds")(request, context)


@asynccontextmanager
async def broken_bank(
    registry: Registry, fx: ConformanceFixture, data_dir: Path, make: Callable[[Any, BankCore], BrokenBank]
) -> AsyncIterator[str]:
    async with reference(registry, "bank", data_dir, fx) as (agency, _server):
        core: Any = agency.core
        servicer = make(agency.servicer, core)
        async with serve_agency(
            bank_pb2_grpc.add_BankServiceServicer_to_server, servicer, grace=0.5
        ) as server:
            yield server.address


def executes_every_delivery(inner: Any, core: BankCore) -> BrokenBank:
    """Keeps no journal: a stop-payment delivered again is executed again."""
    seen: set[str] = set()

    async def stop_payment(request: bank_pb2.StopPaymentRequest, context: Any) -> Any:
        if request.context.request_id not in seen:
            seen.add(request.context.request_id)
            return await inner.StopPayment(request, context)
        again = bank_pb2.StopPaymentRequest()
        again.CopyFrom(request)
        again.context.request_id = str(uuid.uuid4())
        return await inner.StopPayment(again, context)

    return BrokenBank(inner, StopPayment=stop_payment)


def ignores_the_holder_name(inner: Any, core: BankCore) -> BrokenBank:
    """Acts on the account number alone, whatever name the order gives."""

    def right_name(request: Any) -> Any:
        fixed = type(request)()
        fixed.CopyFrom(request)
        acct = core.account(fixed.order.account.account_number)
        if acct is not None:
            fixed.order.account.holder_name = acct.holder_name
        return fixed

    async def stop_payment(request: Any, context: Any) -> Any:
        return await inner.StopPayment(right_name(request), context)

    async def freeze(request: Any, context: Any) -> Any:
        return await inner.Freeze(right_name(request), context)

    async def query(request: Any, context: Any) -> Any:
        return await inner.QueryBankData(right_name(request), context)

    return BrokenBank(inner, StopPayment=stop_payment, Freeze=freeze, QueryBankData=query)


def answers_without_outcome(inner: Any, core: BankCore) -> BrokenBank:
    """Executes, then answers with an outcome the contract does not allow (UNSPECIFIED)."""

    async def freeze(request: Any, context: Any) -> Any:
        response = await inner.Freeze(request, context)
        response.result.outcome = common_pb2.REQUEST_STATE_UNSPECIFIED
        return response

    return BrokenBank(inner, Freeze=freeze)


def crashes_on_malformed(inner: Any, core: BankCore) -> BrokenBank:
    """Fails INTERNAL on a request without context instead of refusing it cleanly."""

    async def stop_payment(request: Any, context: Any) -> Any:
        if not request.HasField("context"):
            await context.abort(grpc.StatusCode.INTERNAL, "boom")
        return await inner.StopPayment(request, context)

    return BrokenBank(inner, StopPayment=stop_payment)


def lists_no_onward_transfers(inner: Any, core: BankCore) -> BrokenBank:
    async def stop_payment(request: Any, context: Any) -> Any:
        response = await inner.StopPayment(request, context)
        del response.result.onward_transfers[:]
        return response

    return BrokenBank(inner, StopPayment=stop_payment)


@pytest.mark.parametrize(
    ("make", "failing"),
    [
        (executes_every_delivery, {"bank.idempotency.stop_payment"}),
        (ignores_the_holder_name, {"bank.mismatch.holder_name", "bank.query_bank_data"}),
        (answers_without_outcome, {"bank.freeze", "bank.idempotency.freeze"}),
        (crashes_on_malformed, {"bank.errors.malformed_request"}),
        (lists_no_onward_transfers, {"bank.partial_execution.onward_transfers"}),
    ],
    ids=["double-execution", "holder-name", "field-rules", "malformed", "onward"],
)
async def test_a_broken_bank_fails_the_check_it_breaks(
    make: Callable[[Any, BankCore], BrokenBank],
    failing: set[str],
    registry: Registry,
    fixture: ConformanceFixture,
    tmp_path: Path,
) -> None:
    async with broken_bank(registry, fixture, tmp_path, make) as address:
        report = await check("bank", address, fixture)
    assert not report.passed
    found = failures(report)
    assert failing <= set(found), report.render_table()
    assert all(found[name] for name in failing)
    # Checks that do not touch the broken behaviour still pass: each stands on its own records.
    assert not {"bank.stop_payment", "bank.extend_hold"} & set(found), report.render_table()


async def test_cli_fails_a_bank_that_executes_twice(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with broken_bank(registry, fixture, tmp_path, executes_every_delivery) as address:
        code, out, err = await run_cli("bank", "--target", address, "--plaintext")
    assert code == 1, out + err
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("bank.idempotency.stop_payment"))
    assert "FAIL" in row
    reason = lines[lines.index(row) + 1]
    assert "reason:" in reason
    assert "executed twice" in reason or "twice" in reason
    assert "does NOT conform" in lines[-1]


async def test_a_mismatch_reason_names_what_happened(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with broken_bank(registry, fixture, tmp_path, ignores_the_holder_name) as address:
        report = await check("bank", address, fixture, only=("bank.mismatch.holder_name",))
    assert [o.name for o in report.outcomes] == ["bank.mismatch.holder_name"]
    reason = report.outcomes[0].reason
    assert reason.startswith("StopPayment with a wrong holder name: expected REJECTED/MISMATCH, got EXECUTED")


def test_the_shipped_fixture_is_complete(fixture: ConformanceFixture) -> None:
    onward = fixture.account("onward")
    assert fixture.onward_transfer().from_account == onward.number
    assert fixture.incoming_transfer().to_account == onward.number
    assert fixture.unknown_account not in {a.number for a in fixture.bank_accounts.values()}
    assert datetime.now(UTC)  # the fixture carries no absolute times: seeding is relative


class SilentWarnings(carrier_pb2_grpc.CarrierServiceServicer):
    """A carrier that warns but never says how it ended (no result.warning); the rest is the reference."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    async def WarnSubscriber(self, request: Any, context: Any) -> Any:
        response = await self._inner.WarnSubscriber(request, context)
        response.result.ClearField("warning")
        return response

    async def BlockNumber(self, request: Any, context: Any) -> Any:
        return await self._inner.BlockNumber(request, context)

    async def LiftBlock(self, request: Any, context: Any) -> Any:
        return await self._inner.LiftBlock(request, context)

    async def QuerySubscriberData(self, request: Any, context: Any) -> Any:
        return await self._inner.QuerySubscriberData(request, context)


async def test_a_carrier_without_warning_outcomes_fails_with_a_clear_message(
    registry: Registry, fixture: ConformanceFixture, tmp_path: Path
) -> None:
    async with (
        reference(registry, "carrier", tmp_path, fixture) as (agency, _server),
        serve_agency(
            carrier_pb2_grpc.add_CarrierServiceServicer_to_server, SilentWarnings(agency.servicer), grace=0.5
        ) as server,
    ):
        report = await check("carrier", server.address, fixture)
    found = failures(report)
    assert "carrier.warn_subscriber" in found, report.render_table()
    assert "EXECUTED without result.warning" in found["carrier.warn_subscriber"]
    assert "carrier.block_number" not in found, report.render_table()
