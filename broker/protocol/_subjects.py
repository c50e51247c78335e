"""Every NATS subject, stream, consumer and KV bucket name GreenChannel uses, in one place.

Names are built only by these functions. Each variable token is validated, because a
token holding ``.``, ``*``, ``>`` or whitespace would silently change which messages a
subject addresses (``bank-a.>`` as an agency id would read every inbox of every
priority). Anything that does not validate raises :class:`ValueError`; callers never
build subjects with f-strings of their own.

Layout::

    GC_INBOX       gc.inbox.<agency>.<priority>.<type>    requests for an agency's adapter
    GC_EVENTS      gc.events.<agency>.<request_id>        signed lifecycle events, adapter -> broker
    GC_WATCH       gc.status.<request_id>.<sender>.<recipient>.<case_owner>.<case>
                                                          notarized status changes, broker -> watchers
    GC_LEDGER      gc.ledger.entry, gc.ledger.checkpoint  append-only, hash-chained ledger
    GC_LEDGER_INTAKE gc.ledger.intake                     records waiting to be chained (work queue)
    GC_DEADLINES   gc.deadline.<request_id>.<phase>       message schedules (one per subject)
                   gc.deadline.fired.<request_id>.<phase> where a schedule fires
    GC_DEADLETTER  gc.deadletter.<agency>                 messages an adapter could not process
    GC_NOTICES     gc.notice.<agency>                     escalation notices to duty desks and supervisors
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal, NamedTuple

__all__ = [
    "DEADLETTER_STREAM",
    "DEADLINES_STREAM",
    "EVENTS_STREAM",
    "IDEMPOTENCY_BUCKET",
    "IDEMPOTENCY_WINDOW",
    "INBOX_STREAM",
    "KV_BUCKETS",
    "LEDGER_CHECKPOINT_SUBJECT",
    "LEDGER_ENTRY_SUBJECT",
    "LEDGER_INTAKE_STREAM",
    "LEDGER_INTAKE_SUBJECT",
    "LEDGER_SEQUENCER_CONSUMER",
    "LEDGER_STREAM",
    "LEDGER_TIMELINE_CONSUMER",
    "NOTICES_STREAM",
    "PRIORITIES",
    "REGISTRY_BUCKET",
    "REPLAY_BUCKET",
    "REQUEST_TYPES",
    "WATCH_STREAM",
    "StatusSubject",
    "StreamSpec",
    "deadletter_subject",
    "deadline_fired_filter",
    "deadline_fired_subject",
    "deadline_subject",
    "event_subject",
    "events_filter",
    "inbox_consumer",
    "inbox_filter",
    "inbox_subject",
    "notice_subject",
    "parse_status_subject",
    "status_filter",
    "status_parties",
    "status_subject",
    "stream_specs",
    "validate_agency_id",
    "validate_case_number",
    "validate_request_id",
]

INBOX_STREAM = "GC_INBOX"
EVENTS_STREAM = "GC_EVENTS"
WATCH_STREAM = "GC_WATCH"
LEDGER_STREAM = "GC_LEDGER"
DEADLINES_STREAM = "GC_DEADLINES"
DEADLETTER_STREAM = "GC_DEADLETTER"
NOTICES_STREAM = "GC_NOTICES"

LEDGER_ENTRY_SUBJECT = "gc.ledger.entry"
LEDGER_CHECKPOINT_SUBJECT = "gc.ledger.checkpoint"
# Handlers publish ledger records here and move on; the sequencer chains them off the hot path.
# A work queue, so it is not among stream_specs(): the ledger creates it (broker.hub._ledger).
LEDGER_INTAKE_STREAM = "GC_LEDGER_INTAKE"
LEDGER_INTAKE_SUBJECT = "gc.ledger.intake"
LEDGER_SEQUENCER_CONSUMER = "ledger-sequencer"
# The sequencers also chain every accepted event straight from the watch log (GC_WATCH).
LEDGER_TIMELINE_CONSUMER = "ledger-timeline"

# Request state and clients' idempotency keys live in the request journal (GC_WATCH), not in KV;
# the idempotency bucket keeps only the keys of requests the broker originates itself.
REGISTRY_BUCKET = "gc_registry"
REPLAY_BUCKET = "gc_replay"
IDEMPOTENCY_BUCKET = "gc_idempotency"
KV_BUCKETS = (REGISTRY_BUCKET, REPLAY_BUCKET, IDEMPOTENCY_BUCKET)

#: Inbox priorities. GREEN gets its own subject token so an adapter can run a separate
#: consumer for it and a backlog of STANDARD work never delays a green-channel freeze.
PRIORITIES = ("green", "standard")

#: Request types as subject tokens: the lowercase names of the protobuf ``RequestType`` values.
REQUEST_TYPES = (
    "stop_payment",
    "freeze",
    "release",
    "extend",
    "number_block",
    "account_block",
    "data_request",
    "assistance",
    "warning",
    "fraud_report",
    "return_funds",
    "appeal",
    "follow_up",
    "linkage_notice",
    "dissuasion",
)

_AGENCY_RE = re.compile(r"[a-z0-9][a-z0-9-]*")
_PHASE_RE = re.compile(r"[a-z][a-z0-9_-]*")

# Upper bounds on retention. The request journal (GC_WATCH) is the broker's record of every
# request and is kept; other streams only need to hold messages long enough for every consumer
# (including a slow, offline agency) to see them.
_DAY = timedelta(days=1)
# Publishers retry with the same Nats-Msg-Id across reconnects; the window must cover
# the longest outage after which a retry is still expected to be deduplicated.
_DEDUP_WINDOW = timedelta(minutes=10)
IDEMPOTENCY_WINDOW = timedelta(hours=1)
"""How long a client's idempotency key binds its first request: the request journal's duplicate
window (the SUBMITTED record's ``Nats-Msg-Id`` carries the key; no other record carries one, so
the server remembers one id per request for this long)."""


def validate_agency_id(agency: str) -> str:
    """Return ``agency`` if it is one valid subject token (``^[a-z0-9][a-z0-9-]*$``)."""
    if not isinstance(agency, str) or _AGENCY_RE.fullmatch(agency) is None:
        raise ValueError(f"invalid agency id {agency!r}: must match ^[a-z0-9][a-z0-9-]*$")
    return agency


def validate_request_id(request_id: str | uuid.UUID) -> str:
    """Return the canonical (lowercase, hyphenated) form of a UUID request id.

    Only the canonical spelling is accepted for strings: ``{...}``, ``urn:uuid:`` or
    uppercase spellings of the same id would otherwise address different subjects.
    """
    if isinstance(request_id, uuid.UUID):
        return str(request_id)
    if not isinstance(request_id, str):
        raise ValueError(f"invalid request id {request_id!r}: not a string")
    try:
        canonical = str(uuid.UUID(request_id))
    except ValueError:
        raise ValueError(f"invalid request id {request_id!r}: not a UUID") from None
    if canonical != request_id:
        raise ValueError(f"invalid request id {request_id!r}: use the canonical form {canonical!r}")
    return canonical


def _priority(priority: str) -> str:
    # Accept the protobuf enum spelling ("GREEN") as well as the token ("green").
    token = priority.lower() if isinstance(priority, str) else ""
    if token not in PRIORITIES:
        raise ValueError(f"invalid priority {priority!r}: expected one of {PRIORITIES}")
    return token


def _request_type(request_type: str) -> str:
    token = request_type.lower() if isinstance(request_type, str) else ""
    if token not in REQUEST_TYPES:
        raise ValueError(f"invalid request type {request_type!r}: expected one of {REQUEST_TYPES}")
    return token


def _phase(phase: str) -> str:
    if not isinstance(phase, str) or _PHASE_RE.fullmatch(phase) is None:
        raise ValueError(f"invalid deadline phase {phase!r}: must match ^[a-z][a-z0-9_-]*$")
    return phase


# --- GC_INBOX -------------------------------------------------------------------------


def inbox_subject(agency: str, priority: str, request_type: str) -> str:
    """``gc.inbox.<agency>.<priority>.<type>``: where a request for ``agency`` is published."""
    return f"gc.inbox.{validate_agency_id(agency)}.{_priority(priority)}.{_request_type(request_type)}"


def inbox_filter(agency: str, priority: str | None = None) -> str:
    """Consumer filter for an agency's inbox, for one priority or (``None``) all of them."""
    agency = validate_agency_id(agency)
    if priority is None:
        return f"gc.inbox.{agency}.>"
    return f"gc.inbox.{agency}.{_priority(priority)}.>"


