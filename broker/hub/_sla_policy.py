"""SLA policy as data: deadlines, hold rules and the escalation ladder of one jurisdiction.

The file format is documented at the top of ``agencies/sla/cn.toml``, the default policy. Every
problem in a policy file raises :class:`PolicyError` naming the file and a field path in TOML
spelling (``sla.version``, ``deadline[3].execute``, ``hold.freeze.max_extensions``); indexes count
entries in file order from 0. Unknown fields are rejected: a typo must not silently loosen or
tighten a deadline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import TypeAlias

from greenchannel.v1 import common_pb2, requests_pb2

from broker.protocol import REQUEST_TYPES_BY_SLUG, TomlTable, read_toml, request_type_slug

from ._calendar import WEEKDAYS, WorkingCalendar, WorkingDays
from ._deadlines import Budget, DeadlineTable, PhaseBudget, nominal
from ._errors import PolicyError

__all__ = [
    "SLA_POLICY_VERSION",
    "EscalationLadder",
    "HoldRule",
    "SlaPolicy",
    "format_duration",
    "load_sla_policy",
    "parse_duration",
    "parse_phase",
]

SLA_POLICY_VERSION = 1

_RequestType: TypeAlias = common_pb2.RequestType.ValueType
_Priority: TypeAlias = common_pb2.Priority.ValueType

_T = common_pb2
_PRIORITIES_BY_NAME: Mapping[str, _Priority] = {"green": _T.PRIORITY_GREEN, "standard": _T.PRIORITY_STANDARD}
_HOLD_TYPES: Mapping[str, _RequestType] = {
    "stop_payment": _T.REQUEST_TYPE_STOP_PAYMENT,
    "freeze": _T.REQUEST_TYPE_FREEZE,
}

_TOP = frozenset({"sla", "escalation", "hold", "deadline", "calendar"})
_HEADER = frozenset({"version", "jurisdiction", "description"})
_ESCALATION = frozenset({"reminder_at", "breach_at", "notify_duty_desk", "notify_supervisor"})
_HOLD = frozenset({"validity", "extension", "max_extensions", "convertible_to_freeze"})
_FREEZE_HOLD = _HOLD - {"convertible_to_freeze"}
_DEADLINE = frozenset({"description", "types", "categories", "priority", "deliver", "acknowledge", "execute"})
_CATEGORY_PREFIX = "DATA_CATEGORY_"
_CATEGORIES_BY_NAME: Mapping[str, int] = MappingProxyType(
    {
        name.removeprefix(_CATEGORY_PREFIX).lower(): number
        for name, number in requests_pb2.DataCategory.items()
        if number != requests_pb2.DATA_CATEGORY_UNSPECIFIED
    }
)
# The types whose body names a data category, which a deadline entry may narrow to.
_CATEGORY_TYPES = frozenset({_T.REQUEST_TYPE_DATA_REQUEST})
_PHASES = ("deliver", "acknowledge", "execute")
_CALENDAR = frozenset({"time_zone", "weekend", "holidays", "make_up_days"})
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_FRACTION = "a number between 0 and 1"

_JURISDICTION = re.compile(r"[A-Z]{2}(-[A-Z0-9]{1,8})?")
_DURATION = re.compile(r"([1-9][0-9]{0,8})([smhd])")
_WORKING_DAYS = re.compile(r"([1-9][0-9]{0,8})wd")
_UNITS: Mapping[str, timedelta] = {
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
# Ten years: far beyond any legal hold, far below timedelta's and Timestamp's limits.
_LONGEST = timedelta(days=3660)


def parse_duration(text: str) -> timedelta:
    """``"30s"``, ``"2m"``, ``"8h"``, ``"3d"``: a positive whole number and one unit; else ``ValueError``.

    Deliberately strict: no signs, fractions, spaces, upper case or combined units, so that what
    the file says is exactly what it means.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration: write a positive whole number and one unit "
            '(s, m, h or d), e.g. "30s", "2m", "8h", "3d"'
        )
    value = int(match[1]) * _UNITS[match[2]]
    if value > _LONGEST:
        raise ValueError(f"{text!r} is longer than the longest allowed duration ({_LONGEST.days}d)")
    return value


