"""Per-agency NATS users: nkey seeds, least-privilege permissions, and the server's accounts block.

Why accounts and not one account with subject permissions: nats-server checks a client's *publish
subject* against its permissions, never the *reply subject*. In one shared account an agency allowed
to ask ``$JS.API.CONSUMER.INFO`` about its own consumer can name ``gc.ledger.intake`` (or
``gc.status.<...>.<id>``, ``gc.events.<other agency>.<id>``) as the reply, and JetStream stores the
answer there; the same with a JetStream publish (the PubAck) or a pull (the messages themselves).
Measured with nats-server 2.15.1. So JetStream lives in the broker's account alone, and each agency
gets an account of its own that *imports* only the services it needs from the broker's account:
its two inbox consumers (info, next message, ack) and the publishing of its own events and dead
letters. Whatever reply subject an agency names is then a subject in its own account, which has no
JetStream and no one else in it.

An agency cannot create consumers either: a consumer config may name a push ``deliver_subject``,
and JetStream would deliver the agency's inbox onto any subject of the broker's account. The broker
creates the inbox consumers (:func:`ensure_inbox_consumers`); adapters only bind to them.

Layout under ``state_dir``::

    keys/nats/<agency-id>.nk    the agency's nkey user seed (``SU...``), mode 0600
    keys/nats/_broker.nk        the broker's
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
import nats.js.errors
import nkeys
import structlog
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext

from ._errors import KeyFileError
from ._nats import NatsSettings, nats_error
from ._subjects import (
    INBOX_STREAM,
    PRIORITIES,
    deadletter_subject,
    events_filter,
    inbox_consumer,
    inbox_filter,
    validate_agency_id,
)

__all__ = [
    "AGENCY_JS_API_PREFIX",
    "BROKER_ACCOUNT",
    "BROKER_NATS_USER",
    "DEFAULT_INBOX_ACK_WAIT",
    "NatsAuthorization",
    "NatsPermissions",
    "NatsUser",
    "agency_account",
    "agency_inbox_prefix",
    "agency_permissions",
    "agency_services",
    "broker_permissions",
    "ensure_inbox_consumers",
    "ensure_nats_seeds",
    "generate_nats_seed",
    "inbox_consumer_config",
    "load_nats_public_key",
    "nats_authorization",
    "nats_seed_path",
    "nats_settings_for",
    "render_authorization_conf",
    "requires_auth",
]

_log = structlog.get_logger("greenchannel.nats_auth")

BROKER_NATS_USER = "_broker"
"""Seed file stem of the broker's user; cannot collide with an agency id (those start with [a-z0-9])."""

BROKER_ACCOUNT = "GREENCHANNEL"
"""The account holding JetStream (every stream and bucket) and the broker's user."""

AGENCY_JS_API_PREFIX = "GCJS.API"
"""The JetStream API prefix of an agency's connection (``nc.jetstream(prefix=...)``).

An agency's account imports its two consumers' API subjects under this name: imported as
``$JS.API...`` they would be answered by the account's own (disabled) JetStream instead.
"""

DEFAULT_INBOX_ACK_WAIT = 2.0
"""Ack wait of the inbox consumers the broker creates; the adapters' default too.

Short because an adapter keeps every message it holds alive with ``in_progress`` every third of
it, however long the agency system takes: the ack wait only decides how soon a message held by
an adapter that died (SIGKILL, a lost host) is delivered again. At 2 s a GREEN order a crashed
adapter held is back within about 2 s, not the 30 s it used to wait.
"""

_SEED_DIR = ("keys", "nats")
_SEED_SUFFIX = ".nk"
_STREAM_RESPONSES = "stream"  # a pull answers one request with many messages


def agency_account(agency_id: str) -> str:
    """The NATS account of one agency (``AGENCY_bank-icbc``)."""
    return f"AGENCY_{validate_agency_id(agency_id)}"


