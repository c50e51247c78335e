"""Hostile configuration files: each is refused with an error naming the file and the field, and
nothing is created or started.

Three loaders read what an operator writes: the agency directory (and its key overlays), the
authorization policy and the SLA policy; the key files of the state directory are read by the
provisioning code. Each case writes one broken file into an empty directory, runs the loader, and
asserts the exact error type, the file and field it names, what the message says, that the message
is one line, and that the directory holds nothing but the file the case wrote.

A few cases then go through the real command line (``greenchannel broker`` in a subprocess, with
``GREENCHANNEL_NATS_URL`` pointing at a nats-server of this module): exit status 1, one clear line
on stderr, no traceback, no state directory, and no stream or bucket on the nats-server.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub import PolicyError, load_policy, load_sla_policy
from broker.protocol import (
    KeyFileError,
    ManualClock,
    NatsSettings,
    RegistryError,
    UnknownAgencyError,
    b64url_encode,
    connect,
    ensure_agency_keys,
    generate_signing_key,
    jwk_thumbprint,
    load_agency_signing_key,
    load_directory,
    load_signing_key,
    read_overlay,
)

pytestmark = pytest.mark.integration

CLI_TIMEOUT = 60.0

# -- valid baselines, edited by each case -------------------------------------------------------

DIRECTORY = """\
[directory]
version = 1
jurisdiction = "CN"

[[agency]]
id = "police-310115"
kind = "police"
name = "Pudong anti-fraud centre"
region = "310115"
police_regions = ["310115"]
duty_contact = "duty-desk@police-310115"

[[agency]]
id = "bank-icbc"
kind = "bank"
name = "ICBC"
region = "110102"
bank_prefixes = ["622202"]
duty_contact = "duty-desk@bank-icbc"
"""

_RAW = generate_signing_key().raw_public
X = b64url_encode(_RAW)
KID = jwk_thumbprint(_RAW)
KEY = f"""
[[agency.key]]
kid = "{KID}"
x = "{X}"
use = "sig"
"""
_PRIVATE_PEM = (
    ed25519.Ed25519PrivateKey.generate()
    .private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    .decode()
)

POLICY = """\
[policy]
version = 1

[[rule]]
senders = ["police"]
types = ["stop_payment"]
recipients = ["bank"]

[chase]
max_depth = 8
"""

_ALL_TYPES = (
    '"stop_payment", "freeze", "release", "extend", "number_block", "account_block", '
    '"data_request", "assistance", "warning", "return_funds", "appeal", "follow_up", "linkage_notice", '
    '"dissuasion", "fraud_report"'
)
SLA = f"""\
[sla]
version = 1
jurisdiction = "CN"

[escalation]
reminder_at = 0.5

[hold.stop_payment]
validity = "48h"
extension = "24h"
max_extensions = 2
convertible_to_freeze = true

[hold.freeze]
validity = "183d"
max_extensions = -1

[[deadline]]
types = [{_ALL_TYPES}]
priority = "green"
deliver = "30s"
acknowledge = "2m"
execute = "10m"

