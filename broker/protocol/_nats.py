"""The NATS connection: settings, connect with logging callbacks, stream setup, batch fetch.

nats-py errors are translated into :class:`~broker.protocol.NatsError` here, once.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import StatusCode, StorageType, StreamConfig, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.manager import JetStreamManager

from ._errors import NatsError
from ._subjects import StreamSpec

__all__ = [
    "ConnectionListener",
    "NatsSettings",
    "close_connection",
    "connect",
    "ensure_streams",
    "fetch_batch",
    "nats_error",
]

_log = structlog.get_logger("greenchannel.nats")

# JetStream error code the server answers STREAM.CREATE with when the name exists with
# another configuration: another broker replica created it between our INFO and CREATE.
_STREAM_NAME_IN_USE = 10058

# Tokens of letters, digits, '_' and '-', dot separated: no wildcard, no empty token.
_INBOX_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


@dataclass(frozen=True, kw_only=True)
class NatsSettings:
    """How to reach NATS. Built by the entry point (from GREENCHANNEL_NATS_URL); never reads the env."""

    servers: tuple[str, ...]
    """Server URLs (``nats://host:port``); several for a cluster, tried in random order."""

    name: str = "greenchannel"
    """Connection name, shown by the server's monitoring (``connz``) to tell clients apart."""

    user: str | None = None
    """User name for user/password auth; requires ``password``."""

    password: str | None = None
    """Password for user/password auth; requires ``user``."""

    creds_file: Path | None = None
    """NATS ``.creds`` file (user JWT + nkey seed) for decentralized auth; excludes ``user``."""

    nkey_seed_file: Path | None = None
    """File holding an nkey user seed (``SU...``): GreenChannel's per-agency and broker users.

    nats-py reads it at each (re)connect to sign the server's nonce; the seed is never logged.
    Excludes ``user`` and ``creds_file``.
    """

    inbox_prefix: str | None = None
    """Prefix of this connection's reply subjects; ``None``: nats-py's ``_INBOX``.

    An agency's user may subscribe only below its own prefix (``_INBOX_<agency>``), so no one else
    can read its replies and it cannot read anyone else's.
    """

    connect_timeout: float = 2.0
    """Seconds to wait for one TCP + protocol handshake with one server."""

    reconnect_time_wait: float = 2.0
    """Seconds to wait before trying the same server again after a failed (re)connect."""

    initial_connect_timeout: float | None = 30.0
    """Seconds the first connect may take overall; ``None`` waits forever.

    With ``max_reconnect_attempts=-1`` nats-py retries the *first* connect forever too, so a
    wrong URL or bad credentials would hang startup silently. ``None`` is for deployments
    where NATS may legitimately come up after the broker.
    """

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("NatsSettings.servers: at least one server URL is required")
        if (self.user is None) != (self.password is None):
            raise ValueError("NatsSettings: user and password must be given together")
        if self.creds_file is not None and self.user is not None:
            raise ValueError("NatsSettings: use either creds_file or user/password, not both")
        if self.nkey_seed_file is not None and (self.user is not None or self.creds_file is not None):
            raise ValueError("NatsSettings: nkey_seed_file excludes user/password and creds_file")
        if self.inbox_prefix is not None and not _INBOX_PREFIX.fullmatch(self.inbox_prefix):
            raise ValueError(f"NatsSettings.inbox_prefix: {self.inbox_prefix!r} is not a subject prefix")
        if self.connect_timeout <= 0 or self.reconnect_time_wait < 0:
            raise ValueError("NatsSettings: connect_timeout must be > 0 and reconnect_time_wait >= 0")

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> NatsSettings:
        """Settings from a GREENCHANNEL_NATS_URL value: one URL or several separated by commas."""
        servers = tuple(part.strip() for part in url.split(",") if part.strip())
        return cls(servers=servers, **kwargs)


ConnectionListener = Callable[[bool], Awaitable[None]]
"""Told ``False`` when an established NATS connection is lost and ``True`` once it is back."""


def _redact(url: str) -> str:
    """``host:port`` of a server URL, so credentials in a URL never reach the logs."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def nats_error(exc: BaseException, action: str) -> NatsError:
    """Translate a nats-py exception into :class:`NatsError`; ``action`` says what was attempted."""
    if isinstance(exc, nats.js.errors.APIError):
        return NatsError(
            f"{action}: {exc.description or type(exc).__name__} (code={exc.code}, err_code={exc.err_code})",
            code=exc.code,
            err_code=exc.err_code,
        )
    if isinstance(exc, TimeoutError):
        return NatsError(f"{action}: timed out ({type(exc).__name__})")
    return NatsError(f"{action}: {type(exc).__name__}: {exc}")


async def connect(settings: NatsSettings, *, on_connection: ConnectionListener | None = None) -> Client:
    """Connect to NATS, reconnecting forever after the first success; logs connection changes.

    ``on_connection`` hears of each loss and recovery (a health service follows it); a
    deliberate close is not a loss.

    Raises :class:`NatsError` if the first connect does not succeed within
    ``settings.initial_connect_timeout``.
    """
    nc = Client()
    servers = [_redact(url) for url in settings.servers]

    async def on_error(exc: Exception) -> None:
        # str(exc) of nats-py errors names subjects at most, never message payloads.
        _log.warning("nats.error", error_type=type(exc).__name__, error=str(exc))

    async def on_disconnected() -> None:
        # nats-py also calls this on a deliberate close(); only a lost connection is news.
        if not nc.is_closed:
            _log.warning("nats.disconnected", connection=settings.name)
            if on_connection is not None:
                await on_connection(False)

    async def on_reconnected() -> None:
        url = nc.connected_url
        _log.info(
            "nats.reconnected",
            connection=settings.name,
            server=f"{url.hostname}:{url.port}" if url is not None else None,
        )
        if on_connection is not None:
            await on_connection(True)

    async def on_closed() -> None:
        _log.info("nats.closed", connection=settings.name)

    # nats-py annotates the timeouts as int although it only hands them to asyncio.
    options: dict[str, Any] = {
        "servers": list(settings.servers),
        "name": settings.name,
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "connect_timeout": settings.connect_timeout,
        "reconnect_time_wait": settings.reconnect_time_wait,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "closed_cb": on_closed,
    }
    if settings.user is not None:
        options["user"] = settings.user
        options["password"] = settings.password
    if settings.creds_file is not None:
        options["user_credentials"] = str(settings.creds_file)
    if settings.nkey_seed_file is not None:
        options["nkeys_seed"] = str(settings.nkey_seed_file)
    if settings.inbox_prefix is not None:
        options["inbox_prefix"] = settings.inbox_prefix

    try:
        await asyncio.wait_for(nc.connect(**options), timeout=settings.initial_connect_timeout)
    except TimeoutError as exc:
        last = nc.last_error
        await _close_quietly(nc)
        raise NatsError(
            f"could not connect to NATS at {', '.join(servers)} within "
            f"{settings.initial_connect_timeout}s"
            + (f": last error {type(last).__name__}: {last}" if last is not None else "")
        ) from exc
    except (nats.errors.Error, OSError) as exc:
        await _close_quietly(nc)
        raise nats_error(exc, f"connect to NATS at {', '.join(servers)}") from exc
    _log.info("nats.connected", connection=settings.name, servers=servers)
    return nc


async def close_connection(nc: Client, *, timeout: float) -> str:  # noqa: ASYNC109
    """Close ``nc`` on shutdown, gracefully when NATS is there, at once when it is not. Never raises.

    Connected: ``drain()`` (subscriptions finish what they hold, publishes are flushed), bounded by
    ``timeout`` seconds, then a plain close if the drain did not finish. Not connected (NATS down,
    reconnecting): nats-py's ``drain()`` refuses or waits for a server that may never come back,
    and its ``close()`` flushes the buffered outgoing data into the dead socket and raises halfway
    through its cleanup; nothing buffered can be delivered anyway, so it is dropped and the
    connection closed.

    Returns how it went, for the caller's one log line: ``"drained"``, ``"closed"`` (the drain
    failed or timed out), ``"unreachable"`` (NATS was not connected) or ``"already_closed"``.
    """
    if nc.is_closed:
        return "already_closed"
    if nc.is_connected and not nc.is_draining:
        try:
            await asyncio.wait_for(nc.drain(), timeout=timeout)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            _log.debug("nats.drain_failed", error_type=type(exc).__name__)
        else:
            return "drained"
        outcome = "closed"
    else:
        outcome = "closed" if nc.is_draining else "unreachable"
    if not nc.is_connected:
        # nats-py has no public way to drop what it buffered for a server that is gone.
        nc._pending = []
        nc._pending_data_size = 0
    await _close_quietly(nc)
    return outcome


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:  # cleanup after a failed connect must not mask the real error
        _log.debug("nats.close_failed", error_type=type(exc).__name__)


def _stream_config(spec: StreamSpec) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        description=spec.description,
        subjects=list(spec.subjects),
        storage=StorageType(spec.storage),
        num_replicas=spec.replicas,
        # nats-py sends None as 0, which the server reads as "no age limit".
        max_age=spec.max_age.total_seconds() if spec.max_age is not None else None,
        duplicate_window=spec.duplicate_window.total_seconds(),
        deny_delete=spec.deny_delete,
        deny_purge=spec.deny_purge,
        # Omitted rather than false when off, so the config also applies to servers older
        # than the feature (2.11 / 2.12) when a stream does not need it.
        allow_msg_schedules=True if spec.allow_msg_schedules else None,
        allow_msg_ttl=True if spec.allow_msg_ttl else None,
    )


def _differences(have: StreamConfig, want: StreamSpec) -> list[str]:
    """Names of the settings where the server's stream differs from ``want``."""

    def seconds(value: float | None) -> float:
        return float(value or 0.0)

    checks: dict[str, tuple[object, object]] = {
        "description": (have.description or "", want.description),
        "subjects": (sorted(have.subjects or []), sorted(want.subjects)),
        "storage": (str(getattr(have.storage, "value", have.storage)), want.storage),
        "num_replicas": (have.num_replicas or 1, want.replicas),
        "deny_delete": (bool(have.deny_delete), want.deny_delete),
        "deny_purge": (bool(have.deny_purge), want.deny_purge),
        "allow_msg_schedules": (bool(have.allow_msg_schedules), want.allow_msg_schedules),
        "allow_msg_ttl": (bool(have.allow_msg_ttl), want.allow_msg_ttl),
    }
    diffs = [name for name, (a, b) in checks.items() if a != b]
    want_age = want.max_age.total_seconds() if want.max_age is not None else 0.0
    if not math.isclose(seconds(have.max_age), want_age, abs_tol=1e-6):
        diffs.append("max_age")
    if not math.isclose(seconds(have.duplicate_window), want.duplicate_window.total_seconds(), abs_tol=1e-6):
        diffs.append("duplicate_window")
    return diffs


