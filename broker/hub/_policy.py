"""Authorization as data: who may send what to whom, and who may read it. Deny by default.

The file format is documented at the top of ``agencies/policy.toml``. Every problem in a
policy file raises :class:`PolicyError` naming the file and a field path in TOML spelling
(``policy.version``, ``rule[3].types[1]``, ``chase.min_amount.CNY``); indexes count entries in
file order from 0. Unknown fields are rejected: a typo must not silently widen or narrow what is
allowed.

Besides who may send what, the policy bounds how far the broker chases money on its own
(``[chase]``, :class:`ChasePolicy`): the authorization every case's money trail runs under; and how
much of a hold the police may release for the holder's living expenses (``[release]``,
:class:`ReleasePolicy`); how many lines one batch NUMBER_BLOCK may name (``[number_block]``,
:class:`NumberBlockPolicy`); and which warning outcomes make the broker ask the police of the
person's region to dissuade them in person (``[warning]``, :class:`WarningPolicy`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import MappingProxyType
from typing import TypeAlias

import structlog
from greenchannel.v1 import common_pb2, results_pb2

from broker.protocol import (
    REQUEST_TYPES_BY_SLUG,
    Agency,
    AgencyKind,
    TomlTable,
    read_toml,
    request_type_slug,
    toml_type_name,
)

from ._errors import PermissionDeniedError, PolicyError
from ._risk_policy import DEFAULT_RISK, RiskPolicy, parse_risk
from ._sla_policy import parse_duration

__all__ = [
    "DEFAULT_CHASE",
    "DEFAULT_NUMBER_BLOCK",
    "DEFAULT_RELEASE",
    "DEFAULT_RETURN",
    "DEFAULT_WARNING",
    "POLICY_VERSION",
    "ChasePolicy",
    "NumberBlockPolicy",
    "Policy",
    "PolicyRule",
    "ReleasePolicy",
    "ReturnPolicy",
    "RiskPolicy",
    "WarningPolicy",
    "load_policy",
]

POLICY_VERSION = 1

_log = structlog.get_logger(__name__)

_TOP = frozenset({"policy", "rule", "chase", "return", "release", "number_block", "warning", "risk"})
_WARNING = frozenset({"escalate_on", "priority", "description"})
# What a warning may end with, as [warning] escalate_on spells it.
_WARNING_OUTCOMES: Mapping[str, results_pb2.WarningOutcome.ValueType] = MappingProxyType(
    {
        name.removeprefix("WARNING_OUTCOME_").lower(): value
        for name, value in results_pb2.WarningOutcome.items()
        if value != results_pb2.WARNING_OUTCOME_UNSPECIFIED
    }
)
_PRIORITIES: Mapping[str, common_pb2.Priority.ValueType] = MappingProxyType(
    {"green": common_pb2.PRIORITY_GREEN, "standard": common_pb2.PRIORITY_STANDARD}
)
_NUMBER_BLOCK = frozenset({"max_items", "description"})
_MAX_BATCH = 10_000  # the contract's bound on NumberBlock.phones
_RETURN = frozenset({"notice_period", "description"})
_HEADER = frozenset({"version", "description"})
_RULE = frozenset({"description", "senders", "types", "recipients", "recipient_regions"})
_CHASE = frozenset({"enabled", "max_depth", "min_amount", "max_accounts", "max_requests", "description"})
_RELEASE = frozenset({"living_expenses", "description"})
_LIVING_EXPENSES = frozenset({"cap", "share", "description"})
_SHARE = re.compile(r"0(\.[0-9]{1,4})?|1(\.0{1,4})?")
_REGION_PREFIX = re.compile(r"[0-9]{2,6}")
_CURRENCY = re.compile(r"[A-Z]{3}")
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]{1,2})?")
_MAX_HOP = 64  # the contract's bound on Request.hop
_MAX_MINOR_UNITS = 2**63 - 1  # Money.minor_units is an int64

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Route: TypeAlias = tuple[AgencyKind, _RequestType, AgencyKind]


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


@dataclass(frozen=True, kw_only=True)
class ChasePolicy:
    """How far the broker chases onward transfers on its own: the authorization of every case.

    Police narrow these per case through the Bus API (``SetChasing``), never widen them.
    """

    enabled: bool = True
    """Whether a new case is chased; police switch it per case."""
    max_depth: int = 8
    """Deepest hop a child stop-payment may have (the police's first request is hop 0), at most 64."""
    min_amounts: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({"CNY": 100_000}))
    """Smallest amount worth a stop-payment, in minor units per ISO 4217 currency; a currency not
    listed has no minimum beyond zero."""
    max_accounts: int = 64
    """Most accounts one case may place holds on (the police's own requests count too)."""
    max_requests: int = 256
    """Most stop-payments the broker may send for one case (merges send one per path)."""

    def __post_init__(self) -> None:
        if not 0 <= self.max_depth <= _MAX_HOP:
            raise ValueError(f"max_depth must be between 0 and {_MAX_HOP}")
        if self.max_accounts < 1 or self.max_requests < 0:
            raise ValueError("max_accounts must be at least 1 and max_requests not negative")
        for currency, minor_units in self.min_amounts.items():
            if not _CURRENCY.fullmatch(currency) or not 0 < minor_units <= _MAX_MINOR_UNITS:
                raise ValueError(f"min_amounts[{currency!r}] must be a positive amount of an ISO 4217 code")
        object.__setattr__(self, "min_amounts", MappingProxyType(dict(self.min_amounts)))

    def min_amount(self, currency: str) -> int:
        """Minor units below which money in ``currency`` is not chased (0: no minimum)."""
        return self.min_amounts.get(currency, 0)


