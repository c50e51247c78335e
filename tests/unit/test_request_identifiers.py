"""What a request names for case linkage: suspects only, distinct, at most 256."""

from __future__ import annotations

from greenchannel.v1 import common_pb2, requests_pb2

from broker.hub._request_identifiers import MAX_IDENTIFIERS, request_identifiers
from tests.unit.test_identifiers import _digests

K = requests_pb2.IdentifierKind
S = common_pb2


def _kinds_and_digests(request: requests_pb2.Request) -> tuple[list[tuple[int, str]], int]:
    found, skipped = request_identifiers(request, _digests())
    return [(i.kind, i.digest) for i in found], skipped


def test_a_stop_payment_names_the_held_account_not_the_victims() -> None:
    request = requests_pb2.Request(
        stop_payment=requests_pb2.StopPayment(
            account=S.BankAccountRef(account_number="6222020000000001", bank="bank-icbc"),
            victim_account=S.BankAccountRef(account_number="6225880000000009", bank="bank-cmb"),
        )
    )
    assert _kinds_and_digests(request) == (
        [(K.IDENTIFIER_KIND_BANK_ACCOUNT, "bank-icbc|6222020000000001")],
        0,
    )


def test_a_line_names_its_number_and_its_handset() -> None:
    phone = S.PhoneRef(e164="+8613800000001", imei="356789012345678")
    found, _ = _kinds_and_digests(requests_pb2.Request(number_block=requests_pb2.NumberBlock(phone=phone)))
    assert [kind for kind, _ in found] == [K.IDENTIFIER_KIND_PHONE, K.IDENTIFIER_KIND_IMEI]


def test_a_fraud_report_names_every_account_number_and_platform_account_once() -> None:
    account = S.BankAccountRef(account_number="6222020000000001", bank="bank-icbc")
    report = requests_pb2.FraudReport(
        accounts=[account, account],
        phones=[S.PhoneRef(e164="+8613800000001")],
        platform_accounts=[S.PlatformAccountRef(platform="wechat", account_id="wxid_x")],
    )
    found, skipped = _kinds_and_digests(requests_pb2.Request(fraud_report=report))
    assert [kind for kind, _ in found] == [
        K.IDENTIFIER_KIND_BANK_ACCOUNT,
        K.IDENTIFIER_KIND_PHONE,
        K.IDENTIFIER_KIND_PLATFORM_ACCOUNT,
    ]
    assert skipped == 0


def test_a_warning_names_no_suspect() -> None:
    warning = requests_pb2.Warning(phone=S.PhoneRef(e164="+8613800000001"))
    assert _kinds_and_digests(requests_pb2.Request(warning=warning)) == ([], 0)


def test_a_large_batch_keeps_the_first_256_and_counts_the_rest() -> None:
    phones = [S.PhoneRef(e164=f"+86138{n:08d}") for n in range(MAX_IDENTIFIERS + 44)]
    found, skipped = _kinds_and_digests(
        requests_pb2.Request(number_block=requests_pb2.NumberBlock(phones=phones))
    )
    assert len(found) == MAX_IDENTIFIERS
    assert found[0][1] == "~phone|+8613800000000"
    assert skipped == 44


def test_a_held_account_without_its_bank_is_named_under_the_recipient_as_the_trail_names_it() -> None:
    freeze = requests_pb2.Freeze(account=S.BankAccountRef(account_number="9999000011112222"))
    found, _ = request_identifiers(requests_pb2.Request(freeze=freeze), _digests(), recipient="bank-abc")
    assert [i.digest for i in found] == ["bank-abc|9999000011112222"]
