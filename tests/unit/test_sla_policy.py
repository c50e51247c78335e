"""SLA policy files: the shipped CN and EU policies, hold rules, escalation, scaling and bad files."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, requests_pb2

from agencies import DEFAULT_SLA_POLICY_PATH
from broker.hub import PolicyError, WorkingCalendar, WorkingDays
from broker.hub._sla_policy import (
    EscalationLadder,
    HoldRule,
    SlaPolicy,
    format_duration,
    load_sla_policy,
    parse_duration,
    parse_phase,
)
from tests._sla import DEFAULT_DEADLINES, DEFAULT_SLA_POLICY

ROOT = Path(__file__).resolve().parents[2]
CN = ROOT / "agencies" / "sla" / "cn.toml"
EU = ROOT / "agencies" / "sla" / "eu.toml"

T = common_pb2
GREEN, STANDARD = T.PRIORITY_GREEN, T.PRIORITY_STANDARD
S, M, H, D = timedelta(seconds=1), timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
ALL_TYPES = [value for value in T.RequestType.values() if value != T.REQUEST_TYPE_UNSPECIFIED]
RECEIVED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture(scope="module")
def cn() -> SlaPolicy:
    return load_sla_policy(CN)


@pytest.fixture(scope="module")
def eu() -> SlaPolicy:
    return load_sla_policy(EU)


def execute(
    policy: SlaPolicy, request_type: T.RequestType.ValueType, priority: T.Priority.ValueType
) -> timedelta | WorkingDays:
    return policy.deadlines.budgets(request_type, priority).execute


# -- the shipped policies -----------------------------------------------------------------------


def test_default_path_is_the_cn_policy(cn: SlaPolicy) -> None:
    assert DEFAULT_SLA_POLICY_PATH == CN
    assert cn.jurisdiction == "CN"
    assert cn.source == str(CN)


def test_default_deadlines_are_the_cn_policy(cn: SlaPolicy) -> None:
    assert DEFAULT_SLA_POLICY.jurisdiction == "CN"
    assert DEFAULT_DEADLINES is DEFAULT_SLA_POLICY.deadlines
    assert DEFAULT_SLA_POLICY.holds == cn.holds
    for request_type in ALL_TYPES:
        for priority in (GREEN, STANDARD):
            assert DEFAULT_DEADLINES.budgets(request_type, priority) == cn.deadlines.budgets(
                request_type, priority
            )
        assert DEFAULT_DEADLINES.hold_validity(request_type) == cn.deadlines.hold_validity(request_type)


def test_cn_green_is_seconds_to_minutes_and_standard_hours_to_days(cn: SlaPolicy) -> None:
    for request_type in ALL_TYPES:
        green = cn.deadlines.budgets(request_type, GREEN)
        standard = cn.deadlines.budgets(request_type, STANDARD)
        assert green.deliver == 30 * S
        assert green.acknowledge == 2 * M
        # Appeals are decided within a week at standard priority, returns and victim follow-ups
        # within 3 working days, in-person dissuasion within a day, everything else within 3 days.
        decided = {
            T.REQUEST_TYPE_APPEAL: 7 * D,
            T.REQUEST_TYPE_RETURN_FUNDS: WorkingDays(count=3),
            T.REQUEST_TYPE_FOLLOW_UP: WorkingDays(count=3),
            T.REQUEST_TYPE_DISSUASION: 24 * H,
        }
        assert (standard.deliver, standard.acknowledge, standard.execute) == (
            1 * H,
            8 * H,
            decided.get(request_type, 3 * D),
        )
    assert execute(cn, T.REQUEST_TYPE_STOP_PAYMENT, GREEN) == 10 * M
    assert execute(cn, T.REQUEST_TYPE_DATA_REQUEST, GREEN) == 8 * H
    assert execute(cn, T.REQUEST_TYPE_DATA_REQUEST, STANDARD) == 3 * D


def test_cn_stop_payment_holds_48h_extended_at_most_twice(cn: SlaPolicy) -> None:
    rule = cn.hold_rule(T.REQUEST_TYPE_STOP_PAYMENT)
    assert rule == HoldRule(validity=48 * H, extension=24 * H, max_extensions=2, convertible_to_freeze=True)
    assert [rule.may_extend(n) for n in range(4)] == [True, True, False, False]
    assert rule.longest == 96 * H
    assert cn.deadlines.hold_validity(T.REQUEST_TYPE_STOP_PAYMENT) == 48 * H
    assert cn.deadlines.hold_validity(T.REQUEST_TYPE_EXTEND) == 24 * H


def test_cn_freeze_holds_six_months_renewable_without_limit(cn: SlaPolicy) -> None:
    rule = cn.hold_rule(T.REQUEST_TYPE_FREEZE)
    assert rule == HoldRule(validity=183 * D, extension=183 * D, max_extensions=None)
    assert rule.may_extend(1000)
    assert rule.longest is None
    assert not rule.convertible_to_freeze
    assert cn.hold_rule(T.REQUEST_TYPE_DATA_REQUEST) is None


def test_cn_escalation_ladder(cn: SlaPolicy) -> None:
    assert cn.escalation == EscalationLadder(
        reminder_at=0.5, breach_at=1.0, notify_duty_desk=True, notify_supervisor=True
    )
    assert cn.escalation.reminder_time(RECEIVED, RECEIVED + 10 * M) == RECEIVED + 5 * M


def test_cn_returns_take_3_working_days_of_the_chinese_calendar(cn: SlaPolicy) -> None:
    for priority in (GREEN, STANDARD):
        assert execute(cn, T.REQUEST_TYPE_RETURN_FUNDS, priority) == WorkingDays(count=3)
    calendar = cn.calendar
    assert calendar is cn.deadlines.calendar
    assert calendar.time_zone == "Asia/Shanghai"
    assert calendar.weekend == {6, 7}
    # 2026: 元旦, 春节 (9 days), 清明节, 劳动节 (5), 端午节, 中秋节, 国庆节 (7), and six make-up days.
    assert len(calendar.holidays) == 3 + 9 + 3 + 5 + 3 + 3 + 7
    assert {day.year for day in calendar.holidays | calendar.make_up_days} == {2026}
    assert sorted(calendar.make_up_days) == [
        date(2026, 1, 4),
        date(2026, 2, 14),
        date(2026, 2, 28),
        date(2026, 5, 9),
        date(2026, 9, 20),
        date(2026, 10, 10),
    ]
    assert not calendar.is_working_day(date(2026, 10, 1))
    assert calendar.is_working_day(date(2026, 10, 10))


def test_eu_returns_take_3_business_days(eu: SlaPolicy) -> None:
    assert execute(eu, T.REQUEST_TYPE_RETURN_FUNDS, STANDARD) == WorkingDays(count=3)
    assert eu.calendar == WorkingCalendar(time_zone="Europe/Brussels")


def test_without_a_calendar_weekdays_in_utc_count(tmp_path: Path) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(GOOD.replace('execute = "3d"', 'execute = "3wd"'), encoding="utf-8")
    policy = load_sla_policy(path)
    assert policy.calendar == WorkingCalendar()
    assert execute(policy, T.REQUEST_TYPE_FREEZE, STANDARD) == WorkingDays(count=3)
    friday = datetime(2026, 3, 6, 10, 0, tzinfo=UTC)
    phases = policy.deadlines.deadlines(T.REQUEST_TYPE_FREEZE, STANDARD, friday).phases
    assert phases[-1].due_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 11, 10, 0, tzinfo=UTC)


def test_a_calendar_of_ones_own(tmp_path: Path) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(
        GOOD.replace('execute = "3d"', 'execute = "2wd"')
        + '\n[calendar]\ntime_zone = "Asia/Dubai"\nweekend = ["friday", "saturday"]\n'
        + 'holidays = ["2026-03-10"]\nmake_up_days = ["2026-03-07"]\n',
        encoding="utf-8",
    )
    policy = load_sla_policy(path)
    assert policy.calendar == WorkingCalendar(
        time_zone="Asia/Dubai",
        weekend=frozenset({5, 6}),
        holidays=frozenset({date(2026, 3, 10)}),
        make_up_days=frozenset({date(2026, 3, 7)}),
    )
    # Thursday 5 March 10:00 Dubai: Friday off, Saturday made up, Sunday; Tuesday 10 March a holiday.
    thursday = datetime(2026, 3, 5, 6, 0, tzinfo=UTC)
    phases = policy.deadlines.deadlines(T.REQUEST_TYPE_FREEZE, STANDARD, thursday).phases
    assert phases[-1].due_at.ToDatetime(tzinfo=UTC) == datetime(2026, 3, 8, 6, 0, tzinfo=UTC)


def test_eu_example_data_requests_follow_2023_977(eu: SlaPolicy) -> None:
    assert eu.jurisdiction == "EU"
    assert execute(eu, T.REQUEST_TYPE_DATA_REQUEST, GREEN) == 8 * H
    assert execute(eu, T.REQUEST_TYPE_ASSISTANCE, GREEN) == 3 * D
    assert execute(eu, T.REQUEST_TYPE_DATA_REQUEST, STANDARD) == 7 * D
    assert execute(eu, T.REQUEST_TYPE_ASSISTANCE, STANDARD) == 7 * D
    assert execute(eu, T.REQUEST_TYPE_FREEZE, STANDARD) == 3 * D
    stop = eu.hold_rule(T.REQUEST_TYPE_STOP_PAYMENT)
    assert stop is not None
    assert stop.max_extensions == 1
    assert stop.convertible_to_freeze
    freeze = eu.hold_rule(T.REQUEST_TYPE_FREEZE)
    assert freeze is not None
    assert freeze.max_extensions is None
    # The table the broker notarizes from is built from the policy's holds.
    deadlines = eu.deadlines.deadlines(T.REQUEST_TYPE_STOP_PAYMENT, GREEN, RECEIVED)
    assert deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) == RECEIVED + 5 * D


def test_both_policies_cover_every_type_and_priority(cn: SlaPolicy, eu: SlaPolicy) -> None:
    for policy in (cn, eu):
        for request_type in ALL_TYPES:
            for priority in (GREEN, STANDARD):
                policy.deadlines.budgets(request_type, priority)


# -- scaling ------------------------------------------------------------------------------------


def test_scaled_multiplies_every_duration(cn: SlaPolicy) -> None:
    fast = cn.scaled(0.001)
    assert fast.deadlines.budgets(T.REQUEST_TYPE_STOP_PAYMENT, GREEN).deliver == timedelta(milliseconds=30)
    assert fast.deadlines.hold_validity(T.REQUEST_TYPE_FREEZE) == 183 * D * 0.001
    assert fast.deadlines.hold_validity(T.REQUEST_TYPE_EXTEND) == 24 * H * 0.001
    stop = fast.hold_rule(T.REQUEST_TYPE_STOP_PAYMENT)
    assert stop == HoldRule(
        validity=48 * H * 0.001, extension=24 * H * 0.001, max_extensions=2, convertible_to_freeze=True
    )
    assert fast.escalation == cn.escalation
    assert fast.jurisdiction == "CN"
    # The original is untouched.
    assert cn.deadlines.budgets(T.REQUEST_TYPE_STOP_PAYMENT, GREEN).deliver == 30 * S


@pytest.mark.parametrize("factor", [0.0, -1.0, float("nan")])
def test_scaled_needs_a_positive_factor(cn: SlaPolicy, factor: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        cn.scaled(factor)


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30s", 30 * S), ("2m", 2 * M), ("8h", 8 * H), ("3d", 3 * D), ("183d", 183 * D), ("90m", 90 * M)],
)
def test_parse_duration(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "0s", "-1h", "+1h", "1.5h", "1 h", " 8h", "8H", "8", "h", "1h30m", "08h", "1w", "99999d"]
)
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (30 * S, "30s"),
        (2 * M, "2m"),
        (90 * M, "90m"),
        (8 * H, "8h"),
        (3 * D, "3d"),
        (timedelta(0, 0, 1500), "0.0015s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text


# -- the objects check themselves ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3wd", WorkingDays(count=3)), ("1wd", WorkingDays(count=1)), ("3d", 3 * D), ("30s", 30 * S)],
)
def test_parse_phase(text: str, expected: timedelta | WorkingDays) -> None:
    assert parse_phase(text) == expected


@pytest.mark.parametrize("text", ["0wd", "3 wd", "3WD", "3w", "wd", "1.5wd", "-3wd", "99999wd"])
def test_parse_phase_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_phase(text)


def test_hold_rule_and_ladder_checks() -> None:
    with pytest.raises(ValueError, match="positive"):
        HoldRule(validity=timedelta(0), extension=H, max_extensions=1)
    with pytest.raises(ValueError, match="max_extensions"):
        HoldRule(validity=H, extension=H, max_extensions=-1)
    with pytest.raises(ValueError, match="breach_at"):
        EscalationLadder(reminder_at=0.5, breach_at=0.9)
    with pytest.raises(ValueError, match="reminder_at"):
        EscalationLadder(reminder_at=1.0)


# -- bad files ----------------------------------------------------------------------------------

HEADER = '[sla]\nversion = 1\njurisdiction = "CN"\n'
ESCALATION = "[escalation]\nreminder_at = 0.5\n"
HOLDS = '[hold.stop_payment]\nvalidity = "48h"\nmax_extensions = 2\n\n[hold.freeze]\nvalidity = "183d"\n'
EVERYTHING = (
    '[[deadline]]\ntypes = ["stop_payment", "freeze", "release", "extend", "number_block",\n'
    '  "account_block", "data_request", "assistance", "warning", "return_funds", "appeal", "follow_up",\n'
    '  "linkage_notice", "dissuasion", "fraud_report"]\n'
)
GREEN_ALL = EVERYTHING + 'priority = "green"\ndeliver = "30s"\nacknowledge = "2m"\nexecute = "10m"\n'
STANDARD_ALL = EVERYTHING + 'priority = "standard"\ndeliver = "1h"\nacknowledge = "8h"\nexecute = "3d"\n'
GOOD = f"{HEADER}\n{ESCALATION}\n{HOLDS}\n{GREEN_ALL}\n{STANDARD_ALL}"


def deadline(types: str = '["stop_payment"]', priority: str = '"green"', **phases: str) -> str:
    values = {"deliver": '"30s"', "acknowledge": '"2m"', "execute": '"10m"'} | phases
    body = "\n".join(f"{name} = {value}" for name, value in values.items() if value)
    return f"[[deadline]]\ntypes = {types}\npriority = {priority}\n{body}\n"


def location(categories: str = '["location"]', types: str = '["data_request"]', **phases: str) -> str:
    return deadline(types=types, categories=categories, **phases)


def test_the_minimal_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(GOOD, encoding="utf-8")
    policy = load_sla_policy(path)
    assert policy.escalation.notify_supervisor
    assert policy.escalation.breach_at == 1.0
    stop = policy.hold_rule(T.REQUEST_TYPE_STOP_PAYMENT)
    assert stop == HoldRule(validity=48 * H, extension=48 * H, max_extensions=2)  # extension = validity
    freeze = policy.hold_rule(T.REQUEST_TYPE_FREEZE)
    assert freeze is not None
    assert freeze.max_extensions is None


BROKEN = [
    # (file text, field, words in the message)
    (GOOD + "\n[extra]\n", "extra", "unknown field"),
    (GOOD.replace("version = 1", "version = 2"), "sla.version", "unsupported version 2"),
    (GOOD.replace("version = 1", "version = true"), "sla.version", "expected an integer"),
    (GOOD.replace("version = 1\n", ""), "sla.version", "missing required field"),
    (GOOD.replace('jurisdiction = "CN"', 'jurisdiction = "china"'), "sla.jurisdiction", "not a jurisdiction"),
    (GOOD.replace('jurisdiction = "CN"', "jurisdiction = 86"), "sla.jurisdiction", "expected a string"),
    (GOOD.replace(HEADER, ""), "sla", "missing required table [sla]"),
    (GOOD.replace(ESCALATION, ""), "escalation", "missing required table"),
    (GOOD.replace("reminder_at = 0.5", "reminder_at = 1.5"), "escalation.reminder_at", "below breach_at"),
    (GOOD.replace("reminder_at = 0.5", "reminder_at = 0"), "escalation.reminder_at", "above 0"),
    (GOOD.replace("reminder_at = 0.5", 'reminder_at = "half"'), "escalation.reminder_at", "a number"),
    (GOOD.replace("reminder_at = 0.5", "reminder_at = true"), "escalation.reminder_at", "a number"),
    (GOOD.replace("reminder_at = 0.5", "reminder_at = 0.5\nbreach_at = 0.9"), "escalation.breach_at", "1.0"),
    (
        GOOD.replace("reminder_at = 0.5", "reminder_at = 0.5\nnotify_duty = true"),
        "escalation.notify_duty",
        "unknown",
    ),
    (
        GOOD.replace("reminder_at = 0.5", 'reminder_at = 0.5\nnotify_supervisor = "yes"'),
        "escalation.notify_supervisor",
        "true or false",
    ),
    (
        GOOD.replace('validity = "48h"', 'validity = "48 hours"'),
        "hold.stop_payment.validity",
        "not a duration",
    ),
    (GOOD.replace('validity = "48h"', 'validity = "-48h"'), "hold.stop_payment.validity", "not a duration"),
    (GOOD.replace('validity = "48h"', 'validity = "0h"'), "hold.stop_payment.validity", "not a duration"),
    (GOOD.replace('validity = "48h"', "validity = 48"), "hold.stop_payment.validity", "duration string"),
    (GOOD.replace('validity = "48h"\n', ""), "hold.stop_payment.validity", "missing required field"),
    (
        GOOD.replace("max_extensions = 2", "max_extensions = -2"),
        "hold.stop_payment.max_extensions",
        "-1 for no",
    ),
    (
        GOOD.replace("max_extensions = 2", "max_extensions = 2.0"),
        "hold.stop_payment.max_extensions",
        "integer",
    ),
    (GOOD.replace("max_extensions = 2", "max_extension = 2"), "hold.stop_payment.max_extension", "unknown"),
    (
        GOOD.replace('validity = "183d"', 'validity = "183d"\nconvertible_to_freeze = true'),
        "hold.freeze.convertible_to_freeze",
        "unknown field",
    ),
    (GOOD.replace('[hold.freeze]\nvalidity = "183d"\n', ""), "hold.freeze", "missing required table"),
    (GOOD + '\n[hold.number_block]\nvalidity = "1d"\n', "hold.number_block", "unknown field"),
    (GOOD.replace(GREEN_ALL, ""), "deadline", "no deadline for stop_payment at green"),
    (GOOD.replace(GREEN_ALL, "").replace(STANDARD_ALL, ""), "deadline", "missing required [[deadline]]"),
    (GOOD.replace('execute = "10m"', 'execute = "10 minutes"'), "deadline[0].execute", "not a duration"),
    (GOOD.replace('execute = "10m"', 'execute = "1s"'), "deadline[0].execute", "shorter than acknowledge"),
    (GOOD.replace('acknowledge = "2m"', 'acknowledge = "10s"'), "deadline[0].acknowledge", "shorter than"),
    (GOOD.replace('execute = "10m"\n', ""), "deadline[0].execute", "missing required field"),
    (GOOD.replace('priority = "green"', 'priority = "urgent"'), "deadline[0].priority", "unknown priority"),
    (GOOD.replace('priority = "green"', 'priority = "GREEN"'), "deadline[0].priority", "unknown priority"),
    (
        GOOD.replace('"fraud_report"]\npriority = "standard"', '"fraud_reprt"]\npriority = "standard"'),
        "deadline[1].types[14]",
        "unknown request type 'fraud_reprt'",
    ),
    (
        GOOD.replace('["stop_payment", "freeze"', '["stop_payment", "stop_payment"', 1),
        "deadline[0].types[1]",
        "listed twice",
    ),
    (GOOD + "\n" + deadline(), "deadline[2].types[0]", "already covered by deadline[0]"),
    (GOOD + "\n" + location() + "\n" + location(), "deadline[3].types[0]", "for category location"),
    (GOOD + "\n" + location('["place"]'), "deadline[2].categories[0]", "unknown data category 'place'"),
    (GOOD + "\n" + location('["LOCATION"]'), "deadline[2].categories[0]", "unknown data category"),
    (GOOD + "\n" + location("[]"), "deadline[2].categories", "must not be empty"),
    (GOOD + "\n" + location('"location"'), "deadline[2].categories", "array of data category names"),
    (GOOD + "\n" + location('["location", "location"]'), "deadline[2].categories[1]", "listed twice"),
    (
        GOOD + "\n" + location(types='["data_request", "freeze"]'),
        "deadline[2].types[1]",
        "freeze has no data category",
    ),
    (
        GOOD.replace(GREEN_ALL, GREEN_ALL.replace('"data_request", ', "") + "\n" + location()),
        "deadline",
        "no deadline for data_request at green",
    ),
    (GOOD + "\n" + deadline(types="[]"), "deadline[2].types", "must not be empty"),
    (GOOD + "\n" + deadline(types='"freeze"'), "deadline[2].types", "expected an array"),
    (GOOD + "\n" + deadline(types="[1]"), "deadline[2].types[0]", "expected a string"),
    (GOOD + "\n" + deadline(deliver='"30s"\nexpire = "1d"'), "deadline[2].expire", "unknown field"),
    (
        f"{HEADER}\n{ESCALATION}\n{HOLDS}\n" + GREEN_ALL.replace("[[deadline]]", "[deadline]"),
        "deadline",
        "array of tables",
    ),
    (GOOD.replace('execute = "3d"', 'execute = "3 wd"'), "deadline[1].execute", "wd for working days"),
    (GOOD.replace('validity = "48h"', 'validity = "2wd"'), "hold.stop_payment.validity", "not a duration"),
    (
        GOOD.replace('acknowledge = "8h"', 'acknowledge = "1wd"'),
        "deadline[1].execute",
        "fixed duration after acknowledge in working days",
    ),
    (
        GOOD.replace('execute = "3d"', 'execute = "1wd"').replace('acknowledge = "8h"', 'acknowledge = "2d"'),
        "deadline[1].execute",
        "shorter than acknowledge",
    ),
    (GOOD + '\n[calendar]\ntime_zone = "Mars/Olympus_Mons"\n', "calendar.time_zone", "unknown time zone"),
    (GOOD + "\n[calendar]\ntime_zone = 8\n", "calendar.time_zone", "expected a string"),
    (GOOD + '\n[calendar]\ntime_zone = ""\n', "calendar.time_zone", "unknown time zone"),
    (GOOD + '\n[calendar]\ntime_zone = "../etc/passwd"\n', "calendar.time_zone", "unknown time zone"),
    (GOOD + '\n[calendar]\nweekend = ["caturday"]\n', "calendar.weekend[0]", "unknown day 'caturday'"),
    (GOOD + '\n[calendar]\nweekend = ["sunday", "sunday"]\n', "calendar.weekend[1]", "listed twice"),
    (
        GOOD + '\n[calendar]\nweekend = ["monday", "tuesday", "wednesday", "thursday", "friday", '
        '"saturday", "sunday"]\n',
        "calendar.weekend",
        "no working day",
    ),
    (GOOD + '\n[calendar]\nholidays = ["2026-13-01"]\n', "calendar.holidays[0]", "not a date"),
    (GOOD + '\n[calendar]\nholidays = ["2026-10-01", "1 Oct 2026"]\n', "calendar.holidays[1]", "YYYY-MM-DD"),
    (GOOD + "\n[calendar]\nholidays = [2026-10-01]\n", "calendar.holidays[0]", "expected a string"),
    (GOOD + '\n[calendar]\nholidays = "2026-10-01"\n', "calendar.holidays", "array of ISO dates"),
    (
        GOOD + '\n[calendar]\nholidays = ["2026-10-01", "2026-10-01"]\n',
        "calendar.holidays[1]",
        "listed twice",
    ),
    (
        GOOD + '\n[calendar]\nmake_up_days = ["2026-10-09"]\n',
        "calendar.make_up_days[0]",
        "is a friday, not a weekend day",
    ),
    (
        GOOD + '\n[calendar]\nholidays = ["2026-10-03"]\nmake_up_days = ["2026-10-03"]\n',
        "calendar.make_up_days[0]",
        "also listed in holidays",
    ),
    (GOOD + '\n[calendar]\nholiday = ["2026-10-01"]\n', "calendar.holiday", "unknown field"),
    ('calendar = "cn"\n' + GOOD, "calendar", "expected a table"),
]


@pytest.mark.parametrize(
    ("text", "field", "words"), BROKEN, ids=[f"{i}-{b[1]}" for i, b in enumerate(BROKEN)]
)
def test_bad_policy_file(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as caught:
        load_sla_policy(path)
    assert caught.value.file == str(path)
    assert caught.value.field == field, str(caught.value)
    assert words in str(caught.value)
    assert str(path) in str(caught.value)
    assert repr(field) in str(caught.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(PolicyError, match="cannot read") as caught:
        load_sla_policy(missing)
    assert (caught.value.file, caught.value.field) == (str(missing), None)
    garbage = tmp_path / "garbage.toml"
    garbage.write_text("[sla\nversion = ", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid TOML") as caught:
        load_sla_policy(garbage)
    assert caught.value.file == str(garbage)


def test_a_missing_pair_is_named(tmp_path: Path) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(
        GOOD.replace(
            '"dissuasion", "fraud_report"]\npriority = "standard"', '"dissuasion"]\npriority = "standard"'
        )
    )
    with pytest.raises(PolicyError, match="no deadline for fraud_report at standard") as caught:
        load_sla_policy(path)
    assert caught.value.field == "deadline"


# -- deadlines narrowed to a data category ------------------------------------------------------

LOCATION = requests_pb2.DATA_CATEGORY_LOCATION
DATA = T.REQUEST_TYPE_DATA_REQUEST


@pytest.mark.parametrize("name", ["cn", "eu"])
def test_shipped_location_deadlines_are_minutes(name: str, request: pytest.FixtureRequest) -> None:
    policy: SlaPolicy = request.getfixturevalue(name)
    located = policy.deadlines.budgets(DATA, GREEN, LOCATION)
    assert (located.deliver, located.acknowledge, located.execute) == (30 * S, 2 * M, 15 * M)
    assert policy.deadlines.budgets(DATA, STANDARD, LOCATION).execute == 4 * H
    # Every other category, and no category at all, keeps the data request's own deadline.
    for category in requests_pb2.DataCategory.values():
        if category != LOCATION:
            assert policy.deadlines.budgets(DATA, GREEN, category).execute == 8 * H
            assert policy.deadlines.budgets(DATA, STANDARD, category) == policy.deadlines.budgets(
                DATA, STANDARD
            )


def test_a_narrowed_entry_covers_only_its_categories(tmp_path: Path) -> None:
    path = tmp_path / "sla.toml"
    path.write_text(GOOD + "\n" + location('["location", "login_ips"]', execute='"5m"'), encoding="utf-8")
    deadlines = load_sla_policy(path).deadlines
    assert deadlines.budgets(DATA, GREEN, LOCATION).execute == 5 * M
    assert deadlines.budgets(DATA, GREEN, requests_pb2.DATA_CATEGORY_LOGIN_IPS).execute == 5 * M
    assert deadlines.budgets(DATA, GREEN, requests_pb2.DATA_CATEGORY_SUBSCRIBER).execute == 10 * M
    assert deadlines.budgets(DATA, STANDARD, LOCATION).execute == 3 * D
    # Scaling keeps the narrowing.
    assert deadlines.scaled(0.5).budgets(DATA, GREEN, LOCATION).execute == 150 * S
    due = deadlines.deadlines(DATA, GREEN, RECEIVED, category=LOCATION).phases[-1].due_at
    assert due.ToDatetime(tzinfo=UTC) == RECEIVED + 5 * M