[[deadline]]
types = [{_ALL_TYPES}]
priority = "standard"
deliver = "1h"
acknowledge = "8h"
execute = "3d"
"""


def edit(base: str, old: str, new: str) -> str:
    assert old in base, old
    return base.replace(old, new, 1)


@dataclass(frozen=True)
class FileCase:
    name: str
    loader: str
    """``directory``, ``overlay``, ``policy``, ``sla`` or ``key``."""
    content: str | bytes | None
    """What the file holds; None: the file does not exist."""
    error: type[Exception]
    field: str | None
    """The field path the error names (None: the file as a whole)."""
    says: str
    """A fragment of the message."""


LOADERS: dict[str, Callable[[Path], object]] = {
    "directory": load_directory,
    "overlay": read_overlay,
    "policy": load_policy,
    "sla": load_sla_policy,
    "key": load_signing_key,
}


def _case(
    name: str, loader: str, content: str | bytes | None, error: type[Exception], field: str | None, says: str
) -> FileCase:
    return FileCase(name, loader, content, error, field, says)


def _directory(name: str, content: str | bytes | None, field: str | None, says: str) -> FileCase:
    return _case(name, "directory", content, RegistryError, field, says)


def _policy(name: str, content: str | bytes | None, field: str | None, says: str) -> FileCase:
    return _case(name, "policy", content, PolicyError, field, says)


def _sla(name: str, content: str | bytes | None, field: str | None, says: str) -> FileCase:
    return _case(name, "sla", content, PolicyError, field, says)


_SECOND_BANK = """
[[agency]]
id = "bank-ccb"
kind = "bank"
name = "CCB"
region = "110102"
bank_prefixes = ["622202"]
duty_contact = "duty-desk@bank-ccb"
"""

DIRECTORY_CASES = [
    _directory(
        "malformed_toml", edit(DIRECTORY, 'region = "310115"', "region = 310115 310115"), None, "line 9"
    ),
    _directory("empty_file", "", "directory", "missing required table [directory]"),
    _directory("missing_file", None, None, "cannot read file"),
    _directory("not_utf8", DIRECTORY.encode() + b"# \xff\xfe\n", None, "not UTF-8"),
    _directory(
        "unsupported_version",
        edit(DIRECTORY, "version = 1", "version = 2"),
        "directory.version",
        "unsupported version 2",
    ),
    _directory(
        "version_as_bool",
        edit(DIRECTORY, "version = 1", "version = true"),
        "directory.version",
        "expected an integer, got a boolean",
    ),
    _directory("unknown_top_level_table", DIRECTORY + "\n[routing]\nbanks = 1\n", "routing", "unknown field"),
    _directory(
        "unknown_agency_key",
        edit(DIRECTORY, 'bank_prefixes = ["622202"]', 'bank_prefix = ["622202"]'),
        "agency[1].bank_prefix",
        "unknown field",
    ),
    _directory(
        "region_wrong_type",
        edit(DIRECTORY, 'region = "310115"', "region = 310115"),
        "agency[0].region",
        "expected a string, got an integer",
    ),
    _directory(
        "duplicate_agency_id",
        edit(DIRECTORY + _SECOND_BANK, 'id = "bank-ccb"', 'id = "bank-icbc"').replace(
            'bank_prefixes = ["622202"]\nduty_contact = "duty-desk@bank-ccb"',
            'bank_prefixes = ["621700"]\nduty_contact = "duty-desk@bank-ccb"',
        ),
        "agency[2].id",
        "duplicate agency id 'bank-icbc'",
    ),
    _directory(
        "agency_id_with_wildcard",
        edit(DIRECTORY, 'id = "bank-icbc"', 'id = "bank.>"'),
        "agency[1].id",
        "one NATS subject token",
    ),
    _directory(
        "agency_id_upper_case",
        edit(DIRECTORY, 'id = "bank-icbc"', 'id = "BANK"'),
        "agency[1].id",
        "one NATS subject token",
    ),
    _directory(
        "agency_id_is_the_broker",
        edit(DIRECTORY, 'id = "bank-icbc"', 'id = "greenchannel-broker"'),
        "agency[1].id",
        "reserved for the broker",
    ),
    _directory(
        "unknown_kind",
        edit(DIRECTORY, 'kind = "bank"', 'kind = "insurer"'),
        "agency[1].kind",
        "must be one of",
    ),
    _directory(
        "region_five_digits",
        edit(DIRECTORY, 'region = "310115"', 'region = "31011"'),
        "agency[0].region",
        "exactly 6 digits",
    ),
    _directory(
        "key_wrong_length",
        DIRECTORY + KEY.replace(X, b64url_encode(_RAW[:31])),
        "agency[1].key[0].x",
        "32-byte public key",
    ),
    _directory(
        "key_not_base64", DIRECTORY + KEY.replace(X, "!" * 43), "agency[1].key[0].x", "32-byte public key"
    ),
    _directory(
        "private_key_pem_as_public_key",
        DIRECTORY + KEY.replace(X, _PRIVATE_PEM.replace("\n", "\\n")),
        "agency[1].key[0].x",
        "32-byte public key",
    ),
    _directory(
        "kid_not_the_thumbprint",
        DIRECTORY + KEY.replace(KID, "A" * 43),
        "agency[1].key[0].kid",
        "RFC 7638 thumbprint",
    ),
    _directory(
        "key_use_unknown",
        DIRECTORY + KEY.replace('use = "sig"', 'use = "both"'),
        "agency[1].key[0].use",
        "'sig' (Ed25519) or 'enc'",
    ),
    _directory(
        "naive_key_validity",
        DIRECTORY + KEY + "not_before = 2026-01-01T00:00:00\n",
        "agency[1].key[0].not_before",
        "naive date-time",
    ),
    _directory(
        "routing_prefix_not_digits",
        edit(DIRECTORY, '["622202"]', '["6222O2"]'),
        "agency[1].bank_prefixes[0]",
        "2 to 19 digits",
    ),
    _directory(
        "routing_prefix_on_the_wrong_kind",
        edit(
            DIRECTORY,
            'police_regions = ["310115"]',
            'police_regions = ["310115"]\nbank_prefixes = ["622202"]',
        ),
        "agency[0].bank_prefixes",
        "only agencies of kind 'bank'",
    ),
    _directory(
        "routing_prefix_routed_twice",
        DIRECTORY + _SECOND_BANK,
        "agency[2].bank_prefixes[0]",
        "already routed to 'bank-icbc'",
    ),
    _directory(
        "unknown_supervisor",
        edit(
            DIRECTORY,
            'duty_contact = "duty-desk@bank-icbc"',
            'duty_contact = "duty-desk@bank-icbc"\nsupervisor = "regulator-pboc"',
        ),
        "agency[1].supervisor",
        "unknown supervisor",
    ),
    _case(
        "overlay_key_for_unknown_agency",
        "overlay",
        f'[[key]]\nagency = "bank.>"\nkid = "{KID}"\nx = "{X}"\nuse = "sig"\n',
        RegistryError,
        "key[0].agency",
        "must be an agency id",
    ),
]

POLICY_CASES = [
    _policy(
        "malformed_toml", edit(POLICY, 'senders = ["police"]', 'senders = ["police"'), None, "not valid TOML"
    ),
    _policy("empty_file", "", "policy", "missing required table [policy]"),
    _policy("no_rules", "[policy]\nversion = 1\n", "rule", "no [[rule]] tables"),
    _policy("missing_file", None, None, "cannot read the policy file"),
    _policy("unknown_section", POLICY + "\n[rules]\nallow_all = true\n", "rules", "unknown field"),
    _policy(
        "unknown_kind",
        edit(POLICY, 'recipients = ["bank"]', 'recipients = ["bankk"]'),
        "rule[0].recipients[0]",
        "unknown agency kind 'bankk'",
    ),
    _policy(
        "unknown_type",
        edit(POLICY, 'types = ["stop_payment"]', 'types = ["stop-payment"]'),
        "rule[0].types[0]",
        "unknown request type 'stop-payment'",
    ),
    _policy(
        "regulator_as_sender",
        edit(POLICY, 'senders = ["police"]', 'senders = ["regulator"]'),
        "rule[0].senders[0]",
        "regulators read, never submit",
    ),
    _policy(
        "senders_wrong_type",
        edit(POLICY, 'senders = ["police"]', 'senders = "police"'),
        "rule[0].senders",
        "expected an array of strings, got a string",
    ),
    _policy(
        "negative_chase_depth",
        edit(POLICY, "max_depth = 8", "max_depth = -1"),
        "chase.max_depth",
        "between 0 and 64",
    ),
    _policy(
        "zero_chase_accounts", POLICY + "max_accounts = 0\n", "chase.max_accounts", "between 1 and 100000"
    ),
    _policy(
        "chase_depth_as_float",
        edit(POLICY, "max_depth = 8", "max_depth = 8.0"),
        "chase.max_depth",
        "expected an integer, got a float",
    ),
    _policy(
        "min_amount_as_float",
        POLICY + "[chase.min_amount]\nCNY = 1000.0\n",
        "chase.min_amount.CNY",
        "decimal string",
    ),
    _policy(
        "min_amount_negative",
        POLICY + '[chase.min_amount]\nCNY = "-5"\n',
        "chase.min_amount.CNY",
        "not a decimal amount",
    ),
]

SLA_CASES = [
    _sla(
        "negative_duration",
        edit(SLA, 'deliver = "30s"', 'deliver = "-30s"'),
        "deadline[0].deliver",
        "not a duration",
    ),
    _sla(
        "zero_duration",
        edit(SLA, 'deliver = "30s"', 'deliver = "0s"'),
        "deadline[0].deliver",
        "not a duration",
    ),
    _sla(
        "absurd_duration",
        edit(SLA, 'validity = "183d"', 'validity = "999999999d"'),
        "hold.freeze.validity",
        "longer than the longest allowed",
    ),
    _sla(
        "fractional_duration",
        edit(SLA, 'execute = "10m"', 'execute = "1.5m"'),
        "deadline[0].execute",
        "not a duration",
    ),
    _sla(
        "duration_as_number",
        edit(SLA, 'execute = "10m"', "execute = 600"),
        "deadline[0].execute",
        "expected a duration string",
    ),
    _sla(
        "missing_reminder_rung",
        edit(SLA, "reminder_at = 0.5\n", ""),
        "escalation.reminder_at",
        "missing required field",
    ),
    _sla(
        "reminder_after_breach",
        edit(SLA, "reminder_at = 0.5", "reminder_at = 1.5"),
        "escalation.reminder_at",
        "below breach_at",
    ),
    _sla(
        "breach_before_the_deadline",
        edit(SLA, "reminder_at = 0.5", "reminder_at = 0.5\nbreach_at = 0.9"),
        "escalation.breach_at",
        "must be 1.0",
    ),
    _sla(
        "reminder_nan",
        edit(SLA, "reminder_at = 0.5", "reminder_at = nan"),
        "escalation.reminder_at",
        "expected a number between 0 and 1",
    ),
    _sla(
        "missing_hold_rule",
        edit(SLA, '[hold.freeze]\nvalidity = "183d"\nmax_extensions = -1\n', ""),
        "hold.freeze",
        "missing required table",
    ),
    _sla(
        "negative_extensions",
        edit(SLA, "max_extensions = 2", "max_extensions = -2"),
        "hold.stop_payment.max_extensions",
        "must be 0 or more",
    ),
    _sla(
        "unknown_request_type",
        edit(SLA, '"fraud_report"]\npriority = "green"', '"fraud_report", "refund"]\npriority = "green"'),
        "deadline[0].types[15]",
        "unknown request type 'refund'",
    ),
    _sla(
        "execute_before_acknowledge",
        edit(SLA, 'execute = "10m"', 'execute = "10s"'),
        "deadline[0].execute",
        "shorter than acknowledge",
    ),
    _sla(
        "type_without_deadline",
        edit(SLA, '"fraud_report"]\npriority = "standard"', ']\npriority = "standard"').replace(
            '"appeal", ]', '"appeal"]'
        ),
        "deadline",
        "no deadline for fraud_report at standard",
    ),
    _sla(
        "unknown_priority",
        edit(SLA, 'priority = "green"', 'priority = "urgent"'),
        "deadline[0].priority",
        "unknown priority 'urgent'",
    ),
    _sla("unknown_section", SLA + "\n[sla_overrides]\nbank = 1\n", "sla_overrides", "unknown field"),
]

KEY_CASES = [
    _case("key_file_missing", "key", None, KeyFileError, None, "cannot read key file"),
    _case(
        "key_file_corrupt", "key", _PRIVATE_PEM[:60], KeyFileError, None, "not an unencrypted PEM private key"
    ),
    _case("key_file_empty", "key", "", KeyFileError, None, "not an unencrypted PEM private key"),
    _case(
        "key_file_public_key",
        "key",
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        KeyFileError,
        None,
        "not an unencrypted PEM private key",
    ),
    _case(
        "key_file_x25519_for_signing",
        "key",
        x25519.X25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        KeyFileError,
        None,
        "expected an Ed25519 key",
    ),
]

CASES = DIRECTORY_CASES + POLICY_CASES + SLA_CASES + KEY_CASES


@pytest.mark.parametrize("case", [pytest.param(c, id=f"{c.loader}-{c.name}") for c in CASES])
def test_hostile_file_is_refused_naming_file_and_field(case: FileCase, tmp_path: Path) -> None:
    path = tmp_path / f"{case.loader}.toml"
    if isinstance(case.content, str):
        path.write_text(case.content, encoding="utf-8")
    elif isinstance(case.content, bytes):
        path.write_bytes(case.content)
    before = sorted(tmp_path.rglob("*"))

    with pytest.raises(case.error) as caught:
        LOADERS[case.loader](path)

    error = caught.value
    message = str(error)
    assert case.says in message, message
    assert str(path) in message, message
    assert "\n" not in message, message
    if isinstance(error, RegistryError | PolicyError):
        assert error.file == str(path)
        assert error.field == case.field, message
    assert sorted(tmp_path.rglob("*")) == before  # nothing created next to the file


def test_the_baselines_load(tmp_path: Path) -> None:
    """Every case above is one edit away from a file that loads."""
    for name, text in (("directory", DIRECTORY + KEY), ("policy", POLICY), ("sla", SLA)):
        path = tmp_path / f"{name}.toml"
        path.write_text(text, encoding="utf-8")
        LOADERS[name](path)


def test_a_corrupt_key_in_the_state_directory_is_named(tmp_path: Path) -> None:
    """A provisioned key file overwritten with garbage: the loader names the file, not a traceback."""
    directory = tmp_path / "directory.toml"
    directory.write_text(DIRECTORY, encoding="utf-8")
    state = tmp_path / "state"
    ensure_agency_keys(directory, state, agencies=["bank-icbc"], clock=_clock(), broker=False)
    load_agency_signing_key(state, "bank-icbc")
    for pem in (state / "keys" / "bank-icbc").glob("*.pem"):
        pem.write_bytes(pem.read_bytes()[:40])
    with pytest.raises(KeyFileError) as caught:
        load_agency_signing_key(state, "bank-icbc")
    assert str(state / "keys" / "bank-icbc") in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_state_directory_key_for_an_id_that_is_not_a_token_is_refused(tmp_path: Path) -> None:
    """``bank.>`` would be a path component and a NATS wildcard: refused before any file is read."""
    with pytest.raises(UnknownAgencyError, match="invalid agency id"):
        load_agency_signing_key(tmp_path, "../bank-icbc")
    with pytest.raises(UnknownAgencyError, match="invalid agency id"):
        load_agency_signing_key(tmp_path, "bank.>")
    assert list(tmp_path.iterdir()) == []


def _clock() -> ManualClock:
    return ManualClock(datetime(2026, 11, 21, tzinfo=UTC))


# -- through the command line -------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def nats_url(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """A nats-server of this module alone, so "no stream was created" means this module's CLI runs."""
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path_factory.mktemp("files-nats"))) as server:
        yield server.url


