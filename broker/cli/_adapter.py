"""``greenchannel adapter --config adapter.toml``: one agency's adapter against its own system.

The agency runs this next to its own ``BankService`` / ``CarrierService`` / ``PlatformService`` /
``PoliceService`` (any language), with its own keys and NATS user; the file's format is documented
in :mod:`adapters._file_config`. The whole file and everything it points at are checked before
anything starts: a bad file prints one line naming the file and field and exits 1. It runs until
SIGINT / SIGTERM, then stops pulling, lets the messages in flight finish and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import structlog

from adapters import (
    AdapterError,
    AdapterFileConfig,
    AdapterMaterials,
    StandaloneAdapter,
    load_adapter_file,
    load_adapter_materials,
)
from broker.protocol import ProtocolError, SystemClock

from ._loop import run as run_loop
from ._output import EXIT_REFUSED, announce, complain, json_option

__all__ = ["READY_PREFIX", "add_parser", "run", "run_adapter"]

log = structlog.get_logger(__name__)

READY_PREFIX = "greenchannel adapter: "
"""Start of the line printed on stdout once the adapter consumes its inbox."""


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "adapter",
    help: str = "",
) -> None:
    """Register ``adapter`` on the ``greenchannel`` parser."""
    adapter = commands.add_parser(name, help=help)
    adapter.add_argument(
        "--config", type=Path, required=True, metavar="FILE", help="the adapter's TOML file (adapter.toml)"
    )
    adapter.add_argument(
        "--health-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve gRPC health here (overrides [health] listen; port 0 picks a free port)",
    )
    adapter.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics here (overrides [metrics] listen; port 0 picks a free port)",
    )
    adapter.add_argument(
        "--check", action="store_true", help="check the file and what it points at, start nothing"
    )
    json_option(adapter, help="status lines as JSON objects, one per line (adapter.checked, adapter.ready)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``adapter`` command."""
    return run_adapter(args)


def run_adapter(args: argparse.Namespace) -> int:
    """0 after a graceful stop (or a passed ``--check``), 1 on a bad config or a failed start."""
    try:
        config = load_adapter_file(args.config)
        if args.health_listen is not None:
            config = config.with_health(args.health_listen)
        # getattr: a parser without --metrics-listen (an older cli.py) means the file's setting.
        if getattr(args, "metrics_listen", None) is not None:
            config = config.with_metrics(args.metrics_listen)
        materials = load_adapter_materials(config)
    except AdapterError as exc:
        complain("adapter", args, [str(exc)])
        return EXIT_REFUSED
    if args.check:
        announce(
            args,
            "adapter.checked",
            f"{READY_PREFIX}{config.source}: ok ({materials.agency.kind} {materials.agency.id})",
            config=str(config.source),
            agency=materials.agency.id,
            kind=str(materials.agency.kind),
            ok=True,
        )
        return 0
    try:
        return run_loop(_serve(config, materials, args))
    except (ProtocolError, AdapterError, OSError, RuntimeError) as exc:
        # grpc reports a health port in use as RuntimeError("Failed to bind to address ...").
        complain("adapter", args, [f"cannot start: {exc}"])
        return EXIT_REFUSED


async def _serve(config: AdapterFileConfig, materials: AdapterMaterials, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Installed before starting: a signal during start-up finishes starting, then stops cleanly.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with StandaloneAdapter(config, materials, clock=SystemClock()) as adapter:
        health = f"; health on {adapter.health_address}" if adapter.health_address else ""
        if adapter.metrics_address:
            health += f"; metrics on http://{adapter.metrics_address}/metrics"
        announce(
            args,
            "adapter.ready",
            f"{READY_PREFIX}{adapter.agency_id} online, calling {config.adapter.agency_target}{health}; "
            "Ctrl-C to stop",
            agency=adapter.agency_id,
            target=config.adapter.agency_target,
            health=adapter.health_address,
        )
        await stop.wait()
        log.info("adapter.stopping", agency=adapter.agency_id)
    return 0
