"""``adapter.toml``: one agency's adapter, as ``greenchannel adapter --config FILE`` runs it.

The file is read in two steps, both before anything is started or connected:

1. :func:`load_adapter_file` parses and checks the TOML itself (tables, fields, types, ranges,
   combinations) into a frozen :class:`AdapterFileConfig`;
2. :func:`load_adapter_materials` reads what the file points at (the agency's private keys, the
   directory and its key overlays, the NATS seed, the TLS files) and checks that they agree with
   each other (a client key belongs to its certificate, a signing key is registered, ...).

Every problem raises :class:`~adapters.AdapterConfigError` naming the file and a field path in
TOML spelling: ``adapter.toml: nats.url: must be ...``. Unknown tables and fields are refused: a
typo must not silently fall back to a default (plaintext, a default journal). Relative paths are
relative to the directory of the file, so a deployment directory can be moved as a whole.

The format, every field (``*`` required)::

    [agency]
    id* = "bank-icbc"                       the agency this adapter speaks for
    signing_key* = "keys/sig.pem"           its Ed25519 private key (PKCS#8 PEM), registered in the directory
    encryption_keys = ["keys/enc.pem"]      its X25519 private keys (PKCS#8 PEM), newest first; they open
                                            sealed request bodies. Without them sealed requests are refused.

    [registry]                              where the adapter finds every party's public keys
    directory* = "directory.toml"           the agency directory the operator publishes
    key_overlays = ["directory-keys.toml"]  public-key overlays (``[[key]]`` / ``[[broker_key]]``)

    [nats]
    url* = "nats://nats.example:4222"       one URL or an array of URLs (a cluster)
    nkey_seed = "keys/nats.nk"              the agency's nkey user seed (``greenchannel nats-authorization``),
                                            mode 0600; leave out only against a server without users
    connect_timeout = 2.0                   seconds for one connection attempt
    inbox_timeout = 60.0                    seconds to wait at start for the broker to have created the inbox

    [service]                               the agency's own system (BankService, CarrierService, ...)
    target* = "core.bank.internal:50061"    host:port
    allow_plaintext = false                 true: no TLS to ``target`` (for a system on the same host)
    call_timeout = 10.0                     deadline in seconds of one call
    retry_budget = 300.0                    seconds a still-unavailable system is retried before FAILED

    [service.tls]                           required unless allow_plaintext = true
    ca* = "tls/ca.pem"                      CA that signs the system's server certificate
    cert = "tls/adapter.pem"                client certificate (mTLS), with ``key``
    key = "tls/adapter.key"                 its private key, with ``cert``
    server_name = "core.bank.internal"      name to expect in the server certificate (default: the host)

    [adapter]
    journal_dir* = "state"                  the adapter's journal (idempotency database); created if missing
    concurrency = 32                        inbox messages in flight at once
    standard_concurrency = 8                at most this many of them STANDARD (<= concurrency)
    ack_wait = 2.0                          seconds JetStream waits for an ack before redelivering. Under
                                            per-agency NATS users the broker creates the consumers and
                                            sets it: leave it out (the consumers' value is used) or match it
    shutdown_grace = 10.0                   seconds a graceful stop lets the messages in flight finish
    acknowledge_after = 0.25                seconds the agency system may take before ACKNOWLEDGED is sent
                                            (a quicker answer goes out alone); 0: always at once

    [health]                                optional: without it no health service
    listen* = "127.0.0.1:8081"              gRPC health service (grpc.health.v1); port 0 picks one

    [metrics]                               optional: without it no metrics (docs/metrics.md)
    listen* = "127.0.0.1:9465"              Prometheus endpoint, GET /metrics; port 0 picks one
    interval = 5.0                          seconds between reads of the inbox lag
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import grpc
from cryptography.hazmat.primitives.asymmetric import x25519

from broker.protocol import (
    AGENCY_ID,
    DEFAULT_INBOX_ACK_WAIT,
    Agency,
    AgencyKind,
    KeyFileError,
    MetricsConfig,
    NatsSettings,
    Registry,
    RegistryError,
    SigningKey,
    TomlTable,
    agency_inbox_prefix,
    channel_credentials,
    encryption_kid,
    is_loopback,
    listen_problem,
    load_directory,
    load_nats_public_key,
    load_signing_key,
    read_encryption_key,
    read_toml,
)

from ._config import AdapterConfig
from ._errors import AdapterConfigError

__all__ = [
    "FIELDS",
    "AdapterFileConfig",
    "AdapterMaterials",
    "ServiceTls",
    "load_adapter_file",
    "load_adapter_materials",
]


# -- the schema ---------------------------------------------------------------------------------

_Check = Callable[[Any], str | None]
"""Returns what is wrong with a value (``"must be > 0"``), or None when it is fine."""


@dataclass(frozen=True)
class _Field:
    """One field of a table: its TOML type, whether it is required, its default, a value check."""

    kind: str
    """``string``, ``strings`` (a string or an array of them), ``path``, ``paths``, ``number``,
    ``int`` or ``bool``."""
    required: bool = False
    default: object = None
    check: _Check | None = None


def _positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _at_least_one(value: int) -> str | None:
    return None if value >= 1 else "must be >= 1"


def _agency_id(value: str) -> str | None:
    return None if AGENCY_ID.fullmatch(value) else "must be an agency id such as 'bank-icbc' ([a-z0-9-])"


_NATS_URL = re.compile(r"(nats|tls)://([^\s/@]+@)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(:[0-9]{1,5})?")


def _host_port(value: str) -> str | None:
    # The metrics' check of a host:port, with an example fit for a service or health address.
    return None if listen_problem(value) is None else "must be host:port (e.g. '127.0.0.1:50061')"


def _nats_urls(values: tuple[str, ...]) -> str | None:
    if not values:
        return "must name at least one server"
    for url in values:
        if not _NATS_URL.fullmatch(url):
            return f"must be nats://host:port or tls://host:port URLs, got {url!r}"
    return None


_TABLES: Mapping[str, Mapping[str, _Field]] = MappingProxyType(
    {
        "agency": {
            "id": _Field("string", required=True, check=_agency_id),
            "signing_key": _Field("path", required=True),
            "encryption_keys": _Field("paths", default=()),
        },
        "registry": {
            "directory": _Field("path", required=True),
            "key_overlays": _Field("paths", default=()),
        },
        "nats": {
            "url": _Field("strings", required=True, check=_nats_urls),
            "nkey_seed": _Field("path"),
            "connect_timeout": _Field("number", default=2.0, check=_positive),
            "inbox_timeout": _Field("number", default=60.0, check=_positive),
        },
        "service": {
            "target": _Field("string", required=True, check=_host_port),
            "allow_plaintext": _Field("bool", default=False),
            "call_timeout": _Field("number", default=10.0, check=_positive),
            "retry_budget": _Field("number", default=300.0, check=_non_negative),
        },
        "service.tls": {
            "ca": _Field("path", required=True),
            "cert": _Field("path"),
            "key": _Field("path"),
            "server_name": _Field("string"),
        },
        "adapter": {
            "journal_dir": _Field("path", required=True),
            "concurrency": _Field("int", default=32, check=_at_least_one),
            "standard_concurrency": _Field("int", default=8, check=_at_least_one),
            "ack_wait": _Field("number", check=_positive),
            "shutdown_grace": _Field("number", default=10.0, check=_non_negative),
            "acknowledge_after": _Field("number", default=0.25, check=_non_negative),
        },
        "health": {
            "listen": _Field("string", required=True, check=_host_port),
        },
        "metrics": {
            "listen": _Field("string", required=True, check=listen_problem),
            "interval": _Field("number", default=5.0, check=_positive),
        },
    }
)
FIELDS: Mapping[str, tuple[str, ...]] = MappingProxyType({table: tuple(f) for table, f in _TABLES.items()})
"""Every table of the format (``service.tls`` for the nested one) and its fields, in order."""
_SUBTABLES = MappingProxyType({"service": ("tls",)})


# -- the result ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServiceTls:
    """TLS to the agency's own system."""

    ca: Path
    """CA certificate(s) that sign the system's server certificate (PEM)."""
    cert: Path | None = None
    """The adapter's client certificate (PEM) for mTLS; given together with ``key``."""
    key: Path | None = None
    """The client certificate's private key (PEM)."""
    server_name: str | None = None
    """Name expected in the server certificate, when it is not the host of the target."""


