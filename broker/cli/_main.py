"""The ``greenchannel`` dispatcher: global options, the command table, one command imported.

``greenchannel --help`` builds its list from :data:`COMMANDS` alone; a command's own module
(and what it imports) loads only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

from broker._logging import configure_logging
from broker.protocol import ProtocolError

from ._env import STATE_DIR_ENV, default_state_dir
from ._samples import sample_directory

__all__ = ["COMMANDS", "Command", "main", "parser_for"]


@dataclass(frozen=True, kw_only=True)
class Command:
    """One subcommand: where it lives and what ``--help`` says about it."""

    module: str
    """The module with ``add_parser(subparsers, name, help)`` and ``run(args)``."""
    help: str
    """One line for ``greenchannel --help``."""


COMMANDS: dict[str, Command] = {
    "demo": Command(module="broker.cli._demo", help="run the demo scenario end to end"),
    "broker": Command(
        module="broker.cli._broker", help="run the broker (embedded NATS unless $GREENCHANNEL_NATS_URL)"
    ),
    "keys": Command(
        module="broker.cli._keys", help="an agency's keys: generate, rotate, revoke (and demo init)"
    ),
    "nats-authorization": Command(
        module="broker.cli._nats_authorization",
        help="print the NATS accounts (per-agency users) for a server of your own ($GREENCHANNEL_NATS_URL)",
    ),
    "up": Command(
        module="broker.cli._up",
        help="run NATS, the broker and every agency's system with its adapter, until Ctrl-C",
    ),
    "agencies": Command(
        module="broker.cli._agencies",
        help="run the reference agency systems and adapters against $GREENCHANNEL_NATS_URL, until Ctrl-C",
    ),
    "adapter": Command(
        module="broker.cli._adapter",
        help="run ONE agency's adapter against its own system, configured by a TOML file",
    ),
    "submit": Command(module="broker.cli._requests", help="sign and submit a request as an agency"),
    "watch": Command(module="broker.cli._requests", help="follow lifecycle events live until Ctrl-C"),
    "status": Command(
        module="broker.cli._requests", help="one request: state, deadlines, result and timeline"
    ),
    "list": Command(
        module="broker.cli._list",
        help="this agency's requests, newest first: open, about to breach, by type, case or role",
    ),
    "cancel": Command(
        module="broker.cli._cancel",
        help="withdraw a request this agency sent, before the recipient takes it",
    ),
    "return": Command(
        module="broker.cli._closing",
        help="资金返还: an account's allocation over every claim (plan), pay victims back (order)",
    ),
    "appeal": Command(
        module="broker.cli._closing",
        help="申诉: pass a holder's appeal to the police (file); the police's decision (decide)",
    ),
    "feedback": Command(
        module="broker.cli._feedback",
        help="the police's feedback on a fraud report that reached them (give), once",
    ),
    "sla": Command(module="broker.cli._sla", help="green-channel SLA compliance"),
    "trail": Command(
        module="broker.cli._trail",
        help="a case's money trail: accounts held with amounts, and what escaped the chase",
    ),
    "cases": Command(
        module="broker.cli._cases",
        help="串并: the other cases that touched an account, number, handset or platform account of a case",
    ),
    "risk": Command(
        module="broker.cli._risk",
        help="risk registry: check identifiers before a payment, mark, decide, unmark, marks, counts",
    ),
    "ledger": Command(module="broker.cli._ledger", help="export and verify the tamper-evident ledger"),
    "console": Command(
        module="broker.cli._console", help="the agency's web console: open requests live, cases, SLA, actions"
    ),
    "conformance": Command(
        module="broker.cli._conformance",
        help="certify an agency's own BankService / CarrierService / PlatformService / PoliceService",
    ),
}
"""Every subcommand, in ``--help`` order."""


class _CommandModule(Protocol):
    def add_parser(self, subparsers: Any, name: str, help: str) -> None: ...

    def run(self, args: argparse.Namespace) -> int: ...


def _module(name: str) -> _CommandModule:
    return cast(_CommandModule, importlib.import_module(COMMANDS[name].module))


def _global_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help=f"keys and local data (default: ${STATE_DIR_ENV} or .greenchannel)",
    )
    parser.add_argument(
        "--directory", type=Path, default=None, help="agency directory TOML (default: sample)"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="log level"
    )
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines on stderr")


def _command_of(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names, read past the global options without parsing the rest."""
    scout = argparse.ArgumentParser(add_help=False)
    _global_options(scout)
    scout.add_argument("command", nargs="?")
    known, _rest = scout.parse_known_args(argv)
    command: str | None = known.command
    return command if command in COMMANDS else None


def _describe(parser: argparse.ArgumentParser) -> None:
    """Each subcommand's ``--help`` opens with the line its parent's ``--help`` lists for it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            lines = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or lines.get(name)
                _describe(sub)


def parser_for(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The full parser for ``argv``: the named command's real parser, the others as names only."""
    chosen = _command_of(argv)
    parser = argparse.ArgumentParser(prog="greenchannel", description="GreenChannel anti-fraud bus")
    _global_options(parser)
    commands = parser.add_subparsers(dest="command", required=True)
    loaded = _module(chosen) if chosen is not None else None
    for name, command in COMMANDS.items():
        if loaded is not None and command.module == COMMANDS[chosen or ""].module:
            if name == chosen:
                loaded.add_parser(commands, name, command.help)
                commands.choices[name].description = commands.choices[name].description or command.help
                _describe(commands.choices[name])
            else:  # a sibling command of the same module: a name in the list only
                commands.add_parser(name, help=command.help, add_help=False)
        else:
            commands.add_parser(name, help=command.help, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser_for(argv).parse_args(argv)
    configure_logging(args.log_level, json_logs=args.log_json)
    try:
        if args.directory is None:
            args.directory = sample_directory()
        return _module(args.command).run(args)
    except KeyboardInterrupt:
        return 130
    except ProtocolError as exc:
        print(f"greenchannel: {exc}", file=sys.stderr)
        return 1
