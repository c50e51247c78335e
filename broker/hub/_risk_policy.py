"""``[risk]`` of the policy file: who may check the risk registry, who may mark, for how long, how often.

Read by the one policy loader (:func:`broker.hub._policy.load_policy`), with its errors naming the
file and the field (``risk.check[1]``, ``risk.max_validity``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from broker.protocol import AgencyKind, TomlTable

from ._sla_policy import parse_duration

__all__ = ["DEFAULT_RISK", "RiskPolicy", "parse_risk"]

_FIELDS = frozenset(
    {
        "check",
        "mark",
        "propose",
        "max_validity",
        "default_validity",
        "check_rate",
        "check_burst",
        "description",
    }
)
_MAX_RATE = 1_000_000


@dataclass(frozen=True, kw_only=True)
class RiskPolicy:
    """Who may use the risk registry (RiskService), and its bounds."""

    check: frozenset[AgencyKind] = frozenset(
        {AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM, AgencyKind.POLICE}
    )
    """Kinds of agency that may call Check; any other member is refused ``CHECK_NOT_ALLOWED``."""
    mark: frozenset[AgencyKind] = frozenset({AgencyKind.POLICE})
    """Kinds whose marks are ACTIVE at once (on a case they own). Only police own cases."""
    propose: frozenset[AgencyKind] = frozenset({AgencyKind.BANK, AgencyKind.PLATFORM})
    """Kinds whose marks are PROPOSED until the police owning the case confirm them; a kind in
    neither list is refused ``MARK_NOT_ALLOWED``."""
    max_validity: timedelta = timedelta(days=1826)
    """Longest a mark may last (``valid_for``); longer is refused ``VALIDITY_TOO_LONG``. Default
    60 months, as Pix's marks."""
    default_validity: timedelta = timedelta(days=365)
    """How long a mark lasts when it names no ``valid_for``; at most ``max_validity``."""
    check_rate: int = 1000
    """Identifiers one agency may check per second (per broker replica); beyond, Check is refused
    RESOURCE_EXHAUSTED ``CHECK_RATE_EXCEEDED`` with a RetryInfo."""
    check_burst: int = 2000
    """Identifiers one agency may check at once after being idle (the bucket's depth)."""

    def __post_init__(self) -> None:
        if AgencyKind.REGULATOR in self.mark | self.propose:
            raise ValueError("regulators read, never mark")
        if self.mark - {AgencyKind.POLICE}:
            raise ValueError("only police mark directly: a direct mark rests on a case the marker owns")
        if self.mark & self.propose:
            raise ValueError("a kind either marks or proposes, not both")
        if self.default_validity > self.max_validity:
            raise ValueError("default_validity must not exceed max_validity")
        if not 1 <= self.check_rate <= _MAX_RATE or not 1 <= self.check_burst <= _MAX_RATE:
            raise ValueError(f"check_rate and check_burst must be between 1 and {_MAX_RATE}")


DEFAULT_RISK = RiskPolicy()
"""The rules used when a policy file has no ``[risk]`` table."""


def _kinds(scope: TomlTable, name: str, default: frozenset[AgencyKind]) -> frozenset[AgencyKind]:
    if not scope.has(name):
        return default
    kinds: set[AgencyKind] = set()
    for i, value in enumerate(scope.strings(name, distinct=True)):
        try:
            kinds.add(AgencyKind(value))
        except ValueError:
            scope.fail(
                f"{name}[{i}]", f"unknown agency kind {value!r} (expected one of: {', '.join(AgencyKind)})"
            )
    return frozenset(kinds)


def _duration(scope: TomlTable, name: str, default: timedelta) -> timedelta:
    if not scope.has(name):
        return default
    return scope.parsed(name, parse_duration, expected='a duration string such as "1826d"')


def parse_risk(scope: TomlTable) -> RiskPolicy:
    """The ``[risk]`` table; errors name the field."""
    scope.only(_FIELDS)
    scope.optional_string("description")
    d = DEFAULT_RISK
    try:
        return RiskPolicy(
            check=_kinds(scope, "check", d.check),
            mark=_kinds(scope, "mark", d.mark),
            propose=_kinds(scope, "propose", d.propose),
            max_validity=_duration(scope, "max_validity", d.max_validity),
            default_validity=_duration(scope, "default_validity", d.default_validity),
            check_rate=scope.integer("check_rate", default=d.check_rate, low=1, high=_MAX_RATE),
            check_burst=scope.integer("check_burst", default=d.check_burst, low=1, high=_MAX_RATE),
        )
    except ValueError as exc:
        scope.fail(None, str(exc))