@dataclass(frozen=True, kw_only=True)
class AdapterFileConfig:
    """An ``adapter.toml``, checked; paths absolute. Nothing it points at has been read yet."""

    source: Path
    """The file it was read from, for messages."""
    adapter: AdapterConfig
    """The runtime's settings (agency id, target, journal directory, NATS, timings)."""
    signing_key: Path
    """The agency's Ed25519 private key file."""
    encryption_keys: tuple[Path, ...]
    """The agency's X25519 private key files, newest first; empty: sealed requests are refused."""
    directory: Path
    """The agency directory file."""
    key_overlays: tuple[Path, ...]
    """Public-key overlays merged into the directory."""
    tls: ServiceTls | None
    """TLS to the agency's system; None only when ``allow_plaintext``."""
    allow_plaintext: bool
    """Whether the agency's system is reached without TLS."""
    ack_wait: float | None
    """The ack wait the file asks for; None: the inbox consumers' own (``adapter.ack_wait`` then
    holds the default until the adapter has seen them)."""
    inbox_timeout: float
    """Seconds to wait at start for the broker to have created the agency's inbox consumers."""
    health_listen: str | None
    """Address of the gRPC health service; None: no health service."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Prometheus metrics: off without a ``[metrics]`` table."""

    def with_metrics(self, listen: str) -> AdapterFileConfig:
        """This config with metrics served on ``listen`` (a command-line override)."""
        if (problem := listen_problem(listen)) is not None:
            raise AdapterConfigError(f"--metrics-listen: {problem}")
        return replace(self, metrics=replace(self.metrics, listen=listen))

    def with_health(self, listen: str) -> AdapterFileConfig:
        """This config with the health service on ``listen`` (a command-line override)."""
        if (problem := _host_port(listen)) is not None:
            raise AdapterConfigError(f"--health-listen: {problem}")
        return replace(self, health_listen=listen)

    @property
    def nats(self) -> NatsSettings:
        """How the adapter connects (always set by :func:`load_adapter_file`)."""
        assert self.adapter.nats is not None
        return self.adapter.nats


