"""``greenchannel broker``: run one broker replica until SIGINT / SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from dataclasses import replace
from pathlib import Path

import structlog

from broker.hub import Broker, BrokerConfig
from broker.hub._sla_policy import load_sla_policy
from broker.hub._tls import TlsFiles
from broker.protocol import SystemClock
from broker.protocol._embedded import EmbeddedNatsConfig, nats_for
from broker.protocol._nats import NatsSettings
from broker.protocol._provision import ensure_agency_keys

__all__ = ["run_broker"]

log = structlog.get_logger(__name__)


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        raise SystemExit("greenchannel broker: --tls-cert, --tls-key and --tls-ca go together")
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


_MAX_REPLICAS = 5  # JetStream's limit


async def run_broker(args: argparse.Namespace, *, nats_url: str | None) -> None:
    state_dir: Path = args.state_dir
    # getattr: a parser without --replicas (an older cli.py) means a single replica.
    replicas: int = getattr(args, "replicas", 1)
    if not 1 <= replicas <= _MAX_REPLICAS:
        raise SystemExit(f"greenchannel broker: --replicas must be 1 to {_MAX_REPLICAS}, got {replicas}")
    ensure_agency_keys(args.directory, state_dir, clock=SystemClock())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with nats_for(nats_url, EmbeddedNatsConfig(store_dir=state_dir / "nats")) as url:
        config = BrokerConfig(
            nats=NatsSettings.from_url(url, name="greenchannel-broker"),
            state_dir=state_dir,
            directory=args.directory,
            listen=args.listen,
            reflection=not args.no_reflection,
            tls=_tls(args),
            replicas=replicas,
        )
        if args.policy is not None:
            config = replace(config, policy=args.policy)
        if args.sla_policy is not None:
            config = replace(config, sla=load_sla_policy(args.sla_policy))
        async with Broker(config) as broker:
            print(
                f"greenchannel broker listening on {broker.address} (NATS {url}); Ctrl-C to stop", flush=True
            )
            await stop.wait()
            log.info("broker.stopping")
