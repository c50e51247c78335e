"""Routing: every body kind with the sample directory, and every way a request cannot be routed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, requests_pb2

from broker.hub import UnroutableError
from broker.hub._routing import resolve_recipient
from broker.protocol import Registry, load_directory

SAMPLE_DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"

ICBC_ACCOUNT = "6222020000000001"  # prefix 622202 -> bank-icbc
CMB_ACCOUNT = "6214830000000002"  # prefix 621483 -> bank-cmb
UNKNOWN_ACCOUNT = "9999990000000003"
CMCC_NUMBER = "+8613912345678"  # segment +86139 -> carrier-cmcc
PORTED_NUMBER = "+8613812345678"  # a +86138 (CMCC) number ported to carrier-cucc
CTCC_NUMBER = "+8618912345678"
UNKNOWN_NUMBER = "+8617012345678"  # no carrier holds +86170 in the sample
PERSONAL = (
    ICBC_ACCOUNT,
    CMB_ACCOUNT,
    UNKNOWN_ACCOUNT,
    CMCC_NUMBER,
    PORTED_NUMBER,
    UNKNOWN_NUMBER,
    "Zhang San",
)

Build = Callable[[], requests_pb2.Request]


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(SAMPLE_DIRECTORY)


def account(number: str = ICBC_ACCOUNT, bank: str = "") -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(account_number=number, holder_name="Zhang San", bank=bank)


def phone(e164: str = CMCC_NUMBER) -> common_pb2.PhoneRef:
    return common_pb2.PhoneRef(e164=e164)


def platform_account(code: str = "wechat") -> common_pb2.PlatformAccountRef:
    return common_pb2.PlatformAccountRef(platform=code, account_id="wxid_abc123")


def request(recipient: str = "", **body: object) -> requests_pb2.Request:
    return requests_pb2.Request(recipient=recipient, **body)  # type: ignore[arg-type]


def money() -> common_pb2.Money:
    return common_pb2.Money(currency="CNY", minor_units=100_000)


def stop_payment(acc: common_pb2.BankAccountRef | None = None, recipient: str = "") -> requests_pb2.Request:
    return request(recipient, stop_payment=requests_pb2.StopPayment(account=acc or account(), amount=money()))


# -- routes ---------------------------------------------------------------------------------------

ROUTES: list[tuple[str, Build, str]] = [
    (
        "return_funds-by-prefix",
        lambda: request(
            return_funds=requests_pb2.ReturnFunds(
                account=account(),
                payouts=[requests_pb2.VictimPayout(victim_account=account(CMB_ACCOUNT), amount=money())],
            )
        ),
        "bank-icbc",
    ),
    (
        "linkage_notice-to-named-police",
        lambda: request("police-440305", linkage_notice=requests_pb2.LinkageNotice(link_id="x")),
        "police-440305",
    ),
    (
        "dissuasion-to-named-police",
        lambda: request("police-310115", dissuasion=requests_pb2.Dissuasion(warning_request_id="x")),
        "police-310115",
    ),
    (
        "follow_up-to-named-police",
        lambda: request("police-310115", follow_up=requests_pb2.FollowUp(return_request_id="x")),
        "police-310115",
    ),
    (
        "appeal-to-named-police",
        lambda: request("police-310115", appeal=requests_pb2.Appeal(restriction_request_id="x")),
        "police-310115",
    ),
    (
        "broker-lifting-order-to-named-carrier",
        lambda: request("carrier-cmcc", release=requests_pb2.Release(target_request_id="x")),
        "carrier-cmcc",
    ),
    (
        "broker-lifting-order-to-named-platform",
        lambda: request("platform-wechat", release=requests_pb2.Release(target_request_id="x")),
        "platform-wechat",
    ),
    (
        "broker-lifting-order-to-named-bank",
        lambda: request("bank-abc", release=requests_pb2.Release(target_request_id="x")),
        "bank-abc",
    ),
    ("stop_payment-by-prefix", stop_payment, "bank-icbc"),
    ("stop_payment-by-longest-prefix", lambda: stop_payment(account(CMB_ACCOUNT)), "bank-cmb"),
    (
        "stop_payment-by-named-bank",
        lambda: stop_payment(account(UNKNOWN_ACCOUNT, bank="bank-abc")),
        "bank-abc",
    ),
    (
        "stop_payment-named-bank-beats-prefix",
        lambda: stop_payment(account(ICBC_ACCOUNT, bank="bank-ccb")),
        "bank-ccb",
    ),
    (
        "freeze",
        lambda: request(freeze=requests_pb2.Freeze(account=account(CMB_ACCOUNT), amount=money())),
        "bank-cmb",
    ),
    ("release", lambda: request(release=requests_pb2.Release(account=account())), "bank-icbc"),
    ("extend", lambda: request(extend=requests_pb2.Extend(account=account(bank="bank-ccb"))), "bank-ccb"),
    ("number_block", lambda: request(number_block=requests_pb2.NumberBlock(phone=phone())), "carrier-cmcc"),
    (
        "number_block-ported-number",
        lambda: request(number_block=requests_pb2.NumberBlock(phone=phone(PORTED_NUMBER))),
        "carrier-cucc",
    ),
    (
        "account_block",
        lambda: request(account_block=requests_pb2.AccountBlock(account=platform_account("douyin"))),
        "platform-douyin",
    ),
    (
        "data_request-account",
        lambda: request(data_request=requests_pb2.DataRequest(account=account(CMB_ACCOUNT))),
        "bank-cmb",
    ),
    (
        "data_request-account-named-bank",
        lambda: request(data_request=requests_pb2.DataRequest(account=account(bank="bank-abc"))),
        "bank-abc",
    ),
    (
        "data_request-phone",
        lambda: request(data_request=requests_pb2.DataRequest(phone=phone(CTCC_NUMBER))),
        "carrier-ctcc",
    ),
    (
        "data_request-platform_account",
        lambda: request(data_request=requests_pb2.DataRequest(platform_account=platform_account("alipay"))),
        "platform-alipay",
    ),
    (
        "assistance-district",
        lambda: request(assistance=requests_pb2.Assistance(region="440305")),
        "police-440305",
    ),
    (
        "assistance-city",
        lambda: request(assistance=requests_pb2.Assistance(region="440306")),
        "police-440300",
    ),
    (
        "assistance-province-prefix",
        lambda: request(assistance=requests_pb2.Assistance(region="310101")),
        "police-310000",
    ),
    ("warning-phone", lambda: request(warning=requests_pb2.Warning(phone=phone())), "carrier-cmcc"),
    (
        "warning-platform_account",
        lambda: request(warning=requests_pb2.Warning(platform_account=platform_account())),
        "platform-wechat",
    ),
    (
        "fraud_report-region",
        lambda: request(fraud_report=requests_pb2.FraudReport(region="310115")),
        "police-310115",
    ),
    # Named recipients, consistent with the body.
    ("named-bank", lambda: stop_payment(account(UNKNOWN_ACCOUNT), recipient="bank-abc"), "bank-abc"),
    (
        "named-bank-agrees-with-body",
        lambda: stop_payment(account(bank="bank-ccb"), recipient="bank-ccb"),
        "bank-ccb",
    ),
    (
        "named-carrier-overrides-segment",
        lambda: request("carrier-ctcc", number_block=requests_pb2.NumberBlock(phone=phone())),
        "carrier-ctcc",
    ),
    (
        "named-police-for-assistance",
        lambda: request("police-440300", assistance=requests_pb2.Assistance(region="440305")),
        "police-440300",
    ),
    (
        "named-police-for-fraud_report-without-region",
        lambda: request("police-310000", fraud_report=requests_pb2.FraudReport()),
        "police-310000",
    ),
    (
        "named-platform-serving-the-code",
        lambda: request("platform-wechat", warning=requests_pb2.Warning(platform_account=platform_account())),
        "platform-wechat",
    ),
]


@pytest.mark.parametrize(("build", "expected"), [pytest.param(b, e, id=i) for i, b, e in ROUTES])
def test_routes(registry: Registry, build: Build, expected: str) -> None:
    assert resolve_recipient(build(), registry).id == expected


def test_every_body_kind_is_routed() -> None:
    bodies = {build().WhichOneof("body") for _, build, _ in ROUTES}
    assert bodies == {field.name for field in requests_pb2.Request.DESCRIPTOR.oneofs_by_name["body"].fields}


# -- unroutable -----------------------------------------------------------------------------------

UNROUTABLE: list[tuple[str, Build, str, str]] = [
    ("no-body", request, "NO_ROUTE", "request.body"),
    (
        "lifting-order-to-police",
        lambda: request("police-310115", release=requests_pb2.Release(target_request_id="x")),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "lifting-order-to-unknown",
        lambda: request("carrier-nowhere", release=requests_pb2.Release(target_request_id="x")),
        "UNKNOWN_RECIPIENT",
        "request.recipient",
    ),
    (
        "release-with-account-to-carrier",
        lambda: request("carrier-cmcc", release=requests_pb2.Release(account=account())),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "appeal-without-recipient",
        lambda: request(appeal=requests_pb2.Appeal()),
        "NO_ROUTE",
        "request.recipient",
    ),
    (
        "unknown-recipient",
        lambda: stop_payment(recipient="bank-nowhere"),
        "UNKNOWN_RECIPIENT",
        "request.recipient",
    ),
    (
        "recipient-mismatch-bank",
        lambda: stop_payment(account(bank="bank-icbc"), recipient="bank-ccb"),
        "RECIPIENT_MISMATCH",
        "request.stop_payment.account.bank",
    ),
    (
        "recipient-mismatch-data_request-bank",
        lambda: request("bank-ccb", data_request=requests_pb2.DataRequest(account=account(bank="bank-icbc"))),
        "RECIPIENT_MISMATCH",
        "request.data_request.account.bank",
    ),
    (
        "recipient-mismatch-platform",
        lambda: request(
            "platform-alipay", account_block=requests_pb2.AccountBlock(account=platform_account())
        ),
        "RECIPIENT_MISMATCH",
        "request.account_block.account.platform",
    ),
    (
        "wrong-kind-named-carrier-for-stop_payment",
        lambda: stop_payment(recipient="carrier-cmcc"),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "wrong-kind-named-bank-for-number_block",
        lambda: request("bank-icbc", number_block=requests_pb2.NumberBlock(phone=phone())),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "wrong-kind-named-bank-for-assistance",
        lambda: request("bank-icbc", assistance=requests_pb2.Assistance(region="310115")),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "wrong-kind-named-regulator-for-warning",
        lambda: request("regulator-miit", warning=requests_pb2.Warning(phone=phone())),
        "WRONG_RECIPIENT_KIND",
        "request.recipient",
    ),
    (
        "wrong-kind-account-bank-names-a-carrier",
        lambda: request(freeze=requests_pb2.Freeze(account=account(bank="carrier-cmcc"))),
        "WRONG_RECIPIENT_KIND",
        "request.freeze.account.bank",
    ),
    (
        "unknown-account-bank",
        lambda: stop_payment(account(bank="bank-nowhere")),
        "UNKNOWN_RECIPIENT",
        "request.stop_payment.account.bank",
    ),
    (
        "no-bank-for-prefix",
        lambda: stop_payment(account(UNKNOWN_ACCOUNT)),
        "NO_ROUTE",
        "request.stop_payment.account.account_number",
    ),
    (
        "no-bank-for-release",
        lambda: request(release=requests_pb2.Release(account=account(UNKNOWN_ACCOUNT))),
        "NO_ROUTE",
        "request.release.account.account_number",
    ),
    (
        "no-bank-for-data_request",
        lambda: request(data_request=requests_pb2.DataRequest(account=account(UNKNOWN_ACCOUNT))),
        "NO_ROUTE",
        "request.data_request.account.account_number",
    ),
    (
        "no-carrier-for-segment",
        lambda: request(number_block=requests_pb2.NumberBlock(phone=phone(UNKNOWN_NUMBER))),
        "NO_ROUTE",
        "request.number_block.phone.e164",
    ),
    (
        "no-carrier-for-warning",
        lambda: request(warning=requests_pb2.Warning(phone=phone(UNKNOWN_NUMBER))),
        "NO_ROUTE",
        "request.warning.phone.e164",
    ),
    (
        "no-platform-for-code",
        lambda: request(account_block=requests_pb2.AccountBlock(account=platform_account("weibo"))),
        "NO_ROUTE",
        "request.account_block.account.platform",
    ),
    (
        "no-platform-for-data_request",
        lambda: request(data_request=requests_pb2.DataRequest(platform_account=platform_account("qq"))),
        "NO_ROUTE",
        "request.data_request.platform_account.platform",
    ),
    (
        "no-police-for-region",
        lambda: request(assistance=requests_pb2.Assistance(region="510104")),
        "NO_ROUTE",
        "request.assistance.region",
    ),
    (
        "fraud_report-without-region",
        lambda: request(fraud_report=requests_pb2.FraudReport()),
        "NO_ROUTE",
        "request.fraud_report.region",
    ),
    (
        "fraud_report-region-without-police",
        lambda: request(fraud_report=requests_pb2.FraudReport(region="510104")),
        "NO_ROUTE",
        "request.fraud_report.region",
    ),
    (
        "data_request-without-subject",
        lambda: request(data_request=requests_pb2.DataRequest()),
        "NO_ROUTE",
        "request.data_request.subject",
    ),
    (
        "warning-without-target",
        lambda: request("carrier-cmcc", warning=requests_pb2.Warning()),
        "NO_ROUTE",
        "request.warning.target",
    ),
]


@pytest.mark.parametrize(
    ("build", "reason", "subject"), [pytest.param(b, r, s, id=i) for i, b, r, s in UNROUTABLE]
)
def test_unroutable(registry: Registry, build: Build, reason: str, subject: str) -> None:
    with pytest.raises(UnroutableError) as info:
        resolve_recipient(build(), registry)
    assert info.value.reason == reason
    assert info.value.subject == subject
    message = str(info.value)
    assert message
    for personal in PERSONAL:
        assert personal not in message


def test_messages_say_what_was_tried(registry: Registry) -> None:
    with pytest.raises(UnroutableError, match="no bank in the directory holds accounts"):
        resolve_recipient(stop_payment(account(UNKNOWN_ACCOUNT)), registry)
    with pytest.raises(UnroutableError, match="no carrier in the directory serves this number"):
        resolve_recipient(
            request(number_block=requests_pb2.NumberBlock(phone=phone(UNKNOWN_NUMBER))), registry
        )
    with pytest.raises(UnroutableError, match="'weibo'"):
        resolve_recipient(
            request(account_block=requests_pb2.AccountBlock(account=platform_account("weibo"))), registry
        )
    with pytest.raises(UnroutableError, match="region 510104"):
        resolve_recipient(request(assistance=requests_pb2.Assistance(region="510104")), registry)
    with pytest.raises(UnroutableError, match="'carrier-cmcc' is a carrier"):
        resolve_recipient(stop_payment(recipient="carrier-cmcc"), registry)


def test_malformed_account_number_is_unroutable_not_an_error(registry: Registry) -> None:
    # Letters are legal in account numbers, but prefixes are digits: no route, and no echo.
    with pytest.raises(UnroutableError) as info:
        resolve_recipient(stop_payment(account("AB22020000000001")), registry)
    assert info.value.reason == "NO_ROUTE"
    assert "AB22020000000001" not in str(info.value)
