"""An agency's key life cycle through real processes only: ``greenchannel keys`` on the agency's
host, ``greenchannel broker`` on the operator's, SIGHUP to pick up each directory change.

The bank generates its keys; the operator lists the bank in the directory and its public keys in
an overlay the broker reads (``--key-overlay``); the bank rotates, the operator applies the
rotation; the old key is revoked and, after SIGHUP, refused while the new one works. The broker
never holds a private key of an agency that made its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import nats
import nats.errors
import pytest
from nats.js.api import ConsumerInfo

from broker.protocol import (
    AGENCY_JS_API_PREFIX,
    INBOX_STREAM,
    KeyFileError,
    NatsError,
    SigningKey,
    connect,
    inbox_consumer,
    load_agency_signing_key,
    nats_settings_for,
)
from tests.integration.broker_world import token_refusal

pytestmark = pytest.mark.integration

DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
BANK = "bank-joining"
ENTRY = f"""
[[agency]]
id = "{BANK}"
kind = "bank"
name = "Joining Rural Commercial Bank"
region = "310115"
bank_prefixes = ["621799"]
duty_contact = "duty-desk@{BANK}"
"""


CARRIER = "carrier-joining"
CARRIER_ENTRY = f"""
[[agency]]
id = "{CARRIER}"
kind = "carrier"
name = "Joining Mobile"
region = "310115"
number_segments = ["+86199"]
duty_contact = "duty-desk@{CARRIER}"
"""


async def _carrier_inbox(nats_url: str, state: Path) -> ConsumerInfo:
    """Connect as the carrier (its seed from the operator's state) and read its inbox consumer
    through its account's import; raises until the server serves both."""
    settings = nats_settings_for(
        nats_url, state_dir=state, agency=CARRIER, name="joining-carrier", initial_connect_timeout=2.0
    )
    nc = await connect(settings)
    try:
        js = nc.jetstream(prefix=AGENCY_JS_API_PREFIX)
        info: ConsumerInfo = await js.consumer_info(INBOX_STREAM, inbox_consumer(CARRIER, "GREEN"))
        return info
    finally:
        await nc.close()


async def _until_connected(nats_url: str, state: Path, *, within: float = 20.0) -> ConsumerInfo:
    """Poll :func:`_carrier_inbox`, bounded: the seed file, the NATS user, the account's imports
    and the consumer appear in turn while the broker handles the reload."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        try:
            return await _carrier_inbox(nats_url, state)
        except (KeyFileError, NatsError, nats.errors.Error, OSError, TimeoutError):
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GREENCHANNEL_")}


def _cli(*argv: str | Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", *map(str, argv)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def _refusal(address: str, key: SigningKey) -> str | None:
    return await token_refusal(address, BANK, key)


async def _until(address: str, key: SigningKey, refusal: str | None, *, within: float = 20.0) -> None:
    """Poll until the broker answers ``key``'s token with ``refusal`` (None: accepts it), bounded."""
    deadline = asyncio.get_running_loop().time() + within
    while (got := await _refusal(address, key)) != refusal:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the broker still answers {got!r}, expected {refusal!r}")
        await asyncio.sleep(0.1)


async def test_generate_rotate_revoke_through_the_cli_reach_a_running_broker_on_sighup(
    tmp_path: Path,
) -> None:
    host, state = tmp_path / "bank-host", tmp_path / "operator-state"
    directory, overlay = tmp_path / "directory.toml", tmp_path / "operator-keys.toml"
    # On the bank's host: its keys; only the public overlay tables travel to the operator.
    tables = _cli("keys", "generate", "--agency", BANK, "--out", host, "--overlay")
    directory.write_text(DIRECTORY.read_text(encoding="utf-8") + ENTRY, encoding="utf-8")
    overlay.write_text(tables, encoding="utf-8")
    first = load_agency_signing_key(host, BANK)

    port = _free_port()
    broker = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "broker.cli", "--state-dir", str(state), "--directory", str(directory),
        "--log-level", "info", "--log-json",
        "broker", "--listen", f"127.0.0.1:{port}", "--key-overlay", str(overlay), "--directory-poll", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )  # fmt: skip
    assert broker.stdout is not None
    assert broker.stderr is not None
    events: list[dict[str, object]] = []

    async def read_logs(stream: asyncio.StreamReader) -> None:
        # Drained all along, so a chatty broker never blocks on a full pipe.
        while line := await stream.readline():
            if line.startswith(b"{"):
                events.append(json.loads(line))

    logs = asyncio.create_task(read_logs(broker.stderr))

    def reloads() -> list[dict[str, object]]:
        return [e for e in events if str(e["event"]).startswith("directory.")]

    address = f"127.0.0.1:{port}"
    try:
        line = await asyncio.wait_for(broker.stdout.readline(), 60)
        assert b"listening on" in line, line
        assert not (state / "keys" / BANK).exists()  # no broker-held key for a self-keyed agency
        assert await _refusal(address, first) is None

        # The bank rotates (the old key stays valid a day) and the operator applies it.
        _cli("keys", "rotate", "--agency", BANK, "--dir", host, "--write", overlay)
        second = load_agency_signing_key(host, BANK)
        assert second.kid != first.kid
        assert await _refusal(address, second) == "UNKNOWN_KEY"  # not yet: no reload asked for
        broker.send_signal(signal.SIGHUP)
        await _until(address, second, None)
        assert await _refusal(address, first) is None  # inside its overlap

        # The old key is revoked now; after SIGHUP it is refused, the new one still works.
        _cli("keys", "revoke", "--agency", BANK, f"--kid={first.kid}", "--dir", host, "--write", overlay)
        broker.send_signal(signal.SIGHUP)
        await _until(address, first, "REVOKED_KEY")
        assert await _refusal(address, second) is None

        # A carrier joins by a directory edit alone: after SIGHUP it has a NATS user on the
        # embedded server and its inbox consumers, without a restart.
        nats_url = line.decode().split("(NATS ", 1)[1].split(")", 1)[0]
        directory.write_text(directory.read_text(encoding="utf-8") + CARRIER_ENTRY, encoding="utf-8")
        broker.send_signal(signal.SIGHUP)
        info = await _until_connected(nats_url, state)
        assert info.config.filter_subject == f"gc.inbox.{CARRIER}.green.>"

        # A broken overlay edit is refused, naming file and field; the registry in force stays.
        overlay.write_text(overlay.read_text(encoding="utf-8") + "\n[[key]]\nagency = 1\n", encoding="utf-8")
        broker.send_signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + 20
        while len(reloads()) < 4:
            assert asyncio.get_running_loop().time() < deadline, reloads()
            await asyncio.sleep(0.05)
        assert [e["event"] for e in reloads()] == [
            "directory.reloaded",
            "directory.reloaded",
            "directory.reloaded",
            "directory.reload_failed",
        ]
        assert reloads()[2]["added"] == [CARRIER]
        failed = reloads()[-1]
        assert failed["file"] == str(overlay)
        assert str(failed["field"]).endswith(".agency")
        assert await _refusal(address, second) is None
        assert await _refusal(address, first) == "REVOKED_KEY"

        broker.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(broker.wait(), 30) == 0
    finally:
        if broker.returncode is None:
            broker.kill()
            await broker.wait()
        await logs