DEFAULT_CHASE = ChasePolicy()
"""The bounds used when a policy file has no ``[chase]`` table."""


@dataclass(frozen=True, kw_only=True)
class ReturnPolicy:
    """How frozen money is returned to victims (RETURN_FUNDS)."""

    notice_period: timedelta = timedelta(days=30)
    """How long after an account's first hold untraced claims wait before their pro rata shares
    may be paid: the time other victims have to come forward."""


DEFAULT_RETURN = ReturnPolicy()
"""The rules used when a policy file has no ``[return]`` table."""


@dataclass(frozen=True, kw_only=True)
class ReleasePolicy:
    """How much of a hold the police may release for the holder's living expenses (purpose
    LIVING_EXPENSES), in total over every such release of the hold."""

    living_expenses_caps: Mapping[str, int] = field(
        default_factory=lambda: MappingProxyType({"CNY": 500_000})
    )
    """Most that may be released for living expenses per hold, in minor units per ISO 4217 currency;
    in a currency not listed no living-expense release is allowed."""
    living_expenses_share: Decimal | None = None
    """If set, also at most this share (0 to 1) of what the hold held at its outcome."""

    def __post_init__(self) -> None:
        for currency, minor_units in self.living_expenses_caps.items():
            if not _CURRENCY.fullmatch(currency) or not 0 < minor_units <= _MAX_MINOR_UNITS:
                raise ValueError(
                    f"living_expenses_caps[{currency!r}] must be a positive amount of an ISO 4217 code"
                )
        if self.living_expenses_share is not None and not 0 <= self.living_expenses_share <= 1:
            raise ValueError("living_expenses_share must lie between 0 and 1")
        object.__setattr__(self, "living_expenses_caps", MappingProxyType(dict(self.living_expenses_caps)))

    def living_expenses_cap(self, currency: str, held_at_outcome: int) -> int:
        """Most minor units that may be released for living expenses, in total, from a hold of
        ``held_at_outcome`` in ``currency`` (0: none)."""
        cap = self.living_expenses_caps.get(currency, 0)
        if self.living_expenses_share is not None:
            cap = min(cap, int(held_at_outcome * self.living_expenses_share))
        return cap


DEFAULT_RELEASE = ReleasePolicy()
"""The caps used when a policy file has no ``[release]`` table."""


