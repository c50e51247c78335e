"""``greenchannel console`` in a real browser: Debian's Chromium, headless, driven by Playwright,
against a real stack (NATS, broker, the reference agencies with the demo story) and the console
as a child process (the real command line, run as the police).

One stack, one console, one browser for the module; the checks run in order on the same case:
the Now page gains the stop-payment live and counts its hold down; the case page draws the trail
with the amounts the broker's trail has; Extend moves the hold's lapse; the SLA page charts the
figures of ``sla report``; an action POST without the CSRF token is refused. Screenshots go to
``build/console/``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from greenchannel.v1 import common_pb2, requests_pb2

from agencies import _seed as seed
from agencies.bank import BankCore
from agencies.demo import Stack
from broker.client import BusClient, sla_report
from broker.protocol import load_agency_signing_key
from tests._wait import eventually
from tests.integration.browser import CHROMIUM_ARGS, chromium_or_skip
from tests.integration.cli_child import cli_env
from tests.integration.stack_config import quick_stack_config
from tests.integration.trail_world import wait_settled

pytestmark = pytest.mark.integration

playwright_api = pytest.importorskip("playwright.async_api", reason="playwright is in the dev extra")

POLICE = "police-310115"
CASE = "SH-PD-2026-1203-0015"
SHOTS = Path(__file__).resolve().parents[2] / "build" / "console"


@dataclass
class World:
    stack: Stack
    keys: Path
    url: str
    page: Any
    ids: dict[str, str] = field(default_factory=dict)


@contextlib.asynccontextmanager
async def _console(stack: Stack, keys: Path) -> AsyncIterator[str]:
    """``greenchannel console --as POLICE`` as a child process; its URL, from the line it prints."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "broker.cli",
        "--state-dir",
        str(keys),
        "console",
        "--as",
        POLICE,
        "--listen",
        "127.0.0.1:0",
        "--broker",
        stack.broker_address,
        stdout=asyncio.subprocess.PIPE,
        env=cli_env(),
    )
    try:
        assert child.stdout is not None
        line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().strip()
        assert line.startswith("console: http://127.0.0.1:"), line
        yield line.removeprefix("console: ")
    finally:
        if child.returncode is None:
            child.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(child.wait(), 10)
        if child.returncode is None:
            child.kill()
            await child.wait()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    chromium = chromium_or_skip()
    root = tmp_path_factory.mktemp("console")
    SHOTS.mkdir(parents=True, exist_ok=True)
    async with (
        Stack(quick_stack_config(root / "keys", root / "data")) as stack,
        _console(stack, root / "keys") as url,
        playwright_api.async_playwright() as playwright,
    ):
        # The browser closes first, its live stream with it; then the console stops at once.
        browser = await playwright.chromium.launch(
            executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 900})
            yield World(stack=stack, keys=root / "keys", url=url, page=page)
        finally:
            await browser.close()


def police_bus(world: World) -> BusClient:
    key = load_agency_signing_key(world.keys, POLICE)
    return BusClient(world.stack.broker_address, agency_id=POLICE, signing_key=key)


def stop_payment(
    case: str = CASE, account: str = seed.FRAUD_ACCOUNT, holder: str = seed.FRAUD_HOLDER
) -> requests_pb2.Request:
    """The demo story's stop-payment: 48,000.00 asked of the account the victim paid into."""
    return requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=case,
            issuing_agency=POLICE,
            legal_instrument_id=f"沪公(浦)急止字[2026]{case}号",
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_STOP_PAYMENT_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN,
        stop_payment=requests_pb2.StopPayment(
            account=common_pb2.BankAccountRef(account_number=account, holder_name=holder),
            amount=common_pb2.Money(currency="CNY", minor_units=4_800_000),
        ),
    )


