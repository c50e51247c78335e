"""``greenchannel keys init``: generate missing keys for every agency of the directory and the broker."""

from __future__ import annotations

import argparse

from broker.protocol import SystemClock, ensure_agency_keys

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "keys",
    help: str = "",
) -> None:
    """Register ``keys init`` on the ``greenchannel`` parser."""
    keys = commands.add_parser(name, help=help)
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser("init", help="generate missing keys for every agency and the broker")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``keys`` command."""
    overlay = ensure_agency_keys(args.directory, args.state_dir, clock=SystemClock())
    print(f"keys ready; public keys in {overlay}")
    return 0
