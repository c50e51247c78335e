"""The ``greenchannel`` command line as a child process, against a stack this test's loop runs."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

__all__ = ["cli_env", "run_cli"]


def cli_env() -> dict[str, str]:
    """This environment without the NATS URL and broker address (a child's options name them)."""
    return {k: v for k, v in os.environ.items() if k not in ("GREENCHANNEL_NATS_URL", "GREENCHANNEL_BROKER")}


async def run_cli(broker: str, state_dir: Path, *args: str, cwd: Path | None = None) -> tuple[int, str, str]:
    """``greenchannel --state-dir STATE_DIR ARGS --broker BROKER``: exit status, stdout, stderr.

    Awaited, so the loop goes on serving the stack meanwhile; the environment's NATS URL and broker
    address are dropped (the options name them)."""
    env = cli_env()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        "--state-dir",
        str(state_dir),
        *args,
        "--broker",
        broker,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()
