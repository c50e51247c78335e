"""A duty officer's actions on a hold, from the command line only: a real stack (NATS, broker, the
reference bank behind its adapter), the CLI as a child process.

The police stop money on the story's fraud account, extend the hold (``submit extend``), convert
it into a freeze (``submit freeze --converts``), and ``list --case`` shows the whole case with its
states. Each command exits 0 because what it asked for happened.

One stack for the module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from agencies import _seed as seed
from agencies.demo import Stack
from tests.integration.cli_child import run_cli
from tests.integration.stack_config import quick_stack_config

pytestmark = pytest.mark.integration

POLICE = "police-310115"
CASE = "SH-PD-2026-1203-0100"
ACCOUNT = ["--account", seed.FRAUD_ACCOUNT, "--name", seed.FRAUD_HOLDER]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Stack, Path]]:
    root = tmp_path_factory.mktemp("cli-duty")
    config = quick_stack_config(root / "keys", root / "data")
    async with Stack(config) as running:
        yield running, root / "keys"


async def cli_json(stack: tuple[Stack, Path], *args: str) -> dict[str, Any]:
    running, state_dir = stack
    exited, out, err = await run_cli(running.broker_address, state_dir, *args, "--json")
    assert exited == 0, (exited, out, err)
    document = json.loads(out)
    assert isinstance(document, dict), out
    return document


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_stop_extend_convert_and_list_the_case(stack: tuple[Stack, Path]) -> None:
    common = ["--as", POLICE, "--case", CASE]
    stop = await cli_json(stack, "submit", "stop-payment", *common, *ACCOUNT, "--amount", "480.00", "--wait")
    assert stop["state"] == "EXECUTED", stop
    first_expiry = _instant(stop["status"]["deadlines"]["hold_expires_at"])

    extended = await cli_json(
        stack, "submit", "extend", *common, "--target", stop["id"], *ACCOUNT, "--hours", "24", "--wait"
    )
    assert extended["state"] == "EXECUTED", extended
    assert extended["target_id"] == stop["id"]
    hold = await cli_json(stack, "status", stop["id"], "--as", POLICE)
    assert hold["state"] == "EXTENDED"
    assert _instant(hold["status"]["deadlines"]["hold_expires_at"]) > first_expiry

    frozen = await cli_json(
        stack, "submit", "freeze", *common, *ACCOUNT, "--amount", "480.00", "--converts", stop["id"], "--wait"
    )
    assert frozen["state"] in ("EXECUTED", "PARTIALLY_EXECUTED"), frozen
    assert frozen["target_id"] == stop["id"]

    case = await cli_json(stack, "list", "--as", POLICE, "--case", CASE)
    assert [(r["id"], r["type"]) for r in case["requests"]] == [
        (frozen["id"], "FREEZE"),
        (extended["id"], "EXTEND"),
        (stop["id"], "STOP_PAYMENT"),
    ]
    assert (await cli_json(stack, "list", "--as", POLICE, "--case", CASE, "--open"))["requests"] == []
