"""Identifier digests: one keyed mechanism for marks, checks, links and the money trail."""

from __future__ import annotations

from pathlib import Path

from greenchannel.v1 import common_pb2, requests_pb2, risk_pb2

from broker.hub._identifiers import IdentifierDigests
from broker.protocol import load_directory

K = requests_pb2.IdentifierKind


class _Book:
    """The trail's node ids, deterministically (no key): enough to see what is digested."""

    def node_id(self, bank: str, account_number: str) -> str:
        return f"{bank}|{account_number}"

    def seal(self, *args: object) -> None:
        return None


def _digests() -> IdentifierDigests:
    directory = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
    return IdentifierDigests(book=_Book(), registry=load_directory(directory))


def test_an_account_is_digested_under_the_bank_its_number_routes_to_as_the_trail_names_it() -> None:
    digests = _digests()
    named = digests.of_account_ref(
        common_pb2.BankAccountRef(account_number="6222020000000001", bank="bank-icbc")
    )
    checked = digests.of(risk_pb2.RiskIdentifier(bank_account="6222020000000001"))
    assert checked == named
    assert named.kind == K.IDENTIFIER_KIND_BANK_ACCOUNT


def test_kinds_never_share_a_digest_for_the_same_characters() -> None:
    digests = _digests()
    found = {
        digests.phone("+8613800138000"),
        digests.imei("861234567890123"),
        digests.platform_account("wechat", "861234567890123"),
        digests.account("861234567890123", "bank-icbc"),
    }
    assert len({identifier.digest for identifier in found}) == 4
    assert digests.of_phone_ref(common_pb2.PhoneRef(e164="+8613800138000", imei="861234567890123")) == [
        digests.phone("+8613800138000"),
        digests.imei("861234567890123"),
    ]
