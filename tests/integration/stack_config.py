"""The StackConfig of a whole-stack test: adapters that retry, reconnect and poll quickly."""

from __future__ import annotations

from pathlib import Path

from adapters import AdapterConfig
from agencies.demo import StackConfig

__all__ = ["quick_stack_config"]


def quick_stack_config(keys_dir: Path, data_dir: Path) -> StackConfig:
    """Every agency of the sample directory behind an adapter tuned for tests (the template's
    agency id and target are placeholders the stack replaces per agency)."""
    template = AdapterConfig(
        agency_id="bank-icbc",
        agency_target="127.0.0.1:1",
        state_dir=Path(),
        retry_initial=0.05,
        retry_max=0.3,
        reconnect_backoff_max=0.3,
        ack_wait=3.0,
        idle_fetch_timeout=0.2,
    )
    return StackConfig(keys_dir=keys_dir, data_dir=data_dir, adapter=template)