async def ensure_streams(js: JetStreamManager, specs: Iterable[StreamSpec]) -> None:
    """Create each stream, or update it when the server's configuration differs from the spec.

    Safe to run concurrently from several broker replicas. Settings the server cannot
    change in place (storage type, turning off ``deny_delete`` ...) surface as
    :class:`NatsError` with the server's description.
    """
    for spec in specs:
        await _ensure_stream(js, spec)


async def _ensure_stream(js: JetStreamManager, spec: StreamSpec) -> None:
    want = _stream_config(spec)
    action = f"ensure stream {spec.name}"
    try:
        try:
            info: StreamInfo = await js.stream_info(spec.name)
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(want)
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:
                    raise
                info = await js.stream_info(spec.name)
            else:
                _log.info("nats.stream_created", stream=spec.name, subjects=list(spec.subjects))
                return
        diffs = _differences(info.config, spec)
        if not diffs:
            return
        # Start from the server's config so settings we do not manage (placement,
        # metadata, limits set by an operator) survive the update.
        fields = {name: getattr(want, name) for name in _MANAGED_FIELDS}
        await js.update_stream(info.config.evolve(**fields))
        _log.info("nats.stream_updated", stream=spec.name, changed=diffs)
    except (nats.errors.Error, TimeoutError) as exc:
        raise nats_error(exc, action) from exc


