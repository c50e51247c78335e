"""The Node.js example (examples/node) as the tests run it: packages installed, the bank as a process.

Shared by the tests that drive the example through the bus (test_node_example.py) and the ones
that certify its bank with the conformance kit (test_conformance.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

__all__ = ["EXAMPLE", "LINE_TIMEOUT", "NODE", "installed_node_example", "node_bank"]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "node"
NODE = shutil.which("node")
NPM = shutil.which("npm")
LINE_TIMEOUT = 120.0
"""Bounds a Node process that never answers; not a timing assertion."""


def installed_node_example() -> Path:
    """examples/node with its packages installed (``npm ci`` from the lock file when missing).

    Skips the calling test, saying why, only when node or npm is absent.
    """
    if NODE is None or NPM is None:
        pytest.skip("node and npm are not installed: the Node.js example cannot run")
    if not (EXAMPLE / "node_modules").is_dir():
        done = subprocess.run(
            [NPM, "ci", "--no-audit", "--no-fund"], cwd=EXAMPLE, capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, f"npm ci failed:\n{done.stderr[-3000:]}"
    return EXAMPLE


@contextlib.asynccontextmanager
async def node_bank(example: Path, *args: str) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """``node bank.js --listen 127.0.0.1:0 ARGS``: its address once serving, and the process.

    The process's stdout stays readable: one JSON line per order it answered.
    """
    assert NODE is not None
    bank = await asyncio.create_subprocess_exec(
        NODE, "bank.js", "--listen", "127.0.0.1:0", *args, cwd=example, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert bank.stdout is not None
        line = await asyncio.wait_for(bank.stdout.readline(), LINE_TIMEOUT)
        yield json.loads(line)["listening"], bank
    finally:
        if bank.returncode is None:
            bank.terminate()
            await bank.wait()
