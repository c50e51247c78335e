"""``python -m tests.faults._systems_entry``: the reference bank systems alone, no adapter.

A bank runs its own core system and, beside it, the adapters that bring it the bus's orders; in
the single-node scenario those are separate processes (``greenchannel adapter --config``, two
instances per bank), so one adapter can die while its bank and its standby carry on. This
process is the banks' side: each named bank's reference system (:func:`agencies.build_reference_agency`)
as a gRPC server on a fixed port, so adapters keep their target across a restart of this process.
Its database lives under ``--data`` and survives a SIGKILL.

Prints ``READY`` once every server listens; runs until SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

from agencies import DEFAULT_DIRECTORY, build_reference_agency
from broker._logging import configure_logging
from broker.protocol import SystemClock, key_overlay_path, load_directory

READY = "fault systems: listening "
"""Start of the line printed on stdout once every bank's server listens."""


def _bank_port(text: str) -> tuple[str, int]:
    bank, _, port = text.partition("=")
    if not bank or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected BANK=PORT, got {text!r}")
    return bank, int(port)


async def _serve(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    clock = SystemClock()
    overlay = key_overlay_path(args.state_dir)
    registry = load_directory(args.directory, key_overlays=[overlay] if overlay.exists() else [])
    data: Path = args.data
    async with contextlib.AsyncExitStack() as stack:
        addresses = []
        for bank, port in args.bank:
            reference = build_reference_agency(registry.get(bank), data_dir=data, clock=clock)
            stack.callback(reference.close)
            server = await stack.enter_async_context(reference.server(port=port))
            addresses.append(f"{bank}={server.address}")
        print(f"{READY}{' '.join(addresses)}", flush=True)
        await stop.wait()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="greenchannel-fault-systems")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--directory", type=Path, default=DEFAULT_DIRECTORY)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--data", type=Path, required=True, help="the banks' databases (<id>.sqlite3)")
    parser.add_argument("--bank", type=_bank_port, action="append", required=True, metavar="BANK=PORT")
    args = parser.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    configure_logging(args.log_level)
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