@dataclass(frozen=True, kw_only=True)
class NumberBlockPolicy:
    """Bounds of batch NUMBER_BLOCK orders."""

    max_items: int = _MAX_BATCH
    """Most lines one batch may name (``NumberBlock.phones``), 1 to the contract's 10,000; a larger
    batch is refused ``BATCH_TOO_LARGE`` and nothing is stored."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_items <= _MAX_BATCH:
            raise ValueError(f"max_items must be between 1 and {_MAX_BATCH}")


DEFAULT_NUMBER_BLOCK = NumberBlockPolicy()
"""The bounds used when a policy file has no ``[number_block]`` table."""


@dataclass(frozen=True, kw_only=True)
class WarningPolicy:
    """What a failed warning (预警劝阻) sets off: in-person dissuasion (见面劝阻) by the police of the
    person's region (a DISSUASION the broker sends, deadlined by the SLA policy)."""

    escalate_on: frozenset[results_pb2.WarningOutcome.ValueType] = frozenset(
        {results_pb2.WARNING_OUTCOME_UNREACHABLE, results_pb2.WARNING_OUTCOME_CONTINUING}
    )
    """Warning outcomes that make the broker send a DISSUASION; empty: none does."""
    priority: common_pb2.Priority.ValueType = common_pb2.PRIORITY_GREEN
    """The DISSUASION's SLA lane (its deadlines come from the SLA policy)."""

    def __post_init__(self) -> None:
        if results_pb2.WARNING_OUTCOME_DISSUADED in self.escalate_on:
            raise ValueError("a dissuaded person needs no visit: DISSUADED cannot escalate")

    def escalates(self, outcome: results_pb2.WarningOutcome.ValueType) -> bool:
        return outcome in self.escalate_on


DEFAULT_WARNING = WarningPolicy()
"""What a policy file without a ``[warning]`` table sets off: unreachable and continuing escalate."""


class Policy:
    """Immutable authorization rules; everything no rule allows is denied."""

    __slots__ = (
        "_by_route",
        "_chase",
        "_number_block",
        "_release",
        "_returns",
        "_risk",
        "_rules",
        "_warning",
    )

    def __init__(
        self,
        rules: Iterable[PolicyRule],
        *,
        chase: ChasePolicy = DEFAULT_CHASE,
        returns: ReturnPolicy = DEFAULT_RETURN,
        release: ReleasePolicy = DEFAULT_RELEASE,
        number_block: NumberBlockPolicy = DEFAULT_NUMBER_BLOCK,
        warning: WarningPolicy = DEFAULT_WARNING,
        risk: RiskPolicy = DEFAULT_RISK,
    ) -> None:
        self._warning = warning
        self._risk = risk
        self._number_block = number_block
        self._rules = tuple(rules)
        self._chase = chase
        self._returns = returns
        self._release = release
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

    @property
    def chase(self) -> ChasePolicy:
        """Bounds of the broker's own chasing of onward transfers."""
        return self._chase

    @property
    def returns(self) -> ReturnPolicy:
        """How frozen money is returned to victims."""
        return self._returns

    @property
    def release(self) -> ReleasePolicy:
        """Caps on partial releases for living expenses."""
        return self._release

    @property
    def number_block(self) -> NumberBlockPolicy:
        """Bounds of batch number blocks."""
        return self._number_block

    @property
    def warning(self) -> WarningPolicy:
        """Which warning outcomes the broker escalates to in-person dissuasion."""
        return self._warning

    @property
    def risk(self) -> RiskPolicy:
        """Who may check and mark the risk registry, and its bounds."""
        return self._risk

    def authorize_submit(
        self,
        *,
        sender: Agency,
        request_type: _RequestType,
        recipient: Agency,
        case_ref: common_pb2.CaseRef,
        appealed_case: common_pb2.CaseRef | None = None,
    ) -> None:
        """Raise :class:`PermissionDeniedError` unless ``sender`` may send this request to ``recipient``.

        Reasons, checked in this order: ``READ_ONLY``, ``NOT_CASE_OWNER``, ``SELF_ADDRESSED``,
        ``TYPE_NOT_ALLOWED``, ``REGION_NOT_ALLOWED``.

        ``appealed_case``: for an APPEAL only, the case of the restriction intake verified the
        sender applied. The one exception to "an agency submits only under its own case
        references": an appeal is filed under the police's case it appeals against.
        """
        type_name = request_type_slug(request_type)
        if sender.kind is AgencyKind.REGULATOR:
            raise PermissionDeniedError(
                f"{sender.id!r} is a regulator: regulators read and watch, they never submit requests",
                reason="READ_ONLY",
            )
        if case_ref.issuing_agency != sender.id and not _appeal_under(request_type, case_ref, appealed_case):
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
                allowed.setdefault(recipient, set()).add(request_type_slug(request_type))
        if not allowed:
            return "nothing"
        return "; ".join(
            f"{', '.join(sorted(names))} to {recipient}" for recipient, names in sorted(allowed.items())
        )


def _appeal_under(
    request_type: _RequestType, case_ref: common_pb2.CaseRef, appealed_case: common_pb2.CaseRef | None
) -> bool:
    """An APPEAL filed under exactly the case of the restriction intake verified."""
    return (
        request_type == common_pb2.REQUEST_TYPE_APPEAL
        and appealed_case is not None
        and case_ref.issuing_agency == appealed_case.issuing_agency
        and case_ref.case_number == appealed_case.case_number
    )


