"""``greenchannel up``: the whole bus on this machine until Ctrl-C / SIGTERM.

NATS (embedded unless a URL is given), the broker, and every agency's reference system behind
its adapter, as :class:`agencies.demo.Stack` runs them. Keys live in the state directory; this run's
data (NATS store, agency databases, adapter state) under ``<state-dir>/run``, so a second ``up``
carries on where the first stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

import structlog

from adapters import AdapterConfig
from agencies.demo import Stack, StackConfig
from broker.protocol import MetricsConfig, listen_problem

from . import _env
from ._env import DEFAULT_BROKER
from ._loop import run as run_loop
from ._output import EXIT_REFUSED, announce, complain, json_option

__all__ = ["RUN_DIR", "add_parser", "run", "run_up"]

log = structlog.get_logger(__name__)

RUN_DIR = "run"
"""Subdirectory of the state directory holding what ``up`` persists besides the keys."""


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "up",
    help: str = "",
) -> None:
    """Register ``up`` on the ``greenchannel`` parser."""
    up = commands.add_parser(name, help=help)
    up.add_argument(
        "--listen",
        default=DEFAULT_BROKER,
        metavar="HOST:PORT",
        help=f"broker gRPC address (default {DEFAULT_BROKER})",
    )
    up.add_argument("--policy", type=Path, default=None, help="authorization policy TOML (default: sample)")
    up.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the broker's Prometheus metrics here (default: off; docs/metrics.md)",
    )
    up.add_argument(
        "--adapter-metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve every adapter's Prometheus metrics here, on one endpoint (default: off)",
    )
    json_option(up, help="status lines as JSON objects, one per line (up.ready)")


_IDLE_FETCH_TIMEOUT = 0.25
"""Seconds an idle adapter's pull waits. The stack stops its adapters one after another, each
waiting out its current pull: at the adapters' default of 1 s, Ctrl-C took over ten seconds."""


class _StartError(Exception):
    """The bus could not start (port in use, unwritable state directory)."""


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``up`` with ``$GREENCHANNEL_NATS_URL`` (or the embedded NATS)."""
    return run_up(args, nats_url=_env.nats_url())


def run_up(args: argparse.Namespace, *, nats_url: str | None) -> int:
    """Run until SIGINT / SIGTERM; 0 after a graceful stop, 1 when the bus could not start."""
    try:
        return run_loop(_up(args, nats_url=nats_url))
    except _StartError as exc:
        complain("up", args, [f"cannot start: {exc.__cause__}"])
        return EXIT_REFUSED


async def _up(args: argparse.Namespace, *, nats_url: str | None) -> int:
    state_dir: Path = args.state_dir
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before starting: a Ctrl-C during start-up finishes starting, then stops cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    config = StackConfig(
        metrics=_metrics(args, "metrics_listen"),
        adapter_metrics=_metrics(args, "adapter_metrics_listen"),
        keys_dir=state_dir,
        data_dir=state_dir / RUN_DIR,
        directory=args.directory,
        policy=args.policy,
        nats_url=nats_url,
        nats_auth=True,
        listen=args.listen,
        # Only the timing is taken from the template; the stack fills in id, target and state.
        adapter=AdapterConfig(
            agency_id="template",
            agency_target="127.0.0.1:1",
            state_dir=Path(),
            idle_fetch_timeout=_IDLE_FETCH_TIMEOUT,
        ),
    )
    async with contextlib.AsyncExitStack() as running:
        try:
            stack = await running.enter_async_context(Stack(config))
        except (OSError, RuntimeError) as exc:
            # grpc reports a port in use as RuntimeError("Failed to bind to address ...").
            raise _StartError from exc
        address = stack.broker_address
        nats = "embedded NATS" if not nats_url else "NATS from $GREENCHANNEL_NATS_URL"
        served = [
            f"{role} on http://{where}/metrics"
            for role, where in (
                ("broker", stack.broker_metrics_address),
                ("adapters", stack.adapter_metrics_address),
            )
            if where
        ]
        announce(
            args,
            "up.ready",
            [
                f"greenchannel up: broker on {address}, {len(stack.adapters)} agencies online "
                f"({nats}, data in {config.data_dir}); Ctrl-C to stop",
                *([f"greenchannel up: metrics: {', '.join(served)}"] if served else []),
                *_hint(state_dir, address),
            ],
            metrics=served,
            broker=address,
            agencies=list(stack.adapters),
            nats="embedded" if not nats_url else "GREENCHANNEL_NATS_URL",
            data_dir=str(config.data_dir),
        )
        await stop.wait()
        log.info("up.stopping")
    return 0


def _metrics(args: argparse.Namespace, flag: str) -> MetricsConfig:
    # getattr: a parser without the flag (an older cli.py) means no metrics.
    listen: str | None = getattr(args, flag, None)
    if listen is not None and (problem := listen_problem(listen)) is not None:
        raise SystemExit(f"greenchannel up: --{flag.replace('_', '-')}: {problem}")
    return MetricsConfig(listen=listen)


def _hint(state_dir: Path, address: str) -> list[str]:
    prefix = f"greenchannel --state-dir {state_dir}"
    broker = "" if address == DEFAULT_BROKER else f" --broker {address}"
    return [
        "try:",
        f"  {prefix} submit stop-payment --as police-310115{broker} --case SH-PD-2026-1121-0042 \\",
        "      --account 6222020200001234567 --name 李某 --amount 48000.00 --wait",
        f"  {prefix} watch --as police-310115{broker}",
    ]
