"""``greenchannel broker``: run one broker replica until SIGINT / SIGTERM.

SIGHUP re-reads the directory and key overlays (the broker also notices changed files itself);
a file that does not load is logged as ``directory.reload_failed`` and the old directory stays.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from dataclasses import replace
from pathlib import Path

import structlog

from broker.hub import Broker, BrokerConfig, DirectoryReloadConfig
from broker.hub._sla_policy import load_sla_policy
from broker.hub._tls import TlsFiles
from broker.protocol import AgencyKind, SystemClock, close_connection
from broker.protocol._directory import load_directory
from broker.protocol._embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.protocol._nats import NatsSettings, connect
from broker.protocol._nats_auth import ensure_inbox_consumers, nats_authorization, nats_settings_for
from broker.protocol._provision import ensure_agency_keys
from broker.protocol._registry import Registry

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


def _load_directory(args: argparse.Namespace, state_dir: Path) -> tuple[Registry, tuple[Path, ...]]:
    """The directory with every key overlay, after making the keys only the demo lacks."""
    # getattr: a parser without --key-overlay (an older cli.py) means none.
    key_overlays: tuple[Path, ...] = tuple(getattr(args, "key_overlay", None) or ())
    # Keys are made here only for agencies that list none of their own (the demo): an agency that
    # made its keys on its own host (`greenchannel keys generate`) must not get a second,
    # broker-held key that could sign in its name.
    listed = load_directory(args.directory, key_overlays=key_overlays)
    own = [agency.id for agency in listed.agencies() if not agency.keys]
    overlay = ensure_agency_keys(args.directory, state_dir, agencies=own, clock=SystemClock())
    return load_directory(args.directory, key_overlays=[overlay, *key_overlays]), key_overlays


def _follow_reloads(
    broker: Broker, server: EmbeddedNats | None, settings: NatsSettings, state_dir: Path
) -> None:
    """What else a reloaded directory changes: NATS users of the embedded server, inbox consumers."""

    async def nats_users(old: Registry, new: Registry) -> None:
        # The embedded server learns a joining agency's NATS user without a restart; a server of
        # the operator's own gets the new block from `greenchannel nats-authorization`.
        ids = [agency.id for agency in new.agencies()]
        if server is not None and set(ids) != {agency.id for agency in old.agencies()}:
            await server.reload_authorization(nats_authorization(state_dir, ids))

    broker.on_directory_reload(nats_users)
    broker.on_directory_reload(lambda _old, new: _inbox_consumers(settings, new))


async def _inbox_consumers(settings: NatsSettings, registry: Registry) -> None:
    # Adapters may not create their inbox consumers (a consumer can name where it delivers);
    # an agency added by a reload gets its own too.
    nc = await connect(settings)
    try:
        await ensure_inbox_consumers(
            nc.jetstream(), [a.id for a in registry.agencies() if a.kind is not AgencyKind.REGULATOR]
        )
    finally:
        await close_connection(nc, timeout=settings.connect_timeout)


async def run_broker(args: argparse.Namespace, *, nats_url: str | None) -> None:
    state_dir: Path = args.state_dir
    # getattr: a parser without --replicas (an older cli.py) means a single replica.
    replicas: int = getattr(args, "replicas", 1)
    if not 1 <= replicas <= _MAX_REPLICAS:
        raise SystemExit(f"greenchannel broker: --replicas must be 1 to {_MAX_REPLICAS}, got {replicas}")
    poll: float = getattr(args, "directory_poll", 2.0)
    registry, key_overlays = _load_directory(args, state_dir)
    # Per-agency NATS users: written into the embedded server's config; with $GREENCHANNEL_NATS_URL
    # the operator installs the same block (`greenchannel nats-authorization`).
    authorization = nats_authorization(state_dir, [agency.id for agency in registry.agencies()])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    embedded = EmbeddedNatsConfig(store_dir=state_dir / "nats", authorization=authorization)
    async with contextlib.AsyncExitStack() as stack:
        server: EmbeddedNats | None = None
        if nats_url:
            url = nats_url
        else:
            server = await stack.enter_async_context(EmbeddedNats(embedded))
            url = server.url
        settings = nats_settings_for(url, state_dir=state_dir, agency=None, name="greenchannel-broker")
        config = BrokerConfig(
            nats=settings,
            state_dir=state_dir,
            directory=args.directory,
            key_overlays=key_overlays,
            reload=DirectoryReloadConfig(poll_interval=poll if poll > 0 else None),
            listen=args.listen,
            reflection=not args.no_reflection,
            tls=_tls(args),
            replicas=replicas,
        )
        if args.policy is not None:
            config = replace(config, policy=args.policy)
        if args.sla_policy is not None:
            config = replace(config, sla=load_sla_policy(args.sla_policy))
        broker = Broker(config)
        _follow_reloads(broker, server, settings, state_dir)
        async with broker:
            await _inbox_consumers(settings, registry)
            reloads: set[asyncio.Task[bool]] = set()

            def reload() -> None:
                task = asyncio.create_task(broker.reload_directory())
                reloads.add(task)  # the loop keeps only weak references to tasks
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload)
            print(
                f"greenchannel broker listening on {broker.address} (NATS {url}); Ctrl-C to stop", flush=True
            )
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
            await asyncio.gather(*reloads)  # a reload under way finishes before the broker stops
            log.info("broker.stopping")