def inbox_consumer(agency: str, priority: str | None = None) -> str:
    """Durable consumer name for an agency's inbox (``inbox-<agency>-<priority|all>``)."""
    suffix = "all" if priority is None else _priority(priority)
    return f"inbox-{validate_agency_id(agency)}-{suffix}"


# --- GC_EVENTS ------------------------------------------------------------------------


def event_subject(agency: str, request_id: str | uuid.UUID) -> str:
    """``gc.events.<agency>.<request_id>``: a lifecycle event signed by ``agency``'s adapter."""
    return f"gc.events.{validate_agency_id(agency)}.{validate_request_id(request_id)}"


def events_filter(agency: str | None = None) -> str:
    """Consumer filter for the events of one agency, or of all agencies (``None``)."""
    if agency is None:
        return "gc.events.>"
    return f"gc.events.{validate_agency_id(agency)}.>"


# --- GC_WATCH -------------------------------------------------------------------------


_CASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{3,63}")


def validate_case_number(case_number: str) -> str:
    if not isinstance(case_number, str) or not _CASE_RE.fullmatch(case_number):
        raise ValueError(f"not a case number usable as a subject token: {case_number!r}")
    return case_number


def status_subject(
    *, sender: str, recipient: str, case_owner: str, case_number: str, request_id: str | uuid.UUID
) -> str:
    """A request's subject in the request journal: ``gc.status.<id>.<sender>.<recipient>.<owner>.<case>``.

    The id comes first so the broker finds a request's last record by a filter whose only literal
    token leads (the server's subject index then answers without walking every request); the
    parties and the case follow so a watcher's filter selects what it may see on the server,
    instead of every watcher reading every change.
    """
    return (
        f"gc.status.{validate_request_id(request_id)}.{validate_agency_id(sender)}."
        f"{validate_agency_id(recipient)}.{validate_agency_id(case_owner)}.{validate_case_number(case_number)}"
    )