async def test_the_open_list_gains_a_request_live_and_counts_its_hold_down(world: World) -> None:
    page = world.page
    await page.goto(world.url)
    await page.wait_for_selector("#live[data-state='live']")
    # A mark in the page's own window: gone if anything reloaded the page.
    await page.evaluate("window.__notReloaded = true")

    async with police_bus(world) as bus:
        accepted = await bus.submit(stop_payment())
    hold_id = accepted.status.id
    world.ids["hold"] = hold_id
    row = page.locator(f"#r-{hold_id}")
    # The bank holds what is there (15,000.00 of 48,000.00): the row shows the outcome, live.
    await row.locator(".st-PARTIALLY_EXECUTED").wait_for()
    assert await page.evaluate("window.__notReloaded") is True
    assert await row.locator(".due").inner_text() == "hold lapses"
    assert await row.locator(".case").inner_text() == CASE
    # The broker's chase of the case (owned by these police) arrives live too, newest first.
    rows = page.locator("#open-requests tbody tr")

    async def chased() -> bool:
        count: int = await rows.count()
        return count > 1

    await eventually(chased, what="the chase's stop-payments to appear")
    stamps = await page.locator("#open-requests tbody td.t").evaluate_all(
        "(cells) => cells.map((c) => Number(c.dataset.ms))"
    )
    assert stamps == sorted(stamps, reverse=True)

    countdown = row.locator(".countdown")
    start = int(await countdown.get_attribute("data-left") or 0)
    assert 47 * 3600 < start <= 48 * 3600  # the 48 h hold
    shown = await countdown.inner_text()
    assert shown.startswith(("1d 23h", "2d 00h")), shown

    async def counted_down() -> bool:
        left = int(await countdown.get_attribute("data-left") or 0)
        return left < start and await countdown.inner_text() != shown

    await eventually(counted_down, what="the countdown to decrease")
    await page.screenshot(path=str(SHOTS / "now.png"), full_page=True)


async def test_the_case_page_draws_the_money_trail_with_its_amounts(world: World) -> None:
    key = load_agency_signing_key(world.keys, POLICE)
    trail = await wait_settled(world.stack, key, CASE)
    page = world.page
    await page.goto(f"{world.url}cases/{CASE}")
    await page.wait_for_function("window.trailGraph && window.trailGraph.nodes().length > 0")
    nodes: list[dict[str, Any]] = await page.evaluate("window.trailGraph.nodes().map((n) => n.data())")
    edges: list[dict[str, Any]] = await page.evaluate("window.trailGraph.edges().map((e) => e.data())")

    accounts = {n["account"]: n for n in nodes if n["kind"] != "escaped"}
    # The fraud account keeps 15,000.00; the police key opened its number for the label.
    assert accounts[seed.FRAUD_ACCOUNT]["held_minor"] == 1_500_000
    assert "held 15,000.00 CNY" in accounts[seed.FRAUD_ACCOUNT]["label"]
    # Every account of the broker's trail, with what it holds.
    assert {n["id"]: n["held_minor"] for n in nodes if n["kind"] != "escaped"} == {
        node.node_id: node.held.minor_units for node in trail.nodes
    }
    # The 5,000.00 that left the directory is drawn as escaped, its edge highlighted.
    escaped = [n for n in nodes if n["kind"] == "escaped"]
    assert [n["escaped_minor"] for n in escaped] == [500_000]
    assert any(e["kind"] == "escaped" and e["target"] == escaped[0]["id"] for e in edges)
    # The chase: an edge per child stop-payment, from the paying account to the receiving one.
    assert sum(1 for e in edges if e["kind"] == "chased") == len(trail.nodes) - 1
    held = sum(node.held.minor_units for node in trail.nodes)
    assert held == 4_500_000  # the story secures everything but the 5,000.00 that left
    assert await page.locator("#held-total").inner_text() == "45,000.00 CNY"
    assert await page.locator("#escaped-total").inner_text() == "5,000.00 CNY"
    # Each request with its signed timeline (the first event is the broker's SUBMITTED).
    hold = page.locator(f"#q-{world.ids['hold']}")
    states = await hold.locator("table.timeline tbody tr td:nth-child(2)").all_inner_texts()
    assert states[0] == "SUBMITTED"
    assert "PARTIALLY_EXECUTED" in states
    signers = await hold.locator("table.timeline td.kid").all_inner_texts()
    assert all(signers), signers  # each event names the key that signed it
    await page.screenshot(path=str(SHOTS / "case.png"), full_page=True)


