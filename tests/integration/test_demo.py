"""The demo runs for real: embedded NATS, real keys, real signatures; the tampered copy is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agencies import DemoConfig, run_demo
from broker.protocol._embedded import EmbeddedNats, EmbeddedNatsConfig

pytestmark = pytest.mark.integration


async def test_demo_delivers_one_request_and_refuses_the_tampered_copy(tmp_path: Path) -> None:
    lines: list[str] = []
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path / "nats")) as server:
        report = await run_demo(
            DemoConfig(state_dir=tmp_path / "state", nats_url=server.url), say=lines.append
        )
    assert report.ok
    assert report.delivered
    assert report.recipient == "bank-icbc"
    assert report.tampered_refused == "DigestMismatchError"
    assert any("deduplicated: True" in line for line in lines)
    # Keys were generated on first run, private halves readable by the owner only.
    pems = list((tmp_path / "state" / "keys").rglob("*.pem"))
    assert pems
    assert all(p.stat().st_mode & 0o077 == 0 for p in pems)


def test_cli_demo_json_with_embedded_nats_leaves_no_server_behind(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "--state-dir", str(tmp_path / "state"), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["tampered_refused"] == "DigestMismatchError"
    leftovers = subprocess.run(
        ["pgrep", "-f", f"nats-server.*{tmp_path}"], capture_output=True, text=True, check=False
    )
    assert leftovers.stdout == ""