class StatusSubject(NamedTuple):
    """The tokens of a :func:`status_subject`."""

    request_id: str
    sender: str
    recipient: str
    case_owner: str
    case_number: str


def parse_status_subject(subject: str) -> StatusSubject | None:
    """The tokens of a :func:`status_subject`; None for any other subject."""
    tokens = subject.split(".")
    if len(tokens) != 7 or tokens[0] != "gc" or tokens[1] != "status":
        return None
    return StatusSubject(*tokens[2:])


def status_parties(subject: str) -> tuple[str, ...]:
    """Sender, recipient and case owner named by a :func:`status_subject`; ``()`` for any other."""
    parsed = parse_status_subject(subject)
    if parsed is None:
        return ()
    return (parsed.sender, parsed.recipient, parsed.case_owner)


def status_filter(
    *,
    sender: str = "*",
    recipient: str = "*",
    case_owner: str = "*",
    case_number: str = "*",
    request_id: str = "*",
) -> str:
    """Filter over status changes; every token defaults to the wildcard."""
    tokens = (
        request_id if request_id == "*" else validate_request_id(request_id),
        sender if sender == "*" else validate_agency_id(sender),
        recipient if recipient == "*" else validate_agency_id(recipient),
        case_owner if case_owner == "*" else validate_agency_id(case_owner),
        case_number if case_number == "*" else validate_case_number(case_number),
    )
    return "gc.status." + ".".join(tokens)


# --- GC_DEADLINES ---------------------------------------------------------------------


def deadline_subject(request_id: str | uuid.UUID, phase: str) -> str:
    """``gc.deadline.<request_id>.<phase>``: the subject holding a phase's schedule.

    The server keeps one schedule per subject, so re-publishing here (an EXTEND) replaces
    the previous deadline of that phase instead of adding a second timer.
    """
    return f"gc.deadline.{validate_request_id(request_id)}.{_phase(phase)}"


def deadline_fired_subject(request_id: str | uuid.UUID, phase: str) -> str:
    """``gc.deadline.fired.<request_id>.<phase>``: the ``Nats-Schedule-Target`` of a deadline.

    ``fired`` can never collide with a request id (those are UUIDs), and fired subjects
    have five tokens against four, so ``gc.deadline.*.*`` never matches a fired message.
    """
    return f"gc.deadline.fired.{validate_request_id(request_id)}.{_phase(phase)}"


def deadline_fired_filter() -> str:
    """Consumer filter for every fired deadline."""
    return "gc.deadline.fired.>"


