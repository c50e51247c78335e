"""Who receives a request: the named recipient, checked against the body, or a route from the body.

Errors carry the path of the field that decided (``request.stop_payment.account.account_number``)
and never echo the account number or phone number they failed on: the message goes back to the
sender and into logs, and both must stay free of personal data.
"""

from __future__ import annotations

from dataclasses import dataclass

from greenchannel.v1 import common_pb2, requests_pb2

from broker.protocol import Agency, AgencyKind, Registry

from ._batch_routing import batch_recipient
from ._errors import UnroutableError

__all__ = ["resolve_recipient"]

_BANK_BODIES = frozenset({"stop_payment", "freeze", "release", "extend", "return_funds"})
_KIND_OF_REF: dict[type, AgencyKind] = {
    common_pb2.BankAccountRef: AgencyKind.BANK,
    common_pb2.PhoneRef: AgencyKind.CARRIER,
    common_pb2.PlatformAccountRef: AgencyKind.PLATFORM,
}

_Ref = common_pb2.BankAccountRef | common_pb2.PhoneRef | common_pb2.PlatformAccountRef | str


@dataclass(frozen=True)
class _Target:
    """What the body is about, and so which kind of agency receives it."""

    ref: _Ref
    """The account, line or platform account; for police bodies the region code."""
    path: str
    """Path of ``ref`` in the request, e.g. ``request.stop_payment.account``."""

    @property
    def kind(self) -> AgencyKind:
        return _KIND_OF_REF.get(type(self.ref), AgencyKind.POLICE)


def resolve_recipient(request: requests_pb2.Request, registry: Registry) -> Agency:
    """The agency the request goes to; raise :class:`UnroutableError` when there is none or it is wrong.

    Reasons: ``UNKNOWN_RECIPIENT`` (a named agency is not in the directory), ``RECIPIENT_MISMATCH``
    (the named recipient contradicts the bank or platform the body names), ``WRONG_RECIPIENT_KIND``
    (the agency is not of the kind the body needs), ``NO_ROUTE`` (nothing in the directory matches);
    for a batch or selector NUMBER_BLOCK also those of :func:`batch_recipient`.
    """
    body = request.WhichOneof("body")
    if body is None:
        raise UnroutableError("the request has no body to route", subject="request.body", reason="NO_ROUTE")
    if body == "release" and not request.release.HasField("account") and request.recipient:
        return _lifting_recipient(request.recipient, registry)
    if body == "number_block" and not request.number_block.HasField("phone"):
        named = _in_directory(request.recipient, registry) if request.recipient else None
        if named is not None:
            _check_kind(named, AgencyKind.CARRIER, body, "request.recipient")
        return batch_recipient(request, registry, named)
    target = _target(request, body)
    if request.recipient:
        return _named(request.recipient, target, body, registry)
    agency, subject = _lookup(target, registry)
    _check_kind(agency, target.kind, body, subject)
    return agency


def _target(request: requests_pb2.Request, body: str) -> _Target:
    if body in _BANK_BODIES:
        return _Target(getattr(request, body).account, f"request.{body}.account")
    match body:
        case "number_block":
            return _Target(request.number_block.phone, "request.number_block.phone")
        case "account_block":
            return _Target(request.account_block.account, "request.account_block.account")
        case "assistance":
            return _Target(request.assistance.region, "request.assistance.region")
        case "fraud_report":
            return _Target(request.fraud_report.region, "request.fraud_report.region")
        case "appeal" | "follow_up" | "linkage_notice" | "dissuasion":
            # Named by the sender: the police that ordered the restriction (an appeal; intake checks
            # it against the restriction's case), or the police the broker addresses itself
            # (follow-ups, linkage notices, in-person dissuasion).
            return _Target("", "request.recipient")
        case "data_request":
            choice = request.data_request.WhichOneof("subject")
            if choice is not None:
                return _Target(getattr(request.data_request, choice), f"request.data_request.{choice}")
            oneof = "subject"
        case "warning":
            choice = request.warning.WhichOneof("target")
            if choice is not None:
                return _Target(getattr(request.warning, choice), f"request.warning.{choice}")
            oneof = "target"
        case _:
            # The contract gained a body this module does not know: refuse rather than guess.
            raise UnroutableError(
                f"no routing rule for {body} requests", subject=f"request.{body}", reason="NO_ROUTE"
            )
    raise UnroutableError(
        f"request.{body}.{oneof} is not set: nothing to route by",
        subject=f"request.{body}.{oneof}",
        reason="NO_ROUTE",
    )


