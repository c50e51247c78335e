"""``greenchannel cancel REQUEST_ID --as AGENCY [--reason TEXT]``: withdraw a request, through the
Bus API's Cancel (signed by the sender, for the broker).

Only the sender may cancel, and only before the recipient took the request (ACKNOWLEDGED): after
that the broker refuses and the request goes on (a hold already placed is lifted with ``submit
release``). Exit status: 0 the request is cancelled, 1 the broker refused, 2 a usage error.
"""

from __future__ import annotations

import argparse

from greenchannel.v1 import common_pb2, lifecycle_pb2

from broker.protocol import SystemClock, state_name, to_timestamp, validate_message

from . import _env
from ._options import CliError
from ._output import EXIT_OK, emit
from ._render import status_document, status_lines
from ._requests import client, connection_options, guarded

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str = "cancel", help: str = ""
) -> None:
    """Register ``cancel`` on the ``greenchannel`` parser."""
    parser = commands.add_parser(name, help=help, description=help)
    parser.add_argument("id", metavar="REQUEST_ID", help="the request to withdraw (sent by --as)")
    connection_options(parser, _env.default_broker())
    parser.add_argument("--reason", default="", help="why, for the record (no personal data)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``cancel``."""
    return guarded("cancel", args, lambda: _cancel(args))


async def _cancel(args: argparse.Namespace) -> int:
    # The cancellation's own rules, before anything is signed: a malformed id exits 2 here.
    validate_message(
        lifecycle_pb2.Cancellation(
            request_id=args.id, reason=args.reason, issued_at=to_timestamp(SystemClock().now())
        ),
        prefix="cancellation.",
    )
    async with client(args) as bus:
        status = await bus.cancel(args.id, args.reason)
    if status.state != common_pb2.REQUEST_STATE_CANCELLED:
        raise CliError(f"{status.id} is {state_name(status.state)}, not cancelled")
    emit(args, status_document(status), status_lines(status))
    return EXIT_OK
