"""The demo scenario, run for real, with every final state asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agencies.demo import DemoConfig, run_demo
from broker.cli._demo import render_report
from broker.embedded import EmbeddedNats, EmbeddedNatsConfig

pytestmark = pytest.mark.integration

EXPECTED = [
    ("Nanshan freezes the mule account", "FREEZE", "bank-abc", "EXECUTED", ""),
    ("stop the fraud account", "STOP_PAYMENT", "bank-icbc", "PARTIALLY_EXECUTED", "INSUFFICIENT_FUNDS"),
    # The broker's own stop-payments, hop by hop (two at hop 1, two at hop 2, one at hop 3).
    *[
        ("chased by the broker (hop 1)", "STOP_PAYMENT", bank, "PARTIALLY_EXECUTED", "INSUFFICIENT_FUNDS")
        for bank in ("bank-abc", "bank-ccb")
    ],
    ("chased by the broker (hop 2)", "STOP_PAYMENT", "bank-cmb", "EXECUTED", ""),
    ("chased by the broker (hop 2)", "STOP_PAYMENT", "bank-icbc", "PARTIALLY_EXECUTED", "INSUFFICIENT_FUNDS"),
    ("chased by the broker (hop 3)", "STOP_PAYMENT", "bank-ccb", "EXECUTED", ""),
    ("convert the hold into a freeze", "FREEZE", "bank-icbc", "EXECUTED", ""),
    ("locate the fraudster's line", "DATA_REQUEST", "carrier-cmcc", "EXECUTED", ""),
    ("block the fraudster's line", "NUMBER_BLOCK", "carrier-cmcc", "EXECUTED", ""),
    # One batch for the ring's other lines, split by the broker into one child per carrier.
    ("block the ring's lines (one batch)", "NUMBER_BLOCK", "greenchannel-broker", "EXECUTED", ""),
    ("batch block at carrier-cmcc", "NUMBER_BLOCK", "carrier-cmcc", "EXECUTED", ""),
    ("batch block at carrier-ctcc", "NUMBER_BLOCK", "carrier-ctcc", "EXECUTED", ""),
    ("warn the potential victim", "WARNING", "carrier-ctcc", "EXECUTED", ""),
    ("restrict the fraudster's account", "ACCOUNT_BLOCK", "platform-wechat", "EXECUTED", ""),
    ("who holds the fraud account", "DATA_REQUEST", "bank-icbc", "EXECUTED", ""),
    ("assistance from Shenzhen Nanshan", "ASSISTANCE", "police-440305", "EXECUTED", ""),
    ("stop with a wrong holder name", "STOP_PAYMENT", "bank-abc", "REJECTED", "MISMATCH"),
    # Shared risk signals: a warning that cannot reach its person, then the broker's in-person
    # dissuasion by the police of her region.
    ("warn a potential victim who cannot be reached", "WARNING", "carrier-ctcc", "EXECUTED", ""),
    ("in-person dissuasion sent by the broker", "DISSUASION", "police-440305", "EXECUTED", ""),
    # 串并: Nanshan's freeze and the broker's chase under Pudong's case hit one mule account.
    ("linkage notice to the case owner", "LINKAGE_NOTICE", "police-310115", "EXECUTED", ""),
    ("linkage notice to the coordinator", "LINKAGE_NOTICE", "police-440300", "EXECUTED", ""),
    ("linkage notice to the case owner", "LINKAGE_NOTICE", "police-440305", "EXECUTED", ""),
    # Closing the case.
    ("appeal by the holder at bank-ccb (lifted)", "APPEAL", "police-310115", "EXECUTED", ""),
    ("lifting order sent by the broker", "RELEASE", "bank-ccb", "EXECUTED", ""),
    ("appeal by the holder at bank-cmb (upheld)", "APPEAL", "police-310115", "EXECUTED", ""),
    ("release for living expenses", "RELEASE", "bank-icbc", "EXECUTED", ""),
    # Each return, then the broker's victim follow-up (回访), answered by the police owning the case.
    *[
        row
        for bank in ("bank-icbc", "bank-ccb", "bank-icbc", "bank-abc")
        for row in (
            ("return to the victim of SH-PD-2026-1121-0001", "RETURN_FUNDS", bank, "EXECUTED", ""),
            (
                "victim follow-up after the return of SH-PD-2026-1121-0001",
                "FOLLOW_UP",
                "police-310115",
                "EXECUTED",
                "",
            ),
        )
    ],
    ("return to the victim of SZ-NS-2026-1121-0007", "RETURN_FUNDS", "bank-abc", "EXECUTED", ""),
    (
        "victim follow-up after the return of SZ-NS-2026-1121-0007",
        "FOLLOW_UP",
        "police-440305",
        "EXECUTED",
        "",
    ),
]

# Frozen over both cases (53,000.00) = returned to the two victims (31,000.00 + 8,000.00)
# + released (1,000.00 living expenses, 4,000.00 lifted on appeal) + still held (9,000.00, the
# appeal upheld).
ACCOUNTING = {
    ("bank-icbc", "…4567"): (1_500_000, 1_500_000, 0, 0),
    ("bank-ccb", "…4321"): (300_000, 300_000, 0, 0),
    ("bank-abc", "…5670"): (1_400_000, 1_400_000, 0, 0),
    ("bank-icbc", "…3210"): (800_000, 700_000, 100_000, 0),
    ("bank-cmb", "…6789"): (900_000, 0, 0, 900_000),
    ("bank-ccb", "…4556"): (400_000, 0, 400_000, 0),
}


async def test_the_scenario_ends_in_every_expected_state(tmp_path: Path) -> None:
    lines: list[str] = []
    async with EmbeddedNats(EmbeddedNatsConfig(store_dir=tmp_path / "nats")) as server:
        report = await run_demo(
            DemoConfig(state_dir=tmp_path / "state", nats_url=server.url), say=lines.append
        )
    got = [(r.label, r.type, r.recipient, r.state, r.reason) for r in report.requests]
    assert got == EXPECTED
    assert report.ok
    # The regulator's export of the ledger verified offline, covered by signed checkpoints.
    assert report.ledger_verified
    # At least SUBMITTED and the outcome of each (the adapters send no DELIVERED, and ACKNOWLEDGED
    # only for an agency system slower than their grace).
    assert report.ledger_entries >= 2 * len(report.requests)
    assert report.sla_met > 0
    assert any(line.startswith("15. ") and "VERIFIED" in line for line in lines)
    assert any(line.startswith("16. SLA report") for line in lines)
    # The steps are numbered in order, none twice.
    steps = [int(line.split(".", 1)[0]) for line in lines if line.split(".", 1)[0].isdigit()]
    assert steps == list(range(17))
    # The police's HIGH mark made the victim's bank refuse her next payment to the fraud account.
    assert [
        (c["bank"], c["to_bank"], c["made"], c["grade"], c["mark_state"]) for c in report.risk_checks
    ] == [("bank-cmb", "bank-icbc", False, "RISK_GRADE_HIGH", "MARK_STATE_ACTIVE")]
    # The unreachable person's warning ended UNREACHABLE, and Nanshan police dissuaded her in person.
    assert [
        (
            w["recipient"],
            w["outcome"],
            w["dissuasion_recipient"],
            w["dissuasion_state"],
            w["dissuasion_outcome"],
        )
        for w in report.warnings
    ] == [("carrier-ctcc", "UNREACHABLE", "police-440305", "EXECUTED", "DISSUADED")]
    dissuasion = next(r for r in report.requests if r.type == "DISSUASION")
    warning = next(r for r in report.requests if r.label == "warn a potential victim who cannot be reached")
    assert (dissuasion.sender, dissuasion.parent) == ("greenchannel-broker", warning.id)
    # Nanshan's case (the earlier on the mule account) and Pudong's are linked across regions; the
    # police supervising Nanshan coordinate. The link names cases, never the account.
    assert [(link["kind"], link["cases"], link["coordinator"]) for link in report.links] == [
        (
            "BANK_ACCOUNT",
            ["police-440305/SZ-NS-2026-1121-0007", "police-310115/SH-PD-2026-1121-0001"],
            "police-440300",
        )
    ]
    assert all(link["cross_region"] and link["ok"] for link in report.links)
    # Neither her phone nor the fraud account's full number is printed.
    assert not any("+8618912340009" in line or "6222020200001234567" in line for line in lines)
    # Before closing: everything but the 5,000.00 that left the directory: 15,000 frozen on the
    # fraud account and what the five accounts the broker chased still had, and Nanshan's 8,000.
    assert report.held_minor_units == 5_300_000
    got_money = {
        (e.bank, e.account): (e.frozen, e.returned, e.released, e.held) for e in report.accounting.values()
    }
    assert got_money == ACCOUNTING
    assert all(e.balances for e in report.accounting.values())
    assert report.refusals == ["EXCEEDS_SHARE"]
    # The carrier located the fraudster's line on the cell of the latest fraud call; the demo
    # does not print where that is.
    assert report.located
    assert not any("22801" in line or "114.05" in line for line in lines)
    first = next(r for r in report.requests if r.label == "stop the fraud account")
    children = [r for r in report.requests if r.parent == first.id]
    assert {r.hop for r in children if r.type == "STOP_PAYMENT"} == {1}
    senders = {r.label: r.sender for r in report.requests}
    assert senders["Nanshan freezes the mule account"] == "police-440305"
    assert senders["appeal by the holder at bank-ccb (lifted)"] == "bank-ccb"
    assert senders["appeal by the holder at bank-cmb (upheld)"] == "bank-cmb"
    assert senders["lifting order sent by the broker"] == "greenchannel-broker"
    assert senders["return to the victim of SZ-NS-2026-1121-0007"] == "police-440305"
    assert senders["victim follow-up after the return of SZ-NS-2026-1121-0007"] == "greenchannel-broker"
    assert all(
        r.sender == ("greenchannel-broker" if r.label.startswith("chased") else "police-310115")
        for r in report.requests
        if r.label.startswith(
            ("chased", "stop", "convert", "locate", "block", "warn", "restrict", "who", "assist")
        )
    )
    assert {r.hop for r in report.requests if r.label.startswith("chased")} == {1, 2, 3}
    assert all(r.finish_ms is not None and r.deliver_ms is not None for r in report.requests)
    assert report.data_answer_fields > 0
    # The holder's name was decrypted by the police client; it is not printed.
    assert not any("李某" in line for line in lines)
    # The trail and the SLA report come back as data; the CLI renders them, the demo does not.
    assert report.trail is not None
    assert report.trail.settled
    assert report.trail_accounts
    assert all(not a.holder_name for a in report.trail_accounts.values())
    assert report.sla is not None
    assert (report.sla.met, report.sla.breached) == (
        report.sla_met,
        report.sla_breached,
    )
    assert not any(line.lstrip().startswith("held now on") for line in lines)
    rendered = render_report(report)
    assert any(line.lstrip().startswith("held now on 6 of 6 accounts") for line in rendered)
    assert any(line.lstrip().startswith(f"total: {len(EXPECTED)} requests") for line in rendered)
    assert rendered[-1] == "Times are milliseconds from the broker's receipt of each request."
    assert not any("李某" in line for line in rendered)


def test_cli_demo_json_prints_one_object_and_exits_zero(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "GREENCHANNEL_NATS_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "broker.cli", "--state-dir", str(tmp_path / "state"), "demo", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert report["ledger"]["verified"] is True
    assert report["ledger"]["entries"] > 0
    assert set(report["sla"]) == {"met", "breached"}
    assert report["sla"]["met"] > 0
    assert len(report["requests"]) == len(EXPECTED)
    types = {entry["type"]: entry["state"] for entry in report["requests"]}
    assert any(e["type"] == "DATA_REQUEST" and e["kind"] == "LOCATION" for e in report["requests"])
    batches = sorted(e["items"] for e in report["requests"] if e["type"] == "NUMBER_BLOCK" and e["items"])
    assert batches == [4, 8, 12]  # the parent names 12 lines; its children 8 at cmcc and 4 at ctcc
    follow_ups = [e for e in report["requests"] if e["type"] == "FOLLOW_UP"]
    assert follow_ups
    assert all(e["state"] == "EXECUTED" for e in follow_ups)
    assert types["RETURN_FUNDS"] == "EXECUTED"
    assert types["APPEAL"] == "EXECUTED"
    assert [(c["made"], c["grade"]) for c in report["risk_checks"]] == [(False, "RISK_GRADE_HIGH")]
    assert [(w["outcome"], w["dissuasion_recipient"], w["dissuasion_state"]) for w in report["warnings"]] == [
        ("UNREACHABLE", "police-440305", "EXECUTED")
    ]
    assert [link["coordinator"] for link in report["links"]] == ["police-440300"]
    accounting = report["accounting"]
    assert len(accounting) == len(ACCOUNTING)
    for entry in accounting.values():
        assert set(entry) >= {"frozen", "returned", "released", "held"}
        assert entry["frozen"] == entry["returned"] + entry["released"] + entry["held"]
    assert sum(e["frozen"] for e in accounting.values()) == 5_300_000
    for entry in report["requests"]:
        assert set(entry) >= {
            "id",
            "type",
            "priority",
            "sender",
            "recipient",
            "state",
            "reason",
            "timings_ms",
        }
        assert set(entry["timings_ms"]) == {"deliver", "acknowledge", "finish"}
    leftovers = subprocess.run(["pgrep", "-f", "greenchannel-demo-"], capture_output=True, check=False)
    assert leftovers.stdout == b""