def parse_phase(text: str) -> Budget:
    """A phase budget: a duration as :func:`parse_duration` reads it, or working days (``"3wd"``)."""
    match = _WORKING_DAYS.fullmatch(text)
    if match is not None:
        count = int(match[1])
        if count > _LONGEST.days:
            raise ValueError(f"{text!r} is longer than the longest allowed duration ({_LONGEST.days}d)")
        return WorkingDays(count=count)
    if _DURATION.fullmatch(text) is None:
        raise ValueError(
            f"{text!r} is not a duration: write a positive whole number and one unit (s, m, h or d, "
            'or wd for working days of the [calendar]), e.g. "30s", "2m", "8h", "3d", "3wd"'
        )
    return parse_duration(text)


def format_budget(value: Budget) -> str:
    """A phase budget as the file spells it."""
    return str(value) if isinstance(value, WorkingDays) else format_duration(value)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling :func:`parse_duration` reads back, or seconds with a fraction."""
    for unit in ("d", "h", "m", "s"):
        count, rest = divmod(value, _UNITS[unit])
        if not rest and count > 0:
            return f"{count}{unit}"
    return f"{value.total_seconds():g}s"


@dataclass(frozen=True, kw_only=True)
class HoldRule:
    """How long a hold placed by a request type lasts and how often it may be extended."""

    validity: timedelta
    """How long the hold lasts, counted from the broker's receive time of the request."""
    extension: timedelta
    """What one extension (a renewal, for a freeze) adds to the hold's expiry."""
    max_extensions: int | None
    """How many extensions are allowed; None is no limit (a freeze is renewable)."""
    convertible_to_freeze: bool = False
    """At its end the hold lapses on its own unless a FREEZE converts it (紧急止付 -> 快速冻结)."""

    def __post_init__(self) -> None:
        if self.validity <= timedelta(0) or self.extension <= timedelta(0):
            raise ValueError("hold validity and extension must be positive")
        if self.max_extensions is not None and self.max_extensions < 0:
            raise ValueError("max_extensions must be >= 0, or None for no limit")

    @property
    def longest(self) -> timedelta | None:
        """Validity plus every allowed extension; None when renewals are unlimited."""
        if self.max_extensions is None:
            return None
        return self.validity + self.extension * self.max_extensions

    def may_extend(self, extensions_so_far: int) -> bool:
        """Whether one more extension is allowed after ``extensions_so_far``."""
        return self.max_extensions is None or extensions_so_far < self.max_extensions

    def scaled(self, factor: float) -> HoldRule:
        return HoldRule(
            validity=self.validity * factor,
            extension=self.extension * factor,
            max_extensions=self.max_extensions,
            convertible_to_freeze=self.convertible_to_freeze,
        )


@dataclass(frozen=True, kw_only=True)
class EscalationLadder:
    """When a phase deadline is at risk and who hears about a breach."""

    reminder_at: float
    """Fraction of a phase's budget after which the responsible agency is reminded (0 < x < breach_at)."""
    breach_at: float = 1.0
    """Fraction at which the phase is breached: always 1.0, the deadline itself."""
    notify_duty_desk: bool = True
    """On breach, tell the responsible agency's duty desk (``duty_contact`` in the directory)."""
    notify_supervisor: bool = True
    """On breach, tell the responsible agency's supervisor agency."""

    def __post_init__(self) -> None:
        if self.breach_at != 1.0:
            raise ValueError("breach_at must be 1.0: a deadline is breached exactly when it passes")
        if not 0.0 < self.reminder_at < self.breach_at:
            raise ValueError("reminder_at must be above 0 and below breach_at")

    def reminder_time(self, received_at: datetime, due_at: datetime) -> datetime:
        """When to remind, for a phase counted from ``received_at`` and due at ``due_at``."""
        return received_at + (due_at - received_at) * self.reminder_at


@dataclass(frozen=True, kw_only=True)
class SlaPolicy:
    """One jurisdiction's green-channel SLA: deadlines, hold rules, escalation."""

    jurisdiction: str
    """ISO 3166-1 alpha-2 code (``CN``; ``EU`` for the Union), optionally with a subdivision."""
    deadlines: DeadlineTable
    """Phase budgets per (type, priority), some narrowed to a data category, and the hold validity
    the broker notarizes."""
    holds: Mapping[_RequestType, HoldRule]
    """Hold rules of the types that place a hold: STOP_PAYMENT and FREEZE."""
    escalation: EscalationLadder
    """Reminder and breach thresholds and who is told."""
    calendar: WorkingCalendar = field(default_factory=WorkingCalendar)
    """The working days that phase budgets in working days (``"3wd"``) count."""
    description: str = ""
    """For people."""
    source: str = ""
    """The file it was read from, for logs and error messages; empty when built in code."""

    def hold_rule(self, request_type: _RequestType) -> HoldRule | None:
        """The rule of a hold placed by ``request_type``; None for types that hold nothing."""
        return self.holds.get(request_type)

    def scaled(self, factor: float) -> SlaPolicy:
        """Every duration multiplied by ``factor`` (extension counts unchanged; working days become a
        day each): short SLAs for tests."""
        return replace(
            self,
            deadlines=self.deadlines.scaled(factor),
            holds=MappingProxyType({key: rule.scaled(factor) for key, rule in self.holds.items()}),
        )