# --- GC_DEADLETTER --------------------------------------------------------------------


def deadletter_subject(agency: str) -> str:
    """``gc.deadletter.<agency>``: where ``agency``'s adapter parks what it cannot process."""
    return f"gc.deadletter.{validate_agency_id(agency)}"


# --- GC_NOTICES -----------------------------------------------------------------------


def notice_subject(agency: str) -> str:
    """``gc.notice.<agency>``: escalation notices (reminders, breaches) for an agency's duty desk."""
    return f"gc.notice.{validate_agency_id(agency)}"


# --- stream specifications ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """The configuration GreenChannel wants for one stream; ``ensure_streams`` applies it."""

    name: str
    """Stream name (``GC_*``)."""

    subjects: tuple[str, ...]
    """Subjects (with wildcards) the stream captures."""

    description: str
    """Shown by ``nats stream info``; says what the stream is for."""

    storage: Literal["file", "memory"] = "file"
    """File storage: every stream holds something that must survive a server restart."""

    replicas: int = 1
    """Number of replicas; 3 on a production cluster so one node loss loses nothing."""

    max_age: timedelta | None = None
    """Oldest message kept; ``None`` keeps messages until deleted (limits retention)."""

    duplicate_window: timedelta = _DEDUP_WINDOW
    """How long a ``Nats-Msg-Id`` is remembered for deduplication (the retry horizon)."""

    deny_delete: bool = False
    """Refuse deleting single messages through the API (append-only streams)."""

    deny_purge: bool = False
    """Refuse purging the stream through the API (append-only streams)."""

    allow_msg_schedules: bool = False
    """Accept ``Nats-Schedule`` messages (server >= 2.12): deadline timers."""

    allow_msg_ttl: bool = False
    """Accept per-message ``Nats-TTL`` / ``Nats-Schedule-TTL`` so fired timers can expire."""

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"stream {self.name}: replicas must be >= 1, got {self.replicas}")
        if not self.subjects:
            raise ValueError(f"stream {self.name}: at least one subject is required")


def stream_specs(replicas: int = 1) -> tuple[StreamSpec, ...]:
    """Every stream GreenChannel needs, each with ``replicas`` replicas."""
    return (
        StreamSpec(
            name=INBOX_STREAM,
            subjects=("gc.inbox.>",),
            description="Requests addressed to agency adapters, by agency, priority and type.",
            replicas=replicas,
            # A STANDARD data request may wait 3 days, and an agency may be offline over a
            # long weekend; 30 days leaves room for the escalation ladder to notice.
            max_age=30 * _DAY,
        ),
        StreamSpec(
            name=EVENTS_STREAM,
            subjects=("gc.events.>",),
            description="Signed lifecycle events from agency adapters to the broker.",
            replicas=replicas,
            max_age=30 * _DAY,
        ),
        StreamSpec(
            name=WATCH_STREAM,
            subjects=("gc.status.>",),
            description="The request journal: each request's status after each accepted event"
            " (state, Watch and ledger source).",
            replicas=replicas,
            # The journal is the requests' state: kept as long as the requests (as the KV was).
            max_age=None,
            duplicate_window=IDEMPOTENCY_WINDOW,
        ),
        StreamSpec(
            name=LEDGER_STREAM,
            subjects=(LEDGER_ENTRY_SUBJECT, LEDGER_CHECKPOINT_SUBJECT),
            description="Append-only, hash-chained ledger with signed checkpoints.",
            replicas=replicas,
            max_age=None,
            deny_delete=True,
            deny_purge=True,
        ),
        StreamSpec(
            name=DEADLINES_STREAM,
            subjects=("gc.deadline.>",),
            description="Deadline timers as message schedules and the messages they fire.",
            replicas=replicas,
            # No max_age: a freeze's expiry schedule must outlive any age limit (6 months).
            max_age=None,
            allow_msg_schedules=True,
            allow_msg_ttl=True,
        ),
        StreamSpec(
            name=DEADLETTER_STREAM,
            subjects=("gc.deadletter.>",),
            description="Messages an adapter could not process, kept for an operator.",
            replicas=replicas,
            max_age=90 * _DAY,
        ),
        StreamSpec(
            name=NOTICES_STREAM,
            subjects=("gc.notice.>",),
            description="Signed escalation notices for agencies' duty desks and supervisors.",
            replicas=replicas,
            max_age=200 * _DAY,
        ),
    )
