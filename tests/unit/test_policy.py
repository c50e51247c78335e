"""Authorization policy: the sample policy's allowed and forbidden pairs, reading, and bad files."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TypeAlias

import pytest
from greenchannel.v1 import common_pb2, results_pb2

from broker.hub import PermissionDeniedError, PolicyError
from broker.hub._policy import (
    DEFAULT_NUMBER_BLOCK,
    DEFAULT_RELEASE,
    DEFAULT_WARNING,
    NumberBlockPolicy,
    Policy,
    PolicyRule,
    ReleasePolicy,
    WarningPolicy,
    load_policy,
)
from broker.protocol import AgencyKind, Registry, load_directory, request_type_slug

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_POLICY = ROOT / "agencies" / "policy.toml"
SAMPLE_DIRECTORY = ROOT / "agencies" / "directory.toml"

T = common_pb2
RequestType: TypeAlias = common_pb2.RequestType.ValueType
ALL_TYPES = [value for value in common_pb2.RequestType.values() if value != T.REQUEST_TYPE_UNSPECIFIED]

# The sample policy, written out independently of the file: (sender kind, type, recipient kind).
ALLOWED = {
    *((AgencyKind.POLICE, t, AgencyKind.BANK) for t in ("stop_payment", "freeze", "release", "extend")),
    (AgencyKind.POLICE, "data_request", AgencyKind.BANK),
    *((AgencyKind.POLICE, t, AgencyKind.CARRIER) for t in ("number_block", "warning", "data_request")),
    *((AgencyKind.POLICE, t, AgencyKind.PLATFORM) for t in ("account_block", "warning", "data_request")),
    (AgencyKind.POLICE, "assistance", AgencyKind.POLICE),
    *(
        (kind, "fraud_report", AgencyKind.POLICE)
        for kind in (AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM)
    ),
    (AgencyKind.POLICE, "return_funds", AgencyKind.BANK),
    *(
        (kind, "appeal", AgencyKind.POLICE)
        for kind in (AgencyKind.BANK, AgencyKind.CARRIER, AgencyKind.PLATFORM)
    ),
}

# One sender and one (different) recipient per kind, from the sample directory.
SENDER = {
    AgencyKind.POLICE: "police-310115",
    AgencyKind.BANK: "bank-icbc",
    AgencyKind.CARRIER: "carrier-cmcc",
    AgencyKind.PLATFORM: "platform-wechat",
    AgencyKind.REGULATOR: "regulator-pboc",
}
RECIPIENT = {
    AgencyKind.POLICE: "police-440305",
    AgencyKind.BANK: "bank-ccb",
    AgencyKind.CARRIER: "carrier-cucc",
    AgencyKind.PLATFORM: "platform-alipay",
    AgencyKind.REGULATOR: "regulator-mps",
}


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_directory(SAMPLE_DIRECTORY)


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(SAMPLE_POLICY)


def case_of(owner: str) -> common_pb2.CaseRef:
    return common_pb2.CaseRef(
        case_number="SH-2026-0001",
        issuing_agency=owner,
        legal_instrument_id="NOTICE-1",
        legal_instrument_type=T.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
    )


def submit(
    policy: Policy, registry: Registry, sender: str, request_type: RequestType, recipient: str
) -> None:
    policy.authorize_submit(
        sender=registry.get(sender),
        request_type=request_type,
        recipient=registry.get(recipient),
        case_ref=case_of(sender),
    )


# -- the sample policy ----------------------------------------------------------------------------


def test_sample_policy_loads(policy: Policy) -> None:
    assert len(policy.rules) == 7
    assert all(rule.description for rule in policy.rules)
    assert all(rule.recipient_regions == () for rule in policy.rules)


@pytest.mark.parametrize(
    ("sender_kind", "request_type", "recipient_kind"),
    [
        pytest.param(s, t, r, id=f"{s}-{request_type_slug(t)}-{r}")
        for s, t, r in itertools.product(AgencyKind, ALL_TYPES, AgencyKind)
    ],
)
def test_every_kind_type_kind_combination(
    policy: Policy,
    registry: Registry,
    sender_kind: AgencyKind,
    request_type: RequestType,
    recipient_kind: AgencyKind,
) -> None:
    sender, recipient = SENDER[sender_kind], RECIPIENT[recipient_kind]
    if (sender_kind, request_type_slug(request_type), recipient_kind) in ALLOWED:
        submit(policy, registry, sender, request_type, recipient)
        return
    expected = "READ_ONLY" if sender_kind is AgencyKind.REGULATOR else "TYPE_NOT_ALLOWED"
    with pytest.raises(PermissionDeniedError) as info:
        submit(policy, registry, sender, request_type, recipient)
    assert info.value.reason == expected


def test_allowed_set_is_exactly_the_brief() -> None:
    assert len(ALLOWED) == 5 + 3 + 3 + 1 + 3 + 1 + 3


@pytest.mark.parametrize(
    ("sender", "request_type", "recipient", "case_owner", "reason", "words"),
    [
        pytest.param(
            "regulator-pboc",
            T.REQUEST_TYPE_FREEZE,
            "bank-icbc",
            "regulator-pboc",
            "READ_ONLY",
            ["regulator", "never submit"],
            id="regulator-submits",
        ),
        pytest.param(
            "regulator-mps",
            T.REQUEST_TYPE_ASSISTANCE,
            "police-310115",
            "police-310115",
            "READ_ONLY",
            ["regulator"],
            id="regulator-under-police-case",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_FREEZE,
            "bank-icbc",
            "police-440305",
            "NOT_CASE_OWNER",
            ["police-440305", "police-310115"],
            id="police-under-other-police-case",
        ),
        pytest.param(
            "bank-icbc",
            T.REQUEST_TYPE_FRAUD_REPORT,
            "police-310115",
            "police-310115",
            "NOT_CASE_OWNER",
            ["issuing_agency"],
            id="bank-reports-under-police-case",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_ASSISTANCE,
            "police-310115",
            "police-310115",
            "SELF_ADDRESSED",
            ["itself", "assistance"],
            id="police-asks-itself",
        ),
        pytest.param(
            "bank-icbc",
            T.REQUEST_TYPE_FREEZE,
            "bank-ccb",
            "bank-icbc",
            "TYPE_NOT_ALLOWED",
            ["bank agencies", "freeze", "fraud_report to police"],
            id="bank-orders-freeze",
        ),
        pytest.param(
            "bank-icbc",
            T.REQUEST_TYPE_STOP_PAYMENT,
            "bank-ccb",
            "bank-icbc",
            "TYPE_NOT_ALLOWED",
            ["stop_payment"],
            id="bank-orders-stop-payment",
        ),
        pytest.param(
            "carrier-cmcc",
            T.REQUEST_TYPE_FRAUD_REPORT,
            "carrier-cucc",
            "carrier-cmcc",
            "TYPE_NOT_ALLOWED",
            ["carrier agencies", "fraud_report", "to carrier agencies"],
            id="carrier-to-carrier",
        ),
        pytest.param(
            "carrier-cmcc",
            T.REQUEST_TYPE_NUMBER_BLOCK,
            "carrier-cucc",
            "carrier-cmcc",
            "TYPE_NOT_ALLOWED",
            ["number_block"],
            id="carrier-blocks-at-carrier",
        ),
        pytest.param(
            "platform-wechat",
            T.REQUEST_TYPE_ACCOUNT_BLOCK,
            "platform-alipay",
            "platform-wechat",
            "TYPE_NOT_ALLOWED",
            ["account_block"],
            id="platform-to-platform",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_FREEZE,
            "carrier-cmcc",
            "police-310115",
            "TYPE_NOT_ALLOWED",
            ["freeze", "carrier"],
            id="police-freeze-at-carrier",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_NUMBER_BLOCK,
            "bank-icbc",
            "police-310115",
            "TYPE_NOT_ALLOWED",
            ["number_block", "bank"],
            id="police-number-block-at-bank",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_FRAUD_REPORT,
            "police-440305",
            "police-310115",
            "TYPE_NOT_ALLOWED",
            ["fraud_report"],
            id="police-fraud-report-to-police",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_DATA_REQUEST,
            "regulator-pboc",
            "police-310115",
            "TYPE_NOT_ALLOWED",
            ["regulator"],
            id="police-data-request-to-regulator",
        ),
        pytest.param(
            "police-310115",
            T.REQUEST_TYPE_UNSPECIFIED,
            "bank-icbc",
            "police-310115",
            "TYPE_NOT_ALLOWED",
            ["unspecified"],
            id="unspecified-type",
        ),
    ],
)
def test_forbidden(
    policy: Policy,
    registry: Registry,
    sender: str,
    request_type: RequestType,
    recipient: str,
    case_owner: str,
    reason: str,
    words: list[str],
) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        policy.authorize_submit(
            sender=registry.get(sender),
            request_type=request_type,
            recipient=registry.get(recipient),
            case_ref=case_of(case_owner),
        )
    assert info.value.reason == reason
    for word in words:
        assert word in str(info.value)


def test_region_restricted_rule(registry: Registry) -> None:
    policy = Policy(
        [
            PolicyRule(
                senders=frozenset({AgencyKind.POLICE}),
                types=frozenset({T.REQUEST_TYPE_ASSISTANCE}),
                recipients=frozenset({AgencyKind.POLICE}),
                recipient_regions=("31",),
            ),
            PolicyRule(
                senders=frozenset({AgencyKind.POLICE}),
                types=frozenset({T.REQUEST_TYPE_ASSISTANCE}),
                recipients=frozenset({AgencyKind.POLICE}),
                recipient_regions=("440305",),
            ),
        ]
    )
    submit(policy, registry, "police-440305", T.REQUEST_TYPE_ASSISTANCE, "police-310000")
    submit(policy, registry, "police-310115", T.REQUEST_TYPE_ASSISTANCE, "police-440305")
    with pytest.raises(PermissionDeniedError) as info:
        submit(policy, registry, "police-310115", T.REQUEST_TYPE_ASSISTANCE, "police-440300")
    assert info.value.reason == "REGION_NOT_ALLOWED"
    assert "31, 440305" in str(info.value)
    assert "440300" in str(info.value)


def test_policy_rule_checks_itself() -> None:
    police, bank = frozenset({AgencyKind.POLICE}), frozenset({AgencyKind.BANK})
    freeze = frozenset({T.REQUEST_TYPE_FREEZE})
    with pytest.raises(ValueError, match="regulators"):
        PolicyRule(senders=frozenset({AgencyKind.REGULATOR}), types=freeze, recipients=bank)
    with pytest.raises(ValueError, match="at least one"):
        PolicyRule(senders=police, types=frozenset(), recipients=bank)
    with pytest.raises(ValueError, match="UNSPECIFIED"):
        PolicyRule(senders=police, types=frozenset({T.REQUEST_TYPE_UNSPECIFIED}), recipients=bank)
    with pytest.raises(ValueError, match="prefix"):
        PolicyRule(senders=police, types=freeze, recipients=bank, recipient_regions=("3",))


def test_empty_policy_denies_everything(registry: Registry) -> None:
    with pytest.raises(PermissionDeniedError) as info:
        submit(Policy([]), registry, "police-310115", T.REQUEST_TYPE_FREEZE, "bank-icbc")
    assert info.value.reason == "TYPE_NOT_ALLOWED"
    assert "may send: nothing" in str(info.value)


# -- reading and watching -------------------------------------------------------------------------

READ_SENDER, READ_RECIPIENT, READ_OWNER = "police-310115", "bank-icbc", "police-310115"


@pytest.mark.parametrize(
    ("caller", "can_read"),
    [
        ("police-310115", True),  # sender and case owner
        ("bank-icbc", True),  # recipient
        ("regulator-pboc", True),
        ("regulator-cac", True),  # every regulator, not only the recipient's supervisor
        ("bank-ccb", False),  # another bank
        ("police-310000", False),  # the owner's supervisor is not the owner
        ("police-440305", False),
        ("carrier-cmcc", False),
        ("platform-wechat", False),
    ],
)
def test_can_read(policy: Policy, registry: Registry, caller: str, can_read: bool) -> None:
    agency = registry.get(caller)
    assert (
        policy.can_read(agency, sender=READ_SENDER, recipient=READ_RECIPIENT, case_owner=READ_OWNER)
        is can_read
    )


def test_case_owner_reads_a_child_request_it_did_not_send(policy: Policy, registry: Registry) -> None:
    # A request chased by the broker for police-310115's case, sent in another agency's name.
    owner = registry.get("police-310115")
    assert policy.can_read(owner, sender="police-440305", recipient="bank-cmb", case_owner="police-310115")
    assert not policy.can_read(
        owner, sender="police-440305", recipient="bank-cmb", case_owner="police-440305"
    )


@pytest.mark.parametrize(
    ("caller", "allowed"),
    [
        ("police-310115", True),
        ("regulator-mps", True),
        ("regulator-miit", True),
        ("police-440305", False),
        ("bank-icbc", False),
        ("carrier-cmcc", False),
    ],
)
def test_can_watch_case(policy: Policy, registry: Registry, caller: str, allowed: bool) -> None:
    assert policy.can_watch_case(registry.get(caller), "police-310115") is allowed


# -- bad policy files ------------------------------------------------------------------------------

GOOD_RULE = """
[[rule]]
senders = ["police"]
types = ["freeze"]
recipients = ["bank"]
"""
HEADER = "[policy]\nversion = 1\n"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        pytest.param(HEADER + GOOD_RULE + "[extra]\n", "extra", "unknown field", id="unknown-table"),
        pytest.param(
            "[policy]\nversion = 1\nverison = 2\n" + GOOD_RULE,
            "policy.verison",
            "unknown field",
            id="unknown-header-field",
        ),
        pytest.param(GOOD_RULE, "policy", "missing required table", id="no-header"),
        pytest.param("policy = 1\n" + GOOD_RULE, "policy", "expected a table", id="header-not-table"),
        pytest.param("[policy]\n" + GOOD_RULE, "policy.version", "missing", id="no-version"),
        pytest.param("[policy]\nversion = 2\n" + GOOD_RULE, "policy.version", "unsupported", id="version-2"),
        pytest.param(
            "[policy]\nversion = true\n" + GOOD_RULE, "policy.version", "an integer", id="version-bool"
        ),
        pytest.param(
            "[policy]\nversion = 1\ndescription = 3\n" + GOOD_RULE,
            "policy.description",
            "a string",
            id="description-not-string",
        ),
        pytest.param(HEADER, "rule", "no [[rule]]", id="no-rules"),
        pytest.param("rule = []\n" + HEADER, "rule", "no [[rule]]", id="empty-rules"),
        pytest.param("rule = 1\n" + HEADER, "rule", "array of tables", id="rule-not-tables"),
        pytest.param(
            HEADER + GOOD_RULE + GOOD_RULE.replace("senders", "sender"),
            "rule[1].sender",
            "unknown field",
            id="typo-sender",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('senders = ["police"]\n', ""),
            "rule[0].senders",
            "missing",
            id="missing-senders",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('recipients = ["bank"]\n', ""),
            "rule[0].recipients",
            "missing",
            id="missing-recipients",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', '["freeze", "frezee"]'),
            "rule[0].types[1]",
            "unknown request type 'frezee'",
            id="unknown-type",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', '["REQUEST_TYPE_FREEZE"]'),
            "rule[0].types[0]",
            "unknown request type",
            id="proto-spelling-type",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', '["unspecified"]'),
            "rule[0].types[0]",
            "unknown request type",
            id="unspecified-type",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["bank"]', '["bank", "banks"]'),
            "rule[0].recipients[1]",
            "unknown agency kind 'banks'",
            id="unknown-kind",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["police"]', '["regulator"]'),
            "rule[0].senders[0]",
            "never submit",
            id="regulator-sender",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', "[]"),
            "rule[0].types",
            "must not be empty",
            id="empty-types",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', '"freeze"'),
            "rule[0].types",
            "expected an array of strings, got a string",
            id="types-not-array",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["police"]', '["police", 1]'),
            "rule[0].senders[1]",
            "got an integer",
            id="sender-not-string",
        ),
        pytest.param(
            HEADER + GOOD_RULE.replace('["freeze"]', '["freeze", "freeze"]'),
            "rule[0].types[1]",
            "listed twice",
            id="duplicate-type",
        ),
        pytest.param(
            HEADER + GOOD_RULE + "recipient_regions = []\n",
            "rule[0].recipient_regions",
            "omit the field",
            id="empty-regions",
        ),
        pytest.param(
            HEADER + GOOD_RULE + 'recipient_regions = ["31", "3"]\n',
            "rule[0].recipient_regions[1]",
            "GB/T 2260",
            id="short-region",
        ),
        pytest.param(
            HEADER + GOOD_RULE + 'recipient_regions = ["shanghai"]\n',
            "rule[0].recipient_regions[0]",
            "GB/T 2260",
            id="region-not-digits",
        ),
        pytest.param(
            HEADER + GOOD_RULE + "recipient_regions = 31\n",
            "rule[0].recipient_regions",
            "an array",
            id="region-not-array",
        ),
        pytest.param(
            HEADER + GOOD_RULE + 'description = ["x"]\n',
            "rule[0].description",
            "a string",
            id="rule-description-not-string",
        ),
        pytest.param(
            HEADER + GOOD_RULE + GOOD_RULE + GOOD_RULE + GOOD_RULE.replace('["freeze"]', '["freeze", 7]'),
            "rule[3].types[1]",
            "got an integer",
            id="fourth-rule",
        ),
    ],
)
def test_bad_policy_file(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.file == str(path)
    assert info.value.field == field
    assert info.value.reason == "INVALID_POLICY"
    assert words in str(info.value)
    assert str(path) in str(info.value)


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(PolicyError) as info:
        load_policy(missing)
    assert info.value.file == str(missing)
    assert info.value.field is None

    broken = tmp_path / "broken.toml"
    broken.write_text("[policy\nversion = 1\n", encoding="utf-8")
    with pytest.raises(PolicyError, match="not valid TOML") as info:
        load_policy(broken)
    assert info.value.file == str(broken)


def test_loaded_rules_match_the_file(tmp_path: Path, registry: Registry) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE + 'recipient_regions = ["11"]\ndescription = "Beijing banks"\n')
    policy = load_policy(path)
    (rule,) = policy.rules
    assert rule == PolicyRule(
        senders=frozenset({AgencyKind.POLICE}),
        types=frozenset({T.REQUEST_TYPE_FREEZE}),
        recipients=frozenset({AgencyKind.BANK}),
        recipient_regions=("11",),
        description="Beijing banks",
    )
    submit(policy, registry, "police-310115", T.REQUEST_TYPE_FREEZE, "bank-icbc")  # region 110102
    with pytest.raises(PermissionDeniedError) as info:
        submit(policy, registry, "police-310115", T.REQUEST_TYPE_FREEZE, "bank-cmb")  # region 440304
    assert info.value.reason == "REGION_NOT_ALLOWED"


# -- [release.living_expenses] ----------------------------------------------------------------------


def test_sample_policy_caps_living_expenses(policy: Policy) -> None:
    release = policy.release
    assert release.living_expenses_caps == {"CNY": 500_000}
    # At most CNY 5000 and half of what the hold held.
    assert release.living_expenses_cap("CNY", 2_000_000) == 500_000
    assert release.living_expenses_cap("CNY", 600_000) == 300_000
    assert release.living_expenses_cap("USD", 2_000_000) == 0


def test_release_table_read_and_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE, encoding="utf-8")
    assert load_policy(path).release == DEFAULT_RELEASE
    path.write_text(
        HEADER + GOOD_RULE + '[release.living_expenses]\n[release.living_expenses.cap]\nEUR = "300.50"\n',
        encoding="utf-8",
    )
    release = load_policy(path).release
    assert release == ReleasePolicy(living_expenses_caps={"EUR": 30_050})
    assert release.living_expenses_cap("EUR", 1) == 30_050  # no share: the cap alone


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        pytest.param("[release]\nother = 1\n", "release.other", "other", id="unknown-field"),
        pytest.param(
            '[release.living_expenses]\nshare = "1.5"\n', "release.living_expenses.share", "between 0 and 1"
        ),
        pytest.param(
            "[release.living_expenses.cap]\nCNY = 5000.0\n",
            "release.living_expenses.cap.CNY",
            "decimal string",
            id="float-cap",
        ),
        pytest.param(
            '[release.living_expenses.cap]\ncny = "5000.00"\n',
            "release.living_expenses.cap.cny",
            "ISO 4217",
            id="lowercase-currency",
        ),
    ],
)
def test_bad_release_table(tmp_path: Path, text: str, field: str, words: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE + text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.field == field
    assert words in str(info.value)


# -- appeals: the one case reference that is not the sender's -------------------------------------


def test_an_appeal_is_filed_under_the_verified_restrictions_case(policy: Policy, registry: Registry) -> None:
    police_case = case_of("police-310115")
    appeal = {
        "sender": registry.get("bank-icbc"),
        "request_type": T.REQUEST_TYPE_APPEAL,
        "recipient": registry.get("police-310115"),
        "case_ref": police_case,
    }
    # Only once intake verified the restriction (it passes the restriction's case)...
    policy.authorize_submit(**appeal, appealed_case=police_case)  # type: ignore[arg-type]
    with pytest.raises(PermissionDeniedError) as info:
        policy.authorize_submit(**appeal)  # type: ignore[arg-type]
    assert info.value.reason == "NOT_CASE_OWNER"
    # ...under exactly that case...
    other = common_pb2.CaseRef()
    other.CopyFrom(police_case)
    other.case_number = "SH-2026-0002"
    with pytest.raises(PermissionDeniedError) as info:
        policy.authorize_submit(**appeal, appealed_case=other)  # type: ignore[arg-type]
    assert info.value.reason == "NOT_CASE_OWNER"
    # ...and only for appeals.
    with pytest.raises(PermissionDeniedError) as info:
        policy.authorize_submit(
            sender=registry.get("bank-icbc"),
            request_type=T.REQUEST_TYPE_FRAUD_REPORT,
            recipient=registry.get("police-310115"),
            case_ref=police_case,
            appealed_case=police_case,
        )
    assert info.value.reason == "NOT_CASE_OWNER"


# -- [number_block] ---------------------------------------------------------------------------------


def test_sample_policy_bounds_batches(policy: Policy) -> None:
    assert policy.number_block.max_items == 10_000


def test_number_block_table_read_and_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE, encoding="utf-8")
    assert load_policy(path).number_block == DEFAULT_NUMBER_BLOCK
    path.write_text(HEADER + GOOD_RULE + "[number_block]\nmax_items = 500\n", encoding="utf-8")
    assert load_policy(path).number_block == NumberBlockPolicy(max_items=500)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param("[number_block]\nmax_items = 10001\n", "number_block.max_items", id="over-contract"),
        pytest.param("[number_block]\nmax_items = 0\n", "number_block.max_items", id="zero"),
        pytest.param('[number_block]\nmax_items = "9"\n', "number_block.max_items", id="string"),
        pytest.param("[number_block]\nother = 1\n", "number_block.other", id="unknown-field"),
    ],
)
def test_bad_number_block_table(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE + text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.field == field


# -- [warning] --------------------------------------------------------------------------------------

W = results_pb2


def test_sample_policy_escalates_unreachable_and_continuing_warnings(policy: Policy) -> None:
    assert policy.warning.escalate_on == {W.WARNING_OUTCOME_UNREACHABLE, W.WARNING_OUTCOME_CONTINUING}
    assert not policy.warning.escalates(W.WARNING_OUTCOME_DISSUADED)
    assert policy.warning.priority == common_pb2.PRIORITY_GREEN


def test_warning_table_read_and_defaulted(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE, encoding="utf-8")
    assert load_policy(path).warning == DEFAULT_WARNING
    path.write_text(
        HEADER + GOOD_RULE + '[warning]\nescalate_on = ["unreachable"]\npriority = "standard"\n',
        encoding="utf-8",
    )
    assert load_policy(path).warning == WarningPolicy(
        escalate_on=frozenset({W.WARNING_OUTCOME_UNREACHABLE}), priority=common_pb2.PRIORITY_STANDARD
    )
    path.write_text(HEADER + GOOD_RULE + "[warning]\nescalate_on = []\n", encoding="utf-8")
    assert not load_policy(path).warning.escalates(W.WARNING_OUTCOME_UNREACHABLE)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param('[warning]\nescalate_on = ["dissuaded"]\n', "warning.escalate_on[0]", id="dissuaded"),
        pytest.param('[warning]\nescalate_on = ["unreachble"]\n', "warning.escalate_on[0]", id="typo"),
        pytest.param(
            '[warning]\nescalate_on = ["continuing", "continuing"]\n', "warning.escalate_on[1]", id="twice"
        ),
        pytest.param('[warning]\nescalate_on = "unreachable"\n', "warning.escalate_on", id="not-a-list"),
        pytest.param('[warning]\npriority = "urgent"\n', "warning.priority", id="priority"),
        pytest.param("[warning]\nother = 1\n", "warning.other", id="unknown-field"),
    ],
)
def test_bad_warning_table(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(HEADER + GOOD_RULE + text, encoding="utf-8")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert info.value.field == field
