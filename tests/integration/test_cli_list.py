"""``greenchannel list`` and ``greenchannel cancel`` end to end: the real command line, as a child
process, against a real broker and NATS (``broker_world``), with the bank played by hand so that a
request stays open for as long as the test needs.

The police submit three requests through the CLI: a green stop-payment and a standard freeze in one
case, a green stop-payment in another, which the bank answers. ``list --open`` shows the two still
waiting; the filters, paging and "about to breach" narrow it; ``cancel`` withdraws one, which then
leaves the open list, and the broker's refusals (answered already, not the sender) exit 1.

One broker for the module; the checks run in order on the same requests.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, results_pb2

from tests.integration.broker_world import BANK, FRAUD_ACCOUNT, POLICE, World, broker_world
from tests.integration.cli_child import run_cli

pytestmark = pytest.mark.integration

CASE = "SH-PD-2026-1203-0001"
OTHER_CASE = "SH-PD-2026-1203-0002"
EXECUTED = results_pb2.Result(
    outcome=common_pb2.REQUEST_STATE_EXECUTED,
    amount_held=common_pb2.Money(currency="CNY", minor_units=48_000),
    agency_reference="HOLD-LIST-1",
)


@dataclass
class Desk:
    world: World
    broker: str
    ids: dict[str, str] = field(default_factory=dict)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def desk(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Desk]:
    async with broker_world(tmp_path_factory.mktemp("cli-list")) as world:
        broker = await world.start_broker()
        yield Desk(world=world, broker=broker.address)


async def cli(desk: Desk, *args: str) -> tuple[int, str, str]:
    return await run_cli(desk.broker, desk.world.state_dir, *args)


async def cli_json(desk: Desk, *args: str, code: int = 0) -> dict[str, Any]:
    """``greenchannel ARGS --json`` exiting ``code``; its stdout is exactly one JSON object."""
    exited, out, err = await cli(desk, *args, "--json")
    assert exited == code, (exited, out, err)
    document = json.loads(out)
    assert isinstance(document, dict), out
    return document


async def listed(desk: Desk, *args: str, agency: str = POLICE) -> list[dict[str, Any]]:
    document = await cli_json(desk, "list", "--as", agency, *args)
    requests: list[dict[str, Any]] = document["requests"]
    return requests


def _hold(kind: str, case: str, priority: str) -> list[str]:
    return [
        "submit", kind, "--as", POLICE, "--case", case, "--priority", priority,
        "--account", FRAUD_ACCOUNT, "--name", "李某", "--amount", "480.00",
    ]  # fmt: skip


async def test_list_open_shows_what_waits_and_not_what_was_answered(desk: Desk) -> None:
    for name, argv in (
        ("green", _hold("stop-payment", CASE, "green")),
        ("standard", _hold("freeze", CASE, "standard")),
        ("answered", _hold("stop-payment", OTHER_CASE, "green")),
    ):
        desk.ids[name] = (await cli_json(desk, *argv))["id"]
    # The bank answers one of them; the other two wait.
    [opened] = [o for o in await desk.world.inbox(BANK) if o.header.id == desk.ids["answered"]]
    for state in (common_pb2.REQUEST_STATE_DELIVERED, common_pb2.REQUEST_STATE_ACKNOWLEDGED):
        await desk.world.adapter_event(opened, state)
    await desk.world.adapter_event(opened, common_pb2.REQUEST_STATE_EXECUTED, result=EXECUTED)
    async with desk.world.client(desk.world.brokers[0]) as police:
        await police.wait_for(desk.ids["answered"], {common_pb2.REQUEST_STATE_EXECUTED})

    everything = await listed(desk)
    # Newest first, as List returns them.
    assert [r["id"] for r in everything] == [desk.ids["answered"], desk.ids["standard"], desk.ids["green"]]
    assert everything[0]["state"] == "EXECUTED"
    assert everything[0]["next_deadline"] is None  # nothing more is due from the bank

    waiting = await listed(desk, "--open")
    assert [r["id"] for r in waiting] == [desk.ids["standard"], desk.ids["green"]]
    for row in waiting:
        assert row["state"] == "SUBMITTED"
        assert (row["sender"], row["recipient"], row["case_number"]) == (POLICE, BANK, CASE)
        assert row["next_deadline"] is not None
    by_id = {r["id"]: r for r in waiting}
    # Nobody delivered them: a standard request's next deadline is its delivery, due in the hour
    # (a green one's 30 s may have passed on a slow machine, then its next is acknowledgement).
    assert by_id[desk.ids["standard"]]["next_deadline"]["phase"] == "deliver"
    assert (by_id[desk.ids["green"]]["type"], by_id[desk.ids["green"]]["priority"]) == (
        "STOP_PAYMENT",
        "GREEN",
    )
    assert by_id[desk.ids["standard"]]["type"] == "FREEZE"

    # Filters: case, type, role (the bank received them; it sent none).
    assert [r["id"] for r in await listed(desk, "--case", OTHER_CASE)] == [desk.ids["answered"]]
    assert [r["id"] for r in await listed(desk, "--type", "freeze")] == [desk.ids["standard"]]
    assert [r["id"] for r in await listed(desk, "--open", "--role", "received", agency=BANK)] == [
        desk.ids["standard"],
        desk.ids["green"],
    ]
    assert await listed(desk, "--role", "sent", agency=BANK) == []


async def test_breach_within_keeps_the_requests_whose_next_deadline_is_near(desk: Desk) -> None:
    # Green phases are all due within 10 minutes of submission (CN default SLA); a standard
    # freeze's delivery within an hour: 15 minutes tells them apart however slow this machine is.
    [near] = await listed(desk, "--breach-within", "15")
    assert near["id"] == desk.ids["green"]
    assert near["about_to_breach"] is True
    assert near["next_deadline"]["seconds_left"] <= 15 * 60
    exited, out, err = await cli(desk, "list", "--as", POLICE, "--breach-within", "15")
    assert exited == 0, err
    [row] = [line for line in out.splitlines() if desk.ids["green"] in line]
    assert row.startswith("!")  # marked as about to breach
    assert desk.ids["standard"] not in out


async def test_list_pages_with_the_token_it_prints(desk: Desk) -> None:
    first = await cli_json(desk, "list", "--as", POLICE, "--limit", "2")
    assert [r["id"] for r in first["requests"]] == [desk.ids["answered"], desk.ids["standard"]]
    token = first["next_page_token"]
    assert token
    second = await cli_json(desk, "list", "--as", POLICE, "--limit", "2", "--page-token", token)
    assert [r["id"] for r in second["requests"]] == [desk.ids["green"]]
    assert second["next_page_token"] == ""
    # People are told how to get the next page.
    exited, out, _err = await cli(desk, "list", "--as", POLICE, "--limit", "2")
    assert exited == 0
    assert out.splitlines()[-1] == f"more: --page-token {token}"


async def test_cancel_withdraws_an_open_request_and_it_leaves_the_open_list(desk: Desk) -> None:
    cancelled = await cli_json(
        desk, "cancel", desk.ids["standard"], "--as", POLICE, "--reason", "the victim's payment never left"
    )
    assert cancelled["id"] == desk.ids["standard"]
    assert cancelled["state"] == "CANCELLED"
    assert cancelled["timeline"][-1]["detail"] == "the victim's payment never left"
    async with desk.world.client(desk.world.brokers[0]) as police:
        status = await police.get(desk.ids["standard"])
    assert status.state == common_pb2.REQUEST_STATE_CANCELLED
    assert [r["id"] for r in await listed(desk, "--open")] == [desk.ids["green"]]


async def test_cancel_refused_by_the_broker_exits_1(desk: Desk) -> None:
    # Answered already: too late to withdraw.
    late = await cli_json(desk, "cancel", desk.ids["answered"], "--as", POLICE, code=1)
    assert late["error"]["code"] == "FAILED_PRECONDITION"
    # Only the sender may cancel.
    other = await cli_json(desk, "cancel", desk.ids["green"], "--as", BANK, code=1)
    assert other["error"]["code"] == "PERMISSION_DENIED"
    assert other["error"]["reason"] == "NOT_SENDER"
    # A malformed id never leaves the machine: a usage error.
    exited, _out, err = await cli(desk, "cancel", "not-a-request", "--as", POLICE)
    assert exited == 2
    assert "cancellation.request_id" in err
    async with desk.world.client(desk.world.brokers[0]) as police:
        assert (await police.get(desk.ids["green"])).state == common_pb2.REQUEST_STATE_SUBMITTED
