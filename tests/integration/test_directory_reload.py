"""The broker picks up directory changes without a restart: real broker, real NATS, real clients.

A copy of the sample directory is edited while the broker runs; the broker notices (polling the
files, or ``reload_directory`` as SIGHUP calls it) and swaps its registry whole, or keeps the old
one when the edit does not load.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from greenchannel.v1 import common_pb2, results_pb2
from structlog.testing import capture_logs

from broker.hub import Broker, DirectoryReloadConfig
from broker.protocol import (
    KeyFileError,
    SigningKey,
    SystemClock,
    agency_keys,
    generate_agency_keys,
    load_agency_signing_key,
    merge_into_overlay,
    render_key_tables,
    revoke_key,
)
from tests.integration.broker_world import BANK, DIRECTORY, POLICE, broker_world, stop_payment, token_refusal

pytestmark = pytest.mark.integration

NEW_BANK = "bank-joining"
NEW_PREFIX = "621799"
NEW_ACCOUNT = f"{NEW_PREFIX}0000012345"
FAST_POLL = DirectoryReloadConfig(poll_interval=0.05)
NO_POLL = DirectoryReloadConfig(poll_interval=None)

NEW_AGENCY = f"""
[[agency]]
id = "{NEW_BANK}"
kind = "bank"
name = "Joining Rural Commercial Bank"
region = "310115"
bank_prefixes = ["{NEW_PREFIX}"]
duty_contact = "duty-desk@{NEW_BANK}"
"""


def _copy_directory(tmp_path: Path) -> Path:
    path = tmp_path / "directory.toml"
    shutil.copyfile(DIRECTORY, path)
    return path


def _joining_bank(tmp_path: Path) -> Path:
    """The new bank makes its keys on its own host, as `greenchannel keys generate` does."""
    host = tmp_path / "joining-bank-host"
    generate_agency_keys(host, NEW_BANK, clock=SystemClock())
    return host


async def _refusal(broker: Broker, agency: str, key: SigningKey | Path) -> str | None:
    """Why the broker refuses ``agency``'s token signed with ``key`` (or the newest key in that
    state directory); None if it accepts it."""
    if isinstance(key, Path):
        key = load_agency_signing_key(key, agency)
    return await token_refusal(broker.address, agency, key)


async def _eventually(check: Callable[[], bool], what: str, *, within: float = 10.0) -> None:
    """Poll ``check`` until it holds, bounded; no fixed sleep stands in for a condition."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def test_a_new_agency_is_accepted_after_an_edit_while_a_request_is_in_flight(tmp_path: Path) -> None:
    directory = _copy_directory(tmp_path)
    host = _joining_bank(tmp_path)
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(directory=directory, reload=FAST_POLL)
        assert await _refusal(broker, NEW_BANK, host) == "UNKNOWN_AGENCY"

        # A request in flight: submitted, delivered, and watched over one open stream.
        async with world.client(broker) as police:
            accepted = await police.submit(stop_payment())
            [opened] = await world.inbox(BANK)
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_DELIVERED)
            seen: list[int] = []
            delivered = asyncio.Event()

            async def follow() -> None:
                async for update in police.watch(request_id=accepted.status.id):
                    seen.append(update.state)
                    if update.state == common_pb2.REQUEST_STATE_DELIVERED:
                        delivered.set()
                    if update.state == common_pb2.REQUEST_STATE_EXECUTED:
                        return

            watching = asyncio.create_task(follow())
            await asyncio.wait_for(delivered.wait(), 10)

            # The operator adds the agency with the public keys it handed over; no restart.
            keys = render_key_tables(NEW_BANK, agency_keys(host, NEW_BANK))
            with capture_logs() as logs:
                with directory.open("a", encoding="utf-8") as out:
                    out.write(NEW_AGENCY + "\n" + keys)
                await _eventually(
                    lambda: any(e["event"] == "directory.reloaded" for e in logs), "directory.reloaded"
                )
            reloaded = next(e for e in logs if e["event"] == "directory.reloaded")
            assert reloaded["added"] == [NEW_BANK]
            assert reloaded["removed"] == []
            assert reloaded["agencies"] == len(world.registry) + 1
            assert await _refusal(broker, NEW_BANK, host) is None

            # Routing follows the new directory: its accounts now go to it.
            routed = await police.submit(stop_payment(account=NEW_ACCOUNT, case_number="SH-PD-2026-0002"))
            assert routed.status.recipient == NEW_BANK

            # The request in flight before the reload completes as if nothing happened.
            await world.adapter_event(opened, common_pb2.REQUEST_STATE_ACKNOWLEDGED)
            await world.adapter_event(
                opened,
                common_pb2.REQUEST_STATE_EXECUTED,
                result=results_pb2.Result(
                    outcome=common_pb2.REQUEST_STATE_EXECUTED,
                    amount_held=common_pb2.Money(currency="CNY", minor_units=4_800_000),
                    agency_reference="HOLD-1",
                ),
            )
            await asyncio.wait_for(watching, 10)
        assert seen == [
            common_pb2.REQUEST_STATE_SUBMITTED,
            common_pb2.REQUEST_STATE_DELIVERED,
            common_pb2.REQUEST_STATE_ACKNOWLEDGED,
            common_pb2.REQUEST_STATE_EXECUTED,
        ]


