"""How a reference platform core is set up."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agencies._common import MEMORY

__all__ = ["PlatformConfig"]


@dataclass(frozen=True, kw_only=True)
class PlatformConfig:
    """A platform core's identity, services and store."""

    agency_id: str
    """This platform's agency id (``platform-wechat``)."""
    platform_codes: tuple[str, ...]
    """The platform codes it answers for (``("wechat",)``); orders naming another are NOT_FOUND."""
    database: str | Path = MEMORY
    """SQLite file, created if missing, or ``":memory:"``."""