# -- the file -----------------------------------------------------------------------------------


def _kinds(scope: TomlTable, name: str) -> frozenset[AgencyKind]:
    kinds: set[AgencyKind] = set()
    for i, value in enumerate(scope.strings(name, required=True, non_empty=True, distinct=True)):
        try:
            kind = AgencyKind(value)
        except ValueError:
            expected = ", ".join(AgencyKind)
            scope.fail(f"{name}[{i}]", f"unknown agency kind {value!r} (expected one of: {expected})")
        if name == "senders" and kind is AgencyKind.REGULATOR:
            scope.fail(f"{name}[{i}]", "regulators read, never submit: they cannot be senders")
        kinds.add(kind)
    return frozenset(kinds)


def _types(scope: TomlTable) -> frozenset[_RequestType]:
    types: set[_RequestType] = set()
    for i, value in enumerate(scope.strings("types", required=True, non_empty=True, distinct=True)):
        request_type = REQUEST_TYPES_BY_SLUG.get(value)
        if request_type is None:
            expected = ", ".join(REQUEST_TYPES_BY_SLUG)
            scope.fail(f"types[{i}]", f"unknown request type {value!r} (expected one of: {expected})")
        types.add(request_type)
    return frozenset(types)


def _regions(scope: TomlTable) -> tuple[str, ...]:
    regions = scope.strings("recipient_regions", non_empty=True, distinct=True)
    for i, prefix in enumerate(regions):
        if not _REGION_PREFIX.fullmatch(prefix):
            scope.fail(f"recipient_regions[{i}]", f"{prefix!r} is not a GB/T 2260 prefix of 2 to 6 digits")
    return regions


def _parse_rule(scope: TomlTable) -> PolicyRule:
    scope.only(_RULE)
    return PolicyRule(
        senders=_kinds(scope, "senders"),
        types=_types(scope),
        recipients=_kinds(scope, "recipients"),
        recipient_regions=_regions(scope),
        description=scope.optional_string("description") or "",
    )


def _amounts(scope: TomlTable, name: str) -> Mapping[str, int] | None:
    """A table of currency = "decimal amount" (``[chase.min_amount]``, ``[release.living_expenses.cap]``)
    in minor units; None when the table is absent."""
    amounts = scope.optional_table(name, expected='a table of currency = "amount"')
    if amounts is None:
        return None
    found: dict[str, int] = {}
    for currency, text in amounts.items():
        if not _CURRENCY.fullmatch(currency):
            amounts.fail(currency, "not an ISO 4217 currency code (three capital letters)")
        if not isinstance(text, str):
            # A float (1000.0) would be read through binary floating point: amounts are strings.
            amounts.fail(currency, f'expected a decimal string such as "1000.00", got {toml_type_name(text)}')
        if not _DECIMAL.fullmatch(text):
            amounts.fail(currency, f"{text!r} is not a decimal amount with at most two decimals")
        try:
            minor_units = int(Decimal(text) * 100)
        except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
            amounts.fail(currency, f"{text!r} is not a decimal amount")
        if not 0 < minor_units <= _MAX_MINOR_UNITS:
            amounts.fail(currency, f"{text!r} must be greater than zero and fit in 64 bits of minor units")
        found[currency] = minor_units
    return found


def _or_default(found: Mapping[str, int] | None, default: Mapping[str, int]) -> Mapping[str, int]:
    return default if found is None else found


def _parse_chase(scope: TomlTable) -> ChasePolicy:
    scope.only(_CHASE)
    scope.optional_string("description")
    return ChasePolicy(
        enabled=scope.boolean("enabled", default=DEFAULT_CHASE.enabled),
        max_depth=scope.integer("max_depth", default=DEFAULT_CHASE.max_depth, low=0, high=_MAX_HOP),
        min_amounts=_or_default(_amounts(scope, "min_amount"), DEFAULT_CHASE.min_amounts),
        max_accounts=scope.integer("max_accounts", default=DEFAULT_CHASE.max_accounts, low=1, high=100_000),
        max_requests=scope.integer("max_requests", default=DEFAULT_CHASE.max_requests, low=0, high=1_000_000),
    )


