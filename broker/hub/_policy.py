"""Authorization as data: who may send what to whom, and who may read it. Deny by default.

The file format is documented at the top of ``agencies/policy.toml``. Every problem in a
policy file raises :class:`PolicyError` naming the file and a field path in TOML spelling
(``policy.version``, ``rule[3].types[1]``); indexes count entries in file order from 0.
Unknown fields are rejected: a typo must not silently widen or narrow what is allowed.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeAlias

import structlog
from greenchannel.v1 import common_pb2

from broker.protocol import Agency, AgencyKind

from ._errors import PermissionDeniedError, PolicyError

__all__ = ["POLICY_VERSION", "Policy", "PolicyRule", "load_policy", "request_type_name"]

POLICY_VERSION = 1

_log = structlog.get_logger(__name__)

_TOP = frozenset({"policy", "rule"})
_HEADER = frozenset({"version", "description"})
_RULE = frozenset({"description", "senders", "types", "recipients", "recipient_regions"})
_REGION_PREFIX = re.compile(r"[0-9]{2,6}")
_TYPE_PREFIX = "REQUEST_TYPE_"

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Route: TypeAlias = tuple[AgencyKind, _RequestType, AgencyKind]


# Lowercase names, as the subjects spell them (``stop_payment``); UNSPECIFIED is no type.
_TYPES_BY_NAME: Mapping[str, _RequestType] = {
    name.removeprefix(_TYPE_PREFIX).lower(): value
    for name, value in common_pb2.RequestType.items()
    if value != common_pb2.REQUEST_TYPE_UNSPECIFIED
}


def request_type_name(request_type: _RequestType) -> str:
    """``REQUEST_TYPE_STOP_PAYMENT`` -> ``stop_payment``; an unknown number stays a number."""
    try:
        return common_pb2.RequestType.Name(request_type).removeprefix(_TYPE_PREFIX).lower()
    except ValueError:
        return str(int(request_type))


@dataclass(frozen=True, kw_only=True)
class PolicyRule:
    """Agencies of kind ``senders`` may send ``types`` to agencies of kind ``recipients``."""

    senders: frozenset[AgencyKind]
    """Kinds of the sending agency. Never a regulator: regulators read, never submit."""
    types: frozenset[_RequestType]
    """Request types the rule allows."""
    recipients: frozenset[AgencyKind]
    """Kinds of the receiving agency."""
    recipient_regions: tuple[str, ...] = ()
    """GB/T 2260 prefixes (2-6 digits) the recipient's region must start with; empty is any region."""
    description: str = ""
    """Why the rule exists, for people."""

    def __post_init__(self) -> None:
        if not (self.senders and self.types and self.recipients):
            raise ValueError("a policy rule needs at least one sender kind, type and recipient kind")
        if AgencyKind.REGULATOR in self.senders:
            raise ValueError("regulators read, never submit: they cannot be senders")
        if common_pb2.REQUEST_TYPE_UNSPECIFIED in self.types:
            raise ValueError("REQUEST_TYPE_UNSPECIFIED is not a request type")
        for prefix in self.recipient_regions:
            if not _REGION_PREFIX.fullmatch(prefix):
                raise ValueError(f"{prefix!r} is not a GB/T 2260 prefix of 2 to 6 digits")

    def covers_region(self, region: str) -> bool:
        return not self.recipient_regions or any(region.startswith(p) for p in self.recipient_regions)


