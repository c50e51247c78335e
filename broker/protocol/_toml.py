"""The one checker of GreenChannel's TOML files: read a file, then check it table by table.

Every configuration file (the agency directory and its key overlays, the authorization policy,
the SLA policy, an adapter's config) is checked the same way, so every problem reads the same
way: an error of the loader's own class naming the file and the field path in TOML spelling
(``policy.version``, ``rule[3].types[1]``, ``agency[0].key[1].x``); indexes count entries of an
array in file order from 0. Unknown fields are rejected: a typo must not silently drop a route,
widen a permission or loosen a deadline.

Writing a loader::

    class AdapterConfigError(Exception):
        def __init__(self, message: str, *, file: str | None = None, field: str | None = None): ...

    root = read_toml(path, AdapterConfigError)              # cannot read / not UTF-8 / not TOML
    root.only({"adapter", "tls"})                           # unknown top-level field -> error
    adapter = root.table("adapter")                         # [adapter], required
    adapter.only({"agency", "nats_url", "concurrency"})
    agency = adapter.string("agency", pattern=AGENCY_ID, mismatch="must be an agency id")
    concurrency = adapter.integer("concurrency", default=8, low=1, high=1024)
    tls = root.optional_table("tls")                        # None when absent
    for key in root.tables("key"):                          # [[key]]: key[0], key[1], ...
        key.only({"kid", "x"})
        ...
    adapter.fail("nats_url", "must start with nats:// or tls://")   # any check of your own

The error class is the loader's own: anything called as ``error(message, file=..., field=...)``
(see :class:`FileErrorFactory`). Each check returns a plain Python value of the checked type.
"""

from __future__ import annotations

import math
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import NoReturn, Protocol, TypeVar

__all__ = ["FileErrorFactory", "TomlTable", "read_toml", "toml_type_name"]

_T = TypeVar("_T")

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


def toml_type_name(value: object) -> str:
    """How a TOML value's type is spelled in error messages: ``a string``, ``an array``, ..."""
    return _TOML_TYPES.get(type(value), type(value).__name__)


class FileErrorFactory(Protocol):
    """The loader's error class: built from a message, the file and the field path (if any)."""

    def __call__(self, message: str, /, *, file: str | None = ..., field: str | None = ...) -> Exception: ...


def read_toml(
    path: Path,
    error: FileErrorFactory,
    *,
    what: str = "file",
    invalid: str = "not valid TOML",
) -> TomlTable:
    """Read ``path`` as UTF-8 TOML and return its root table; raise ``error`` naming the file.

    ``what`` names the file in "cannot read {what}" and ``invalid`` starts the syntax-error
    message (tomllib's own message, which carries line and column, follows it). New loaders keep
    the defaults; the existing ones keep the wording their users already read.
    """
    file = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {what}: {exc.strerror or exc}", file=file) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"not UTF-8 (byte offset {exc.start})", file=file) from exc
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{invalid}: {exc}", file=file) from exc
    return TomlTable(file=file, path="", values=table, error=error)


