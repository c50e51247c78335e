"""``greenchannel agencies``: the reference agency systems and their adapters, without a broker.

Each agency of the directory (regulators aside: they run no service), or those named by
``--only``, gets its reference system as a real gRPC server and an adapter consuming its inbox,
all in this one process, against the NATS of ``$GREENCHANNEL_NATS_URL`` where a broker runs
elsewhere. It runs until SIGINT / SIGTERM. This is the agencies' half of ``greenchannel up`` as a
process of its own, so it can be stopped, killed and started again while the broker keeps
running: the agencies' databases and the adapters' state live under ``--data`` and survive.

``python -m broker.cli._agencies`` runs the same command on its own (flat flags:
``--state-dir``, ``--directory``, ``--log-level`` and the command's own).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from agencies.demo import AgenciesConfig, AgencyFleet
from broker._logging import configure_logging
from broker.protocol import DEFAULT_INBOX_ACK_WAIT, MetricsConfig, ProtocolError, listen_problem

from . import _env
from ._loop import run as run_loop
from ._output import EXIT_REFUSED, announce, complain, json_option
from ._samples import sample_directory

__all__ = ["READY_PREFIX", "add_parser", "main", "run", "run_agencies"]

log = structlog.get_logger(__name__)

READY_PREFIX = "greenchannel agencies: "
"""Start of the line printed on stdout once every adapter consumes its inbox."""

_RUN_DIR = "run"  # the same place `greenchannel up` keeps agency data, so both see the same banks


# -- command line -------------------------------------------------------------------------------


def _agency_ids(text: str) -> tuple[str, ...]:
    ids = tuple(part.strip() for part in text.split(",") if part.strip())
    if not ids:
        raise argparse.ArgumentTypeError("name at least one agency id")
    return ids


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return value


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--only",
        type=_agency_ids,
        default=(),
        metavar="ID,ID",
        help="run only these agencies (default: every agency of the directory except regulators)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"agency databases and adapter state (default: <state-dir>/{_RUN_DIR}, as `greenchannel up`)",
    )
    parser.add_argument(
        "--ack-wait",
        type=_positive,
        default=DEFAULT_INBOX_ACK_WAIT,
        metavar="SECONDS",
        help=(
            "inbox ack wait: how soon a message held by a crashed adapter is delivered again "
            f"(default {DEFAULT_INBOX_ACK_WAIT:g}; held messages are kept alive every third of it)"
        ),
    )
    parser.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the adapters' Prometheus metrics here, on one endpoint (default: off; docs/metrics.md)",
    )
    json_option(parser, help="status lines as JSON objects, one per line (agencies.ready)")


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "agencies",
    help: str = "",
) -> None:
    """Register ``agencies`` on the ``greenchannel`` parser."""
    _add_options(commands.add_parser(name, help=help))


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``agencies`` against ``$GREENCHANNEL_NATS_URL``."""
    return run_agencies(args, nats_url=_env.nats_url())


def _metrics(args: argparse.Namespace) -> MetricsConfig:
    # getattr: a parser without --metrics-listen (an older cli.py) means no metrics.
    listen: str | None = getattr(args, "metrics_listen", None)
    if listen is not None and (problem := listen_problem(listen)) is not None:
        raise SystemExit(f"greenchannel agencies: --metrics-listen: {problem}")
    return MetricsConfig(listen=listen)


def run_agencies(args: argparse.Namespace, *, nats_url: str | None) -> int:
    """Run until SIGINT / SIGTERM; 0 after a graceful stop, 1 when they could not start."""
    if not nats_url:
        complain(
            "agencies",
            args,
            [
                f"set ${_env.NATS_URL_ENV} to the broker's NATS "
                "(`greenchannel up` runs broker and agencies together)"
            ],
        )
        return EXIT_REFUSED
    state_dir: Path = args.state_dir
    config = AgenciesConfig(
        keys_dir=state_dir,
        data_dir=args.data if args.data is not None else state_dir / _RUN_DIR,
        directory=args.directory,
        nats_url=nats_url,
        only=tuple(args.only),
        ack_wait=args.ack_wait,
        metrics=_metrics(args),
    )
    try:
        return run_loop(_serve(config, args))
    except (ProtocolError, OSError) as exc:
        complain("agencies", args, [f"cannot start: {exc}"])
        return EXIT_REFUSED


async def _serve(config: AgenciesConfig, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before starting: a signal during start-up finishes starting, then stops cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with AgencyFleet(config) as fleet:
        announce(
            args,
            "agencies.ready",
            f"{READY_PREFIX}{len(fleet.adapters)} agencies online ({', '.join(fleet.adapters)}); "
            f"data in {config.data_dir}"
            + (f"; metrics on http://{fleet.metrics_address}/metrics" if fleet.metrics_address else "")
            + "; Ctrl-C to stop",
            agencies=list(fleet.adapters),
            data_dir=str(config.data_dir),
            metrics=fleet.metrics_address,
        )
        await stop.wait()
        log.info("agencies.stopping")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m broker.cli._agencies``: the command without the rest of the CLI."""
    parser = argparse.ArgumentParser(
        prog="greenchannel-agencies", description="GreenChannel reference agencies and their adapters"
    )
    parser.add_argument("--state-dir", type=Path, default=_env.default_state_dir())
    parser.add_argument("--directory", type=Path, default=None)
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action="store_true")
    _add_options(parser)
    args = parser.parse_args(argv)
    configure_logging(args.log_level, json_logs=args.log_json)
    if args.directory is None:
        args.directory = sample_directory()
    return run_agencies(args, nats_url=_env.nats_url())


if __name__ == "__main__":
    sys.exit(main())
