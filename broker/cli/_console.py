"""``greenchannel console --as AGENCY [--listen 127.0.0.1:8080]``: the agency's web console.

Runs on the agency's side with its own keys (``--state-dir``) and talks to the broker as a
client. Listens on loopback unless ``--allow-remote`` (see docs/console.md before using it).

Exit status: 0 stopped, 1 the console could not start (keys, address), 2 a usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from broker.protocol import ProtocolError

from . import _env
from ._options import agency_option

__all__ = ["add_parser", "run"]


def add_parser(subparsers: Any, name: str = "console", help: str = "") -> None:
    """Register ``console --as AGENCY [--listen HOST:PORT] [--broker HOST:PORT] [--json]
    [--allow-remote]``."""
    default_broker = _env.default_broker()
    console = subparsers.add_parser(name, help=help)
    console.add_argument(
        "--as", dest="agency", required=True, type=agency_option, metavar="AGENCY", help="agency to act as"
    )
    console.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="address of the console (default 127.0.0.1:8080; port 0 picks one)",
    )
    console.add_argument(
        "--broker",
        default=default_broker,
        metavar="HOST:PORT",
        help=f"broker address (default {default_broker})",
    )
    console.add_argument(
        "--json", action="store_true", help="print the console's address (or why it did not start) as JSON"
    )
    console.add_argument(
        "--allow-remote",
        action="store_true",
        help="listen beyond loopback (only behind an authenticating proxy: docs/console.md)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve the console until Ctrl-C; needs the top-level ``--state-dir`` (the agency's keys)."""
    from broker.console import ConsoleConfig, ConsoleError, parse_listen, serve

    def ready(url: str) -> None:
        if args.json:
            print(json.dumps({"console": url, "agency": args.agency, "broker": args.broker}), flush=True)
        else:
            print(f"console: {url}", flush=True)

    try:
        host, port = parse_listen(args.listen)
        config = ConsoleConfig(
            agency_id=args.agency,
            broker=args.broker,
            state_dir=args.state_dir,
            host=host,
            port=port,
            allow_remote=args.allow_remote,
        )
        asyncio.run(serve(config, ready=ready))
    except (ConsoleError, ProtocolError) as exc:
        if args.json:
            print(json.dumps({"error": {"message": str(exc)}}, ensure_ascii=False))
        print(f"greenchannel console: {exc}", file=sys.stderr)
        return 1
    return 0