class Policy:
    """Immutable authorization rules; everything no rule allows is denied."""

    __slots__ = ("_by_route", "_rules")

    def __init__(self, rules: Iterable[PolicyRule]) -> None:
        self._rules = tuple(rules)
        by_route: dict[_Route, list[PolicyRule]] = {}
        for rule in self._rules:
            for sender in rule.senders:
                for request_type in rule.types:
                    for recipient in rule.recipients:
                        by_route.setdefault((sender, request_type, recipient), []).append(rule)
        self._by_route: Mapping[_Route, tuple[PolicyRule, ...]] = {
            route: tuple(found) for route, found in by_route.items()
        }

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        return self._rules

    def authorize_submit(
        self,
        *,
        sender: Agency,
        request_type: _RequestType,
        recipient: Agency,
        case_ref: common_pb2.CaseRef,
    ) -> None:
        """Raise :class:`PermissionDeniedError` unless ``sender`` may send this request to ``recipient``.

        Reasons, checked in this order: ``READ_ONLY``, ``NOT_CASE_OWNER``, ``SELF_ADDRESSED``,
        ``TYPE_NOT_ALLOWED``, ``REGION_NOT_ALLOWED``.
        """
        type_name = request_type_name(request_type)
        if sender.kind is AgencyKind.REGULATOR:
            raise PermissionDeniedError(
                f"{sender.id!r} is a regulator: regulators read and watch, they never submit requests",
                reason="READ_ONLY",
            )
        if case_ref.issuing_agency != sender.id:
            raise PermissionDeniedError(
                f"case_ref.issuing_agency is {case_ref.issuing_agency!r} but the sender is {sender.id!r}: "
                "an agency submits only under its own case references",
                reason="NOT_CASE_OWNER",
            )
        if sender.id == recipient.id:
            raise PermissionDeniedError(
                f"{sender.id!r} addressed a request of type {type_name} to itself", reason="SELF_ADDRESSED"
            )
        rules = self._by_route.get((sender.kind, request_type, recipient.kind), ())
        if not rules:
            raise PermissionDeniedError(
                f"no policy rule lets {sender.kind} agencies send {type_name} requests "
                f"to {recipient.kind} agencies ({sender.id!r} -> {recipient.id!r}); "
                f"{sender.kind} agencies may send: {self._allowed_from(sender.kind)}",
                reason="TYPE_NOT_ALLOWED",
            )
        if not any(rule.covers_region(recipient.region) for rule in rules):
            regions = sorted({prefix for rule in rules for prefix in rule.recipient_regions})
            raise PermissionDeniedError(
                f"{sender.kind} agencies may send {type_name} requests to {recipient.kind} agencies "
                f"only in regions {', '.join(regions)}; {recipient.id!r} is in region {recipient.region}",
                reason="REGION_NOT_ALLOWED",
            )

    def can_read(self, caller: Agency, *, sender: str, recipient: str, case_owner: str) -> bool:
        """The sender, the recipient, the police agency owning the case, and every regulator."""
        return caller.kind is AgencyKind.REGULATOR or caller.id in (sender, recipient, case_owner)

    def can_watch_case(self, caller: Agency, case_owner: str) -> bool:
        """Watching a whole case: its owner and every regulator."""
        return caller.kind is AgencyKind.REGULATOR or caller.id == case_owner

    def _allowed_from(self, sender: AgencyKind) -> str:
        allowed: dict[AgencyKind, set[str]] = {}
        for kind, request_type, recipient in self._by_route:
            if kind is sender:
                allowed.setdefault(recipient, set()).add(request_type_name(request_type))
        if not allowed:
            return "nothing"
        return "; ".join(
            f"{', '.join(sorted(names))} to {recipient}" for recipient, names in sorted(allowed.items())
        )


# -- the file -----------------------------------------------------------------------------------


def _type_name(value: object) -> str:
    names = {str: "a string", bool: "a boolean", int: "an integer", float: "a float"}
    names |= {list: "an array", dict: "a table"}
    return names.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _Scope:
    """One TOML table and where it sits, so every error names file and field path."""

    file: str
    path: str
    table: Mapping[str, object]

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str, message: str) -> NoReturn:
        raise PolicyError(message, file=self.file, field=self.at(name))

    def only(self, allowed: frozenset[str]) -> None:
        for name in self.table:
            if name not in allowed:
                self.fail(name, f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def optional_string(self, name: str) -> str:
        value = self.table.get(name, "")
        if not isinstance(value, str):
            self.fail(name, f"expected a string, got {_type_name(value)}")
        return value

    def strings(self, name: str, *, required: bool) -> tuple[str, ...]:
        """A non-empty array of distinct strings; absent is ``()`` unless required."""
        if name not in self.table:
            if required:
                self.fail(name, "missing required field")
            return ()
        value = self.table[name]
        if not isinstance(value, list):
            self.fail(name, f"expected an array of strings, got {_type_name(value)}")
        if not value:
            hint = "list at least one" if required else "omit the field to allow any"
            self.fail(name, f"must not be empty ({hint})")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{i}]", f"expected a string, got {_type_name(item)}")
            if item in seen:
                self.fail(f"{name}[{i}]", f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)