@dataclass(frozen=True, kw_only=True)
class TomlTable:
    """One TOML table and where it sits, so every check can name the file and the field path.

    Methods that take ``name`` check the field ``name`` of this table; absent optional fields
    return their default. Every failure raises ``error`` through :meth:`fail`.
    """

    file: str
    """The file the table was read from, as given."""
    path: str
    """The table's field path in TOML spelling (``rule[3]``, ``hold.freeze``); empty at the root."""
    values: Mapping[str, object]
    """The table's raw contents, as tomllib parsed them."""
    error: FileErrorFactory
    """The loader's error class."""

    # -- plumbing ---------------------------------------------------------------------------------

    def at(self, name: str) -> str:
        """The field path of ``name`` in this table."""
        return f"{self.path}.{name}" if self.path else name

    def fail(self, name: str | None, message: str) -> NoReturn:
        """Raise the loader's error at field ``name`` (``None``: this table itself)."""
        raise self.error(message, file=self.file, field=self.at(name) if name else self.path or None)

    def has(self, name: str) -> bool:
        return name in self.values

    def only(self, allowed: Collection[str]) -> None:
        """Reject any field not in ``allowed``."""
        for name in self.values:
            if name not in allowed:
                self.fail(name, f"unknown field (expected one of: {', '.join(sorted(allowed))})")

    def _sub(self, path: str, table: Mapping[str, object]) -> TomlTable:
        return TomlTable(file=self.file, path=path, values=table, error=self.error)

    # -- scalars ------------------------------------------------------------------------------------

    def optional_string(
        self, name: str, *, pattern: re.Pattern[str] | None = None, mismatch: str = ""
    ) -> str | None:
        """A string, or None when absent; with ``pattern`` it must match it whole (else ``mismatch``)."""
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            self.fail(name, f"expected a string, got {toml_type_name(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            self.fail(name, mismatch or f"{value!r} does not match {pattern.pattern}")
        return value

    def string(self, name: str, *, pattern: re.Pattern[str] | None = None, mismatch: str = "") -> str:
        """A required string (see :meth:`optional_string`)."""
        value = self.optional_string(name, pattern=pattern, mismatch=mismatch)
        if value is None:
            self.fail(name, "missing required field")
        return value

    def integer(
        self,
        name: str,
        *,
        default: int | None = None,
        low: int | None = None,
        high: int | None = None,
        expected: str = "an integer",
    ) -> int:
        """An integer (never a boolean), required unless ``default`` is given, within [low, high]."""
        if name not in self.values:
            if default is None:
                self.fail(name, "missing required field")
            return default
        value = self.values[name]
        if type(value) is not int:  # bool is an int subclass; `version = true` is a mistake
            self.fail(name, f"expected {expected}, got {toml_type_name(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            self.fail(name, f"must be between {low} and {high}, got {value}")
        return value

    def number(self, name: str, *, default: float | None = None, expected: str = "a number") -> float:
        """A finite integer or float (never a boolean), required unless ``default`` is given."""
        if name not in self.values:
            if default is None:
                self.fail(name, "missing required field")
            return default
        value = self.values[name]
        # bool is an int subclass; `reminder_at = true` is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.fail(name, f"expected {expected}, got {toml_type_name(value)}")
        return float(value)

    def boolean(self, name: str, *, default: bool) -> bool:
        """``true`` or ``false``; ``default`` when absent."""
        value = self.values.get(name, default)
        if not isinstance(value, bool):
            self.fail(name, f"expected a boolean (true or false), got {toml_type_name(value)}")
        return value

    def parsed(self, name: str, parse: Callable[[str], _T], *, expected: str) -> _T:
        """A required string turned into a value by ``parse``; its ``ValueError`` becomes the message.

        ``expected`` describes the string (``a duration string such as "30s"``).
        """
        if name not in self.values:
            self.fail(name, f"missing required field ({expected})")
        value = self.values[name]
        if not isinstance(value, str):
            self.fail(name, f"expected {expected}, got {toml_type_name(value)}")
        try:
            return parse(value)
        except ValueError as exc:
            self.fail(name, str(exc))

    def choice(self, name: str, choices: Mapping[str, _T], *, what: str = "value") -> _T:
        """A required string that must be one of ``choices`` (its keys); returns the mapped value."""
        value = self.string(name)
        if value not in choices:
            self.fail(name, f"unknown {what} {value!r} (must be one of: {', '.join(choices)})")
        return choices[value]

    def instant(self, name: str) -> datetime | None:
        """An offset date-time in UTC, or None when absent; a local (naive) time is refused."""
        value = self.values.get(name)
        if value is None:
            return None
        if not isinstance(value, datetime):
            got = toml_type_name(value)
            self.fail(name, f"expected an offset date-time such as 2026-01-01T00:00:00Z, got {got}")
        if value.utcoffset() is None:
            # A local time means a different instant on every host; validity windows must not.
            self.fail(name, "naive date-time: add 'Z' or an offset such as +08:00")
        return value.astimezone(UTC)

    # -- arrays -------------------------------------------------------------------------------------

    def strings(
        self,
        name: str,
        *,
        required: bool = False,
        non_empty: bool = False,
        distinct: bool = False,
        expected: str = "an array of strings",
    ) -> tuple[str, ...]:
        """An array of strings; absent is ``()`` unless required.

        ``non_empty`` refuses ``[]`` (write nothing rather than an empty list), ``distinct``
        refuses an item listed twice.
        """
        if name not in self.values:
            if required:
                self.fail(name, "missing required field")
            return ()
        value = self.values[name]
        if not isinstance(value, list):
            self.fail(name, f"expected {expected}, got {toml_type_name(value)}")
        if non_empty and not value:
            hint = "list at least one" if required else "omit the field to allow any"
            self.fail(name, f"must not be empty ({hint})")
        seen: set[str] = set()
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.fail(f"{name}[{i}]", f"expected a string, got {toml_type_name(item)}")
            if distinct and item in seen:
                self.fail(f"{name}[{i}]", f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)

    # -- tables -------------------------------------------------------------------------------------

    def optional_table(self, name: str, *, expected: str = "a table") -> TomlTable | None:
        """The sub-table ``[name]``, or None when absent."""
        if name not in self.values:
            return None
        value = self.values[name]
        if not isinstance(value, dict):
            self.fail(name, f"expected {expected}, got {toml_type_name(value)}")
        return self._sub(self.at(name), value)

    def table(self, name: str) -> TomlTable:
        """The required sub-table ``[name]``."""
        found = self.optional_table(name)
        if found is None:
            self.fail(name, f"missing required table [{self.at(name)}]")
        return found

    def tables(self, name: str, *, required: bool = False) -> list[TomlTable]:
        """The array of tables ``[[name]]``, each named ``name[i]``; absent is ``[]`` unless required."""
        if name not in self.values:
            if required:
                self.fail(name, f"missing required [[{self.at(name)}]] tables")
            return []
        value = self.values[name]
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            self.fail(name, f"expected an array of tables [[{self.at(name)}]]")
        return [self._sub(f"{self.at(name)}[{i}]", item) for i, item in enumerate(value)]

    def items(self) -> list[tuple[str, object]]:
        """The raw fields of this table, in file order (for tables keyed by data, e.g. currencies)."""
        return list(self.values.items())
