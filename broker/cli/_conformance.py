"""``greenchannel conformance``: certify an agency's own service implementation against the contract.

The command is a thin shell over :mod:`adapters.conformance`: it opens the channel (TLS with a CA
and optionally a client certificate, or plaintext only when asked for), runs the kind's checks,
prints the table (or JSON) and exits 0 only when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from ._output import emit, json_option, print_json

if TYPE_CHECKING:
    from adapters.conformance import ConformanceFixture, ConformanceReport

__all__ = ["add_parser", "run"]


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "conformance",
    help: str = "",
) -> None:
    """Register ``conformance`` on the ``greenchannel`` parser."""
    parser = commands.add_parser(
        name,
        help=help,
        description="Run the conformance checks against an agency service seeded with the conformance "
        "fixture (adapters/conformance/fixture.json; --print-fixture shows it).",
    )
    parser.add_argument("kind", choices=["bank", "carrier", "platform", "police"], help="the service's kind")
    parser.add_argument("--target", help="HOST:PORT of the agency service")
    parser.add_argument(
        "--tls-ca", type=Path, help="CA certificate (PEM) the service's certificate chains to"
    )
    parser.add_argument(
        "--tls-cert", type=Path, help="client certificate (PEM), for services asking mutual TLS"
    )
    parser.add_argument("--tls-key", type=Path, help="client private key (PEM) of --tls-cert")
    parser.add_argument(
        "--plaintext", action="store_true", help="connect without TLS (only for a service on a trusted host)"
    )
    parser.add_argument(
        "--fixture", type=Path, help="the fixture the service was seeded with (default: shipped)"
    )
    parser.add_argument(
        "--call-timeout", type=float, default=10.0, help="gRPC deadline of each call, as the adapter's (10 s)"
    )
    parser.add_argument("--check", action="append", default=[], help="run only this check (repeatable)")
    json_option(parser, help="print the report as one JSON object")
    parser.add_argument("--print-fixture", action="store_true", help="print the shipped fixture and exit")
    parser.add_argument("--list-checks", action="store_true", help="list the kind's checks and exit")


def _usage_error(message: str) -> int:
    print(f"greenchannel conformance: {message}", file=sys.stderr)
    return 2


def _credentials(args: argparse.Namespace) -> grpc.ChannelCredentials | str | None:
    """Channel credentials, None for plaintext, or a usage error message."""
    if args.plaintext:
        if args.tls_ca or args.tls_cert or args.tls_key:
            return "--plaintext excludes --tls-ca, --tls-cert and --tls-key"
        return None
    if args.tls_ca is None:
        return "give --tls-ca FILE (TLS) or --plaintext (explicitly without TLS)"
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together"
    from broker.protocol import channel_credentials

    try:
        # Read and checked now (the key belongs to the certificate), not at the first handshake.
        return channel_credentials(args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    except ValueError as exc:
        return f"cannot read the TLS files: {exc}"


def run(args: argparse.Namespace) -> int:
    """Exit status: 0 all checks passed, 1 a check failed, 2 a usage or fixture error."""
    # Imported when dispatched: the rest of the CLI never loads the kit.
    from adapters.conformance import CHECKS, FixtureError, default_fixture_text, load_fixture

    if args.print_fixture:
        print(default_fixture_text(), end="")
        return 0
    _stub, checks = CHECKS[args.kind]
    if args.list_checks:
        emit(
            args,
            {"kind": args.kind, "checks": [{"name": c.name, "proves": c.proves} for c in checks]},
            [f"{check.name}: {check.proves}" for check in checks],
        )
        return 0
    unknown = sorted(set(args.check) - {check.name for check in checks})
    if unknown:
        return _usage_error(f"no {args.kind} check named {', '.join(unknown)} (see --list-checks)")
    if not args.target:
        return _usage_error("give --target HOST:PORT")
    if args.call_timeout <= 0:
        return _usage_error("--call-timeout must be positive")
    credentials = _credentials(args)
    if isinstance(credentials, str):
        return _usage_error(credentials)
    try:
        fixture = load_fixture(args.fixture)
    except FixtureError as exc:
        return _usage_error(str(exc))
    report = asyncio.run(_run(args, credentials, fixture))
    if args.json:
        print_json(report.to_json())
    else:
        print(report.render_table())
    return 0 if report.passed else 1


async def _run(
    args: argparse.Namespace, credentials: grpc.ChannelCredentials | None, fixture: ConformanceFixture
) -> ConformanceReport:
    from adapters.conformance import run_checks

    if credentials is None:
        channel = grpc.aio.insecure_channel(args.target)
    else:
        channel = grpc.aio.secure_channel(args.target, credentials)
    async with channel:
        return await run_checks(
            args.kind,
            channel,
            target=args.target,
            fixture=fixture,
            call_timeout=args.call_timeout,
            only=tuple(args.check),
        )
