"""The benchmarks' agency process: reference banks with their adapters, apart from the broker.

    python -m tests.bench._agencies --nats URL --keys-dir DIR --data-dir DIR [--bank bank-icbc]
        [--accounts 1000]

What :class:`agencies.Stack` runs for a bank (its reference core as a real gRPC server, and an
:class:`adapters.AdapterRuntime` consuming its inbox), in a process of its own so the broker and
the agency side each get their own interpreter on the benchmark machine, as they would in a
deployment. Each bank also gets ``--accounts`` benchmark accounts with a balance no benchmark can
exhaust, so every stop-payment executes in full. Prints ``ready <pid>`` once every adapter
consumes, then runs until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from pathlib import Path

from adapters import AdapterConfig, AdapterMetrics, AdapterRuntime, PrometheusAdapterMetrics
from agencies import build_reference_agency
from agencies.bank import BankCore
from broker._logging import configure_logging
from broker.cli._loop import run as run_loop
from broker.protocol import (
    MetricsEndpoint,
    NatsSettings,
    SystemClock,
    connect,
    ensure_agency_keys,
    load_agency_encryption_keys,
    load_agency_signing_key,
    load_directory,
    new_registry,
)

__all__ = ["BENCH_BALANCE", "BENCH_HOLDER", "bench_account", "main"]

BENCH_HOLDER = "基准测试户"
"""Holder name of every benchmark account (a made-up name, no person's)."""
BENCH_BALANCE = 10**15
"""Opening balance in minor units: far beyond what any run holds."""

_DIRECTORY = Path(__file__).resolve().parents[2] / "agencies" / "directory.toml"
# Account numbers under bank-icbc's prefix 622202 that the demo story does not use.
_ACCOUNT_PREFIX = "6222029"


def bench_account(index: int, accounts: int) -> str:
    """The benchmark account a request number ``index`` targets (round robin over ``accounts``)."""
    return f"{_ACCOUNT_PREFIX}{index % accounts:012d}"


def _open_accounts(core: BankCore, accounts: int) -> None:
    if core.account(bench_account(0, accounts)) is not None:
        return
    with core.batch():
        for i in range(accounts):
            core.open_account(bench_account(i, accounts), BENCH_HOLDER, balance=BENCH_BALANCE)


async def _run(args: argparse.Namespace) -> None:
    clock = SystemClock()
    overlay = ensure_agency_keys(_DIRECTORY, args.keys_dir, clock=clock)
    registry = load_directory(_DIRECTORY, key_overlays=[overlay])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        nc = await connect(NatsSettings.from_url(args.nats, name="bench-agencies"))
        stack.push_async_callback(nc.drain)
        adapters: list[AdapterRuntime] = []
        metrics = AdapterMetrics()
        if args.metrics:
            metrics = PrometheusAdapterMetrics(new_registry())
            await stack.enter_async_context(MetricsEndpoint("127.0.0.1:0", metrics.registry))
        for bank_id in args.bank:
            reference = build_reference_agency(registry.get(bank_id), data_dir=args.data_dir, clock=clock)
            stack.callback(reference.close)
            assert isinstance(reference.core, BankCore)
            _open_accounts(reference.core, args.accounts)
            server = await stack.enter_async_context(reference.server())
            adapter = AdapterRuntime(
                AdapterConfig(
                    agency_id=bank_id,
                    agency_target=server.address,
                    state_dir=args.data_dir / "adapters" / bank_id,
                ),
                registry=registry,
                signing_key=load_agency_signing_key(args.keys_dir, bank_id),
                clock=clock,
                nats_client=nc,
                decryption_keys=load_agency_encryption_keys(args.keys_dir, bank_id),
                metrics=metrics,
            )
            await adapter.start()
            adapters.append(adapter)

        async def close_adapters() -> None:
            await asyncio.gather(*(adapter.aclose() for adapter in adapters))

        stack.push_async_callback(close_adapters)
        print(f"ready {os.getpid()}", flush=True)
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nats", required=True, help="NATS URL (JetStream on)")
    parser.add_argument("--keys-dir", type=Path, required=True, help="state directory with the keys")
    parser.add_argument("--data-dir", type=Path, required=True, help="banks' databases and adapters' state")
    parser.add_argument("--bank", action="append", default=[], help="bank agency id (repeatable)")
    parser.add_argument("--accounts", type=int, default=1000, help="benchmark accounts per bank")
    parser.add_argument("--metrics", action="store_true", help="count and serve Prometheus metrics")
    args = parser.parse_args()
    args.bank = args.bank or ["bank-icbc"]
    # As ``greenchannel broker`` runs by default: warnings and errors on stderr.
    configure_logging("warning")
    run_loop(_run(args))


if __name__ == "__main__":
    main()