def _kinds(scope: _Scope, name: str) -> frozenset[AgencyKind]:
    kinds: set[AgencyKind] = set()
    for i, value in enumerate(scope.strings(name, required=True)):
        try:
            kind = AgencyKind(value)
        except ValueError:
            expected = ", ".join(AgencyKind)
            scope.fail(f"{name}[{i}]", f"unknown agency kind {value!r} (expected one of: {expected})")
        if name == "senders" and kind is AgencyKind.REGULATOR:
            scope.fail(f"{name}[{i}]", "regulators read, never submit: they cannot be senders")
        kinds.add(kind)
    return frozenset(kinds)


def _types(scope: _Scope) -> frozenset[_RequestType]:
    types: set[_RequestType] = set()
    for i, value in enumerate(scope.strings("types", required=True)):
        request_type = _TYPES_BY_NAME.get(value)
        if request_type is None:
            expected = ", ".join(_TYPES_BY_NAME)
            scope.fail(f"types[{i}]", f"unknown request type {value!r} (expected one of: {expected})")
        types.add(request_type)
    return frozenset(types)


def _regions(scope: _Scope) -> tuple[str, ...]:
    regions = scope.strings("recipient_regions", required=False)
    for i, prefix in enumerate(regions):
        if not _REGION_PREFIX.fullmatch(prefix):
            scope.fail(f"recipient_regions[{i}]", f"{prefix!r} is not a GB/T 2260 prefix of 2 to 6 digits")
    return regions


def _parse_rule(scope: _Scope) -> PolicyRule:
    scope.only(_RULE)
    return PolicyRule(
        senders=_kinds(scope, "senders"),
        types=_types(scope),
        recipients=_kinds(scope, "recipients"),
        recipient_regions=_regions(scope),
        description=scope.optional_string("description"),
    )


def _read_toml(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file: {exc.strerror or exc}", file=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"not valid TOML: {exc}", file=str(path)) from exc


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; raise :class:`PolicyError` naming the file and field on any problem."""
    root = _Scope(str(path), "", _read_toml(path))
    root.only(_TOP)
    if "policy" not in root.table:
        root.fail("policy", "missing required table [policy]")
    header_table = root.table["policy"]
    if not isinstance(header_table, dict):
        root.fail("policy", f"expected a table, got {_type_name(header_table)}")
    header = _Scope(root.file, "policy", header_table)
    header.only(_HEADER)
    version = header.table.get("version")
    if version is None:
        header.fail("version", "missing required field")
    if type(version) is not int:  # bool is an int subclass; `version = true` is a mistake
        header.fail("version", f"expected an integer, got {_type_name(version)}")
    if version != POLICY_VERSION:
        header.fail("version", f"unsupported version {version}; this release reads {POLICY_VERSION}")
    header.optional_string("description")

    raw_rules = root.table.get("rule")
    if not isinstance(raw_rules, list | None) or not all(isinstance(item, dict) for item in raw_rules or ()):
        root.fail("rule", "expected an array of tables [[rule]]")
    if not raw_rules:
        # Deny-all is never what an operator means to deploy; it is a file that lost its rules.
        root.fail("rule", "no [[rule]] tables: a policy without rules denies everything")
    rules = [_parse_rule(_Scope(root.file, f"rule[{i}]", item)) for i, item in enumerate(raw_rules)]
    policy = Policy(rules)
    _log.info("policy.loaded", file=str(path), rules=len(rules))
    return policy
