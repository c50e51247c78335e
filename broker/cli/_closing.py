"""``greenchannel return | appeal``: closing a case from the command line, through the Bus API.

``return plan`` shows how an account's frozen money is allocated over every claim on it;
``return order`` orders the bank to pay victims back (RETURN_FUNDS under a return notice).
``appeal file`` passes a holder's appeal against a restriction (or a risk mark) to the police that
ordered it;
``appeal decide`` is the police's decision. Exit status as the request commands: 0 done, 1 the bus
or a key said no, 2 a usage error, 3 ``--wait`` saw the request end without being executed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from greenchannel.v1 import common_pb2, lifecycle_pb2, requests_pb2, results_pb2

from broker.client import BusClient
from broker.protocol import FINAL_STATES, SystemClock, to_timestamp, validate_message

from . import _env
from ._options import CliError, agency_option
from ._render import status_document, status_lines
from ._render_closing import (
    ORDERED_ALLOCATION,
    allocation_document,
    allocation_lines,
    lifting_document,
    lifting_lines,
    returns_document,
    returns_lines,
)
from ._requests import (
    ACCOUNT_NUMBER,
    client,
    connection_options,
    guarded,
    own_details,
    parse_amount,
    print_json,
    say,
    wait_exit,
    wait_final,
    wait_options,
)
from ._risk import mark_id_option, parse_holder_identifier

__all__ = ["Payout", "add_parser", "build_return", "parse_payout", "run"]

_GROUNDS = [
    name.removeprefix("APPEAL_GROUND_").lower().replace("_", "-")
    for name, value in requests_pb2.AppealGround.items()
    if value != requests_pb2.APPEAL_GROUND_UNSPECIFIED
]
_MEDIA_TYPES = {".pdf": "application/pdf", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png"}
# An appeal is filed when the police desk acknowledges it; its outcome is the decision, later.
_FILED = FINAL_STATES | {common_pb2.REQUEST_STATE_ACKNOWLEDGED}


@dataclass(frozen=True)
class Payout:
    """One ``--pay VICTIM_ACCOUNT:HOLDER:AMOUNT``."""

    account: str
    holder: str
    minor_units: int


def parse_payout(text: str) -> Payout:
    """``6222...:王某:3000.00`` (argparse names the option in its error, and exits 2)."""
    parts = text.split(":")
    if len(parts) != 3 or not all(part.strip() for part in parts):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not VICTIM_ACCOUNT:HOLDER:AMOUNT, e.g. 6222020200001234567:王某:3000.00"
        )
    account, holder, amount = (part.strip() for part in parts)
    if not ACCOUNT_NUMBER.fullmatch(account):
        raise argparse.ArgumentTypeError(f"{account!r} is not an account number")
    return Payout(account=account, holder=holder, minor_units=parse_amount(amount))


# -- argparse -------------------------------------------------------------------------------------


def _account_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--case", required=True, metavar="CASE_NUMBER", help="case number (owned by --as)")
    parser.add_argument(
        "--account", required=True, metavar="NUMBER", help="the account the money is frozen on"
    )
    parser.add_argument(
        "--holder", required=True, metavar="NAME", help="its holder's name as the bank records it"
    )
    parser.add_argument(
        "--bank", metavar="BANK", help="bank agency id (default: routed by the account number)"
    )


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
) -> None:
    """Register ``return`` or ``appeal`` (``name``) with their subcommands."""
    default_broker = _env.default_broker()
    command = commands.add_parser(name, help=help, description=help)
    actions = command.add_subparsers(dest="action", required=True, metavar="ACTION")
    if name == "return":
        plan = actions.add_parser(
            "plan",
            help="how the account's frozen money is shared over every claim on it (--json for programs)",
        )
        connection_options(plan, default_broker)
        _account_options(plan)
        plan.add_argument(
            "--owner",
            type=agency_option,
            metavar="POLICE_AGENCY",
            help="the police agency owning --case, for regulators (police read their own cases)",
        )
        order = actions.add_parser(
            "order",
            help="order the bank to pay victims back (RETURN_FUNDS; --json for programs)",
        )
        connection_options(order, default_broker)
        _account_options(order)
        order.add_argument(
            "--pay",
            action="append",
            required=True,
            type=parse_payout,
            metavar="VICTIM_ACCOUNT:HOLDER:AMOUNT",
            help="a victim's account, its holder and the amount paid back, e.g. 6222...:王某:3000.00"
            " (repeatable; each within the claim's share payable now: see `return plan`)",
        )
        order.add_argument("--currency", default="CNY", help="ISO 4217 code of the amounts (default CNY)")
        order.add_argument(
            "--instrument", metavar="ID", help="the return notice's number (default: the case number)"
        )
        order.add_argument(
            "--priority",
            choices=["green", "standard"],
            default="standard",
            help="SLA lane (default standard)",
        )
        wait_options(order)
    elif name == "appeal":
        file = actions.add_parser(
            "file",
            help="pass a holder's appeal against a restriction this agency applied, or a risk mark on an"
            " identifier it serves, to the police (--json)",
        )
        connection_options(file, default_broker)
        appealed = file.add_mutually_exclusive_group(required=True)
        appealed.add_argument(
            "--restriction", metavar="REQUEST_ID", help="the stop-payment, freeze or block appealed"
        )
        appealed.add_argument(
            "--mark",
            type=mark_id_option,
            metavar="MARK_ID",
            help="the risk mark appealed (with --identifier, --police, --case)",
        )
        file.add_argument(
            "--identifier",
            type=parse_holder_identifier,
            metavar="KIND:VALUE",
            help="with --mark: the holder's identifier this agency serves"
            " (account:NUMBER, phone:+86..., platform:CODE:ACCOUNT_ID)",
        )
        file.add_argument(
            "--police",
            type=agency_option,
            metavar="POLICE",
            help="with --mark: the police owning the mark's case",
        )
        file.add_argument("--case", metavar="CASE_NUMBER", help="with --mark: the mark's case")
        file.add_argument("--ground", required=True, choices=_GROUNDS, help="on what ground")
        file.add_argument(
            "--statement-file",
            required=True,
            type=Path,
            metavar="FILE",
            help="the holder's statement (UTF-8 text), sealed to the police",
        )
        file.add_argument(
            "--document",
            action="append",
            default=[],
            type=Path,
            metavar="FILE",
            help="a supporting document (repeatable), sealed with the statement",
        )
        file.add_argument(
            "--ticket", required=True, help="this agency's appeal ticket number (the instrument)"
        )
        wait_options(
            file,
            until="the police have filed the appeal (ACKNOWLEDGED) or it ended",
            done="it was filed or decided",
        )
        decide = actions.add_parser(
            "decide", help="decide an appeal addressed to this police agency, once (--json for programs)"
        )
        connection_options(decide, default_broker)
        decide.add_argument("appeal_id", metavar="APPEAL_ID", help="the APPEAL request")
        decision = decide.add_mutually_exclusive_group(required=True)
        decision.add_argument("--uphold", action="store_true", help="the restriction stays")
        decision.add_argument(
            "--lift",
            action="store_true",
            help="the restriction is lifted: the broker sends the lifting orders",
        )
        decide.add_argument("--reason", required=True, help="why, for the holder and the restricting agency")
        wait_options(
            decide,
            until="the lifting orders the broker sends (--lift) reach a final state",
            done="they were executed (at once with --uphold)",
        )
    else:
        raise ValueError(f"not a closing command: {name}")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``return`` or ``appeal`` action."""
    work = {
        ("return", "plan"): _plan,
        ("return", "order"): _order,
        ("appeal", "file"): _file,
        ("appeal", "decide"): _decide,
    }[(args.command, args.action)]
    return guarded(f"{args.command} {args.action}", args, lambda: work(args))


