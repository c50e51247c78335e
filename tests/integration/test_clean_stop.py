"""`greenchannel broker`, `agencies` and `adapter` stop cleanly on SIGTERM while their NATS is down.

Real processes: the broker with its embedded nats-server, the agencies command against that
server. The nats-server is SIGKILLed, each process is told to stop once it has noticed, and it
must exit 0, without a traceback, saying in one line that NATS was unreachable. The bound on
the exit is generous (a stop that hangs is the failure, not a slow one).
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agencies import build_reference_agency
from broker.cli._agencies import READY_PREFIX
from broker.protocol import SystemClock, key_overlay_path, load_directory

from .adapter_process import DIRECTORY, adapter_process, adapter_toml, broker_process
from .broker_world import BANK

pytestmark = pytest.mark.integration

BROKER_READY = "greenchannel broker listening on "
STOP_BOUND = 15.0  # seconds; generous on purpose
START_BOUND = 60.0


def _env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    env.update(overrides)
    return env


@contextmanager
def _process(argv: list[str], *, env: dict[str, str], stderr: Path) -> Iterator[subprocess.Popen[bytes]]:
    with stderr.open("w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", *argv],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _ready(process: subprocess.Popen[bytes], prefix: str) -> str:
    """The process's ready line (its first line on stdout that starts with ``prefix``)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + START_BOUND
    buffered = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.2)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"exited with {process.wait()} before it was ready: {buffered!r}")
            buffered += chunk
        for line in buffered.decode(errors="replace").splitlines():
            if line.startswith(prefix):
                return line
    raise AssertionError(f"not ready within {START_BOUND}s: {buffered!r}")


def _wait_for_text(path: Path, text: str) -> None:
    deadline = time.monotonic() + START_BOUND
    while time.monotonic() < deadline:
        if text in path.read_text():
            return
        time.sleep(0.1)  # polling a log file for a condition, bounded by START_BOUND
    raise AssertionError(f"{text!r} not in {path.name} within {START_BOUND}s:\n{path.read_text()}")


def _kill_nats(state_dir: Path) -> None:
    """SIGKILL the broker's embedded nats-server (found by its store under ``state_dir``)."""
    found = subprocess.run(
        ["pgrep", "-f", f"nats-server.*{state_dir}"], capture_output=True, text=True, check=False
    )
    pids = [int(pid) for pid in found.stdout.split()]
    assert len(pids) == 1, found.stdout
    os.kill(pids[0], signal.SIGKILL)


def _stops_cleanly(process: subprocess.Popen[bytes], stderr: Path, line: str) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=STOP_BOUND) == 0, stderr.read_text()
    log = stderr.read_text()
    assert "Traceback" not in log, log
    assert re.search(line, log), log


def test_the_broker_stops_cleanly_while_its_nats_is_down(tmp_path: Path) -> None:
    stderr = tmp_path / "broker.err"
    argv = ["--state-dir", str(tmp_path), "broker", "--listen", "127.0.0.1:0"]
    with _process(argv, env=_env(), stderr=stderr) as broker:
        _ready(broker, BROKER_READY)
        _kill_nats(tmp_path)
        _wait_for_text(stderr, "nats.disconnected")
        _stops_cleanly(broker, stderr, r"broker\.stopped\s+nats=unreachable")


def test_the_agencies_stop_cleanly_while_their_nats_is_down(tmp_path: Path) -> None:
    broker_err, agencies_err = tmp_path / "broker.err", tmp_path / "agencies.err"
    argv = ["--state-dir", str(tmp_path), "broker", "--listen", "127.0.0.1:0"]
    with _process(argv, env=_env(), stderr=broker_err) as broker:
        url = re.search(r"\(NATS (\S+)\)", _ready(broker, BROKER_READY))
        assert url is not None
        agencies_argv = ["--state-dir", str(tmp_path), "agencies", "--only", "bank-icbc,carrier-cmcc"]
        env = _env(GREENCHANNEL_NATS_URL=url.group(1))
        with _process(agencies_argv, env=env, stderr=agencies_err) as agencies:
            _ready(agencies, READY_PREFIX)
            _kill_nats(tmp_path)
            _wait_for_text(agencies_err, "nats.disconnected")
            _stops_cleanly(agencies, agencies_err, r"agencies\.stopped\s+.*nats=unreachable")
        _wait_for_text(broker_err, "nats.disconnected")
        _stops_cleanly(broker, broker_err, r"broker\.stopped\s+nats=unreachable")


async def test_the_adapter_command_stops_cleanly_while_its_nats_is_down(tmp_path: Path) -> None:
    """``greenchannel adapter --config``: its NATS (the broker's embedded server) killed, then SIGTERM."""
    async with broker_process(tmp_path / "operator") as broker:
        registry = load_directory(DIRECTORY, key_overlays=[key_overlay_path(broker.state_dir)])
        with build_reference_agency(registry.get(BANK), data_dir=tmp_path, clock=SystemClock()) as bank:
            async with bank.server() as server:
                config = tmp_path / "bank" / "adapter.toml"
                config.parent.mkdir()
                config.write_text(
                    adapter_toml(broker, BANK, target=server.address, journal=tmp_path / "bank" / "journal")
                )
                async with adapter_process(config) as adapter:
                    _kill_nats(broker.state_dir)
                    await asyncio.to_thread(_wait_for_text, adapter.log, "nats.disconnected")
                    assert await asyncio.wait_for(adapter.stop(), STOP_BOUND) == 0, adapter.log.read_text()
                    log = adapter.log.read_text()
                    assert "Traceback" not in log, log
                    assert re.search(r"adapter\.nats_not_drained\s+.*nats=unreachable", log), log


def test_up_stops_cleanly_while_its_nats_is_down(tmp_path: Path) -> None:
    """``greenchannel up``: broker and agencies in one process, its embedded nats-server killed."""
    stderr = tmp_path / "up.err"
    with _process(
        ["--state-dir", str(tmp_path), "up", "--listen", "127.0.0.1:0"], env=_env(), stderr=stderr
    ) as up:
        _ready(up, "greenchannel up: broker on ")
        _kill_nats(tmp_path)
        _wait_for_text(stderr, "nats.disconnected")
        _stops_cleanly(up, stderr, r"broker\.stopped\s+nats=unreachable")
