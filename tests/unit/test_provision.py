"""First-run key provisioning, rotation and revocation."""

from __future__ import annotations

import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from broker.protocol import (
    KeyFileError,
    KeyUse,
    ManualClock,
    Registry,
    UnknownAgencyError,
    agency_keys,
    encryption_kid,
    ensure_agency_keys,
    generate_agency_keys,
    jwk_set,
    jwk_thumbprint,
    key_overlay_path,
    load_agency_encryption_key,
    load_agency_encryption_keys,
    load_agency_signing_key,
    load_broker_encryption_key,
    load_broker_signing_key,
    load_directory,
    merge_into_overlay,
    private_key_path,
    public_jwk,
    read_overlay,
    render_key_tables,
    revoke_key,
    rotate_agency_key,
)

SAMPLE = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _private_files(state: Path) -> set[Path]:
    return set((state / "keys").glob("*/*.pem"))


def _registry(state: Path) -> Registry:
    return load_directory(SAMPLE, key_overlays=[key_overlay_path(state)])


@pytest.fixture
def state(tmp_path: Path) -> Path:
    ensure_agency_keys(SAMPLE, tmp_path, clock=ManualClock(T0))
    return tmp_path


def test_first_run_generates_a_key_pair_per_agency_and_for_the_broker(state: Path) -> None:
    registry = _registry(state)
    files = _private_files(state)
    assert len(files) == 2 * len(registry) + 2
    for agency in registry.agencies():
        assert {p.stem for p in (state / "keys" / agency.id).glob("*.pem")} == {k.kid for k in agency.keys}
        assert all(key.not_before == T0 for key in agency.keys)
    assert {p.stem for p in (state / "keys" / "_broker").glob("*.pem")} == {
        k.kid for k in registry.broker_keys()
    }
    # One to notarize, one to receive the result details it chases money with.
    assert sorted(k.use for k in registry.broker_keys()) == [KeyUse.ENC, KeyUse.SIG]


def test_private_key_files_are_owner_only(state: Path) -> None:
    for path in _private_files(state):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0, path.parent


def test_second_run_changes_nothing(state: Path) -> None:
    files = _private_files(state)
    overlay = key_overlay_path(state).read_text(encoding="utf-8")
    returned = ensure_agency_keys(SAMPLE, state, clock=ManualClock(T0 + timedelta(days=1)))
    assert returned == key_overlay_path(state)
    assert _private_files(state) == files
    assert key_overlay_path(state).read_text(encoding="utf-8") == overlay


def test_loaded_private_keys_match_the_registry(state: Path) -> None:
    registry = _registry(state)
    agency = registry.get("bank-icbc")
    signing = load_agency_signing_key(state, "bank-icbc")
    assert agency.key(signing.kid) == signing.public(not_before=T0)
    registry.public_keys("bank-icbc")[0].ed25519().verify(signing.sign(b"freeze"), b"freeze")

    encryption = load_agency_encryption_key(state, "bank-icbc")
    public = x25519.X25519PublicKey.from_public_bytes(agency.encryption_keys()[0].raw)
    peer = x25519.X25519PrivateKey.generate()
    assert encryption.exchange(peer.public_key()) == peer.exchange(public)

    broker = load_broker_signing_key(state)
    assert [k.kid for k in registry.broker_keys() if k.use is KeyUse.SIG] == [broker.kid]
    broker_enc = load_broker_encryption_key(state)
    [broker_public] = [k for k in registry.broker_keys() if k.use is KeyUse.ENC]
    assert encryption_kid(broker_enc) == broker_public.kid


def test_only_the_named_agencies(tmp_path: Path) -> None:
    ensure_agency_keys(SAMPLE, tmp_path, agencies=["bank-icbc"], clock=ManualClock(T0), broker=False)
    registry = _registry(tmp_path)
    assert len(registry.get("bank-icbc").keys) == 2
    assert registry.get("bank-ccb").keys == ()
    assert registry.broker_keys() == ()
    with pytest.raises(KeyFileError):
        load_broker_signing_key(tmp_path)
    with pytest.raises(KeyFileError):
        load_broker_encryption_key(tmp_path)


def test_unknown_agency_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnknownAgencyError):
        ensure_agency_keys(SAMPLE, tmp_path, agencies=["bank-nowhere"], clock=ManualClock(T0))
    with pytest.raises(UnknownAgencyError):
        load_agency_signing_key(tmp_path, "../../etc")