async def _streams(url: str) -> list[str]:
    nc = await connect(NatsSettings(servers=(url,), name="hostile-files", initial_connect_timeout=5.0))
    try:
        return sorted(info.config.name or "" for info in await nc.jetstream().streams_info())
    finally:
        await nc.drain()


@dataclass(frozen=True)
class CliCase:
    name: str
    option: str
    """``--directory`` (a top-level option), ``--policy`` or ``--sla-policy``."""
    content: str
    says: str


CLI_CASES = [
    CliCase(
        "bad_directory", "--directory", edit(DIRECTORY, 'id = "bank-icbc"', 'id = "bank.>"'), "agency[1].id"
    ),
    CliCase(
        "bad_policy",
        "--policy",
        edit(POLICY, 'recipients = ["bank"]', 'recipients = ["bankk"]'),
        "rule[0].recipients[0]",
    ),
    CliCase("bad_policy_toml", "--policy", "[policy\nversion = 1\n", "not valid TOML"),
    CliCase(
        "bad_sla_policy",
        "--sla-policy",
        edit(SLA, "reminder_at = 0.5", "reminder_at = 1.5"),
        "escalation.reminder_at",
    ),
    CliCase(
        "absurd_sla_duration",
        "--sla-policy",
        edit(SLA, 'deliver = "30s"', 'deliver = "-1s"'),
        "deadline[0].deliver",
    ),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CLI_CASES])
async def test_broker_command_refuses_a_hostile_file_and_starts_nothing(
    case: CliCase, nats_url: str, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(case.content, encoding="utf-8")
    state = tmp_path / "state"
    top = ["--directory", str(bad)] if case.option == "--directory" else []
    serve = [case.option, str(bad)] if case.option != "--directory" else []
    argv = [
        sys.executable,
        "-m",
        "broker.cli",
        "--state-dir",
        str(state),
        *top,
        "broker",
        "--listen",
        "127.0.0.1:0",
        *serve,
    ]
    env = {**os.environ, "GREENCHANNEL_NATS_URL": nats_url}
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, env=env, timeout=CLI_TIMEOUT, check=False
    )
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("greenchannel: "), lines[0]
    assert str(bad) in lines[0], lines[0]
    assert case.says in lines[0], lines[0]
    assert done.stdout == ""  # never announced itself as listening
    assert not state.exists()  # no keys generated, no embedded NATS store
    assert await _streams(nats_url) == []  # nothing created on the nats-server
