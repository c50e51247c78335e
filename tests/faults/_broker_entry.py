"""``python -m tests.faults._broker_entry``: ``greenchannel broker`` with two knobs the CLI lacks.

``--replicas N``: until broker/cli/_broker.py registers it on the ``broker`` command (then the harness
runs ``python -m broker.cli ... broker --replicas N`` whenever it can).

``--consumer-ack-wait SECONDS``: the ack wait of the broker's durable consumers (events, fired
timers, ledger intake). A broker SIGKILLed while it holds fetched messages leaves them invisible
for that long; at the default 30 s two kills alone would exceed the short setting's budget. The
long setting runs the real defaults through the real CLI.

Everything else is the real :func:`broker.cli._broker.run_broker`: only the config it builds gets
the shorter ack waits.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import os
import signal
import sys
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import broker.cli._broker as run_module
from agencies import DEFAULT_DIRECTORY
from broker._logging import configure_logging
from broker.hub import BrokerConfig


def main() -> int:
    parser = argparse.ArgumentParser(prog="greenchannel-broker-faults")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--listen", required=True)
    parser.add_argument("--sla-policy", type=Path, default=None)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--consumer-ack-wait", type=float, default=None)
    args = parser.parse_args()
    args.policy = None
    args.no_reflection = False
    args.tls_cert = args.tls_key = args.tls_ca = None
    configure_logging(args.log_level)
    ack_wait: float | None = args.consumer_ack_wait
    if ack_wait is not None:

        def config(**kwargs: Any) -> BrokerConfig:
            built = BrokerConfig(**kwargs)
            return replace(
                built,
                events=replace(built.events, ack_wait=ack_wait),
                timers=replace(built.timers, ack_wait=ack_wait),
                ledger=replace(built.ledger, ack_wait=timedelta(seconds=ack_wait)),
            )

        run_module.BrokerConfig = config  # type: ignore[attr-defined,assignment]
    faulthandler.register(signal.SIGUSR2, all_threads=True)
    asyncio.run(_run(args))
    return 0


async def _run(args: argparse.Namespace) -> None:
    # SIGUSR1 prints every task's stack: what a stuck broker is waiting for.
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, _dump_tasks)
    await run_module.run_broker(args, nats_url=os.environ.get("GREENCHANNEL_NATS_URL"))


def _dump_tasks() -> None:
    print("--- asyncio tasks (SIGUSR1)", file=sys.stderr)
    for task in asyncio.all_tasks():
        print(f"task {task.get_name()}: {task.get_coro()}", file=sys.stderr)
        task.print_stack(limit=30, file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