async def test_extend_from_the_now_page_moves_the_holds_lapse(world: World) -> None:
    hold_id = world.ids["hold"]
    async with police_bus(world) as bus:
        before = (await bus.get(hold_id)).deadlines.hold_expires_at.ToDatetime(tzinfo=UTC)
    page = world.page
    await page.goto(world.url)
    await page.wait_for_selector("#live[data-state='live']")
    row = page.locator(f"#r-{hold_id}")
    due_before = int(await row.get_attribute("data-due") or 0)
    await row.locator("details.actions summary").click()
    await row.locator("form[action$='/extend'] input[name=hours]").fill("24")
    await row.locator("form[action$='/extend'] button").click()
    await page.wait_for_selector("#notice")
    assert "extension" in await page.locator("#notice").inner_text()

    async def extended() -> bool:
        async with police_bus(world) as bus:
            status = await bus.get(hold_id)
        return status.deadlines.hold_expires_at.ToDatetime(tzinfo=UTC) > before

    await eventually(extended, what="the broker to move the hold's lapse")
    await page.wait_for_selector("#live[data-state='live']")

    async def row_moved() -> bool:
        return int(await page.locator(f"#r-{hold_id}").get_attribute("data-due") or 0) > due_before

    await eventually(row_moved, what="the row's countdown to show the new lapse")
    await page.screenshot(path=str(SHOTS / "extended.png"), full_page=True)


async def test_the_sla_page_charts_the_figures_of_sla_report(world: World) -> None:
    async with police_bus(world) as bus:
        statuses = await bus.list_all()
    report = sla_report(statuses, now=datetime.now(UTC))
    page = world.page
    await page.goto(f"{world.url}sla")
    await page.wait_for_function("window.slaCharts && window.slaCharts.phase")
    met = await page.evaluate("window.slaCharts.phase.data.datasets[0].data.reduce((a, b) => a + b, 0)")
    breached = await page.evaluate("window.slaCharts.phase.data.datasets[1].data.reduce((a, b) => a + b, 0)")
    # Requests that finish while the page loads may move a deadline from open to met: compare
    # with what was final before.
    assert met >= report.met
    assert breached == report.breached == 0
    agencies = await page.evaluate("window.slaCharts.agency.data.labels")
    assert set(agencies) == {row.agency for row in report.rows}
    assert await page.locator("#sla-table tbody tr").count() == len(report.rows)
    await page.screenshot(path=str(SHOTS / "sla.png"), full_page=True)


async def test_an_action_without_the_csrf_token_is_refused(world: World) -> None:
    page = world.page
    await page.goto(world.url)
    hold_id = world.ids["hold"]
    refused = await page.request.post(
        f"{world.url}requests/{hold_id}/release", form={"csrf": "x" * 43, "next": "/"}, max_redirects=0
    )
    assert refused.status == 403
    assert "CSRF" in await refused.text()
    # Posted from another site, with this browser's own cookie and a right-looking token: refused.
    cookies = {c["name"]: c["value"] for c in await page.context.cookies()}
    forged = await page.request.post(
        f"{world.url}requests/{hold_id}/release",
        form={"csrf": cookies["gc_csrf"], "next": "/"},
        headers={"Origin": "http://evil.example"},
        max_redirects=0,
    )
    assert forged.status == 403
    async with police_bus(world) as bus:
        status = await bus.get(hold_id)
    assert status.state != common_pb2.REQUEST_STATE_RELEASED


