"""The sample files the reference agencies ship, found where ``agencies`` is installed.

The broker takes every file from its caller; the CLI passes these when the operator names none.
Found with :func:`importlib.util.find_spec`, which locates the package without importing it, so
``greenchannel broker`` and the client commands never load the reference agencies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from broker.protocol import ProtocolError

__all__ = ["sample_directory", "sample_file", "sample_policy", "sample_sla_policy"]


def sample_file(name: str) -> Path:
    """``name`` (e.g. ``sla/cn.toml``) under the installed ``agencies`` package."""
    spec = importlib.util.find_spec("agencies")
    locations = spec.submodule_search_locations if spec is not None else None
    if not locations:
        raise ProtocolError(f"the agencies package is not installed: no sample {name}; name the file")
    return Path(next(iter(locations))) / name


def sample_directory() -> Path:
    """The sample agency directory."""
    return sample_file("directory.toml")


def sample_policy() -> Path:
    """The sample authorization policy."""
    return sample_file("policy.toml")


def sample_sla_policy() -> Path:
    """The Chinese green-channel SLA policy."""
    return sample_file("sla/cn.toml")
