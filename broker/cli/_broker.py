"""``greenchannel broker``: run one broker replica until SIGINT / SIGTERM.

SIGHUP re-reads the directory and key overlays (the broker also notices changed files itself);
a file that does not load is logged as ``directory.reload_failed`` and the old directory stays.
The only command that loads :mod:`broker.hub` (and :mod:`broker.embedded`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import NoReturn

import structlog

from broker.embedded import EmbeddedNats, EmbeddedNatsConfig
from broker.hub import (
    Broker,
    BrokerConfig,
    DirectoryReloadConfig,
    PolicyError,
    TlsFiles,
    load_policy,
    load_sla_policy,
)
from broker.protocol import (
    AgencyKind,
    MetricsConfig,
    NatsSettings,
    Registry,
    SystemClock,
    close_connection,
    connect,
    ensure_agency_keys,
    ensure_inbox_consumers,
    listen_problem,
    load_directory,
    nats_authorization,
    nats_settings_for,
)

from . import _env
from ._loop import run as run_loop
from ._output import EXIT_REFUSED, EXIT_USAGE, announce, json_option
from ._samples import sample_policy, sample_sla_policy

__all__ = ["add_parser", "run", "run_broker"]

log = structlog.get_logger(__name__)


def _usage_error(message: str) -> NoReturn:
    """A bad option combination: the message on stderr, exit status 2 (as argparse's own)."""
    print(f"greenchannel broker: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def _metrics(args: argparse.Namespace) -> MetricsConfig:
    # getattr: a parser without --metrics-listen (an older cli.py) means no metrics.
    listen: str | None = getattr(args, "metrics_listen", None)
    if listen is not None and (problem := listen_problem(listen)) is not None:
        _usage_error(f"--metrics-listen: {problem}")
    return MetricsConfig(listen=listen)


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    given = [args.tls_cert, args.tls_key, args.tls_ca]
    if not any(given):
        return None
    if not all(given):
        _usage_error("--tls-cert, --tls-key and --tls-ca go together")
    return TlsFiles(cert=args.tls_cert, key=args.tls_key, ca=args.tls_ca)


_MAX_REPLICAS = 5  # JetStream's limit


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str = "broker",
    help: str = "",
) -> None:
    """Register ``broker`` on the ``greenchannel`` parser."""
    serve = commands.add_parser(name, help=help)
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
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: off; docs/metrics.md)",
    )
    serve.add_argument(
        "--sla-policy",
        type=Path,
        default=None,
        help="SLA policy TOML (default: agencies/sla/cn.toml; agencies/sla/eu.toml is an EU-style example)",
    )
    json_option(serve, help="status lines as JSON objects, one per line (broker.listening, ...)")


def run(args: argparse.Namespace) -> int:
    """Check every file, then run the broker until SIGINT / SIGTERM."""
    try:
        # Every file is checked before anything is created: a typo in a policy must not leave
        # keys, a NATS store or a half-started broker behind, nor end in a traceback.
        if args.policy is not None:
            load_policy(args.policy)
        if args.sla_policy is not None:
            load_sla_policy(args.sla_policy)
        _tls(args)  # options that go together, before NATS starts
        run_loop(run_broker(args, nats_url=_env.nats_url()))
    except PolicyError as exc:  # not a ProtocolError: the hub's own root
        print(f"greenchannel: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


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
        _usage_error(f"--replicas must be 1 to {_MAX_REPLICAS}, got {replicas}")
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
            policy=args.policy if args.policy is not None else sample_policy(),
            sla=load_sla_policy(args.sla_policy if args.sla_policy is not None else sample_sla_policy()),
            key_overlays=key_overlays,
            reload=DirectoryReloadConfig(poll_interval=poll if poll > 0 else None),
            listen=args.listen,
            reflection=not args.no_reflection,
            tls=_tls(args),
            replicas=replicas,
            metrics=_metrics(args),
        )
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
            metrics = (
                f"; metrics on http://{broker.metrics_address}/metrics" if broker.metrics_address else ""
            )
            announce(
                args,
                "broker.listening",
                f"greenchannel broker listening on {broker.address} (NATS {url}){metrics}; Ctrl-C to stop",
                address=broker.address,
                nats=url,
                embedded_nats=server is not None,
                metrics=broker.metrics_address,
            )
            await stop.wait()
            loop.remove_signal_handler(signal.SIGHUP)
            await asyncio.gather(*reloads)  # a reload under way finishes before the broker stops
            log.info("broker.stopping")
