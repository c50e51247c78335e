"""The agency directory: loading, routing, and precise errors for every kind of bad file."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from broker.protocol import (
    BROKER_ID,
    Agency,
    AgencyKind,
    KeyUse,
    ManualClock,
    PublicKey,
    Registry,
    RegistryError,
    UnknownAgencyError,
    UnknownKeyError,
    b64url_encode,
    ensure_agency_keys,
    load_directory,
)
from broker.protocol._signing import _find_signing_key

SAMPLE = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    state = tmp_path_factory.mktemp("state")
    overlay = ensure_agency_keys(SAMPLE, state, clock=ManualClock())
    return load_directory(SAMPLE, key_overlays=[overlay])


# -- the sample directory ---------------------------------------------------------------------


def test_sample_loads_without_keys() -> None:
    registry = load_directory(SAMPLE)
    assert len(registry) == 18
    assert registry.jurisdiction == "CN"
    assert all(agency.keys == () for agency in registry.agencies())
    assert registry.broker_keys() == ()


def test_sample_with_overlay_has_keys_for_everyone(sample: Registry) -> None:
    for agency in sample.agencies():
        assert len(agency.signing_keys()) == 1
        assert len(agency.encryption_keys()) == 1
        assert sample.public_keys(agency.id) == agency.keys
        sig = agency.signing_keys()[0]
        assert agency.key(sig.kid) is sig
    # One to notarize, one to receive the result details the broker chases money with.
    assert sorted(key.use for key in sample.broker_keys()) == [KeyUse.ENC, KeyUse.SIG]


def test_kinds_and_supervisors(sample: Registry) -> None:
    counts = {kind: len(sample.agencies(kind=kind)) for kind in AgencyKind}
    assert counts == {
        AgencyKind.POLICE: 4,
        AgencyKind.BANK: 4,
        AgencyKind.CARRIER: 3,
        AgencyKind.PLATFORM: 3,
        AgencyKind.REGULATOR: 4,
    }
    assert sample.get("police-310115").supervisor == "police-310000"
    assert sample.get("police-310000").supervisor == "regulator-mps"
    assert sample.get("bank-cmb").supervisor == "regulator-pboc"
    assert sample.get("carrier-ctcc").supervisor == "regulator-miit"
    assert sample.get("platform-douyin").supervisor == "regulator-cac"
    assert [a.id for a in sample.agencies(kind=AgencyKind.POLICE, region="31")] == [
        "police-310000",
        "police-310115",
    ]


def test_lookups_of_unknown_agency(sample: Registry) -> None:
    with pytest.raises(UnknownAgencyError):
        sample.get("bank-nowhere")
    assert sample.public_keys("bank-nowhere") == ()
    assert "bank-icbc" in sample
    assert "bank-nowhere" not in sample


def test_broker_keys_are_served_under_the_broker_id(sample: Registry) -> None:
    assert sample.broker_keys()
    assert sample.public_keys(BROKER_ID) == sample.broker_keys()


def test_a_broker_encryption_key_loads_but_never_verifies_a_signature(tmp_path: Path) -> None:
    directory = tmp_path / "directory.toml"
    directory.write_text(BASE + f'\n[[broker_key]]\nkid = "{K3.kid}"\nx = "{X3}"\nuse = "enc"\n')
    registry = load_directory(directory)
    assert registry.broker_keys() == (K3,)
    assert registry.public_keys(BROKER_ID) == (K3,)
    # A notarization naming the encryption key's kid finds it, and is refused for its use.
    with pytest.raises(UnknownKeyError, match="encryption key"):
        _find_signing_key(registry, BROKER_ID, K3.kid, datetime(2026, 6, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("account", "bank"),
    [
        ("6222021234567890123", "bank-icbc"),
        ("6202001234567890", "bank-icbc"),
        ("6217001234567890123", "bank-ccb"),
        ("4367421234567890", "bank-ccb"),
        ("6225881234567890", "bank-cmb"),
        ("6228481234567890123", "bank-abc"),
        ("6222991234567890", None),
        ("622202", "bank-icbc"),
        ("62220", None),
        ("6222 0212 3456", None),
        ("", None),
    ],
)
def test_bank_for_account(sample: Registry, account: str, bank: str | None) -> None:
    found = sample.bank_for_account(account)
    assert (found.id if found else None) == bank


@pytest.mark.parametrize(
    ("number", "carrier"),
    [
        ("+8613912345678", "carrier-cmcc"),
        ("+8613812345678", "carrier-cucc"),  # ported out of a CMCC segment
        ("+8613812345679", "carrier-cmcc"),
        ("+8618612345678", "carrier-cucc"),
        ("+8618912345678", "carrier-ctcc"),
        ("+8617012345678", None),
        ("+14155550100", None),
        ("13912345678", None),
    ],
)
def test_carrier_for_number(sample: Registry, number: str, carrier: str | None) -> None:
    found = sample.carrier_for_number(number)
    assert (found.id if found else None) == carrier


@pytest.mark.parametrize(
    ("code", "platform"),
    [
        ("wechat", "platform-wechat"),
        ("alipay", "platform-alipay"),
        ("douyin", "platform-douyin"),
        ("qq", None),
    ],
)
def test_platform_for_code(sample: Registry, code: str, platform: str | None) -> None:
    found = sample.platform_for_code(code)
    assert (found.id if found else None) == platform


@pytest.mark.parametrize(
    ("region", "police"),
    [
        ("310115", "police-310115"),
        ("310104", "police-310000"),
        ("310000", "police-310000"),
        ("440305", "police-440305"),
        ("440306", "police-440300"),
        ("440100", None),
        ("110101", None),
        ("31", None),
        ("3101150", None),
        ("31011x", None),
    ],
)
def test_police_for_region(sample: Registry, region: str, police: str | None) -> None:
    found = sample.police_for_region(region)
    assert (found.id if found else None) == police


# -- registries built in code -----------------------------------------------------------------


def _bank(agency_id: str, *prefixes: str) -> Agency:
    return Agency(
        id=agency_id,
        kind=AgencyKind.BANK,
        name=agency_id.upper(),
        region="110000",
        duty_contact=f"duty@{agency_id}",
        bank_prefixes=prefixes,
    )


def test_longest_bank_prefix_wins() -> None:
    registry = Registry([_bank("bank-short", "6222"), _bank("bank-long", "622202")])
    assert registry.bank_for_account("6222021111") == registry.get("bank-long")
    assert registry.bank_for_account("6222031111") == registry.get("bank-short")
    assert registry.bank_for_account("6223") is None


def test_code_built_registry_reports_conflicts_by_position() -> None:
    with pytest.raises(RegistryError) as caught:
        Registry([_bank("bank-a", "622202"), _bank("bank-b", "621700", "622202")])
    assert (caught.value.file, caught.value.field) == (None, "agency[1].bank_prefixes[1]")


def test_agency_validates_its_own_fields() -> None:
    with pytest.raises(RegistryError) as caught:
        Agency(id="bank-x", kind=AgencyKind.BANK, name="X", region="1100", duty_contact="duty@bank-x")
    assert caught.value.field == "region"


# -- bad files --------------------------------------------------------------------------------


def _public(seed: int, use: KeyUse) -> PublicKey:
    secret = bytes([seed]) * 32
    if use is KeyUse.SIG:
        raw = ed25519.Ed25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    else:
        raw = x25519.X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes_raw()
    return PublicKey.from_raw(raw, use=use)


K1 = _public(1, KeyUse.SIG)
K2 = _public(2, KeyUse.SIG)
K3 = _public(3, KeyUse.ENC)
X1, X2, X3 = (b64url_encode(k.raw) for k in (K1, K2, K3))

BASE = f"""\
[directory]
version = 1
jurisdiction = "CN"