def agency_inbox_prefix(agency_id: str) -> str:
    """The agency's reply-subject prefix (``_INBOX_bank-icbc``): the only subjects it may subscribe to.

    One token, so ``_INBOX_bank-icbc.>`` never covers ``_INBOX_bank-icbc-2``'s replies nor the
    broker's (``_INBOX.``).
    """
    return f"_INBOX_{validate_agency_id(agency_id)}"


# -- permissions --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NatsPermissions:
    """Subjects one user may publish to and subscribe to; everything else is denied."""

    publish: tuple[str, ...]
    """Subjects (with wildcards) the user may publish to."""

    subscribe: tuple[str, ...]
    """Subjects (with wildcards) the user may subscribe to."""

    def as_config(self) -> dict[str, object]:
        """The ``permissions`` map of a nats-server user."""
        return {"publish": {"allow": list(self.publish)}, "subscribe": {"allow": list(self.subscribe)}}


def agency_services(agency_id: str) -> tuple[str, ...]:
    """What an agency's account imports from the broker's: nothing but its own inbox and outputs.

    Consumer info (the adapter asks whether a lane has work), next message (the pull), the acks of
    its messages (ack, nak, in-progress: the messages' reply subjects), and the JetStream publish of
    its own events and dead letters (their PubAcks come back as the responses).
    """
    services: list[str] = []
    for lane in PRIORITIES:
        consumer = inbox_consumer(agency_id, lane)
        services += [
            f"$JS.API.CONSUMER.INFO.{INBOX_STREAM}.{consumer}",
            f"$JS.API.CONSUMER.MSG.NEXT.{INBOX_STREAM}.{consumer}",
            f"$JS.ACK.{INBOX_STREAM}.{consumer}.>",
        ]
    services += [events_filter(agency_id), deadletter_subject(agency_id)]
    return tuple(services)


def _local_name(service: str) -> str:
    """The subject an agency publishes to for an imported service (JetStream API ones renamed)."""
    api = "$JS.API."
    return AGENCY_JS_API_PREFIX + "." + service[len(api) :] if service.startswith(api) else service


def agency_permissions(agency_id: str) -> NatsPermissions:
    """An agency's user: publish only to what its account imports, subscribe only to its replies."""
    return NatsPermissions(
        publish=tuple(_local_name(s) for s in agency_services(agency_id)),
        subscribe=(f"{agency_inbox_prefix(agency_id)}.>",),
    )


