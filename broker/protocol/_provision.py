"""First-run key provisioning, rotation and revocation for the demo and single-host deployments.

Layout under ``state_dir``::

    keys/directory-keys.toml        public keys (overlay for load_directory), never committed
    keys/<agency-id>/<kid>.pem      private keys, PKCS#8 PEM, mode 0600
    keys/_broker/<kid>.pem          the broker's notarization key and its X25519 key, which opens
                                    the result details it needs to chase money
    keys/.lock                      serializes writers (broker and adapters may start together)

The overlay is the record of each key's validity window and revocation; a private key whose kid
is not in it is adopted on the next :func:`ensure_agency_keys` rather than lost.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519

from ._clock import Clock
from ._directory import OverlayKey, load_directory, read_overlay
from ._errors import KeyFileError, UnknownAgencyError
from ._keys import (
    KeyUse,
    PublicKey,
    SigningKey,
    b64url_encode,
    generate_signing_key,
    jwk_thumbprint,
    save_signing_key,
)
from ._registry import AGENCY_ID, BROKER_ID

__all__ = [
    "OVERLAY_FILE",
    "agency_keys",
    "ensure_agency_keys",
    "generate_agency_keys",
    "key_overlay_path",
    "load_agency_encryption_key",
    "load_agency_encryption_keys",
    "load_agency_signing_key",
    "load_broker_encryption_key",
    "load_broker_signing_key",
    "merge_into_overlay",
    "private_key_path",
    "read_encryption_key",
    "render_key_tables",
    "revoke_key",
    "rotate_agency_key",
]

OVERLAY_FILE = "directory-keys.toml"
_BROKER = "_broker"  # cannot collide with an agency id, which starts with [a-z0-9]

_PrivateKey = ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey


def key_overlay_path(state_dir: Path) -> Path:
    """Where :func:`ensure_agency_keys` writes the public-key overlay."""
    return state_dir / "keys" / OVERLAY_FILE


def private_key_path(state_dir: Path, agency_id: str, kid: str) -> Path:
    """Where the agency's private key ``kid`` lives under ``state_dir`` (the adapter's key file)."""
    return _owner_dir(state_dir, agency_id) / f"{kid}.pem"


def _owner_dir(state_dir: Path, owner: str | None) -> Path:
    if owner is not None and (not AGENCY_ID.fullmatch(owner) or owner == BROKER_ID):
        # The id becomes a path component: refuse anything that could escape the key directory.
        raise UnknownAgencyError(f"invalid agency id {owner!r}")
    return state_dir / "keys" / (owner or _BROKER)


def _aware(when: datetime, what: str) -> datetime:
    if when.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware")
    return when.astimezone(UTC)


@contextmanager
def _locked(state_dir: Path) -> Iterator[list[OverlayKey]]:
    """Hold the state lock and yield the overlay entries; write them back when the block ends."""
    keys = state_dir / "keys"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    with (keys / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = key_overlay_path(state_dir)
        entries = read_overlay(path) if path.exists() else []
        yield entries
        _write_overlay(path, entries)


# -- private key files ------------------------------------------------------------------------


def _write_exclusive(path: Path, data: bytes) -> None:
    # O_EXCL: an existing key is never replaced; a new key always gets a new file.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def _generate(directory: Path, use: KeyUse, now: datetime) -> PublicKey:
    # Signatures carry whole-second `iat`s: a key valid from 12:00:00.7 would refuse what it signs
    # in its first second. Validity starts at the whole second.
    now = now.replace(microsecond=0)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if use is KeyUse.SIG:
        signing = generate_signing_key()
        save_signing_key(signing, directory / f"{signing.kid}.pem")
        return signing.public(not_before=now)
    private = x25519.X25519PrivateKey.generate()
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = PublicKey.from_raw(raw, use=KeyUse.ENC, not_before=now)
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write_exclusive(directory / f"{key.kid}.pem", pem)
    return key


def _read_private(path: Path) -> _PrivateKey:
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: not an unencrypted PEM private key") from exc
    if not isinstance(private, ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey):
        raise KeyFileError(f"{path}: expected an Ed25519 or X25519 key, found {type(private).__name__}")
    return private


def read_encryption_key(path: Path) -> x25519.X25519PrivateKey:
    """The X25519 private key in the PEM file ``path`` (an agency's own key file, anywhere).

    Raises :class:`KeyFileError` naming the file when it cannot be read, is not an unencrypted
    PEM private key, or holds another kind of key (an Ed25519 signing key given by mistake).
    """
    private = _read_private(path)
    if not isinstance(private, x25519.X25519PrivateKey):
        # A signing key given by mistake: it cannot open anything sealed.
        raise KeyFileError(f"{path}: not an X25519 (encryption) key, found {type(private).__name__}")
    return private


def _public_of(private: _PrivateKey) -> tuple[bytes, KeyUse]:
    raw = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw, KeyUse.SIG if isinstance(private, ed25519.Ed25519PrivateKey) else KeyUse.ENC


def _adopt_orphans(state_dir: Path, owner: str | None, entries: list[OverlayKey], now: datetime) -> None:
    """List private keys written by a run that died before it updated the overlay."""
    known = {entry.key.kid for entry in entries}
    for pem in sorted(_owner_dir(state_dir, owner).glob("*.pem")):
        if pem.stem in known:
            continue
        raw, use = _public_of(_read_private(pem))
        if jwk_thumbprint(raw, use) != pem.stem:
            raise KeyFileError(f"{pem}: file name is not the kid of the key it holds")
        entries.append(_entry(owner, PublicKey.from_raw(raw, use=use, not_before=now)))


def _entry(owner: str | None, key: PublicKey) -> OverlayKey:
    return OverlayKey(agency=owner, key=key, field="")


# -- selection --------------------------------------------------------------------------------


def _usable(state_dir: Path, entry: OverlayKey, now: datetime) -> bool:
    key = entry.key
    live = (key.revoked_at is None or key.revoked_at > now) and (key.not_after is None or key.not_after > now)
    return live and (_owner_dir(state_dir, entry.agency) / f"{key.kid}.pem").exists()


_EPOCH = datetime.min.replace(tzinfo=UTC)


def _newest(
    directory: Path, entries: list[OverlayKey], owner: str | None, use: KeyUse, at: datetime | None
) -> OverlayKey | None:
    """The owner's newest key of that use with a private half: latest not_before, then latest entry.

    Without ``at`` any unrevoked key qualifies; with it the key must be valid at that instant.
    """
    candidates = [
        (entry.key.not_before or _EPOCH, position, entry)
        for position, entry in enumerate(entries)
        if entry.agency == owner
        and entry.key.use is use
        and (entry.key.valid_at(at) if at is not None else entry.key.revoked_at is None)
        and (directory / f"{entry.key.kid}.pem").exists()
    ]
    return max(candidates, key=lambda c: c[:2])[2] if candidates else None


def _make_keys_hint(state_dir: Path, owner: str | None) -> str:
    """The command that makes the missing keys, for people reading the error (not the function)."""
    if owner is None:
        return f"create them with `greenchannel --state-dir {state_dir} keys init`"
    return (
        f"create them with `greenchannel keys generate --agency {owner} --out {state_dir}` "
        f"(or `greenchannel --state-dir {state_dir} keys init` for every agency of the directory)"
    )


def _load_private(state_dir: Path, owner: str | None, use: KeyUse, at: datetime | None) -> _PrivateKey:
    directory = _owner_dir(state_dir, owner)
    path = key_overlay_path(state_dir)
    entries = read_overlay(path) if path.exists() else []
    entry = _newest(directory, entries, owner, use, None if at is None else _aware(at, "at"))
    who = "the broker" if owner is None else f"agency {owner!r}"
    if entry is None:
        raise KeyFileError(f"{state_dir}: no usable {use} key for {who}; {_make_keys_hint(state_dir, owner)}")
    pem = directory / f"{entry.key.kid}.pem"
    private = _read_private(pem)
    if _public_of(private) != (entry.key.raw, use):
        raise KeyFileError(f"{pem}: holds a different key than kid {entry.key.kid!r}")
    return private


def load_agency_signing_key(state_dir: Path, agency_id: str, *, at: datetime | None = None) -> SigningKey:
    """The agency's newest unrevoked Ed25519 key (valid at ``at`` if given)."""
    private = _load_private(state_dir, agency_id, KeyUse.SIG, at)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return SigningKey(private)


def load_agency_encryption_key(
    state_dir: Path, agency_id: str, *, at: datetime | None = None
) -> x25519.X25519PrivateKey:
    """The agency's newest unrevoked X25519 key (valid at ``at`` if given)."""
    private = _load_private(state_dir, agency_id, KeyUse.ENC, at)
    assert isinstance(private, x25519.X25519PrivateKey)
    return private


def load_agency_encryption_keys(state_dir: Path, agency_id: str) -> tuple[x25519.X25519PrivateKey, ...]:
    """Every X25519 key of the agency with its private half on disk, newest first.

    Rotated-out, expired and revoked keys included: what was sealed to them stays readable with
    them (a revoked key is no longer sealed to, but old answers are still the agency's to read).
    """
    directory = _owner_dir(state_dir, agency_id)
    path = key_overlay_path(state_dir)
    entries = read_overlay(path) if path.exists() else []
    ranked = sorted(
        (
            (entry.key.not_before or _EPOCH, position, entry)
            for position, entry in enumerate(entries)
            if entry.agency == agency_id
            and entry.key.use is KeyUse.ENC
            and (directory / f"{entry.key.kid}.pem").exists()
        ),
        key=lambda c: c[:2],
        reverse=True,
    )
    keys: list[x25519.X25519PrivateKey] = []
    for _, _, entry in ranked:
        pem = directory / f"{entry.key.kid}.pem"
        private = _read_private(pem)
        if _public_of(private) != (entry.key.raw, KeyUse.ENC):
            raise KeyFileError(f"{pem}: holds a different key than kid {entry.key.kid!r}")
        assert isinstance(private, x25519.X25519PrivateKey)
        keys.append(private)
    if not keys:
        raise KeyFileError(
            f"{state_dir}: no enc key for agency {agency_id!r}; {_make_keys_hint(state_dir, agency_id)}"
        )
    return tuple(keys)


def load_broker_signing_key(state_dir: Path, *, at: datetime | None = None) -> SigningKey:
    """The broker's newest unrevoked notarization key (valid at ``at`` if given)."""
    private = _load_private(state_dir, None, KeyUse.SIG, at)
    assert isinstance(private, ed25519.Ed25519PrivateKey)
    return SigningKey(private)


def load_broker_encryption_key(state_dir: Path, *, at: datetime | None = None) -> x25519.X25519PrivateKey:
    """The broker's newest unrevoked X25519 key (valid at ``at`` if given): opens ``broker_details``."""
    private = _load_private(state_dir, None, KeyUse.ENC, at)
    assert isinstance(private, x25519.X25519PrivateKey)
    return private


# -- writers ----------------------------------------------------------------------------------


def ensure_agency_keys(
    registry_path: Path,
    state_dir: Path,
    *,
    agencies: Iterable[str] | None = None,
    clock: Clock,
    broker: bool = True,
) -> Path:
    """Give every agency (or just ``agencies``) and the broker a usable key of each use.

    Generates only what is missing (no unrevoked, unexpired key with its private half on disk),
    so a second run changes nothing. Returns the overlay path for ``load_directory``.
    """
    now = _aware(clock.now(), "clock.now()")
    path = key_overlay_path(state_dir)
    # Loading with the current overlay first reports a stale or broken overlay under its own name.
    registry = load_directory(registry_path, key_overlays=[path] if path.exists() else [])
    if isinstance(agencies, str):
        raise TypeError("agencies must be an iterable of agency ids, not one string")
    chosen = registry.agencies() if agencies is None else [registry.get(a) for a in agencies]
    owners: list[str | None] = [agency.id for agency in chosen]
    if broker:
        owners.append(None)
    with _locked(state_dir) as entries:
        for owner in owners:
            _adopt_orphans(state_dir, owner, entries, now)
            for use in (KeyUse.SIG, KeyUse.ENC):
                if not any(
                    e.agency == owner and e.key.use is use and _usable(state_dir, e, now) for e in entries
                ):
                    entries.append(_entry(owner, _generate(_owner_dir(state_dir, owner), use, now)))
    return path


def generate_agency_keys(
    state_dir: Path, agency_id: str, *, clock: Clock, force: bool = False
) -> tuple[PublicKey, PublicKey]:
    """Create one agency's own signing and encryption keys in ``state_dir``, on the agency's host.

    Needs no directory file: an agency joining the bus makes its keys first and hands the public
    halves to the operator. The layout is the one every loader reads (``keys/<agency>/<kid>.pem``
    plus the overlay as the local record of windows), so ``state_dir`` works as ``--state-dir``.
    Refuses when the agency already has a usable key there unless ``force``: a second pair is
    then added beside the first (no file is ever overwritten; the newest key wins). Returns the
    new (sig, enc) public keys.
    """
    directory = _owner_dir(state_dir, agency_id)  # validates the id before anything is written
    now = _aware(clock.now(), "clock.now()")
    if not force:
        path = key_overlay_path(state_dir)
        entries = read_overlay(path) if path.exists() else []
        existing = [e.key.kid for e in entries if e.agency == agency_id and _usable(state_dir, e, now)]
        existing += [pem.stem for pem in sorted(directory.glob("*.pem")) if pem.stem not in existing]
        if existing:
            raise KeyFileError(f"{directory}: agency {agency_id!r} already has keys ({', '.join(existing)})")
    with _locked(state_dir) as entries:
        _adopt_orphans(state_dir, agency_id, entries, now)
        pair = (_generate(directory, KeyUse.SIG, now), _generate(directory, KeyUse.ENC, now))
        entries.extend(_entry(agency_id, key) for key in pair)
    return pair


def agency_keys(state_dir: Path, agency_id: str) -> tuple[PublicKey, ...]:
    """The agency's public keys as recorded in ``state_dir``'s overlay, in file order."""
    _owner_dir(state_dir, agency_id)
    path = key_overlay_path(state_dir)
    entries = read_overlay(path) if path.exists() else []
    return tuple(entry.key for entry in entries if entry.agency == agency_id)


def merge_into_overlay(path: Path, agency_id: str, keys: Iterable[PublicKey]) -> None:
    """Add ``keys`` to the overlay file ``path``, replacing entries with the same kid.

    For the operator's overlay that the broker reads (``greenchannel broker --key-overlay``):
    a rotation rewrites the old key's window, a revocation adds ``revoked_at``. The write is
    atomic, so a broker polling the file sees the old overlay or the new one.
    """
    _owner_dir(path.parent, agency_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(f".{path.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_overlay(path) if path.exists() else []
        for key in keys:
            at = next((i for i, e in enumerate(entries) if e.key.kid == key.kid), None)
            if at is None:
                entries.append(_entry(agency_id, key))
            elif entries[at].agency != agency_id:
                owner = "the broker" if entries[at].agency is None else repr(entries[at].agency)
                raise KeyFileError(f"{path}: key {key.kid!r} belongs to {owner}, not {agency_id!r}")
            else:
                entries[at] = _entry(agency_id, key)
        _write_overlay(path, entries)


def rotate_agency_key(
    state_dir: Path,
    agency_id: str,
    *,
    clock: Clock,
    overlap: timedelta = timedelta(hours=1),
    use: KeyUse = KeyUse.SIG,
) -> str:
    """Add a new key of ``use`` valid from now; current ones stay valid for ``overlap`` more.

    Signing keys: the overlap lets messages signed just before the rotation still verify in
    flight. Encryption keys: new answers are sealed to the new key at once (the newest wins); the
    old private key stays on disk, so what was sealed to it stays readable
    (:func:`load_agency_encryption_keys`). Returns the new kid.
    """
    if overlap <= timedelta(0):
        raise ValueError("overlap must be positive; revoke_key is the immediate cut-off")
    now = _aware(clock.now(), "clock.now()")
    directory = _owner_dir(state_dir, agency_id)
    with _locked(state_dir) as entries:
        current = [
            i
            for i, e in enumerate(entries)
            if e.agency == agency_id and e.key.use is use and _usable(state_dir, e, now)
        ]
        if not current:
            raise KeyFileError(f"{state_dir}: agency {agency_id!r} has no {use} key to rotate")
        end = now + overlap
        for i in current:
            key = entries[i].key
            if key.not_after is None or key.not_after > end:
                entries[i] = _entry(agency_id, replace(key, not_after=end))
        new = _generate(directory, use, now)
        entries.append(_entry(agency_id, new))
    return new.kid


def revoke_key(state_dir: Path, agency_id: str, kid: str, *, at: datetime) -> None:
    """Record that the agency's key ``kid`` is revoked from ``at`` on.

    An earlier recorded revocation stands: moving it later would re-validate signatures
    already refused.
    """
    when = _aware(at, "at")
    _owner_dir(state_dir, agency_id)
    with _locked(state_dir) as entries:
        for i, entry in enumerate(entries):
            if entry.agency == agency_id and entry.key.kid == kid:
                key = entry.key
                if key.revoked_at is None or key.revoked_at > when:
                    entries[i] = _entry(agency_id, replace(key, revoked_at=when))
                return
        raise KeyFileError(f"{key_overlay_path(state_dir)}: agency {agency_id!r} has no key {kid!r}")


# -- overlay rendering ------------------------------------------------------------------------

_HEADER = """\
# GreenChannel key overlay: public keys generated on this host. Never commit this file.
# Written by broker.protocol.ensure_agency_keys / rotate_agency_key / revoke_key;
# load it with load_directory(directory, key_overlays=[this file]).
"""


def _toml_string(text: str) -> str:
    # JSON's ASCII-only escapes (\\", \\\\, \\n, \\uXXXX) are all valid in a TOML basic string.
    return json.dumps(text, ensure_ascii=True)


def _toml_instant(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _render_key(table: str, owner: str | None, key: PublicKey) -> str:
    lines = [f"[[{table}]]"]
    if owner is not None:
        lines.append(f"agency = {_toml_string(owner)}")
    lines += [f"kid = {_toml_string(key.kid)}", f'x = "{b64url_encode(key.raw)}"', f'use = "{key.use}"']
    for name in ("not_before", "not_after", "revoked_at"):
        value: datetime | None = getattr(key, name)
        if value is not None:
            lines.append(f"{name} = {_toml_instant(value)}")
    return "\n".join(lines) + "\n"


def render_key_tables(agency_id: str, keys: Iterable[PublicKey], *, overlay: bool = False) -> str:
    """Public keys as directory TOML: ``[[agency.key]]`` tables to paste under the agency's
    ``[[agency]]`` entry, or with ``overlay`` the ``[[key]]`` tables of an overlay file."""
    _owner_dir(Path(), agency_id)
    if overlay:
        return "\n".join(_render_key("key", agency_id, key) for key in keys)
    return "\n".join(_render_key("agency.key", None, key) for key in keys)


def _write_overlay(path: Path, entries: list[OverlayKey]) -> None:
    # Broker keys are rendered first, and each owner's keys keep their order, which newest-key
    # selection relies on as a tie-break.
    blocks = [_render_key("broker_key", None, e.key) for e in entries if e.agency is None]
    blocks += [_render_key("key", e.agency, e.key) for e in entries if e.agency is not None]
    text = "\n".join([_HEADER, *blocks])
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.write(text)
        out.flush()
        os.fsync(out.fileno())
    # Atomic: a reader sees the old overlay or the new one, never half of it.
    os.replace(tmp, path)