# -- the file -----------------------------------------------------------------------------------


_DURATION_EXPECTED = 'a duration string such as "30s", "8h", "3d"'
_PHASE_EXPECTED = 'a duration string such as "30s", "8h", "3d", or working days such as "3wd"'


def _duration(scope: TomlTable, name: str) -> timedelta:
    return scope.parsed(name, parse_duration, expected=_DURATION_EXPECTED)


def _phase(scope: TomlTable, name: str) -> Budget:
    return scope.parsed(name, parse_phase, expected=_PHASE_EXPECTED)


def _header(root: TomlTable) -> tuple[str, str]:
    header = root.table("sla")
    header.only(_HEADER)
    version = header.integer("version")
    if version != SLA_POLICY_VERSION:
        header.fail("version", f"unsupported version {version}; this release reads {SLA_POLICY_VERSION}")
    jurisdiction = header.string("jurisdiction")
    if not _JURISDICTION.fullmatch(jurisdiction):
        header.fail(
            "jurisdiction",
            f"{jurisdiction!r} is not a jurisdiction code: two upper-case letters (ISO 3166-1, or EU), "
            'optionally "-" and a subdivision, e.g. "CN", "EU", "CN-31"',
        )
    return jurisdiction, header.optional_string("description") or ""


def _escalation(root: TomlTable) -> EscalationLadder:
    scope = root.table("escalation")
    scope.only(_ESCALATION)
    breach_at = scope.number("breach_at", default=1.0, expected=_FRACTION)
    if breach_at != 1.0:
        scope.fail(
            "breach_at", f"must be 1.0, got {breach_at}: a deadline is breached exactly when it passes"
        )
    reminder_at = scope.number("reminder_at", expected=_FRACTION)
    if not 0.0 < reminder_at < breach_at:
        scope.fail("reminder_at", f"must be above 0 and below breach_at ({breach_at}), got {reminder_at}")
    return EscalationLadder(
        reminder_at=reminder_at,
        breach_at=breach_at,
        notify_duty_desk=scope.boolean("notify_duty_desk", default=True),
        notify_supervisor=scope.boolean("notify_supervisor", default=True),
    )


def _hold(scope: TomlTable, name: str) -> HoldRule:
    scope.only(_HOLD if name == "stop_payment" else _FREEZE_HOLD)
    validity = _duration(scope, "validity")
    extension = _duration(scope, "extension") if scope.has("extension") else validity
    raw_max = scope.integer("max_extensions", default=-1, expected="an integer (-1 for no limit)")
    if raw_max < -1:
        scope.fail("max_extensions", f"must be 0 or more, or -1 for no limit; got {raw_max}")
    return HoldRule(
        validity=validity,
        extension=extension,
        max_extensions=None if raw_max == -1 else raw_max,
        convertible_to_freeze=scope.boolean("convertible_to_freeze", default=False),
    )


def _holds(root: TomlTable) -> dict[_RequestType, HoldRule]:
    scope = root.table("hold")
    scope.only(_HOLD_TYPES)
    holds: dict[_RequestType, HoldRule] = {}
    for name, request_type in _HOLD_TYPES.items():
        holds[request_type] = _hold(scope.table(name), name)
    return holds


def _deadline_types(scope: TomlTable) -> list[_RequestType]:
    types: list[_RequestType] = []
    names = scope.strings(
        "types", required=True, non_empty=True, distinct=True, expected="an array of request type names"
    )
    for i, item in enumerate(names):
        request_type = REQUEST_TYPES_BY_SLUG.get(item)
        if request_type is None:
            expected = ", ".join(REQUEST_TYPES_BY_SLUG)
            scope.fail(f"types[{i}]", f"unknown request type {item!r} (expected one of: {expected})")
        types.append(request_type)
    return types


