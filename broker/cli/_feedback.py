"""``greenchannel feedback give``: the police's feedback on a fraud report (art. 26), through the Bus API.

A fraud report from a bank, carrier or platform is received by the police adapter (ACKNOWLEDGED);
the police answer it once, acted on or not actionable, with a reason, signed with their key
(``BusService.GiveFeedback``). The report then ends EXECUTED with the feedback, which the reporting
agency sees. Exit status as the request commands: 0 done, 1 the bus or a key said no, 2 a usage
error.
"""

from __future__ import annotations

import argparse

from greenchannel.v1 import results_pb2

from . import _env
from ._render import status_document, status_lines
from ._requests import client, connection_options, guarded, print_json, say

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
) -> None:
    """Register ``feedback`` and its ``give`` action."""
    command = commands.add_parser(name, help=help, description=help)
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    give = actions.add_parser(
        "give",
        help="answer a fraud report that reached this police agency, once (--json for programs)",
    )
    connection_options(give, _env.default_broker())
    give.add_argument("report_id", metavar="REPORT_ID", help="the FRAUD_REPORT request")
    decision = give.add_mutually_exclusive_group(required=True)
    decision.add_argument(
        "--acted-on", action="store_true", help="accepted and acted on (a case opened or joined)"
    )
    decision.add_argument(
        "--not-actionable", action="store_true", help="not actionable (say why in --reason)"
    )
    give.add_argument("--reason", required=True, help="why, for the reporting agency (never personal data)")
    give.add_argument(
        "--case", default="", metavar="CASE_NUMBER", help="this agency's case the report went into, if any"
    )


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``feedback`` action."""
    return guarded(f"{args.command} {args.action}", args, lambda: _give(args))


async def _give(args: argparse.Namespace) -> int:
    decision = (
        results_pb2.FEEDBACK_DECISION_ACTED_ON
        if args.acted_on
        else results_pb2.FEEDBACK_DECISION_NOT_ACTIONABLE
    )
    async with client(args) as bus:
        status = await bus.give_feedback(args.report_id, decision, args.reason, case_number=args.case)
    if args.json:
        print_json(status_document(status))
    else:
        say(status_lines(status))
    return 0
