"""Adapter configuration. Built by the entry point; nothing here reads the environment."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from broker.protocol import DEFAULT_INBOX_ACK_WAIT, NatsSettings, validate_agency_id

__all__ = ["AdapterConfig"]


@dataclass(frozen=True, kw_only=True)
class AdapterConfig:
    """How one agency's adapter runs."""

    agency_id: str
    """The agency this adapter speaks for (``bank-icbc``): whose inbox it reads and whose key signs."""

    agency_target: str
    """gRPC address of the agency's own system (``host:port``), used when no backend is given."""

    state_dir: Path
    """Directory for the adapter's local state (the idempotency database); created if missing."""

    nats: NatsSettings | None = None
    """How to reach NATS when the runtime connects itself; ``None`` when a client is handed in."""

    js_api_prefix: str = "$JS.API"
    """JetStream API prefix of the connection. Under per-agency NATS users (an account per agency)
    the inbox consumers' API is imported as ``broker.protocol._nats_auth.AGENCY_JS_API_PREFIX``."""

    call_timeout: float = 10.0
    """Deadline in seconds of one call to the agency system."""

    retry_initial: float = 0.2
    """First backoff in seconds after a transient failure; doubles on each further failure."""

    retry_max: float = 10.0
    """Upper bound in seconds of one backoff."""

    retry_budget: float = 300.0
    """Seconds from the first attempt after which a still-unavailable agency gets FAILED.

    The last attempt starts at the latest when the budget ends, so the whole may run up to
    ``call_timeout`` longer.
    """

    acknowledge_after: float = 0.25
    """Seconds the agency system may take to answer before ACKNOWLEDGED is published; 0: always at once.

    An answer within the grace goes out alone (SUBMITTED -> outcome, one durable event instead of
    two). The grace is cut to a quarter of the time left to the request's deliver or acknowledge
    deadline when that is shorter, so it never makes the adapter miss one. DELIVERED is never sent: the
    broker takes ACKNOWLEDGED or the outcome straight from SUBMITTED.
    """

    reconnect_backoff_max: float = 5.0
    """Upper bound in seconds of gRPC's own reconnect backoff on the channel it opens.

    gRPC's default (120 s) would leave a recovered agency system unused for minutes while the
    channel waits; a short bound lets the adapter's retries see it come back.
    """

    ack_wait: float = DEFAULT_INBOX_ACK_WAIT
    """JetStream ack wait of the inbox consumers; ``in_progress`` heartbeats go out every third of it.

    A held message is kept alive however long its handling takes (retries of an agency system that
    is down included), so this only bounds how soon what a crashed adapter held is delivered again.
    Under per-agency NATS users the broker creates the consumers with
    :data:`~broker.protocol._nats_auth.DEFAULT_INBOX_ACK_WAIT`; the two must agree."""

    concurrency: int = 32
    """Inbox messages handled at once (each one's steps still strictly in order).

    Handling is mostly waiting (PubAcks, the journal's fsync, the agency system), so messages in
    flight side by side multiply throughput; the bound keeps one adapter from flooding its agency
    system and caps what a crash hands back to JetStream for redelivery."""

    standard_concurrency: int = 8
    """At most this many STANDARD messages in flight (and never more than ``concurrency``): the
    rest of the slots stay free for GREEN, so a green-channel order never waits for a slot that
    STANDARD traffic holds."""

    batch_size: int = 32
    """Messages pulled at once from the GREEN lane (never more than the free slots)."""

    standard_batch_size: int = 1
    """Messages pulled at once from the STANDARD lane (never more than its free slots). One pull
    per message keeps STANDARD from being taken in bulk the moment GREEN goes quiet."""

    idle_fetch_timeout: float = 1.0
    """Seconds a pull on the GREEN lane waits when both lanes were empty; bounds STANDARD latency
    when idle and how long a graceful shutdown waits for a pull to end."""

    poll_timeout: float = 0.05
    """Seconds a pull waits on a lane whose consumer reported messages (they may have gone to
    another instance in between)."""

    publish_timeout: float = 5.0
    """Seconds to wait for the PubAck of an event or dead-letter record."""

    nak_delay: float = 1.0
    """Seconds before JetStream redelivers a message whose handling failed on a NATS error."""

    shutdown_grace: float = 10.0
    """Seconds a graceful shutdown lets the messages in flight finish before cancelling their calls."""

    def __post_init__(self) -> None:
        validate_agency_id(self.agency_id)
        if not self.agency_target:
            raise ValueError("AdapterConfig.agency_target must not be empty")
        positive = {
            "call_timeout": self.call_timeout,
            "retry_initial": self.retry_initial,
            "retry_max": self.retry_max,
            "reconnect_backoff_max": self.reconnect_backoff_max,
            "ack_wait": self.ack_wait,
            "idle_fetch_timeout": self.idle_fetch_timeout,
            "poll_timeout": self.poll_timeout,
            "publish_timeout": self.publish_timeout,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"AdapterConfig.{name} must be > 0, got {value}")
        for name, value in {
            "retry_budget": self.retry_budget,
            "acknowledge_after": self.acknowledge_after,
            "nak_delay": self.nak_delay,
            "shutdown_grace": self.shutdown_grace,
        }.items():
            if value < 0:
                raise ValueError(f"AdapterConfig.{name} must be >= 0, got {value}")
        if self.retry_max < self.retry_initial:
            raise ValueError("AdapterConfig.retry_max must be >= retry_initial")
        if self.batch_size < 1 or self.standard_batch_size < 1:
            raise ValueError("AdapterConfig: batch sizes must be >= 1")
        if self.concurrency < 1 or self.standard_concurrency < 1:
            raise ValueError("AdapterConfig: concurrency and standard_concurrency must be >= 1")

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between ``in_progress`` heartbeats of the messages held."""
        return self.ack_wait / 3
