"""`greenchannel broker` as people run it: a real process with embedded NATS, health, clean stop."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _broker(state_dir: Path, port: int, *options: str) -> Iterator[subprocess.Popen[bytes]]:
    """``greenchannel broker`` with embedded NATS on ``port``; SIGTERM must stop it with 0."""
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "--state-dir", str(state_dir), "broker",
         "--listen", f"127.0.0.1:{port}", *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        yield process
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_broker_command_serves_health_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    with _broker(tmp_path, port) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert b"listening on 127.0.0.1:" in line, line
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="greenchannel.v1.BusService"), timeout=5
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    # The embedded nats-server it started is gone with it.
    leftovers = subprocess.run(["pgrep", "-f", f"nats-server.*{tmp_path}"], capture_output=True, check=False)
    assert leftovers.stdout == b""
    assert (tmp_path / "nats").is_dir()


def test_broker_json_prints_its_status_as_a_json_object(tmp_path: Path) -> None:
    port = _free_port()
    with _broker(tmp_path, port, "--json") as process:
        assert process.stdout is not None
        status = json.loads(process.stdout.readline())
        assert status["event"] == "broker.listening"
        assert status["address"] == f"127.0.0.1:{port}"
        assert status["embedded_nats"] is True
        assert status["nats"].startswith("nats://")