def _account(args: argparse.Namespace) -> common_pb2.BankAccountRef:
    return common_pb2.BankAccountRef(
        account_number=args.account, holder_name=args.holder, bank=args.bank or ""
    )


# -- return ---------------------------------------------------------------------------------------


async def _plan(args: argparse.Namespace) -> int:
    async with client(args) as bus:
        allocation = await bus.allocation(args.case, _account(args), issuing_agency=args.owner or "")
    now = SystemClock().now()
    if args.json:
        print_json({"case_number": args.case, **allocation_document(allocation, now=now)})
    else:
        say(allocation_lines(allocation, now=now))
    return 0


def build_return(args: argparse.Namespace) -> requests_pb2.Request:
    """The RETURN_FUNDS request the options describe, checked against the contract's field rules."""
    request = requests_pb2.Request(
        case_ref=common_pb2.CaseRef(
            case_number=args.case,
            issuing_agency=args.agency,
            legal_instrument_id=args.instrument or args.case,
            legal_instrument_type=common_pb2.LEGAL_INSTRUMENT_TYPE_RETURN_NOTICE,
        ),
        priority=common_pb2.PRIORITY_GREEN if args.priority == "green" else common_pb2.PRIORITY_STANDARD,
        issued_at=to_timestamp(SystemClock().now()),
        return_funds=requests_pb2.ReturnFunds(
            account=_account(args),
            payouts=[
                requests_pb2.VictimPayout(
                    victim_account=common_pb2.BankAccountRef(
                        account_number=pay.account, holder_name=pay.holder
                    ),
                    amount=common_pb2.Money(currency=args.currency, minor_units=pay.minor_units),
                )
                for pay in args.pay
            ],
        ),
    )
    validate_message(request, prefix="request.")
    return request


