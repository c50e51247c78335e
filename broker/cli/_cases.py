"""``greenchannel cases linked <case>``: a case's links (串并), through RiskService.ListLinks.

Each line is one shared identifier (by kind and the broker's digest, never in clear) and the other
cases that touched it, by number, owner and region; ``--json`` prints the linkage notices as JSON
(proto field names). Exit status: 0 done, 1 the bus or a key said no, 2 a usage error.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from google.protobuf.json_format import MessageToDict
from greenchannel.v1 import requests_pb2

from . import _env
from ._requests import client, connection_options, guarded, print_json, say

__all__ = ["add_parser", "link_lines", "run"]


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help: str) -> None:
    command = commands.add_parser(name, help=help, description=help)
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    linked = actions.add_parser(
        "linked", help="the links of one of your cases: shared identifiers and the other cases"
    )
    connection_options(linked, _env.default_broker())
    linked.add_argument("case", metavar="CASE_NUMBER")


def run(args: argparse.Namespace) -> int:
    return guarded(f"cases {args.action}", args, lambda: _linked(args))


def link_lines(case_number: str, links: Sequence[requests_pb2.LinkageNotice]) -> list[str]:
    """One block per shared identifier: kind, digest, coordinator, then the other cases."""
    if not links:
        return [f"case {case_number}: no links"]
    lines = []
    for link in links:
        kind = requests_pb2.IdentifierKind.Name(link.kind).removeprefix("IDENTIFIER_KIND_")
        where = f"cross-region, coordinator {link.coordinator or '-'}" if link.cross_region else "one region"
        digest = link.identifier_digest[:16]
        lines.append(f"{link.link_id}  {kind} {digest}  {len(link.cases)} cases, {where}")
        for case in link.cases:
            if case.case_number == case_number:
                continue
            source = requests_pb2.LinkageSource.Name(case.source).removeprefix("LINKAGE_SOURCE_")
            lines.append(
                f"    {case.case_number}  {case.owner} ({case.region or '-'})  by {source.lower()}"
                f"  since {case.first_seen.ToJsonString()}"
            )
    return lines


async def _linked(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        links = await bus.risk.links(args.case)
    if args.json:
        print_json(
            {
                "case_number": args.case,
                "links": [MessageToDict(link, preserving_proto_field_name=True) for link in links],
            }
        )
    else:
        say(link_lines(args.case, links))
    return 0
