"""The reference agency systems through real grpc.aio servers and stubs on port 0.

Every agency of the sample directory is built, seeded and served the way a launcher would; each
service is then driven over gRPC: orders, replays, health checks, a stop and a restart on the same
port, a restart from the same data directory, and a storage failure surfacing as UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import (
    agency_pb2,
    bank_pb2,
    bank_pb2_grpc,
    carrier_pb2,
    carrier_pb2_grpc,
    common_pb2,
    platform_pb2,
    platform_pb2_grpc,
    police_pb2,
    police_pb2_grpc,
    requests_pb2,
    results_pb2,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from agencies import AgencyServer, ReferenceAgency, build_reference_agency, serve_agency
from agencies import _seed as story
from agencies._common import AgencyServerError
from agencies.bank import BANK_SERVICE, BankConfig, BankCore, BankServicer
from agencies.police import AssistanceRule
from broker.protocol import AgencyKind, ManualClock, Registry, load_directory, new_uuid7

pytestmark = pytest.mark.integration

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
CALL_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(DIRECTORY)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@asynccontextmanager
async def served(
    registry: Registry, agency_id: str, data_dir: Path, clock: ManualClock, **build: Any
) -> AsyncIterator[tuple[ReferenceAgency, AgencyServer, grpc.aio.Channel]]:
    with build_reference_agency(
        registry.get(agency_id), data_dir=data_dir, clock=clock, seed_at=START, **build
    ) as agency:
        async with agency.server(grace=0.5) as server:
            channel = grpc.aio.insecure_channel(server.address)
            try:
                yield agency, server, channel
            finally:
                await channel.close()


def context(clock: ManualClock, sender: str = "police-310115") -> agency_pb2.OrderContext:
    return agency_pb2.OrderContext(
        request_id=new_uuid7(clock),
        sender=sender,
        case_ref=common_pb2.CaseRef(
            case_number="SH-PD-2026-0302-0007",
            issuing_agency="police-310115",
            legal_instrument_id="沪公(浦)急止字[2026]0302号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
    )


def fraud_stop(clock: ManualClock) -> bank_pb2.StopPaymentRequest:
    return bank_pb2.StopPaymentRequest(
        context=context(clock),
        order=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(
                account_number=story.FRAUD_ACCOUNT, holder_name=story.FRAUD_HOLDER, bank=story.FRAUD_BANK
            ),
            amount=common_pb2.Money(currency="CNY", minor_units=story.FRAUD_AMOUNT),
            fraud_transfer_id=story.FRAUD_TRANSFER_ID,
        ),
    )


def period(start: datetime, end: datetime) -> common_pb2.TimeRange:
    span = common_pb2.TimeRange()
    span.start.CopyFrom(_ts(start))
    span.end.CopyFrom(_ts(end))
    return span


def _ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def _databases(data_dir: Path) -> list[str]:
    return sorted(p.name for p in data_dir.glob("*.sqlite3"))


async def health_of(channel: grpc.aio.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=CALL_TIMEOUT)
    status: int = response.status
    return status


# -- every agency of the directory ----------------------------------------------------------------


async def test_every_agency_of_the_directory_is_built_and_served(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    served_kinds = (AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM, AgencyKind.POLICE)
    agencies = [a for a in registry.agencies() if a.kind in served_kinds]
    async with AsyncExitStack() as stack:
        addresses = {}
        for agency in agencies:
            ref = stack.enter_context(
                build_reference_agency(agency, data_dir=tmp_path, clock=clock, seed_at=START)
            )
            server = await stack.enter_async_context(ref.server(grace=0.2))
            addresses[agency.id] = (server.address, ref.service_name)
        assert len(set(addresses.values())) == len(agencies)
        for address, service in addresses.values():
            channel = grpc.aio.insecure_channel(address)
            assert await health_of(channel) == health_pb2.HealthCheckResponse.SERVING
            assert await health_of(channel, service) == health_pb2.HealthCheckResponse.SERVING
            await channel.close()
    assert _databases(tmp_path) == sorted(f"{a.id}.sqlite3" for a in agencies)
    regulator = registry.agencies(kind=AgencyKind.REGULATOR)[0]
    with pytest.raises(ValueError, match="no agency service"):
        build_reference_agency(regulator, data_dir=tmp_path, clock=clock)


async def test_reflection_lists_the_agency_service(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (_, _, channel):
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        names = [s.name async for r in call for s in r.list_services_response.service]
    assert BANK_SERVICE in names


# -- BankService ----------------------------------------------------------------------------------


async def test_bank_stop_payment_over_grpc_is_executed_once(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (agency, _, channel):
        stub = bank_pb2_grpc.BankServiceStub(channel)
        request = fraud_stop(clock)
        first = await stub.StopPayment(request, timeout=CALL_TIMEOUT)
        second = await stub.StopPayment(request, timeout=CALL_TIMEOUT)

        result = first.result
        assert (result.outcome, result.reason) == (
            common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
            results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
        )
        assert result.amount_held.minor_units == 1_500_000
        assert [(t.to_bank, t.amount.minor_units) for t in result.onward_transfers] == [
            ("bank-abc", 1_500_000),
            ("bank-ccb", 2_000_000),
        ]
        assert result.hold_until.ToDatetime(tzinfo=UTC) == START + timedelta(hours=48)
        core = agency.core
        assert isinstance(core, BankCore)
        stored = core.execution(request.context.request_id)
        assert stored is not None
        assert first.SerializeToString(deterministic=True) == stored.response
        assert second.SerializeToString(deterministic=True) == stored.response
        assert core.execution_count(request.context.request_id) == 1
        assert len(core.holds_for(request.context.request_id)) == 1


async def test_bank_rejections_are_answers_not_errors(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (_, _, channel):
        stub = bank_pb2_grpc.BankServiceStub(channel)
        wrong_name = fraud_stop(clock)
        wrong_name.order.account.holder_name = "王某"
        invalid = fraud_stop(clock)
        invalid.order.amount.minor_units = 0
        no_context = bank_pb2.StopPaymentRequest(order=invalid.order)
        mismatch = (await stub.StopPayment(wrong_name, timeout=CALL_TIMEOUT)).result
        rejected = (await stub.StopPayment(invalid, timeout=CALL_TIMEOUT)).result
        anonymous = (await stub.StopPayment(no_context, timeout=CALL_TIMEOUT)).result
    assert mismatch.reason == results_pb2.REASON_CODE_MISMATCH
    assert story.FRAUD_HOLDER not in mismatch.detail
    assert rejected.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert anonymous.reason == results_pb2.REASON_CODE_INVALID_REQUEST


async def test_bank_freeze_release_extend_and_data_over_grpc(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    account = common_pb2.BankAccountRef(
        account_number=story.MULE_ICBC_ACCOUNT, holder_name=story.MULE_ICBC_HOLDER
    )
    async with served(registry, "bank-icbc", tmp_path, clock) as (_, _, channel):
        stub = bank_pb2_grpc.BankServiceStub(channel)
        sp = bank_pb2.StopPaymentRequest(
            context=context(clock),
            order=requests_pb2.StopPayment(
                account=account, amount=common_pb2.Money(currency="CNY", minor_units=500_000)
            ),
        )
        assert (
            await stub.StopPayment(sp, timeout=CALL_TIMEOUT)
        ).result.outcome == common_pb2.REQUEST_STATE_EXECUTED

        extend_ctx = context(clock)
        extend_ctx.hold_until.CopyFrom(_ts(START + timedelta(hours=96)))
        extended = await stub.ExtendHold(
            bank_pb2.ExtendHoldRequest(
                context=extend_ctx,
                order=requests_pb2.Extend(target_request_id=sp.context.request_id, account=account),
            ),
            timeout=CALL_TIMEOUT,
        )
        assert extended.result.hold_until.ToDatetime(tzinfo=UTC) == START + timedelta(hours=96)

        fz = await stub.Freeze(
            bank_pb2.FreezeRequest(
                context=context(clock),
                order=requests_pb2.Freeze(
                    account=account,
                    amount=common_pb2.Money(currency="CNY", minor_units=800_000),
                    converts_request_id=sp.context.request_id,
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
        assert (fz.result.outcome, fz.result.amount_frozen.minor_units) == (
            common_pb2.REQUEST_STATE_EXECUTED,
            800_000,
        )

        released = await stub.ReleaseHold(
            bank_pb2.ReleaseHoldRequest(
                context=context(clock),
                order=requests_pb2.Release(target_request_id=sp.context.request_id, account=account),
            ),
            timeout=CALL_TIMEOUT,
        )
        assert released.result.reason == results_pb2.REASON_CODE_NO_ACTIVE_HOLD  # converted into the freeze

        data = await stub.QueryBankData(
            bank_pb2.QueryBankDataRequest(
                context=context(clock),
                order=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_TRANSACTIONS,
                    account=account,
                    period=period(START - timedelta(days=1), START),
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert data.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert [(r.fields["transfer_id"], r.fields["direction"]) for r in data.answer.records] == [
        ("CCB3300000001", "in"),
        ("ICBC5520000003", "out"),
    ]


async def test_concurrent_redeliveries_execute_once(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (agency, _, channel):
        stub = bank_pb2_grpc.BankServiceStub(channel)
        request = fraud_stop(clock)
        answers = await asyncio.gather(*(stub.StopPayment(request, timeout=CALL_TIMEOUT) for _ in range(8)))
        core = agency.core
        assert isinstance(core, BankCore)
        assert len({a.SerializeToString(deterministic=True) for a in answers}) == 1
        assert len(core.holds_on(story.FRAUD_ACCOUNT)) == 1
        assert core.available(story.FRAUD_ACCOUNT) == 0


class _BrokenBank(BankCore):
    def stop_payment(self, request: bank_pb2.StopPaymentRequest) -> bank_pb2.StopPaymentResponse:
        raise RuntimeError(request.order.account.account_number)


async def test_a_crash_in_the_agency_system_is_internal_and_says_nothing_personal(clock: ManualClock) -> None:
    with _BrokenBank(BankConfig(agency_id="bank-icbc"), clock=clock) as core:
        async with serve_agency(
            bank_pb2_grpc.add_BankServiceServicer_to_server, BankServicer(core), grace=0.2
        ) as server:
            channel = grpc.aio.insecure_channel(server.address)
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await bank_pb2_grpc.BankServiceStub(channel).StopPayment(
                    fraud_stop(clock), timeout=CALL_TIMEOUT
                )
            await channel.close()
    assert failed.value.code() == grpc.StatusCode.INTERNAL
    assert story.FRAUD_ACCOUNT not in (failed.value.details() or "")


# -- taking an agency system down and back --------------------------------------------------------


async def test_stop_and_start_again_on_the_same_port(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (agency, server, channel):
        stub = bank_pb2_grpc.BankServiceStub(channel)
        request = fraud_stop(clock)
        first = await stub.StopPayment(request, timeout=CALL_TIMEOUT)
        address = server.address

        await server.stop()
        await server.stop()  # idempotent
        assert not server.serving
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stub.StopPayment(request, timeout=CALL_TIMEOUT)
        assert down.value.code() == grpc.StatusCode.UNAVAILABLE

        await server.start()
        assert server.address == address
        # The adapter's channel reconnects by itself; the order is answered from the journal.
        again = await stub.StopPayment(request, timeout=CALL_TIMEOUT, wait_for_ready=True)
        assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)
        assert await health_of(channel, BANK_SERVICE) == health_pb2.HealthCheckResponse.SERVING
        core = agency.core
        assert isinstance(core, BankCore)
        assert core.execution_count(request.context.request_id) == 1


async def test_a_port_in_use_is_an_error(registry: Registry, tmp_path: Path, clock: ManualClock) -> None:
    async with served(registry, "bank-icbc", tmp_path, clock) as (agency, server, _):
        clash = agency.server(port=server.port)
        with pytest.raises(AgencyServerError):
            await clash.start()
    with pytest.raises(AgencyServerError):
        _ = AgencyServer(bank_pb2_grpc.add_BankServiceServicer_to_server, object()).address


async def test_a_restart_from_the_same_data_directory_keeps_state_and_journal(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    request = fraud_stop(clock)
    async with served(registry, "bank-icbc", tmp_path, clock) as (_, _, channel):
        first = await bank_pb2_grpc.BankServiceStub(channel).StopPayment(request, timeout=CALL_TIMEOUT)
    clock.advance(timedelta(minutes=5))
    async with served(registry, "bank-icbc", tmp_path, clock) as (agency, _, channel):
        again = await bank_pb2_grpc.BankServiceStub(channel).StopPayment(request, timeout=CALL_TIMEOUT)
        core = agency.core
        assert isinstance(core, BankCore)
        assert core.balance(story.FRAUD_ACCOUNT) == 1_500_000  # seeded once, not twice
        assert len(core.holds_on(story.FRAUD_ACCOUNT)) == 1
    assert again.SerializeToString(deterministic=True) == first.SerializeToString(deterministic=True)


async def test_a_storage_failure_is_unavailable_so_the_adapter_retries(clock: ManualClock) -> None:
    core = BankCore(BankConfig(agency_id="bank-icbc"), clock=clock)
    async with serve_agency(
        bank_pb2_grpc.add_BankServiceServicer_to_server,
        BankServicer(core),
        service_name=BANK_SERVICE,
        grace=0.2,
    ) as server:
        core.close()
        channel = grpc.aio.insecure_channel(server.address)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await bank_pb2_grpc.BankServiceStub(channel).StopPayment(fraud_stop(clock), timeout=CALL_TIMEOUT)
        await channel.close()
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert story.FRAUD_ACCOUNT not in (failed.value.details() or "")


# -- CarrierService -------------------------------------------------------------------------------


async def test_carrier_over_grpc(registry: Registry, tmp_path: Path, clock: ManualClock) -> None:
    fraudster = common_pb2.PhoneRef(e164=story.FRAUDSTER_PHONE, iccid=story.FRAUDSTER_ICCID)
    async with served(registry, "carrier-cmcc", tmp_path, clock) as (_, _, channel):
        stub = carrier_pb2_grpc.CarrierServiceStub(channel)
        request = carrier_pb2.BlockNumberRequest(
            context=context(clock),
            order=requests_pb2.NumberBlock(phone=fraudster, scope=requests_pb2.BLOCK_SCOPE_ALL),
        )
        blocked = await stub.BlockNumber(request, timeout=CALL_TIMEOUT)
        assert await stub.BlockNumber(request, timeout=CALL_TIMEOUT) == blocked
        calls = await stub.QuerySubscriberData(
            carrier_pb2.QuerySubscriberDataRequest(
                context=context(clock),
                order=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_CALL_RECORDS,
                    phone=fraudster,
                    period=period(START - timedelta(hours=1), START),
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
        subscriber = await stub.QuerySubscriberData(
            carrier_pb2.QuerySubscriberDataRequest(
                context=context(clock),
                order=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_SUBSCRIBER, phone=fraudster
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert blocked.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
    assert list(blocked.result.block.blocked) == ["number", "sim", "imei"]
    assert {r.fields["callee"] for r in calls.answer.records} == {story.POTENTIAL_VICTIM_PHONE}
    assert subscriber.answer.holder["name"] == story.FRAUD_HOLDER
    assert subscriber.answer.holder["blocked"] == "number,sim,imei"


async def test_carrier_warns_the_potential_victim_over_grpc(
    registry: Registry, tmp_path: Path, clock: ManualClock
) -> None:
    async with served(registry, "carrier-ctcc", tmp_path, clock) as (_, _, channel):
        response = await carrier_pb2_grpc.CarrierServiceStub(channel).WarnSubscriber(
            carrier_pb2.WarnSubscriberRequest(
                context=context(clock),
                order=requests_pb2.Warning(
                    phone=common_pb2.PhoneRef(e164=story.POTENTIAL_VICTIM_PHONE),
                    channel=requests_pb2.WARNING_CHANNEL_CALL,
                    template_id="fraud-call-warning",
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert (response.result.outcome, response.result.block.warned) == (
        common_pb2.REQUEST_STATE_EXECUTED,
        True,
    )


# -- PlatformService ------------------------------------------------------------------------------


async def test_platform_over_grpc(registry: Registry, tmp_path: Path, clock: ManualClock) -> None:
    fraudster = common_pb2.PlatformAccountRef(platform=story.WECHAT, account_id=story.FRAUDSTER_WECHAT_ID)
    victim = common_pb2.PlatformAccountRef(platform=story.WECHAT, account_id=story.POTENTIAL_VICTIM_WECHAT_ID)
    async with served(registry, "platform-wechat", tmp_path, clock) as (_, _, channel):
        stub = platform_pb2_grpc.PlatformServiceStub(channel)
        blocked = await stub.BlockAccount(
            platform_pb2.BlockAccountRequest(
                context=context(clock),
                order=requests_pb2.AccountBlock(
                    account=fraudster, level=requests_pb2.RESTRICTION_LEVEL_SUSPEND
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
        warned = await stub.WarnUser(
            platform_pb2.WarnUserRequest(
                context=context(clock),
                order=requests_pb2.Warning(
                    platform_account=victim,
                    channel=requests_pb2.WARNING_CHANNEL_IN_APP,
                    template_id="scam-contact",
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
        logins = await stub.QueryPlatformData(
            platform_pb2.QueryPlatformDataRequest(
                context=context(clock),
                order=requests_pb2.DataRequest(
                    category=requests_pb2.DATA_CATEGORY_LOGIN_IPS,
                    platform_account=fraudster,
                    period=period(START - timedelta(hours=4), START),
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert list(blocked.result.block.blocked) == ["payments", "messaging"]
    assert warned.result.block.warned
    assert [r.fields["ip"] for r in logins.answer.records] == ["203.0.113.45", "192.0.2.77"]


# -- PoliceService --------------------------------------------------------------------------------


async def test_police_desk_over_grpc(registry: Registry, tmp_path: Path, clock: ManualClock) -> None:
    rules = {requests_pb2.ASSISTANCE_KIND_DETAIN: AssistanceRule.decline("needs a local warrant")}
    async with served(registry, "police-440305", tmp_path, clock, assistance_rules=rules) as (_, _, channel):
        stub = police_pb2_grpc.PoliceServiceStub(channel)

        def ask(kind: requests_pb2.AssistanceKind.ValueType) -> police_pb2.HandleAssistanceRequest:
            return police_pb2.HandleAssistanceRequest(
                context=context(clock),
                order=requests_pb2.Assistance(region="440305", kind=kind, task="locate the handset"),
            )

        completed = await stub.HandleAssistance(
            ask(requests_pb2.ASSISTANCE_KIND_LOCATE), timeout=CALL_TIMEOUT
        )
        declined = await stub.HandleAssistance(ask(requests_pb2.ASSISTANCE_KIND_DETAIN), timeout=CALL_TIMEOUT)
        filed = await stub.ReceiveFraudReport(
            police_pb2.ReceiveFraudReportRequest(
                context=context(clock, sender="bank-icbc"),
                report=requests_pb2.FraudReport(
                    kind=requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT,
                    summary="fast in, fast out",
                    region="440305",
                ),
            ),
            timeout=CALL_TIMEOUT,
        )
    assert completed.result.assistance == results_pb2.ASSISTANCE_DECISION_COMPLETED
    assert completed.report.records[0].fields["kind"] == "LOCATE"
    assert (declined.result.reason, declined.result.detail) == (
        results_pb2.REASON_CODE_DECLINED,
        "needs a local warrant",
    )
    assert filed.result.outcome == common_pb2.REQUEST_STATE_EXECUTED