def _deadline_categories(scope: TomlTable, types: list[_RequestType]) -> list[int]:
    """The optional ``categories`` narrowing an entry to some data categories; empty: all of them."""
    if not scope.has("categories"):
        return []
    names = scope.strings(
        "categories", non_empty=True, distinct=True, expected="an array of data category names"
    )
    for position, request_type in enumerate(types):
        if request_type not in _CATEGORY_TYPES:
            allowed = ", ".join(request_type_slug(t) for t in sorted(_CATEGORY_TYPES))
            scope.fail(
                f"types[{position}]",
                f"{request_type_slug(request_type)} has no data category; an entry with categories "
                f"names only {allowed}",
            )
    categories: list[int] = []
    for i, item in enumerate(names):
        category = _CATEGORIES_BY_NAME.get(item)
        if category is None:
            expected = ", ".join(_CATEGORIES_BY_NAME)
            scope.fail(f"categories[{i}]", f"unknown data category {item!r} (expected one of: {expected})")
        categories.append(category)
    return categories


_Budget: TypeAlias = tuple[Budget, Budget, Budget]
_Key: TypeAlias = tuple[_RequestType, _Priority]
_NarrowKey: TypeAlias = tuple[_RequestType, _Priority, int]


def _budget(scope: TomlTable) -> _Budget:
    deliver, acknowledge, execute = (_phase(scope, name) for name in _PHASES)
    for (earlier, shorter), (later, longer) in (
        (("deliver", deliver), ("acknowledge", acknowledge)),
        (("acknowledge", acknowledge), ("execute", execute)),
    ):
        if isinstance(shorter, WorkingDays) and not isinstance(longer, WorkingDays):
            # Working days stretch over weekends and holidays; a fixed duration after them would not.
            scope.fail(
                later,
                f"{later} ({format_budget(longer)}) is a fixed duration after {earlier} in working days "
                f"({format_budget(shorter)}), which a holiday could push past it; give {later} in "
                "working days too",
            )
        if nominal(longer) < nominal(shorter):
            # Every phase is counted from receipt, so a later phase cannot be due before an earlier one.
            # N working days are at least N days, so "1d" <= "1wd" always holds.
            scope.fail(
                later,
                f"{later} ({format_budget(longer)}) is shorter than {earlier} "
                f"({format_budget(shorter)}); every phase counts from the broker's receive time, "
                "so deliver <= acknowledge <= execute",
            )
    return deliver, acknowledge, execute


def _deadlines(root: TomlTable) -> tuple[dict[_Key, _Budget], dict[_NarrowKey, _Budget]]:
    """Budgets per (type, priority), and those narrowed to a data category per (type, priority,
    category). Every (type, priority) needs an entry without categories, which covers every category
    no narrowed entry names; a narrowed (type, priority, category) is covered at most once."""
    budgets: dict[_Key, _Budget] = {}
    narrowed: dict[_NarrowKey, _Budget] = {}
    covered_by: dict[_Key | _NarrowKey, int] = {}
    for index, scope in enumerate(root.tables("deadline", required=True)):
        scope.only(_DEADLINE)
        scope.optional_string("description")
        types = _deadline_types(scope)
        categories = _deadline_categories(scope, types)
        priority_name = scope.string("priority")
        priority = _PRIORITIES_BY_NAME.get(priority_name)
        if priority is None:
            scope.fail("priority", f"unknown priority {priority_name!r} (expected one of: green, standard)")
        budget = _budget(scope)
        for position, request_type in enumerate(types):
            keys: list[_Key | _NarrowKey] = (
                [(request_type, priority, category) for category in categories]
                if categories
                else [(request_type, priority)]
            )
            for key in keys:
                if key in covered_by:
                    what = f"{request_type_slug(request_type)} at priority {priority_name}"
                    if len(key) == 3:
                        what += f" for category {_category_name(key[2])}"
                    scope.fail(
                        f"types[{position}]",
                        f"{what} is already covered by deadline[{covered_by[key]}]; each (type, priority) "
                        "pair is covered exactly once, and each (type, priority, category) at most once",
                    )
                covered_by[key] = index
                if len(key) == 3:
                    narrowed[key] = budget
                else:
                    budgets[key] = budget
    missing = [
        f"{type_name} at {priority_name}"
        for type_name, request_type in REQUEST_TYPES_BY_SLUG.items()
        for priority_name, priority in _PRIORITIES_BY_NAME.items()
        if (request_type, priority) not in budgets
    ]
    if missing:
        root.fail(
            "deadline",
            f"no deadline for {', '.join(missing)}: every type needs one per priority "
            "(an entry with categories covers only those categories)",
        )
    return budgets, narrowed


