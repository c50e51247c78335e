"""The conformance fixture: the test records an agency system seeds before the kit runs.

The fixture is a JSON file (``fixture.json`` next to this module, or one of the implementer's own
with the same shape) so that systems in any language can read it to seed themselves. Each check
works on its own record (account, line, platform account), so one failing check cannot spoil another.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "BANK_ACCOUNT_ROLES",
    "CARRIER_LINE_ROLES",
    "PLATFORM_ACCOUNT_ROLES",
    "BankAccount",
    "BankTransfer",
    "ConformanceFixture",
    "FixtureError",
    "Line",
    "PlatformAccount",
    "default_fixture_text",
    "load_fixture",
]

BANK_ACCOUNT_ROLES = (
    "stop_payment",
    "freeze",
    "extend",
    "release",
    "mismatch",
    "idempotent_stop_payment",
    "idempotent_freeze",
    "deadline",
    "errors",
    "data",
    "convert",
    "onward",
)
"""The bank accounts a fixture names, one per check that acts on an account."""
CARRIER_LINE_ROLES = ("block", "warn", "data", "mismatch", "idempotent", "deadline", "errors")
"""The phone lines a fixture names."""
PLATFORM_ACCOUNT_ROLES = ("block", "warn", "data", "idempotent", "deadline", "errors")
"""The platform accounts a fixture names."""


class FixtureError(ValueError):
    """The fixture file is missing, not JSON, or lacks a field; the message names the field."""


@dataclass(frozen=True, kw_only=True)
class BankAccount:
    """An open account of the bank under test."""

    number: str
    """Account number."""
    holder: str
    """Holder name as the bank records it."""
    balance: int
    """Opening balance in minor units, before the fixture's transfers."""


@dataclass(frozen=True, kw_only=True)
class BankTransfer:
    """A booked transfer into or out of a fixture account."""

    transfer_id: str
    """The bank's transfer id; an onward transfer must be listed under this id."""
    from_account: str
    """Paying account."""
    from_bank: str
    """Paying bank's agency id; empty for the bank under test."""
    to_account: str
    """Receiving account."""
    to_bank: str
    """Receiving bank's agency id; empty for the bank under test."""
    to_holder: str
    """Beneficiary name as the payment instruction gave it."""
    amount: int
    """Minor units."""
    minutes_before: int
    """How long before seeding it was booked (the bank's lookback must still cover it)."""


@dataclass(frozen=True, kw_only=True)
class Line:
    """A subscriber line of the carrier under test."""

    e164: str
    """Phone number."""
    iccid: str
    """SIM serial."""
    imsi: str
    """Subscriber identity."""
    imei: str
    """Handset last seen with the SIM."""
    subscriber: str
    """Real-name registration."""


@dataclass(frozen=True, kw_only=True)
class PlatformAccount:
    """An active, unrestricted account of the platform under test."""

    account_id: str
    """The platform's account id."""
    display_name: str
    """Name shown to other users."""
    real_name: str
    """Real-name verification."""


@dataclass(frozen=True, kw_only=True)
class ConformanceFixture:
    """Everything the checks assume an agency system holds."""

    sender: str
    """Agency id the kit's orders claim to come from (a police agency)."""
    case_number: str
    """Case number of every order."""
    legal_instrument_id: str
    """Legal instrument of every order."""
    currency: str
    """Currency of the bank accounts."""
    bank_accounts: Mapping[str, BankAccount]
    """Bank accounts by role (:data:`BANK_ACCOUNT_ROLES`)."""
    transfers: tuple[BankTransfer, ...]
    """Transfers to book after opening the accounts, in order."""
    unknown_account: str
    """An account number the bank does not hold."""
    lines: Mapping[str, Line]
    """Carrier lines by role (:data:`CARRIER_LINE_ROLES`)."""
    unknown_number: str
    """A number the carrier does not serve."""
    platform_code: str
    """The platform code the platform under test serves."""
    platform_accounts: Mapping[str, PlatformAccount]
    """Platform accounts by role (:data:`PLATFORM_ACCOUNT_ROLES`)."""
    unknown_platform_account: str
    """An account id the platform does not have."""
    police_region: str
    """A region code the police desk under test serves."""

    def account(self, role: str) -> BankAccount:
        return self.bank_accounts[role]

    def onward_transfer(self) -> BankTransfer:
        """The transfer that took money out of the ``onward`` account."""
        number = self.bank_accounts["onward"].number
        return next(t for t in self.transfers if t.from_account == number)

    def incoming_transfer(self) -> BankTransfer:
        """The payment into the ``onward`` account that the stop-payment follows."""
        number = self.bank_accounts["onward"].number
        return next(t for t in self.transfers if t.to_account == number)


