"""Per-agency NATS users: seed files, permissions, the accounts block nats-server accepts."""

from __future__ import annotations

import json
import stat
import subprocess
from pathlib import Path

import pytest

from adapters import AdapterConfig
from agencies.demo import AgenciesConfig
from broker.embedded import find_nats_server
from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    BROKER_ACCOUNT,
    DEFAULT_INBOX_ACK_WAIT,
    KeyFileError,
    NatsSettings,
    agency_account,
    agency_permissions,
    ensure_nats_seeds,
    inbox_consumer_config,
    load_nats_public_key,
    nats_authorization,
    nats_seed_path,
    nats_settings_for,
    render_authorization_conf,
)


def test_seeds_are_private_files_created_once(tmp_path: Path) -> None:
    ensure_nats_seeds(tmp_path, ["bank-abc"])
    path = nats_seed_path(tmp_path, "bank-abc")
    first = path.read_bytes()
    assert first.startswith(b"SU")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert nats_seed_path(tmp_path, None).name == "_broker.nk"
    ensure_nats_seeds(tmp_path, ["bank-abc"])
    assert path.read_bytes() == first
    assert load_nats_public_key(path).startswith("U")
    assert not list(path.parent.glob(".*.tmp"))


def test_a_seed_others_can_read_is_refused(tmp_path: Path) -> None:
    ensure_nats_seeds(tmp_path, ["bank-abc"])
    path = nats_seed_path(tmp_path, "bank-abc")
    path.chmod(0o644)
    with pytest.raises(KeyFileError, match="readable by others"):
        load_nats_public_key(path)


def test_a_file_that_is_no_seed_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.nk"
    path.write_bytes(b"not a seed\n")
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match="not an nkey seed"):
        load_nats_public_key(path)


def test_an_agency_id_cannot_escape_the_key_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid agency id"):
        nats_seed_path(tmp_path, "../etc")


def test_agency_permissions_name_only_its_own_subjects() -> None:
    permissions = agency_permissions("bank-abc")
    assert set(permissions.subscribe) == {"_INBOX_bank-abc.>"}
    for subject in permissions.publish:
        assert "bank-abc" in subject, subject
        assert "CREATE" not in subject
        assert "DELETE" not in subject
    assert f"{AGENCY_JS_API_PREFIX}.CONSUMER.MSG.NEXT.GC_INBOX.inbox-bank-abc-green" in permissions.publish
    assert "gc.events.bank-abc.>" in permissions.publish
    assert "gc.deadletter.bank-abc" in permissions.publish
    assert not any(subject.startswith("gc.inbox.") for subject in permissions.publish)


def test_accounts_put_jetstream_with_the_broker_and_each_agency_alone(tmp_path: Path) -> None:
    accounts = nats_authorization(tmp_path, ["bank-abc", "carrier-cmcc"]).accounts_config()
    assert set(accounts) == {BROKER_ACCOUNT, agency_account("bank-abc"), agency_account("carrier-cmcc")}
    broker = accounts[BROKER_ACCOUNT]
    assert isinstance(broker, dict)
    assert broker["jetstream"] == "enabled"
    for export in broker["exports"]:
        (account,) = export["accounts"]
        agency = account.removeprefix("AGENCY_")
        assert agency in export["service"]
    agency = accounts[agency_account("bank-abc")]
    assert isinstance(agency, dict)
    assert "jetstream" not in agency
    assert all(i["service"]["account"] == BROKER_ACCOUNT for i in agency["imports"])


def test_the_rendered_block_is_a_valid_server_config(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    block = render_authorization_conf(nats_authorization(tmp_path, ["bank-abc", "police-310115"]))
    for owner in ("bank-abc", "police-310115", None):  # public keys only
        assert nats_seed_path(tmp_path, owner).read_text().strip() not in block
    conf.write_text(f'jetstream: {{store_dir: "{tmp_path / "js"}"}}\n{block}', encoding="utf-8")
    checked = subprocess.run(
        [str(find_nats_server()), "-t", "-c", str(conf)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    json.loads(block.split("\naccounts: ", 1)[1])


def test_settings_carry_the_seed_file_and_the_agency_inbox_prefix(tmp_path: Path) -> None:
    ensure_nats_seeds(tmp_path, ["bank-abc"])
    settings = nats_settings_for("nats://127.0.0.1:4222", state_dir=tmp_path, agency="bank-abc", name="x")
    assert settings.nkey_seed_file == nats_seed_path(tmp_path, "bank-abc")
    assert settings.inbox_prefix == "_INBOX_bank-abc"
    broker = nats_settings_for("nats://127.0.0.1:4222", state_dir=tmp_path, agency=None, name="x")
    assert broker.inbox_prefix is None


def test_settings_refuse_mixed_credentials_and_wildcard_prefixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nkey_seed_file excludes"):
        NatsSettings(servers=("nats://h:1",), nkey_seed_file=tmp_path / "a.nk", user="u", password="p")
    with pytest.raises(ValueError, match="inbox_prefix"):
        NatsSettings(servers=("nats://h:1",), inbox_prefix="_INBOX.>")


def test_a_crashed_adapters_green_order_comes_back_within_seconds_by_default(tmp_path: Path) -> None:
    """Issue 12: what a SIGKILLed adapter held waits out the inbox ack wait before redelivery. The
    broker's consumers, the adapter's own and the agencies command all use one short default, so
    a crashed adapter's GREEN order is delivered again within 3 s (the fault suite measures it)."""
    assert DEFAULT_INBOX_ACK_WAIT <= 2.0
    for lane in ("green", "standard"):
        assert inbox_consumer_config("bank-abc", lane).ack_wait == DEFAULT_INBOX_ACK_WAIT
    adapter = AdapterConfig(agency_id="bank-abc", agency_target="127.0.0.1:1", state_dir=tmp_path)
    assert adapter.ack_wait == DEFAULT_INBOX_ACK_WAIT
    fleet = AgenciesConfig(keys_dir=tmp_path, data_dir=tmp_path, directory=tmp_path, nats_url="nats://x:1")
    assert fleet.ack_wait == DEFAULT_INBOX_ACK_WAIT
    # Three heartbeats per ack wait: one may be late or lost before the message would go back.
    assert adapter.heartbeat_interval == pytest.approx(DEFAULT_INBOX_ACK_WAIT / 3)