def _in_directory(recipient_id: str, registry: Registry) -> Agency:
    if recipient_id not in registry:
        raise UnroutableError(
            f"recipient {recipient_id!r} is not in the agency directory",
            subject="request.recipient",
            reason="UNKNOWN_RECIPIENT",
        )
    return registry.get(recipient_id)


def _named(recipient_id: str, target: _Target, body: str, registry: Registry) -> Agency:
    recipient = _in_directory(recipient_id, registry)
    _check_kind(recipient, target.kind, body, "request.recipient")
    ref = target.ref
    if isinstance(ref, common_pb2.BankAccountRef) and ref.bank and ref.bank != recipient.id:
        raise UnroutableError(
            f"request.recipient is {recipient.id!r} but {target.path}.bank names {ref.bank!r}",
            subject=f"{target.path}.bank",
            reason="RECIPIENT_MISMATCH",
        )
    # Platform codes are mandatory and exact, so a named platform that does not serve the code
    # would receive an order about another platform's account.
    if isinstance(ref, common_pb2.PlatformAccountRef) and ref.platform not in recipient.platform_codes:
        raise UnroutableError(
            f"request.recipient is {recipient.id!r} but {target.path}.platform is {ref.platform!r}, "
            "a platform code it does not serve",
            subject=f"{target.path}.platform",
            reason="RECIPIENT_MISMATCH",
        )
    return recipient


_LIFTING_KINDS = frozenset({AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM})


def _lifting_recipient(recipient_id: str, registry: Registry) -> Agency:
    """The broker's own releases (a lapsed hold, an appeal lifted) name only the restriction and
    the agency that applied it: a bank, carrier or platform. Agencies' releases must name the
    account (intake refuses them otherwise), so only the broker's reach this route."""
    recipient = _in_directory(recipient_id, registry)
    if recipient.kind not in _LIFTING_KINDS:
        raise UnroutableError(
            f"a release goes to the bank, carrier or platform that applied the restriction, "
            f"but {recipient.id!r} is a {recipient.kind}",
            subject="request.recipient",
            reason="WRONG_RECIPIENT_KIND",
        )
    return recipient


def _check_kind(agency: Agency, kind: AgencyKind, body: str, subject: str) -> None:
    if agency.kind is not kind:
        raise UnroutableError(
            f"a {body} request about this {_noun(kind)} goes to a {kind} agency, "
            f"but {agency.id!r} is a {agency.kind}",
            subject=subject,
            reason="WRONG_RECIPIENT_KIND",
        )


def _noun(kind: AgencyKind) -> str:
    return {
        AgencyKind.BANK: "account",
        AgencyKind.CARRIER: "line",
        AgencyKind.PLATFORM: "platform account",
    }.get(kind, "region")


def _lookup(target: _Target, registry: Registry) -> tuple[Agency, str]:
    """The directory's agency for the target, and the path of the field that found it."""
    ref, path = target.ref, target.path
    found: Agency | None
    if isinstance(ref, common_pb2.BankAccountRef):
        if ref.bank:
            if ref.bank not in registry:
                raise UnroutableError(
                    f"bank {ref.bank!r} named in {path}.bank is not in the agency directory",
                    subject=f"{path}.bank",
                    reason="UNKNOWN_RECIPIENT",
                )
            return registry.get(ref.bank), f"{path}.bank"
        subject = f"{path}.account_number"
        found = registry.bank_for_account(ref.account_number)
        missing = (
            "no bank in the directory holds accounts with this account number's prefix; "
            "name the bank in account.bank or as the recipient"
        )
    elif isinstance(ref, common_pb2.PhoneRef):
        subject = f"{path}.e164"
        found = registry.carrier_for_number(ref.e164)
        missing = (
            "no carrier in the directory serves this number's segment; name the carrier as the recipient"
        )
    elif isinstance(ref, common_pb2.PlatformAccountRef):
        subject = f"{path}.platform"
        found = registry.platform_for_code(ref.platform)
        missing = f"no platform in the directory uses the platform code {ref.platform!r}"
    else:
        subject = path
        found = registry.police_for_region(ref) if ref else None
        missing = (
            f"no police agency in the directory serves region {ref}"
            if ref
            else f"{path} is empty: name the recipient police agency or the region"
        )
    if found is None:
        raise UnroutableError(missing, subject=subject, reason="NO_ROUTE")
    return found, subject
