"""The shipped CN green-channel SLA policy, loaded once for the tests (the hub has no default)."""

from __future__ import annotations

from agencies import DEFAULT_SLA_POLICY_PATH
from broker.hub import DeadlineTable, SlaPolicy, load_sla_policy

__all__ = ["DEFAULT_DEADLINES", "DEFAULT_SLA_POLICY"]

DEFAULT_SLA_POLICY: SlaPolicy = load_sla_policy(DEFAULT_SLA_POLICY_PATH)
"""``agencies/sla/cn.toml``: deadlines, holds, escalation."""

DEFAULT_DEADLINES: DeadlineTable = DEFAULT_SLA_POLICY.deadlines
"""The deadline table of :data:`DEFAULT_SLA_POLICY`; every type has a GREEN and a STANDARD budget."""