def test_lost_overlay_is_rebuilt_from_private_keys(state: Path) -> None:
    files = _private_files(state)
    kid = load_agency_signing_key(state, "carrier-cmcc").kid
    key_overlay_path(state).unlink()
    ensure_agency_keys(SAMPLE, state, clock=ManualClock(T0))
    assert _private_files(state) == files
    assert load_agency_signing_key(state, "carrier-cmcc").kid == kid


def test_rotation_keeps_the_old_key_for_the_overlap(state: Path) -> None:
    old = load_agency_signing_key(state, "police-310115").kid
    now = T0 + timedelta(days=30)
    new = rotate_agency_key(state, "police-310115", clock=ManualClock(now), overlap=timedelta(hours=2))
    assert new != old

    agency = _registry(state).get("police-310115")
    old_key, new_key = agency.key(old), agency.key(new)
    assert old_key is not None
    assert new_key is not None
    assert old_key.not_after == now + timedelta(hours=2)
    assert new_key.not_before == now
    assert new_key.not_after is None
    assert old_key.valid_at(now + timedelta(hours=1))
    assert new_key.valid_at(now + timedelta(hours=1))
    assert not old_key.valid_at(now + timedelta(hours=2))
    assert len(agency.encryption_keys()) == 1  # rotation is about signing keys only

    assert load_agency_signing_key(state, "police-310115").kid == new
    assert load_agency_signing_key(state, "police-310115", at=now - timedelta(seconds=1)).kid == old
    # The rotated-out key still counts as present, so the next run adds nothing.
    files = _private_files(state)
    ensure_agency_keys(SAMPLE, state, clock=ManualClock(now))
    assert _private_files(state) == files


def test_rotation_needs_a_positive_overlap_and_an_existing_key(state: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="positive"):
        rotate_agency_key(state, "bank-icbc", clock=ManualClock(T0), overlap=timedelta(0))
    with pytest.raises(KeyFileError):
        rotate_agency_key(tmp_path / "empty", "bank-icbc", clock=ManualClock(T0))


def test_revocation_is_recorded_and_never_moves_later(state: Path) -> None:
    kid = load_agency_signing_key(state, "bank-cmb").kid
    at = T0 + timedelta(days=3)
    revoke_key(state, "bank-cmb", kid, at=at)
    revoke_key(state, "bank-cmb", kid, at=at + timedelta(days=1))
    key = _registry(state).get("bank-cmb").key(kid)
    assert key is not None
    assert key.revoked_at == at
    assert not key.valid_at(at)
    assert key.valid_at(at - timedelta(seconds=1))

    with pytest.raises(KeyFileError, match="no usable"):
        load_agency_signing_key(state, "bank-cmb")
    # A revoked key is replaced on the next run; the encryption key is left alone.
    ensure_agency_keys(SAMPLE, state, clock=ManualClock(at + timedelta(hours=1)))
    agency = _registry(state).get("bank-cmb")
    assert len(agency.signing_keys()) == 2
    assert len(agency.encryption_keys()) == 1
    assert load_agency_signing_key(state, "bank-cmb").kid != kid


def test_revocation_errors(state: Path) -> None:
    with pytest.raises(KeyFileError):
        revoke_key(state, "bank-cmb", "no-such-kid", at=T0)
    with pytest.raises(ValueError, match="timezone"):
        revoke_key(state, "bank-cmb", load_agency_signing_key(state, "bank-cmb").kid, at=datetime(2026, 1, 2))


def test_encryption_key_use_is_recorded(state: Path) -> None:
    registry = _registry(state)
    for agency in registry.agencies():
        assert [k.use for k in agency.keys] == [KeyUse.SIG, KeyUse.ENC]


def test_encryption_key_rotation_keeps_the_old_private_key_readable(state: Path) -> None:
    old = load_agency_encryption_key(state, "police-310115")
    now = T0 + timedelta(days=30)
    new_kid = rotate_agency_key(
        state, "police-310115", clock=ManualClock(now), overlap=timedelta(hours=1), use=KeyUse.ENC
    )
    agency = _registry(state).get("police-310115")
    assert [k.kid for k in agency.encryption_keys()] == [encryption_kid(old), new_kid]
    assert len(agency.signing_keys()) == 1  # the signing key is left alone
    # New answers are sealed to the newest key; the old one stays on disk to open old answers.
    assert encryption_kid(load_agency_encryption_key(state, "police-310115")) == new_kid
    assert [encryption_kid(k) for k in load_agency_encryption_keys(state, "police-310115")] == [
        new_kid,
        encryption_kid(old),
    ]
    with pytest.raises(KeyFileError, match="no enc key"):
        load_agency_encryption_keys(state, "regulator-nowhere")


