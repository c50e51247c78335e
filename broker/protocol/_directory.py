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
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import NoReturn

from ._errors import RegistryError
from ._keys import KeyUse, PublicKey, b64url_decode, b64url_encode, jwk_thumbprint
from ._registry import _ROUTING, AGENCY_ID, Agency, AgencyKind, Registry, _FieldError

__all__ = ["DIRECTORY_VERSION", "OverlayKey", "load_directory", "read_overlay"]

DIRECTORY_VERSION = 1

_TOP = frozenset({"directory", "agency", "broker_key"})
_OVERLAY_TOP = frozenset({"key", "broker_key"})
_HEADER = frozenset({"version", "jurisdiction"})
_KEY_FIELDS = frozenset({"kid", "x", "use", "not_before", "not_after", "revoked_at"})
_AGENCY_FIELDS = frozenset({"id", "kind", "name", "region", "duty_contact", "supervisor", "key", *_ROUTING})
_X = re.compile(r"[A-Za-z0-9_-]{43}")  # 32 bytes, unpadded base64url
_JURISDICTION = re.compile(r"[A-Z]{2}")
_TOML_TYPES: Mapping[type, str] = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a float",
    list: "an array",
    dict: "a table",
    datetime: "a date-time",
    date: "a date",
    time: "a time",
}


def _type_name(value: object) -> str:
    return _TOML_TYPES.get(type(value), type(value).__name__)


@dataclass(frozen=True)
class _Scope:
    """One TOML table and where it sits, so every error can name file and field path."""

    file: str
    path: str
    table: Mapping[str, object]

    def at(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str | None, message: str) -> NoReturn:
        raise RegistryError(message, file=self.file, field=self.at(name) if name else self.path or None)

    def only(self, allowed: frozenset[str]) -> None:
        for name in self.table:
            if name not in allowed:
                self.fail(name, f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def optional_string(self, name: str) -> str | None:
        value = self.table.get(name)
        if value is not None and not isinstance(value, str):
            self.fail(name, f"expected a string, got {_type_name(value)}")
        return value

    def string(self, name: str) -> str:
        value = self.optional_string(name)
        if value is None:
            self.fail(name, "missing required field")
        return value

    def integer(self, name: str) -> int:
        value = self.table.get(name)
        if value is None:
            self.fail(name, "missing required field")
        if type(value) is not int:  # bool is an int subclass; `version = true` is a mistake
            self.fail(name, f"expected an integer, got {_type_name(value)}")
        return value

    def strings(self, name: str) -> tuple[str, ...]:
        value = self.table.get(name, [])
        if not isinstance(value, list):
            self.fail(name, f"expected an array of strings, got {_type_name(value)}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{i}]", f"expected a string, got {_type_name(item)}")
        return tuple(value)

    def instant(self, name: str) -> datetime | None:
        value = self.table.get(name)
        if value is None:
            return None
        if not isinstance(value, datetime):
            self.fail(
                name, f"expected an offset date-time such as 2026-01-01T00:00:00Z, got {_type_name(value)}"
            )
        if value.utcoffset() is None:
            # A local time means a different instant on every host; validity windows must not.
            self.fail(name, "naive date-time: add 'Z' or an offset such as +08:00")
        return value.astimezone(UTC)

    def table_of(self, name: str) -> _Scope:
        value = self.table.get(name)
        if value is None:
            self.fail(name, f"missing required table [{name}]")
        if not isinstance(value, dict):
            self.fail(name, f"expected a table, got {_type_name(value)}")
        return _Scope(self.file, self.at(name), value)

    def tables(self, name: str) -> list[_Scope]:
        value = self.table.get(name, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(name, f"expected an array of tables [[{self.at(name)}]]")
        return [_Scope(self.file, f"{self.at(name)}[{i}]", item) for i, item in enumerate(value)]


class _KidBook:
    """Remembers where each kid was first seen; one key must have one owner and one entry."""

    def __init__(self) -> None:
        self._seen: dict[str, str] = {}

    def add(self, key: PublicKey, scope: _Scope) -> None:
        if (first := self._seen.get(key.kid)) is not None:
            scope.fail("kid", f"duplicate kid {key.kid!r}, already at {first}")
        self._seen[key.kid] = f"{scope.file} {scope.path}"


def _parse_key(scope: _Scope, book: _KidBook, *, extra: frozenset[str] = frozenset()) -> PublicKey:
    scope.only(_KEY_FIELDS | extra)
    kid = scope.string("kid")
    x = scope.string("x")
    try:
        use = KeyUse(scope.string("use"))
    except ValueError:
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


def _parse_broker_key(scope: _Scope, book: _KidBook) -> PublicKey:
    # 'sig' notarizes; 'enc' receives the result details the broker needs to chase money.
    return _parse_key(scope, book)


def _parse_agency(scope: _Scope, book: _KidBook) -> Agency:
    scope.only(_AGENCY_FIELDS)
    agency_id = scope.string("id")
    try:
        kind = AgencyKind(scope.string("kind"))
    except ValueError:
        scope.fail("kind", f"must be one of: {', '.join(AgencyKind)}")
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


def _read_toml(path: Path) -> dict[str, object]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RegistryError(f"cannot read file: {exc.strerror or exc}", file=str(path)) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RegistryError(f"not UTF-8 (byte offset {exc.start})", file=str(path)) from exc
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message carries the position: "Invalid value (at line 7, column 9)".
        raise RegistryError(f"invalid TOML: {exc}", file=str(path)) from exc


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
    root = _Scope(str(path), "", _read_toml(path))
    root.only(_OVERLAY_TOP)
    entries = [
        OverlayKey(agency=None, key=_parse_broker_key(scope, book), field=scope.path)
        for scope in root.tables("broker_key")
    ]
    for scope in root.tables("key"):
        agency = scope.string("agency")
        if not AGENCY_ID.fullmatch(agency):
            scope.fail("agency", "must be an agency id")
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
    root = _Scope(str(path), "", _read_toml(path))
    root.only(_TOP)
    header = root.table_of("directory")
    header.only(_HEADER)
    version = header.integer("version")
    if version != DIRECTORY_VERSION:
        header.fail("version", f"unsupported version {version}; this release reads {DIRECTORY_VERSION}")
    jurisdiction = header.string("jurisdiction")
    if not _JURISDICTION.fullmatch(jurisdiction):
        header.fail("jurisdiction", "must be an ISO 3166-1 alpha-2 code such as 'CN'")

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