@dataclass(frozen=True, kw_only=True)
class AdapterMaterials:
    """What the file points at, read and checked against each other."""

    registry: Registry
    """The directory with its key overlays."""
    agency: Agency
    """This adapter's agency, as the directory lists it."""
    signing_key: SigningKey
    """Its Ed25519 key, registered for it."""
    decryption_keys: tuple[x25519.X25519PrivateKey, ...]
    """Its X25519 keys, newest first (empty when none are configured)."""
    channel_credentials: grpc.ChannelCredentials | None = None
    """TLS to the agency's system, built from ``[service.tls]``; None: plaintext."""


# -- reading the file ---------------------------------------------------------------------------


def _error(message: str, /, *, file: str | None = None, field: str | None = None) -> AdapterConfigError:
    """``adapter.toml: nats.url: must be ...``: the shape every adapter config error has."""
    where = ": ".join(part for part in (file, field) if part)
    return AdapterConfigError(f"{where}: {message}" if where else message)


def _fields(scope: TomlTable, name: str, *, base: Path) -> dict[str, Any]:
    """Every field of table ``name`` by the schema, checked, defaults filled in."""
    schema = _TABLES[name]
    scope.only(set(schema) | set(_SUBTABLES.get(name, ())))
    return {key: _field(scope, key, spec, base=base) for key, spec in schema.items()}


