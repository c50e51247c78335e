"""How hard the fault suite pushes: a short setting inside ``make test``, a long one for ``make faults``."""

from __future__ import annotations

import os
from dataclasses import dataclass

from broker.protocol import DEFAULT_INBOX_ACK_WAIT

__all__ = ["LEVEL_ENV", "SEED_ENV", "FaultSettings", "settings_from_env"]

LEVEL_ENV = "GREENCHANNEL_FAULTS_LEVEL"
"""``short`` (default) or ``long``."""
SEED_ENV = "GREENCHANNEL_FAULTS_SEED"
"""Seed of the random kill moments; printed with every report so a run can be repeated."""


@dataclass(frozen=True, kw_only=True)
class FaultSettings:
    """One level of the suite."""

    level: str
    """Name of the level, printed in the report."""
    seed: int
    """Seed of the random moments at which faults strike."""
    rate: float
    """Requests submitted per second by the steady load (single node)."""
    cluster_rate: float
    """The same on the three-node cluster, where every write waits for two fsyncs of three."""
    load_between: tuple[float, float]
    """Seconds of load (uniformly drawn from this range) before each fault."""
    outage: tuple[float, float]
    """Seconds a killed component stays down before it is started again."""
    broker_kills: int
    """SIGKILLs of the broker process in the single-node scenario."""
    agencies_kills: int
    """SIGKILLs of the banks' systems process (mid-execution) in the single-node scenario."""
    adapter_kills: int
    """SIGKILLs of one of a bank's two adapter instances while they hold GREEN orders, in the
    single-node scenario; the other instance (the standby) must take over what it held."""
    nats_kills: int
    """SIGKILLs of the single nats-server."""
    node_down: tuple[float, float]
    """Seconds a killed cluster node stays down: the cluster runs degraded meanwhile."""
    cluster_rounds: int
    """Rounds of the cluster scenario; each kills one node, restarts it, then kills another."""
    burst: int
    """Requests submitted at once right before an agencies kill, so there is work in flight."""
    per_case: int
    """Load requests per case: every request of a case changes the case's one money-trail entry,
    so a case taking seconds of the load at full rate is a hot case, raced by the faults too."""
    settle_timeout: float
    """Seconds every request acknowledged so far gets to reach a final state after a fault."""
    ack_wait: float
    """Inbox ack wait of the adapters: how soon a message a killed adapter held comes back. Both
    levels use the shipped default, so the redelivery times reported are what a deployment gets."""
    broker_ack_wait: float | None
    """Ack wait of the broker's consumers; None: the real default, through the real CLI."""

    @classmethod
    def short(cls, seed: int) -> FaultSettings:
        return cls(
            level="short",
            seed=seed,
            rate=12.0,
            cluster_rate=6.0,
            load_between=(0.3, 0.8),
            outage=(0.2, 0.8),
            broker_kills=2,
            agencies_kills=1,
            adapter_kills=1,
            nats_kills=1,
            node_down=(1.0, 2.0),
            cluster_rounds=1,
            burst=12,
            per_case=60,
            settle_timeout=45.0,
            ack_wait=DEFAULT_INBOX_ACK_WAIT,
            broker_ack_wait=2.0,
        )

    @classmethod
    def long(cls, seed: int) -> FaultSettings:
        return cls(
            level="long",
            seed=seed,
            rate=15.0,
            cluster_rate=8.0,
            load_between=(2.0, 6.0),
            outage=(0.2, 3.0),
            broker_kills=3,
            agencies_kills=3,
            adapter_kills=3,
            nats_kills=2,
            node_down=(3.0, 8.0),
            cluster_rounds=3,
            burst=30,
            per_case=300,
            settle_timeout=90.0,
            ack_wait=DEFAULT_INBOX_ACK_WAIT,
            broker_ack_wait=None,
        )


def settings_from_env() -> FaultSettings:
    """The level named by ``$GREENCHANNEL_FAULTS_LEVEL`` (the test entry point reads it here)."""
    level = os.environ.get(LEVEL_ENV, "short").strip().lower() or "short"
    raw_seed = os.environ.get(SEED_ENV, "").strip()
    seed = int(raw_seed) if raw_seed else int.from_bytes(os.urandom(4), "big")
    if level == "short":
        return FaultSettings.short(seed)
    if level == "long":
        return FaultSettings.long(seed)
    raise ValueError(f"${LEVEL_ENV} must be short or long, not {level!r}")
