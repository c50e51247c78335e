"""What one console serves, for whom, and where."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from broker.protocol import is_loopback

from ._errors import ConsoleError

__all__ = ["ConsoleConfig", "parse_listen"]


@dataclass(frozen=True, kw_only=True)
class ConsoleConfig:
    """One agency's console: its keys, its broker, its address."""

    agency_id: str
    """The agency the console acts as; its own keys sign every call."""
    broker: str
    """The broker's Bus API, ``HOST:PORT``."""
    state_dir: Path
    """Where the agency's keys are (``keys generate`` wrote them)."""
    host: str = "127.0.0.1"
    """Address to listen on; loopback unless ``allow_remote``."""
    port: int = 8080
    """Port to listen on; 0 picks a free one (printed at start)."""
    allow_remote: bool = False
    """Listen beyond loopback. Off by default: the console has CSRF protection but no login of its
    own (docs/console.md says what to put in front of it)."""
    warn_phase: timedelta = timedelta(minutes=10)
    """A phase deadline (deliver, acknowledge, execute) this close is highlighted as about to breach."""
    warn_hold: timedelta = timedelta(hours=12)
    """A hold this close to lapsing is highlighted: time to extend it or convert it to a freeze."""
    refresh: timedelta = timedelta(seconds=30)
    """The live page also re-reads the whole list this often (holds lapse without an event to the
    console's Watch)."""

    def __post_init__(self) -> None:
        if not self.allow_remote and not is_loopback(self.host):
            raise ConsoleError(
                f"refusing to listen on {self.host}: the console has no login of its own; "
                "pass --allow-remote behind a proxy that authenticates (docs/console.md)"
            )


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConsoleError(f"{text!r} is not HOST:PORT")
    number = int(port)
    if number > 65535:
        raise ConsoleError(f"port {number} is out of range")
    return host.strip("[]"), number