def broker_permissions() -> NatsPermissions:
    """The broker's user, JetStream's administrator within its account.

    Every JetStream API, acks and flow control of its consumers, KV writes, the ``gc.`` subjects;
    replies on the default ``_INBOX`` prefix. No ``>``: nothing outside GreenChannel's names.
    """
    return NatsPermissions(
        publish=("$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "gc.>", "_INBOX.>"),
        subscribe=("_INBOX.>",),
    )


# -- users and the server's configuration -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class NatsUser:
    """One nkey user of the server."""

    owner: str
    """Agency id, or :data:`BROKER_NATS_USER` for the broker (or another name for a broker-side user)."""

    nkey: str
    """The user's public nkey (``U...``); the seed stays with its owner."""

    permissions: NatsPermissions
    """What the user may publish and subscribe to."""

    def as_config(self) -> dict[str, object]:
        return {"nkey": self.nkey, "permissions": self.permissions.as_config()}


@dataclass(frozen=True, kw_only=True)
class NatsAuthorization:
    """Who may connect to the server: the broker's account with JetStream, one account per agency."""

    broker: NatsUser
    """The broker's user, in :data:`BROKER_ACCOUNT`."""

    agencies: tuple[NatsUser, ...]
    """One user per agency, each in its own account (``owner`` is the agency id)."""

    broker_side: tuple[NatsUser, ...] = field(default=())
    """Further users in the broker's account (the embedded server's own readiness probe)."""

    def __post_init__(self) -> None:
        owners = [user.owner for user in self.agencies]
        if len(set(owners)) != len(owners):
            raise ValueError("NatsAuthorization.agencies: one user per agency")
        for owner in owners:
            validate_agency_id(owner)

    def with_broker_side(self, *users: NatsUser) -> NatsAuthorization:
        return NatsAuthorization(
            broker=self.broker, agencies=self.agencies, broker_side=(*self.broker_side, *users)
        )

    def accounts_config(self) -> dict[str, object]:
        """The server's ``accounts`` map (JSON, which nats-server's config syntax includes)."""
        exports: list[dict[str, object]] = []
        accounts: dict[str, object] = {}
        for user in self.agencies:
            account = agency_account(user.owner)
            imports: list[dict[str, object]] = []
            for subject in agency_services(user.owner):
                export: dict[str, object] = {"service": subject, "accounts": [account]}
                if ".MSG.NEXT." in subject:
                    export["response_type"] = _STREAM_RESPONSES
                exports.append(export)
                imported: dict[str, object] = {"service": {"account": BROKER_ACCOUNT, "subject": subject}}
                if _local_name(subject) != subject:
                    imported["to"] = _local_name(subject)
                imports.append(imported)
            accounts[account] = {"users": [user.as_config()], "imports": imports}
        broker_users = [self.broker.as_config(), *(u.as_config() for u in self.broker_side)]
        return {
            BROKER_ACCOUNT: {"jetstream": "enabled", "users": broker_users, "exports": exports},
            **accounts,
        }


def render_authorization_conf(authorization: NatsAuthorization) -> str:
    """The ``accounts { ... }`` block for an operator's nats-server.conf (JSON values are valid there)."""
    body = json.dumps(authorization.accounts_config(), indent=2)
    return (
        "# GreenChannel NATS accounts: JetStream in the broker's account, one account per agency.\n"
        "# Generated by `greenchannel nats-authorization`; public keys only, no secrets.\n"
        f"accounts: {body}\n"
    )


# -- seeds --------------------------------------------------------------------------------------


def nats_seed_path(state_dir: Path, owner: str | None) -> Path:
    """Where the nkey seed of an agency (or, ``None``, the broker) is kept."""
    stem = BROKER_NATS_USER if owner is None else validate_agency_id(owner)
    return state_dir.joinpath(*_SEED_DIR, stem + _SEED_SUFFIX)


def generate_nats_seed() -> bytes:
    """A fresh nkey user seed (``SU...``)."""
    return bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))


