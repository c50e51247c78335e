"""How long the adapter waits for the agency system before it publishes ACKNOWLEDGED."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from greenchannel.v1 import common_pb2, envelope_pb2

from adapters._acknowledge import acknowledge_delay

NOW = datetime(2026, 12, 3, 15, 0, tzinfo=UTC)


def header(**due_in: float) -> envelope_pb2.EnvelopeHeader:
    """A notarized header with phase deadlines ``deliver``/``acknowledge``/``execute`` seconds from NOW."""
    phases = []
    for name, seconds in due_in.items():
        due = Timestamp()
        due.FromDatetime(NOW + timedelta(seconds=seconds))
        phases.append(
            envelope_pb2.PhaseDeadline(phase=common_pb2.Phase.Value(f"PHASE_{name.upper()}"), due_at=due)
        )
    return envelope_pb2.EnvelopeHeader(deadlines=envelope_pb2.Deadlines(phases=phases))


@pytest.mark.parametrize(
    ("due_in", "grace", "expected"),
    [
        ({}, 0.25, 0.25),  # no deadline to mind: the grace
        ({"deliver": 30, "acknowledge": 120, "execute": 600}, 0.25, 0.25),  # the green SLA: far off
        ({"acknowledge": 0.2}, 0.25, 0.1),  # half the time left when that is shorter
        ({"deliver": 0.3, "acknowledge": 120}, 0.25, 0.15),  # the first open one of the two counts
        ({"execute": 0.1}, 0.25, 0.25),  # the execute deadline is met by the outcome itself
        ({"acknowledge": -5}, 0.25, 0.0),  # already late: at once
        ({"acknowledge": 120}, 0.0, 0.0),  # no grace: at once
    ],
)
def test_the_grace_never_reaches_past_a_deliver_or_acknowledge_deadline(
    due_in: dict[str, float], grace: float, expected: float
) -> None:
    assert acknowledge_delay(header(**due_in), now=NOW, grace=grace) == pytest.approx(expected)
