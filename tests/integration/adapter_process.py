"""Processes as an operator and an agency run them: ``greenchannel broker`` and ``greenchannel adapter``.

The broker process starts its embedded nats-server with per-agency NATS users and generates every
key in its state directory; an agency's ``adapter.toml`` then points at that agency's private keys
and NATS seed there, and at the public directory plus the key overlay, as an agency would be
handed them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from broker.protocol import (
    encryption_kid,
    key_overlay_path,
    load_agency_encryption_keys,
    load_agency_signing_key,
    nats_seed_path,
)

REPO = Path(__file__).resolve().parents[2]
DIRECTORY = REPO / "agencies" / "directory.toml"
_BROKER_LINE = re.compile(rb"listening on (?P<address>\S+) \(NATS (?P<nats>\S+)\)")
_METRICS_LINE = re.compile(rb"metrics on http://(?P<address>\S+)/metrics")
_READY_TIMEOUT = 90.0  # bounds a start that never comes; not a timing assertion


@dataclass(frozen=True)
class BrokerProcess:
    state_dir: Path
    address: str
    nats_url: str
    metrics_address: str | None = None


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GREENCHANNEL_")}


async def _stop(process: asyncio.subprocess.Process) -> int:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 60)
        except TimeoutError:
            process.kill()
            return await process.wait()
    return process.returncode


@contextlib.asynccontextmanager
async def broker_process(state_dir: Path, *, metrics: bool = False) -> AsyncIterator[BrokerProcess]:
    """``greenchannel broker`` on a free port with embedded NATS; stopped with SIGTERM after.

    ``metrics``: with ``--metrics-listen`` on a free port too (``metrics_address``)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        "--state-dir",
        str(state_dir),
        "broker",
        "--listen",
        "127.0.0.1:0",
        *(["--metrics-listen", "127.0.0.1:0"] if metrics else []),
        stdout=asyncio.subprocess.PIPE,
        env=_env(),
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT)
        match = _BROKER_LINE.search(line)
        assert match is not None, f"broker did not start: {line!r}"
        served = _METRICS_LINE.search(line)
        yield BrokerProcess(
            state_dir,
            match["address"].decode(),
            match["nats"].decode(),
            served["address"].decode() if served else None,
        )
    finally:
        assert await _stop(process) == 0


def key_file(state_dir: Path, agency: str, kid: str) -> Path:
    return state_dir / "keys" / agency / f"{kid}.pem"


def adapter_toml(
    broker: BrokerProcess,
    agency: str,
    *,
    target: str,
    journal: Path,
    health: bool = True,
    tls: dict[str, Path] | None = None,
    ack_wait: float | None = None,
    metrics: bool = False,
) -> str:
    """An agency's adapter.toml pointing at its keys in the broker's state directory.

    ``tls`` (``ca``, and ``cert`` / ``key`` for mTLS) becomes ``[service.tls]``; without it the
    agency's system is reached in plaintext on this host.
    """
    state = broker.state_dir
    signing = key_file(state, agency, load_agency_signing_key(state, agency).kid)
    encryption = [
        key_file(state, agency, encryption_kid(k)) for k in load_agency_encryption_keys(state, agency)
    ]
    health_table = '\n[health]\nlisten = "127.0.0.1:0"\n' if health else ""
    if metrics:
        health_table += '\n[metrics]\nlisten = "127.0.0.1:0"\ninterval = 0.2\n'
    if tls is None:
        transport = "allow_plaintext = true\n"
    else:
        transport = "\n[service.tls]\n" + "".join(f"{k} = {json.dumps(str(v))}\n" for k, v in tls.items())
    return f"""\
[agency]
id = "{agency}"
signing_key = {json.dumps(str(signing))}
encryption_keys = {json.dumps([str(p) for p in encryption])}

[registry]
directory = {json.dumps(str(DIRECTORY))}
key_overlays = [{json.dumps(str(key_overlay_path(state)))}]

[nats]
url = "{broker.nats_url}"
nkey_seed = {json.dumps(str(nats_seed_path(state, agency)))}

[service]
target = "{target}"
{transport}
[adapter]
journal_dir = {json.dumps(str(journal))}
{f"ack_wait = {ack_wait}" if ack_wait is not None else ""}
{health_table}"""


@dataclass
class AdapterProcess:
    process: asyncio.subprocess.Process
    ready_line: str
    log: Path

    @property
    def metrics_address(self) -> str:
        match = re.search(r"metrics on http://(\S+)/metrics", self.ready_line)
        assert match is not None, self.ready_line
        return match[1]

    @property
    def health_address(self) -> str:
        match = re.search(r"health on (\S+);", self.ready_line)
        assert match is not None, self.ready_line
        return match[1]

    async def stop(self) -> int:
        """SIGTERM, then its exit status."""
        return await _stop(self.process)


@contextlib.asynccontextmanager
async def adapter_process(config: Path) -> AsyncIterator[AdapterProcess]:
    """``greenchannel adapter --config FILE``, ready once it printed its online line.

    Its logs go to ``adapter.log`` beside the file (a pipe nobody reads could fill and block it).
    """
    log = config.with_name("adapter.log")
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "broker.cli",
            "adapter",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            env=_env(),
        )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), _READY_TIMEOUT)).decode()
        if "online" not in line:
            await process.wait()
            raise AssertionError(f"adapter did not start: {line!r} {log.read_text()[-2000:]}")
        yield AdapterProcess(process, line, log)
    finally:
        await _stop(process)
