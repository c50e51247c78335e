"""``greenchannel keys generate|rotate|revoke`` as an agency's operator runs them: real processes.

Each case runs ``python -m broker.cli keys ...`` and checks what it leaves on disk (files, modes),
what it prints (directory TOML that the project's own loader accepts, a valid JWK Set whose kids
are the RFC 7638 thumbprints), and, for hostile input, exit status 2, a message naming the
problem, no traceback, and nothing written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from broker.protocol import (
    SystemClock,
    ensure_agency_keys,
    load_agency_encryption_key,
    load_agency_signing_key,
    load_directory,
    read_overlay,
)

pytestmark = pytest.mark.integration

AGENCY = "bank-joining"
ENTRY = f"""
[directory]
version = 1
jurisdiction = "CN"

[[agency]]
id = "{AGENCY}"
kind = "bank"
name = "Joining Rural Commercial Bank"
region = "310115"
bank_prefixes = ["621799"]
duty_contact = "duty-desk@{AGENCY}"
"""


def keys(*argv: str | Path, directory: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENCHANNEL_")}
    top = ["--directory", str(directory)] if directory is not None else []
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", *top, "keys", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def ok(*argv: str | Path, directory: Path | None = None) -> str:
    done = keys(*argv, directory=directory)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    assert "PRIVATE KEY" not in done.stdout
    return done.stdout


def refused(*argv: str | Path, says: str, directory: Path | None = None) -> None:
    done = keys(*argv, directory=directory)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and its bytes: 'nothing written' means this does not change."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def pem_files(out: Path) -> list[Path]:
    return sorted((out / "keys" / AGENCY).glob("*.pem"))


def thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 computed here, independently of the project's code."""
    members = json.dumps({name: jwk[name] for name in ("crv", "kty", "x")}, separators=(",", ":"))
    digest = hashlib.sha256(members.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def raw(b64url: str) -> bytes:
    return base64.urlsafe_b64decode(b64url + "=" * (-len(b64url) % 4))


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "bank-host"


def test_generate_writes_owner_only_keys_and_prints_directory_toml(tmp_path: Path, out: Path) -> None:
    printed = ok("generate", "--agency", AGENCY, "--out", out)
    files = pem_files(out)
    assert len(files) == 2
    for pem in files:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
        assert pem.read_text().startswith("-----BEGIN PRIVATE KEY-----")
        assert str(pem) in printed  # where the adapter's key file is, said once

    # Pasted under the agency's entry, the printed tables load with the project's loader.
    directory = tmp_path / "directory.toml"
    directory.write_text(ENTRY + printed, encoding="utf-8")
    agency = load_directory(directory).get(AGENCY)
    [sig] = agency.signing_keys()
    [enc] = agency.encryption_keys()
    assert {sig.kid, enc.kid} == {pem.stem for pem in files}

    # The key directory is a state directory: the loaders find the private halves of those keys.
    assert load_agency_signing_key(out, AGENCY).kid == sig.kid
    private_enc = load_agency_encryption_key(out, AGENCY)
    public_enc = private_enc.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert public_enc == enc.raw


def test_generate_prints_overlay_tables_json_and_a_valid_jwks(tmp_path: Path) -> None:
    host = tmp_path / "host"
    document = json.loads(ok("generate", "--agency", AGENCY, "--out", host, "--json", "--overlay"))
    assert document["agency"] == AGENCY
    assert document["state_dir"] == str(host)
    assert {k["use"] for k in document["keys"]} == {"sig", "enc"}
    assert all(Path(k["private_key_file"]).is_file() for k in document["keys"])

    # --overlay tables are an overlay file the broker reads with --key-overlay.
    overlay = tmp_path / "operator-keys.toml"
    overlay.write_text(document["toml"], encoding="utf-8")
    directory = tmp_path / "directory.toml"
    directory.write_text(ENTRY, encoding="utf-8")
    registry = load_directory(directory, key_overlays=[overlay])
    assert {k.kid for k in registry.get(AGENCY).keys} == {k["kid"] for k in document["keys"]}

    # RFC 7517 JWK Set, RFC 8037 OKP members, RFC 7638 kids.
    jwks = document["jwks"]
    assert set(jwks) == {"keys"}
    by_use = {jwk["use"]: jwk for jwk in jwks["keys"]}
    assert set(by_use) == {"sig", "enc"}
    for jwk in jwks["keys"]:
        assert jwk["kty"] == "OKP"
        assert jwk["kid"] == thumbprint(jwk)
        assert len(raw(jwk["x"])) == 32
    assert by_use["sig"]["crv"] == "Ed25519"
    assert by_use["enc"]["crv"] == "X25519"
    # An independent JOSE library reads the signing JWK as the Ed25519 key on disk.
    public = jwt.PyJWK(by_use["sig"]).key
    assert isinstance(public, ed25519.Ed25519PublicKey)
    assert (
        public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        == load_agency_signing_key(host, AGENCY).raw_public
    )
    x25519.X25519PublicKey.from_public_bytes(raw(by_use["enc"]["x"]))


def test_generate_jwks_flag_prints_only_the_jwk_set(out: Path) -> None:
    jwks = json.loads(ok("generate", "--agency", AGENCY, "--out", out, "--jwks"))
    assert sorted(jwk["kid"] for jwk in jwks["keys"]) == [pem.stem for pem in pem_files(out)]


def test_rotate_keeps_the_old_key_for_the_overlap_and_writes_the_operator_overlay(
    tmp_path: Path, out: Path
) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    old = load_agency_signing_key(out, AGENCY).kid
    operator = tmp_path / "operator-keys.toml"
    before = datetime.now(UTC)
    document = json.loads(
        ok("rotate", "--agency", AGENCY, "--dir", out, "--overlap", "2h", "--write", operator, "--json")
    )
    after = datetime.now(UTC)
    new = document["new_kid"]
    assert new != old
    assert load_agency_signing_key(out, AGENCY).kid == new  # the newest key signs from now on
    assert stat.S_IMODE((out / "keys" / AGENCY / f"{new}.pem").stat().st_mode) == 0o600

    printed = {k["kid"]: k for k in document["keys"]}
    assert set(printed) == {old, new}  # only what changed: the old key's end, the new key
    ends = datetime.fromisoformat(printed[old]["not_after"])
    assert before + timedelta(hours=2) - timedelta(seconds=1) <= ends <= after + timedelta(hours=2)
    assert printed[new]["not_after"] is None

    entries = {e.key.kid: e for e in read_overlay(operator)}
    assert set(entries) == {old, new}
    assert all(e.agency == AGENCY for e in entries.values())
    assert entries[old].key.not_after == ends
    # The printed [[agency.key]] tables load too (they replace the old entry in the directory).
    directory = tmp_path / "directory.toml"
    directory.write_text(ENTRY + tomllib_safe(document["toml"]), encoding="utf-8")
    assert {k.kid for k in load_directory(directory).get(AGENCY).keys} == {old, new}


def tomllib_safe(text: str) -> str:
    tomllib.loads(text)  # the printed text on its own is valid TOML
    return text


def test_revoke_records_the_instant_in_the_key_dir_and_the_overlay(tmp_path: Path, out: Path) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    kid = load_agency_signing_key(out, AGENCY).kid
    operator = tmp_path / "operator-keys.toml"
    ok("rotate", "--agency", AGENCY, "--dir", out, "--write", operator)
    printed = ok(
        "revoke", "--agency", AGENCY, f"--kid={kid}", "--at", "2026-12-03T09:00:00+08:00",
        "--dir", out, "--write", operator, "--overlay",
    )  # fmt: skip
    [table] = tomllib.loads(printed)["key"]
    assert table["agency"] == AGENCY
    assert table["kid"] == kid
    assert table["revoked_at"] == datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    [entry] = [e for e in read_overlay(operator) if e.key.kid == kid]
    assert entry.key.revoked_at == datetime(2026, 12, 3, 1, 0, tzinfo=UTC)
    [local] = [e for e in read_overlay(out / "keys" / "directory-keys.toml") if e.key.kid == kid]
    assert local.key.revoked_at == entry.key.revoked_at
    # An earlier revocation stands: a later --at does not re-validate what was refused.
    ok("revoke", "--agency", AGENCY, f"--kid={kid}", "--at", "2027-01-01T00:00:00Z", "--write", operator)
    [entry] = [e for e in read_overlay(operator) if e.key.kid == kid]
    assert entry.key.revoked_at == datetime(2026, 12, 3, 1, 0, tzinfo=UTC)


def test_revoking_a_key_the_directory_file_lists_prints_its_table_but_never_writes_an_overlay(
    tmp_path: Path, out: Path
) -> None:
    directory = tmp_path / "directory.toml"
    directory.write_text(ENTRY + ok("generate", "--agency", AGENCY, "--out", out), encoding="utf-8")
    kid = load_agency_signing_key(out, AGENCY).kid
    printed = ok("revoke", "--agency", AGENCY, f"--kid={kid}", "--at", "now", directory=directory)
    [table] = tomllib.loads(printed)["agency"]["key"]
    assert table["kid"] == kid
    assert "revoked_at" in table
    operator = tmp_path / "operator-keys.toml"
    refused(
        "revoke", "--agency", AGENCY, f"--kid={kid}", "--write", operator,
        says="set revoked_at there", directory=directory,
    )  # fmt: skip
    assert not operator.exists()


# -- hostile input: exit 2, a clear message, nothing written -------------------------------------


@pytest.mark.parametrize("agency", ["Bank_X", "../etc", "greenchannel-broker", "x", "-bank"])
def test_a_bad_agency_id_is_refused_before_anything_is_written(tmp_path: Path, agency: str) -> None:
    out = tmp_path / "host"
    refused("generate", f"--agency={agency}", "--out", out, says="is not an agency id")
    assert not out.exists()


def test_existing_keys_are_not_replaced_without_force(out: Path) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    before = snapshot(out)
    refused("generate", "--agency", AGENCY, "--out", out, says="already has keys")
    assert snapshot(out) == before
    # --force adds a second pair beside the first; no existing file changes.
    ok("generate", "--agency", AGENCY, "--out", out, "--force")
    after = snapshot(out)
    assert len(pem_files(out)) == 4
    assert {name: data for name, data in after.items() if name.endswith(".pem") and name in before} == {
        name: data for name, data in before.items() if name.endswith(".pem")
    }


def test_an_unknown_kid_is_refused_and_nothing_written(tmp_path: Path, out: Path) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    operator = tmp_path / "operator-keys.toml"
    ok("rotate", "--agency", AGENCY, "--dir", out, "--write", operator)
    before, operator_before = snapshot(out), operator.read_bytes()
    refused(
        "revoke", "--agency", AGENCY, "--kid", "no-such-kid", "--dir", out, "--write", operator,
        says="has no key 'no-such-kid'",
    )  # fmt: skip
    # A kid of another agency is unknown for this one.
    other = load_agency_signing_key(out, AGENCY).kid
    refused(
        "revoke", "--agency", "bank-other", f"--kid={other}", "--write", operator, says="is not 'bank-other'"
    )
    assert snapshot(out) == before
    assert operator.read_bytes() == operator_before


def test_other_hostile_arguments_are_refused_and_nothing_written(tmp_path: Path, out: Path) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    kid = load_agency_signing_key(out, AGENCY).kid
    before = snapshot(out)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory")
    refused("generate", "--agency", AGENCY, "--out", a_file, says="not a directory")
    refused("rotate", "--agency", AGENCY, "--dir", tmp_path / "empty", says="no keys here")
    assert not (tmp_path / "empty").exists()
    refused("rotate", "--agency", AGENCY, "--dir", out, "--overlap=-1h", says="is not a duration")
    broken = tmp_path / "broken.toml"
    broken.write_text("[[key]]\nagency = 'x'\n")
    refused("rotate", "--agency", AGENCY, "--dir", out, "--write", broken, says=str(broken))
    assert broken.read_text() == "[[key]]\nagency = 'x'\n"
    refused(
        "revoke",
        "--agency",
        AGENCY,
        f"--kid={kid}",
        "--dir",
        out,
        "--at",
        "2026-12-03T09:00",
        says="no offset",
    )
    refused("rotate", "--agency", "bank-other", "--dir", out, says="no sig key to rotate")
    assert snapshot(out) == before


def test_the_adapter_config_check_accepts_the_generated_keys(tmp_path: Path, out: Path) -> None:
    """What generate prints for adapter.toml is what `greenchannel adapter --check` accepts."""
    document = json.loads(ok("generate", "--agency", AGENCY, "--out", out, "--json"))
    directory = tmp_path / "directory.toml"
    directory.write_text(ENTRY + document["toml"], encoding="utf-8")
    # The operator's side: the broker's public keys, in the operator's state overlay.
    broker_keys = ensure_agency_keys(directory, tmp_path / "operator", agencies=[], clock=SystemClock())
    adapter = document["adapter"]
    config = tmp_path / "adapter.toml"
    config.write_text(
        f"""
[agency]
id = "{AGENCY}"
signing_key = {json.dumps(adapter["signing_key"])}
encryption_keys = {json.dumps(adapter["encryption_keys"])}

[registry]
directory = "directory.toml"
key_overlays = [{json.dumps(str(broker_keys))}]

[nats]
url = "nats://127.0.0.1:4222"

[service]
target = "127.0.0.1:50061"
allow_plaintext = true

[adapter]
journal_dir = "journal"
""",
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENCHANNEL_")}
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "adapter", "--config", str(config), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert adapter["signing_key"] == str(
        out.resolve() / "keys" / AGENCY / f"{document['keys'][0]['kid']}.pem"
    )


def _cli(state: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GREENCHANNEL_")}
    return subprocess.run(
        [sys.executable, "-m", "broker.cli", "--state-dir", str(state), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_revoke_init_and_nats_authorization_print_one_json_object(tmp_path: Path, out: Path) -> None:
    ok("generate", "--agency", AGENCY, "--out", out)
    kid = load_agency_signing_key(out, AGENCY).kid
    revoked = json.loads(
        ok(
            "revoke",
            "--agency",
            AGENCY,
            f"--kid={kid}",
            "--at",
            "2026-12-03T01:00:00Z",
            "--dir",
            out,
            "--json",
        )
    )
    assert revoked["agency"] == AGENCY
    [key] = revoked["keys"]
    assert (key["kid"], key["revoked_at"]) == (kid, "2026-12-03T01:00:00Z")
    assert tomllib.loads(revoked["toml"])["agency"]["key"][0]["kid"] == kid
    # A refusal with --json: exit 2, an error object on stdout, the message on stderr.
    done = keys("revoke", "--agency", AGENCY, "--kid=nope", "--dir", out, "--json")
    assert done.returncode == 2
    assert json.loads(done.stdout)["error"]["message"] == done.stderr.split(": ", 1)[1].strip()

    state = tmp_path / "state"
    init = _cli(state, "keys", "init", "--json")
    assert init.returncode == 0, init.stderr
    overlay = Path(json.loads(init.stdout)["overlay"])
    assert overlay.is_file()
    assert overlay.is_relative_to(state)
    nats = _cli(state, "nats-authorization", "--json")
    assert nats.returncode == 0, nats.stderr
    accounts = json.loads(nats.stdout)["accounts"]
    assert accounts
    assert "PRIVATE" not in nats.stdout
    # No nkey seed (58 characters, "SU..." for a user), only public keys (56, "U..."): a public
    # key may hold "SU" followed by 40 characters, so the seed is matched whole.
    assert not re.search(r"(?<![A-Z2-7])SU[A-Z2-7]{56}(?![A-Z2-7])", nats.stdout)
