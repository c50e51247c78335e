"""The console's one exception.

ConsoleError
    a setting the console refuses (a non-loopback address without ``allow_remote``, a bad
    ``HOST:PORT``), or an action it cannot build (no account known for a hold).
"""

from __future__ import annotations

__all__ = ["ConsoleError"]


class ConsoleError(Exception):
    """The console refuses a setting or an action; the message says why, for people."""
