"""Admission control: past a bound of submissions in hand, the broker says "not now" at once.

Without it an overloaded broker takes every submission and answers all of them late: at five
times its capacity, requests waited 13 s and clients saw their calls cancelled. A bounded number
in hand keeps the latency of the admitted ones, and the others get RESOURCE_EXHAUSTED with a
RetryInfo at once, which BusClient and any gRPC client can act on.

GREEN submissions may use the whole bound; STANDARD ones only part of it, so a flood of routine
requests never shuts out a green-channel freeze.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import structlog

from ._errors import OverloadedError

__all__ = ["Admission", "AdmissionConfig"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, kw_only=True)
class AdmissionConfig:
    """How many submissions a broker replica works on at once."""

    max_in_hand: int = 512
    """Submissions (Submit, Extend, Release) in hand at once, GREEN included."""
    standard_share: float = 0.75
    """Share of ``max_in_hand`` that STANDARD submissions may fill; the rest is kept for GREEN."""

    def __post_init__(self) -> None:
        if self.max_in_hand < 1 or not 0.0 < self.standard_share <= 1.0:
            raise ValueError("AdmissionConfig: max_in_hand >= 1 and 0 < standard_share <= 1")


class Admission:
    """``with admission.admit(green=...):`` around a submission; raises OverloadedError when full."""

    def __init__(self, config: AdmissionConfig | None = None) -> None:
        self._config = config or AdmissionConfig()
        self._standard_limit = max(1, int(self._config.max_in_hand * self._config.standard_share))
        self.in_hand = 0
        """Submissions in hand now."""

    @contextlib.contextmanager
    def admit(self, *, green: bool) -> Iterator[None]:
        limit = self._config.max_in_hand if green else self._standard_limit
        if self.in_hand >= limit:
            log.warning("submit.shed", in_hand=self.in_hand, green=green)
            raise OverloadedError(
                f"the broker has {self.in_hand} submissions in hand; try again shortly", reason="OVERLOADED"
            )
        self.in_hand += 1
        try:
            yield
        finally:
            self.in_hand -= 1