_MANAGED_FIELDS = frozenset(
    {
        "description",
        "subjects",
        "storage",
        "num_replicas",
        "max_age",
        "duplicate_window",
        "deny_delete",
        "deny_purge",
        "allow_msg_schedules",
        "allow_msg_ttl",
    }
)


# How long an empty fetch waits for the server's trailing "408 Request Timeout".
_TRAILER_GRACE = 0.05


async def fetch_batch(
    sub: JetStreamContext.PullSubscription,
    batch: int,
    timeout: float,  # noqa: ASYNC109 -- the pull request's server-side expiry, not a cancel scope
) -> list[Msg]:
    """Fetch up to ``batch`` messages, waiting at most ``timeout`` seconds; ``[]`` if none came.

    nats-py signals an empty pull by raising: ``nats.errors.TimeoutError`` (or its
    ``FetchTimeoutError`` subclass) from a single-message fetch, a bare
    ``asyncio.TimeoutError`` from a multi-message one. In Python 3.11 all of these are
    ``TimeoutError``. Other failures become :class:`NatsError`.

    It also works around a nats-py 2.16 defect that would otherwise stall every
    ``nc.drain()`` for its full ``drain_timeout`` (30 s): the server's "408 Request Timeout"
    for an expired pull usually lands just *after* the client gave up, stays in the
    subscription's queue, and the next ``fetch`` discards it with ``get_nowait()`` but
    never ``task_done()``, so ``drain()``'s ``queue.join()`` never returns. Here the queue
    is emptied properly before each fetch, and the trailing status is awaited briefly
    after an empty one.
    """
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    buffered = _take_buffered(sub, batch)
    if buffered:
        # Delivered by an earlier pull after its caller had stopped waiting: hand them out
        # now rather than ask the server for more while they sit here.
        return buffered
    try:
        msgs: list[Msg] = await sub.fetch(batch, timeout=timeout)
    except TimeoutError:
        return await _await_trailer(sub, batch)
    except nats.errors.Error as exc:
        raise nats_error(exc, "fetch") from exc
    return msgs


