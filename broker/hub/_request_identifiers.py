"""The suspect identifiers a request names, digested at intake for case linkage (串并).

Only intake has the body in clear (it travels sealed to the recipient), so the identifiers are
taken there, as keyed digests, into ``RequestStatus.identifiers`` (the one SUBMITTED write, no
extra one). Suspects only: the account a stop-payment or freeze holds, the lines and accounts a
block restricts, a data request's subject, what an assistance request or a fraud report names.
A victim's account, a warned person, a payout: two cases sharing a victim are not a ring, and
linking them would tell one police force about another's victim.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2

from ._identifiers import Identifier, IdentifierDigests

__all__ = ["MAX_IDENTIFIERS", "request_identifiers"]

MAX_IDENTIFIERS = 256
"""Identifiers kept per request; a batch block of 10,000 lines links on its first 256."""


Named = Callable[[], list[Identifier]]
"""One thing the body names, digested only when called (a 10,000-line batch is counted past the
cap, not digested)."""


def _named(request: requests_pb2.Request, digests: IdentifierDigests, recipient: str) -> Iterator[Named]:
    match request.WhichOneof("body"):
        case "stop_payment" | "freeze" as body:
            # Under the bank the money trail names the held account by: as given, else the
            # recipient (so a mark, a hold and a link on it share the digest).
            held = request.stop_payment.account if body == "stop_payment" else request.freeze.account
            yield lambda: [digests.account(held.account_number, held.bank or recipient)]
        case "number_block":
            block = request.number_block
            lines = [block.phone] if block.HasField("phone") else []
            yield from (_phone(ref, digests) for ref in [*lines, *block.phones])
        case "account_block":
            yield _platform(request.account_block.account, digests)
        case "data_request":
            order = request.data_request
            match order.WhichOneof("subject"):
                case "account":
                    yield _account(order.account, digests)
                case "phone":
                    yield _phone(order.phone, digests)
                case "platform_account":
                    yield _platform(order.platform_account, digests)
        case "assistance" | "fraud_report" as body:
            named = request.assistance if body == "assistance" else request.fraud_report
            yield from (_account(ref, digests) for ref in named.accounts)
            yield from (_phone(ref, digests) for ref in named.phones)
            yield from (_platform(ref, digests) for ref in named.platform_accounts)


def _account(ref: common_pb2.BankAccountRef, digests: IdentifierDigests) -> Named:
    return lambda: [digests.of_account_ref(ref)]


def _phone(ref: common_pb2.PhoneRef, digests: IdentifierDigests) -> Named:
    return lambda: digests.of_phone_ref(ref)


def _platform(ref: common_pb2.PlatformAccountRef, digests: IdentifierDigests) -> Named:
    return lambda: [digests.of_platform_ref(ref)]


def request_identifiers(
    request: requests_pb2.Request, digests: IdentifierDigests, *, recipient: str = ""
) -> tuple[list[lifecycle_pb2.CaseIdentifier], int]:
    """The request's distinct suspect identifiers (at most :data:`MAX_IDENTIFIERS`, in the order
    named) and how many more it named past the cap (counted as named, not deduplicated)."""
    kept: dict[Identifier, None] = {}
    skipped = 0
    for named in _named(request, digests, recipient):
        if len(kept) >= MAX_IDENTIFIERS:
            skipped += 1
            continue
        for identifier in named():
            if len(kept) < MAX_IDENTIFIERS:
                kept.setdefault(identifier, None)
            else:
                skipped += 1
    return [lifecycle_pb2.CaseIdentifier(kind=i.kind, digest=i.digest) for i in kept], skipped
