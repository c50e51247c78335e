"""``greenchannel nats-authorization``: the NATS accounts block for an operator's own server."""

from __future__ import annotations

import argparse

from broker.protocol import (
    SystemClock,
    ensure_agency_keys,
    load_directory,
    nats_authorization,
    render_authorization_conf,
)

from ._output import json_option, print_json

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "nats-authorization",
    help: str = "",
) -> None:
    """Register ``nats-authorization`` on the ``greenchannel`` parser."""
    nats_auth = commands.add_parser(name, help=help)
    nats_auth.add_argument(
        "--format",
        choices=["conf", "json"],
        default="conf",
        help="nats-server.conf block or JSON (default conf)",
    )
    json_option(nats_auth, help="the accounts as one JSON object (the same as --format json)")


def run(args: argparse.Namespace) -> int:
    """Print the accounts; seeds are generated where missing and stay in <state-dir>/keys/nats."""
    overlay = ensure_agency_keys(args.directory, args.state_dir, clock=SystemClock())
    registry = load_directory(args.directory, key_overlays=[overlay])
    # Only public keys print.
    authorization = nats_authorization(args.state_dir, [agency.id for agency in registry.agencies()])
    if args.json or args.format == "json":
        print_json({"accounts": authorization.accounts_config()})
    else:
        print(render_authorization_conf(authorization), end="")
    return 0
