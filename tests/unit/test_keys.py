from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa, x25519

from broker.protocol import (
    KeyFileError,
    KeyUse,
    PublicKey,
    b64url_decode,
    b64url_encode,
    generate_signing_key,
    jwk_thumbprint,
    load_signing_key,
    save_signing_key,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)

# RFC 8037 Appendix A.1 (private) / A.2 (public) / A.3 (thumbprint).
RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def _pem(private: ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey | rsa.RSAPrivateKey) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def test_kid_is_rfc7638_thumbprint_rfc8037_vector() -> None:
    assert jwk_thumbprint(b64url_decode(RFC8037_X)) == RFC8037_KID
    assert PublicKey.from_raw(b64url_decode(RFC8037_X)).kid == RFC8037_KID


def test_signing_key_from_rfc8037_private_key_has_vector_kid(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.from_private_bytes(b64url_decode(RFC8037_D))
    path = tmp_path / "rfc8037.pem"
    path.write_bytes(_pem(private))
    key = load_signing_key(path)
    assert b64url_encode(key.raw_public) == RFC8037_X
    assert key.kid == RFC8037_KID
    assert key.public().kid == RFC8037_KID


def test_encryption_key_thumbprint_uses_x25519_curve() -> None:
    raw = b64url_decode(RFC8037_X)
    assert jwk_thumbprint(raw, KeyUse.ENC) != jwk_thumbprint(raw, KeyUse.SIG)


def test_save_load_round_trip(tmp_path: Path) -> None:
    key = generate_signing_key()
    path = tmp_path / "keys" / "agency.pem"
    save_signing_key(key, path)
    loaded = load_signing_key(path)
    assert loaded.kid == key.kid
    assert loaded.raw_public == key.raw_public
    signature = loaded.sign(b"body")
    key.public().ed25519().verify(signature, b"body")


def test_saved_key_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "agency.pem"
    save_signing_key(generate_signing_key(), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "agency.pem"
    first = generate_signing_key()
    save_signing_key(first, path)
    with pytest.raises(FileExistsError):
        save_signing_key(generate_signing_key(), path)
    assert load_signing_key(path).kid == first.kid


def test_load_missing_file(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="cannot read"):
        load_signing_key(tmp_path / "absent.pem")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a key\n", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"],
)
def test_load_non_key_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pem"
    path.write_bytes(content)
    with pytest.raises(KeyFileError):
        load_signing_key(path)


def test_load_rsa_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "rsa.pem"
    path.write_bytes(_pem(rsa.generate_private_key(public_exponent=65537, key_size=2048)))
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_signing_key(path)


def test_load_x25519_key_refused(tmp_path: Path) -> None:
    path = tmp_path / "x25519.pem"
    path.write_bytes(_pem(x25519.X25519PrivateKey.generate()))
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_signing_key(path)


def test_load_public_key_file_refused(tmp_path: Path) -> None:
    public = generate_signing_key().private.public_key()
    path = tmp_path / "public.pem"
    path.write_bytes(
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyFileError):
        load_signing_key(path)


def test_valid_at_window_bounds() -> None:
    key = generate_signing_key().public(not_before=T0, not_after=T0 + timedelta(days=30))
    assert not key.valid_at(T0 - timedelta(seconds=1))
    assert key.valid_at(T0)  # not_before is inclusive
    assert key.valid_at(T0 + timedelta(days=30) - timedelta(seconds=1))
    assert not key.valid_at(T0 + timedelta(days=30))  # not_after is exclusive


def test_valid_at_open_window() -> None:
    key = generate_signing_key().public()
    assert key.valid_at(datetime(1970, 1, 2, tzinfo=UTC))
    assert key.valid_at(datetime(2999, 1, 1, tzinfo=UTC))


def test_valid_at_revocation() -> None:
    revoked_at = T0 + timedelta(hours=1)
    key = generate_signing_key().public(revoked_at=revoked_at)
    assert key.valid_at(revoked_at - timedelta(microseconds=1))
    assert not key.valid_at(revoked_at)
    assert not key.valid_at(revoked_at + timedelta(days=1))


def test_kid_mismatch_rejected() -> None:
    key = generate_signing_key()
    with pytest.raises(ValueError, match="thumbprint"):
        PublicKey(kid=generate_signing_key().kid, raw=key.raw_public)


def test_kid_of_other_use_rejected() -> None:
    key = generate_signing_key()
    # A signing key's kid does not name the same bytes used as an X25519 key.
    with pytest.raises(ValueError, match="thumbprint"):
        PublicKey(kid=key.kid, raw=key.raw_public, use=KeyUse.ENC)


def test_wrong_length_rejected() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        PublicKey.from_raw(b"\x01" * 31)


def test_use_guards_conversion() -> None:
    signing = generate_signing_key().public()
    with pytest.raises(KeyFileError):
        signing.x25519()
    raw_x = x25519.X25519PrivateKey.generate().public_key().public_bytes_raw()
    encryption = PublicKey.from_raw(raw_x, use=KeyUse.ENC)
    with pytest.raises(KeyFileError):
        encryption.ed25519()
    assert encryption.x25519().public_bytes_raw() == raw_x
