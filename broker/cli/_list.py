"""``greenchannel list``: the requests an agency may read, newest first, through the Bus API's List.

    greenchannel list --as police-310115 --open                 # still waiting for an answer
    greenchannel list --as bank-icbc --role received --breach-within 5   # due within 5 minutes
    greenchannel list --as police-310115 --case SH-PD-2026-1121-0042 --type stop-payment --json

A page holds ``--limit`` requests (default 50); when there are more, the table ends with the
token of the next page (``--page-token``; JSON: ``next_page_token``), and ``--all`` reads every
page. ``--breach-within MINUTES`` reads every open request and keeps those whose next deadline
(the earliest phase deadline neither met nor breached) falls within MINUTES from now, soonest
first; it implies ``--open``. Exit status: 0 listed (none matching is an answer too), 1 the
broker refused, 2 a usage error.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from greenchannel.v1 import bus_pb2, lifecycle_pb2

from broker.client import OPEN_STATES, about_to_breach, next_deadline
from broker.protocol import REQUEST_TYPES_BY_SLUG, SystemClock, validate_message

from . import _env
from ._options import positive_int
from ._output import emit
from ._render_list import list_document, list_lines
from ._requests import client, connection_options, guarded

__all__ = ["ROLES", "TYPES", "add_parser", "list_filters", "run"]

ROLES = {"sent": bus_pb2.ROLE_SENDER, "received": bus_pb2.ROLE_RECIPIENT}
"""``--role`` values: the requests the agency sent, or those addressed to it."""
TYPES = {slug.replace("_", "-"): value for slug, value in REQUEST_TYPES_BY_SLUG.items()}
"""``--type`` values, spelt as ``submit`` spells them (``stop-payment``)."""
_MAX_PAGE = 1000  # the largest page BusService.List serves


def _page_size(text: str) -> int:
    size = positive_int(text)
    if size > _MAX_PAGE:
        raise argparse.ArgumentTypeError(f"{text!r} is more than a page holds ({_MAX_PAGE})")
    return size


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str = "list", help: str = ""
) -> None:
    """Register ``list`` on the ``greenchannel`` parser."""
    parser = commands.add_parser(
        name,
        help=help,
        description=help,
        epilog="--limit requests a page; a table with more ends with the --page-token of the next page"
        " (JSON: next_page_token). Exit status: 0 listed (even none), 1 the broker refused, 2 usage.",
    )
    connection_options(parser, _env.default_broker())
    parser.add_argument(
        "--open",
        action="store_true",
        help="only requests still waiting for an answer (submitted, delivered, acknowledged)",
    )
    parser.add_argument(
        "--breach-within",
        type=positive_int,
        metavar="MINUTES",
        help="only open requests whose next deadline falls within MINUTES (about to breach), soonest first",
    )
    parser.add_argument(
        "--type",
        action="append",
        choices=sorted(TYPES),
        metavar="TYPE",
        help=f"only this request type (repeatable): {', '.join(TYPES)}",
    )
    parser.add_argument("--case", metavar="CASE_NUMBER", help="only this case")
    parser.add_argument(
        "--role", choices=sorted(ROLES), help="only requests this agency sent, or only those it received"
    )
    parser.add_argument(
        "--limit",
        type=_page_size,
        default=50,
        metavar="N",
        help="requests per page (default 50, at most 1000)",
    )
    paging = parser.add_mutually_exclusive_group()
    paging.add_argument("--page-token", metavar="TOKEN", help="the next page, as the previous one named it")
    paging.add_argument("--all", action="store_true", help="every page")


def list_filters(args: argparse.Namespace) -> bus_pb2.ListRequest:
    """The List filters the options name (no paging), checked against the contract."""
    filters = bus_pb2.ListRequest(
        types=[TYPES[name] for name in args.type or ()],
        case_number=args.case or "",
        role=ROLES[args.role] if args.role else bus_pb2.ROLE_UNSPECIFIED,
    )
    if args.open or args.breach_within is not None:
        filters.states.extend(sorted(OPEN_STATES))
    validate_message(filters, prefix="list.")
    return filters


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``list``."""
    return guarded("list", args, lambda: _list(args))


async def _list(args: argparse.Namespace) -> int:
    filters = list_filters(args)
    fields = {
        "states": list(filters.states),
        "types": list(filters.types),
        "case_number": filters.case_number,
        "role": filters.role,
    }
    statuses: list[lifecycle_pb2.RequestStatus]
    async with client(args) as bus:
        if args.all or args.breach_within is not None:
            statuses, token = await bus.list_all(**fields), ""
        else:
            page = await bus.list(page_size=args.limit, page_token=args.page_token or "", **fields)
            statuses, token = list(page.requests), page.next_page_token
    now = SystemClock().now()
    breaching: frozenset[str] | None = None
    if args.breach_within is not None:
        within = timedelta(minutes=args.breach_within)
        statuses = [s for s in statuses if about_to_breach(s, now=now, within=within)]
        statuses.sort(key=_due_ns)
        breaching = frozenset(s.id for s in statuses)
    more = f"--page-token {token}" if token else None
    emit(
        args,
        list_document(statuses, now=now, next_page_token=token, breaching=breaching),
        list_lines(statuses, now=now, breaching=breaching or frozenset(), more=more),
    )
    return 0


def _due_ns(status: lifecycle_pb2.RequestStatus) -> int:
    deadline = next_deadline(status)
    return deadline.due_at.ToNanoseconds() if deadline is not None else 0
