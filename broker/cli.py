"""The ``greenchannel`` command line. The environment is read here and nowhere else."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from broker._cli_adapter import add_adapter_parser, run_adapter
from broker._cli_agencies import add_agencies_parser, run_agencies
from broker._cli_conformance import add_conformance_parser, run_conformance
from broker._cli_keys import add_keys_parser, run_keys
from broker._cli_ledger import add_ledger_parser, run_ledger
from broker._cli_requests import DEFAULT_BROKER, add_request_parsers, run_status, run_submit, run_watch
from broker._cli_sla import add_sla_parser, run_sla
from broker._cli_trail import add_trail_parser, run_trail
from broker._cli_up import add_up_parser, run_up
from broker._logging import configure_logging
from broker.protocol import ProtocolError, SystemClock
from broker.protocol._provision import ensure_agency_keys

__all__ = ["main"]

NATS_URL_ENV = "GREENCHANNEL_NATS_URL"
STATE_DIR_ENV = "GREENCHANNEL_STATE_DIR"
BROKER_ENV = "GREENCHANNEL_BROKER"


def _parser() -> argparse.ArgumentParser:
    from agencies import DEFAULT_DIRECTORY

    parser = argparse.ArgumentParser(prog="greenchannel", description="GreenChannel anti-fraud bus")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(os.environ.get(STATE_DIR_ENV, ".greenchannel")),
        help=f"keys and local data (default: ${STATE_DIR_ENV} or .greenchannel)",
    )
    parser.add_argument(
        "--directory", type=Path, default=DEFAULT_DIRECTORY, help="agency directory TOML (default: sample)"
    )
    parser.add_argument(
        "--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="log level"
    )
    parser.add_argument("--log-json", action="store_true", help="logs as JSON lines on stderr")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run the demo scenario end to end")
    demo.add_argument("--json", action="store_true", help="print the report as one JSON object")

    serve = commands.add_parser("broker", help="run the broker (embedded NATS unless $GREENCHANNEL_NATS_URL)")
    serve.add_argument("--listen", default="127.0.0.1:50051", help="gRPC address (default 127.0.0.1:50051)")
    serve.add_argument(
        "--policy", type=Path, default=None, help="authorization policy TOML (default: sample)"
    )
    serve.add_argument(
        "--key-overlay",
        type=Path,
        action="append",
        metavar="FILE",
        help="overlay of agencies' public keys (greenchannel keys ... --write FILE); repeatable, reloaded",
    )
    serve.add_argument(
        "--directory-poll",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="check the directory and overlays for changes this often (default 2; 0: only on SIGHUP)",
    )
    serve.add_argument("--no-reflection", action="store_true", help="do not serve gRPC reflection")
    serve.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="N",
        help="JetStream replicas of the broker's streams and buckets (3 on a NATS cluster)",
    )
    serve.add_argument(
        "--tls-cert", type=Path, help="server certificate (PEM); enables mTLS with --tls-key/--tls-ca"
    )
    serve.add_argument("--tls-key", type=Path, help="server private key (PEM)")
    serve.add_argument("--tls-ca", type=Path, help="CA that signs client certificates (PEM)")
    serve.add_argument(
        "--sla-policy",
        type=Path,
        default=None,
        help="SLA policy TOML (default: agencies/sla/cn.toml; agencies/sla/eu.toml is an EU-style example)",
    )

    nats_auth = commands.add_parser(
        "nats-authorization",
        help="print the NATS accounts (per-agency users) for a server of your own ($GREENCHANNEL_NATS_URL)",
    )
    nats_auth.add_argument(
        "--format",
        choices=["conf", "json"],
        default="conf",
        help="nats-server.conf block or JSON (default conf)",
    )

    add_up_parser(commands)
    add_keys_parser(commands)
    add_agencies_parser(commands)
    add_adapter_parser(commands)
    add_request_parsers(commands, default_broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER)
    add_sla_parser(commands, default_broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER)
    add_trail_parser(commands, default_broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER)
    add_ledger_parser(commands, default_broker=os.environ.get(BROKER_ENV) or DEFAULT_BROKER)
    add_conformance_parser(commands)
    return parser


def _demo(args: argparse.Namespace) -> int:
    from agencies import DemoConfig, run_demo

    config = DemoConfig(
        state_dir=args.state_dir, directory=args.directory, nats_url=os.environ.get(NATS_URL_ENV)
    )
    say = (lambda _text: None) if args.json else print
    report = asyncio.run(run_demo(config, say=say))
    if args.json:
        document = {
            "ok": report.ok,
            "requests": [r.as_json() for r in report.requests],
            "held_minor_units": report.held_minor_units,
            "ledger": {"entries": report.ledger_entries, "verified": report.ledger_verified},
            "sla": {"met": report.sla_met, "breached": report.sla_breached},
        }
        print(json.dumps(document, ensure_ascii=False))
    else:
        print("demo: " + ("every request ended as expected" if report.ok else "FAILED: see the table above"))
    return 0 if report.ok else 1


def _broker(args: argparse.Namespace) -> int:
    from broker._run_broker import run_broker
    from broker.hub._errors import PolicyError
    from broker.hub._policy import load_policy
    from broker.hub._sla_policy import load_sla_policy

    try:
        # Every file is checked before anything is created: a typo in a policy must not leave
        # keys, a NATS store or a half-started broker behind, nor end in a traceback.
        if args.policy is not None:
            load_policy(args.policy)
        if args.sla_policy is not None:
            load_sla_policy(args.sla_policy)
        asyncio.run(run_broker(args, nats_url=os.environ.get(NATS_URL_ENV)))
    except PolicyError as exc:  # not a ProtocolError: the hub's own root
        print(f"greenchannel: {exc}", file=sys.stderr)
        return 1
    return 0


def _nats_authorization(args: argparse.Namespace) -> int:
    from broker.protocol._directory import load_directory
    from broker.protocol._nats_auth import nats_authorization, render_authorization_conf

    overlay = ensure_agency_keys(args.directory, args.state_dir, clock=SystemClock())
    registry = load_directory(args.directory, key_overlays=[overlay])
    # Seeds are generated where missing and stay in <state-dir>/keys/nats; only public keys print.
    authorization = nats_authorization(args.state_dir, [agency.id for agency in registry.agencies()])
    if args.format == "json":
        print(json.dumps({"accounts": authorization.accounts_config()}, indent=2))
    else:
        print(render_authorization_conf(authorization), end="")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level, json_logs=args.log_json)
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "keys":
            return run_keys(args)
        if args.command == "nats-authorization":
            return _nats_authorization(args)
        if args.command == "broker":
            return _broker(args)
        if args.command == "agencies":
            return run_agencies(args, nats_url=os.environ.get(NATS_URL_ENV))
        if args.command == "adapter":
            return run_adapter(args)
        if args.command == "up":
            return run_up(args, nats_url=os.environ.get(NATS_URL_ENV))
        if args.command == "submit":
            return run_submit(args)
        if args.command == "watch":
            return run_watch(args)
        if args.command == "status":
            return run_status(args)
        if args.command == "sla":
            return run_sla(args)
        if args.command == "trail":
            return run_trail(args)
        if args.command == "ledger":
            return run_ledger(args)
        if args.command == "conformance":
            return run_conformance(args)
    except KeyboardInterrupt:
        return 130
    except ProtocolError as exc:
        print(f"greenchannel: {exc}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
