"""The sample files shipped with the reference agencies: directory, authorization and SLA policies.

The broker takes every file from its caller; these are what the CLI and the demo pass when the
operator names none.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DEFAULT_DIRECTORY", "DEFAULT_POLICY", "DEFAULT_SLA_POLICY_PATH", "EU_SLA_POLICY_PATH"]

_HERE = Path(__file__).resolve().parent

DEFAULT_DIRECTORY = _HERE / "directory.toml"
"""The sample agency directory."""
DEFAULT_POLICY = _HERE / "policy.toml"
"""The sample authorization policy."""
DEFAULT_SLA_POLICY_PATH = _HERE / "sla" / "cn.toml"
"""The Chinese green-channel SLA policy: deadlines, holds, escalation."""
EU_SLA_POLICY_PATH = _HERE / "sla" / "eu.toml"
"""An EU-style SLA policy, as an example of another jurisdiction."""
