"""The agency directory file (TOML) and its key overlays.

The format is documented at the top of ``agencies/directory.toml``. Every problem raises
:class:`RegistryError` naming the file and a field path in TOML spelling: ``directory.version``,
``agency[2].id``, ``agency[0].key[1].x``, ``agency[3].bank_prefixes[0]``, ``key[4].agency``,
``broker_key[0].use``; indexes count entries of that array in file order from 0. Unknown
fields are rejected: a typo must not silently drop a route or a revocation.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ._errors import RegistryError
from ._keys import KeyUse, PublicKey, b64url_decode, b64url_encode, jwk_thumbprint
from ._registry import _ROUTING, AGENCY_ID, Agency, AgencyKind, Registry, _FieldError
from ._toml import TomlTable, read_toml

__all__ = ["DIRECTORY_VERSION", "OverlayKey", "load_directory", "read_overlay"]

DIRECTORY_VERSION = 1

_TOP = frozenset({"directory", "agency", "broker_key"})
_OVERLAY_TOP = frozenset({"key", "broker_key"})
_HEADER = frozenset({"version", "jurisdiction"})
_KEY_FIELDS = frozenset({"kid", "x", "use", "not_before", "not_after", "revoked_at"})
_AGENCY_FIELDS = frozenset({"id", "kind", "name", "region", "duty_contact", "supervisor", "key", *_ROUTING})
_X = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url
_JURISDICTION = re.compile(r"[A-Z]{2}")
_USES = {use.value: use for use in KeyUse}
_KINDS = {kind.value: kind for kind in AgencyKind}


class _KidBook:
    """Remembers where each kid was first seen; one key must have one owner and one entry."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def add(self, key: PublicKey, scope: TomlTable) -> None:
        if (first := self._seen.get(key.kid)) is not None:
            scope.fail("kid", f"duplicate kid {key.kid!r}, already at {first}")
        self._seen[key.kid] = f"{scope.file} {scope.path}"


def _parse_key(scope: TomlTable, book: _KidBook, *, extra: frozenset[str] = frozenset()) -> PublicKey:
    scope.only(_KEY_FIELDS | extra)
    kid = scope.string("kid")
    x = scope.string("x")
    use = _USES.get(scope.string("use"))
    if use is None:
        scope.fail("use", "must be 'sig' (Ed25519) or 'enc' (X25519)")
    raw = b64url_decode(x) if _X.fullmatch(x) else b""
    # Re-encoding rejects non-canonical trailing bits, so one key has exactly one spelling.
    if not raw or b64url_encode(raw) != x:
        scope.fail("x", "must be the unpadded base64url encoding of a 32-byte public key")
    expected = jwk_thumbprint(raw, use)
    if kid != expected:
        scope.fail("kid", f"is not the RFC 7638 thumbprint of x and use (that would be {expected!r})")
    not_before = scope.instant("not_before")
    not_after = scope.instant("not_after")
    revoked_at = scope.instant("revoked_at")
    if not_before is not None and not_after is not None and not_after <= not_before:
        scope.fail("not_after", "must be later than not_before")
    key = PublicKey(
        kid=kid, raw=raw, use=use, not_before=not_before, not_after=not_after, revoked_at=revoked_at
    )
    book.add(key, scope)
    return key


def _parse_broker_key(scope: TomlTable, book: _KidBook) -> PublicKey:
    # 'sig' notarizes; 'enc' receives the result details the broker needs to chase money.
    return _parse_key(scope, book)


def _parse_agency(scope: TomlTable, book: _KidBook) -> Agency:
    scope.only(_AGENCY_FIELDS)
    agency_id = scope.string("id")
    kind = scope.choice("kind", _KINDS, what="agency kind")
    name = scope.string("name")
    region = scope.string("region")
    duty_contact = scope.string("duty_contact")
    supervisor = scope.optional_string("supervisor")
    routing = {attr: scope.strings(attr) for attr in _ROUTING}
    keys = tuple(_parse_key(key_scope, book) for key_scope in scope.tables("key"))
    try:
        return Agency(
            id=agency_id,
            kind=kind,
            name=name,
            region=region,
            duty_contact=duty_contact,
            supervisor=supervisor,
            keys=keys,
            bank_prefixes=routing["bank_prefixes"],
            number_segments=routing["number_segments"],
            ported_numbers=routing["ported_numbers"],
            platform_codes=routing["platform_codes"],
            police_regions=routing["police_regions"],
        )
    except _FieldError as exc:
        scope.fail(exc.field, exc.detail)


@dataclass(frozen=True, kw_only=True)
class OverlayKey:
    """One public key of an overlay file."""

    agency: str | None
    """Owning agency id, or None for a broker key."""
    key: PublicKey
    """The key and its validity window."""
    field: str
    """Where it sits in the file: ``key[3]`` or ``broker_key[0]``."""


def _read_overlay(path: Path, book: _KidBook) -> list[OverlayKey]:
    root = read_toml(path, RegistryError, invalid="invalid TOML")
    root.only(_OVERLAY_TOP)
    entries = [
        OverlayKey(agency=None, key=_parse_broker_key(scope, book), field=scope.path)
        for scope in root.tables("broker_key")
    ]
    for scope in root.tables("key"):
        agency = scope.string("agency", pattern=AGENCY_ID, mismatch="must be an agency id")
        entries.append(
            OverlayKey(
                agency=agency, key=_parse_key(scope, book, extra=frozenset({"agency"})), field=scope.path
            )
        )
    return entries


def read_overlay(path: Path) -> list[OverlayKey]:
    """Parse one key overlay on its own (broker keys first, then agency keys, each in file order)."""
    return _read_overlay(path, _KidBook())


def load_directory(path: Path, *, key_overlays: Sequence[Path] = ()) -> Registry:
    """Load the directory file, merge the overlays' keys into it, and build the registry."""
    root = read_toml(path, RegistryError, invalid="invalid TOML")
    root.only(_TOP)
    header = root.table("directory")
    header.only(_HEADER)
    version = header.integer("version")
    if version != DIRECTORY_VERSION:
        header.fail("version", f"unsupported version {version}; this release reads {DIRECTORY_VERSION}")
    jurisdiction = header.string(
        "jurisdiction", pattern=_JURISDICTION, mismatch="must be an ISO 3166-1 alpha-2 code such as 'CN'"
    )

    book = _KidBook()
    broker_keys = [_parse_broker_key(scope, book) for scope in root.tables("broker_key")]
    agencies = [_parse_agency(scope, book) for scope in root.tables("agency")]

    # First occurrence wins here; the registry then reports the duplicate id itself.
    position: dict[str, int] = {}
    for i, agency in enumerate(agencies):
        position.setdefault(agency.id, i)
    extra: dict[int, list[PublicKey]] = {}
    for overlay in key_overlays:
        for entry in _read_overlay(overlay, book):
            if entry.agency is None:
                broker_keys.append(entry.key)
                continue
            i = position.get(entry.agency, -1)
            if i < 0:
                raise RegistryError(
                    f"unknown agency {entry.agency!r}", file=str(overlay), field=f"{entry.field}.agency"
                )
            extra.setdefault(i, []).append(entry.key)
    for i, keys in extra.items():
        agencies[i] = dataclasses.replace(agencies[i], keys=(*agencies[i].keys, *keys))
    return Registry(agencies, broker_keys=broker_keys, jurisdiction=jurisdiction, source=str(path))
