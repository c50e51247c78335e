"""``greenchannel demo``: play the demo scenario on a whole stack, then render what it returned."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agencies.demo import DemoConfig, DemoReport, run_demo
from broker.client import render_table

from . import _env
from ._loop import run as run_loop
from ._output import json_option, print_json
from ._trail import render_trail

__all__ = ["add_parser", "render_report", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "demo",
    help: str = "",
) -> None:
    """Register ``demo`` on the ``greenchannel`` parser."""
    demo = commands.add_parser(name, help=help)
    json_option(demo, help="print the report as one JSON object")


def _requests_table(report: DemoReport) -> list[str]:
    header = ("request", "type", "to", "state", "reason", "deliver", "ack", "finish")
    rows = [
        (
            r.label,
            r.type,
            r.recipient,
            r.state,
            r.reason or "-",
            "-" if r.deliver_ms is None else f"{r.deliver_ms:.1f}",
            "-" if r.acknowledge_ms is None else f"{r.acknowledge_ms:.1f}",
            "-" if r.finish_ms is None else f"{r.finish_ms:.1f}",
        )
        for r in report.requests
    ]
    return _table(header, rows)


def _accounting_table(report: DemoReport) -> list[str]:
    header = ("bank", "account", "cases", "frozen", "returned", "released", "held", "adds up")
    rows = [
        (
            e.bank,
            e.account,
            ", ".join(sorted(e.cases)),
            *(f"{amount / 100:,.2f}" for amount in (e.frozen, e.returned, e.released, e.held)),
            "yes" if e.balances else "NO",
        )
        for e in report.accounting.values()
    ]
    return _table(header, rows)


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * width for width in widths))
    lines += [
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows
    ]
    return lines


def render_report(report: DemoReport) -> list[str]:
    """The report for people: the money trail, the SLA table, every request with its times."""
    lines: list[str] = []
    if report.trail is not None:
        lines += ["", "The money trail, as the police read it:"]
        lines += [f"   {line}" if line else "" for line in render_trail(report.trail, report.trail_accounts)]
    if report.sla is not None:
        lines += ["", "SLA report (as the regulator reads it):"]
        lines += [f"   {line}" if line else "" for line in render_table(report.sla).splitlines()]
    lines.append("")
    lines += _requests_table(report)
    lines.append("")
    held = f"{report.held_minor_units / 100:,.2f} CNY"
    lines.append(f"Money held or frozen across banks before the case was closed: {held}")
    if report.accounting:
        lines += ["", "Each frozen account's money (frozen = returned + released + held):"]
        lines += _accounting_table(report)
    lines.append("Times are milliseconds from the broker's receipt of each request.")
    return lines


def _document(report: DemoReport) -> dict[str, object]:
    return {
        "ok": report.ok,
        "requests": [r.as_json() for r in report.requests],
        "held_minor_units": report.held_minor_units,
        "ledger": {"entries": report.ledger_entries, "verified": report.ledger_verified},
        "sla": {"met": report.sla_met, "breached": report.sla_breached},
        "accounting": {node_id: entry.as_json() for node_id, entry in report.accounting.items()},
        "refusals": list(report.refusals),
        "risk_checks": list(report.risk_checks),
        "warnings": list(report.warnings),
        "links": list(report.links),
    }


def run(args: argparse.Namespace) -> int:
    """Play the scenario; 0 when every request ended as expected."""
    config = DemoConfig(state_dir=args.state_dir, directory=args.directory, nats_url=_env.nats_url())
    say = (lambda _text: None) if args.json else print
    report = run_loop(run_demo(config, say=say))
    if args.json:
        print_json(_document(report))
    else:
        for line in render_report(report):
            print(line)
        print("demo: " + ("every request ended as expected" if report.ok else "FAILED: see the table above"))
    return 0 if report.ok else 1