def _take_buffered(sub: JetStreamContext.PullSubscription, limit: int) -> list[Msg]:
    """Take up to ``limit`` real messages from the local queue, dropping stale status messages."""
    inner = sub._sub
    queue = inner._pending_queue
    msgs: list[Msg] = []
    while len(msgs) < limit and not queue.empty():
        msg = queue.get_nowait()
        queue.task_done()
        inner._pending_size -= len(msg.data)
        if JetStreamContext.is_status_msg(msg) is None:
            msgs.append(msg)
    return msgs


async def _await_trailer(sub: JetStreamContext.PullSubscription, batch: int) -> list[Msg]:
    """After an empty fetch, consume the server's closing status (or a last-moment delivery)."""
    msgs: list[Msg] = []
    try:
        while len(msgs) < batch:
            msg = await sub._sub.next_msg(timeout=_TRAILER_GRACE)
            status = JetStreamContext.is_status_msg(msg)
            if status is None:
                msgs.append(msg)
            elif status != StatusCode.CONTROL_MESSAGE:
                break  # 404 / 408 / 409 end the pull request: nothing more will come for it
    except (TimeoutError, nats.errors.Error):
        # No trailer within the grace period (it raced ahead and was consumed, or the
        # connection is going away): the next fetch_batch cleans up whatever comes later.
        pass
    return msgs