async def test_a_revoked_key_is_refused_after_reload(tmp_path: Path) -> None:
    host = _joining_bank(tmp_path)
    directory = _copy_directory(tmp_path)
    with directory.open("a", encoding="utf-8") as out:
        out.write(NEW_AGENCY)
    operator_overlay = tmp_path / "operator-keys.toml"
    merge_into_overlay(operator_overlay, NEW_BANK, agency_keys(host, NEW_BANK))
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(
            directory=directory, key_overlays=(operator_overlay,), reload=NO_POLL
        )
        assert await _refusal(broker, NEW_BANK, host) is None
        assert await _refusal(broker, POLICE, world.state_dir) is None

        # The bank's signing key is compromised: it records the revocation on its host, the
        # operator applies it to the overlay the broker reads, and SIGHUP's reload picks it up.
        bank_key = load_agency_signing_key(host, NEW_BANK)
        kid = bank_key.kid
        at = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
        revoke_key(host, NEW_BANK, kid, at=at)
        merge_into_overlay(
            operator_overlay, NEW_BANK, [k for k in agency_keys(host, NEW_BANK) if k.kid == kid]
        )
        # The demo-style state overlay is watched as well: revoke the police key there too.
        police_key = world.key(POLICE)
        revoke_key(world.state_dir, POLICE, police_key.kid, at=at)
        # Nothing changes until the reload: the broker holds the registry it loaded.
        assert await _refusal(broker, NEW_BANK, bank_key) is None

        assert await broker.reload_directory() is True
        assert await _refusal(broker, NEW_BANK, bank_key) == "REVOKED_KEY"
        assert await _refusal(broker, POLICE, police_key) == "REVOKED_KEY"
        assert await _refusal(broker, BANK, world.state_dir) is None
        with pytest.raises(KeyFileError, match="no usable sig key"):
            # The bank's own loader no longer offers the revoked key either.
            load_agency_signing_key(host, NEW_BANK)


async def test_a_broken_edit_is_refused_and_the_old_registry_kept(tmp_path: Path) -> None:
    directory = _copy_directory(tmp_path)
    original = directory.read_text(encoding="utf-8")
    async with broker_world(tmp_path) as world:
        broker = await world.start_broker(directory=directory, reload=FAST_POLL)
        agencies = len(world.registry)

        # A field that does not validate: the log names the file and the field.
        with capture_logs() as logs:
            directory.write_text(original + NEW_AGENCY.replace('"310115"', '"31"'), encoding="utf-8")
            await _eventually(
                lambda: any(e["event"] == "directory.reload_failed" for e in logs), "directory.reload_failed"
            )
        failed = next(e for e in logs if e["event"] == "directory.reload_failed")
        assert failed["file"] == str(directory)
        assert failed["field"] == f"agency[{agencies}].region"
        assert failed["log_level"] == "error"
        assert not any(e["event"] == "directory.reloaded" for e in logs)
        assert await _refusal(broker, POLICE, world.state_dir) is None
        async with world.client(broker) as police:
            assert (await police.submit(stop_payment())).status.recipient == BANK

        # Not even TOML: refused the same way, through the explicit reload (SIGHUP).
        directory.write_text(original + "[[agency]\n", encoding="utf-8")
        with capture_logs() as logs:
            assert await broker.reload_directory() is False
        [failed] = [e for e in logs if e["event"] == "directory.reload_failed"]
        assert failed["file"] == str(directory)
        assert "invalid TOML" in failed["error"]
        assert await _refusal(broker, POLICE, world.state_dir) is None

        # Fixed: the next reload goes through.
        directory.write_text(original, encoding="utf-8")
        assert await broker.reload_directory() is True
