"""The reference platform core: restriction levels, warnings, account data, idempotency, the seed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import agency_pb2, common_pb2, platform_pb2, requests_pb2, results_pb2

from agencies import _seed as story
from agencies._common import PlatformError, Reach
from agencies.platform import PlatformConfig, PlatformCore, Restriction
from broker.protocol import ManualClock, load_directory, new_uuid7, validate_message

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)
ACCOUNT = "wxid_k7m2q9x4a1b2"

EXECUTED = common_pb2.REQUEST_STATE_EXECUTED
REJECTED = common_pb2.REQUEST_STATE_REJECTED
PAYMENTS = requests_pb2.RESTRICTION_LEVEL_PAYMENTS
SUSPEND = requests_pb2.RESTRICTION_LEVEL_SUSPEND
BAN = requests_pb2.RESTRICTION_LEVEL_BAN


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture
def core(clock: ManualClock) -> Iterator[PlatformCore]:
    config = PlatformConfig(agency_id="platform-wechat", platform_codes=("wechat",))
    with PlatformCore(config, clock=clock) as platform:
        platform.register_account(
            "wechat",
            ACCOUNT,
            display_name="客服-小李",
            real_name="李某",
            id_number="450481199506300017",
            registered_phone="+8615012340001",
            registered_at=START - timedelta(days=18),
        )
        yield platform


def context(clock: ManualClock) -> agency_pb2.OrderContext:
    return agency_pb2.OrderContext(request_id=new_uuid7(clock), sender="police-440305")


def account(account_id: str = ACCOUNT, platform: str = "wechat") -> common_pb2.PlatformAccountRef:
    return common_pb2.PlatformAccountRef(platform=platform, account_id=account_id, display_name="客服-小李")


def restrict(
    clock: ManualClock,
    level: requests_pb2.RestrictionLevel.ValueType,
    *,
    unblock: bool = False,
    ref: common_pb2.PlatformAccountRef | None = None,
) -> platform_pb2.BlockAccountRequest:
    return platform_pb2.BlockAccountRequest(
        context=context(clock),
        order=requests_pb2.AccountBlock(account=ref or account(), level=level, unblock=unblock),
    )


def warn(
    clock: ManualClock,
    *,
    ref: common_pb2.PlatformAccountRef | None = None,
    channel: requests_pb2.WarningChannel.ValueType = requests_pb2.WARNING_CHANNEL_IN_APP,
) -> platform_pb2.WarnUserRequest:
    return platform_pb2.WarnUserRequest(
        context=context(clock),
        order=requests_pb2.Warning(
            platform_account=ref or account(), channel=channel, template_id="scam-contact"
        ),
    )


def query(
    clock: ManualClock,
    category: requests_pb2.DataCategory.ValueType,
    *,
    ref: common_pb2.PlatformAccountRef | None = None,
    period: tuple[datetime, datetime] | None = None,
) -> platform_pb2.QueryPlatformDataRequest:
    order = requests_pb2.DataRequest(category=category, platform_account=ref or account())
    if period is not None:
        order.period.start.CopyFrom(_ts(period[0]))
        order.period.end.CopyFrom(_ts(period[1]))
    return platform_pb2.QueryPlatformDataRequest(context=context(clock), order=order)


def _ts(when: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(when)
    return stamp


def level_of(core: PlatformCore) -> Restriction:
    acct = core.account("wechat", ACCOUNT)
    assert acct is not None
    return acct.restriction


# -- BlockAccount ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("level", "blocked"),
    [
        (PAYMENTS, ["payments"]),
        (SUSPEND, ["payments", "messaging"]),
        (BAN, ["payments", "messaging", "login"]),
    ],
)
def test_restriction_levels(
    core: PlatformCore, clock: ManualClock, level: requests_pb2.RestrictionLevel.ValueType, blocked: list[str]
) -> None:
    response = core.block_account(restrict(clock, level))
    validate_message(response)
    assert response.result.outcome == EXECUTED
    assert list(response.result.block.blocked) == blocked
    assert response.result.agency_reference.startswith("AB")
    assert level_of(core) == Restriction(level)


def test_restrictions_only_go_up_and_lifting_lifts_from_a_level(
    core: PlatformCore, clock: ManualClock
) -> None:
    core.block_account(restrict(clock, SUSPEND))
    lower = core.block_account(restrict(clock, PAYMENTS)).result
    assert (lower.outcome, lower.reason) == (EXECUTED, results_pb2.REASON_CODE_ALREADY_DONE)
    assert level_of(core) == Restriction.SUSPEND

    lifted = core.block_account(restrict(clock, SUSPEND, unblock=True)).result
    assert (lifted.outcome, list(lifted.block.blocked)) == (EXECUTED, ["messaging"])
    assert level_of(core) == Restriction.PAYMENTS

    nothing = core.block_account(restrict(clock, SUSPEND, unblock=True)).result
    assert (nothing.reason, list(nothing.block.blocked)) == (results_pb2.REASON_CODE_ALREADY_DONE, [])

    core.block_account(restrict(clock, PAYMENTS, unblock=True))
    assert level_of(core) == Restriction.NONE


def test_block_refusals(core: PlatformCore, clock: ManualClock) -> None:
    unknown = core.block_account(restrict(clock, BAN, ref=account("wxid_nobody"))).result
    foreign = core.block_account(restrict(clock, BAN, ref=account(platform="douyin"))).result
    unspecified = core.block_account(restrict(clock, requests_pb2.RESTRICTION_LEVEL_UNSPECIFIED)).result
    assert (unknown.outcome, unknown.reason) == (REJECTED, results_pb2.REASON_CODE_NOT_FOUND)
    assert foreign.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert unspecified.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    core.deregister_account("wechat", ACCOUNT)
    closed = core.block_account(restrict(clock, BAN)).result
    assert (closed.outcome, closed.reason) == (REJECTED, results_pb2.REASON_CODE_ACCOUNT_CLOSED)
    assert level_of(core) == Restriction.NONE


def test_display_names_do_not_decide(core: PlatformCore, clock: ManualClock) -> None:
    renamed = common_pb2.PlatformAccountRef(platform="wechat", account_id=ACCOUNT, display_name="官方客服")
    assert core.block_account(restrict(clock, PAYMENTS, ref=renamed)).result.outcome == EXECUTED


def test_block_is_executed_once_per_request(core: PlatformCore, clock: ManualClock) -> None:
    request = restrict(clock, BAN)
    first = core.block_account(request)
    core.block_account(restrict(clock, PAYMENTS, unblock=True))
    second = core.block_account(request)
    stored = core.execution(request.context.request_id)
    assert stored is not None
    assert (
        second.SerializeToString(deterministic=True)
        == stored.response
        == first.SerializeToString(deterministic=True)
    )
    assert core.execution_count(request.context.request_id) == 1
    assert level_of(core) == Restriction.NONE


# -- WarnUser -------------------------------------------------------------------------------------


def test_warning_is_recorded_and_reported(core: PlatformCore, clock: ManualClock) -> None:
    request = warn(clock)
    response = core.warn_user(request)
    validate_message(response)
    assert (response.result.outcome, response.result.block.warned) == (EXECUTED, True)
    assert response.result.warning == results_pb2.WARNING_OUTCOME_DISSUADED
    assert core.warn_user(request) == response
    (sent,) = core.warnings_to("wechat", ACCOUNT)
    assert (sent.request_id, sent.channel, sent.template_id) == (
        request.context.request_id,
        "in_app",
        "scam-contact",
    )


def test_a_warning_ends_as_the_platforms_record_of_the_user_says(
    core: PlatformCore, clock: ManualClock
) -> None:
    core.set_reach("wechat", ACCOUNT, Reach.CONTINUING)
    continuing = core.warn_user(warn(clock)).result
    assert (continuing.outcome, continuing.warning) == (EXECUTED, results_pb2.WARNING_OUTCOME_CONTINUING)
    core.set_reach("wechat", ACCOUNT, Reach.UNREACHABLE)
    assert core.warn_user(warn(clock)).result.warning == results_pb2.WARNING_OUTCOME_UNREACHABLE
    assert core.reach("wechat", ACCOUNT) is Reach.UNREACHABLE
    with pytest.raises(PlatformError):
        core.set_reach("wechat", "wxid_nobody", Reach.UNREACHABLE)


def test_warning_refusals(core: PlatformCore, clock: ManualClock) -> None:
    unknown = core.warn_user(warn(clock, ref=account("wxid_nobody"))).result
    sms = core.warn_user(warn(clock, channel=requests_pb2.WARNING_CHANNEL_SMS)).result
    phone_target = platform_pb2.WarnUserRequest(
        context=context(clock),
        order=requests_pb2.Warning(
            phone=common_pb2.PhoneRef(e164="+8618912340002"),
            channel=requests_pb2.WARNING_CHANNEL_IN_APP,
            template_id="scam-contact",
        ),
    )
    assert unknown.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert sms.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert core.warn_user(phone_target).result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert core.warnings_to("wechat", ACCOUNT) == ()


# -- QueryPlatformData ----------------------------------------------------------------------------


def test_account_data(core: PlatformCore, clock: ManualClock) -> None:
    response = core.query_platform_data(query(clock, requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT))
    validate_message(response)
    holder = dict(response.answer.holder)
    assert holder["real_name"] == "李某"
    assert holder["registered_phone"] == "+8615012340001"
    assert holder["display_name"] == "客服-小李"
    assert holder["restriction"] == "none"
    assert holder["registered_at"] == "2026-02-12T09:30:00Z"


def test_login_ips_in_a_period(core: PlatformCore, clock: ManualClock) -> None:
    for ip, minutes in (("203.0.113.45", 300), ("198.51.100.23", 100), ("192.0.2.77", 20)):
        core.record_login("wechat", ACCOUNT, ip, at=START - timedelta(minutes=minutes), device="Android")
    period = (START - timedelta(minutes=120), START)
    response = core.query_platform_data(query(clock, requests_pb2.DATA_CATEGORY_LOGIN_IPS, period=period))
    assert response.result.outcome == EXECUTED
    assert [dict(r.fields) for r in response.answer.records] == [
        {"ip": "198.51.100.23", "at": "2026-03-02T07:50:00Z", "device": "Android"},
        {"ip": "192.0.2.77", "at": "2026-03-02T09:10:00Z", "device": "Android"},
    ]


def test_data_request_refusals(core: PlatformCore, clock: ManualClock) -> None:
    unknown = core.query_platform_data(
        query(clock, requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT, ref=account("wxid_nobody"))
    )
    no_period = core.query_platform_data(query(clock, requests_pb2.DATA_CATEGORY_LOGIN_IPS))
    wrong_question = core.query_platform_data(query(clock, requests_pb2.DATA_CATEGORY_SUBSCRIBER))
    assert unknown.result.reason == results_pb2.REASON_CODE_NOT_FOUND
    assert no_period.result.reason == results_pb2.REASON_CODE_INVALID_REQUEST
    assert wrong_question.result.reason == results_pb2.REASON_CODE_INVALID_REQUEST


def test_deregistered_accounts_still_answer_data_requests(core: PlatformCore, clock: ManualClock) -> None:
    core.deregister_account("wechat", ACCOUNT)
    response = core.query_platform_data(query(clock, requests_pb2.DATA_CATEGORY_PLATFORM_ACCOUNT))
    assert response.answer.holder["account_status"] == "deregistered"


def test_direct_calls_refuse_foreign_codes_and_unknown_accounts(core: PlatformCore) -> None:
    with pytest.raises(PlatformError):
        core.register_account("douyin", "someone")
    with pytest.raises(PlatformError):
        core.record_login("wechat", "wxid_nobody", "192.0.2.1", at=START)


# -- the seeded story -----------------------------------------------------------------------------


def test_seeded_platform_accounts(clock: ManualClock) -> None:
    registry = load_directory(DIRECTORY)
    wechat = registry.get("platform-wechat")
    config = PlatformConfig(agency_id=wechat.id, platform_codes=wechat.platform_codes)
    with PlatformCore(config, clock=clock) as core:
        assert story.seed_platform(core, wechat.id, at=START) > 0
        assert story.seed_platform(core, wechat.id, at=START) == 0
        fraudster = core.account(story.WECHAT, story.FRAUDSTER_WECHAT_ID)
        assert fraudster is not None
        assert (fraudster.real_name, fraudster.registered_phone) == (
            story.FRAUD_HOLDER,
            story.FRAUDSTER_PHONE,
        )
        assert core.account(story.WECHAT, story.POTENTIAL_VICTIM_WECHAT_ID) is not None
        logins = core.logins_of(story.WECHAT, story.FRAUDSTER_WECHAT_ID, START - timedelta(days=7), START)
        assert len(logins) == 4
        assert all(login.ip.startswith(("192.0.2.", "198.51.100.", "203.0.113.")) for login in logins)
    routed = registry.platform_for_code(story.WECHAT)
    assert routed is not None
    assert routed.id == "platform-wechat"
