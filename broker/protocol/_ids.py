"""UUIDv7 ids (RFC 9562): time-ordered, so request ids sort by submission time in KV and logs."""

from __future__ import annotations

import os
import threading
import uuid

from ._clock import Clock, SystemClock

__all__ = ["new_uuid7", "uuid7_millis"]


class _Uuid7Generator:
    """RFC 9562 §6.2 method 1: the 12-bit rand_a field is a counter seeded randomly each
    millisecond, so ids minted in the same millisecond still sort in minting order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_ms = 0
        self._counter = 0

    def next(self, ms: int) -> str:
        with self._lock:
            if ms > self._last_ms:
                self._last_ms, self._counter = ms, int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                # Same millisecond (or the clock stepped back): keep ordering by counting on.
                self._counter += 1
                if self._counter > 0xFFF:
                    self._last_ms, self._counter = self._last_ms + 1, 0
            ms, counter = self._last_ms, self._counter
        rand_b = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
        value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        return str(uuid.UUID(int=value))


_generator = _Uuid7Generator()
_system_clock = SystemClock()


def new_uuid7(clock: Clock = _system_clock) -> str:
    """A new UUIDv7 string, monotonic within this process."""
    return _generator.next(int(clock.now().timestamp() * 1000))


def uuid7_millis(value: str) -> int:
    """The Unix time in milliseconds embedded in a UUIDv7."""
    parsed = uuid.UUID(value)
    if parsed.version != 7:
        raise ValueError(f"{value} is not a UUIDv7")
    return parsed.int >> 80
