"""``greenchannel sla report``: SLA compliance per agency and request type, read from the Bus API.

The report reads the deadlines the broker notarized into every request, so it needs no SLA
policy file: whichever policy was in force when a request arrived is the one it is judged by.
A regulator sees every request; any other agency sees the requests it may read (its own).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import grpc

from broker.client import BusClient, error_details, render_table, report_to_json, sla_report
from broker.protocol import Clock, ProtocolError, SystemClock, load_agency_signing_key

from . import _env
from ._options import agency_option
from ._output import json_option, print_json
from ._render import error_document

__all__ = ["add_parser", "run", "sla_report_command"]


def _error_lines(exc: grpc.aio.AioRpcError) -> Iterator[str]:
    details = error_details(exc)
    reason = f" ({details.reason})" if details.reason else ""
    yield f"greenchannel sla report: the broker answered {details.code.name}{reason}: {details.message}"
    for name, description in details.field_violations:
        yield f"  {name}: {description}"


async def sla_report_command(
    *,
    broker: str,
    agency_id: str,
    state_dir: Path,
    as_json: bool,
    clock: Clock | None = None,
    now: datetime | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Print the SLA report as ``agency_id``; 0 on success, 1 when the broker or the key fails.

    ``clock`` signs the bearer tokens (and is ``now`` unless given); tests pass a ManualClock.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    clock = clock or SystemClock()
    try:
        key = load_agency_signing_key(state_dir, agency_id)
    except ProtocolError as exc:
        print(f"greenchannel sla report: {exc}", file=err)
        return 1
    try:
        async with BusClient(broker, agency_id=agency_id, signing_key=key, clock=clock) as bus:
            statuses = await bus.list_all()
    except grpc.aio.AioRpcError as exc:
        if as_json:
            print_json(error_document(error_details(exc)), file=out)
        for line in _error_lines(exc):
            print(line, file=err)
        return 1
    report = sla_report(statuses, now=now or clock.now())
    if as_json:
        print_json(report_to_json(report), file=out)
    else:
        print(render_table(report), end="", file=out)
    return 0


def add_parser(subparsers: Any, name: str = "sla", help: str = "") -> None:
    """Register ``sla report --as AGENCY [--broker HOST:PORT] [--json]`` on the top-level subparsers.

    ``subparsers`` is what ``ArgumentParser.add_subparsers`` returned (argparse keeps its type
    private). The parsed namespace has ``command == "sla"`` and ``sla_command == "report"``.
    """
    default_broker = _env.default_broker()
    sla = subparsers.add_parser(name, help=help)
    commands = sla.add_subparsers(dest="sla_command", required=True)
    report = commands.add_parser(
        "report", help="deadlines met and breached per agency and request type, and times to finish"
    )
    report.add_argument(
        "--as",
        dest="agency",
        required=True,
        type=agency_option,
        metavar="AGENCY",
        help="agency to read as (a regulator sees every request), e.g. regulator-pboc",
    )
    report.add_argument(
        "--broker",
        default=default_broker,
        metavar="HOST:PORT",
        help=f"broker address (default {default_broker})",
    )
    json_option(report, help="print the report as one JSON object")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``sla`` command; needs the top-level ``--state-dir`` (the agency's keys)."""
    if args.sla_command == "report":
        return asyncio.run(
            sla_report_command(
                broker=args.broker, agency_id=args.agency, state_dir=args.state_dir, as_json=args.json
            )
        )
    return 2
