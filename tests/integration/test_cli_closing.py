"""``greenchannel return | appeal | status`` end to end: the real command line, as a child process,
against a real broker, NATS and the reference agencies (sample directory and policy, the seeded
story of ``agencies/_seed.py``).

The commands are README.md's examples as written (``tests/_readme.py`` reads them). The story's
fraud account at bank-icbc keeps 15,000.00 of the victim's 50,000.00. The police stop it naming the
victim's account and when the money arrived; the broker allocates the held money to that victim
(deposit order); the police order 3,000.00 back, then one cent more than is left (refused,
EXCEEDS_SHARE). The bank files the holder's appeal against the hold, the police lift
it, the broker's lifting order releases what stays held; a second decision is refused. Exit codes:
0 when the asked-for outcome happened, non-zero otherwise; ``--json`` prints exactly one object.

One stack for the module; the checks run in order on the same account.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from adapters import AdapterConfig
from agencies import _seed as seed
from agencies.bank import BankCore, HoldStatus
from agencies.demo import Stack, StackConfig
from tests._readme import readme_example
from tests.integration.cli_child import run_cli

pytestmark = pytest.mark.integration

POLICE = "police-310115"
CASE = "SH-PD-2026-1121-0042"  # README.md's
HELD = 1_500_000  # what the story's fraud account keeps of the victim's 50,000.00
RETURNED = 300_000  # README.md's `return order`
VICTIM = f"{seed.VICTIM_ACCOUNT}:{seed.VICTIM_HOLDER}"


@dataclass
class World:
    stack: Stack
    state_dir: Path
    ids: dict[str, str] = field(default_factory=dict)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-closing")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(root: Path) -> AsyncIterator[World]:
    template = AdapterConfig(
        agency_id=seed.FRAUD_BANK,
        agency_target="127.0.0.1:1",
        state_dir=Path(),
        retry_initial=0.05,
        retry_max=0.3,
        reconnect_backoff_max=0.3,
        ack_wait=3.0,
        idle_fetch_timeout=0.2,
    )
    config = StackConfig(keys_dir=root / "keys", data_dir=root / "data", adapter=template)
    async with Stack(config) as running:
        yield World(stack=running, state_dir=root / "keys")


def bank(world: World) -> BankCore:
    core = world.stack.agencies[seed.FRAUD_BANK].core
    assert isinstance(core, BankCore)
    return core


async def cli(world: World, *args: str) -> tuple[int, str, str]:
    """``greenchannel ARGS`` in a child process, in the state directory's parent (where README.md's
    ``statement.txt`` is)."""
    return await run_cli(world.stack.broker_address, world.state_dir, *args, cwd=world.state_dir.parent)


async def cli_json(world: World, *args: str, code: int = 0) -> dict[str, Any]:
    """``cli(... --json)`` exiting ``code``; its stdout is exactly one JSON object."""
    exited, out, err = await cli(world, *args, "--json")
    assert exited == code, (exited, out, err)
    document = json.loads(out)  # fails on anything but one JSON value
    assert isinstance(document, dict), out
    return document


def minor(money: dict[str, Any]) -> int:
    return int(money.get("minor_units", 0))


async def test_stop_payment_names_the_victim_and_the_police_return_the_money(world: World) -> None:
    stop = readme_example("submit", "stop-payment")
    assert stop[stop.index("--case") + 1] == CASE
    assert stop[stop.index("--victim-account") + 1] == f"{VICTIM}:{seed.VICTIM_BANK}"
    stopped = await cli_json(world, *stop)
    # The bank holds what is there (15,000.00 of the 48,000.00 asked): executed in part.
    assert stopped["state"] == "PARTIALLY_EXECUTED", stopped
    hold_id = stopped["id"]
    world.ids["hold"] = hold_id
    assert bank(world).holds_for(hold_id)[0].amount == HELD

    # The plan: one claim (the victim's, by deposit order), all of the held money payable now.
    plan = await cli_json(world, *readme_example("return", "plan"))
    assert plan["case_number"] == CASE
    assert minor(plan["allocation"]["frozen"]) == HELD
    [claim] = plan["claims"]
    assert claim["case_number"] == CASE
    assert claim["rule"] == "DEPOSIT_ORDER"
    assert (claim["share"], claim["returned"], claim["reserved"]) == (HELD, 0, 0)
    assert claim["payable_now"] == HELD
    assert claim["currency"] == "CNY"
    # A regulator reads it too, naming the case's owner.
    as_regulator = readme_example("return", "plan")
    as_regulator[as_regulator.index("--as") + 1] = "regulator-pboc"
    watched = await cli_json(world, *as_regulator, "--owner", POLICE)
    assert watched["claims"] == plan["claims"]

    # The order: 3,000.00 back to the victim, executed; the bank holds that much less.
    order = readme_example("return", "order")
    assert order[order.index("--pay") + 1] == f"{VICTIM}:3000.00"
    paid = await cli_json(world, *order)
    assert paid["type"] == "RETURN_FUNDS"
    assert paid["state"] == "EXECUTED", paid
    assert paid["returned"]["amount_returned"] == RETURNED
    assert [p["amount"] for p in paid["returned"]["returns"]] == [RETURNED]
    [reserved] = paid["allocation"]["claims"]
    assert reserved["reserved"] == RETURNED
    assert bank(world).holds_for(hold_id)[0].amount == HELD - RETURNED

    # One cent more than is left of the share: refused before anything is sent, the reason for
    # people and for programs, exit non-zero.
    order[order.index("--pay") + 1] = f"{VICTIM}:12000.01"
    exited, out, err = await cli(world, *order, "--json")
    assert exited == 1, (out, err)
    assert json.loads(out)["error"]["reason"] == "EXCEEDS_SHARE"
    assert "EXCEEDS_SHARE" in err
    assert bank(world).holds_for(hold_id)[0].amount == HELD - RETURNED

    # The return's status: the allocation as the broker computed it when it accepted the order
    # (this order's payout reserved), and what the bank returned; the opened details name the
    # victim's account.
    status = await cli_json(world, "status", paid["id"], "--as", POLICE)
    assert status["state"] == "EXECUTED"
    [then] = status["allocation"]["claims"]
    assert (then["share"], then["returned"], then["reserved"]) == (HELD, 0, RETURNED)
    assert status["returned"]["amount_returned"] == RETURNED
    assert [p["amount"] for p in status["returned"]["returns"]] == [RETURNED]
    [opened] = status["details"]["returns"]
    assert opened["victim_account"]["account_number"] == seed.VICTIM_ACCOUNT
    exited, out, err = await cli(world, "status", paid["id"], "--as", POLICE)
    assert exited == 0, err
    assert "as when the order was accepted" in out
    assert "returned  3,000.00 CNY" in out
    assert "6225****6512" in out
    # Now: returned, nothing reserved, the rest of the share payable.
    plan = await cli_json(world, *readme_example("return", "plan"))
    [now] = plan["claims"]
    assert (now["share"], now["returned"], now["reserved"]) == (HELD, RETURNED, 0)
    assert now["payable_now"] == HELD - RETURNED


async def test_the_bank_files_an_appeal_and_the_police_lift_the_hold(world: World) -> None:
    hold_id = world.ids["hold"]
    statement = world.state_dir.parent / "statement.txt"
    statement.write_text("holder-statement: the account was lent to a relative\n", encoding="utf-8")
    filed = await cli_json(world, *readme_example("appeal", "file", ids={"stop-payment id": hold_id}))
    assert filed["type"] == "APPEAL"
    assert (filed["sender"], filed["recipient"]) == (seed.FRAUD_BANK, POLICE)
    assert filed["target_id"] == hold_id
    assert filed["state"] == "ACKNOWLEDGED", filed
    appeal_id = filed["id"]

    # Lifted, waiting for the broker's lifting order to be executed by the bank.
    decide = readme_example("appeal", "decide", ids={"appeal id": appeal_id})
    decided = await cli_json(world, *decide, "--wait")
    assert decided["id"] == appeal_id
    assert decided["state"] == "EXECUTED"
    assert decided["appeal"]["decision"] == "LIFTED"
    [lifting] = decided["appeal"]["lifting"]
    assert lifting["type"] == "RELEASE"
    assert lifting["recipient"] == seed.FRAUD_BANK
    assert lifting["target_id"] == hold_id
    assert lifting["state"] == "EXECUTED"

    # The appeal's status: the decision and the lifting order, executed.
    status = await cli_json(world, "status", appeal_id, "--as", POLICE)
    assert status["appeal"]["decision"] == "LIFTED"
    assert status["appeal"]["lifting"] == [lifting]
    # The bank released what stayed held after the return: the holder has it again.
    assert bank(world).holds_for(hold_id)[0].status == HoldStatus.RELEASED
    assert bank(world).available(seed.FRAUD_ACCOUNT) == HELD - RETURNED
    exited, out, err = await cli(world, "status", appeal_id, "--as", POLICE)
    assert exited == 0, err
    assert "appeal decision  LIFTED" in out
    [row] = [line for line in out.splitlines() if lifting["id"] in line]
    assert row.split()[1:] == ["RELEASE", seed.FRAUD_BANK, hold_id, "EXECUTED"]

    # A second decision is refused, for people and for programs; the first one stands.
    decide[decide.index("--lift")] = "--uphold"
    exited, out, err = await cli(world, *decide, "--json")
    assert exited == 1, (out, err)
    assert json.loads(out)["error"]["reason"] == "APPEAL_ALREADY_DECIDED"
    assert "APPEAL_ALREADY_DECIDED" in err
    status = await cli_json(world, "status", appeal_id, "--as", POLICE)
    assert status["appeal"]["decision"] == "LIFTED"