[[agency]]
id = "police-310000"
kind = "police"
name = "Shanghai Municipal Public Security Bureau"
region = "310000"
police_regions = ["31"]
supervisor = "regulator-mps"
duty_contact = "duty@police-310000"

[[agency.key]]
kid = "{K1.kid}"
x = "{X1}"
use = "sig"
not_before = 2026-01-01T00:00:00Z
not_after = 2027-01-01T00:00:00Z

[[agency]]
id = "regulator-mps"
kind = "regulator"
name = "Ministry of Public Security"
region = "110101"
duty_contact = "duty@regulator-mps"

[[agency]]
id = "bank-icbc"
kind = "bank"
name = "ICBC"
region = "110102"
bank_prefixes = ["622202", "620200"]
duty_contact = "duty@bank-icbc"

[[agency]]
id = "carrier-cmcc"
kind = "carrier"
name = "China Mobile"
region = "110102"
number_segments = ["+86139"]
ported_numbers = ["+8613012345678"]
duty_contact = "duty@carrier-cmcc"
"""

OVERLAY = f"""\
[[key]]
agency = "bank-icbc"
kid = "{K2.kid}"
x = "{X2}"
use = "sig"

[[key]]
agency = "carrier-cmcc"
kid = "{K3.kid}"
x = "{X3}"
use = "enc"
"""


def _agency(agency_id: str, kind: str, routing: str) -> str:
    return (
        f'\n[[agency]]\nid = "{agency_id}"\nkind = "{kind}"\nname = "N"\nregion = "110000"\n'
        f'duty_contact = "duty@{agency_id}"\n{routing}\n'
    )


@dataclass(frozen=True)
class Bad:
    """One broken directory (or overlay) and exactly where the error must point."""

    id: str
    field: str | None
    edits: tuple[tuple[str, str], ...] = ()
    append: str = ""
    overlay_edits: tuple[tuple[str, str], ...] | None = None
    """None: load without the overlay; otherwise load it after these edits."""
    in_overlay: bool = False
    match: str | None = None


def _edit(text: str, edits: tuple[tuple[str, str], ...]) -> str:
    for old, new in edits:
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


BAD = [
    Bad("invalid-toml", None, (('jurisdiction = "CN"', 'jurisdiction = "CN'),), match="invalid TOML.*line 3"),
    Bad("unknown-top-level", "agencies", append='\n[[agencies]]\nid = "x"\n'),
    Bad("missing-directory", "directory", (('[directory]\nversion = 1\njurisdiction = "CN"\n', ""),)),
    Bad("unknown-header-field", "directory.versoin", (("version = 1", "versoin = 1"),)),
    Bad("unsupported-version", "directory.version", (("version = 1", "version = 2"),)),
    Bad("version-wrong-type", "directory.version", (("version = 1", 'version = "1"'),)),
    Bad("bad-jurisdiction", "directory.jurisdiction", (('"CN"', '"cn"'),)),
    Bad("unknown-agency-field", "agency[1].regoin", (('region = "110101"', 'regoin = "110101"'),)),
    Bad("missing-name", "agency[2].name", (('name = "ICBC"\n', ""),), match="missing required"),
    Bad("region-wrong-type", "agency[2].region", (('region = "110102"\nbank', "region = 110102\nbank"),)),
    Bad("prefixes-not-array", "agency[2].bank_prefixes", (('["622202", "620200"]', '"622202"'),)),
    Bad("prefix-not-string", "agency[2].bank_prefixes[1]", (('"620200"]', "620200]"),)),
    Bad("bad-id", "agency[2].id", (('id = "bank-icbc"', 'id = "Bank_ICBC"'),)),
    Bad("reserved-id", "agency[2].id", (('id = "bank-icbc"', f'id = "{BROKER_ID}"'),)),
    Bad("duplicate-id", "agency[3].id", (('id = "carrier-cmcc"', 'id = "bank-icbc"'),), match="duplicate"),
    Bad("bad-kind", "agency[2].kind", (('kind = "bank"', 'kind = "court"'),)),
    Bad("region-five-digits", "agency[0].region", (('region = "310000"', 'region = "31000"'),)),
    Bad("region-fullwidth-digits", "agency[0].region", (('region = "310000"', 'region = "３１００００"'),)),
    Bad("bad-bank-prefix", "agency[2].bank_prefixes[1]", (('"620200"', '"62020a"'),)),
    Bad("repeated-prefix", "agency[2].bank_prefixes[1]", (('"620200"', '"622202"'),), match="twice"),
    Bad("bad-segment", "agency[3].number_segments[0]", (('"+86139"', '"86139"'),)),
    Bad("bad-ported-number", "agency[3].ported_numbers[0]", (('"+8613012345678"', '"+86130"'),)),
    Bad("bad-police-region", "agency[0].police_regions[0]", (('["31"]', '["3"]'),)),
    Bad(
        "routing-on-wrong-kind",
        "agency[0].bank_prefixes",
        (('police_regions = ["31"]', 'police_regions = ["31"]\nbank_prefixes = ["622848"]'),),
    ),
    Bad(
        "ambiguous-bank-prefix",
        "agency[4].bank_prefixes[0]",
        append=_agency("bank-ccb", "bank", 'bank_prefixes = ["622202"]'),
        match="already routed to 'bank-icbc'",
    ),
    Bad(
        "ambiguous-segment",
        "agency[4].number_segments[1]",
        append=_agency("carrier-cucc", "carrier", 'number_segments = ["+86130", "+86139"]'),
    ),
    Bad(
        "ambiguous-ported-number",
        "agency[4].ported_numbers[0]",
        append=_agency("carrier-cucc", "carrier", 'ported_numbers = ["+8613012345678"]'),
    ),
    Bad(
        "ambiguous-police-region",
        "agency[4].police_regions[0]",
        append=_agency("police-310001", "police", 'police_regions = ["31"]'),
    ),
    Bad(
        "ambiguous-platform-code",
        "agency[5].platform_codes[0]",
        append=_agency("platform-a", "platform", 'platform_codes = ["wechat"]')
        + _agency("platform-b", "platform", 'platform_codes = ["wechat"]'),
    ),
    Bad("unknown-supervisor", "agency[0].supervisor", (('"regulator-mps"\n', '"regulator-mpss"\n'),)),
    Bad(
        "supervisor-cycle",
        "agency[0].supervisor",
        (('"duty@regulator-mps"', '"duty@regulator-mps"\nsupervisor = "police-310000"'),),
        match="loops",
    ),
    Bad("personal-duty-contact", "agency[2].duty_contact", (('"duty@bank-icbc"', '"Zhang San"'),)),
    Bad("unknown-key-field", "agency[0].key[0].usage", (('use = "sig"', 'usage = "sig"'),)),
    Bad("missing-kid", "agency[0].key[0].kid", ((f'kid = "{K1.kid}"\n', ""),)),
    Bad("kid-mismatch", "agency[0].key[0].kid", ((f'kid = "{K1.kid}"', f'kid = "{K2.kid}"'),)),
    Bad("kid-of-other-use", "agency[0].key[0].kid", (('use = "sig"', 'use = "enc"'),), match="thumbprint"),
    Bad("bad-use", "agency[0].key[0].use", (('use = "sig"', 'use = "signature"'),)),
    Bad("bad-base64", "agency[0].key[0].x", ((f'x = "{X1}"', f'x = "!!{X1[2:]}"'),)),
    Bad("short-key", "agency[0].key[0].x", ((f'x = "{X1}"', f'x = "{X1[:-2]}"'),)),
    Bad("padded-base64", "agency[0].key[0].x", ((f'x = "{X1}"', f'x = "{X1}="'),)),
    Bad(
        "window-inverted",
        "agency[0].key[0].not_after",
        (("not_after = 2027-01-01T00:00:00Z", "not_after = 2025-01-01T00:00:00Z"),),
    ),
    Bad(
        "window-empty",
        "agency[0].key[0].not_after",
        (("not_after = 2027-01-01T00:00:00Z", "not_after = 2026-01-01T08:00:00+08:00"),),
    ),
    Bad(
        "naive-datetime",
        "agency[0].key[0].not_before",
        (("not_before = 2026-01-01T00:00:00Z", "not_before = 2026-01-01T00:00:00"),),
        match="naive",
    ),
    Bad(
        "date-not-datetime",
        "agency[0].key[0].not_after",
        (("not_after = 2027-01-01T00:00:00Z", "not_after = 2027-01-01"),),
    ),
    Bad(
        "duplicate-kid-in-directory",
        "agency[3].key[0].kid",
        append=f'\n[[agency.key]]\nkid = "{K1.kid}"\nx = "{X1}"\nuse = "sig"\n',
    ),
    Bad(
        "broker-key-shared-with-an-agency",
        "agency[0].key[0].kid",
        append=f'\n[[broker_key]]\nkid = "{K1.kid}"\nx = "{X1}"\nuse = "sig"\n',
        match="duplicate kid",
    ),
    Bad(
        "overlay-unknown-agency",
        "key[1].agency",
        overlay_edits=(('agency = "carrier-cmcc"', 'agency = "carrier-cucc"'),),
        in_overlay=True,
        match="unknown agency 'carrier-cucc'",
    ),
    Bad(
        "overlay-missing-agency",
        "key[0].agency",
        overlay_edits=(('agency = "bank-icbc"\n', ""),),
        in_overlay=True,
    ),
    Bad(
        "overlay-duplicate-kid",
        "key[0].kid",
        overlay_edits=((f'kid = "{K2.kid}"\nx = "{X2}"', f'kid = "{K1.kid}"\nx = "{X1}"'),),
        in_overlay=True,
        match="duplicate kid",
    ),
    Bad(
        "overlay-unknown-top-level",
        "version",
        overlay_edits=(("[[key]]", "version = 1\n[[key]]"),),
        in_overlay=True,
    ),
    Bad("overlay-agency-table", "agency", overlay_edits=(("[[key]]", "[[agency]]"),), in_overlay=True),
    Bad(
        "overlay-naive-revocation",
        "key[1].revoked_at",
        overlay_edits=(('use = "enc"', 'use = "enc"\nrevoked_at = 2026-03-01T12:00:00'),),
        in_overlay=True,
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[case.id for case in BAD])
def test_bad_directory(tmp_path: Path, case: Bad) -> None:
    directory = tmp_path / "directory.toml"
    overlay = tmp_path / "directory-keys.toml"
    directory.write_text(_edit(BASE, case.edits) + case.append, encoding="utf-8")
    overlays = []
    if case.overlay_edits is not None:
        overlay.write_text(_edit(OVERLAY, case.overlay_edits), encoding="utf-8")
        overlays.append(overlay)
    with pytest.raises(RegistryError, match=case.match) as caught:
        load_directory(directory, key_overlays=overlays)
    assert caught.value.file == str(overlay if case.in_overlay else directory)
    assert caught.value.field == case.field


def test_base_of_bad_cases_is_good(tmp_path: Path) -> None:
    directory = tmp_path / "directory.toml"
    overlay = tmp_path / "directory-keys.toml"
    directory.write_text(BASE, encoding="utf-8")
    overlay.write_text(OVERLAY, encoding="utf-8")
    registry = load_directory(directory, key_overlays=[overlay])
    assert registry.public_keys("bank-icbc") == (K2,)
    assert registry.get("carrier-cmcc").encryption_keys() == (K3,)
    key = registry.get("police-310000").key(K1.kid)
    assert key is not None
    assert key.not_after == datetime(2027, 1, 1, tzinfo=UTC)
    assert key.valid_at(datetime(2026, 6, 1, tzinfo=UTC))


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(RegistryError, match="cannot read") as caught:
        load_directory(path)
    assert (caught.value.file, caught.value.field) == (str(path), None)


def test_unreadable_path(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read") as caught:
        load_directory(tmp_path)
    assert (caught.value.file, caught.value.field) == (str(tmp_path), None)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_bytes(BASE.encode("utf-8").replace(b'"ICBC"', b'"\xb9\xa4\xd0\xd0"'))
    with pytest.raises(RegistryError, match="UTF-8") as caught:
        load_directory(path)
    assert (caught.value.file, caught.value.field) == (str(path), None)


def test_missing_overlay(tmp_path: Path) -> None:
    directory = tmp_path / "directory.toml"
    directory.write_text(BASE, encoding="utf-8")
    overlay = tmp_path / "missing-keys.toml"
    with pytest.raises(RegistryError) as caught:
        load_directory(directory, key_overlays=[overlay])
    assert (caught.value.file, caught.value.field) == (str(overlay), None)