# -- an agency's own keys (greenchannel keys generate) ---------------------------------------------

JOINING = "bank-joining"
JOINING_ENTRY = f"""
[directory]
version = 1
jurisdiction = "CN"

[[agency]]
id = "{JOINING}"
kind = "bank"
name = "Joining Bank"
region = "310115"
duty_contact = "duty@{JOINING}"
"""


def test_an_agency_generates_its_own_keys_without_any_directory(tmp_path: Path) -> None:
    sig, enc = generate_agency_keys(tmp_path, JOINING, clock=ManualClock(T0))
    assert (sig.use, enc.use) == (KeyUse.SIG, KeyUse.ENC)
    assert sig.not_before == enc.not_before == T0
    assert agency_keys(tmp_path, JOINING) == (sig, enc)
    for key in (sig, enc):
        path = private_key_path(tmp_path, JOINING, key.kid)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_agency_signing_key(tmp_path, JOINING).kid == sig.kid


def test_generating_again_is_refused_unless_forced_and_never_replaces_a_file(tmp_path: Path) -> None:
    first = generate_agency_keys(tmp_path, JOINING, clock=ManualClock(T0))
    files = {p: p.read_bytes() for p in _private_files(tmp_path)}
    overlay = key_overlay_path(tmp_path).read_bytes()
    with pytest.raises(KeyFileError, match="already has keys"):
        generate_agency_keys(tmp_path, JOINING, clock=ManualClock(T0 + timedelta(hours=1)))
    assert {p: p.read_bytes() for p in _private_files(tmp_path)} == files
    assert key_overlay_path(tmp_path).read_bytes() == overlay

    second = generate_agency_keys(tmp_path, JOINING, clock=ManualClock(T0 + timedelta(hours=1)), force=True)
    assert agency_keys(tmp_path, JOINING) == (*first, *second)
    assert all(p.read_bytes() == data for p, data in files.items())
    assert load_agency_signing_key(tmp_path, JOINING).kid == second[0].kid  # the newest wins


@pytest.mark.parametrize("agency", ["../x", "Bank", "greenchannel-broker", ""])
def test_generate_refuses_a_bad_agency_id_before_writing(tmp_path: Path, agency: str) -> None:
    with pytest.raises(UnknownAgencyError):
        generate_agency_keys(tmp_path / "out", agency, clock=ManualClock(T0))
    assert not (tmp_path / "out").exists()


def test_rendered_tables_load_as_directory_entries_and_as_an_overlay(tmp_path: Path) -> None:
    keys = generate_agency_keys(tmp_path / "host", JOINING, clock=ManualClock(T0))
    directory = tmp_path / "directory.toml"
    directory.write_text(JOINING_ENTRY + "\n" + render_key_tables(JOINING, keys), encoding="utf-8")
    assert load_directory(directory).get(JOINING).keys == keys

    overlay = tmp_path / "overlay.toml"
    overlay.write_text(render_key_tables(JOINING, keys, overlay=True), encoding="utf-8")
    directory.write_text(JOINING_ENTRY, encoding="utf-8")
    assert load_directory(directory, key_overlays=[overlay]).get(JOINING).keys == keys


def test_merging_into_an_overlay_replaces_by_kid_and_refuses_another_owners_key(tmp_path: Path) -> None:
    sig, enc = generate_agency_keys(tmp_path / "host", JOINING, clock=ManualClock(T0))
    overlay = tmp_path / "operator.toml"
    merge_into_overlay(overlay, JOINING, [sig, enc])
    revoked = replace(sig, revoked_at=T0 + timedelta(days=1))
    merge_into_overlay(overlay, JOINING, [revoked])
    assert [e.key for e in read_overlay(overlay)] == [revoked, enc]
    before = overlay.read_bytes()
    with pytest.raises(KeyFileError, match="belongs to 'bank-joining'"):
        merge_into_overlay(overlay, "bank-other", [enc])
    assert overlay.read_bytes() == before


def test_public_jwk_members_hash_to_the_kid(tmp_path: Path) -> None:
    sig, enc = generate_agency_keys(tmp_path, JOINING, clock=ManualClock(T0))
    assert public_jwk(sig) == {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": public_jwk(sig)["x"],
        "kid": sig.kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    assert public_jwk(enc)["crv"] == "X25519"
    assert "alg" not in public_jwk(enc)
    assert [jwk["kid"] for jwk in jwk_set([sig, enc])["keys"]] == [
        jwk_thumbprint(sig.raw, KeyUse.SIG),
        jwk_thumbprint(enc.raw, KeyUse.ENC),
    ]
