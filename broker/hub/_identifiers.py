"""One keyed digest for every identifier the broker compares: accounts, numbers, handsets and
platform accounts.

The risk registry (marks and checks) and case linkage (串并) must agree with the money trail on
what "the same account" is, or a mark on a mule account would never meet the trail's holds on
it. So every digest is the trail's node id (:meth:`broker.hub._trail_accounts.AccountBook.node_id`,
HMAC-SHA256 under a key derived from the broker's signing key): an account under its bank, as
the trail names it, and the other kinds under a *domain* in the bank's place. A domain starts
with ``~``, which no agency id can (``[a-z0-9-]``), so a phone number can never share a digest
with an account of the same digits.

Nothing here holds an identifier: callers digest at the boundary and keep only the digest.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenchannel.v1 import common_pb2, requests_pb2, risk_pb2

from broker.protocol import Registry

from ._trail_accounts import AccountBook

__all__ = [
    "Identifier",
    "IdentifierDigests",
]

_PHONE = "~phone"
_IMEI = "~imei"
_PLATFORM = "~platform:"

Kind = requests_pb2.IdentifierKind


@dataclass(frozen=True, order=True)
class Identifier:
    """An identifier as the broker keeps it: its kind and keyed digest, nothing in clear."""

    kind: requests_pb2.IdentifierKind.ValueType
    digest: str


class IdentifierDigests:
    """Digests identifiers from requests and risk calls with the trail's key."""

    def __init__(self, *, book: AccountBook, registry: Registry) -> None:
        self._book = book
        self._registry = registry

    def account(self, account_number: str, bank: str = "") -> Identifier:
        """A bank account under its bank: as named, else the bank its number routes to (as the
        trail names it, so a mark and a hold on one account share the digest)."""
        if not bank:
            routed = self._registry.bank_for_account(account_number)
            bank = routed.id if routed is not None else ""
        return Identifier(Kind.IDENTIFIER_KIND_BANK_ACCOUNT, self._book.node_id(bank, account_number))

    def phone(self, e164: str) -> Identifier:
        return Identifier(Kind.IDENTIFIER_KIND_PHONE, self._book.node_id(_PHONE, e164))

    def imei(self, imei: str) -> Identifier:
        return Identifier(Kind.IDENTIFIER_KIND_IMEI, self._book.node_id(_IMEI, imei))

    def platform_account(self, platform: str, account_id: str) -> Identifier:
        return Identifier(
            Kind.IDENTIFIER_KIND_PLATFORM_ACCOUNT, self._book.node_id(_PLATFORM + platform, account_id)
        )

    def of(self, identifier: risk_pb2.RiskIdentifier | requests_pb2.HolderIdentifier) -> Identifier:
        """A risk call's identifier, or a marked holder's in an appeal; ValueError when none is set
        (validation refuses that first)."""
        if isinstance(identifier, requests_pb2.HolderIdentifier):
            # The contract gives it RiskIdentifier's fields and numbers: one reading of both.
            identifier = risk_pb2.RiskIdentifier.FromString(identifier.SerializeToString())
        match identifier.WhichOneof("id"):
            case "bank_account":
                return self.account(identifier.bank_account)
            case "phone":
                return self.phone(identifier.phone)
            case "imei":
                return self.imei(identifier.imei)
            case "platform_account":
                ref = identifier.platform_account
                return self.platform_account(ref.platform, ref.account_id)
        raise ValueError("the identifier names nothing")

    def of_account_ref(self, ref: common_pb2.BankAccountRef) -> Identifier:
        return self.account(ref.account_number, ref.bank)

    def of_phone_ref(self, ref: common_pb2.PhoneRef) -> list[Identifier]:
        """A line: its number, and its handset when the IMEI is given."""
        found = [self.phone(ref.e164)] if ref.e164 else []
        if ref.imei:
            found.append(self.imei(ref.imei))
        return found

    def of_platform_ref(self, ref: common_pb2.PlatformAccountRef) -> Identifier:
        return self.platform_account(ref.platform, ref.account_id)