async def test_convert_to_freeze_from_the_case_page(world: World) -> None:
    hold_id = world.ids["hold"]
    page = world.page
    await page.goto(f"{world.url}cases/{CASE}")
    hold = page.locator(f"#q-{hold_id}")
    await hold.locator("details.actions summary").click()
    await hold.locator("form[action$='/convert'] button").click()
    await page.wait_for_selector("#notice")
    assert "freeze" in await page.locator("#notice").inner_text()
    assert page.url.startswith(f"{world.url}cases/{CASE}")

    async def frozen() -> bool:
        async with police_bus(world) as bus:
            freezes = await bus.list_all(case_number=CASE, types=[common_pb2.REQUEST_TYPE_FREEZE])
        return any(f.state == common_pb2.REQUEST_STATE_EXECUTED for f in freezes)

    await eventually(frozen, what="the bank to freeze what the stop-payment held")
    async with police_bus(world) as bus:
        [freeze] = await bus.list_all(case_number=CASE, types=[common_pb2.REQUEST_TYPE_FREEZE])
    # What it froze: the 15,000.00 held on the account the victim paid into, named from the trail.
    assert freeze.target_id == hold_id
    assert freeze.trail_seed.amount.minor_units == 1_500_000
    await page.goto(f"{world.url}cases/{CASE}")
    article = page.locator(f"#q-{freeze.id}")
    assert await article.locator("header b").inner_text() == "FREEZE"
    assert await article.locator("header .st").inner_text() == "EXECUTED"

    # Release 1,000.00 of the freeze: the bank holds that much less.
    bank = world.stack.agencies[seed.FRAUD_BANK].core
    assert isinstance(bank, BankCore)
    assert bank.holds_for(freeze.id)[0].amount == 1_500_000
    await article.locator("details.actions summary").click()
    await article.locator("form[action$='/release'] input[name=amount]").fill("1,000.00")
    await article.locator("form[action$='/release'] input[name=reason]").fill("wages, not fraud")
    await article.locator("form[action$='/release'] button").click()
    await page.wait_for_selector("#notice")
    assert "release" in await page.locator("#notice").inner_text()

    async def released() -> bool:
        return bank.holds_for(freeze.id)[0].amount == 1_400_000

    await eventually(released, what="the bank to lift 1,000.00 of the freeze")


async def test_a_request_nobody_takes_is_about_to_breach_and_can_be_cancelled(world: World) -> None:
    """Last: it stops bank-abc's adapter, so the stop-payment sits undelivered."""
    await world.stack.adapters["bank-abc"].aclose()
    page = world.page
    await page.goto(world.url)
    await page.wait_for_selector("#live[data-state='live']")
    async with police_bus(world) as bus:
        accepted = await bus.submit(
            stop_payment("SH-PD-2026-1203-0016", seed.MULE_ABC_ACCOUNT, seed.MULE_ABC_HOLDER)
        )
    stuck = accepted.status.id
    row = page.locator(f"#r-{stuck}")
    await row.wait_for()
    # GREEN: delivered within 30 s, so its row is highlighted from the start (red once past due).
    assert await row.locator(".due").inner_text() == "deliver"
    assert await row.get_attribute("data-urgency") in ("soon", "breached")
    assert await row.locator(".st").inner_text() == "SUBMITTED"
    await page.screenshot(path=str(SHOTS / "about-to-breach.png"), full_page=True)

    await row.locator("details.actions summary").click()
    await row.locator("form[action$='/cancel'] input[name=reason]").fill("wrong account")
    await row.locator("form[action$='/cancel'] button").click()
    await page.wait_for_selector("#notice")
    assert "cancelled" in await page.locator("#notice").inner_text()
    async with police_bus(world) as bus:
        assert (await bus.get(stuck)).state == common_pb2.REQUEST_STATE_CANCELLED
    assert await page.locator(f"#r-{stuck}").count() == 0