def _parse_return(scope: TomlTable) -> ReturnPolicy:
    scope.only(_RETURN)
    scope.optional_string("description")
    if not scope.has("notice_period"):
        return DEFAULT_RETURN
    return ReturnPolicy(
        notice_period=scope.parsed(
            "notice_period", parse_duration, expected='a duration string such as "30d"'
        )
    )


def _parse_release(scope: TomlTable) -> ReleasePolicy:
    scope.only(_RELEASE)
    scope.optional_string("description")
    living = scope.optional_table("living_expenses")
    if living is None:
        return DEFAULT_RELEASE
    living.only(_LIVING_EXPENSES)
    living.optional_string("description")
    caps = _amounts(living, "cap")
    share_text = living.optional_string("share")
    share = None
    if share_text is not None:
        if not _SHARE.fullmatch(share_text):
            living.fail("share", f'{share_text!r} is not a decimal share between 0 and 1 such as "0.20"')
        share = Decimal(share_text)
    return ReleasePolicy(
        living_expenses_caps=_or_default(caps, DEFAULT_RELEASE.living_expenses_caps),
        living_expenses_share=share,
    )


def _parse_number_block(scope: TomlTable) -> NumberBlockPolicy:
    scope.only(_NUMBER_BLOCK)
    scope.optional_string("description")
    return NumberBlockPolicy(
        max_items=scope.integer("max_items", default=DEFAULT_NUMBER_BLOCK.max_items, low=1, high=_MAX_BATCH)
    )


def _parse_warning(scope: TomlTable) -> WarningPolicy:
    scope.only(_WARNING)
    scope.optional_string("description")
    escalate_on = DEFAULT_WARNING.escalate_on
    if scope.has("escalate_on"):
        found: set[results_pb2.WarningOutcome.ValueType] = set()
        for i, name in enumerate(scope.strings("escalate_on", distinct=True)):
            if name not in _WARNING_OUTCOMES or name == "dissuaded":
                scope.fail(
                    f"escalate_on[{i}]",
                    f"{name!r} is not a warning outcome that escalates (expected unreachable or continuing)",
                )
            found.add(_WARNING_OUTCOMES[name])
        escalate_on = frozenset(found)
    priority = DEFAULT_WARNING.priority
    priority_name = scope.optional_string("priority")
    if priority_name is not None:
        if priority_name not in _PRIORITIES:
            scope.fail("priority", f"unknown priority {priority_name!r} (expected green or standard)")
        priority = _PRIORITIES[priority_name]
    return WarningPolicy(escalate_on=escalate_on, priority=priority)


def load_policy(path: Path) -> Policy:
    """Read and check a policy file; raise :class:`PolicyError` naming the file and field on any problem."""
    root = read_toml(path, PolicyError, what="the policy file")
    root.only(_TOP)
    header = root.table("policy")
    header.only(_HEADER)
    version = header.integer("version")
    if version != POLICY_VERSION:
        header.fail("version", f"unsupported version {version}; this release reads {POLICY_VERSION}")
    header.optional_string("description")

    rule_tables = root.tables("rule")
    if not rule_tables:
        # Deny-all is never what an operator means to deploy; it is a file that lost its rules.
        root.fail("rule", "no [[rule]] tables: a policy without rules denies everything")
    rules = [_parse_rule(scope) for scope in rule_tables]
    chase_table = root.optional_table("chase")
    chase = DEFAULT_CHASE if chase_table is None else _parse_chase(chase_table)
    return_table = root.optional_table("return")
    returns = DEFAULT_RETURN if return_table is None else _parse_return(return_table)
    release_table = root.optional_table("release")
    release = DEFAULT_RELEASE if release_table is None else _parse_release(release_table)
    number_block_table = root.optional_table("number_block")
    number_block = (
        DEFAULT_NUMBER_BLOCK if number_block_table is None else _parse_number_block(number_block_table)
    )
    warning_table = root.optional_table("warning")
    warning = DEFAULT_WARNING if warning_table is None else _parse_warning(warning_table)
    risk_table = root.optional_table("risk")
    risk = DEFAULT_RISK if risk_table is None else parse_risk(risk_table)
    policy = Policy(
        rules,
        chase=chase,
        returns=returns,
        release=release,
        number_block=number_block,
        warning=warning,
        risk=risk,
    )
    _log.info(
        "policy.loaded",
        file=str(path),
        rules=len(rules),
        chase=chase.enabled,
        chase_max_depth=chase.max_depth,
        chase_max_accounts=chase.max_accounts,
    )
    return policy