def _category_name(category: int) -> str:
    return next(name for name, number in _CATEGORIES_BY_NAME.items() if number == category)


def _dates(scope: TomlTable, name: str) -> frozenset[date]:
    days: set[date] = set()
    for i, text in enumerate(scope.strings(name, distinct=True, expected="an array of ISO dates")):
        try:
            if _ISO_DATE.fullmatch(text) is None:
                raise ValueError
            days.add(date.fromisoformat(text))
        except ValueError:
            scope.fail(f"{name}[{i}]", f'{text!r} is not a date: write it as YYYY-MM-DD, e.g. "2026-10-01"')
    return frozenset(days)


def _calendar(root: TomlTable) -> WorkingCalendar:
    """The optional ``[calendar]``: absent, Monday to Friday in UTC without holidays."""
    scope = root.optional_table("calendar")
    if scope is None:
        return WorkingCalendar()
    scope.only(_CALENDAR)
    time_zone = scope.optional_string("time_zone")
    names = (
        scope.strings("weekend", distinct=True, expected="an array of day names")
        if scope.has("weekend")
        else ("saturday", "sunday")
    )
    weekend: set[int] = set()
    for i, name in enumerate(names):
        if name not in WEEKDAYS:
            scope.fail(f"weekend[{i}]", f"unknown day {name!r} (expected one of: {', '.join(WEEKDAYS)})")
        weekend.add(WEEKDAYS.index(name) + 1)
    if len(weekend) == len(WEEKDAYS):
        scope.fail("weekend", "a weekend of all seven days leaves no working day")
    holidays = _dates(scope, "holidays")
    make_up_days = _dates(scope, "make_up_days")
    for i, text in enumerate(scope.strings("make_up_days")):
        day = date.fromisoformat(text)
        if day in holidays:
            scope.fail(f"make_up_days[{i}]", f"{text} is also listed in holidays")
        if day.isoweekday() not in weekend:
            scope.fail(
                f"make_up_days[{i}]",
                f"{text} is a {WEEKDAYS[day.isoweekday() - 1]}, not a weekend day: it is worked anyway",
            )
    try:
        return WorkingCalendar(
            time_zone="UTC" if time_zone is None else time_zone,
            weekend=frozenset(weekend),
            holidays=holidays,
            make_up_days=make_up_days,
        )
    except ValueError as exc:
        # Everything else was checked above, field by field; what is left is the zone.
        scope.fail("time_zone", str(exc))


def _phase_budget(budget: _Budget) -> PhaseBudget:
    deliver, acknowledge, execute = budget
    return PhaseBudget(deliver=deliver, acknowledge=acknowledge, execute=execute)


def _table(
    budgets: Mapping[_Key, _Budget],
    narrowed: Mapping[_NarrowKey, _Budget],
    holds: Mapping[_RequestType, HoldRule],
    calendar: WorkingCalendar,
) -> DeadlineTable:
    """The broker's :class:`DeadlineTable` for these budgets and holds.

    EXTEND's hold validity in the table is what one stop-payment extension adds, as the table has
    always answered; the hub reads the target's own :class:`HoldRule` where it knows the target.
    """
    validity = {request_type: rule.validity for request_type, rule in holds.items()}
    validity[_T.REQUEST_TYPE_EXTEND] = holds[_T.REQUEST_TYPE_STOP_PAYMENT].extension
    return DeadlineTable(
        budgets={key: _phase_budget(budget) for key, budget in budgets.items()},
        holds=validity,
        calendar=calendar,
        by_category={key: _phase_budget(budget) for key, budget in narrowed.items()},
    )


def load_sla_policy(path: Path) -> SlaPolicy:
    """Read and check an SLA policy file; raise :class:`PolicyError` naming the file and field.

    Nothing is logged: the default policy is loaded while modules are imported, before the
    command line has configured logging.
    """
    root = read_toml(path, PolicyError, what="the SLA policy file")
    root.only(_TOP)
    jurisdiction, description = _header(root)
    escalation = _escalation(root)
    holds = _holds(root)
    budgets, narrowed = _deadlines(root)
    calendar = _calendar(root)
    return SlaPolicy(
        jurisdiction=jurisdiction,
        deadlines=_table(budgets, narrowed, holds, calendar),
        holds=MappingProxyType(holds),
        escalation=escalation,
        calendar=calendar,
        description=description,
        source=str(path),
    )
