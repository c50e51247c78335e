"""Results travel redacted; their onward transfers in full open only for the requester and the broker."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519
from google.protobuf.json_format import MessageToDict
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, lifecycle_pb2, results_pb2

from broker.cli._render import mask_account, status_document, status_lines
from broker.client import open_result_details
from broker.hub._result_privacy import onward_transfers_for_broker
from broker.protocol import (
    DATA_ANSWER_CONTENT_TYPE,
    RESULT_DETAILS_CONTENT_TYPE,
    DecryptionKeys,
    KeyUse,
    PublicKey,
    SealingError,
    seal,
    seal_result_details,
    validate_message,
)

REQUEST_ID = "01890a5d-ac96-774b-bcce-b302099a8057"
OTHER_REQUEST_ID = "01890a5d-ac96-774b-bcce-b302099a8058"
POLICE = "police-310115"  # asked: the request's sender
BANK = "bank-icbc"  # answered: the request's recipient, who seals
AT = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
ACCOUNTS = ("6217000010087654321", "6230580000123456789")
NAMES = ("王某某", "张某")


def enc_public(private: x25519.X25519PrivateKey) -> PublicKey:
    return PublicKey.from_raw(private.public_key().public_bytes_raw(), use=KeyUse.ENC)


def bank_result() -> results_pb2.Result:
    at = Timestamp()
    at.FromDatetime(AT)
    return results_pb2.Result(
        outcome=common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED,
        reason=results_pb2.REASON_CODE_INSUFFICIENT_FUNDS,
        amount_held=common_pb2.Money(currency="CNY", minor_units=1_500_000),
        onward_transfers=[
            results_pb2.OnwardTransfer(
                to_account=ACCOUNTS[0],
                to_bank="bank-ccb",
                amount=common_pb2.Money(currency="CNY", minor_units=2_000_000),
                at=at,
                transfer_id="ICBC5520000001",
                to_holder_name=NAMES[0],
            ),
            results_pb2.OnwardTransfer(
                to_account=ACCOUNTS[1],
                to_bank_code="307584007998",
                amount=common_pb2.Money(currency="CNY", minor_units=500_000),
                at=at,
                transfer_id="ICBC5520000002",
                to_holder_name=NAMES[1],
            ),
        ],
    )


class Keys:
    def __init__(self) -> None:
        self.police = x25519.X25519PrivateKey.generate()
        self.broker = x25519.X25519PrivateKey.generate()

    def sealed(self, result: results_pb2.Result | None = None) -> results_pb2.Result:
        return seal_result_details(
            result or bank_result(),
            request_id=REQUEST_ID,
            sender=BANK,
            recipient=POLICE,
            requester_key=enc_public(self.police),
            broker_key=enc_public(self.broker),
        )


def as_requester(result: results_pb2.Result, key: DecryptionKeys, **override: str) -> object:
    binding = {"request_id": REQUEST_ID, "sender": POLICE, "recipient": BANK} | override
    return open_result_details(result, key, **binding)


def as_broker(result: results_pb2.Result, key: x25519.X25519PrivateKey, **override: str) -> object:
    binding = {"request_id": REQUEST_ID, "sender": POLICE, "recipient": BANK} | override
    return onward_transfers_for_broker(result, broker_key=key, **binding)


def test_the_result_travels_redacted_and_keeps_what_the_case_needs() -> None:
    keys = Keys()
    sealed = keys.sealed()
    wire = sealed.SerializeToString()
    for secret in (*ACCOUNTS, *NAMES):
        assert secret.encode() not in wire
    validate_message(sealed)  # a redacted transfer obeys the contract
    original = bank_result()
    for redacted, full in zip(sealed.onward_transfers, original.onward_transfers, strict=True):
        assert (redacted.to_account, redacted.to_holder_name) == ("", "")
        assert redacted.to_bank == full.to_bank
        assert redacted.to_bank_code == full.to_bank_code
        assert redacted.amount == full.amount
        assert redacted.at == full.at
        assert redacted.transfer_id == full.transfer_id
    assert sealed.amount_held == original.amount_held
    assert sealed.sealed_details.content_type == RESULT_DETAILS_CONTENT_TYPE
    assert sealed.sealed_details.recipient_kid == enc_public(keys.police).kid
    assert sealed.broker_details.recipient_kid == enc_public(keys.broker).kid


def test_requester_and_broker_each_open_the_full_transfers() -> None:
    keys = Keys()
    sealed = keys.sealed()
    original = list(bank_result().onward_transfers)
    details = open_result_details(sealed, keys.police, request_id=REQUEST_ID, sender=POLICE, recipient=BANK)
    assert isinstance(details, results_pb2.ResultDetails)
    assert list(details.onward_transfers) == original
    assert as_broker(sealed, keys.broker) == original


def test_each_copy_opens_only_with_its_own_key() -> None:
    keys = Keys()
    sealed = keys.sealed()
    stranger = x25519.X25519PrivateKey.generate()
    for key in (keys.broker, stranger):
        with pytest.raises(SealingError):
            as_requester(sealed, key)
    for key in (keys.police, stranger):
        with pytest.raises(SealingError):
            as_broker(sealed, key)


@pytest.mark.parametrize(
    "override",
    [
        {"request_id": OTHER_REQUEST_ID},
        {"sender": "police-440305"},
        {"recipient": "bank-ccb"},
        {"sender": BANK, "recipient": POLICE},  # the parties swapped
    ],
)
def test_associated_data_binds_request_and_both_agencies(override: dict[str, str]) -> None:
    keys = Keys()
    sealed = keys.sealed()
    with pytest.raises(SealingError):
        as_requester(sealed, keys.police, **override)
    with pytest.raises(SealingError):
        as_broker(sealed, keys.broker, **override)


@pytest.mark.parametrize("copy", ["sealed_details", "broker_details"])
def test_tampered_ciphertext_fails(copy: str) -> None:
    keys = Keys()
    sealed = keys.sealed()
    payload = getattr(sealed, copy)
    flipped = bytearray(payload.ciphertext)
    flipped[-1] ^= 0x80
    payload.ciphertext = bytes(flipped)
    with pytest.raises(SealingError):
        as_requester(sealed, keys.police) if copy == "sealed_details" else as_broker(sealed, keys.broker)


def test_details_moved_into_another_requests_result_do_not_open() -> None:
    keys = Keys()
    donor = keys.sealed()
    other = keys.sealed()
    other.sealed_details.CopyFrom(donor.sealed_details)
    # Same parties, same key: only the request id differs, and it is bound.
    with pytest.raises(SealingError):
        as_requester(other, keys.police, request_id=OTHER_REQUEST_ID)


def test_details_must_match_the_transfers_the_signed_result_lists() -> None:
    keys = Keys()
    sealed = keys.sealed()
    sealed.onward_transfers[0].amount.minor_units = 1  # the clear copy says less went there
    with pytest.raises(SealingError, match="do not match"):
        as_requester(sealed, keys.police)
    with pytest.raises(SealingError, match="do not match"):
        as_broker(sealed, keys.broker)


def test_a_data_answer_passed_off_as_details_is_refused() -> None:
    keys = Keys()
    sealed = keys.sealed()
    sealed.sealed_details.CopyFrom(
        seal(
            results_pb2.DataAnswer(holder={"name": NAMES[0]}).SerializeToString(),
            enc_public(keys.police),
            request_id=REQUEST_ID,
            sender=BANK,
            recipient=POLICE,
            content_type=DATA_ANSWER_CONTENT_TYPE,
        )
    )
    with pytest.raises(SealingError, match="not ResultDetails"):
        as_requester(sealed, keys.police)


def test_without_a_broker_key_the_transfers_are_still_redacted() -> None:
    keys = Keys()
    sealed = seal_result_details(
        bank_result(),
        request_id=REQUEST_ID,
        sender=BANK,
        recipient=POLICE,
        requester_key=enc_public(keys.police),
        broker_key=None,
    )
    assert not sealed.HasField("broker_details")
    assert all(not t.to_account and not t.to_holder_name for t in sealed.onward_transfers)
    assert as_broker(sealed, keys.broker) == []
    details = as_requester(sealed, keys.police)
    assert isinstance(details, results_pb2.ResultDetails)
    assert len(details.onward_transfers) == 2


def test_a_result_without_onward_transfers_carries_nothing_sealed() -> None:
    keys = Keys()
    plain = results_pb2.Result(outcome=common_pb2.REQUEST_STATE_EXECUTED)
    sealed = keys.sealed(plain)
    assert sealed == plain
    assert as_broker(sealed, keys.broker) == []
    assert as_requester(sealed, keys.police) == results_pb2.ResultDetails()


def test_after_a_rotation_the_requester_opens_old_and_new_details_with_its_key_ring() -> None:
    old, new = x25519.X25519PrivateKey.generate(), x25519.X25519PrivateKey.generate()
    broker = x25519.X25519PrivateKey.generate()

    def sealed_to(requester: x25519.X25519PrivateKey) -> results_pb2.Result:
        return seal_result_details(
            bank_result(),
            request_id=REQUEST_ID,
            sender=BANK,
            recipient=POLICE,
            requester_key=enc_public(requester),
            broker_key=enc_public(broker),
        )

    before, after = sealed_to(old), sealed_to(new)
    ring = [new, old]
    assert as_requester(before, ring) == as_requester(after, ring)
    assert as_requester(before, old) == as_requester(after, new)
    with pytest.raises(SealingError, match="none of the 1 keys"):
        as_requester(before, [new])


def test_people_see_sealed_accounts_without_the_key_and_masked_ones_with_it() -> None:
    keys = Keys()
    status = lifecycle_pb2.RequestStatus(
        id=REQUEST_ID, sender=POLICE, recipient=BANK, state=common_pb2.REQUEST_STATE_PARTIALLY_EXECUTED
    )
    status.result.CopyFrom(keys.sealed())

    redacted = "\n".join(status_lines(status))
    assert "sealed" in redacted
    assert "open with --decrypt" in redacted
    assert not any(secret in redacted for secret in (*ACCOUNTS, *NAMES))

    details = open_result_details(
        status.result, keys.police, request_id=REQUEST_ID, sender=POLICE, recipient=BANK
    )
    opened = "\n".join(status_lines(status, details=details))
    assert mask_account(ACCOUNTS[0]) in opened
    assert ACCOUNTS[0] not in opened  # still masked for people
    document = status_document(status, details=details)
    assert document["details"] == MessageToDict(details, preserving_proto_field_name=True)
