"""The one TOML-file checker: every error names the file and the field path, in the loader's class."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.protocol import TomlTable, read_toml


class ConfigError(Exception):
    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.file = file
        self.field = field


def _root(tmp_path: Path, text: str) -> TomlTable:
    path = tmp_path / "adapter.toml"
    path.write_text(text)
    return read_toml(path, ConfigError)


def test_nested_arrays_of_tables_name_their_path(tmp_path: Path) -> None:
    root = _root(tmp_path, '[[agency]]\nid = "a"\n[[agency]]\nid = "b"\n[[agency.key]]\nkid = 7\n')
    agencies = root.tables("agency")
    assert [agency.string("id") for agency in agencies] == ["a", "b"]
    key = agencies[1].tables("key")[0]
    with pytest.raises(ConfigError, match="expected a string, got an integer") as caught:
        key.string("kid")
    assert caught.value.field == "agency[1].key[0].kid"
    assert caught.value.file == str(tmp_path / "adapter.toml")


def test_unknown_field_is_refused_with_the_allowed_ones(tmp_path: Path) -> None:
    adapter = _root(tmp_path, "[adapter]\nconcurency = 4\n").table("adapter")
    with pytest.raises(
        ConfigError, match=r"unknown field \(expected one of: agency, concurrency\)"
    ) as caught:
        adapter.only({"agency", "concurrency"})
    assert caught.value.field == "adapter.concurency"


def test_required_optional_defaults_ranges_and_patterns(tmp_path: Path) -> None:
    root = _root(tmp_path, 'agency = "Bank!"\nconcurrency = 0\nflag = 1\n')
    assert root.integer("ack_wait", default=30) == 30
    assert root.optional_string("nats_url") is None
    assert root.optional_table("tls") is None
    assert root.tables("key") == []
    with pytest.raises(ConfigError, match="missing required field") as caught:
        root.string("nats_url")
    assert caught.value.field == "nats_url"
    with pytest.raises(ConfigError, match="must be between 1 and 64, got 0"):
        root.integer("concurrency", low=1, high=64)
    with pytest.raises(ConfigError, match="must be an agency id"):
        root.string("agency", pattern=re.compile(r"[a-z0-9-]+"), mismatch="must be an agency id")
    with pytest.raises(ConfigError, match=r"expected a boolean \(true or false\), got an integer"):
        root.boolean("flag", default=False)
    with pytest.raises(ConfigError, match=r"missing required table \[tls\]"):
        root.table("tls")


def test_unreadable_and_malformed_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match="cannot read file") as caught:
        read_toml(missing, ConfigError)
    assert caught.value.file == str(missing)
    assert caught.value.field is None
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"a = 1\n# \xff\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_toml(bad, ConfigError)
    bad.write_text("a = 1\nb = = 2\n")
    with pytest.raises(ConfigError, match=r"not valid TOML: .*line 2"):
        read_toml(bad, ConfigError)


def test_parsed_turns_value_errors_into_field_errors(tmp_path: Path) -> None:
    root = _root(tmp_path, 'wait = "soon"\n')

    def seconds(text: str) -> int:
        if not text.endswith("s"):
            raise ValueError(f"{text!r} is not a number of seconds")
        return int(text[:-1])

    with pytest.raises(ConfigError, match="'soon' is not a number of seconds") as caught:
        root.parsed("wait", seconds, expected='seconds such as "30s"')
    assert caught.value.field == "wait"