def default_fixture_text() -> str:
    """The shipped fixture, as JSON text (what an implementer seeds)."""
    return resources.files(__package__).joinpath("fixture.json").read_text(encoding="utf-8")


def load_fixture(path: Path | None = None) -> ConformanceFixture:
    """Parse the fixture at ``path`` (default: the shipped one); FixtureError names what is wrong."""
    where = str(path) if path is not None else "the shipped fixture.json"
    try:
        text = path.read_text(encoding="utf-8") if path is not None else default_fixture_text()
        raw = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FixtureError(f"{where}: cannot read the fixture ({type(exc).__name__})") from exc
    reader = _Reader(where)
    try:
        return _parse(reader, raw)
    except (KeyError, TypeError, StopIteration) as exc:
        raise FixtureError(f"{where}: malformed fixture ({type(exc).__name__}: {exc})") from exc


_KIND_NAMES = {int: "an integer", str: "a string", list: "a list"}


class _Reader:
    def __init__(self, where: str) -> None:
        self._where = where

    def get(self, obj: Any, path: str, kind: type) -> Any:
        node = obj
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                raise FixtureError(f"{self._where}: missing field {path!r}")
            node = node[part]
        if not isinstance(node, kind) or (kind is int and isinstance(node, bool)):
            raise FixtureError(f"{self._where}: field {path!r} must be {_KIND_NAMES[kind]}")
        return node


def _parse(r: _Reader, raw: Any) -> ConformanceFixture:
    accounts = {
        role: BankAccount(
            number=r.get(raw, f"bank.accounts.{role}.number", str),
            holder=r.get(raw, f"bank.accounts.{role}.holder", str),
            balance=r.get(raw, f"bank.accounts.{role}.balance", int),
        )
        for role in BANK_ACCOUNT_ROLES
    }
    transfers = tuple(
        BankTransfer(
            transfer_id=r.get(t, "transfer_id", str),
            from_account=r.get(t, "from_account", str),
            from_bank=r.get(t, "from_bank", str),
            to_account=r.get(t, "to_account", str),
            to_bank=r.get(t, "to_bank", str),
            to_holder=r.get(t, "to_holder", str),
            amount=r.get(t, "amount", int),
            minutes_before=r.get(t, "minutes_before", int),
        )
        for t in r.get(raw, "bank.transfers", list)
    )
    lines = {
        role: Line(
            e164=r.get(raw, f"carrier.lines.{role}.e164", str),
            iccid=r.get(raw, f"carrier.lines.{role}.iccid", str),
            imsi=r.get(raw, f"carrier.lines.{role}.imsi", str),
            imei=r.get(raw, f"carrier.lines.{role}.imei", str),
            subscriber=r.get(raw, f"carrier.lines.{role}.subscriber", str),
        )
        for role in CARRIER_LINE_ROLES
    }
    platform_accounts = {
        role: PlatformAccount(
            account_id=r.get(raw, f"platform.accounts.{role}.account_id", str),
            display_name=r.get(raw, f"platform.accounts.{role}.display_name", str),
            real_name=r.get(raw, f"platform.accounts.{role}.real_name", str),
        )
        for role in PLATFORM_ACCOUNT_ROLES
    }
    fixture = ConformanceFixture(
        sender=r.get(raw, "context.sender", str),
        case_number=r.get(raw, "context.case_number", str),
        legal_instrument_id=r.get(raw, "context.legal_instrument_id", str),
        currency=r.get(raw, "bank.currency", str),
        bank_accounts=MappingProxyType(accounts),
        transfers=transfers,
        unknown_account=r.get(raw, "bank.unknown_account", str),
        lines=MappingProxyType(lines),
        unknown_number=r.get(raw, "carrier.unknown_number", str),
        platform_code=r.get(raw, "platform.code", str),
        platform_accounts=MappingProxyType(platform_accounts),
        unknown_platform_account=r.get(raw, "platform.unknown_account", str),
        police_region=r.get(raw, "police.region", str),
    )
    # The onward-transfer check needs both legs; fail here, not halfway through a run.
    fixture.onward_transfer()
    fixture.incoming_transfer()
    return fixture
