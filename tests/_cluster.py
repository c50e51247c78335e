"""A cluster of embedded nats-servers on this machine: N JetStream nodes joined by routes.

For fault tests and for trying replicated (R3) streams without a deployment: every node is an
:class:`~broker.embedded.EmbeddedNats` with its own file store, ``sync_interval:
always`` (unless the node template says otherwise), a fixed client port and a fixed route port,
so a node killed and restarted comes back at the same address and rejoins the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Self

import nats.errors
import structlog
from nats.aio.client import Client
from nats.js.api import ClusterInfo

from broker.embedded import ClusterBlock, EmbeddedNats, EmbeddedNatsConfig
from broker.embedded._server import _Probe  # the embedded server's own probe user, one per cluster here
from broker.protocol import NatsServerError

__all__ = ["EmbeddedCluster", "EmbeddedClusterConfig", "free_ports"]

_log = structlog.get_logger("greenchannel.embedded_cluster")

_POLL_INTERVAL = 0.1
_PROBE_USER = "_cluster_probe"
_PROBE_INBOX = "_GC_CLUSTER_PROBE"
# The cluster's own user for its health checks when the nodes run per-agency accounts: in the
# broker's account (where JetStream lives), it may only read stream and consumer info.
_PROBE_API = (
    "$JS.API.INFO",
    "$JS.API.STREAM.NAMES",
    "$JS.API.STREAM.INFO.>",
    "$JS.API.CONSUMER.NAMES.>",
    "$JS.API.CONSUMER.INFO.>",
)


@dataclass(frozen=True, kw_only=True)
class EmbeddedClusterConfig:
    """How to run the cluster."""

    size: int = 3
    """Number of nodes; 3 is the smallest that survives losing one with R3 streams."""

    store_dir: Path | None = None
    """Parent of the nodes' stores (``<store_dir>/<node name>``); ``None``: a temp dir removed on exit."""

    name: str = "greenchannel"
    """Cluster name; also the prefix of the node names (``greenchannel-1``, ...)."""

    host: str = "127.0.0.1"
    """Address every client and route port binds to; loopback keeps the cluster private."""

    node: EmbeddedNatsConfig = field(default_factory=EmbeddedNatsConfig)
    """Template for every node (sync, limits, timeouts, ``authorization``); store, ports, name and
    routes are filled in. With an ``authorization`` every node runs the same per-agency accounts,
    as a single embedded server does."""

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"EmbeddedClusterConfig.size must be >= 1, got {self.size}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now (held open together so none is handed out twice).

    Another process may still take one before it is bound again; good enough on a test machine,
    and a node that cannot bind fails its start loudly.
    """
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind((host, 0))
            sockets.append(probe)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for probe in sockets:
            probe.close()


class EmbeddedCluster:
    """N nats-server processes forming one JetStream cluster; an async context manager.

    ``async with EmbeddedCluster() as cluster: ... cluster.url`` (every node's URL, comma
    separated, as ``GREENCHANNEL_NATS_URL`` takes it). :meth:`kill` / :meth:`restart` act on one
    node by index. Exiting stops every node and removes a temporary store.
    """

    def __init__(self, config: EmbeddedClusterConfig | None = None) -> None:
        self._config = config or EmbeddedClusterConfig()
        self._temp_dir: Path | None = None
        self._nodes: list[EmbeddedNats] = []
        self._restarted_at: dict[str, float] = {}
        self._closed = False
        self._probe = (
            _Probe.generate(owner=_PROBE_USER, publish=_PROBE_API, inbox=_PROBE_INBOX)
            if self._config.node.authorization is not None
            else None
        )

    # -- public state --------------------------------------------------------------------

    @property
    def config(self) -> EmbeddedClusterConfig:
        return self._config

    @property
    def nodes(self) -> tuple[EmbeddedNats, ...]:
        """The nodes, in index order (empty before start)."""
        return tuple(self._nodes)

    @property
    def names(self) -> tuple[str, ...]:
        """Server names of the nodes, in index order."""
        return tuple(self._node_name(i) for i in range(self._config.size))

    @property
    def urls(self) -> tuple[str, ...]:
        """Client URLs of the nodes, in index order."""
        if not self._nodes:
            raise NatsServerError("the embedded cluster has not been started")
        return tuple(node.url for node in self._nodes)

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (the form GREENCHANNEL_NATS_URL takes)."""
        return ",".join(self.urls)

    def index_of(self, server_name: str) -> int:
        """Index of the node called ``server_name`` (as JetStream names leaders and peers)."""
        try:
            return self.names.index(server_name)
        except ValueError:
            raise NatsServerError(f"no node called {server_name!r} in this cluster") from None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start every node at once and wait until each answers JetStream requests.

        At once because a clustered JetStream answers nothing before a meta leader is elected,
        which takes a quorum of nodes: started one by one, the first would wait for the others.
        """
        if self._closed:
            raise NatsServerError("the embedded cluster was closed")
        if not self._nodes:
            self._nodes = self._build_nodes()
        await asyncio.gather(*(node.start() for node in self._nodes))
        _log.info("embedded_cluster.ready", nodes=len(self._nodes), url=self.url)

    async def kill(self, index: int) -> None:
        """SIGKILL one node (a crash); its store and ports are kept for :meth:`restart`."""
        await self._node(index).kill()

    async def stop_node(self, index: int) -> None:
        """Stop one node gracefully (SIGTERM); its store and ports are kept."""
        await self._node(index).stop()

    async def restart(self, index: int) -> None:
        """Start one node again (stopping it first if it runs) on its ports with its store."""
        node = self._node(index)
        await node.stop()
        self._restarted_at[self.names[index]] = time.monotonic()
        await node.start()

    async def wait_current(self, *, timeout: float = 30.0) -> None:  # noqa: ASYNC109
        """Wait until every node runs and every stream and consumer has a leader and current replicas.

        That is "the cluster is whole again" after a restart: killing another node before the
        restarted one has caught up would test a double failure, not two single ones. A replica
        on a restarted node counts only once its leader has heard from it since the restart: just
        after a restart the leader may still call it current from before the crash.
        """
        deadline = time.monotonic() + timeout
        last = "no answer"
        while True:
            down = [self.names[i] for i, node in enumerate(self._nodes) if not node.running]
            if down:
                raise NatsServerError(f"cluster nodes are not running: {', '.join(down)}")
            try:
                lagging = await self._lagging()
            except (OSError, ValueError, nats.errors.Error, TimeoutError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if not lagging:
                    return
                last = "not current: " + ", ".join(lagging[:10])
            if time.monotonic() >= deadline:
                raise NatsServerError(f"the cluster did not become current within {timeout}s ({last})")
            await asyncio.sleep(_POLL_INTERVAL)

    async def stream_leader(self, stream: str) -> int:
        """Index of the node that leads ``stream`` now."""
        nc = await self._probe_client()
        try:
            info = await nc.jetstream().stream_info(stream)
        finally:
            await _close(nc)
        leader = info.cluster.leader if info.cluster is not None else None
        if leader is None:
            raise NatsServerError(f"stream {stream} has no leader")
        return self.index_of(leader)

    async def aclose(self) -> None:
        """Stop every node and remove a temporary store. Idempotent."""
        try:
            await asyncio.gather(*(node.aclose() for node in self._nodes), return_exceptions=True)
        finally:
            self._closed = True
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None

    # -- internals -----------------------------------------------------------------------

    def _node_name(self, index: int) -> str:
        return f"{self._config.name}-{index + 1}"

    def _node(self, index: int) -> EmbeddedNats:
        if not 0 <= index < len(self._nodes):
            raise NatsServerError(f"no node {index} in a cluster of {len(self._nodes)}")
        return self._nodes[index]

    def _build_nodes(self) -> list[EmbeddedNats]:
        config = self._config
        root = config.store_dir
        if root is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="greenchannel-cluster-"))
            root = self._temp_dir
        # Client and route ports are fixed up front: the routes must name every node's route
        # port before any node starts, and a restarted node must come back where clients look.
        ports = free_ports(2 * config.size, config.host)
        client_ports, route_ports = ports[: config.size], ports[config.size :]
        routes = tuple(f"nats-route://{config.host}:{port}" for port in route_ports)
        authorization = config.node.authorization
        if authorization is not None and self._probe is not None:
            authorization = authorization.with_broker_side(self._probe.user)
        return [
            EmbeddedNats(
                replace(
                    config.node,
                    authorization=authorization,
                    store_dir=root / self._node_name(i),
                    host=config.host,
                    port=client_ports[i],
                    server_name=self._node_name(i),
                    cluster=ClusterBlock(
                        name=config.name, host=config.host, port=route_ports[i], routes=routes
                    ),
                )
            )
            for i in range(config.size)
        ]

    async def _probe_client(self) -> Client:
        async def quiet(_exc: Exception) -> None:
            return None

        urls = [node.url for node in self._nodes if node.running]
        if not urls:
            raise NatsServerError("no node of the cluster is running")
        nc = Client()
        await nc.connect(
            servers=urls,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=2,
            error_cb=quiet,
            nkeys_seed_str=None if self._probe is None else self._probe.seed,
            inbox_prefix=_PROBE_INBOX,
        )
        return nc

    async def _lagging(self) -> list[str]:
        """Streams and consumers that have no leader or a replica not (yet) current."""
        nc = await self._probe_client()
        try:
            js = nc.jetstream(timeout=2.0)
            lagging: list[str] = []
            # One request per stream and consumer, each answered by its leader: the account-wide
            # listing waits for every server and answered slowly for seconds after a restart.
            for stream in await _names(nc, "$JS.API.STREAM.NAMES", "streams"):
                info = await js.stream_info(stream)
                if not self._current(info.cluster):
                    lagging.append(stream)
                for consumer in await _names(nc, f"$JS.API.CONSUMER.NAMES.{stream}", "consumers"):
                    consumer_info = await js.consumer_info(stream, consumer)
                    if not self._current(consumer_info.cluster):
                        lagging.append(f"{stream}/{consumer}")
            return lagging
        finally:
            await _close(nc)

    def _current(self, cluster: ClusterInfo | None) -> bool:
        if cluster is None:
            return True  # not clustered
        if cluster.leader is None:
            return False
        now = time.monotonic()
        for peer in cluster.replicas or []:
            if not peer.current or peer.offline:
                return False
            restarted = self._restarted_at.get(peer.name or "")
            # ``active``: nanoseconds since the leader last heard from the peer.
            if restarted is not None and (peer.active or 0) / 1e9 >= now - restarted:
                return False
        return True


async def _names(nc: Client, subject: str, key: str) -> list[str]:
    reply = await nc.request(subject, b"{}", timeout=2.0)
    document = json.loads(reply.data)
    if "error" in document:
        raise ValueError(f"{subject}: {document['error']}")
    return [str(name) for name in document.get(key) or []]


async def _close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await nc.close()
