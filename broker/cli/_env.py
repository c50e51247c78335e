"""The environment the CLI reads: here and nowhere else."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "BROKER_ENV",
    "DEFAULT_BROKER",
    "NATS_URL_ENV",
    "STATE_DIR_ENV",
    "default_broker",
    "default_state_dir",
    "nats_url",
]

NATS_URL_ENV = "GREENCHANNEL_NATS_URL"
STATE_DIR_ENV = "GREENCHANNEL_STATE_DIR"
BROKER_ENV = "GREENCHANNEL_BROKER"

DEFAULT_BROKER = "127.0.0.1:50051"
"""Where ``greenchannel up`` / ``broker`` listen by default, and so where the clients look."""


def nats_url() -> str | None:
    """``$GREENCHANNEL_NATS_URL``: an existing NATS; None runs the embedded server."""
    return os.environ.get(NATS_URL_ENV) or None


def default_broker() -> str:
    """``$GREENCHANNEL_BROKER``, else :data:`DEFAULT_BROKER`."""
    return os.environ.get(BROKER_ENV) or DEFAULT_BROKER


def default_state_dir() -> Path:
    """``$GREENCHANNEL_STATE_DIR``, else ``.greenchannel``."""
    return Path(os.environ.get(STATE_DIR_ENV, ".greenchannel"))
