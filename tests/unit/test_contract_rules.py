"""The field rules declared in the contract, as every boundary enforces them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import bus_pb2, common_pb2, envelope_pb2, requests_pb2

from broker.protocol import InvalidMessageError, parse_and_validate, request_type_of, validate_message


def valid_request() -> requests_pb2.Request:
    issued = Timestamp(seconds=1_795_000_000)
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number="SH-2026-0001",
            issuing_agency="police-310115",
            legal_instrument_id="X-1",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        issued_at=issued,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number="6222020200001234567", holder_name="李某"),
            amount=common_pb2.Money(currency="CNY", minor_units=100),
        ),
    )


def _number_block(phone: str) -> Callable[[requests_pb2.Request], None]:
    def mutate(request: requests_pb2.Request) -> None:
        request.number_block.phone.e164 = phone
        request.number_block.scope = requests_pb2.BLOCK_SCOPE_NUMBER

    return mutate


def _set(path: str, value: object) -> Callable[[requests_pb2.Request], None]:
    def mutate(request: requests_pb2.Request) -> None:
        *parents, leaf = path.split(".")
        target = request
        for name in parents:
            target = getattr(target, name)
        setattr(target, leaf, value)

    return mutate


def _deposited_in(seconds: int) -> Callable[[requests_pb2.Request], None]:
    def mutate(request: requests_pb2.Request) -> None:
        # Relative to now: the rule is "before now" whenever it is checked.
        request.stop_payment.deposited_at.GetCurrentTime()
        request.stop_payment.deposited_at.seconds += seconds

    return mutate


CASES: list[tuple[str, Callable[[requests_pb2.Request], None], str, str]] = [
    (
        "deposit in the future",
        _deposited_in(3600),
        "stop_payment.deposited_at",
        "timestamp.lt_now",
    ),
    ("zero amount", _set("stop_payment.amount.minor_units", 0), "stop_payment.amount", "amount.positive"),
    (
        "negative amount",
        _set("stop_payment.amount.minor_units", -5),
        "stop_payment.amount.minor_units",
        "int64.gte",
    ),
    (
        "lowercase currency",
        _set("stop_payment.amount.currency", "cny"),
        "stop_payment.amount.currency",
        "string.pattern",
    ),
    (
        "short account number",
        _set("stop_payment.account.account_number", "123"),
        "stop_payment.account.account_number",
        "string.pattern",
    ),
    (
        "empty holder name",
        _set("stop_payment.account.holder_name", ""),
        "stop_payment.account.holder_name",
        "string.min_len",
    ),
    (
        "bad bank id",
        _set("stop_payment.account.bank", "Bank ICBC"),
        "stop_payment.account.bank",
        "string.pattern",
    ),
    ("no priority", _set("priority", 0), "priority", "enum.not_in"),
    ("unknown priority", _set("priority", 9), "priority", "enum.defined_only"),
    ("bad case number", _set("case_ref.case_number", "x"), "case_ref.case_number", "string.pattern"),
    (
        "bad issuing agency",
        _set("case_ref.issuing_agency", "POLICE"),
        "case_ref.issuing_agency",
        "string.pattern",
    ),
    (
        "no instrument type",
        _set("case_ref.legal_instrument_type", 0),
        "case_ref.legal_instrument_type",
        "enum.not_in",
    ),
    ("bad parent id", _set("parent_id", "not-a-uuid"), "parent_id", "string.pattern"),
    ("hop too deep", _set("hop", 65), "hop", "uint32.lte"),
    ("bad idempotency key", _set("idempotency_key", "a b"), "idempotency_key", "string.pattern"),
    ("E.164 without plus", _number_block("8613800138000"), "number_block.phone.e164", "string.pattern"),
    ("E.164 with leading zero", _number_block("+0861380013800"), "number_block.phone.e164", "string.pattern"),
    ("E.164 too long", _number_block("+8613800138000123"), "number_block.phone.e164", "string.pattern"),
]


@pytest.mark.parametrize(("mutate", "field", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_names_the_field(
    mutate: Callable[[requests_pb2.Request], None], field: str, rule: str
) -> None:
    request = valid_request()
    mutate(request)
    with pytest.raises(InvalidMessageError) as caught:
        validate_message(request)
    assert (field, rule) in {(v.field, v.rule) for v in caught.value.violations}


def test_valid_request_passes() -> None:
    validate_message(valid_request())
    past = valid_request()
    _deposited_in(-3600)(past)
    validate_message(past)


def test_missing_body_and_case_are_reported_together() -> None:
    with pytest.raises(InvalidMessageError) as caught:
        validate_message(requests_pb2.Request(priority=common_pb2.PRIORITY_GREEN))
    fields = {v.field for v in caught.value.violations}
    assert {"body", "case_ref", "issued_at"} <= fields


def test_repeated_field_violation_has_an_index() -> None:
    request = valid_request()
    request.ClearField("stop_payment")
    request.fraud_report.kind = requests_pb2.FRAUD_REPORT_KIND_MULE_ACCOUNT
    request.fraud_report.summary = "mule accounts"
    request.fraud_report.accounts.add(account_number="6222020200001234567", holder_name="a")
    request.fraud_report.accounts.add(account_number="x", holder_name="b")
    with pytest.raises(InvalidMessageError) as caught:
        validate_message(request)
    assert [v.field for v in caught.value.violations] == ["fraud_report.accounts[1].account_number"]


def test_oversized_payload_is_refused() -> None:
    signed = envelope_pb2.SignedMessage(payload=b"x" * (1024 * 1024 + 1), signature="h" * 20)
    with pytest.raises(InvalidMessageError) as caught:
        validate_message(bus_pb2.SubmitRequest(request=signed))
    assert caught.value.violations[0].rule == "bytes.max_len"


def test_nested_unknown_field_is_refused() -> None:
    stop = requests_pb2.StopPayment()
    stop.CopyFrom(valid_request().stop_payment)
    nested = stop.SerializeToString() + b"\xa8\x06\x01"  # field 101 inside StopPayment
    request = valid_request()
    request.ClearField("stop_payment")
    data = request.SerializeToString() + b"\x52" + bytes([len(nested)]) + nested  # field 10, length-delimited
    with pytest.raises(InvalidMessageError) as caught:
        parse_and_validate(requests_pb2.Request, data)
    assert caught.value.violations[0].rule == "wire.unknown_fields"


def test_every_request_type_has_a_body() -> None:
    names = [f.name for f in requests_pb2.Request.DESCRIPTOR.oneofs_by_name["body"].fields]
    mapped = set()
    for name in names:
        request = requests_pb2.Request()
        getattr(request, name).SetInParent()
        mapped.add(request_type_of(request))
    assert mapped == set(common_pb2.RequestType.values()) - {common_pb2.REQUEST_TYPE_UNSPECIFIED}


_APPEALED = "0190f1a2-3b4c-7d5e-8f60-718293a4b5c6"


def _appeal(**fields: object) -> requests_pb2.Appeal:
    """An appeal with only the fields under test; the rest is left out of the verdict below."""
    return requests_pb2.Appeal(ground=requests_pb2.APPEAL_GROUND_NOT_INVOLVED, **fields)  # type: ignore[arg-type]


def _appeal_rules(appeal: requests_pb2.Appeal) -> set[str]:
    """The rules the appeal itself breaks (its statement is left empty here and not judged)."""
    try:
        validate_message(appeal)
    except InvalidMessageError as exc:
        return {v.rule for v in exc.violations if not v.field.startswith("statement")}
    return set()


_HELD = requests_pb2.HolderIdentifier(bank_account="6222020200001234567")


@pytest.mark.parametrize(
    ("fields", "broken"),
    [
        ({"restriction_request_id": _APPEALED}, set()),
        ({"mark_id": _APPEALED, "identifier": _HELD}, set()),
        ({}, {"appeal.one_subject"}),
        (
            {"restriction_request_id": _APPEALED, "mark_id": _APPEALED, "identifier": _HELD},
            {"appeal.one_subject"},
        ),
        ({"mark_id": _APPEALED}, {"appeal.mark_identifier"}),
        ({"restriction_request_id": _APPEALED, "identifier": _HELD}, {"appeal.mark_identifier"}),
        ({"mark_id": _APPEALED, "identifier": _HELD, "item_index": 0}, {"appeal.item_of_a_restriction"}),
        ({"mark_id": "not-a-uuid", "identifier": _HELD}, {"string.uuid"}),
        ({"mark_id": _APPEALED, "identifier": requests_pb2.HolderIdentifier()}, {"required"}),
    ],
    ids=[
        "restriction",
        "mark",
        "neither",
        "both",
        "mark without identifier",
        "identifier without mark",
        "mark with an item",
        "bad mark id",
        "empty identifier",
    ],
)
def test_an_appeal_names_a_restriction_or_a_mark(fields: dict[str, object], broken: set[str]) -> None:
    assert _appeal_rules(_appeal(**fields)) == broken
