"""Exponential backoff with jitter for calls to an agency system that is briefly away."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays that double from ``initial`` up to ``maximum``, each drawn from [d/2, d] ("equal jitter").

    The jitter spreads the retries of several adapter instances (or of many held messages after
    an outage) so they do not hit the recovering system in lockstep; the lower half is kept so a
    retry never comes back immediately.
    """

    def __init__(self, initial: float, maximum: float, *, rng: random.Random | None = None) -> None:
        if not 0 < initial <= maximum:
            raise ValueError(f"need 0 < initial <= maximum, got {initial} and {maximum}")
        self._next = initial
        self._maximum = maximum
        # Not for secrets: jitter only has to differ between instances.
        self._rng = rng or random.Random()  # noqa: S311

    def next(self) -> float:
        """The next delay in seconds."""
        delay = self._next
        self._next = min(self._next * 2, self._maximum)
        return self._rng.uniform(delay / 2, delay)