def _field(scope: TomlTable, key: str, spec: _Field, *, base: Path) -> Any:
    if not scope.has(key):
        if spec.required:
            scope.fail(key, "missing required field")
        return spec.default
    value: Any
    if spec.kind in ("string", "path"):
        value = scope.string(key)
        if not value:
            scope.fail(key, "expected a non-empty string, got an empty one")
        value = base / value if spec.kind == "path" else value
    elif spec.kind in ("strings", "paths"):
        one = scope.values[key] if spec.kind == "strings" else None
        items = (one,) if isinstance(one, str) else scope.strings(key)
        for i, item in enumerate(items):
            if not item:
                scope.fail(f"{key}[{i}]", "expected a non-empty string, got an empty one")
        value = tuple(base / item for item in items) if spec.kind == "paths" else items
    elif spec.kind == "bool":
        value = scope.boolean(key, default=False)
    elif spec.kind == "int":
        value = scope.integer(key)
    else:
        value = scope.number(key, expected="a number of seconds")
    if spec.check is not None and (problem := spec.check(value)) is not None:
        scope.fail(key, problem)
    return value


def _is_loopback(target: str) -> bool:
    return is_loopback(target.rsplit(":", 1)[0])


def load_adapter_file(path: Path) -> AdapterFileConfig:
    """Parse and check ``path``; raises :class:`AdapterConfigError` naming file and field."""
    source = Path(path).absolute()
    base = source.parent
    root = read_toml(source, _error, invalid="invalid TOML")
    for key in root.values:
        if key not in _TABLES or "." in key:
            root.fail(key, f"unknown table (expected: {', '.join(t for t in _TABLES if '.' not in t)})")
    agency = _fields(root.table("agency"), "agency", base=base)
    registry = _fields(root.table("registry"), "registry", base=base)
    nats = _fields(root.table("nats"), "nats", base=base)
    service_scope = root.table("service")
    service = _fields(service_scope, "service", base=base)
    adapter = _fields(root.table("adapter"), "adapter", base=base)
    health_scope = root.optional_table("health")
    health = None if health_scope is None else _fields(health_scope, "health", base=base)
    metrics_scope = root.optional_table("metrics")
    metrics = None if metrics_scope is None else _fields(metrics_scope, "metrics", base=base)
    tls_scope = service_scope.optional_table("tls")
    tls_table = None if tls_scope is None else _fields(tls_scope, "service.tls", base=base)

    tls: ServiceTls | None = None
    if tls_table is not None:
        if service["allow_plaintext"]:
            root.fail("service.allow_plaintext", "contradicts [service.tls]: remove one of them")
        if (tls_table["cert"] is None) != (tls_table["key"] is None):
            root.fail(
                "service.tls.cert" if tls_table["cert"] is None else "service.tls.key",
                "cert and key go together",
            )
        tls = ServiceTls(**tls_table)
    elif not service["allow_plaintext"]:
        root.fail(
            "service",
            "no [service.tls]: add it (ca, and cert/key for mTLS), or set allow_plaintext = true "
            "for a system on this host",
        )
    elif not _is_loopback(service["target"]):
        root.fail(
            "service.allow_plaintext",
            f"plaintext is allowed only to a system on this host (127.0.0.1, ::1, localhost), "
            f"not {service['target']!r}: configure [service.tls]",
        )
    if adapter["standard_concurrency"] > adapter["concurrency"]:
        root.fail("adapter.standard_concurrency", "must be <= adapter.concurrency")

    agency_id: str = agency["id"]
    seed: Path | None = nats["nkey_seed"]
    settings = NatsSettings(
        servers=nats["url"],
        name=f"greenchannel-adapter-{agency_id}",
        nkey_seed_file=seed,
        # An agency's NATS user may only receive replies below its own prefix.
        inbox_prefix=agency_inbox_prefix(agency_id) if seed is not None else None,
        connect_timeout=nats["connect_timeout"],
    )
    try:
        runtime = AdapterConfig(
            agency_id=agency_id,
            agency_target=service["target"],
            state_dir=adapter["journal_dir"],
            nats=settings,
            call_timeout=service["call_timeout"],
            retry_budget=service["retry_budget"],
            ack_wait=adapter["ack_wait"] or DEFAULT_INBOX_ACK_WAIT,
            concurrency=adapter["concurrency"],
            standard_concurrency=adapter["standard_concurrency"],
            shutdown_grace=adapter["shutdown_grace"],
            acknowledge_after=adapter["acknowledge_after"],
        )
    except ValueError as exc:  # every field was checked above; this is a combination we missed
        root.fail(None, str(exc))
    return AdapterFileConfig(
        source=source,
        adapter=runtime,
        signing_key=agency["signing_key"],
        encryption_keys=agency["encryption_keys"],
        directory=registry["directory"],
        key_overlays=registry["key_overlays"],
        tls=tls,
        allow_plaintext=service["allow_plaintext"],
        ack_wait=adapter["ack_wait"],
        inbox_timeout=nats["inbox_timeout"],
        health_listen=health["listen"] if health is not None else None,
        metrics=MetricsConfig() if metrics is None else MetricsConfig(**metrics),
    )