async def _order(args: argparse.Namespace) -> int:
    request = build_return(args)
    async with client(args) as bus:
        status = (await bus.submit(request)).status
        waited_out = False
        if args.wait:
            status, waited_out = await wait_final(bus, status.id, args)
    _show_return(status, args)
    return wait_exit("return order", status, args, waited_out=waited_out) if args.wait else 0


def _show_return(status: lifecycle_pb2.RequestStatus, args: argparse.Namespace) -> None:
    details = own_details(status, args)
    now = SystemClock().now()
    if args.json:
        document = status_document(status, details=details)
        if status.HasField("allocation"):
            document["allocation"] = allocation_document(status.allocation, now=now)
        if status.HasField("result"):
            document["returned"] = returns_document(status.result)
        print_json(document)
        return
    lines = status_lines(status, details=details)
    if status.HasField("allocation"):
        lines += ["", *allocation_lines(status.allocation, now=now, note=ORDERED_ALLOCATION)]
    if status.HasField("result"):
        lines += returns_lines(status.result, details)
    say(lines)


# -- appeal ---------------------------------------------------------------------------------------


def _statement(args: argparse.Namespace) -> requests_pb2.AppealStatement:
    try:
        text = args.statement_file.read_text(encoding="utf-8")
        documents = [
            requests_pb2.AppealDocument(
                name=path.name,
                media_type=_MEDIA_TYPES.get(path.suffix.lower(), "application/octet-stream"),
                content=path.read_bytes(),
            )
            for path in args.document
        ]
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read the appeal's files: {exc}", exit_code=2) from exc
    statement = requests_pb2.AppealStatement(statement=text.strip(), documents=documents)
    validate_message(statement, prefix="statement.")
    return statement


def _mark_options(args: argparse.Namespace) -> None:
    """--mark needs whose identifier and which case; a restriction names its own."""
    given = {"--identifier": args.identifier, "--police": args.police, "--case": args.case}
    if args.mark is not None:
        missing = [name for name, value in given.items() if value is None]
        if missing:
            raise CliError(f"--mark needs {', '.join(missing)}", exit_code=2)
    elif any(value is not None for value in given.values()):
        raise CliError("--identifier, --police and --case go with --mark", exit_code=2)


async def _file(args: argparse.Namespace) -> int:
    _mark_options(args)
    statement = _statement(args)
    ground = requests_pb2.AppealGround.Value("APPEAL_GROUND_" + args.ground.upper().replace("-", "_"))
    async with client(args) as bus:
        if args.mark is not None:
            status = await bus.file_mark_appeal(
                args.mark,
                args.identifier,
                police=args.police,
                case_number=args.case,
                ground=ground,
                statement=statement,
                ticket=args.ticket,
            )
        else:
            status = await bus.file_appeal(
                args.restriction, ground=ground, statement=statement, ticket=args.ticket
            )
        waited_out = False
        if args.wait:
            status, waited_out = await wait_final(
                bus, status.id, args, states=_FILED, until="the police to file the appeal"
            )
    if args.json:
        print_json(status_document(status))
    else:
        say(status_lines(status))
    return wait_exit("appeal file", status, args, waited_out=waited_out) if args.wait else 0


async def _decide(args: argparse.Namespace) -> int:
    decision = results_pb2.APPEAL_DECISION_LIFTED if args.lift else results_pb2.APPEAL_DECISION_UPHELD
    async with client(args) as bus:
        reply = await bus.decide_appeal(args.appeal_id, decision, args.reason)
        lifting = list(reply.lifting)
        waited_out = False
        if args.wait and lifting:
            lifting, waited_out = await _follow(bus, lifting, args)
    if args.json:
        document = status_document(reply.status)
        document["appeal"] = lifting_document(reply.status, lifting)
        print_json(document)
    else:
        say([*status_lines(reply.status), "", *lifting_lines(reply.status, lifting)])
    if args.wait:
        for order in lifting:
            # The first order not executed (or still going when time ran out) decides the status.
            code = wait_exit(
                "appeal decide", order, args, waited_out=waited_out and order.state not in FINAL_STATES
            )
            if code:
                return code
    return 0


async def _follow(
    bus: BusClient, orders: list[lifecycle_pb2.RequestStatus], args: argparse.Namespace
) -> tuple[list[lifecycle_pb2.RequestStatus], bool]:
    """The lifting orders once final, within one ``--timeout`` for all; whether time ran out."""
    print(
        f"waiting up to {args.timeout:g} s for {len(orders)} lifting order(s) to reach a final state"
        " (Ctrl-C stops the waiting, not the orders)",
        file=sys.stderr,
        flush=True,
    )
    within = timedelta(seconds=args.timeout)
    try:
        async with asyncio.timeout(args.timeout):
            return [await bus.wait_for(order.id, FINAL_STATES, within=within) for order in orders], False
    except TimeoutError:
        return [await bus.get(order.id) for order in orders], True