def _create_seed(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(generate_nats_seed() + b"\n")
            out.flush()
            os.fsync(out.fileno())
        # link() fails if the name exists: a seed written meanwhile by another process wins, and
        # a reader never sees a half-written file.
        try:
            os.link(tmp, path)
        except FileExistsError:
            return
        _log.info("nats_auth.seed_created", owner=path.stem)
    finally:
        tmp.unlink(missing_ok=True)


def load_nats_public_key(path: Path) -> str:
    """The public nkey of the user seed in ``path``; refuses a seed others can read."""
    try:
        mode = path.stat().st_mode
        seed = bytearray(path.read_bytes().strip())
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read NATS seed: {exc.strerror}") from exc
    if mode & 0o077:
        raise KeyFileError(f"{path}: NATS seed is readable by others (mode {mode & 0o777:o}); chmod 600 it")
    try:
        pair = nkeys.from_seed(seed)
        public = bytes(pair.public_key).decode()
        pair.wipe()
    except (nkeys.NkeysError, ValueError) as exc:
        raise KeyFileError(f"{path}: not an nkey seed") from exc
    finally:
        seed[:] = b"\0" * len(seed)
    if not public.startswith("U"):
        raise KeyFileError(f"{path}: not a user nkey seed")
    return public


def ensure_nats_seeds(state_dir: Path, agency_ids: Iterable[str], *, broker: bool = True) -> None:
    """Give each agency (and the broker) an nkey user seed; existing seeds are kept."""
    if isinstance(agency_ids, str):
        raise TypeError("agency_ids must be an iterable of agency ids, not one string")
    owners: list[str | None] = [validate_agency_id(a) for a in agency_ids]
    if broker:
        owners.append(None)
    for owner in owners:
        path = nats_seed_path(state_dir, owner)
        if not path.exists():
            _create_seed(path)


def nats_authorization(state_dir: Path, agency_ids: Iterable[str]) -> NatsAuthorization:
    """Users for the broker and every agency of ``agency_ids`` (seeds generated where missing)."""
    ids = [validate_agency_id(a) for a in agency_ids]
    ensure_nats_seeds(state_dir, ids)
    return NatsAuthorization(
        broker=NatsUser(
            owner=BROKER_NATS_USER,
            nkey=load_nats_public_key(nats_seed_path(state_dir, None)),
            permissions=broker_permissions(),
        ),
        agencies=tuple(
            NatsUser(
                owner=agency,
                nkey=load_nats_public_key(nats_seed_path(state_dir, agency)),
                permissions=agency_permissions(agency),
            )
            for agency in ids
        ),
    )


def nats_settings_for(
    url: str, *, state_dir: Path, agency: str | None, name: str, **kwargs: object
) -> NatsSettings:
    """Settings that connect as ``agency`` (or, ``None``, the broker) with its seed from ``state_dir``.

    The seed must exist (:func:`ensure_nats_seeds`). Against a server without authorization the
    credentials are simply not asked for.
    """
    seed = nats_seed_path(state_dir, agency)
    load_nats_public_key(seed)  # fail here, with the file's name, rather than at the handshake
    prefix = None if agency is None else agency_inbox_prefix(agency)
    return NatsSettings.from_url(url, name=name, nkey_seed_file=seed, inbox_prefix=prefix, **kwargs)


def requires_auth(nc: Client) -> bool:
    """Whether the connected server asks clients to authenticate (then it runs our accounts)."""
    # nats-py keeps the server's INFO only in a private attribute; auth_required is part of the
    # protocol's INFO and is what tells an unauthenticated test server from a deployment.
    info: Mapping[str, object] = nc._server_info
    return bool(info.get("auth_required", False))


# -- inbox consumers ----------------------------------------------------------------------------


def inbox_consumer_config(
    agency_id: str, lane: str, *, ack_wait: float = DEFAULT_INBOX_ACK_WAIT
) -> ConsumerConfig:
    """The durable pull consumer of one inbox lane, as the adapter runtime binds to it."""
    durable = inbox_consumer(agency_id, lane)
    return ConsumerConfig(
        name=durable,
        durable_name=durable,
        filter_subject=inbox_filter(agency_id, lane),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        # Never give up on a message: while the agency system is down the inbox waits.
        max_deliver=-1,
    )


async def ensure_inbox_consumers(
    js: JetStreamContext,
    agency_ids: Iterable[str],
    *,
    ack_wait: float | Mapping[str, float] = DEFAULT_INBOX_ACK_WAIT,
) -> int:
    """Create each agency's missing inbox consumers (broker side); returns how many were created.

    An existing consumer with another ack wait is brought to the one asked: under per-agency
    users only the broker can change it, and an adapter finding another one than its own would
    try to and be refused (a store from before the ack wait became short has 30 s consumers).
    An unauthenticated adapter sets its own again when it binds.
    """
    created = 0
    for agency in agency_ids:
        wait = ack_wait if isinstance(ack_wait, float | int) else ack_wait.get(agency, DEFAULT_INBOX_ACK_WAIT)
        for lane in PRIORITIES:
            config = inbox_consumer_config(agency, lane, ack_wait=float(wait))
            try:
                try:
                    have = await js.consumer_info(INBOX_STREAM, inbox_consumer(agency, lane))
                except nats.js.errors.NotFoundError:
                    pass
                else:
                    if have.config.ack_wait != config.ack_wait:
                        await js.add_consumer(INBOX_STREAM, config)  # create-or-update, same name
                        _log.info(
                            "nats_auth.inbox_consumer_updated",
                            consumer=config.durable_name,
                            ack_wait=config.ack_wait,
                        )
                    continue
                await js.add_consumer(INBOX_STREAM, config)
            except (nats.errors.Error, TimeoutError) as exc:
                raise nats_error(exc, f"create inbox consumer {config.durable_name}") from exc
            created += 1
    if created:
        _log.info("nats_auth.inbox_consumers_created", count=created)
    return created