# -- reading what it points at ------------------------------------------------------------------


def _readable(path: Path, field: str, config: AdapterFileConfig) -> None:
    if not path.is_file():
        raise AdapterConfigError(f"{config.source}: {field}: {path}: no such file")


def load_adapter_materials(config: AdapterFileConfig) -> AdapterMaterials:
    """Read the keys, the directory and the NATS seed the file names; check they fit together."""
    where = config.source

    def fail(field: str, message: str) -> NoReturn:
        raise AdapterConfigError(f"{where}: {field}: {message}")

    _readable(config.directory, "registry.directory", config)
    for i, overlay in enumerate(config.key_overlays):
        _readable(overlay, f"registry.key_overlays[{i}]", config)
    try:
        registry = load_directory(config.directory, key_overlays=config.key_overlays)
    except RegistryError as exc:
        fail("registry", str(exc))
    agency_id = config.adapter.agency_id
    if agency_id not in registry:
        fail("agency.id", f"{agency_id!r} is not in the directory {config.directory}")
    agency = registry.get(agency_id)
    if agency.kind is AgencyKind.REGULATOR:
        fail("agency.id", f"{agency_id!r} is a regulator: regulators run no agency service")
    if not registry.broker_keys():
        fail("registry", "no broker key: add the overlay with the broker's [[broker_key]]")

    try:
        signing_key = load_signing_key(config.signing_key)
    except KeyFileError as exc:
        fail("agency.signing_key", str(exc))
    if signing_key.kid not in {key.kid for key in agency.signing_keys()}:
        fail("agency.signing_key", f"key {signing_key.kid} is not a registered signing key of {agency_id!r}")

    decryption: list[x25519.X25519PrivateKey] = []
    registered = {key.kid for key in agency.encryption_keys()}
    for i, path in enumerate(config.encryption_keys):
        field = f"agency.encryption_keys[{i}]"
        try:
            key = read_encryption_key(path)
        except KeyFileError as exc:
            fail(field, str(exc))
        if encryption_kid(key) not in registered:
            fail(field, f"key {encryption_kid(key)} is not a registered encryption key of {agency_id!r}")
        decryption.append(key)

    seed = config.nats.nkey_seed_file
    if seed is not None:
        try:
            load_nats_public_key(seed)
        except KeyFileError as exc:
            fail("nats.nkey_seed", str(exc))
    credentials: grpc.ChannelCredentials | None = None
    if config.tls is not None:
        # Read and checked now (the key belongs to the certificate), not at the first handshake.
        try:
            credentials = channel_credentials(config.tls.ca, cert=config.tls.cert, key=config.tls.key)
        except ValueError as exc:
            fail("service.tls", str(exc))
    return AdapterMaterials(
        registry=registry,
        agency=agency,
        signing_key=signing_key,
        decryption_keys=tuple(decryption),
        channel_credentials=credentials,
    )
