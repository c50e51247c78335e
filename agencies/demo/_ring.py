"""The fraud ring's other lines: what the police's call analysis finds besides the fraudster's phone.

Shenzhen's one-stop model blocks a ring's numbers in one order: the lines of the same SIM batch
and the ones calling victims at high frequency from the same cells. The demo's ring holds lines at
two carriers, so one signed batch order is split by the broker into one child per carrier.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from agencies.carrier import CarrierCore

__all__ = ["RING_LINES", "register_ring_lines"]

# (carrier, E.164): fictional numbers in each carrier's segments of the sample directory.
RING_LINES: tuple[tuple[str, str], ...] = (
    *(("carrier-cmcc", f"+86150123401{i:02d}") for i in range(8)),
    *(("carrier-ctcc", f"+86153123401{i:02d}") for i in range(4)),
)


def register_ring_lines(carriers: dict[str, CarrierCore], now: datetime) -> list[str]:
    """Register the ring's lines at their carriers (real-name registered to a straw man, as rings
    do); returns the numbers, in the order the police list them."""
    for n, (carrier, e164) in enumerate(RING_LINES):
        core = carriers[carrier]
        if core.line(e164) is None:
            core.register_line(
                e164,
                iccid=f"8986001234567890{n:04d}",
                imsi=f"46000123456{n:04d}",
                subscriber_name="某某",
                id_type="居民身份证",
                id_number="450481199001010000",
                activated_at=now - timedelta(days=20),
            )
    return [e164 for _, e164 in RING_LINES]
